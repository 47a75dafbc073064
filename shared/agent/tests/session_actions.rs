//! Actions through a real session: a fake commander (quinn on 127.0.0.1,
//! port 0, the pure handshake from `hashfleet-shared`) sends a signed
//! `Action` to a running `Agent` and reads the signed `ActionResult`.
//! Heartbeats keep flowing while the action runs, and a resend on a new
//! session gets the stored result.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hashfleet_agent::framing::{FramedRecv, FramedSend};
use hashfleet_agent::session::peer_node;
use hashfleet_agent::{Agent, AgentConfig, Collector, CommanderTarget, Executor};
use hashfleet_shared::action::{open_result, seal_action};
use hashfleet_shared::handshake::CommanderHandshake;
use hashfleet_shared::tls::{self, ClientKeyPolicy};
use hashfleet_shared::wire::{
    Ack, ActionRequest, ActionResultBody, CommanderMessage, HeartbeatBody, SentryKind,
    SentryMessage, SentryStatus, SignedAction, Welcome, EXPORTER_LABEL,
};
use hashfleet_shared::{codec, now_ms, NodeId, NodeKey};
use quinn::crypto::rustls::QuicServerConfig;
use serde_json::{json, Value};

#[derive(Debug)]
struct AllowAll;

impl ClientKeyPolicy for AllowAll {
    fn allow(&self, _: &NodeId) -> bool {
        true
    }
}

struct Empty;

impl Collector for Empty {
    async fn collect(&mut self) -> HeartbeatBody {
        HeartbeatBody::default()
    }
}

/// Takes a while, and counts its runs.
#[derive(Default)]
struct Slow {
    runs: Arc<AtomicUsize>,
}

impl Executor for Slow {
    async fn execute(&self, method: &str, _: &Value, target: &str) -> Result<Value, String> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(800)).await;
        Ok(json!({ "method": method, "target": target, "run": n }))
    }
}

fn commander_key() -> NodeKey {
    NodeKey::from_seed(&[3u8; 32])
}

fn server() -> quinn::Endpoint {
    let tls = tls::server_config(&commander_key(), Arc::new(AllowAll)).unwrap();
    let quic = QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    quinn::Endpoint::server(config, ([127, 0, 0, 1], 0).into()).unwrap()
}

/// One accepted session, past `Welcome`.
struct Fake {
    conn: quinn::Connection,
    tx: FramedSend,
    rx: FramedRecv<SentryMessage>,
    sentry: NodeId,
}

async fn accept(endpoint: &quinn::Endpoint) -> Fake {
    let conn = endpoint.accept().await.unwrap().await.unwrap();
    let sentry = peer_node(&conn).unwrap();
    let mut exporter = [0u8; 32];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .unwrap();
    let (send, recv) = conn.accept_bi().await.unwrap();
    let (mut tx, mut rx) = (
        FramedSend::new(send),
        FramedRecv::<SentryMessage>::new(recv),
    );
    let SentryMessage::Hello(hello) = rx.recv().await.unwrap() else {
        panic!("no hello")
    };
    let (pending, challenge) =
        CommanderHandshake::on_hello(hello, &sentry, exporter, &commander_key(), [6u8; 32])
            .unwrap();
    tx.send(&CommanderMessage::Challenge(challenge))
        .await
        .unwrap();
    let SentryMessage::Proof(proof) = rx.recv().await.unwrap() else {
        panic!("no proof")
    };
    pending.on_proof(&proof).unwrap();
    tx.send(&CommanderMessage::Welcome(Welcome {
        sentry_id: 0xa1,
        status: SentryStatus::Approved,
        last_seq: 0,
        server_time_ms: now_ms(),
    }))
    .await
    .unwrap();
    Fake {
        conn,
        tx,
        rx,
        sentry,
    }
}

