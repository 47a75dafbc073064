//! The load generator behind `hashfleet-loadgen`: N virtual sentries in
//! one process, each with its own identity and its own QUIC connection,
//! enrolling with one token and sending signed heartbeats with K synthetic
//! devices, either at a set interval or as fast as the commander
//! acknowledges them.
//!
//! Client endpoints (one UDP socket each) are bound to many 127.x.y.z
//! source addresses, as a real fleet comes from many hosts; a few hundred
//! sentries share an endpoint, so 100,000 sentries need a few hundred
//! sockets. A sentry whose connection drops reconnects with jittered
//! backoff and resends what the commander does not hold yet (the
//! `Welcome.last_seq` it answers), like the real agent's outbox.
//!
//! Acknowledgements are cumulative (`Ack.seq` covers every seq at or below
//! it), and a reconnect's `Welcome.last_seq` acknowledges the same way, so
//! each sentry's acknowledged set is `1..=acked_upto`. Latency is measured
//! from the first send of a seq to the `Ack` that covers it.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hashfleet_agent::Session;
use hashfleet_shared::handshake::HelloParams;
use hashfleet_shared::heartbeat::seal;
use hashfleet_shared::wire::{
    CommanderMessage, DeviceSnapshot, Heartbeat, HeartbeatBody, SentryKind, SentryMessage,
};
use hashfleet_shared::{now_ms, Identity, NodeId};
use serde::Serialize;
use tokio::sync::{watch, Semaphore};

/// Handshakes in progress at once from one source address.
const HANDSHAKES_PER_SOURCE: usize = 32;

/// What one run does.
#[derive(Debug, Clone)]
pub struct LoadgenConfig {
    pub commander: SocketAddr,
    pub commander_key: NodeId,
    pub enroll_token: String,
    pub sentries: usize,
    pub devices_per_sentry: usize,
    /// Between two heartbeats of one sentry; zero: as fast as acknowledged.
    pub interval: Duration,
    /// Heartbeats in flight per sentry when `interval` is zero.
    pub window: usize,
    /// From the moment every sentry is connected.
    pub duration: Duration,
    /// Sentries sharing one client endpoint (one UDP socket, one source
    /// address).
    pub sentries_per_endpoint: usize,
    /// The first source address; endpoint i binds the i-th address after it.
    pub source_base: Ipv4Addr,
    /// Handshakes in progress at once while the fleet connects.
    pub connect_parallel: usize,
    /// How long the whole fleet may take to connect.
    pub connect_timeout: Duration,
    /// After `duration`, how long to wait for heartbeats still in flight.
    pub drain: Duration,
    /// Requested receive and send buffer of each endpoint's socket.
    pub socket_buffer: usize,
    /// Print `loadgen: connected …` to stderr when the clock starts (the
    /// benchmark driver samples the commander's CPU there).
    pub announce: bool,
}

impl LoadgenConfig {
    pub fn new(
        commander: SocketAddr,
        commander_key: NodeId,
        enroll_token: String,
        sentries: usize,
    ) -> Self {
        LoadgenConfig {
            commander,
            commander_key,
            enroll_token,
            sentries,
            devices_per_sentry: 1,
            interval: Duration::ZERO,
            window: 1,
            duration: Duration::from_secs(10),
            sentries_per_endpoint: 250,
            source_base: Ipv4Addr::new(127, 100, 0, 1),
            connect_parallel: 256,
            connect_timeout: Duration::from_secs(600),
            drain: Duration::from_secs(10),
            socket_buffer: 4 << 20,
            announce: false,
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.sentries >= 1, "--sentries must be at least 1");
        anyhow::ensure!(
            self.window >= 1 && self.window <= 4096,
            "--window must be 1..=4096"
        );
        anyhow::ensure!(
            self.sentries_per_endpoint >= 1,
            "--sentries-per-endpoint must be at least 1"
        );
        anyhow::ensure!(
            self.connect_parallel >= 1,
            "--connect-parallel must be at least 1"
        );
        anyhow::ensure!(
            self.devices_per_sentry <= 10_000,
            "--devices-per-sentry must be at most 10000 (a heartbeat must fit one frame)"
        );
        anyhow::ensure!(
            self.source_base.octets()[0] == 127,
            "--source-base must be a loopback address (127.x.y.z)"
        );
        Ok(())
    }

    fn endpoints(&self) -> usize {
        self.sentries.div_ceil(self.sentries_per_endpoint)
    }

