//! The `hashfleet-sentry-host` binary: parse flags, start logging, run.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hashfleet_agent::cli::{identity_command, init_tracing, IdentityCommand, RunArgs};

#[derive(Parser)]
#[command(
    name = "hashfleet-sentry-host",
    version,
    about = "Hashfleet sentry for GPU/CPU rigs and AI nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sentry.
    Run(RunArgs),
    /// Check the configuration without starting.
    Validate(RunArgs),
    /// Create or show this sentry's identity.
    #[command(subcommand)]
    Identity(IdentityCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Run(args) => match hashfleet_sentry_host::config::load(&args) {
            Ok(config) => match tokio::runtime::Runtime::new() {
                Ok(rt) => rt.block_on(hashfleet_sentry_host::run(
                    config,
                    hashfleet_agent::cli::shutdown_signal(),
                )),
                Err(e) => Err(e.into()),
            },
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(64);
            }
        },
        Command::Validate(args) => match hashfleet_sentry_host::config::load(&args) {
            Ok(c) => {
                println!(
                    "configuration is valid: {} commander(s), home {}",
                    c.commanders.len(),
                    c.home.display()
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(64);
            }
        },
        Command::Identity(cmd) => identity_command(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
