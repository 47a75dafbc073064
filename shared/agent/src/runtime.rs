//! The sentry runtime: produce heartbeats on an interval, keep a session
//! with a commander (failing over in order), send what the outbox holds and
//! forget what the commander acknowledges.
//!
//! Two tasks share the outbox:
//! - the **producer** collects a snapshot every interval, signs it with the
//!   next seq and persists it (connected or not, so an outage loses nothing);
//! - the **connector** establishes sessions with jittered backoff and drives
//!   each one: resend from the commander's last seq, stream new entries,
//!   answer challenges, and give up on a session that leaves heartbeats
//!   unacknowledged for three intervals.
//!
//! An `Action` from the commander is handed to its own task
//! ([`ActionHandler::handle`]), so execution never holds up heartbeats; its
//! signed result comes back to the session through a channel. A result
//! whose session has ended is not lost: it is in the journal, and the
//! commander's next resend of the action gets it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hashfleet_shared::codec::{self, CodecError};
use hashfleet_shared::handshake::HelloParams;
use hashfleet_shared::heartbeat;
use hashfleet_shared::liveness::{self, Backoff, HANDSHAKE_TIMEOUT};
use hashfleet_shared::rotation::{bind_wallet, open_announcement, seal_rotation};
use hashfleet_shared::wire::{
    CommanderMessage, Heartbeat, HeartbeatBody, NackReason, RejectCode, RotationRequest,
    SentryMessage, SentryStatus,
};
use hashfleet_shared::{now_ms, Identity};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::actions::{ActionHandler, Executor, NoActions};
use crate::config::{AgentConfig, CommanderTarget};
use crate::endpoint;
use crate::outbox::Outbox;
use crate::rotation::{self, IdentityCell, Pending, Pins, Rotate, Rotator};
use crate::session::{Session, SessionError};
use crate::status::StatusHandle;
use crate::status_api::CollectorStates;

/// Outbox entries sent per turn of the session loop before it checks for
/// acknowledgements again.
const SEND_CHUNK: usize = 256;
/// Messages from action tasks waiting for the session's writer.
const OUTGOING_QUEUE: usize = 64;
/// How long a stopping sentry lets running actions finish before it
/// abandons them (a restart then reports them as interrupted).
const ACTION_GRACE: Duration = Duration::from_secs(5);

/// Where a sentry's snapshots come from.
pub trait Collector: Send + 'static {
    /// One snapshot of every device this sentry watches. Failures are
    /// reported inside the snapshot (as device alerts), never as a missing
    /// heartbeat.
    fn collect(&mut self) -> impl Future<Output = HeartbeatBody> + Send;

    /// Each collector's state after the last round (`ok`, `off: …`,
    /// `error: …`), for the status API. None by default.
    fn states(&self) -> std::collections::BTreeMap<String, String> {
        std::collections::BTreeMap::new()
    }
}

/// A sentry runtime, ready to run.
pub struct Agent<C, E = NoActions> {
    config: AgentConfig,
    identity: IdentityCell,
    pins: Arc<Pins>,
    outbox: Arc<Mutex<Outbox>>,
    collector: C,
    actions: ActionHandler<E>,
    status: StatusHandle,
    collectors: CollectorStates,
}

impl<C: Collector, E: Executor> Agent<C, E> {
    /// Validates the config, loads (or creates) the identity, opens the
    /// outbox and the action journal (reporting actions a restart cut
    /// short). Nothing touches the network yet.
    pub fn new(config: AgentConfig, collector: C, executor: E) -> anyhow::Result<Self> {
        config.validate()?;
        let (identity, created) = Identity::load_or_create(&config.home)?;
        if created {
            info!(node_id = %identity.node_id(), home = %config.home.display(), "created a new identity");
        }
        let mut outbox = Outbox::open(&config.home, config.outbox_max)?;
        // Tidy what a crash during a rotation left (a spent next identity,
        // outbox entries signed by an earlier key).
        rotation::settle(&config.home, &identity, &mut outbox)?;
        let pins = Arc::new(Pins::open(&config.home)?);
        let status = StatusHandle::default();
        status.update(|s| {
            s.node_id = identity.node_id().to_string();
            s.wallet_address = identity.wallet.address().to_string();
            s.last_seq = outbox.last_assigned();
            s.outbox_len = outbox.len();
        });
        let identity = IdentityCell::new(identity);
        let actions = ActionHandler::open(
            &config.home,
            identity.clone(),
            Arc::new(executor),
            status.clone(),
        )?;
        Ok(Agent {
            config,
            identity,
            pins,
            outbox: Arc::new(Mutex::new(outbox)),
            collector,
            actions,
            status,
            collectors: CollectorStates::default(),
        })
    }

