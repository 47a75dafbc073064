//! End-to-end: real QUIC sockets on 127.0.0.1, an in-process commander and
//! sentries, checked through the HTTP API.

use std::time::Duration;

use hashfleet_agent::{Session, SessionError};
use hashfleet_shared::heartbeat::seal;
use hashfleet_shared::wire::{
    CommanderMessage, Heartbeat, HeartbeatBody, NackReason, RejectCode, SentryMessage, SentryStatus,
};
use hashfleet_shared::{now_ms, Identity, NodeId, NodeKey};
use hashfleet_tests::{init_logs, raw_session, wait_until, TestCommander, TestSentry};

const WAIT: Duration = Duration::from_secs(20);

fn heartbeat(key: &NodeKey, node: NodeId, seq: u64) -> SentryMessage {
    let hb = Heartbeat {
        node_id: node,
        seq,
        ts_ms: now_ms(),
        body: HeartbeatBody::default(),
    };
    SentryMessage::Heartbeat(seal(key, &hb).unwrap())
}

/// Next message that is not a re-challenge.
async fn next(session: &mut Session) -> CommanderMessage {
    tokio::time::timeout(Duration::from_secs(10), session.rx.recv())
        .await
        .expect("commander answers in time")
        .expect("session alive")
}

#[tokio::test]
async fn token_enrollment_stores_heartbeats() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let c = TestCommander::start_in(&dir.path().join("c"), None).await;
    let token = c.enrollment_token(1).await;
    let mut sentry = TestSentry::start(c.sentry_config(&dir.path().join("s"), Some(token.clone())));

    wait_until(WAIT, "3 heartbeats stored", || async {
        c.sentry_by_node(&sentry.node_id)
            .await
            .is_some_and(|s| s["heartbeats"].as_u64() >= Some(3))
    })
    .await;
    let s = c.sentry_by_node(&sentry.node_id).await.unwrap();
    assert_eq!(s["status"], "approved");
    assert_eq!(s["kind"], "host");
    assert_eq!(s["connected"], true);
    assert_eq!(
        s["wallet_address"],
        sentry.status.get().wallet_address.as_str()
    );
    let id = s["sentry_id"].as_str().unwrap();

    // The host device carries the sysinfo snapshot, keyed by the sentry id.
    let hbs = c
        .get(&format!("/api/v1/sentries/{id}/heartbeats?limit=2"))
        .await;
    let hbs = hbs.as_array().unwrap();
    assert_eq!(hbs.len(), 2);
    assert!(
        hbs[0]["seq"].as_u64() > hbs[1]["seq"].as_u64(),
        "newest first"
    );
    let device = &hbs[0]["snapshot"]["devices"][0];
    assert_eq!(device["type"], "host");
    assert_eq!(device["id"], id);
    assert!(device["metrics"]["mem_total_bytes"].as_f64().unwrap() > 0.0);
    assert!(device["labels"]["hostname"].is_string());

    // The token had one use: a second sentry with it is refused.
    let other = Identity::generate();
    let err = raw_session(&c, &other, &[c.node_id], Some(token))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            SessionError::Rejected {
                code: RejectCode::EnrollTokenInvalid,
                ..
            }
        ),
        "{err}"
    );

    sentry.stop().await;
    let mut c = c;
    c.stop().await;
}

#[tokio::test]
async fn pending_sentry_is_stored_only_after_approval() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let c = TestCommander::start_in(&dir.path().join("c"), None).await;
    let mut sentry = TestSentry::start(c.sentry_config(&dir.path().join("s"), None));

    wait_until(WAIT, "sentry known as pending", || async {
        c.sentry_by_node(&sentry.node_id)
            .await
            .is_some_and(|s| s["status"] == "pending")
    })
    .await;
    // Pending: heartbeats are produced and kept in the outbox, not stored.
    wait_until(WAIT, "outbox fills", || async {
        sentry.status.get().outbox_len >= 3
    })
    .await;
    let s = c.sentry_by_node(&sentry.node_id).await.unwrap();
    assert_eq!(s["heartbeats"], 0);
    assert!(!sentry.status.get().approved);

    let id = s["sentry_id"].as_str().unwrap().to_string();
    let (status, body) = c
        .post(
            &format!("/api/v1/sentries/{id}/approve"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "approved");

    // The live session learns of it; the backlog arrives, from seq 1, without gaps.
    wait_until(WAIT, "backlog stored", || async {
        c.sentry_by_node(&sentry.node_id)
            .await
            .is_some_and(|s| s["heartbeats"].as_u64() >= Some(5))
    })
    .await;
    assert!(sentry.status.get().approved);
    let seqs = c.stored_seqs(&id).await;
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    sentry.stop().await;
    let mut c = c;
    c.stop().await;
}

