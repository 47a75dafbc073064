//! One sentry connection on the commander: TLS, the v1 handshake, then the
//! heartbeat loop.
//!
//! The reader verifies each heartbeat (signature, node binding, strict seq)
//! and submits it to the ingest writer, which acknowledges it once stored.
//! A writer task sends what the session has to say (challenges, status
//! changes, nacks) and the latest acknowledged seq.

use std::sync::Arc;

use hashfleet_agent::framing::{FramedRecv, FramedSend, FramingError};
use hashfleet_agent::session::peer_node;
use hashfleet_shared::batch::{Pending, PreparedKey};
use hashfleet_shared::handshake::{check_proof, make_challenge, CommanderHandshake};
use hashfleet_shared::heartbeat;
use hashfleet_shared::liveness::HANDSHAKE_TIMEOUT;
use hashfleet_shared::rotation;
use hashfleet_shared::sign::Domain;
use hashfleet_shared::wire::{
    Ack, CommanderMessage, Heartbeat, Hello, Nack, NackReason, Reject, RejectCode, RotateRequest,
    RotationOutcome, RotationRequest, SentryMessage, SentryStatus, SignedHeartbeat, SignedRotation,
    StatusUpdate, WalletBinding, WalletOutcome, Welcome, EXPORTER_LABEL,
};
use hashfleet_shared::{codec, now_ms, random_bytes, NodeId, WalletAddress};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::app::App;
use crate::convert::heartbeat_record;
use crate::enroll::{self, Admitted};
use crate::ingest::{Acked, IngestItem};
use crate::rotation::Rotated;
use crate::sessions::{close, Control};

/// Messages a session may queue for its writer before the reader waits.
const OUTBOUND: usize = 64;

/// Serves one incoming connection to its end.
pub async fn serve(
    app: Arc<App>,
    incoming: quinn::Incoming,
    mut ticket: crate::quic::admission::Ticket,
    stop: watch::Receiver<bool>,
) {
    let remote = incoming.remote_address();
    // One deadline for TLS and the whole application handshake.
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let conn = match tokio::time::timeout_at(deadline, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            app.metrics.handshake("tls_refused");
            debug!(%remote, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            app.metrics.handshake("timeout");
            return;
        }
    };
    // Boxed: its state is freed when it ends, instead of sizing the task
    // that lives as long as the session.
    let established = tokio::time::timeout_at(deadline, Box::pin(handshake(&app, &conn))).await;
    // Established or not, this source's handshake slot is free again; the
    // ticket itself lives (counting the connection) until the session ends.
    ticket.handshake_done();
    let est = match established {
        Ok(Ok(est)) => est,
        Ok(Err(fail)) => {
            app.metrics.handshake(fail.metric);
            if let Some((mut tx, reject)) = fail.reject {
                info!(%remote, code = ?reject.code, "session refused: {}", reject.message);
                let _ = tx.send(&CommanderMessage::Reject(reject.clone())).await;
                tx.finish_and_wait(std::time::Duration::from_secs(2)).await;
                conn.close(close::REJECTED.into(), reject.message.as_bytes());
            } else {
                debug!(%remote, "handshake failed: {}", fail.reason);
                conn.close(close::PROTOCOL.into(), fail.reason.as_bytes());
            }
            return;
        }
        Err(_) => {
            app.metrics.handshake("timeout");
            conn.close(close::PROTOCOL.into(), b"handshake timed out");
            return;
        }
    };
    app.metrics.handshake("ok");
    app.metrics.connected(1);
    let node = est.peer;
    let (control_tx, control_rx) = mpsc::channel(8);
    let registration = app.sessions.register(node, conn.clone(), control_tx);
    let sentry_id = est.admitted.record.sentry_id;
    info!(%remote, %node, sentry_id = format!("{sentry_id:016x}"), status = ?est.admitted.status, "session established");
    let end = run(&app, &conn, est, control_rx, stop).await;
    app.sessions.remove(&node, registration);
    app.metrics.connected(-1);
    match end {
        Ok(()) => debug!(%node, "session ended"),
        Err(reason) => info!(%node, "session ended: {reason}"),
    }
}