    pub fn status(&self) -> StatusHandle {
        self.status.clone()
    }

    /// The collectors' states as the status API shows them; a collector
    /// sets its own.
    pub fn collector_states(&self) -> CollectorStates {
        self.collectors.clone()
    }

    /// The identity now (a rotation replaces it).
    pub fn identity(&self) -> Arc<Identity> {
        self.identity.current()
    }

    /// The action handler (its journal is already open).
    pub fn actions(&self) -> &ActionHandler<E> {
        &self.actions
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let control = rotation::bind_control(&self.config.home)?;
        let rotator = Rotator {
            home: self.config.home.clone(),
            identity: self.identity.clone(),
            wake: Arc::new(Notify::new()),
            files: Arc::new(Mutex::new(())),
        };
        let control_task = tokio::spawn(rotation::serve_control(
            control,
            rotator.clone(),
            stop_rx.clone(),
        ));
        info!(
            node_id = %self.identity.current().node_id(),
            wallet = %self.identity.current().wallet.address(),
            commanders = self.config.commanders.len(),
            interval_ms = self.config.interval.as_millis() as u64,
            "sentry starting"
        );
        let status_api = match self.config.status_listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the status API on {addr}"))?;
                info!(addr = %listener.local_addr()?, "status API listening");
                let mut stop = stop_rx.clone();
                Some(tokio::spawn(crate::status_api::serve(
                    listener,
                    self.status.clone(),
                    self.config.interval,
                    self.collectors.clone(),
                    async move { until_stopped(&mut stop).await },
                )))
            }
            None => None,
        };
        let home = self.config.home.clone();
        let notify = Arc::new(Notify::new());
        let producer = Producer {
            identity: self.identity.clone(),
            outbox: self.outbox.clone(),
            notify: notify.clone(),
            status: self.status.clone(),
            collectors: self.collectors.clone(),
        };
        let producer_task =
            tokio::spawn(producer.run(self.collector, self.config.interval, stop_rx.clone()));
        let connector = Connector {
            config: self.config,
            identity: self.identity,
            pins: self.pins,
            rotator,
            outbox: self.outbox,
            notify,
            status: self.status,
            actions: self.actions,
            action_tasks: Mutex::new(JoinSet::new()),
        };
        let result = connector.run(stop_rx).await;
        let _ = producer_task.await;
        let _ = control_task.await;
        let _ = std::fs::remove_file(home.join(rotation::CONTROL_SOCKET));
        if let Some(task) = status_api {
            match task.await {
                Ok(Err(e)) => warn!("status API: {e}"),
                Err(e) => warn!("status API task: {e}"),
                Ok(Ok(())) => {}
            }
        }
        result
    }
}

struct Producer {
    identity: IdentityCell,
    outbox: Arc<Mutex<Outbox>>,
    notify: Arc<Notify>,
    collectors: CollectorStates,
    status: StatusHandle,
}