#[tokio::test]
async fn wrong_pinned_commander_key_is_refused_with_a_clear_message() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCommander::start_in(&dir.path().join("c"), None).await;
    let identity = Identity::generate();
    let wrong = NodeKey::generate().node_id();
    let err = raw_session(&c, &identity, &[wrong], None)
        .await
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        matches!(err, SessionError::NotPinned { presented, .. } if presented == c.node_id),
        "{text}"
    );
    assert!(
        text.contains(&c.node_id.public_key_hex()),
        "names the presented key: {text}"
    );
    assert!(
        text.contains(&wrong.public_key_hex()),
        "names the pinned key: {text}"
    );
    assert!(text.contains("--commander-key"), "says what to do: {text}");

    // The runtime reports the same in its status, and never reaches the commander's store.
    let mut config = c.sentry_config(&dir.path().join("s"), None);
    config.commanders[0].keys = vec![wrong];
    let mut sentry = TestSentry::start(config);
    wait_until(WAIT, "pin error reported", || async {
        sentry
            .status
            .get()
            .last_error
            .is_some_and(|e| e.contains("not pinned"))
    })
    .await;
    assert!(c.sentries().await.is_empty());
    sentry.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn replayed_tampered_and_foreign_heartbeats_are_rejected_and_counted() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCommander::start_in(&dir.path().join("c"), None).await;
    let token = c.enrollment_token(1).await;
    let me = Identity::generate();
    let mut s = raw_session(&c, &me, &[c.node_id], Some(token))
        .await
        .unwrap();
    assert_eq!(s.welcome.status, SentryStatus::Approved);
    assert_eq!(s.welcome.last_seq, 0);

    s.tx.send(&heartbeat(&me.node, me.node_id(), 1))
        .await
        .unwrap();
    assert!(matches!(next(&mut s).await, CommanderMessage::Ack(a) if a.seq == 1));

    // Replay of seq 1, and an older seq.
    s.tx.send(&heartbeat(&me.node, me.node_id(), 1))
        .await
        .unwrap();
    assert!(
        matches!(next(&mut s).await, CommanderMessage::Nack(n) if n.reason == NackReason::Replay && n.last_seq == 1)
    );

    // Tampered: one payload byte flipped after signing.
    let SentryMessage::Heartbeat(mut signed) = heartbeat(&me.node, me.node_id(), 2) else {
        unreachable!()
    };
    let last = signed.payload.len() - 1;
    signed.payload[last] ^= 0x01;
    s.tx.send(&SentryMessage::Heartbeat(signed)).await.unwrap();
    assert!(
        matches!(next(&mut s).await, CommanderMessage::Nack(n) if matches!(n.reason, NackReason::BadSignature | NackReason::Malformed))
    );

    // Signed by a foreign key, for its own node.
    let stranger = NodeKey::generate();
    s.tx.send(&heartbeat(&stranger, stranger.node_id(), 2))
        .await
        .unwrap();
    assert!(
        matches!(next(&mut s).await, CommanderMessage::Nack(n) if n.reason == NackReason::ForeignNode)
    );

    // Signed by a foreign key, claiming our node.
    s.tx.send(&heartbeat(&stranger, me.node_id(), 2))
        .await
        .unwrap();
    assert!(
        matches!(next(&mut s).await, CommanderMessage::Nack(n) if n.reason == NackReason::BadSignature)
    );

    // The session survives all that; a good heartbeat still lands.
    s.tx.send(&heartbeat(&me.node, me.node_id(), 2))
        .await
        .unwrap();
    assert!(matches!(next(&mut s).await, CommanderMessage::Ack(a) if a.seq == 2));

    assert_eq!(
        c.metric("hashfleet_heartbeats_total{result=\"ok\"}").await,
        2.0
    );
    assert_eq!(
        c.metric("hashfleet_heartbeats_total{result=\"replay\"}")
            .await,
        1.0
    );
    assert_eq!(
        c.metric("hashfleet_heartbeats_total{result=\"foreign\"}")
            .await,
        1.0
    );
    let bad = c
        .metric("hashfleet_heartbeats_total{result=\"bad_sig\"}")
        .await
        + c.metric("hashfleet_heartbeats_total{result=\"malformed\"}")
            .await;
    assert_eq!(bad, 2.0);

    let sentry = c.sentry_by_node(&me.node_id()).await.unwrap();
    assert_eq!(sentry["heartbeats"], 2);
    assert_eq!(
        c.stored_seqs(sentry["sentry_id"].as_str().unwrap()).await,
        vec![1, 2]
    );
    s.close("done");
    c.stop().await;
}

