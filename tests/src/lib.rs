//! Test harness for end-to-end tests: a commander on 127.0.0.1 port 0 in a
//! temp dir, an HTTP client with its admin token, sentries in-process, and
//! polling helpers. Everything cleans up when dropped.

pub mod fakes;
pub mod loadgen;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hashfleet_agent::{AgentConfig, CommanderTarget};
use hashfleet_commander::{CommanderConfig, Running};
use hashfleet_shared::wire::SentryKind;
use hashfleet_shared::NodeId;
use serde_json::Value;

/// Logs for a test run, tuned with `RUST_LOG` (quiet by default).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Polls `check` every 50 ms until it returns true; panics after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A commander for one test.
pub struct TestCommander {
    pub running: Option<Running>,
    pub data_dir: PathBuf,
    pub http: String,
    pub quic: SocketAddr,
    pub node_id: NodeId,
    pub token: String,
    client: reqwest::Client,
}

impl TestCommander {
    /// Starts on 127.0.0.1 port 0 with `data_dir`; `quic` pins the QUIC
    /// address (to restart on the same one).
    pub async fn start_in(data_dir: &Path, quic: Option<SocketAddr>) -> Self {
        Self::start_with(data_dir, quic, |_| {}).await
    }

    pub async fn start_with(
        data_dir: &Path,
        quic: Option<SocketAddr>,
        tune: impl FnOnce(&mut CommanderConfig),
    ) -> Self {
        let mut config = CommanderConfig::new(data_dir.to_path_buf());
        config.quic_listen = quic.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        config.http_listen = "127.0.0.1:0".parse().unwrap();
        tune(&mut config);
        let running = hashfleet_commander::start(config)
            .await
            .expect("commander starts");
        TestCommander {
            http: format!("http://{}", running.http_addr),
            quic: running.quic_addr,
            node_id: running.node_id,
            token: running.admin_token.clone(),
            data_dir: data_dir.to_path_buf(),
            running: Some(running),
            client: reqwest::Client::new(),
        }
    }