struct Established {
    peer: NodeId,
    exporter: [u8; 32],
    /// The `Challenge.nonce` of the handshake: rotations and wallet
    /// bindings are signed over it, so they are valid on this session only.
    session_nonce: [u8; 32],
    hello: Hello,
    admitted: Admitted,
    tx: FramedSend,
    rx: FramedRecv<SentryMessage>,
}

struct Failure {
    metric: &'static str,
    reason: String,
    /// When set, the sentry is told why before the connection closes.
    reject: Option<(FramedSend, Reject)>,
}

impl Failure {
    fn plain(metric: &'static str, reason: impl Into<String>) -> Self {
        Failure {
            metric,
            reason: reason.into(),
            reject: None,
        }
    }
}

async fn handshake(app: &Arc<App>, conn: &quinn::Connection) -> Result<Established, Failure> {
    let peer =
        peer_node(conn).ok_or_else(|| Failure::plain("protocol_error", "no raw public key"))?;
    let mut exporter = [0u8; 32];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| Failure::plain("protocol_error", "TLS exporter unavailable"))?;
    let (send, recv) = conn
        .accept_bi()
        .await
        .map_err(|e| Failure::plain("protocol_error", e.to_string()))?;
    let mut tx = FramedSend::new(send);
    let mut rx = FramedRecv::<SentryMessage>::new(recv);
    let hello = match rx.recv().await {
        Ok(SentryMessage::Hello(h)) => h,
        Ok(_) => {
            return Err(Failure::plain(
                "protocol_error",
                "first message is not Hello",
            ))
        }
        Err(e) => return Err(Failure::plain("protocol_error", e.to_string())),
    };
    let session_nonce: [u8; 32] = random_bytes();
    let (pending, challenge) = match CommanderHandshake::on_hello(
        hello,
        &peer,
        exporter,
        &app.identity.current().node,
        session_nonce,
    ) {
        Ok(v) => v,
        Err(reject) => {
            return Err(Failure {
                metric: "rejected",
                reason: reject.message.clone(),
                reject: Some((tx, reject)),
            })
        }
    };
    tx.send(&CommanderMessage::Challenge(challenge))
        .await
        .map_err(|e| Failure::plain("protocol_error", e.to_string()))?;
    let proof = match rx.recv().await {
        Ok(SentryMessage::Proof(p)) => p,
        Ok(_) => return Err(Failure::plain("protocol_error", "expected Proof")),
        Err(e) => return Err(Failure::plain("protocol_error", e.to_string())),
    };
    let hello = match pending.on_proof(&proof) {
        Ok(h) => h,
        Err(reject) => {
            return Err(Failure {
                metric: "bad_proof",
                reason: reject.message.clone(),
                reject: Some((tx, reject)),
            })
        }
    };
    let store = app.store.clone();
    let hello2 = hello.clone();
    let grace = app.config.rotation_grace;
    let admitted = tokio::task::spawn_blocking(move || {
        enroll::admit(store.as_ref(), &hello2, now_ms(), grace)
    })
    .await
    .map_err(|e| Failure::plain("store_error", e.to_string()))?;
    let admitted = match admitted {
        Ok(Ok(a)) => a,
        Ok(Err(reject)) => {
            if reject.code == RejectCode::Revoked {
                app.revoked.insert(peer);
            }
            return Err(Failure {
                metric: "rejected",
                reason: reject.message.clone(),
                reject: Some((tx, reject)),
            });
        }
        Err(e) => {
            let reject = Reject {
                code: RejectCode::Unavailable,
                message: format!("the commander cannot read its store ({e}); try again later"),
            };
            return Err(Failure {
                metric: "store_error",
                reason: e.to_string(),
                reject: Some((tx, reject)),
            });
        }
    };
    app.fleet.forget_place(admitted.record.sentry_id);
    Ok(Established {
        peer,
        exporter,
        session_nonce,
        hello,
        admitted,
        tx,
        rx,
    })
}

