//! The `hashfleet-sentry-asic` binary: parse flags, then the shared sentry main.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use hashfleet_agent::cli::{packaging_main, sentry_main, shutdown_signal, SentryCommand};
use hashfleet_sentry_asic::config::AsicFile;

#[path = "../../packaging/gen_docs.rs"]
mod gen_docs;

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
    if let Some(code) = packaging_main(
        |dir| gen_docs::write(Cli::command(), dir),
        |f: &AsicFile| f.commander.len(),
    ) {
        return code;
    }
    let cli = Cli::parse();
    sentry_main(cli.command, hashfleet_sentry_asic::load_config, |config| {
        hashfleet_sentry_asic::run_with(config, shutdown_signal())
    })
}
