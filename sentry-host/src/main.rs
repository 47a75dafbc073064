//! The `hashfleet-sentry-host` binary: parse flags, then the shared sentry main.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use hashfleet_agent::cli::{read_toml, sentry_main, shutdown_signal, SentryCommand};
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

/// For the packages only, outside `Cli` so that no man page or completion
/// lists them: `gen-docs DIR` (packaging/build.sh), and `has-commander
/// --config FILE`, the systemd unit's ExecCondition: exit 1 while the file
/// names no commander, so an unconfigured sentry waits instead of failing.
#[derive(Parser)]
#[command(name = "hashfleet-sentry-host")]
enum Packaging {
    GenDocs {
        dir: PathBuf,
    },
    HasCommander {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    match Packaging::try_parse() {
        Ok(Packaging::GenDocs { dir }) => return gen_docs::write(Cli::command(), &dir),
        Ok(Packaging::HasCommander { config }) => {
            // A file that does not parse counts as configured: `run` then
            // fails with exit 64 and says why.
            if matches!(read_toml::<HostFile>(&config), Ok(f) if f.commander.is_empty()) {
                eprintln!(
                    "{} names no [[commander]] yet; the service starts once one is added",
                    config.display()
                );
                return ExitCode::from(1);
            }
            return ExitCode::SUCCESS;
        }
        Err(_) => {}
    }
    let cli = Cli::parse();
    sentry_main(
        cli.command,
        hashfleet_sentry_host::config::load_host,
        |config| hashfleet_sentry_host::run_with(config, shutdown_signal()),
    )
}