/// The heartbeat loop of an established session.
async fn run(
    app: &Arc<App>,
    conn: &quinn::Connection,
    est: Established,
    mut control: mpsc::Receiver<Control>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let Established {
        peer,
        exporter,
        session_nonce,
        hello,
        admitted,
        mut tx,
        mut rx,
    } = est;
    let sentry_id = admitted.record.sentry_id;
    let mut approved = admitted.status == SentryStatus::Approved;
    let store = app.store.clone();
    let progress = tokio::task::spawn_blocking(move || store.progress(sentry_id))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut last_seq = progress.last_seq;
    // The key is decompressed once for all of this session's signatures.
    let prepared = PreparedKey::new(&peer);
    tx.send(&CommanderMessage::Welcome(Welcome {
        sentry_id,
        status: admitted.status,
        last_seq,
        server_time_ms: now_ms(),
    }))
    .await
    .map_err(|e| e.to_string())?;

    // Say what this session should know at once: a rotation an operator
    // asked for, and the commander's next key.
    let record = &admitted.record;
    if admitted.unbound_wallet {
        info!(%peer, bound = %WalletAddress(record.wallet_address), "the sentry names another wallet than the bound one; the bound wallet stays until a BindWallet");
    }
    if record.rotate_requested_ms.is_some() && !admitted.retired_key {
        tx.send(&rotate_request())
            .await
            .map_err(|e| e.to_string())?;
    }
    if let Some(signed) = app.announcement.get() {
        tx.send(&CommanderMessage::KeyAnnouncement(signed))
            .await
            .map_err(|e| e.to_string())?;
    }
    // A retired key's session ends with its grace window.
    let retired_until = admitted
        .retired_key
        .then(|| {
            record.retired(peer.public_key()).map(|r| {
                r.at_ms
                    .saturating_add(app.config.rotation_grace.as_millis() as u64)
            })
        })
        .flatten()
        .map(|until_ms| {
            tokio::time::Instant::now()
                + std::time::Duration::from_millis(until_ms.saturating_sub(now_ms()))
        });
    // What the loop needs of the hello and the admission; the rest (labels,
    // the sentry's history) need not stay with every session.
    let hello_nonce = hello.nonce;
    let retired_key = admitted.retired_key;
    drop(hello);
    drop(admitted);
    let retired_timer = async {
        match retired_until {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(retired_timer);

    let (acked_tx, acked_rx) = watch::channel(Acked::Upto(last_seq));
    let acked_tx = Arc::new(acked_tx);
    let (out_tx, out_rx) = mpsc::channel::<Box<CommanderMessage>>(OUTBOUND);
    let out_tx = Outbound(out_tx);
    let writer = tokio::spawn(write_loop(tx, out_rx, acked_rx, conn.clone()));

    let mut rechallenge = tokio::time::interval(app.config.rechallenge);
    rechallenge.reset();
    let mut outstanding: Option<[u8; 32]> = None;

    let result: Result<(), String> = loop {
        tokio::select! {
            msg = rx.recv() => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(FramingError::Closed(reason)) => break Err(format!("sentry closed: {reason}")),
                    Err(e) => break Err(e.to_string()),
                };
                match msg {
                    SentryMessage::Heartbeat(signed) => {
                        if !approved {
                            app.metrics.rejected(NackReason::NotApproved);
                            let nack = nack(&signed, NackReason::NotApproved, last_seq);
                            if out_tx.send(nack).await.is_err() { break Err("writer stopped".into()); }
                            continue;
                        }
                        match open_heartbeat(app, &peer, prepared, &signed, last_seq).await {
                            Ok(hb) => {
                                last_seq = hb.seq;
                                let record = heartbeat_record(hb, sentry_id, now_ms());
                                let item = IngestItem { sentry_id, record, acked: acked_tx.clone() };
                                if app.ingest.submit(item).await.is_err() {
                                    break Err("commander shutting down".into());
                                }
                            }
                            Err(reason) => {
                                app.metrics.rejected(reason);
                                debug!(%peer, reason = reason.as_str(), "heartbeat refused");
                                if out_tx.send(nack(&signed, reason, last_seq)).await.is_err() {
                                    break Err("writer stopped".into());
                                }
                            }
                        }
                    }
                    SentryMessage::Proof(proof) => {
                        let Some(nonce) = outstanding.take() else {
                            break Err("a Proof nobody asked for".into());
                        };
                        if let Err(reject) = check_proof(&peer, &nonce, &exporter, &proof) {
                            warn!(%peer, "re-challenge failed: {}", reject.message);
                            let _ = out_tx.send(CommanderMessage::Reject(reject)).await;
                            conn.close(close::REJECTED.into(), b"challenge proof invalid");
                            break Err("re-challenge proof invalid".into());
                        }
                    }
                    SentryMessage::Hello(_) => break Err("a second Hello".into()),
                    SentryMessage::ActionResult(signed) => {
                        Box::pin(record_action_result(app, &peer, sentry_id, &signed)).await;
                    }
                    SentryMessage::RotateKey(signed) => {
                        // Rare handlers are boxed: their state is not part of every session.
                        let outcome = Box::pin(rotate_key(app, &peer, sentry_id, &session_nonce, &signed)).await;
                        if out_tx.send(CommanderMessage::Rotated(outcome)).await.is_err() {
                            break Err("writer stopped".into());
                        }
                    }
                    SentryMessage::BindWallet(binding) => {
                        let outcome = Box::pin(bind_wallet(app, &peer, sentry_id, &session_nonce, retired_key, &binding)).await;
                        if out_tx.send(CommanderMessage::WalletBound(outcome)).await.is_err() {
                            break Err("writer stopped".into());
                        }
                    }
                }
            }
            c = control.recv() => match c {
                Some(Control::Approved) => {
                    approved = true;
                    let _ = out_tx.send(CommanderMessage::StatusUpdate(StatusUpdate { status: SentryStatus::Approved })).await;
                }
                Some(Control::Action(signed)) => {
                    if out_tx.send(CommanderMessage::Action(*signed)).await.is_err() {
                        break Err("writer stopped".into());
                    }
                }
                Some(Control::Rotate) => {
                    if out_tx.send(rotate_request()).await.is_err() {
                        break Err("writer stopped".into());
                    }
                }
                Some(Control::Announce(signed)) => {
                    if out_tx.send(CommanderMessage::KeyAnnouncement(*signed)).await.is_err() {
                        break Err("writer stopped".into());
                    }
                }
                None => break Err("replaced by a newer session of this node".into()),
                Some(Control::Revoked) => {
                    let _ = out_tx.send(CommanderMessage::Reject(Reject {
                        code: RejectCode::Revoked,
                        message: "this sentry was revoked by an operator".into(),
                    })).await;
                    conn.close(close::REVOKED.into(), b"this sentry was revoked by an operator");
                    break Err("revoked".into());
                }
            },
            _ = rechallenge.tick() => {
                if outstanding.is_some() {
                    conn.close(close::REJECTED.into(), b"challenge not answered");
                    break Err("challenge not answered in time".into());
                }
                let nonce = random_bytes();
                let challenge = make_challenge(&app.identity.current().node, &hello_nonce, &exporter, &peer, nonce);
                outstanding = Some(nonce);
                if out_tx.send(CommanderMessage::Challenge(challenge)).await.is_err() {
                    break Err("writer stopped".into());
                }
            }
            _ = &mut retired_timer => {
                conn.close(close::KEY_ROTATED.into(), b"this node key was rotated away and its grace window is over");
                break Err("the retired key's grace window ended".into());
            }
            _ = hashfleet_agent::runtime::until_stopped(&mut stop) => {
                conn.close(close::SHUTDOWN.into(), b"commander shutting down");
                break Ok(());
            }
        }
    };
    drop(out_tx);
    writer.abort();
    result
}