#[tokio::test]
async fn revoked_sentry_is_cut_off_and_refused_after_restart() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("c");
    let mut c = TestCommander::start_in(&data, None).await;
    let token = c.enrollment_token(1).await;
    let me = Identity::generate();
    let mut s = raw_session(&c, &me, &[c.node_id], Some(token))
        .await
        .unwrap();
    let id = c.sentry_by_node(&me.node_id()).await.unwrap()["sentry_id"]
        .as_str()
        .unwrap()
        .to_string();

    let (status, body) = c
        .post(
            &format!("/api/v1/sentries/{id}/revoke"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "revoked");
    // The live session is closed at once.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.rx.recv().await {
                Ok(CommanderMessage::Reject(r)) => break format!("{:?}", r.code),
                Ok(_) => continue,
                Err(e) => break e.to_string(),
            }
        }
    })
    .await
    .expect("session closed promptly");
    assert!(
        ended.contains("Revoked") || ended.contains("revoked"),
        "{ended}"
    );

    // Refused at TLS while running, and after a restart.
    let err = raw_session(&c, &me, &[c.node_id], None)
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, SessionError::TlsRefused { .. }), "{err}");
    c.stop().await;
    let mut c = TestCommander::start_in(&data, None).await;
    let err = raw_session(&c, &me, &[c.node_id], None)
        .await
        .err()
        .expect("refused after restart");
    assert!(matches!(err, SessionError::TlsRefused { .. }), "{err}");
    assert!(err.to_string().contains("revoked"), "{err}");
    assert!(
        c.metric("hashfleet_handshakes_total{result=\"tls_refused\"}")
            .await
            >= 1.0
    );
    // Approving a revoked sentry is refused too.
    let (status, body) = c
        .post(
            &format!("/api/v1/sentries/{id}/approve"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    c.stop().await;
}

#[tokio::test]
async fn sessions_survive_rechallenges_and_a_new_session_replaces_the_old() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCommander::start_with(&dir.path().join("c"), None, |cfg| {
        cfg.rechallenge = Duration::from_secs(1);
    })
    .await;
    let token = c.enrollment_token(1).await;
    let mut sentry = TestSentry::start(c.sentry_config(&dir.path().join("s"), Some(token)));
    wait_until(WAIT, "heartbeats across 3 re-challenges", || async {
        c.sentry_by_node(&sentry.node_id)
            .await
            .is_some_and(|s| s["heartbeats"].as_u64() >= Some(18))
    })
    .await;
    // Still the first session: no reconnects happened.
    assert_eq!(
        c.metric("hashfleet_handshakes_total{result=\"ok\"}").await,
        1.0
    );
    sentry.stop().await;

    // Two sessions of one node: the newer wins.
    let me = Identity::generate();
    let token = c.enrollment_token(1).await;
    let mut first = raw_session(&c, &me, &[c.node_id], Some(token))
        .await
        .unwrap();
    let _second = raw_session(&c, &me, &[c.node_id], None).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Err(e) = first.rx.recv().await {
                break e.to_string();
            }
        }
    })
    .await
    .expect("old session closed");
    assert!(ended.contains("replaced"), "{ended}");
    c.stop().await;
}

