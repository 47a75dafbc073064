//! Command-line pieces both sentries share: `run` flags, the common part of
//! the config file, and the `identity` subcommands.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use hashfleet_shared::wire::SentryKind;
use hashfleet_shared::Identity;
use serde::Deserialize;

use crate::config::{targets_from_flags, AgentConfig, CommanderEntry};

/// No sentry config file is anywhere near this large.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Flags of `run` and `validate`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// TOML config file; flags override it.
    #[arg(long, env = "HASHFLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory holding identity.json, the outbox and the seq.
    #[arg(long, env = "HASHFLEET_HOME")]
    pub home: Option<PathBuf>,
    /// Commander HOST:PORT; repeat for failover, primary first.
    #[arg(long = "commander")]
    pub commanders: Vec<String>,
    /// Pinned commander public key (hex); the Nth pins the Nth --commander.
    #[arg(long = "commander-key")]
    pub commander_keys: Vec<String>,
    /// Enrollment token; the Nth is for the Nth --commander.
    #[arg(long = "enroll-token")]
    pub enroll_tokens: Vec<String>,
    /// Seconds between heartbeats.
    #[arg(long)]
    pub interval_secs: Option<u64>,
    /// Serve the local status API (/healthz, /readyz, /status) here;
    /// loopback only. Off when not given.
    #[arg(long, env = "HASHFLEET_STATUS_LISTEN")]
    pub status_listen: Option<std::net::SocketAddr>,
}

/// The config-file settings every sentry has.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonFile {
    pub home: Option<PathBuf>,
    pub interval_secs: Option<u64>,
    pub site: Option<String>,
    pub rack: Option<String>,
    /// First reconnect wait (jittered, doubling), default 500 ms.
    pub reconnect_min_ms: Option<u64>,
    /// Longest reconnect wait, default 5000 ms.
    pub reconnect_max_ms: Option<u64>,
    /// On a backup commander, how often the primary is tried, default 30 s.
    pub primary_retry_secs: Option<u64>,
    /// The local status API address (loopback only); off when absent.
    pub status_listen: Option<std::net::SocketAddr>,
    #[serde(default)]
    pub commander: Vec<CommanderEntry>,
}

/// The packages' hidden subcommands, outside each sentry's documented CLI
/// so that no man page or completion lists them: `gen-docs DIR`
/// (packaging/build.sh), and `has-commander --config FILE`, the systemd
/// unit's ExecCondition, which exits 1 while the file names no commander so
/// that an unconfigured sentry waits instead of failing.
#[derive(clap::Parser)]
enum Packaging {
    GenDocs {
        dir: PathBuf,
    },
    HasCommander {
        #[arg(long)]
        config: PathBuf,
    },
}

/// Runs a packaging subcommand when the arguments name one, else `None`.
/// `F` is the sentry's config file type and `commanders` counts the
/// commanders it names.
pub fn packaging_main<F: serde::de::DeserializeOwned>(
    gen_docs: impl FnOnce(&Path) -> std::process::ExitCode,
    commanders: impl FnOnce(&F) -> usize,
) -> Option<std::process::ExitCode> {
    use clap::Parser;
    match Packaging::try_parse().ok()? {
        Packaging::GenDocs { dir } => Some(gen_docs(&dir)),
        Packaging::HasCommander { config } => {
            // A file that does not parse counts as configured: `run` then
            // fails with exit 64 and says why.
            if matches!(read_toml::<F>(&config), Ok(f) if commanders(&f) == 0) {
                eprintln!(
                    "{} names no [[commander]] yet; the service starts once one is added",
                    config.display()
                );
                return Some(std::process::ExitCode::from(1));
            }
            Some(std::process::ExitCode::SUCCESS)
        }
    }
}

/// Reads a TOML file into `T` with a size bound and a clear error.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    if meta.len() > MAX_CONFIG_BYTES {
        anyhow::bail!(
            "config {} is {} bytes; a config file is at most 1 MiB",
            path.display(),
            meta.len()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
}

