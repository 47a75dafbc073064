//! The status API over a real socket on 127.0.0.1:0.

use std::net::SocketAddr;
use std::time::Duration;

use hashfleet_agent::status_api::{self, StatusBody};
use hashfleet_agent::{CollectorStates, StatusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const INTERVAL: Duration = Duration::from_secs(10);

struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(status: StatusHandle, collectors: CollectorStates) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(status_api::serve(
            listener,
            status,
            INTERVAL,
            collectors,
            async move {
                let _ = stopped.await;
            },
        ));
        Server { addr, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the server stops on shutdown")
            .unwrap()
            .unwrap();
    }
}

struct Reply {
    code: u16,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One request on a fresh connection, read until the server closes it.
async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut raw))
        .await
        .expect("the server answers")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    Reply {
        code,
        head: head.to_string(),
        body: body.to_string(),
    }
}

#[tokio::test]
async fn healthz_answers_ok() {
    let server = Server::start(StatusHandle::default(), CollectorStates::default()).await;
    let reply = request(server.addr, "GET", "/healthz").await;
    assert_eq!(reply.code, 200);
    assert_eq!(reply.body.trim(), "ok");
    server.stop().await;
}

#[tokio::test]
async fn readyz_turns_ready_once_approved_and_acknowledged() {
    let status = StatusHandle::default();
    let server = Server::start(status.clone(), CollectorStates::default()).await;

    let reply = request(server.addr, "GET", "/readyz").await;
    assert_eq!(reply.code, 503);
    assert_eq!(
        reply.json(),
        serde_json::json!({"ready": false, "reason": "not approved by the commander yet"})
    );

    status.update(|s| s.approved = true);
    let reply = request(server.addr, "GET", "/readyz").await;
    assert_eq!(reply.code, 503);
    let reason = reply.json()["reason"].as_str().unwrap().to_string();
    assert!(
        reason.starts_with("no heartbeat acknowledged in the last 30 s (3 intervals)"),
        "{reason}"
    );

    status.update(|s| s.last_ack_at = Some(hashfleet_shared::now_ms() - 31_000));
    let reply = request(server.addr, "GET", "/readyz").await;
    assert_eq!(reply.code, 503, "{}", reply.body);

    status.update(|s| s.last_ack_at = Some(hashfleet_shared::now_ms()));
    let reply = request(server.addr, "GET", "/readyz").await;
    assert_eq!(reply.code, 200, "{}", reply.body);
    assert_eq!(reply.json(), serde_json::json!({"ready": true}));

    server.stop().await;
}

#[tokio::test]
async fn status_reports_every_field_and_the_collectors() {
    let status = StatusHandle::default();
    status.update(|s| {
        s.node_id = "node-1".into();
        s.wallet_address = "wallet-1".into();
        s.commander = Some("127.0.0.1:4433".into());
        s.connected = true;
        s.approved = true;
        s.sentry_id = Some("sentry-7".into());
        s.last_heartbeat_at = Some(1_000);
        s.last_ack_at = Some(900);
        s.last_ack_seq = 41;
        s.last_seq = 42;
        s.outbox_len = 1;
        s.outbox_dropped = 2;
        s.consecutive_failures = 3;
        s.last_error = Some("timed out".into());
        s.actions_executed = 5;
        s.actions_refused = 6;
    });
    let collectors = CollectorStates::default();
    collectors.set("gpu", "ok");
    let server = Server::start(status, collectors.clone()).await;
    collectors.set("asic", "unreachable");

    let reply = request(server.addr, "GET", "/status").await;
    assert_eq!(reply.code, 200);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{}",
        reply.head
    );
    let json = reply.json();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    let mut expected = vec![
        "node_id",
        "wallet_address",
        "commander",
        "connected",
        "approved",
        "sentry_id",
        "last_heartbeat_at",
        "last_ack_at",
        "last_ack_seq",
        "last_seq",
        "outbox_len",
        "outbox_dropped",
        "consecutive_failures",
        "last_error",
        "actions_executed",
        "actions_refused",
        "collectors",
    ];
    expected.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, expected);

    let body: StatusBody = serde_json::from_value(json).unwrap();
    assert_eq!(body.node_id, "node-1");
    assert_eq!(body.wallet_address, "wallet-1");
    assert_eq!(body.commander.as_deref(), Some("127.0.0.1:4433"));
    assert!(body.connected && body.approved);
    assert_eq!(body.sentry_id.as_deref(), Some("sentry-7"));
    assert_eq!(body.last_heartbeat_at, Some(1_000));
    assert_eq!(body.last_ack_at, Some(900));
    assert_eq!((body.last_ack_seq, body.last_seq), (41, 42));
    assert_eq!((body.outbox_len, body.outbox_dropped), (1, 2));
    assert_eq!(body.consecutive_failures, 3);
    assert_eq!(body.last_error.as_deref(), Some("timed out"));
    assert_eq!((body.actions_executed, body.actions_refused), (5, 6));
    assert_eq!(body.collectors.get("gpu").map(String::as_str), Some("ok"));
    assert_eq!(
        body.collectors.get("asic").map(String::as_str),
        Some("unreachable")
    );

    server.stop().await;
}

#[tokio::test]
async fn unknown_path_is_404_json() {
    let server = Server::start(StatusHandle::default(), CollectorStates::default()).await;
    let reply = request(server.addr, "GET", "/metrics").await;
    assert_eq!(reply.code, 404);
    let error = reply.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("/status"), "{error}");
    server.stop().await;
}

#[tokio::test]
async fn other_methods_are_405() {
    let server = Server::start(StatusHandle::default(), CollectorStates::default()).await;
    for (method, path) in [
        ("POST", "/status"),
        ("PUT", "/readyz"),
        ("DELETE", "/healthz"),
    ] {
        let reply = request(server.addr, method, path).await;
        assert_eq!(reply.code, 405, "{method} {path}");
        assert!(
            reply.header("allow").is_some_and(|v| v.contains("GET")),
            "{}",
            reply.head
        );
        assert!(reply.json()["error"]
            .as_str()
            .unwrap()
            .contains("read-only"));
    }
    server.stop().await;
}

#[tokio::test]
async fn request_body_is_refused() {
    let server = Server::start(StatusHandle::default(), CollectorStates::default()).await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(
        b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 413 "), "{raw}");
    server.stop().await;
}