impl Producer {
    async fn run<C: Collector>(
        self,
        mut collector: C,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = until_stopped(&mut stop) => return,
            }
            let body = tokio::select! {
                body = collector.collect() => body,
                _ = until_stopped(&mut stop) => return,
            };
            for (name, state) in collector.states() {
                self.collectors.set(name, state);
            }
            if let Err(e) = self.produce(body) {
                // Without a persisted seq we must not send anything.
                error!("cannot persist heartbeat: {e:#}");
                self.status
                    .update(|s| s.last_error = Some(format!("{e:#}")));
            }
        }
    }

    /// Seals `body` into as many heartbeats as its size needs (each under
    /// the frame and decode budgets), persisting each with its own seq.
    fn produce(&self, body: HeartbeatBody) -> anyhow::Result<()> {
        let mut outbox = self
            .outbox
            .lock()
            .map_err(|_| anyhow::anyhow!("outbox lock poisoned"))?;
        let ts_ms = now_ms();
        // Read under the outbox lock: a rotation swaps the key and re-signs
        // the outbox under the same lock, so no entry keeps an old key.
        let identity = self.identity.current();
        // Reversed so that pop() takes parts in device order.
        let mut parts = heartbeat::split_body(body);
        parts.reverse();
        let mut seq = outbox.last_assigned();
        while let Some(part) = parts.pop() {
            let hb = Heartbeat {
                node_id: identity.node_id(),
                seq: outbox.next_seq(),
                ts_ms,
                body: part,
            };
            let sealed = heartbeat::seal(&identity.node, &hb)
                .and_then(|signed| codec::encode(&SentryMessage::Heartbeat(signed)));
            let bytes = match sealed {
                Ok(bytes) => bytes,
                // The estimate was off for this part: halve it and retry.
                Err(CodecError::FrameTooLarge { .. } | CodecError::OverBudget { .. })
                    if hb.body.devices.len() > 1 =>
                {
                    let mut devices = hb.body.devices;
                    let second = devices.split_off(devices.len() / 2);
                    parts.push(HeartbeatBody { devices: second });
                    parts.push(HeartbeatBody { devices });
                    continue;
                }
                Err(e) => return Err(anyhow::Error::new(e).context("encoding heartbeat")),
            };
            seq = hb.seq;
            outbox.push(seq, bytes)?;
        }
        let (len, dropped) = (outbox.len(), outbox.dropped());
        drop(outbox);
        self.status.update(|s| {
            s.last_heartbeat_at = Some(ts_ms);
            s.last_seq = seq;
            s.outbox_len = len;
            s.outbox_dropped = dropped;
        });
        self.notify.notify_one();
        Ok(())
    }
}

struct Connector<E> {
    config: AgentConfig,
    identity: IdentityCell,
    pins: Arc<Pins>,
    rotator: Rotator,
    outbox: Arc<Mutex<Outbox>>,
    notify: Arc<Notify>,
    status: StatusHandle,
    actions: ActionHandler<E>,
    /// Actions being handled; they outlive the session they came on.
    action_tasks: Mutex<JoinSet<()>>,
}

/// How a session ended.
enum End {
    Shutdown,
    Failed(SessionError),
    /// Drained for a switch back to the primary commander.
    Switched,
    /// The node key rotated: reconnect at once with the new key.
    Rotated,
}

