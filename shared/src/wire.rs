//! Wire protocol v1: every message a sentry and a commander exchange.
//!
//! Messages are encoded with bincode 2's own derives (standard config:
//! little-endian, varint lengths) inside length-prefixed frames (see
//! [`crate::codec`]). Maps are `BTreeMap`, so an encoding is deterministic.
//! New messages are added as new variants **at the end** of an enum; the
//! golden fixtures in `tests/golden.rs` break if an existing encoding moves.
//! `docs/protocol.md` describes each message and every signature input.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};

use crate::node_id::NodeId;
use crate::wallet::WalletAddress;

/// The protocol version in `Hello`; the ALPN carries the same number.
pub const PROTOCOL_VERSION: u16 = 1;
/// TLS ALPN of protocol v1.
pub const ALPN: &[u8] = b"hashfleet/1";
/// TLS exporter label for channel binding of the challenge proofs.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-hashfleet/v1/channel-binding";

/// Everything a sentry sends to a commander.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum SentryMessage {
    Hello(Hello),
    Proof(Proof),
    Heartbeat(SignedHeartbeat),
    /// The signed outcome of an [`ActionRequest`] (see [`crate::action`]).
    ActionResult(SignedActionResult),
    /// Move this sentry to a new node key (see [`crate::rotation`]).
    RotateKey(SignedRotation),
    /// Bind a new wallet to this sentry (see [`crate::rotation`]).
    BindWallet(WalletBinding),
}

/// Everything a commander sends to a sentry.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum CommanderMessage {
    Challenge(Challenge),
    Welcome(Welcome),
    Reject(Reject),
    StatusUpdate(StatusUpdate),
    Ack(Ack),
    Nack(Nack),
    /// An approved action for this sentry to execute (see [`crate::action`]).
    Action(SignedAction),
    /// An operator asked this sentry to rotate its node key now.
    RotateRequest(RotateRequest),
    /// The outcome of the sentry's `RotateKey`.
    Rotated(RotationOutcome),
    /// The outcome of the sentry's `BindWallet`.
    WalletBound(WalletOutcome),
    /// The commander has a new key (see [`crate::rotation`]).
    KeyAnnouncement(SignedKeyAnnouncement),
}

/// What kind of sentry is speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum SentryKind {
    Host,
    Asic,
    /// Virtual sentries of tests and the load generator.
    Synthetic,
}

impl SentryKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SentryKind::Host => "host",
            SentryKind::Asic => "asic",
            SentryKind::Synthetic => "synthetic",
        }
    }
}

/// First message of a session, sentry → commander.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Hello {
    pub protocol_version: u16,
    /// Must be the key the sentry presented in TLS.
    pub node_id: NodeId,
    pub kind: SentryKind,
    pub agent_version: String,
    pub wallet_address: WalletAddress,
    /// EIP-191 signature by the wallet key over the node_id text.
    pub wallet_proof: [u8; 65],
    pub enroll_token: Option<String>,
    /// The commander signs this nonce to prove it holds its key.
    pub nonce: [u8; 32],
    /// Labels from the sentry's config, such as `site` and `rack`.
    pub labels: BTreeMap<String, String>,
}

/// Commander → sentry: the commander's proof plus a nonce for the sentry
/// to sign. Sent once after `Hello`, and again at any time to re-verify.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Challenge {
    pub nonce: [u8; 32],
    /// Commander's signature over the challenge input for `Hello.nonce`.
    pub proof: [u8; 64],
}

/// Sentry → commander: the sentry's signature over the challenge input.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Proof {
    pub signature: [u8; 64],
}

/// Where a sentry stands with its commander.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum SentryStatus {
    /// Heartbeats are not stored until an operator approves the sentry.
    Pending,
    Approved,
}

/// The end of a successful handshake.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Welcome {
    /// Stable id the commander gave this sentry at enrollment.
    pub sentry_id: u64,
    pub status: SentryStatus,
    /// Highest seq the commander holds for this sentry (0: none). The
    /// sentry drops outbox entries at or below it and resends the rest.
    pub last_seq: u64,
    pub server_time_ms: u64,
}

