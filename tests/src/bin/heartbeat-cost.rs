//! What one heartbeat costs, end to end, on this machine. Measures and
//! prints; asserts nothing.
//!
//! `cargo run --release -p hashfleet-tests --bin heartbeat-cost [N]`
//!
//! One in-process commander on 127.0.0.1 and one approved session sending
//! real host snapshots: signing and verification alone; a sequential round
//! trip (send, wait for the durable ack); a pipelined stream; bytes on the
//! wire and in the store; CPU time per heartbeat (both sides, one process).

use std::time::{Duration, Instant};

use hashfleet_agent::endpoint::client_endpoint;
use hashfleet_agent::Session;
use hashfleet_shared::handshake::HelloParams;
use hashfleet_shared::heartbeat::{open, seal};
use hashfleet_shared::wire::{
    CommanderMessage, Heartbeat, HeartbeatBody, SentryKind, SentryMessage,
};
use hashfleet_shared::{codec, now_ms, Identity};
use hashfleet_tests::TestCommander;

/// utime + stime of this process, from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir()?;
    let mut c = TestCommander::start_in(&dir.path().join("c"), None).await;
    let token = c.enrollment_token(1).await;
    let me = Identity::generate();
    let endpoint = client_endpoint(c.quic)?;
    let hello = HelloParams {
        kind: SentryKind::Synthetic,
        agent_version: "bench".into(),
        enroll_token: Some(token),
        labels: Default::default(),
    };
    let mut s = Session::establish(&endpoint, &me, c.quic, &[c.node_id], hello).await?;
    let body = HeartbeatBody {
        devices: vec![hashfleet_sentry_host::HostCollector::new().snapshot()],
    };
    let make = |seq: u64| Heartbeat {
        node_id: me.node_id(),
        seq,
        ts_ms: now_ms(),
        body: body.clone(),
    };
    let frame_bytes =
        codec::encode(&SentryMessage::Heartbeat(seal(&me.node, &make(1))?))?.len() + 4;

    // 1. Signing and verification alone.
    let k = 2_000u64;
    let t = Instant::now();
    let sealed: Vec<_> = (1..=k).map(|i| seal(&me.node, &make(i)).unwrap()).collect();
    let sign_us = t.elapsed().as_secs_f64() * 1e6 / k as f64;
    let t = Instant::now();
    for (i, hb) in sealed.iter().enumerate() {
        open(&me.node_id(), hb, i as u64, now_ms()).unwrap();
    }
    let verify_us = t.elapsed().as_secs_f64() * 1e6 / k as f64;

    // 2. Sequential: send one, wait for its durable ack.
    let mut seq = 0u64;
    let rounds = 500;
    let mut latencies = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        seq += 1;
        let msg = SentryMessage::Heartbeat(seal(&me.node, &make(seq))?);
        let t = Instant::now();
        s.tx.send(&msg).await?;
        loop {
            if let CommanderMessage::Ack(a) = s.rx.recv().await? {
                if a.seq == seq {
                    break;
                }
            }
        }
        latencies.push(t.elapsed());
    }
    latencies.sort();

    // 3. Pipelined: up to `window` heartbeats in flight on one session.
    let window = 256u64;
    let store_before = c.running.as_ref().unwrap().app.store.size_on_disk()?;
    let cpu0 = cpu_time();
    let t = Instant::now();
    let first = seq + 1;
    let last = seq + n;
    let mut acked = seq;
    while acked < last {
        while seq < last && seq - acked < window {
            seq += 1;
            s.tx.send(&SentryMessage::Heartbeat(seal(&me.node, &make(seq))?))
                .await?;
        }
        if let CommanderMessage::Ack(a) = s.rx.recv().await? {
            acked = acked.max(a.seq);
        }
    }
    let elapsed = t.elapsed();
    let cpu = cpu_time() - cpu0;
    let store_after = c.running.as_ref().unwrap().app.store.size_on_disk()?;
    let rate = n as f64 / elapsed.as_secs_f64();

    println!(
        "heartbeat cost on this machine ({} cores), one host snapshot per heartbeat",
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(0)
    );
    println!("  frame on the wire          {frame_bytes} bytes");
    println!("  seal (encode + Ed25519)    {sign_us:.1} µs");
    println!("  open (decode + verify)     {verify_us:.1} µs");
    println!(
        "  send → durable ack, one at a time ({rounds}): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    println!("  pipelined, {window} in flight, seqs {first}..={last}: {rate:.0} heartbeats/s");
    println!(
        "  CPU per heartbeat (sentry + commander, same process): {:.0} µs",
        cpu.as_secs_f64() * 1e6 / n as f64
    );
    println!(
        "  store growth: {:.0} bytes per heartbeat (sled size_on_disk, before compaction)",
        store_after.saturating_sub(store_before) as f64 / n as f64
    );
    s.close("done");
    c.stop().await;
    Ok(())
}
