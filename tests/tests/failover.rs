//! Commander failover: a sentry with a primary and a backup commander
//! moves to the backup when the primary goes down, returns to the primary
//! when it is back, and no heartbeat is lost or stored twice across the
//! switches (each commander stores and acknowledges its own share).

use std::collections::BTreeSet;
use std::time::Duration;

use hashfleet_agent::CommanderTarget;
use hashfleet_tests::{init_logs, wait_until, TestCommander, TestSentry};

const WAIT: Duration = Duration::from_secs(30);

async fn seqs(c: &TestCommander, node: &hashfleet_shared::NodeId) -> Vec<u64> {
    match c.sentry_by_node(node).await {
        Some(s) => c.stored_seqs(s["sentry_id"].as_str().unwrap()).await,
        None => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_takes_over_then_traffic_returns_to_the_primary_without_loss_or_duplicates() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut primary = TestCommander::start_in(&dir.path().join("a"), None).await;
    let backup = TestCommander::start_in(&dir.path().join("b"), None).await;
    let primary_quic = primary.quic;

    let mut config = primary.sentry_config(
        &dir.path().join("s"),
        Some(primary.enrollment_token(1).await),
    );
    config.commanders.push(CommanderTarget {
        addr: backup.quic.to_string(),
        keys: vec![backup.node_id],
        enroll_token: Some(backup.enrollment_token(1).await),
    });
    config.primary_retry = Duration::from_millis(500);
    let mut sentry = TestSentry::start(config);
    let node = sentry.node_id;

    wait_until(WAIT, "primary stores heartbeats", || async {
        seqs(&primary, &node).await.len() >= 5
    })
    .await;
    assert!(
        seqs(&backup, &node).await.is_empty(),
        "nothing goes to the backup while the primary is up"
    );

    // Primary down: the backup gets the heartbeats (enrolling with its token).
    primary.stop().await;
    wait_until(WAIT, "backup stores heartbeats", || async {
        seqs(&backup, &node).await.len() >= 5
    })
    .await;

    // Primary back on the same address: traffic returns to it.
    let primary = TestCommander::start_in(&dir.path().join("a"), Some(primary_quic)).await;
    let before = seqs(&primary, &node).await.len();
    wait_until(WAIT, "primary stores heartbeats again", || async {
        seqs(&primary, &node).await.len() >= before + 5
    })
    .await;
    let backup_count = seqs(&backup, &node).await.len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        seqs(&backup, &node).await.len(),
        backup_count,
        "the backup gets nothing once the sentry is back on the primary"
    );
    sentry.stop().await;

    // Every seq stored exactly once, across both commanders, with no gap.
    let a = seqs(&primary, &node).await;
    let b = seqs(&backup, &node).await;
    let a_set: BTreeSet<u64> = a.iter().copied().collect();
    let b_set: BTreeSet<u64> = b.iter().copied().collect();
    assert_eq!(a_set.len(), a.len(), "no duplicate on the primary");
    assert_eq!(b_set.len(), b.len(), "no duplicate on the backup");
    assert!(
        a_set.is_disjoint(&b_set),
        "stored on both: {:?}",
        a_set.intersection(&b_set).collect::<Vec<_>>()
    );
    let all: Vec<u64> = a_set.union(&b_set).copied().collect();
    let max = *all.last().unwrap();
    assert_eq!(all, (1..=max).collect::<Vec<u64>>(), "a seq is missing");
    // And the switch back happened: the primary holds seqs above the backup's.
    assert!(a.last() > b.last(), "primary {a:?} backup {b:?}");
}