/// Merges the file and the flags into the runtime config. Flags win: any
/// `--commander` replaces the file's `[[commander]]` list.
pub fn agent_config(
    file: CommonFile,
    args: &RunArgs,
    kind: SentryKind,
    default_home: &str,
) -> anyhow::Result<AgentConfig> {
    let home = args
        .home
        .clone()
        .or(file.home)
        .unwrap_or_else(|| PathBuf::from(default_home));
    let commanders = if args.commanders.is_empty() {
        if !args.commander_keys.is_empty() || !args.enroll_tokens.is_empty() {
            anyhow::bail!("--commander-key and --enroll-token need --commander");
        }
        file.commander
            .iter()
            .map(CommanderEntry::to_target)
            .collect::<Result<_, _>>()?
    } else {
        targets_from_flags(&args.commanders, &args.commander_keys, &args.enroll_tokens)?
    };
    let mut config = AgentConfig::new(home, commanders, kind);
    if let Some(secs) = args.interval_secs.or(file.interval_secs) {
        config.interval = Duration::from_secs(secs);
    }
    if let Some(ms) = file.reconnect_min_ms {
        config.backoff_min = Duration::from_millis(ms);
    }
    if let Some(ms) = file.reconnect_max_ms {
        config.backoff_max = Duration::from_millis(ms);
    }
    if let Some(addr) = args.status_listen.or(file.status_listen) {
        crate::status_api::check_listen(addr).map_err(anyhow::Error::msg)?;
        config.status_listen = Some(addr);
    }
    if let Some(secs) = file.primary_retry_secs {
        if !(1..=3600).contains(&secs) {
            anyhow::bail!("primary_retry_secs = {secs}: give 1..=3600 seconds");
        }
        config.primary_retry = Duration::from_secs(secs);
    }
    let mut labels = BTreeMap::new();
    if let Some(site) = file.site {
        labels.insert("site".to_string(), site);
    }
    if let Some(rack) = file.rack {
        labels.insert("rack".to_string(), rack);
    }
    config.labels = labels;
    config.validate()?;
    Ok(config)
}

/// Runtime worker threads of a sentry process.
pub const SENTRY_WORKERS: usize = 2;

