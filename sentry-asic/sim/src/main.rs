//! The `hashfleet-sim` binary: parse flags, start tracing, run the sim.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hashfleet_sim::{fleet, ListenMode, Model, SimConfig};

#[derive(Parser)]
#[command(
    name = "hashfleet-sim",
    version,
    about = "Emulates ASIC miners, cooling containers, power meters and relays on loopback"
)]
struct Cli {
    /// How many miners.
    #[arg(long, default_value_t = 10)]
    miners: usize,
    /// First address; devices take consecutive addresses from here.
    #[arg(long, default_value = "127.1.0.1")]
    base_ip: Ipv4Addr,
    /// Models, assigned in turn.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "antminer-s21,whatsminer-m56s,avalon-a1466"
    )]
    models: Vec<String>,
    #[arg(long, default_value_t = 0)]
    containers: usize,
    #[arg(long, default_value_t = 0)]
    meters: usize,
    #[arg(long, default_value_t = 0)]
    relays: usize,
    /// Channels per relay controller; channel c of relay r powers miner r × channels + c.
    #[arg(long, default_value_t = 8)]
    relay_channels: usize,
    /// How long a reboot or power-on keeps a miner unreachable, e.g. 20s.
    #[arg(long, default_value = "20s", value_parser = humantime_duration)]
    boot_time: Duration,
    /// The control API (loopback only; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    control_listen: SocketAddr,
    /// auto, per-address or wildcard.
    #[arg(long, default_value = "auto")]
    listen: ListenMode,
    /// Inject a fault from the start: KIND[@TARGET], e.g. overheat@127.1.0.5,
    /// slow=1500@127.1.0.1-127.1.0.9, offline (every miner). Repeatable.
    #[arg(long = "fault")]
    faults: Vec<String>,
    /// Write a sentry-asic config covering this fleet, once every listener is bound.
    #[arg(long)]
    write_sentry_config: Option<PathBuf>,
    /// Poll interval in that config (at most 10).
    #[arg(long, default_value_t = 10)]
    sentry_interval_secs: u64,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else {
        (s, 1000)
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: use e.g. 20s or 500ms"))?;
    Ok(Duration::from_millis(n.saturating_mul(mul)))
}

fn config(cli: Cli) -> Result<SimConfig, String> {
    let models = cli
        .models
        .iter()
        .map(|m| Model::parse(m))
        .collect::<Result<Vec<_>, _>>()?;
    let faults = cli
        .faults
        .iter()
        .map(|f| fleet::parse_fault_flag(f).map_err(|e| format!("--fault {f}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut config = SimConfig::new(cli.miners, cli.base_ip);
    config.layout.models = models;
    config.layout.containers = cli.containers;
    config.layout.meters = cli.meters;
    config.layout.relays = cli.relays;
    config.layout.relay_channels = cli.relay_channels;
    config.layout.boot_time = cli.boot_time;
    config.listen = cli.listen;
    config.control_listen = cli.control_listen;
    config.faults = faults;
    config.write_sentry_config = cli.write_sentry_config;
    config.sentry_interval_secs = cli.sentry_interval_secs;
    Ok(config)
}

async fn shutdown_signal() {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "hashfleet_sim=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match config(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hashfleet-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hashfleet-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(hashfleet_sim::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hashfleet-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}
