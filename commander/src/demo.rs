//! `hashfleet-commander demo`: a commander on a fresh data directory under
//! a temp dir, one sentry-host, and an emulated ASIC fleet (`hashfleet-sim`:
//! 200 miners, containers, meters and relays on 127.1.0.0/16) watched by a
//! sentry-asic, all in this process and enrolled with tokens. Prints the
//! HTTP URL and the admin token; removes everything on exit.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use hashfleet_agent::{AgentConfig, CommanderTarget};
use hashfleet_shared::enroll::{generate_token, token_hash};
use hashfleet_shared::now_ms;
use hashfleet_shared::wire::SentryKind;

use crate::store::TokenRecord;
use crate::CommanderConfig;

pub async fn run(
    http_listen: SocketAddr,
    interval_secs: u64,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new()
        .prefix("hashfleet-demo-")
        .tempdir()
        .context("creating the demo directory")?;
    let mut config = CommanderConfig::new(temp.path().join("commander"));
    config.quic_listen = "127.0.0.1:0".parse().expect("valid");
    config.http_listen = http_listen;
    if std::net::TcpListener::bind(http_listen).is_err() {
        eprintln!("note: {http_listen} is in use; the demo picks a free port instead");
        config.http_listen.set_port(0);
    }
    let running = crate::start(config).await?;

    let token = generate_token("hfe_");
    let record = TokenRecord {
        uses_left: 2,
        expires_ms: now_ms() + 3_600_000,
        created_ms: now_ms(),
    };
    running.app.store.put_token(&token_hash(&token), &record)?;

    let target = CommanderTarget {
        addr: running.quic_addr.to_string(),
        keys: vec![running.node_id],
        enroll_token: Some(token),
    };
    let mut sentry = AgentConfig::new(
        temp.path().join("sentry-host"),
        vec![target.clone()],
        SentryKind::Host,
    );
    sentry.interval = Duration::from_secs(interval_secs.max(1));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let sentry_task = tokio::spawn(hashfleet_sentry_host::run(sentry, stopped(stop_rx.clone())));

    // The emulated ASIC fleet and the sentry-asic watching it.
    let asic = start_asic_fleet(temp.path(), target, stopped(stop_rx.clone())).await;

    let url = format!("http://{}", running.http_addr);
    let token = &running.admin_token;
    println!();
    println!("Hashfleet demo is running.");
    println!("  HTTP API     {url}");
    println!("  admin token  {token}");
    println!(
        "  commander    QUIC {} key {}",
        running.quic_addr,
        running.node_id.public_key_hex()
    );
    match &asic {
        Ok((sim, _)) => {
            for line in sim.describe() {
                println!("  sim {line}");
            }
        }
        Err(e) => {
            println!("  ASIC fleet   not started: {e:#}");
        }
    }
    println!("  data         {} (removed on exit)", temp.path().display());
    println!();
    println!("  curl -s -H 'Authorization: Bearer {token}' {url}/api/v1/sentries");
    println!("  curl -s -H 'Authorization: Bearer {token}' -H 'content-type: application/json' -d '{{\"query\":{{\"type\":\"host\"}}}}' {url}/api/v1/devices/query");
    println!("  curl -s -H 'Authorization: Bearer {token}' -H 'content-type: application/json' -d '{{\"query\":{{\"type\":\"miner\"}},\"limit\":5}}' {url}/api/v1/devices/query");
    println!("  curl -s -H 'Authorization: Bearer {token}' '{url}/api/v1/devices/export.csv'");
    println!();
    println!("Press Ctrl-C to stop.");

    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), sentry_task).await;
    if let Ok((sim, task)) = asic {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        sim.shutdown().await;
    }
    running.shutdown().await
}

/// Miners in the demo fleet.
const DEMO_MINERS: usize = 200;

/// Starts `hashfleet-sim` on 127.1.0.1 and up, and a sentry-asic using the
/// config the sim writes.
async fn start_asic_fleet(
    dir: &std::path::Path,
    target: CommanderTarget,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(
    hashfleet_sim::Sim,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)> {
    let config_path = dir.join("sentry-asic.toml");
    let mut sim = hashfleet_sim::SimConfig::new(DEMO_MINERS, std::net::Ipv4Addr::new(127, 1, 0, 1));
    sim.layout.containers = 2;
    sim.layout.meters = 2;
    sim.layout.relays = 2;
    sim.layout.boot_time = Duration::from_secs(15);
    sim.write_sentry_config = Some(config_path.clone());
    sim.sentry_interval_secs = 10;
    let sim = hashfleet_sim::Sim::start(sim)
        .await
        .context("starting the emulated fleet (hashfleet-sim)")?;
    let agent = AgentConfig::new(dir.join("sentry-asic"), vec![target], SentryKind::Asic);
    let config = hashfleet_sentry_asic::SentryAsicConfig::from_file(agent, &config_path)?;
    let task = tokio::spawn(hashfleet_sentry_asic::run_with(config, stop));
    Ok((sim, task))
}
