//! The load generator against a commander in this process: every sentry
//! enrolls from its own source address range, and what it counts as
//! acknowledged is exactly what the store holds.

use std::collections::HashMap;
use std::time::Duration;

use hashfleet_tests::loadgen::{run, LoadgenConfig};
use hashfleet_tests::{init_logs, TestCommander};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_heartbeat_is_stored_once() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let c = TestCommander::start_in(&dir.path().join("c"), None).await;
    let n = 40;
    let token = c.enrollment_token(n as u32).await;
    let mut config = LoadgenConfig::new(c.quic, c.node_id, token, n);
    config.devices_per_sentry = 3;
    config.window = 4;
    config.duration = Duration::from_secs(2);
    config.sentries_per_endpoint = 8;
    config.source_base = "127.3.0.1".parse().unwrap();
    let outcome = run(config).await.expect("the load generator runs");
    let s = &outcome.summary;
    eprintln!("{}", serde_json::to_string(s).unwrap());
    assert_eq!((s.sentries, s.not_connected, s.endpoints), (n, 0, 5));
    assert_eq!(s.rejected, 0);
    assert_eq!(s.errors, 0);
    assert!(s.acked >= n as u64, "every sentry got acks: {s:?}");
    assert_eq!(s.sent, s.acked, "the drain waited for every heartbeat");
    assert!(s.hb_per_s > 0.0 && s.ack_p99_ms >= s.ack_p50_ms);

    // The store holds 1..=acked_upto for every sentry: nothing missing,
    // nothing twice, nothing more.
    let by_node: HashMap<String, String> = c
        .sentries()
        .await
        .into_iter()
        .map(|s| {
            (
                s["node_id"].as_str().unwrap().to_string(),
                s["sentry_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(by_node.len(), n);
    let mut total = 0;
    for (node, upto) in &outcome.acked {
        let id = &by_node[&node.to_string()];
        let seqs = c.stored_seqs(id).await;
        assert_eq!(seqs, (1..=*upto).collect::<Vec<_>>(), "sentry {id}");
        total += upto;
    }
    assert_eq!(total, s.acked);
    let mut lines = Vec::new();
    outcome.write_acked(&mut lines).unwrap();
    assert_eq!(
        String::from_utf8(lines).unwrap().lines().count() as u64,
        s.acked
    );
}
