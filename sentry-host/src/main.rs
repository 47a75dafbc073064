//! The `hashfleet-sentry-host` binary: parse flags, then the shared sentry main.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use hashfleet_agent::cli::{packaging_main, sentry_main, shutdown_signal, SentryCommand};
use hashfleet_sentry_host::config::HostFile;

#[path = "../../packaging/gen_docs.rs"]
mod gen_docs;

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
    if let Some(code) = packaging_main(
        |dir| gen_docs::write(Cli::command(), dir),
        |f: &HostFile| f.commander.len(),
    ) {
        return code;
    }
    let cli = Cli::parse();
    sentry_main(
        cli.command,
        hashfleet_sentry_host::config::load_host,
        |config| hashfleet_sentry_host::run_with(config, shutdown_signal()),
    )
}
