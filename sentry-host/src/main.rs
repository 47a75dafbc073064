//! The `hashfleet-sentry-host` binary: parse flags, then the shared sentry main.

use std::process::ExitCode;

use clap::Parser;
use hashfleet_agent::cli::{sentry_main, shutdown_signal, SentryCommand};

#[derive(Parser)]
#[command(
    name = "hashfleet-sentry-host",
    version,
    about = "Hashfleet sentry for GPU/CPU rigs and AI nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: SentryCommand,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sentry_main(
        cli.command,
        hashfleet_sentry_host::config::load_host,
        |config| hashfleet_sentry_host::run_with(config, shutdown_signal()),
    )
}