/// [`heartbeat::open`] with the signature checked by the verifier, in a
/// batch with other sessions' heartbeats.
async fn open_heartbeat(
    app: &App,
    peer: &NodeId,
    key: PreparedKey,
    signed: &SignedHeartbeat,
    last_seq: u64,
) -> Result<Heartbeat, NackReason> {
    let hb = heartbeat::decode_for(peer, signed)?;
    let pending = || Pending::new(key, Domain::Heartbeat, &signed.payload, signed.signature);
    let verified = match app.verifier.verify(pending()).await {
        Some(verdict) => verdict,
        // Only if the verifier thread died: check here rather than refuse
        // good heartbeats (a sentry drops what is refused).
        None => pending().verify(),
    };
    if !verified {
        return Err(NackReason::BadSignature);
    }
    heartbeat::check_fresh(&hb, last_seq, now_ms())?;
    Ok(hb)
}

fn rotate_request() -> CommanderMessage {
    CommanderMessage::RotateRequest(RotateRequest {
        reason: "an operator asked this sentry to rotate its node key".into(),
    })
}

/// Checks a rotation (both signatures, this session) and applies it.
async fn rotate_key(
    app: &Arc<App>,
    peer: &NodeId,
    sentry_id: u64,
    session_nonce: &[u8; 32],
    signed: &SignedRotation,
) -> RotationOutcome {
    let request = match rotation::open_rotation(signed, peer, sentry_id, session_nonce) {
        Ok(r) => r,
        Err(e) => {
            warn!(%peer, "rotation refused: {e}");
            app.metrics.rotation("refused");
            let named = codec::decode::<RotationRequest>(&signed.payload)
                .map(|r| r.new_node_id)
                .unwrap_or(*peer);
            return RotationOutcome {
                new_node_id: named,
                accepted: false,
                message: format!("rotation refused: {e}"),
            };
        }
    };
    let store = app.store.clone();
    let req = request.clone();
    let done = tokio::task::spawn_blocking(move || {
        crate::rotation::rotate(store.as_ref(), sentry_id, &req, now_ms())
    })
    .await;
    let rotated = match done {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Rotated::Refused(format!(
            "the commander cannot write its store ({e}): try again later"
        )),
        Err(e) => Rotated::Refused(format!("the commander failed ({e}): try again later")),
    };
    match &rotated {
        Rotated::Done => {
            app.metrics.rotation("done");
            info!(sentry_id = format!("{sentry_id:016x}"), old = %peer, new = %request.new_node_id, seq = request.seq, "sentry rotated its node key");
        }
        Rotated::Already => {
            app.metrics.rotation("already");
            info!(sentry_id = format!("{sentry_id:016x}"), new = %request.new_node_id, "rotation repeated: already done");
        }
        Rotated::Refused(m) => {
            app.metrics.rotation("refused");
            warn!(
                sentry_id = format!("{sentry_id:016x}"),
                "rotation refused: {m}"
            );
        }
    }
    rotated.outcome(request.new_node_id)
}

