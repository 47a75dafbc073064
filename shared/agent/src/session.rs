//! One authenticated session with one commander: QUIC connect, the v1
//! handshake, then framed messages on a single bidirectional stream.
//!
//! [`Session::establish`] returns only after `Welcome`. The halves from
//! [`Session::split`] let the runtime read and write concurrently. Tests
//! use the same type to send hand-made (replayed, tampered) frames.

use std::net::SocketAddr;

use hashfleet_shared::codec::CodecError;
use hashfleet_shared::handshake::{HandshakeError, HelloParams, SentryHandshake};
use hashfleet_shared::tls::{PinReport, SERVER_NAME};
use hashfleet_shared::wire::{
    Challenge, CommanderMessage, Proof, RejectCode, SentryMessage, Welcome, EXPORTER_LABEL,
};
use hashfleet_shared::{Identity, NodeId, NodeKey};

use crate::endpoint;
use crate::framing::{FramedRecv, FramedSend, FramingError};

/// Why a session could not be set up or ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("QUIC/TLS configuration: {0}")]
    Config(String),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("refusing commander at {addr}: it presented key {presented} (public key {hex}), which is not pinned; pinned: [{pins}]. Check --commander-key against `hashfleet-commander info` on that commander", hex = presented.public_key_hex())]
    NotPinned {
        addr: SocketAddr,
        presented: NodeId,
        pins: String,
    },
    #[error("commander at {addr} refused this sentry during the TLS handshake ({reason}); if its key was revoked, the sentry needs a new identity and enrollment token")]
    TlsRefused { addr: SocketAddr, reason: String },
    #[error("commander refused the session ({code:?}): {message}")]
    Rejected { code: RejectCode, message: String },
    #[error("commander closed the session: {0}")]
    Closed(String),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("bad frame from commander: {0}")]
    Codec(#[from] CodecError),
    #[error("commander sent {0} where the protocol does not allow it")]
    Unexpected(&'static str),
    #[error("no acknowledgement for {0:?}: the session is dead")]
    Dead(std::time::Duration),
    #[error("timed out during {0}")]
    Timeout(&'static str),
}

impl SessionError {
    /// Turns a quinn connection error into one that says what happened.
    fn from_connection(
        addr: SocketAddr,
        err: quinn::ConnectionError,
        pins: &[NodeId],
        report: &PinReport,
    ) -> Self {
        if let Some(presented) = report.take() {
            return SessionError::NotPinned {
                addr,
                presented,
                pins: pins
                    .iter()
                    .map(|p| p.public_key_hex())
                    .collect::<Vec<_>>()
                    .join(", "),
            };
        }
        match err {
            quinn::ConnectionError::ApplicationClosed(close) => {
                SessionError::Closed(String::from_utf8_lossy(&close.reason).into_owned())
            }
            quinn::ConnectionError::ConnectionClosed(close)
                if close.error_code.to_string().contains("crypto") || !close.reason.is_empty() =>
            {
                SessionError::TlsRefused {
                    addr,
                    reason: format!("{}: {}", close.error_code, String::from_utf8_lossy(&close.reason)),
                }
            }
            quinn::ConnectionError::TransportError(e) => SessionError::TlsRefused {
                addr,
                reason: e.to_string(),
            },
            quinn::ConnectionError::Reset => SessionError::Lost(
                "the commander reset the connection (it restarted, or no longer knows this session)".into(),
            ),
            quinn::ConnectionError::TimedOut => SessionError::Lost(format!("no answer from {addr}")),
            other => SessionError::Lost(other.to_string()),
        }
    }

    /// Whether retrying the same commander can help without operator action.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            SessionError::NotPinned { .. }
                | SessionError::Rejected {
                    code: RejectCode::Revoked
                        | RejectCode::EnrollTokenInvalid
                        | RejectCode::VersionMismatch
                        | RejectCode::WalletProofInvalid,
                    ..
                }
        )
    }
}

/// Writes frames to the commander.
pub type SessionTx = FramedSend;
/// Reads frames from the commander.
pub type SessionRx = FramedRecv<CommanderMessage>;

impl From<FramingError> for SessionError {
    fn from(e: FramingError) -> Self {
        match e {
            FramingError::Codec(c) => SessionError::Codec(c),
            FramingError::Closed(reason) => SessionError::Closed(reason),
            FramingError::Lost(reason) => SessionError::Lost(reason),
        }
    }
}

