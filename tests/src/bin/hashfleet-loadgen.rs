//! `hashfleet-loadgen`: N virtual sentries against one commander; prints
//! one JSON summary line (see `hashfleet_tests::loadgen`).
//!
//! `cargo run --release -p hashfleet-tests --bin hashfleet-loadgen -- \
//!    --commander 127.0.0.1:4433 --commander-key HEX --enroll-token TOKEN \
//!    --sentries 1000 --duration-secs 30`

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hashfleet_tests::loadgen::{run, LoadgenConfig};

#[derive(Parser)]
#[command(
    name = "hashfleet-loadgen",
    version,
    about = "N virtual sentries in one process against one commander"
)]
struct Args {
    /// The commander's QUIC address.
    #[arg(long)]
    commander: SocketAddr,
    /// The commander's public key, 64 hex digits (`hashfleet-commander info`).
    #[arg(long)]
    commander_key: String,
    /// An enrollment token with at least N uses.
    #[arg(long)]
    enroll_token: String,
    /// Virtual sentries, each with its own identity and QUIC connection.
    #[arg(long)]
    sentries: usize,
    /// Synthetic devices in each heartbeat.
    #[arg(long, default_value_t = 1)]
    devices_per_sentry: usize,
    /// Milliseconds between a sentry's heartbeats; 0: as fast as acknowledged.
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Heartbeats in flight per sentry with --interval-ms 0.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Seconds of sending, from the moment all sentries are connected.
    #[arg(long)]
    duration_secs: u64,
    /// Write every acknowledged (node_id, seq) pair here, one per line.
    #[arg(long)]
    acked_out: Option<PathBuf>,
    /// Sentries sharing one client endpoint (one UDP socket, one source address).
    #[arg(long, default_value_t = 250)]
    sentries_per_endpoint: usize,
    /// The first source address; each endpoint takes the next one.
    #[arg(long, default_value = "127.100.0.1")]
    source_base: Ipv4Addr,
    /// Handshakes in progress at once while the fleet connects.
    #[arg(long, default_value_t = 256)]
    connect_parallel: usize,
    /// Seconds the whole fleet may take to connect.
    #[arg(long, default_value_t = 600)]
    connect_timeout_secs: u64,
}

fn main() -> ExitCode {
    // Warnings only by default: a hundred thousand sentries say a lot.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let args = Args::parse();
    let key = match hashfleet_agent::config::parse_key(&args.commander_key) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("--commander-key: {e}");
            return ExitCode::from(64);
        }
    };
    let mut config = LoadgenConfig::new(args.commander, key, args.enroll_token, args.sentries);
    config.devices_per_sentry = args.devices_per_sentry;
    config.interval = Duration::from_millis(args.interval_ms);
    config.window = args.window;
    config.duration = Duration::from_secs(args.duration_secs);
    config.sentries_per_endpoint = args.sentries_per_endpoint;
    config.source_base = args.source_base;
    config.connect_parallel = args.connect_parallel;
    config.connect_timeout = Duration::from_secs(args.connect_timeout_secs);
    config.announce = true;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match runtime.block_on(run(config)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("hashfleet-loadgen: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.acked_out {
        let written = std::fs::File::create(path).and_then(|f| {
            let mut w = std::io::BufWriter::new(f);
            outcome.write_acked(&mut w)?;
            std::io::Write::flush(&mut w)
        });
        if let Err(e) = written {
            eprintln!("--acked-out {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    match serde_json::to_string(&outcome.summary) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("cannot print the summary: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