    /// The source address of endpoint `i`.
    fn source(&self, i: usize) -> anyhow::Result<Ipv4Addr> {
        let base = u32::from(self.source_base);
        let ip = base
            .checked_add(u32::try_from(i)?)
            .map(Ipv4Addr::from)
            .filter(|ip| ip.octets()[0] == 127)
            .with_context(|| {
                format!(
                    "endpoint {i} would leave 127.0.0.0/8 from {}: use fewer endpoints",
                    self.source_base
                )
            })?;
        Ok(ip)
    }
}

/// The one JSON line `hashfleet-loadgen` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub sentries: usize,
    pub devices_per_sentry: usize,
    pub sent: u64,
    pub acked: u64,
    pub rejected: u64,
    pub hb_per_s: f64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub errors: u64,
    /// Sentries that never connected within `connect_timeout`.
    pub not_connected: usize,
    /// Seconds from the first handshake to the last sentry connected.
    pub connect_secs: f64,
    /// Seconds from all connected to the last acknowledgement (the
    /// denominator of `hb_per_s`).
    pub measured_secs: f64,
    pub endpoints: usize,
}

/// A run's summary and each sentry's acknowledged set `1..=acked_upto`.
pub struct Outcome {
    pub summary: Summary,
    pub acked: Vec<(NodeId, u64)>,
}

impl Outcome {
    /// Writes one `NODE_ID SEQ` line per acknowledged heartbeat.
    pub fn write_acked(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        for (node, upto) in &self.acked {
            let node = node.to_string();
            for seq in 1..=*upto {
                writeln!(out, "{node} {seq}")?;
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    connected: AtomicUsize,
    gave_up: AtomicUsize,
}

/// What one sentry hands back at the end.
struct SentryResult {
    node: NodeId,
    acked_upto: u64,
    /// Microseconds from the first send of a seq to its ack.
    latencies_us: Vec<u32>,
    last_ack: Option<Instant>,
}

/// Runs the fleet: connect everyone, send for `duration`, drain, report.
pub async fn run(config: LoadgenConfig) -> anyhow::Result<Outcome> {
    run_until(config, std::future::pending()).await
}

/// [`run`], but sending stops early when `stop` completes.
pub async fn run_until(
    config: LoadgenConfig,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Outcome> {
    config.check()?;
    let config = Arc::new(config);
    let mut endpoints = Vec::with_capacity(config.endpoints());
    for i in 0..config.endpoints() {
        endpoints.push(bind_endpoint(&config, i)?);
    }
    let counters = Arc::new(Counters::default());
    let connect = Arc::new(Semaphore::new(config.connect_parallel));
    // Under the commander's per-source handshake limit (64 by default).
    let source_permits: Vec<Arc<Semaphore>> = (0..endpoints.len())
        .map(|_| Arc::new(Semaphore::new(HANDSHAKES_PER_SOURCE)))
        .collect();
    // `Some(deadline)` once every sentry is connected (or has given up).
    let (start_tx, start_rx) = watch::channel::<Option<Instant>>(None);
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..config.sentries {
        let sentry = VirtualSentry {
            index: i,
            identity: Identity::generate(),
            endpoint: endpoints[i % endpoints.len()].clone(),
            source_permits: source_permits[i % endpoints.len()].clone(),
            config: config.clone(),
            counters: counters.clone(),
        };
        tasks.spawn(sentry.run(connect.clone(), start_rx.clone()));
    }
    // Wait for the whole fleet, then start the clock.
    let fleet_deadline = t0 + config.connect_timeout;
    loop {
        let done =
            counters.connected.load(Ordering::Relaxed) + counters.gave_up.load(Ordering::Relaxed);
        if done >= config.sentries || Instant::now() >= fleet_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    if config.announce {
        eprintln!(
            "loadgen: connected {} of {} sentries in {connect_secs:.1} s; sending",
            counters.connected.load(Ordering::Relaxed),
            config.sentries
        );
    }
    let start = Instant::now();
    let _ = start_tx.send(Some(start + config.duration));
    let mut results = Vec::with_capacity(config.sentries);
    let mut stop = std::pin::pin!(stop);
    let mut stopped = false;
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                Some(r) => results.push(r.context("a virtual sentry task panicked")?),
                None => break,
            },
            () = &mut stop, if !stopped => {
                stopped = true;
                start_tx.send_modify(|d| *d = d.map(|d| d.min(Instant::now())));
            }
        }
    }
    let deadline = start_tx.borrow().unwrap_or(start + config.duration);
    let not_connected = config.sentries - counters.connected.load(Ordering::Relaxed);
    let end = results
        .iter()
        .filter_map(|r| r.last_ack)
        .max()
        .unwrap_or(deadline)
        .max(start + Duration::from_millis(1));
    let measured = end.saturating_duration_since(start).as_secs_f64();
    let mut latencies: Vec<u32> = results
        .iter_mut()
        .flat_map(|r| std::mem::take(&mut r.latencies_us))
        .collect();
    latencies.sort_unstable();
    let pct = |q: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() - 1) as f64 * q).round() as usize;
        f64::from(latencies[i]) / 1e3
    };
    let acked = counters.acked.load(Ordering::Relaxed);
    let summary = Summary {
        sentries: config.sentries,
        devices_per_sentry: config.devices_per_sentry,
        sent: counters.sent.load(Ordering::Relaxed),
        acked,
        rejected: counters.rejected.load(Ordering::Relaxed),
        hb_per_s: acked as f64 / measured,
        ack_p50_ms: pct(0.50),
        ack_p99_ms: pct(0.99),
        errors: counters.errors.load(Ordering::Relaxed),
        not_connected,
        connect_secs,
        measured_secs: measured,
        endpoints: endpoints.len(),
    };
    for e in &endpoints {
        e.close(0u32.into(), b"loadgen done");
    }
    Ok(Outcome {
        summary,
        acked: results.iter().map(|r| (r.node, r.acked_upto)).collect(),
    })
}

