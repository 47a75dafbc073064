//! The `hashfleet-commander` binary: parse flags, start logging, call the
//! library. Exit code 64 for bad configuration, 1 for failures at run time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use hashfleet_commander::config::FileConfig;
use hashfleet_commander::{backup_cli, cli, demo, info, keys, shutdown_signal};

#[path = "../../packaging/gen_docs.rs"]
mod gen_docs;

#[derive(Parser)]
#[command(
    name = "hashfleet-commander",
    version,
    about = "Hashfleet commander: QUIC ingest, store and HTTP API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the commander.
    Serve(ServeArgs),
    /// Check a configuration without starting anything.
    Validate(ServeArgs),
    /// Print the commander's public key and node id.
    Info {
        #[arg(long, env = "HASHFLEET_DATA_DIR")]
        data_dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a demo: a commander with a fresh data directory and an enrolled sentry.
    Demo {
        /// HTTP address of the demo commander (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_listen: SocketAddr,
        /// Heartbeat interval of the demo sentry, in seconds.
        #[arg(long, default_value_t = 2)]
        interval_secs: u64,
    },
    /// Write a consistent copy of the store (DATA_DIR/store) to a file.
    ///
    /// Works while `serve` runs: it then goes through that commander's API
    /// (address from DATA_DIR/http.addr, token from DATA_DIR/admin.token).
    /// identity.json and admin.token are NOT in the backup: copy those two
    /// files separately (keep them 0600).
    Backup {
        #[arg(long, env = "HASHFLEET_DATA_DIR")]
        data_dir: PathBuf,
        /// The backup file to write (replaced atomically, mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Rotate the commander key: the next key is announced to sentries
    /// (signed by the current key) and takes over after --grace-secs.
    ///
    /// Works while `serve` runs (it picks the rotation up within a second)
    /// and while it is stopped (it announces at start). Sentries offline for
    /// the whole grace period must have the new key configured by hand.
    RotateKey {
        #[arg(long, env = "HASHFLEET_DATA_DIR")]
        data_dir: PathBuf,
        /// Seconds between the announcement and the switch.
        #[arg(long, default_value_t = 86_400)]
        grace_secs: u64,
    },
    /// Rebuild DATA_DIR/store from a backup file; stop the commander first.
    ///
    /// DATA_DIR/store must not exist yet (or be empty). identity.json and
    /// admin.token are not in the backup and are left alone: put the old
    /// ones into DATA_DIR (mode 0600) so sentries still recognise the
    /// commander.
    Restore {
        #[arg(long, env = "HASHFLEET_DATA_DIR")]
        data_dir: PathBuf,
        /// The backup file to read.
        #[arg(long = "in")]
        input: PathBuf,
    },
    /// Operator subcommands: `token`, `user`, `sentry`, `action` (HTTP API calls).
    #[command(flatten)]
    Operator(cli::Command),
}

/// For the packages only, outside `Cli` so that no man page or completion
/// lists it: `gen-docs DIR` writes them (packaging/build.sh).
#[derive(Parser)]
#[command(name = "hashfleet-commander")]
enum Packaging {
    GenDocs { dir: PathBuf },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file; flags and HASHFLEET_* variables override it.
    #[arg(long, env = "HASHFLEET_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "HASHFLEET_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// UDP address for sentries (QUIC).
    #[arg(long, env = "HASHFLEET_QUIC_LISTEN")]
    quic_listen: Option<SocketAddr>,
    /// TCP address of the HTTP API.
    #[arg(long, env = "HASHFLEET_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// TCP address of the HTTPS API, for access from other machines.
    #[arg(long, env = "HASHFLEET_HTTPS_LISTEN")]
    https_listen: Option<SocketAddr>,
}

impl ServeArgs {
    fn load(self) -> anyhow::Result<hashfleet_commander::CommanderConfig> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let mut config = file.into_config(self.data_dir)?;
        if let Some(a) = self.quic_listen {
            config.quic_listen = a;
        }
        if let Some(a) = self.http_listen {
            config.http_listen = a;
        }
        if let Some(a) = self.https_listen {
            config.https_listen = Some(a);
        }
        config.validate()?;
        Ok(config)
    }
}

/// The files `serve` uses, checked by `validate` and by `serve` before it
/// binds anything: a problem there exits 64 too, which a restart cannot fix
/// (the systemd unit's RestartPreventExitStatus=64).
fn check_files(
    config: hashfleet_commander::CommanderConfig,
) -> anyhow::Result<hashfleet_commander::CommanderConfig> {
    keys::check_files(
        &config.data_dir,
        config.https_cert.as_deref(),
        config.https_key.as_deref(),
    )?;
    Ok(config)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn,sled=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    if let Ok(Packaging::GenDocs { dir }) = Packaging::try_parse() {
        return gen_docs::write(Cli::command(), &dir);
    }
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Operator(command) => return runtime.block_on(cli::run(command)),
        Command::Serve(args) => match args.load().and_then(check_files) {
            Ok(config) => runtime.block_on(hashfleet_commander::run(config, shutdown_signal())),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(64);
            }
        },
        Command::Validate(args) => match args.load().and_then(check_files) {
            Ok(config) => {
                println!(
                    "configuration is valid (data dir {})",
                    config.data_dir.display()
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(64);
            }
        },
        Command::Info { data_dir, json } => info::info(&data_dir).map(|i| {
            if json {
                println!("{}", serde_json::to_string(&i).expect("serializes"));
            } else {
                println!("public_key: {}\nnode_id:    {}", i.public_key, i.node_id);
            }
        }),
        Command::Demo {
            http_listen,
            interval_secs,
        } => runtime.block_on(demo::run(http_listen, interval_secs, shutdown_signal())),
        Command::Backup { data_dir, out } => runtime
            .block_on(backup_cli::backup(&data_dir, &out))
            .map(|o| {
                let via = match o.source {
                    backup_cli::Source::Server(addr) => format!("the commander at {addr}"),
                    backup_cli::Source::Store => "the store".to_string(),
                };
                println!(
                    "backup: {} trees, {} entries, {} bytes written to {} (from {via})",
                    o.stats.trees,
                    o.stats.entries,
                    o.stats.bytes,
                    out.display()
                );
            }),
        Command::RotateKey {
            data_dir,
            grace_secs,
        } => hashfleet_commander::key_rotation::begin(
            &data_dir,
            std::time::Duration::from_secs(grace_secs),
            hashfleet_shared::now_ms(),
        )
        .map(|(old, pending, created)| {
            let what = if created {
                "rotation started"
            } else {
                "a rotation is already pending (--grace-secs ignored)"
            };
            println!(
                "{what}\nold: {old}\nnew: {}\nnew public key: {}\nswitch at: {} ms since the epoch",
                pending.key.node_id(),
                pending.key.node_id().public_key_hex(),
                pending.switch_at_ms
            );
        }),
        Command::Restore { data_dir, input } => backup_cli::restore(&data_dir, &input).map(|s| {
            println!(
                "restore: {} trees, {} entries from {} ({} bytes) into {}",
                s.trees,
                s.entries,
                input.display(),
                s.bytes,
                data_dir.join("store").display()
            );
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
