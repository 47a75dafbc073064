//! The `hashfleet-sentry-asic` binary: parse flags, then the shared sentry main.

use std::process::ExitCode;

use clap::Parser;
use hashfleet_agent::cli::{sentry_main, shutdown_signal, SentryCommand};

#[derive(Parser)]
#[command(
    name = "hashfleet-sentry-asic",
    version,
    about = "Hashfleet sentry for ASIC miners, containers, meters and relays"
)]
struct Cli {
    #[command(subcommand)]
    command: SentryCommand,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sentry_main(cli.command, hashfleet_sentry_asic::load_config, |config| {
        hashfleet_sentry_asic::run_with(config, shutdown_signal())
    })
}
