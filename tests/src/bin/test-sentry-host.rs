//! `hashfleet-sentry-host` built inside the test crate, so that tests can
//! run (and SIGKILL) the real sentry binary: the same `main` as
//! `sentry-host/src/main.rs`.

use std::process::ExitCode;

use clap::Parser;
use hashfleet_agent::cli::{sentry_main, shutdown_signal, SentryCommand};

#[derive(Parser)]
#[command(name = "test-sentry-host", version)]
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