impl Fake {
    /// Reads until an action result, acknowledging heartbeats; returns the
    /// result and how many heartbeats came meanwhile.
    async fn result(&mut self) -> (ActionResultBody, usize) {
        let mut heartbeats = 0;
        loop {
            match self.rx.recv().await.unwrap() {
                SentryMessage::Heartbeat(signed) => {
                    let hb: hashfleet_shared::wire::Heartbeat =
                        codec::decode(&signed.payload).unwrap();
                    heartbeats += 1;
                    self.tx
                        .send(&CommanderMessage::Ack(Ack { seq: hb.seq }))
                        .await
                        .unwrap();
                }
                SentryMessage::ActionResult(signed) => {
                    return (open_result(&self.sentry, &signed).unwrap(), heartbeats)
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn action(sentry: NodeId) -> SignedAction {
    let request = ActionRequest {
        action_id: "act-session".into(),
        node_id: sentry,
        method: "runHook".into(),
        params: r#"["backup"]"#.into(),
        targets: vec!["00000000000000a1".into()],
        voters: vec!["alice".into()],
        issued_at_ms: now_ms(),
        expires_at_ms: now_ms() + 3_600_000,
    };
    seal_action(&commander_key(), &request).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_over_a_session_runs_once_without_stalling_heartbeats() {
    let endpoint = server();
    let addr = endpoint.local_addr().unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new(
        home.path().to_path_buf(),
        vec![CommanderTarget {
            addr: addr.to_string(),
            keys: vec![commander_key().node_id()],
            enroll_token: None,
        }],
        SentryKind::Synthetic,
    );
    config.interval = Duration::from_millis(100);
    config.backoff_min = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(200);
    let executor = Slow::default();
    let runs = executor.runs.clone();
    let agent = Agent::new(config, Empty, executor).unwrap();
    let status = agent.status();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));

    let mut session = accept(&endpoint).await;
    let signed = action(session.sentry);
    session
        .tx
        .send(&CommanderMessage::Action(signed.clone()))
        .await
        .unwrap();
    let (body, heartbeats) = session.result().await;
    assert_eq!(body.action_id, "act-session");
    assert!(!body.replayed);
    assert!(body.results[0].ok, "{:?}", body.results);
    // The 800 ms action did not hold up the 100 ms heartbeats.
    assert!(
        heartbeats >= 3,
        "only {heartbeats} heartbeats during the action"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(status.get().actions_executed, 1);

    // The session drops; the commander resends on the next one.
    session.conn.close(0u32.into(), b"bye");
    let mut session = accept(&endpoint).await;
    session
        .tx
        .send(&CommanderMessage::Action(signed))
        .await
        .unwrap();
    let (again, _) = session.result().await;
    assert!(again.replayed);
    assert_eq!(again.results, body.results);
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // Over the same real session: a request whose signature was tampered
    // with, and one signed by a key the sentry does not pin. Both are
    // refused with a signed answer and nothing runs.
    let fresh = |id: &str, key: &NodeKey| {
        let request = ActionRequest {
            action_id: id.into(),
            node_id: session.sentry,
            method: "runHook".into(),
            params: r#"["backup"]"#.into(),
            targets: vec!["00000000000000a1".into()],
            voters: vec!["mallory".into()],
            issued_at_ms: now_ms(),
            expires_at_ms: now_ms() + 3_600_000,
        };
        seal_action(key, &request).unwrap()
    };
    let mut tampered = fresh("act-tampered", &commander_key());
    tampered.signature[7] ^= 0x40;
    let foreign = fresh("act-foreign", &NodeKey::generate());
    for (signed, id) in [(tampered, "act-tampered"), (foreign, "act-foreign")] {
        session
            .tx
            .send(&CommanderMessage::Action(signed))
            .await
            .unwrap();
        let (refused, _) = session.result().await;
        assert_eq!(refused.action_id, id);
        assert!(!refused.results[0].ok, "{:?}", refused.results);
        assert!(
            refused.results[0].detail.starts_with("refused"),
            "{:?}",
            refused.results
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "nothing forged ran");
    assert_eq!(status.get().actions_refused, 2);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the sentry stops")
        .unwrap()
        .unwrap();
}