/// What answers commander challenges during a session.
#[derive(Clone)]
pub struct Prover {
    handshake: SentryHandshake,
    node_key: NodeKey,
    commander: NodeId,
}

impl Prover {
    pub fn answer(&self, challenge: &Challenge) -> Result<Proof, SessionError> {
        Ok(self
            .handshake
            .answer(&self.node_key, &self.commander, challenge)?)
    }
}

/// An established session.
pub struct Session {
    pub conn: quinn::Connection,
    pub tx: SessionTx,
    pub rx: SessionRx,
    pub prover: Prover,
    pub welcome: Welcome,
    pub commander: NodeId,
    pub addr: SocketAddr,
    /// The commander's `Challenge.nonce` of this session's handshake; a
    /// rotation or wallet binding is signed over it.
    pub session_nonce: [u8; 32],
}

impl Session {
    /// Connects, authenticates both ends and waits for `Welcome`.
    pub async fn establish(
        endpoint: &quinn::Endpoint,
        identity: &Identity,
        addr: SocketAddr,
        pins: &[NodeId],
        hello: HelloParams,
    ) -> Result<Session, SessionError> {
        let report = PinReport::default();
        let config = endpoint::client_config(&identity.node, pins.to_vec(), report.clone())?;
        let connecting = endpoint
            .connect_with(config, addr, SERVER_NAME)
            .map_err(|e| SessionError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let conn = connecting
            .await
            .map_err(|e| SessionError::from_connection(addr, e, pins, &report))?;
        let commander = peer_node(&conn).ok_or(SessionError::Unexpected("no raw public key"))?;
        let mut exporter = [0u8; 32];
        conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
            .map_err(|_| SessionError::Config("TLS exporter unavailable".into()))?;
        // A commander that refused our key at TLS only tells us now.
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| SessionError::from_connection(addr, e, pins, &report))?;
        let mut tx = FramedSend::new(send);
        let mut rx = FramedRecv::<CommanderMessage>::new(recv);
        let (handshake, hello) =
            SentryHandshake::start(identity, hello, exporter, hashfleet_shared::random_bytes());
        let prover = Prover {
            handshake,
            node_key: identity.node.clone(),
            commander,
        };
        let mut session_nonce = [0u8; 32];
        let result = async {
            tx.send(&SentryMessage::Hello(hello)).await?;
            match rx.recv().await? {
                CommanderMessage::Challenge(ch) => {
                    let proof = prover.answer(&ch)?;
                    session_nonce = ch.nonce;
                    tx.send(&SentryMessage::Proof(proof)).await?;
                }
                CommanderMessage::Reject(r) => {
                    return Err(SessionError::Rejected {
                        code: r.code,
                        message: r.message,
                    })
                }
                _ => return Err(SessionError::Unexpected("a message other than Challenge")),
            }
            match rx.recv().await? {
                CommanderMessage::Welcome(w) => Ok(w),
                CommanderMessage::Reject(r) => Err(SessionError::Rejected {
                    code: r.code,
                    message: r.message,
                }),
                _ => Err(SessionError::Unexpected("a message other than Welcome")),
            }
        }
        .await;
        match result {
            Ok(welcome) => Ok(Session {
                conn,
                tx,
                rx,
                prover,
                welcome,
                commander,
                addr,
                session_nonce,
            }),
            Err(e) => {
                // A refusal at TLS surfaces as a lost stream: say so plainly.
                let e = match (e, conn.close_reason()) {
                    (SessionError::Lost(_) | SessionError::Closed(_), Some(reason)) => {
                        SessionError::from_connection(addr, reason, pins, &report)
                    }
                    (e, _) => e,
                };
                conn.close(0u32.into(), b"handshake failed");
                Err(e)
            }
        }
    }

    pub fn close(&self, reason: &str) {
        self.conn.close(0u32.into(), reason.as_bytes());
    }
}

/// The node key the peer presented in TLS.
pub fn peer_node(conn: &quinn::Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast_ref::<Vec<rustls::pki_types::CertificateDer<'static>>>()?;
    NodeId::from_spki_der(certs.first()?.as_ref())
}