/// Checks a wallet binding (the wallet's signature over this session's
/// node and nonce) and applies it.
async fn bind_wallet(
    app: &Arc<App>,
    peer: &NodeId,
    sentry_id: u64,
    session_nonce: &[u8; 32],
    retired_key: bool,
    binding: &WalletBinding,
) -> WalletOutcome {
    let refuse = |message: String| WalletOutcome {
        wallet_address: binding.wallet_address,
        accepted: false,
        message,
    };
    if retired_key {
        return refuse("this session's node key was rotated away: bind the wallet from a session of the current key".into());
    }
    if let Err(e) = rotation::check_wallet_binding(binding, peer, session_nonce) {
        warn!(%peer, "wallet binding refused: {e}");
        return refuse(format!("wallet binding refused: {e}"));
    }
    let store = app.store.clone();
    let b = binding.clone();
    let done = tokio::task::spawn_blocking(move || {
        crate::rotation::bind_wallet(store.as_ref(), sentry_id, &b, now_ms())
    })
    .await;
    match done {
        Ok(Ok(outcome)) => {
            if outcome.accepted {
                info!(sentry_id = format!("{sentry_id:016x}"), wallet = %outcome.wallet_address, "wallet bound");
            }
            outcome
        }
        Ok(Err(e)) => refuse(format!(
            "the commander cannot write its store ({e}): try again later"
        )),
        Err(e) => refuse(format!("the commander failed ({e}): try again later")),
    }
}