impl<E: Executor> Connector<E> {
    async fn run(self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut backoff = Backoff::new(self.config.backoff_min, self.config.backoff_max);
        let mut index = 0usize;
        let mut endpoints: Vec<Option<quinn::Endpoint>> = vec![None; self.config.commanders.len()];
        let mut ready: Option<Session> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            let target = &self.config.commanders[index];
            let outcome = match ready.take() {
                // A session to the primary, opened while the last one drained.
                Some(session) => Ok(session),
                None => {
                    let attempt = self.attempt(target, &mut endpoints[index]);
                    tokio::select! {
                        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt) => r.unwrap_or(Err(SessionError::Timeout("handshake"))),
                        _ = until_stopped(&mut stop) => break,
                    }
                }
            };
            let error = match outcome {
                Ok(session) => {
                    backoff.reset();
                    // On a backup commander, keep trying the primary; when it
                    // answers, drain this session (every heartbeat sent is
                    // acknowledged here first) and move over.
                    let (switch_tx, switch_rx) = watch::channel(false);
                    let (first, _) = endpoints.split_at_mut(1);
                    let probe = self.probe_primary(index, &mut first[0]);
                    tokio::pin!(probe);
                    let drive = self.drive(session, target, &mut stop, switch_rx);
                    tokio::pin!(drive);
                    let end = loop {
                        tokio::select! {
                            end = &mut drive => break end,
                            primary = &mut probe, if ready.is_none() => {
                                info!(primary = %self.config.commanders[0].addr, "the primary commander answers again: draining this session, then switching back");
                                ready = Some(primary);
                                let _ = switch_tx.send(true);
                            }
                        }
                    };
                    match end {
                        End::Shutdown => break,
                        End::Switched => {
                            index = 0;
                            continue;
                        }
                        End::Rotated => continue,
                        End::Failed(e) if ready.is_some() => {
                            warn!(commander = %target.addr, "{e}");
                            index = 0;
                            continue;
                        }
                        End::Failed(e) => e,
                    }
                }
                Err(e) => e,
            };
            // The commander refuses the old key after its grace window: a
            // sentry that holds the next key (a crash cut the rotation
            // short) switches to it by itself.
            if matches!(
                error,
                SessionError::Rejected {
                    code: RejectCode::KeyRotated,
                    ..
                }
            ) && self.promote_waiting_key()
            {
                continue;
            }
            let failures = backoff.attempts() + 1;
            if error.is_permanent() {
                error!(commander = %target.addr, "{error}");
            } else {
                warn!(commander = %target.addr, "{error}");
            }
            self.status.update(|s| {
                s.connected = false;
                s.consecutive_failures = failures;
                s.last_error = Some(error.to_string());
            });
            // Fail over to the next commander in order.
            index = (index + 1) % self.config.commanders.len();
            let wait = backoff.next_with(fastrand::f64());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = until_stopped(&mut stop) => break,
            }
        }
        for ep in endpoints.into_iter().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }
        self.stop_actions().await;
        info!("sentry stopped");
        Ok(())
    }

    /// Hands an action to its own task; the signed result goes to `out`.
    fn spawn_action(
        &self,
        pins: Vec<hashfleet_shared::NodeId>,
        signed: hashfleet_shared::wire::SignedAction,
        out: mpsc::Sender<SentryMessage>,
    ) {
        let handler = self.actions.clone();
        let mut tasks = self.action_tasks.lock().unwrap_or_else(|p| p.into_inner());
        // Forget the tasks that are done.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            if let Some(result) = handler.handle(&pins, &signed, now_ms()).await {
                if out.send(SentryMessage::ActionResult(result)).await.is_err() {
                    info!("the session ended before an action result could be sent; the commander gets it when it resends the action");
                }
            }
        });
    }

    /// Lets running actions finish for a moment, then abandons them (their
    /// programs are killed; a restart reports them as interrupted).
    async fn stop_actions(&self) {
        let mut tasks =
            std::mem::take(&mut *self.action_tasks.lock().unwrap_or_else(|p| p.into_inner()));
        if tasks.is_empty() {
            return;
        }
        let drained = tokio::time::timeout(ACTION_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                running = tasks.len(),
                "stopping while actions still run: they are abandoned and will be reported as interrupted"
            );
            tasks.shutdown().await;
        }
    }

    /// Resolves with a session to the primary commander once it answers,
    /// trying every `primary_retry`; never resolves on the primary itself.
    async fn probe_primary(&self, index: usize, endpoint: &mut Option<quinn::Endpoint>) -> Session {
        if index == 0 {
            return std::future::pending().await;
        }
        let primary = &self.config.commanders[0];
        loop {
            tokio::time::sleep(self.config.primary_retry).await;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.attempt(primary, endpoint)).await {
                Ok(Ok(session)) => return session,
                Ok(Err(e)) => debug!(commander = %primary.addr, "primary still unavailable: {e}"),
                Err(_) => {
                    debug!(commander = %primary.addr, "primary still unavailable: handshake timed out")
                }
            }
        }
    }

    async fn attempt(
        &self,
        target: &CommanderTarget,
        endpoint: &mut Option<quinn::Endpoint>,
    ) -> Result<Session, SessionError> {
        let addr = tokio::net::lookup_host(&target.addr)
            .await
            .map_err(|e| SessionError::Lost(format!("cannot resolve {}: {e}", target.addr)))?
            .next()
            .ok_or_else(|| SessionError::Lost(format!("{} resolves to no address", target.addr)))?;
        if endpoint.is_none() {
            *endpoint =
                Some(
                    endpoint::client_endpoint(addr).map_err(|e| SessionError::Connect {
                        addr,
                        reason: e.to_string(),
                    })?,
                );
        }
        let ep = endpoint.as_ref().expect("set above");
        let hello = HelloParams {
            kind: self.config.kind,
            agent_version: self.config.agent_version.clone(),
            enroll_token: target.enroll_token.clone(),
            labels: self.config.labels.clone(),
        };
        let pins = self.pins.effective(&target.keys, now_ms());
        Session::establish(ep, &self.identity.current(), addr, &pins, hello).await
    }

    /// Makes a waiting next node key the identity (the commander bound it).
    fn promote_node_key(&self, next: &Identity) -> anyhow::Result<()> {
        let current = self.identity.current();
        let promoted = {
            let _files = self.rotator.files.lock().unwrap_or_else(|p| p.into_inner());
            rotation::promote_node(&self.config.home, &current, next)?
        };
        let node_id = promoted.node_id();
        let resealed = {
            let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
            self.identity.replace(promoted.clone());
            rotation::reseal_outbox(&mut outbox, &promoted)?
        };
        info!(old = %current.node_id(), new = %node_id, resealed, "node key rotated; reconnecting with the new key");
        self.status.update(|s| s.node_id = node_id.to_string());
        Ok(())
    }

    /// After `KeyRotated`: promotes the waiting next key, if there is one.
    fn promote_waiting_key(&self) -> bool {
        let current = self.identity.current();
        let next = match rotation::load_next(&self.config.home) {
            Ok(next) => next,
            Err(e) => {
                error!("{e}");
                return false;
            }
        };
        match next {
            Some(next) if rotation::pending(&current, Some(&next)) == Pending::NodeKey => {
                warn!(old = %current.node_id(), new = %next.node_id(), "the commander no longer accepts the old key: switching to the next key, which it bound before this sentry stopped");
                match self.promote_node_key(&next) {
                    Ok(()) => true,
                    Err(e) => {
                        error!("cannot switch to the next key: {e:#}");
                        false
                    }
                }
            }
            _ => false,
        }
    }

    /// Sends what the next identity still needs: a `RotateKey` or a
    /// `BindWallet` (one at a time).
    async fn start_rotation(
        &self,
        tx: &mut crate::session::SessionTx,
        sentry_id: u64,
        session_nonce: &[u8; 32],
    ) -> Result<Option<Rotate>, SessionError> {
        let current = self.identity.current();
        let next = match rotation::load_next(&self.config.home) {
            Ok(next) => next,
            Err(e) => {
                error!("cannot read the next identity: {e}");
                return Ok(None);
            }
        };
        let Some(next) = next else { return Ok(None) };
        match rotation::pending(&current, Some(&next)) {
            Pending::Nothing => Ok(None),
            Pending::NodeKey => {
                let request = RotationRequest {
                    sentry_id,
                    old_node_id: current.node_id(),
                    new_node_id: next.node_id(),
                    seq: self.with_outbox(|o| o.last_assigned()),
                    session_nonce: *session_nonce,
                    ts_ms: now_ms(),
                };
                let signed = seal_rotation(&current.node, &next.node, &request)?;
                tx.send(&SentryMessage::RotateKey(signed)).await?;
                info!(old = %current.node_id(), new = %next.node_id(), "asking the commander to rotate the node key");
                Ok(Some(Rotate::NodeKey))
            }
            Pending::Wallet => {
                let binding = bind_wallet(&next.wallet, &current.node_id(), session_nonce);
                tx.send(&SentryMessage::BindWallet(binding)).await?;
                info!(wallet = %next.wallet.address(), "asking the commander to bind a new wallet");
                Ok(Some(Rotate::Wallet))
            }
        }
    }

    /// The commander's answer to a rotation or binding. `true`: the node
    /// key changed and the session must end.
    fn finish_rotation(&self, what: Rotate, accepted: bool, named: &str, message: &str) -> bool {
        let current = self.identity.current();
        let next = rotation::load_next(&self.config.home).ok().flatten();
        let matches = next.as_ref().is_some_and(|n| match what {
            Rotate::NodeKey => n.node_id().to_string() == named,
            Rotate::Wallet => n.wallet.address().to_string() == named,
        });
        if !accepted {
            error!(?what, "the commander refused the rotation: {message}");
            self.status
                .update(|s| s.last_error = Some(format!("rotation refused: {message}")));
            let _files = self.rotator.files.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = rotation::abandon(&self.config.home, &current, what) {
                error!("{e:#}");
            }
            return false;
        }
        let Some(next) = next.filter(|_| matches) else {
            warn!(
                ?what,
                named, "the commander bound something this sentry is not rotating to; ignored"
            );
            return false;
        };
        match what {
            Rotate::NodeKey => match self.promote_node_key(&next) {
                Ok(()) => true,
                Err(e) => {
                    error!("the commander bound the new key, but it cannot be made current: {e:#}");
                    false
                }
            },
            Rotate::Wallet => {
                let promoted = {
                    let _files = self.rotator.files.lock().unwrap_or_else(|p| p.into_inner());
                    rotation::promote_wallet(&self.config.home, &current, &next)
                };
                match promoted {
                    Ok(promoted) => {
                        let wallet = promoted.wallet.address();
                        self.identity.replace(promoted);
                        info!(%wallet, "wallet bound by the commander");
                        self.status
                            .update(|s| s.wallet_address = wallet.to_string());
                    }
                    Err(e) => {
                        error!("the commander bound the wallet, but it cannot be saved: {e:#}")
                    }
                }
                false
            }
        }
    }

    fn with_outbox<T>(&self, f: impl FnOnce(&mut Outbox) -> T) -> T {
        let mut guard = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    async fn drive(
        &self,
        session: Session,
        target: &CommanderTarget,
        stop: &mut watch::Receiver<bool>,
        mut switch: watch::Receiver<bool>,
    ) -> End {
        let Session {
            conn,
            mut tx,
            mut rx,
            prover,
            welcome,
            addr,
            commander,
            session_nonce,
        } = session;
        let mut approved = welcome.status == SentryStatus::Approved;
        info!(
            commander = %addr,
            sentry_id = format!("{:016x}", welcome.sentry_id),
            status = ?welcome.status,
            commander_last_seq = welcome.last_seq,
            "session established"
        );
        if !approved {
            warn!("this sentry is pending approval on the commander: heartbeats are kept in the outbox until an operator approves it");
        }
        let floor = self.with_outbox(|o| {
            let behind = o.next_seq() <= welcome.last_seq;
            o.ack(welcome.last_seq)?;
            if behind {
                o.raise_floor(welcome.last_seq)?;
            }
            Ok::<_, crate::outbox::OutboxError>(behind)
        });
        match floor {
            Ok(true) => warn!(
                commander_last_seq = welcome.last_seq,
                "the commander holds seqs this sentry never assigned: its seq state was lost or restored from an old copy; continuing above the commander's mark"
            ),
            Ok(false) => {}
            Err(e) => return End::Failed(SessionError::Lost(format!("outbox: {e}"))),
        }
        self.status.update(|s| {
            s.commander = Some(target.addr.clone());
            s.connected = true;
            s.approved = approved;
            s.sentry_id = Some(format!("{:016x}", welcome.sentry_id));
            s.consecutive_failures = 0;
            s.last_ack_seq = s.last_ack_seq.max(welcome.last_seq);
        });
        // Action results come back from their tasks through this queue.
        let (out_tx, mut out_rx) = mpsc::channel::<SentryMessage>(OUTGOING_QUEUE);
        let deadline = liveness::ack_deadline(self.config.interval);
        let mut sent_upto = welcome.last_seq;
        // When the oldest heartbeat still awaiting an ack was sent.
        let mut waiting_since: Option<Instant> = None;
        // Switching away: nothing new is sent; the session ends once all
        // that was sent is acknowledged (or the ack deadline passes).
        let mut draining: Option<Instant> = None;
        // A rotation to look at (a next identity may be waiting), and the
        // one the commander is answering.
        let mut check_rotation = true;
        let mut rotating: Option<Rotate> = None;
        let end = loop {
            if check_rotation && rotating.is_none() && draining.is_none() {
                check_rotation = false;
                match self
                    .start_rotation(&mut tx, welcome.sentry_id, &session_nonce)
                    .await
                {
                    Ok(r) => rotating = r,
                    Err(e) => break End::Failed(e),
                }
            }
            if let Some(since) = draining {
                if waiting_since.is_none() {
                    break End::Switched;
                }
                if since.elapsed() > deadline {
                    warn!("heartbeats sent to this commander were not acknowledged before the switch: they stay in the outbox and go to the next commander");
                    break End::Switched;
                }
            }
            if approved && draining.is_none() {
                let batch = self.with_outbox(|o| {
                    o.pending_after(sent_upto)
                        .into_iter()
                        .take(SEND_CHUNK)
                        .filter_map(|seq| match o.load(seq) {
                            Ok(entry) => entry.map(|b| (seq, b)),
                            Err(e) => {
                                // Unreadable on this disk: it cannot be sent, and a
                                // later acknowledgement will remove it. Say so loudly.
                                error!(seq, "outbox entry unreadable, heartbeat lost: {e}");
                                None
                            }
                        })
                        .collect::<Vec<_>>()
                });
                let more = batch.len() == SEND_CHUNK;
                let mut send_error = None;
                for (seq, bytes) in batch {
                    if let Err(e) = tx.send_body(&bytes).await.map_err(SessionError::from) {
                        send_error = Some(e);
                        break;
                    }
                    sent_upto = seq;
                    waiting_since.get_or_insert_with(Instant::now);
                }
                if let Some(e) = send_error {
                    break End::Failed(e);
                }
                if more {
                    self.notify.notify_one();
                }
            }
            let ack_timer = async {
                match waiting_since {
                    Some(since) => tokio::time::sleep_until(since + deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = self.rotator.wake.notified() => check_rotation = true,
                changed = switch.changed(), if draining.is_none() => {
                    if changed.is_ok() && *switch.borrow() {
                        draining = Some(Instant::now());
                    }
                }
                Some(out) = out_rx.recv() => {
                    if let Err(e) = tx.send(&out).await {
                        break End::Failed(e.into());
                    }
                }
                msg = rx.recv() => {
                    let msg = match msg {
                        Ok(m) => m,
                        Err(e) => break End::Failed(e.into()),
                    };
                    match msg {
                        CommanderMessage::Ack(ack) => {
                            let (len, pending) = match self.with_outbox(|o| o.ack(ack.seq).map(|_| (o.len(), o.pending_after(ack.seq).first().copied()))) {
                                Ok(v) => v,
                                Err(e) => break End::Failed(SessionError::Lost(format!("outbox: {e}"))),
                            };
                            debug!(seq = ack.seq, "ack");
                            waiting_since = match pending {
                                Some(next) if next <= sent_upto => Some(Instant::now()),
                                _ => None,
                            };
                            self.status.update(|s| {
                                s.last_ack_seq = s.last_ack_seq.max(ack.seq);
                                s.last_ack_at = Some(now_ms());
                                s.outbox_len = len;
                            });
                        }
                        CommanderMessage::Nack(nack) => {
                            warn!(seq = nack.seq, reason = nack.reason.as_str(), commander_last_seq = nack.last_seq, "commander refused a heartbeat");
                            match nack.reason {
                                // The commander has this seq or a later one (stored or
                                // on its way): a cumulative Ack will cover it.
                                NackReason::Replay => {}
                                // Kept until the sentry is approved.
                                NackReason::NotApproved => {}
                                // Never acceptable: drop just this one.
                                NackReason::BadSignature
                                | NackReason::ForeignNode
                                | NackReason::Malformed
                                | NackReason::ClockSkew => {
                                    if let Err(e) = self.with_outbox(|o| o.discard(nack.seq)) {
                                        break End::Failed(SessionError::Lost(format!("outbox: {e}")));
                                    }
                                }
                            }
                        }
                        CommanderMessage::Challenge(ch) => {
                            let proof = match prover.answer(&ch) {
                                Ok(p) => p,
                                Err(e) => break End::Failed(e),
                            };
                            if let Err(e) = tx.send(&SentryMessage::Proof(proof)).await {
                                break End::Failed(e.into());
                            }
                            debug!("answered a re-challenge");
                        }
                        CommanderMessage::StatusUpdate(update) => {
                            approved = update.status == SentryStatus::Approved;
                            info!(status = ?update.status, "status changed by the commander");
                            self.status.update(|s| s.approved = approved);
                        }
                        CommanderMessage::Reject(r) => {
                            break End::Failed(SessionError::Rejected { code: r.code, message: r.message });
                        }
                        CommanderMessage::Welcome(_) => {
                            break End::Failed(SessionError::Unexpected("a second Welcome"));
                        }
                        CommanderMessage::Action(signed) => {
                            debug!("action received");
                            let pins = self.pins.effective(&target.keys, now_ms());
                            self.spawn_action(pins, signed, out_tx.clone());
                        }
                        CommanderMessage::RotateRequest(r) => {
                            info!(reason = %r.reason, "the commander asks for a node key rotation");
                            if let Err(e) = self.rotator.prepare(Rotate::NodeKey) {
                                error!("cannot prepare a new node key: {e:#}");
                            }
                            check_rotation = true;
                        }
                        CommanderMessage::Rotated(outcome) => {
                            rotating = None;
                            check_rotation = true;
                            if self.finish_rotation(Rotate::NodeKey, outcome.accepted, &outcome.new_node_id.to_string(), &outcome.message) {
                                break End::Rotated;
                            }
                        }
                        CommanderMessage::WalletBound(outcome) => {
                            rotating = None;
                            check_rotation = true;
                            self.finish_rotation(Rotate::Wallet, outcome.accepted, &outcome.wallet_address.to_string(), &outcome.message);
                        }
                        CommanderMessage::KeyAnnouncement(signed) => {
                            match open_announcement(&signed, &commander) {
                                Ok(ann) => match self.pins.learn(&ann) {
                                    Ok(true) => info!(old = %ann.old_key, new = %ann.new_key, switch_at_ms = ann.switch_at_ms, "the commander announced its next key: pinned"),
                                    Ok(false) => debug!("commander key announcement already known"),
                                    Err(e) => error!("cannot persist the commander's next key: {e:#}"),
                                },
                                Err(e) => warn!("commander key announcement refused: {e}"),
                            }
                        }
                    }
                }
                _ = ack_timer => break End::Failed(SessionError::Dead(deadline)),
                _ = until_stopped(stop) => break End::Shutdown,
            }
        };
        let reason: &[u8] = match &end {
            End::Shutdown => b"sentry shutting down",
            End::Failed(_) => b"sentry closing session",
            End::Switched => b"sentry switching to its primary commander",
            End::Rotated => b"sentry rotated its node key",
        };
        conn.close(0u32.into(), reason);
        self.status.update(|s| s.connected = false);
        end
    }
}

/// Resolves once `stop` turns true (or its sender is gone). Use this in
/// `select!` rather than `wait_for`, whose guard is not `Send`.
pub async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