    /// Graceful stop (flushes).
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("commander stops cleanly");
        }
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.http));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self
            .request(reqwest::Method::GET, path, None, Some(&self.token))
            .await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, Some(body), Some(&self.token))
            .await
    }

    pub async fn enrollment_token(&self, uses: u32) -> String {
        let (status, body) = self
            .post(
                "/api/v1/enrollment-tokens",
                serde_json::json!({"uses": uses, "ttl_secs": 600}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().expect("token").to_string()
    }

    pub async fn sentries(&self) -> Vec<Value> {
        self.get("/api/v1/sentries")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The sentry with this node id, if the commander knows it.
    pub async fn sentry_by_node(&self, node: &NodeId) -> Option<Value> {
        let node = node.to_string();
        self.sentries()
            .await
            .into_iter()
            .find(|s| s["node_id"] == node.as_str())
    }

    /// Seqs stored for a sentry, ascending.
    pub async fn stored_seqs(&self, sentry_id: &str) -> Vec<u64> {
        let body = self
            .get(&format!(
                "/api/v1/sentries/{sentry_id}/heartbeats?limit=10000"
            ))
            .await;
        let mut seqs: Vec<u64> = body
            .as_array()
            .expect("array")
            .iter()
            .map(|h| h["seq"].as_u64().expect("seq"))
            .collect();
        seqs.reverse();
        seqs
    }

    /// A sample from `/metrics`, e.g. `hashfleet_heartbeats_total{result="replay"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let (status, body) = self
            .request(reqwest::Method::GET, "/metrics", None, Some(&self.token))
            .await;
        assert_eq!(status, 200);
        let text = body.as_str().expect("metrics text").to_string();
        parse_metric(&text, series).unwrap_or_else(|| panic!("no series {series} in /metrics"))
    }

    /// A sentry config pointing at this commander.
    pub fn sentry_config(&self, home: &Path, token: Option<String>) -> AgentConfig {
        let target = CommanderTarget {
            addr: self.quic.to_string(),
            keys: vec![self.node_id],
            enroll_token: token,
        };
        let mut config = AgentConfig::new(home.to_path_buf(), vec![target], SentryKind::Host);
        config.interval = Duration::from_millis(200);
        config.backoff_min = Duration::from_millis(100);
        config.backoff_max = Duration::from_millis(500);
        config
    }
}

/// A session made by hand (a synthetic sentry with `identity`), up to
/// `Welcome`, for tests that send chosen frames.
pub async fn raw_session(
    c: &TestCommander,
    identity: &hashfleet_shared::Identity,
    pins: &[NodeId],
    token: Option<String>,
) -> Result<hashfleet_agent::Session, hashfleet_agent::SessionError> {
    let endpoint = hashfleet_agent::endpoint::client_endpoint(c.quic)
        .map_err(|e| hashfleet_agent::SessionError::Config(e.to_string()))?;
    let hello = hashfleet_shared::handshake::HelloParams {
        kind: SentryKind::Synthetic,
        agent_version: "test".into(),
        enroll_token: token,
        labels: Default::default(),
    };
    hashfleet_agent::Session::establish(&endpoint, identity, c.quic, pins, hello).await
}

/// The value of one series in a Prometheus text exposition.
pub fn parse_metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// A running in-process sentry-host.
pub struct TestSentry {
    pub status: hashfleet_agent::StatusHandle,
    pub node_id: NodeId,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestSentry {
    pub fn start(config: AgentConfig) -> Self {
        Self::start_with(hashfleet_sentry_host::config::HostConfig::new(config))
    }

    /// A sentry-host with host actions (hooks, reboot) configured.
    pub fn start_with(config: hashfleet_sentry_host::config::HostConfig) -> Self {
        let agent = hashfleet_sentry_host::agent_with(config).expect("sentry config is valid");
        let status = agent.status();
        let node_id = agent.identity().node_id();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(agent.run(async {
            let _ = rx.await;
        }));
        TestSentry {
            status,
            node_id,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("sentry task")
                .expect("sentry ends cleanly");
        }
    }
}

/// A sentry made by hand: sends chosen devices at chosen times and waits
/// for each heartbeat's durable acknowledgement.
pub struct VirtualSentry {
    pub identity: hashfleet_shared::Identity,
    pub session: hashfleet_agent::Session,
    pub sentry_id: String,
    seq: u64,
    _endpoint: quinn::Endpoint,
}

impl VirtualSentry {
    /// Enrolls a new identity with a fresh token; `labels` go in the hello
    /// (`site`, `rack`).
    pub async fn enroll(c: &TestCommander, labels: &[(&str, &str)]) -> Self {
        let token = c.enrollment_token(1).await;
        let identity = hashfleet_shared::Identity::generate();
        let endpoint = hashfleet_agent::endpoint::client_endpoint(c.quic).unwrap();
        let hello = hashfleet_shared::handshake::HelloParams {
            kind: SentryKind::Synthetic,
            agent_version: "virtual".into(),
            enroll_token: Some(token),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let session =
            hashfleet_agent::Session::establish(&endpoint, &identity, c.quic, &[c.node_id], hello)
                .await
                .expect("virtual sentry enrolls");
        VirtualSentry {
            sentry_id: format!("{:016x}", session.welcome.sentry_id),
            seq: session.welcome.last_seq,
            identity,
            session,
            _endpoint: endpoint,
        }
    }

    /// Sends one heartbeat with these devices at `ts_ms`; returns its seq
    /// once the commander has stored it.
    pub async fn send(
        &mut self,
        ts_ms: u64,
        devices: Vec<hashfleet_shared::wire::DeviceSnapshot>,
    ) -> u64 {
        use hashfleet_shared::wire::{CommanderMessage, Heartbeat, HeartbeatBody, SentryMessage};
        self.seq += 1;
        let hb = Heartbeat {
            node_id: self.identity.node_id(),
            seq: self.seq,
            ts_ms,
            body: HeartbeatBody { devices },
        };
        let signed = hashfleet_shared::heartbeat::seal(&self.identity.node, &hb).unwrap();
        self.session
            .tx
            .send(&SentryMessage::Heartbeat(signed))
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.session.rx.recv())
                .await
                .expect("ack in time")
                .expect("session alive");
            match msg {
                CommanderMessage::Ack(a) if a.seq >= self.seq => return self.seq,
                CommanderMessage::Nack(n) => panic!("heartbeat refused: {n:?}"),
                _ => {}
            }
        }
    }
}

/// A synthetic device snapshot.
pub fn device(
    id: &str,
    kind: &str,
    make: &str,
    model: &str,
    metrics: &[(&str, f64)],
) -> hashfleet_shared::wire::DeviceSnapshot {
    hashfleet_shared::wire::DeviceSnapshot {
        id: id.into(),
        kind: kind.into(),
        make: make.into(),
        model: model.into(),
        firmware: "fw-1".into(),
        metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        labels: Default::default(),
        alerts: vec![],
        raw: "{\"source\":\"virtual\"}".into(),
    }
}