/// Why a session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum RejectCode {
    VersionMismatch,
    Revoked,
    EnrollTokenInvalid,
    ProofInvalid,
    WalletProofInvalid,
    IdentityMismatch,
    Malformed,
    Unavailable,
    /// The node key was rotated away and its grace window is over.
    KeyRotated,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Reject {
    pub code: RejectCode,
    /// Human-readable: what was wrong and what to do.
    pub message: String,
}

/// The sentry's status changed during the session (for example approved).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct StatusUpdate {
    pub status: SentryStatus,
}

/// Every heartbeat up to and including `seq` is durably stored.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Ack {
    pub seq: u64,
}

/// Why a heartbeat was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum NackReason {
    /// seq at or below the last accepted one.
    Replay,
    BadSignature,
    /// Signed for another node than the session's.
    ForeignNode,
    NotApproved,
    Malformed,
    /// Timestamp too far in the future.
    ClockSkew,
}

impl NackReason {
    /// Label value for metrics (`hashfleet_heartbeats_total{result=…}`).
    pub fn as_str(&self) -> &'static str {
        match self {
            NackReason::Replay => "replay",
            NackReason::BadSignature => "bad_sig",
            NackReason::ForeignNode => "foreign",
            NackReason::NotApproved => "not_approved",
            NackReason::Malformed => "malformed",
            NackReason::ClockSkew => "clock_skew",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Nack {
    pub seq: u64,
    pub reason: NackReason,
    /// The commander's last accepted seq for this sentry.
    pub last_seq: u64,
}

/// A heartbeat as sent: the encoded [`Heartbeat`] and the node key's
/// signature over it, under the `heartbeat` domain tag. The commander
/// verifies the signature over these exact bytes, never over a
/// re-encoding (it decodes them first only to check the node binding).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct SignedHeartbeat {
    pub payload: Vec<u8>,
    pub signature: [u8; 64],
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Heartbeat {
    pub node_id: NodeId,
    /// Strictly increasing; belongs to the sentry, survives restarts and
    /// key rotations.
    pub seq: u64,
    pub ts_ms: u64,
    pub body: HeartbeatBody,
}

/// The devices a sentry reports. The host itself is one device.
#[derive(Debug, Clone, PartialEq, Default, Encode, Decode)]
pub struct HeartbeatBody {
    pub devices: Vec<DeviceSnapshot>,
}

/// One device's state at one moment. New metrics are new map keys, so they
/// need no new protocol version.
#[derive(Debug, Clone, PartialEq, Default, Encode, Decode)]
pub struct DeviceSnapshot {
    /// Stable id: MAC or serial for an ASIC, UUID for a GPU, the sentry for
    /// its host (the commander fills the sentry id in for `host`).
    pub id: String,
    /// `miner`, `gpu`, `host`, `container`, `powermeter`, `relay`, `runtime`.
    pub kind: String,
    pub make: String,
    pub model: String,
    pub firmware: String,
    /// Normalized numbers in base units: `hashrate_hs`, `power_w`, …
    pub metrics: BTreeMap<String, f64>,
    /// Textual facts: `hostname`, `os`, …
    pub labels: BTreeMap<String, String>,
    pub alerts: Vec<DeviceAlert>,
    /// The device's raw reply (JSON text), for debugging.
    pub raw: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum Severity {
    Critical,
    High,
    Medium,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct DeviceAlert {
    pub code: String,
    pub severity: Severity,
    pub message: String,
}

/// An action as sent: the encoded [`ActionRequest`] and the commander key's
/// signature over it, under the `action` domain tag. Like a heartbeat, the
/// sentry verifies these exact bytes.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct SignedAction {
    pub payload: Vec<u8>,
    pub signature: [u8; 64],
}

/// What the commander asks one sentry to do (inside `SignedAction.payload`).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct ActionRequest {
    /// Unique per action; the sentry executes an id at most once.
    pub action_id: String,
    /// The sentry the request is for: a request is valid on that sentry only.
    pub node_id: NodeId,
    /// For example `runHook`, `reboot`, `pauseMiner`.
    pub method: String,
    /// JSON array text, for example `["backup"]`.
    pub params: String,
    /// Device ids on that sentry; the host device's id is the sentry id as
    /// 16 hex digits.
    pub targets: Vec<String>,
    /// Who approved the action, for the sentry's log.
    pub voters: Vec<String>,
    pub issued_at_ms: u64,
    /// The sentry refuses to start the action at or after this time.
    pub expires_at_ms: u64,
}

/// An action's outcome as sent: the encoded [`ActionResultBody`] and the
/// sentry node key's signature over it, under the `action-result` domain.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct SignedActionResult {
    pub payload: Vec<u8>,
    pub signature: [u8; 64],
}

/// What happened to an action on one sentry (inside
/// `SignedActionResult.payload`).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct ActionResultBody {
    pub action_id: String,
    /// The sentry that signed the result.
    pub node_id: NodeId,
    /// One outcome per distinct target of the request, in request order.
    pub results: Vec<TargetOutcome>,
    /// When the action ran (for a refusal: when it was refused).
    pub executed_at_ms: u64,
    /// True when this is the stored result of an earlier execution, sent
    /// again because the commander resent the request.
    pub replayed: bool,
}