/// A client endpoint on the i-th source address, with big socket buffers.
fn bind_endpoint(config: &LoadgenConfig, i: usize) -> anyhow::Result<quinn::Endpoint> {
    let source = SocketAddrV4::new(config.source(i)?, 0);
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(config.socket_buffer);
    let _ = socket.set_send_buffer_size(config.socket_buffer);
    socket
        .bind(&SocketAddr::V4(source).into())
        .with_context(|| format!("binding a client endpoint to {source}"))?;
    let runtime = quinn::default_runtime().context("no async runtime for quinn")?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket.into(),
        runtime,
    )
    .with_context(|| format!("starting a client endpoint on {source}"))?;
    Ok(endpoint)
}

struct VirtualSentry {
    index: usize,
    identity: Identity,
    endpoint: quinn::Endpoint,
    source_permits: Arc<Semaphore>,
    config: Arc<LoadgenConfig>,
    counters: Arc<Counters>,
}

/// One heartbeat sent and not yet acknowledged.
struct InFlight {
    seq: u64,
    first_sent: Instant,
}

impl VirtualSentry {
    fn body(&self) -> HeartbeatBody {
        let devices = (0..self.config.devices_per_sentry)
            .map(|k| synthetic_device(self.index, k))
            .collect();
        HeartbeatBody { devices }
    }

    fn hello(&self, token: bool) -> HelloParams {
        HelloParams {
            kind: SentryKind::Synthetic,
            agent_version: concat!("loadgen/", env!("CARGO_PKG_VERSION")).into(),
            enroll_token: token.then(|| self.config.enroll_token.clone()),
            labels: Default::default(),
        }
    }

