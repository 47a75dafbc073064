//! `hashfleet-commander demo`: a commander on a fresh data directory under
//! a temp dir, plus one sentry-host in the same process, enrolled with a
//! token. Prints the HTTP URL and the admin token; removes everything on
//! exit. Later releases add emulated ASIC fleets here.

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
        uses_left: 1,
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
        vec![target],
        SentryKind::Host,
    );
    sentry.interval = Duration::from_secs(interval_secs.max(1));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sentry_task = tokio::spawn(hashfleet_sentry_host::run(sentry, async {
        let _ = stop_rx.await;
    }));

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
    println!("  data         {} (removed on exit)", temp.path().display());
    println!();
    println!("  curl -s -H 'Authorization: Bearer {token}' {url}/api/v1/sentries");
    println!("  curl -s -H 'Authorization: Bearer {token}' -H 'content-type: application/json' -d '{{\"query\":{{\"type\":\"host\"}}}}' {url}/api/v1/devices/query");
    println!("  curl -s -H 'Authorization: Bearer {token}' '{url}/api/v1/devices/export.csv'");
    println!();
    println!("Press Ctrl-C to stop.");

    shutdown.await;
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), sentry_task).await;
    running.shutdown().await
}