/// `identity init|show`.
#[derive(Debug, clap::Subcommand)]
pub enum IdentityCommand {
    /// Create the identity if absent; print the node_id.
    Init {
        #[arg(long, env = "HASHFLEET_HOME")]
        home: PathBuf,
    },
    /// Print the public identity (never a private key).
    Show {
        #[arg(long, env = "HASHFLEET_HOME")]
        home: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Rotate the node key: a running sentry (asked over HOME/control.sock)
    /// rotates at once; a stopped one at its next connection. Prints the
    /// old and the new node_id. A stolen key is not rotated away: revoke
    /// the sentry on the commander instead.
    Rotate {
        #[arg(long, env = "HASHFLEET_HOME")]
        home: PathBuf,
    },
    /// Bind a new wallet key (signed by the wallet over the node id and a
    /// commander nonce), the same way as `rotate`. Prints old and new address.
    RotateWallet {
        #[arg(long, env = "HASHFLEET_HOME")]
        home: PathBuf,
    },
}

pub fn identity_command(cmd: IdentityCommand) -> anyhow::Result<()> {
    match cmd {
        IdentityCommand::Init { home } => {
            let (identity, _) = Identity::load_or_create(&home)?;
            println!("{}", identity.node_id());
        }
        IdentityCommand::Show { home, json } => {
            let identity = Identity::load(&Identity::path_in(&home))?;
            let public = identity.public();
            if json {
                println!("{}", serde_json::to_string_pretty(&public)?);
            } else {
                println!("node_id:           {}", public.node_id);
                println!("node_public_key:   {}", public.node_public_key);
                println!("wallet_address:    {}", public.wallet_address);
                println!("wallet_public_key: {}", public.wallet_public_key);
                println!("created_at:        {}", public.created_at);
            }
            let current = identity;
            if let Some(next) = crate::rotation::load_next(&home)? {
                match crate::rotation::pending(&current, Some(&next)) {
                    crate::rotation::Pending::NodeKey => {
                        println!("pending node_id:   {}", next.node_id())
                    }
                    crate::rotation::Pending::Wallet => {
                        println!("pending wallet:    {}", next.wallet.address())
                    }
                    crate::rotation::Pending::Nothing => {}
                }
            }
        }
        IdentityCommand::Rotate { home } => {
            rotate_command(&home, crate::rotation::Rotate::NodeKey)?
        }
        IdentityCommand::RotateWallet { home } => {
            rotate_command(&home, crate::rotation::Rotate::Wallet)?
        }
    }
    Ok(())
}

fn rotate_command(home: &Path, what: crate::rotation::Rotate) -> anyhow::Result<()> {
    use crate::rotation::{self, Rotate};
    let op = match what {
        Rotate::NodeKey => "rotate",
        Rotate::Wallet => "rotate-wallet",
    };
    let (old, new, note) = match rotation::request(home, op)? {
        Some(reply) if reply.ok => {
            let note = if reply.done {
                "done: the commander bound it".to_string()
            } else {
                format!("pending: {}", reply.message)
            };
            (reply.old, reply.new, note)
        }
        Some(reply) => anyhow::bail!("the running sentry refused: {}", reply.message),
        None => {
            // No sentry runs with this home: prepare, and the next run completes it.
            let current = Identity::load(&Identity::path_in(home))?;
            let next = rotation::prepare(home, &current, what)?;
            let (old, new) = match what {
                Rotate::NodeKey => (current.node_id().to_string(), next.node_id().to_string()),
                Rotate::Wallet => (
                    current.wallet.address().to_string(),
                    next.wallet.address().to_string(),
                ),
            };
            (
                old,
                new,
                "pending: the sentry is not running; it completes when it next reaches its commander".to_string(),
            )
        }
    };
    println!("old: {old}");
    println!("new: {new}");
    println!("{note}");
    Ok(())
}

/// Starts tracing to stderr (journald picks it up), `RUST_LOG` to tune.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The subcommands every sentry binary has.
#[derive(Debug, clap::Subcommand)]
pub enum SentryCommand {
    /// Run the sentry.
    Run(RunArgs),
    /// Check the configuration without starting.
    Validate(RunArgs),
    /// Create or show this sentry's identity.
    #[command(subcommand)]
    Identity(IdentityCommand),
}

/// What `validate` (and `run`, before it starts) checks of the home
/// directory, creating nothing: when it exists (`run` creates it), a
/// directory this user can write, and an identity there (when present)
/// that is private and loads. Run `validate` as the user the sentry runs as.
pub fn check_home(home: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(home) {
        Ok(meta) if !meta.is_dir() => anyhow::bail!("home {} is not a directory", home.display()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => anyhow::bail!("cannot reach home {}: {e}", home.display()),
    }
    hashfleet_shared::secure_file::probe_writable(home).with_context(|| {
        format!(
            "home {} is not writable by this user: run validate as the user the sentry runs as, and give it the directory (mode 0700)",
            home.display()
        )
    })?;
    let identity = Identity::path_in(home);
    if identity.exists() {
        Identity::load(&identity)?;
    }
    Ok(())
}

/// The body of a sentry's `main`: logging, config (exit 64 when bad), then
/// `run` until SIGTERM/SIGINT. The config is an [`AgentConfig`] or a
/// sentry's own type that holds one (sentry-host's adds its hooks).
pub fn sentry_main<Cfg, F, Fut>(
    command: SentryCommand,
    load: impl Fn(&RunArgs) -> anyhow::Result<Cfg>,
    run: F,
) -> std::process::ExitCode
where
    Cfg: AsRef<AgentConfig>,
    F: FnOnce(Cfg) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use std::process::ExitCode;
    init_tracing();
    let exit = |result: anyhow::Result<()>| match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    let (args, validate_only) = match command {
        SentryCommand::Identity(cmd) => return exit(identity_command(cmd)),
        SentryCommand::Run(args) => (args, false),
        SentryCommand::Validate(args) => (args, true),
    };
    // `run` checks the home as `validate` does, so an unusable home also
    // exits 64 (a restart cannot fix it; systemd's RestartPreventExitStatus).
    let config = match load(&args).and_then(|c| check_home(&c.as_ref().home).map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(64);
        }
    };
    if validate_only {
        let agent = config.as_ref();
        println!(
            "configuration is valid: {} commander(s), home {}",
            agent.commanders.len(),
            agent.home.display()
        );
        return ExitCode::SUCCESS;
    }
    // Two workers whatever the core count: a sentry must cost almost
    // nothing on a 64-core rig, and two are plenty for its I/O.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(SENTRY_WORKERS)
        .max_blocking_threads(8)
        .enable_all()
        .build();
    match runtime {
        Ok(rt) => exit(rt.block_on(run(config))),
        Err(e) => exit(Err(e.into())),
    }
}