/// A Nack for a refused heartbeat, naming its seq when it can be read.
fn nack(signed: &SignedHeartbeat, reason: NackReason, last_seq: u64) -> CommanderMessage {
    let seq = codec::decode::<hashfleet_shared::wire::Heartbeat>(&signed.payload)
        .map(|h| h.seq)
        .unwrap_or(0);
    CommanderMessage::Nack(Nack {
        seq,
        reason,
        last_seq,
    })
}

/// The session's queue to its writer. Messages travel boxed: the queue's
/// slots are allocated in blocks of 32 per session, and a message is 152
/// bytes while a box is 8, which at 10,000 sessions is tens of megabytes.
struct Outbound(mpsc::Sender<Box<CommanderMessage>>);

impl Outbound {
    async fn send(&self, msg: CommanderMessage) -> Result<(), ()> {
        self.0.send(Box::new(msg)).await.map_err(|_| ())
    }
}

async fn write_loop(
    mut tx: FramedSend,
    mut out: mpsc::Receiver<Box<CommanderMessage>>,
    mut acked: watch::Receiver<Acked>,
    conn: quinn::Connection,
) {
    loop {
        let msg = tokio::select! {
            changed = acked.changed() => {
                let state = *acked.borrow_and_update();
                match (changed, state) {
                    (Ok(()), Acked::Upto(seq)) => CommanderMessage::Ack(Ack { seq }),
                    (Ok(()), Acked::Failed) => {
                        conn.close(close::STORE_ERROR.into(), b"the commander could not store heartbeats; reconnect and resend");
                        return;
                    }
                    (Err(_), _) => return,
                }
            },
            m = out.recv() => match m {
                Some(m) => *m,
                None => return,
            },
        };
        if tx.send(&msg).await.is_err() {
            return;
        }
    }
}

/// Verifies a sentry's signed action result and records each target's
/// outcome. A result that does not verify is logged and dropped: the
/// commander resends the request on the sentry's next session.
async fn record_action_result(
    app: &Arc<App>,
    peer: &NodeId,
    sentry_id: u64,
    signed: &hashfleet_shared::wire::SignedActionResult,
) {
    let body = match hashfleet_shared::action::open_result(peer, signed) {
        Ok(b) => b,
        Err(e) => {
            warn!(%peer, "action result refused: {e}");
            return;
        }
    };
    let app2 = app.clone();
    let recorded = tokio::task::spawn_blocking(move || {
        for outcome in &body.results {
            let key = format!("{sentry_id:016x}/{}", outcome.target);
            let result = crate::actions::TargetResult {
                ok: outcome.ok,
                detail: outcome.detail.clone(),
                at_ms: body.executed_at_ms,
            };
            if let Err(e) = app2.actions.result(&body.action_id, &key, result) {
                debug!(action = %body.action_id, "result not recorded: {e}");
            }
        }
        body.action_id
    })
    .await;
    if let Ok(id) = recorded {
        info!(action = %id, %peer, "action result recorded");
    }
}