    /// Connects with jittered backoff until `deadline`; `None` past it.
    async fn connect(
        &self,
        enrolled: &mut bool,
        permits: &Semaphore,
        deadline: Instant,
    ) -> Option<Session> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = {
                let _source = self.source_permits.acquire().await.ok()?;
                let _permit = permits.acquire().await.ok()?;
                Session::establish(
                    &self.endpoint,
                    &self.identity,
                    self.config.commander,
                    &[self.config.commander_key],
                    self.hello(!*enrolled),
                )
                .await
            };
            match attempt {
                Ok(s) => {
                    *enrolled = true;
                    return Some(s);
                }
                Err(e) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(sentry = self.index, "connect: {e}");
                    if e.is_permanent() || Instant::now() + backoff >= deadline {
                        tracing::warn!(sentry = self.index, "gave up connecting: {e}");
                        return None;
                    }
                    let jitter = fastrand::u64(0..=backoff.as_millis() as u64);
                    tokio::time::sleep(backoff / 2 + Duration::from_millis(jitter / 2)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn run(
        self,
        permits: Arc<Semaphore>,
        mut start: watch::Receiver<Option<Instant>>,
    ) -> SentryResult {
        let mut result = SentryResult {
            node: self.identity.node_id(),
            acked_upto: 0,
            latencies_us: Vec::new(),
            last_ack: None,
        };
        let mut enrolled = false;
        let connect_deadline = Instant::now() + self.config.connect_timeout;
        let Some(mut session) = self
            .connect(&mut enrolled, &permits, connect_deadline)
            .await
        else {
            self.counters.gave_up.fetch_add(1, Ordering::Relaxed);
            return result;
        };
        self.counters.connected.fetch_add(1, Ordering::Relaxed);
        result.acked_upto = session.welcome.last_seq;
        if start.wait_for(Option::is_some).await.is_err() {
            return result;
        }
        // Re-read at each turn: `run_until` may bring it forward.
        let deadline_now =
            |start: &watch::Receiver<Option<Instant>>| start.borrow().unwrap_or_else(Instant::now);
        let body = self.body();
        let mut seq = result.acked_upto;
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        // The first heartbeat of a sentry at an interval is spread over it.
        let mut next_due = tokio::time::Instant::now()
            + self
                .config
                .interval
                .mul_f64(fastrand::f64())
                .min(self.config.duration);
        'session: loop {
            let outcome: anyhow::Result<()> = async {
                // After a reconnect, resend what the commander lacks.
                for f in &in_flight {
                    self.send(&mut session, f.seq, &body).await?;
                }
                loop {
                    let deadline = deadline_now(&start);
                    let drain_until = deadline + self.config.drain;
                    let now = Instant::now();
                    let sending = now < deadline;
                    if !sending && (in_flight.is_empty() || now >= drain_until) {
                        return Ok(());
                    }
                    if sending && self.config.interval.is_zero() {
                        while in_flight.len() < self.config.window {
                            seq += 1;
                            self.send(&mut session, seq, &body).await?;
                            in_flight.push_back(InFlight {
                                seq,
                                first_sent: Instant::now(),
                            });
                        }
                    }
                    let wake = if sending && !self.config.interval.is_zero() {
                        next_due
                    } else {
                        tokio::time::Instant::from_std(if sending { deadline } else { drain_until })
                    };
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake) => {
                            if sending && !self.config.interval.is_zero() && Instant::now() < deadline {
                                seq += 1;
                                self.send(&mut session, seq, &body).await?;
                                in_flight.push_back(InFlight { seq, first_sent: Instant::now() });
                                next_due += self.config.interval;
                            }
                        }
                        _ = start.changed() => {}
                        msg = session.rx.recv() => match msg? {
                            CommanderMessage::Ack(a) => {
                                let now = Instant::now();
                                while in_flight.front().is_some_and(|f| f.seq <= a.seq) {
                                    let f = in_flight.pop_front().expect("checked");
                                    let us = now.duration_since(f.first_sent).as_micros();
                                    result.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                                    self.counters.acked.fetch_add(1, Ordering::Relaxed);
                                }
                                result.acked_upto = result.acked_upto.max(a.seq);
                                result.last_ack = Some(now);
                            }
                            CommanderMessage::Challenge(ch) => {
                                // The commander re-challenges every session now and then.
                                let proof = session.prover.answer(&ch)?;
                                session.tx.send(&SentryMessage::Proof(proof)).await?;
                            }
                            CommanderMessage::Nack(n) => {
                                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                                in_flight.retain(|f| f.seq != n.seq);
                            }
                            _ => {}
                        }
                    }
                }
            }
            .await;
            match outcome {
                Ok(()) => break 'session,
                Err(e) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(sentry = self.index, "session lost: {e:#}");
                    session.close("reconnecting");
                    let drain_until = deadline_now(&start) + self.config.drain;
                    let Some(s) = self.connect(&mut enrolled, &permits, drain_until).await else {
                        break 'session;
                    };
                    session = s;
                    // The commander holds everything up to last_seq: that
                    // is acknowledged too, and never resent.
                    let held = session.welcome.last_seq;
                    while in_flight.front().is_some_and(|f| f.seq <= held) {
                        in_flight.pop_front();
                        self.counters.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    result.acked_upto = result.acked_upto.max(held);
                }
            }
        }
        session.close("loadgen done");
        result
    }

    async fn send(
        &self,
        session: &mut Session,
        seq: u64,
        body: &HeartbeatBody,
    ) -> anyhow::Result<()> {
        let hb = Heartbeat {
            node_id: self.identity.node_id(),
            seq,
            ts_ms: now_ms(),
            body: body.clone(),
        };
        let signed = seal(&self.identity.node, &hb)?;
        session.tx.send(&SentryMessage::Heartbeat(signed)).await?;
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Device `k` of virtual sentry `i`: a miner with the usual metrics.
fn synthetic_device(i: usize, k: usize) -> DeviceSnapshot {
    let n = (i * 7919 + k * 104_729) % 1000;
    crate::device(
        &format!("lg-{i}-{k}"),
        "miner",
        "Antminer",
        "S21",
        &[
            ("hashrate_hs", 190e12 + n as f64 * 1e10),
            ("expected_hashrate_hs", 200e12),
            ("power_w", 3500.0 + n as f64 / 10.0),
            ("temp_c", 60.0 + (n % 20) as f64),
            ("fan_rpm", 4200.0),
        ],
    )
}