#[tokio::test]
async fn api_requires_a_bearer_token_and_validates_input() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCommander::start_in(&dir.path().join("c"), None).await;
    let (status, _) = c
        .request(reqwest::Method::GET, "/healthz", None, None)
        .await;
    assert_eq!(status, 200);
    for path in ["/api/v1/sentries", "/metrics", "/api/v1/nope"] {
        let (status, body) = c.request(reqwest::Method::GET, path, None, None).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["code"], "ERR_UNAUTHORIZED");
        let (status, _) = c
            .request(reqwest::Method::GET, path, None, Some("hfa_wrong"))
            .await;
        assert_eq!(status, 401, "{path}");
    }
    let (status, _) = c
        .request(
            reqwest::Method::POST,
            "/api/v1/enrollment-tokens",
            Some(serde_json::json!({"uses":1,"ttl_secs":60})),
            None,
        )
        .await;
    assert_eq!(status, 401, "no unauthenticated writes");

    let (status, body) = c
        .post(
            "/api/v1/enrollment-tokens",
            serde_json::json!({"uses": 0, "ttl_secs": 60}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("ERR_PARAMS_INVALID"))
    );
    let (status, body) = c
        .post("/api/v1/enrollment-tokens", serde_json::json!({"uses": 1}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("ERR_PAYLOAD_INVALID")),
        "{body}"
    );
    let (status, body) = c
        .request(
            reqwest::Method::GET,
            "/api/v1/sentries/zz",
            None,
            Some(&c.token),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("ERR_PARAMS_INVALID"))
    );
    let (status, _) = c
        .request(
            reqwest::Method::GET,
            "/api/v1/sentries/00000000000000ff",
            None,
            Some(&c.token),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = c
        .request(
            reqwest::Method::GET,
            "/api/v1/sentries?limit=0",
            None,
            Some(&c.token),
        )
        .await;
    assert_eq!(status, 400);
    // An oversized body is refused, not buffered.
    let big = serde_json::json!({"uses": 1, "ttl_secs": 60, "pad": "x".repeat(200_000)});
    let (status, _) = c.post("/api/v1/enrollment-tokens", big).await;
    assert_eq!(status, 413);
    c.stop().await;
}

#[tokio::test]
async fn a_sentry_that_lost_its_seq_state_continues_above_the_commander() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCommander::start_in(&dir.path().join("c"), None).await;
    let token = c.enrollment_token(1).await;
    let home = dir.path().join("s");
    let mut sentry = TestSentry::start(c.sentry_config(&home, Some(token)));
    wait_until(WAIT, "5 heartbeats", || async {
        c.sentry_by_node(&sentry.node_id)
            .await
            .is_some_and(|s| s["heartbeats"].as_u64() >= Some(5))
    })
    .await;
    sentry.stop().await;
    let before = c.sentry_by_node(&sentry.node_id).await.unwrap()["last_seq"]
        .as_u64()
        .unwrap();

    // The identity survives, the seq state does not (say, restored from an old backup).
    std::fs::remove_file(home.join("seq")).ok();
    std::fs::remove_dir_all(home.join("outbox")).unwrap();
    let mut sentry = TestSentry::start(c.sentry_config(&home, None));
    wait_until(WAIT, "new heartbeats stored above the old mark", || async {
        c.sentry_by_node(&sentry.node_id)
            .await
            .is_some_and(|s| s["last_seq"].as_u64() >= Some(before + 3))
    })
    .await;
    assert_eq!(
        c.metric("hashfleet_heartbeats_total{result=\"replay\"}")
            .await,
        0.0
    );
    sentry.stop().await;
    c.stop().await;
}
