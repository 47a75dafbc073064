//! The commander SIGKILLed at random moments under load: after every
//! restart the load generator's sentries reconnect and resend, and at the
//! end every heartbeat the commander acknowledged is in the store, once.
//!
//! The commander is a real process (`test-commander`); the load generator
//! runs in this process. `HASHFLEET_CRASH_KILLS` sets the number of kills
//! (default 20; `docs/benchmarks.md` has a 100-kill run).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hashfleet_commander::store::{SledStore, Store};
use hashfleet_shared::NodeId;
use hashfleet_tests::init_logs;
use hashfleet_tests::loadgen::{run_until, LoadgenConfig};
use serde_json::Value;

const SENTRIES: usize = 30;

/// A commander process and where it listens.
struct Commander {
    child: Child,
    quic: SocketAddr,
    http: String,
    key: NodeId,
}

impl Commander {
    /// Starts on `quic` (port 0 the first time) and waits for its line.
    fn start(data_dir: &Path, quic: &str) -> Commander {
        let mut child = Command::new(env!("CARGO_BIN_EXE_test-commander"))
            .arg(data_dir)
            .arg(quic)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("test-commander starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("test-commander prints where it listens");
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("test-commander printed {line:?}: {e}"));
        Commander {
            child,
            quic: v["quic"].as_str().unwrap().parse().unwrap(),
            http: format!("http://{}", v["http"].as_str().unwrap()),
            key: NodeId::from_public_key_hex(v["public_key"].as_str().unwrap()).unwrap(),
        }
    }

    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }
}

impl Drop for Commander {
    /// Also when a test fails: no commander outlives it.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn api(
    http: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let mut req = reqwest::Client::new()
        .request(method, format!("{http}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("HTTP request");
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_commander_loses_and_duplicates_nothing() {
    init_logs();
    let kills: usize = std::env::var("HASHFLEET_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("c");
    let mut commander = Commander::start(&data, "127.0.0.1:0");
    let quic = commander.quic.to_string();
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let token = token.trim().to_string();
    let enroll = api(
        &commander.http,
        &token,
        reqwest::Method::POST,
        "/api/v1/enrollment-tokens",
        Some(serde_json::json!({"uses": SENTRIES, "ttl_secs": 3600})),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut config = LoadgenConfig::new(commander.quic, commander.key, enroll, SENTRIES);
    config.window = 4;
    config.devices_per_sentry = 2;
    config.duration = Duration::from_secs(3600);
    config.sentries_per_endpoint = 5;
    config.source_base = "127.4.0.1".parse().unwrap();
    config.drain = Duration::from_secs(60);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let loadgen = tokio::spawn(run_until(config, async {
        let _ = stop_rx.await;
    }));
    // Kill at random moments while heartbeats flow.
    let mut rng = fastrand::Rng::with_seed(0xC4A5);
    let t0 = Instant::now();
    for k in 0..kills {
        let up = Duration::from_millis(rng.u64(200..1500));
        tokio::time::sleep(up).await;
        commander.kill();
        eprintln!("kill {}: after {} ms up", k + 1, up.as_millis());
        commander = Commander::start(&data, &quic);
    }
    // Let the fleet settle on the last commander, then stop and drain.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(());
    let outcome = loadgen.await.unwrap().expect("the load generator runs");
    let s = &outcome.summary;
    eprintln!(
        "{kills} kills in {:.1} s; {}",
        t0.elapsed().as_secs_f64(),
        serde_json::to_string(s).unwrap()
    );
    assert_eq!(s.not_connected, 0);
    assert_eq!(s.rejected, 0);
    assert!(s.errors >= kills as u64, "the kills cut sessions: {s:?}");

    // The last commander is SIGKILLed too; the store is then read
    // directly (sled recovers it on open), every heartbeat of every sentry.
    commander.kill();
    let store = SledStore::open(&data.join("store")).expect("the store opens after SIGKILL");
    let by_node: HashMap<[u8; 32], u64> = store
        .sentries(0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.node_key, r.sentry_id))
        .collect();
    assert_eq!(by_node.len(), SENTRIES);
    let (mut missing, mut duplicates, mut acked, mut stored) = (0u64, 0u64, 0u64, 0u64);
    for (node, upto) in &outcome.acked {
        let id = by_node[node.public_key()];
        let mut seqs: Vec<u64> = store
            .recent_heartbeats(id, usize::MAX)
            .unwrap()
            .iter()
            .map(|h| h.seq)
            .collect();
        seqs.sort_unstable();
        let before = seqs.len();
        seqs.dedup();
        duplicates += (before - seqs.len()) as u64;
        missing += (1..=*upto)
            .filter(|seq| seqs.binary_search(seq).is_err())
            .count() as u64;
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "sentry {id:016x}: a gap in the stored seqs"
        );
        acked += upto;
        stored += before as u64;
    }
    eprintln!("acknowledged {acked}, stored {stored}, missing {missing}, duplicates {duplicates}");
    assert_eq!((missing, duplicates), (0, 0));
    assert!(acked > 0);
}
