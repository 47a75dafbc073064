//! The sentry's local status API over a real session: not ready while
//! pending, ready once approved and acknowledged, and the status JSON.

use std::time::Duration;

use hashfleet_tests::{init_logs, wait_until, TestCommander, TestSentry};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// A loopback port free right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url).await.expect("status API answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_approval_and_acks_and_status_tells_the_state() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let c = TestCommander::start_in(&dir.path().join("c"), None).await;
    let mut config = c.sentry_config(&dir.path().join("s"), None);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.status_listen = Some(addr);
    let mut sentry = TestSentry::start(config);
    let base = format!("http://{addr}");

    wait_until(WAIT, "status API up", || async {
        reqwest::get(format!("{base}/healthz")).await.is_ok()
    })
    .await;
    // Pending: not ready, and it says why.
    wait_until(WAIT, "connected while pending", || async {
        get(&format!("{base}/status")).await.1["connected"] == true
    })
    .await;
    let (code, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("not approved"),
        "{body}"
    );

    // Approved: ready once a heartbeat is acknowledged.
    let id = c.sentry_by_node(&sentry.node_id).await.unwrap()["sentry_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, body) = c
        .post(
            &format!("/api/v1/sentries/{id}/approve"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    wait_until(WAIT, "ready", || async {
        get(&format!("{base}/readyz")).await.0 == 200
    })
    .await;
    let (code, status) = get(&format!("{base}/status")).await;
    assert_eq!(code, 200);
    assert_eq!(status["node_id"], sentry.node_id.to_string());
    assert_eq!(status["approved"], true);
    assert_eq!(status["commander"], c.quic.to_string());
    assert_eq!(status["sentry_id"], id.as_str());
    assert!(status["last_ack_seq"].as_u64().unwrap() >= 1, "{status}");
    assert!(status["wallet_address"].as_str().unwrap().starts_with("0x"));
    assert!(status["collectors"]["host"].is_string(), "{status}");

    sentry.stop().await;
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "the status API stops with the sentry"
    );
}