/// What happened on one target.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct TargetOutcome {
    pub target: String,
    pub ok: bool,
    /// JSON text when `ok`, an error message for people otherwise.
    pub detail: String,
}

/// A node key rotation as sent: the encoded [`RotationRequest`], signed
/// under the `rotation` domain by **both** the old (current) and the new
/// node key. Verified over these exact bytes.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct SignedRotation {
    pub payload: Vec<u8>,
    pub old_signature: [u8; 64],
    pub new_signature: [u8; 64],
}

/// What a sentry asks when it rotates (inside `SignedRotation.payload`).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct RotationRequest {
    /// The sentry id from this session's `Welcome`.
    pub sentry_id: u64,
    /// The key of this session: the one being retired.
    pub old_node_id: NodeId,
    pub new_node_id: NodeId,
    /// The sentry's last assigned heartbeat seq when it asked.
    pub seq: u64,
    /// This session's `Challenge.nonce`: binds the request to one session.
    pub session_nonce: [u8; 32],
    pub ts_ms: u64,
}

/// Commander → sentry: rotate now (an operator asked for it).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct RotateRequest {
    /// Why, for the sentry's log.
    pub reason: String,
}

/// The commander's answer to a `RotateKey`.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct RotationOutcome {
    /// The key the request named.
    pub new_node_id: NodeId,
    /// True: the sentry is bound to `new_node_id` (also when it already was).
    pub accepted: bool,
    /// Why not, when refused: what was wrong and what to do.
    pub message: String,
}

/// Sentry → commander: bind this wallet. `signature` is the wallet key's
/// EIP-191 signature over [`crate::rotation::wallet_binding_message`] of the
/// session's node id and `Challenge.nonce`.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct WalletBinding {
    pub wallet_address: WalletAddress,
    pub signature: [u8; 65],
}

/// The commander's answer to a `BindWallet`.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct WalletOutcome {
    pub wallet_address: WalletAddress,
    pub accepted: bool,
    pub message: String,
}

/// A commander key announcement as sent: the encoded [`KeyAnnouncement`],
/// signed under the `key-announcement` domain by the old (serving) key and
/// by the new key (which proves it is held).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct SignedKeyAnnouncement {
    pub payload: Vec<u8>,
    pub old_signature: [u8; 64],
    pub new_signature: [u8; 64],
}

/// Inside `SignedKeyAnnouncement.payload`.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct KeyAnnouncement {
    pub old_key: NodeId,
    pub new_key: NodeId,
    pub announced_at_ms: u64,
    /// From this moment the commander serves `new_key` and sentries drop
    /// `old_key` from their pins.
    pub switch_at_ms: u64,
}
