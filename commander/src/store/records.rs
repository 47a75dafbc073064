//! What the store keeps. These types are the store's own: wire messages and
//! HTTP DTOs are converted at the boundary, never written as they are.
//!
//! Every value is `schema version (u8) ‖ bincode(record)`, so a later
//! release can tell old records apart and migrate them.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};

use super::StoreError;

/// Schema version of every record type in this release.
pub const SCHEMA_VERSION: u8 = 1;

/// Lifecycle of a sentry on this commander.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum SentryState {
    Pending,
    Approved,
    /// Refused for good: at TLS and in the handshake, also after restarts.
    Revoked,
}

impl SentryState {
    pub fn as_str(&self) -> &'static str {
        match self {
            SentryState::Pending => "pending",
            SentryState::Approved => "approved",
            SentryState::Revoked => "revoked",
        }
    }
}

/// A sentry as enrolled. Written rarely (enrollment, approval, revocation,
/// rotation). Stored as schema version [`SENTRY_SCHEMA_VERSION`]; version 1
/// records (before rotation) are read and migrated.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct SentryRecord {
    pub sentry_id: u64,
    /// Current node key.
    pub node_key: [u8; 32],
    /// Earlier node keys, oldest first (rotation keeps the chain).
    pub previous_node_keys: Vec<[u8; 32]>,
    pub wallet_address: [u8; 20],
    pub kind: String,
    pub agent_version: String,
    pub labels: BTreeMap<String, String>,
    pub state: SentryState,
    pub created_ms: u64,
    pub state_changed_ms: u64,
    /// Every node key rotation, oldest first.
    pub rotations: Vec<RotationEntry>,
    /// When an operator asked this sentry to rotate (cleared by the rotation).
    pub rotate_requested_ms: Option<u64>,
    /// Every wallet binding change, oldest first.
    pub wallet_changes: Vec<WalletChange>,
}

/// One node key rotation of a sentry.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RotationEntry {
    pub old_key: [u8; 32],
    pub new_key: [u8; 32],
    pub at_ms: u64,
    /// The sentry's last assigned seq when it rotated.
    pub at_seq: u64,
}

/// One wallet re-binding of a sentry.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct WalletChange {
    pub old_wallet: [u8; 20],
    pub new_wallet: [u8; 20],
    pub at_ms: u64,
}

impl SentryRecord {
    /// The rotation that retired `key`, if `key` is one of the earlier keys.
    pub fn retired(&self, key: &[u8; 32]) -> Option<&RotationEntry> {
        self.rotations.iter().rev().find(|r| &r.old_key == key)
    }

    /// Every node key this sentry has held, current last.
    pub fn all_keys(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        self.previous_node_keys
            .iter()
            .copied()
            .chain(std::iter::once(self.node_key))
    }
}

/// The sentry record of schema version 1 (before rotation was built).
#[derive(Encode, Decode)]
struct SentryRecordV1 {
    sentry_id: u64,
    node_key: [u8; 32],
    previous_node_keys: Vec<[u8; 32]>,
    wallet_address: [u8; 20],
    kind: String,
    agent_version: String,
    labels: BTreeMap<String, String>,
    state: SentryState,
    created_ms: u64,
    state_changed_ms: u64,
}

/// Schema version of sentry records in this release.
pub const SENTRY_SCHEMA_VERSION: u8 = 2;

pub fn encode_sentry(record: &SentryRecord) -> Vec<u8> {
    let mut out = vec![SENTRY_SCHEMA_VERSION];
    bincode::encode_into_std_write(record, &mut out, config())
        .expect("encoding to a Vec cannot fail");
    out
}

/// Reads a sentry record of version 2, or of version 1 (migrated).
pub fn decode_sentry(tree: &'static str, bytes: &[u8]) -> Result<SentryRecord, StoreError> {
    let corrupt = |e: bincode::error::DecodeError| StoreError::Corrupt {
        tree,
        reason: e.to_string(),
    };
    match bytes.split_first() {
        Some((&SENTRY_SCHEMA_VERSION, rest)) => bincode::decode_from_slice(rest, config())
            .map(|(r, _)| r)
            .map_err(corrupt),
        Some((1, rest)) => {
            let (v1, _): (SentryRecordV1, _) =
                bincode::decode_from_slice(rest, config()).map_err(corrupt)?;
            Ok(SentryRecord {
                sentry_id: v1.sentry_id,
                node_key: v1.node_key,
                previous_node_keys: v1.previous_node_keys,
                wallet_address: v1.wallet_address,
                kind: v1.kind,
                agent_version: v1.agent_version,
                labels: v1.labels,
                state: v1.state,
                created_ms: v1.created_ms,
                state_changed_ms: v1.state_changed_ms,
                rotations: Vec::new(),
                rotate_requested_ms: None,
                wallet_changes: Vec::new(),
            })
        }
        Some((v, _)) => Err(StoreError::Corrupt {
            tree,
            reason: format!("sentry record schema version {v}; this release reads versions 1 and {SENTRY_SCHEMA_VERSION}: upgrade the commander"),
        }),
        None => Err(StoreError::Corrupt {
            tree,
            reason: "empty record".into(),
        }),
    }
}

/// Ingest progress of a sentry. Written with every batch of heartbeats,
/// in the same transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode)]
pub struct ProgressRecord {
    /// Highest stored seq (0: none).
    pub last_seq: u64,
    /// Heartbeats accepted and stored, ever.
    pub heartbeats: u64,
    pub last_seen_ms: u64,
}

/// An enrollment token, keyed by its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TokenRecord {
    pub uses_left: u32,
    pub expires_ms: u64,
    pub created_ms: u64,
}

/// A user of the HTTP API (tree `users`, keyed by username).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct UserRecord {
    pub username: String,
    /// Argon2id PHC string (`$argon2id$v=19$…`); never leaves the store but in backups.
    pub password_hash: String,
    /// `type:level` and `role:NAME` entries, as validated at creation.
    pub permissions: Vec<String>,
    pub admin: bool,
    pub created_ms: u64,
    /// A disabled user can neither log in nor use its tokens.
    pub disabled: bool,
}

/// How an API token came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum ApiTokenKind {
    /// Made by `POST /api/v1/auth/login`; expires.
    Session,
    /// Made by `POST /api/v1/tokens`; lives until revoked.
    Personal,
}

impl ApiTokenKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ApiTokenKind::Session => "session",
            ApiTokenKind::Personal => "personal",
        }
    }
}

/// A user's bearer token (tree `api_tokens`, keyed by the token's SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ApiTokenRecord {
    /// 16 hex digits, shown to the user to name the token (e.g. to revoke it).
    pub id: String,
    pub username: String,
    pub kind: ApiTokenKind,
    pub created_ms: u64,
    /// 0: never (personal tokens).
    pub expires_ms: u64,
    pub revoked: bool,
}

impl ApiTokenRecord {
    /// Whether the token may be used at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        !self.revoked && (self.expires_ms == 0 || now_ms < self.expires_ms)
    }
}

/// One stored heartbeat.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct HeartbeatRecord {
    pub seq: u64,
    /// The sentry's timestamp.
    pub ts_ms: u64,
    /// When the commander received it.
    pub received_ms: u64,
    pub devices: Vec<DeviceRecord>,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct DeviceRecord {
    pub id: String,
    pub kind: String,
    pub make: String,
    pub model: String,
    pub firmware: String,
    pub metrics: BTreeMap<String, f64>,
    pub labels: BTreeMap<String, String>,
    pub alerts: Vec<AlertRecord>,
    pub raw: String,
}

/// A device's latest state in the registry (tree `devices`).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct DeviceStateRecord {
    pub id: String,
    pub kind: String,
    pub make: String,
    pub model: String,
    pub firmware: String,
    /// The sentry that reported it last.
    pub sentry_id: u64,
    pub site: String,
    pub rack: String,
    pub tags: Vec<String>,
    pub metrics: BTreeMap<String, f64>,
    pub labels: BTreeMap<String, String>,
    pub alerts: Vec<AlertRecord>,
    pub raw: String,
    pub first_seen_ms: u64,
    /// When the commander last received it.
    pub last_seen_ms: u64,
    /// The sentry's timestamp of the last snapshot.
    pub last_ts_ms: u64,
}

/// One rollup bucket (tree `rollups`): the aggregate kept per series,
/// resolution and bucket start.
pub type RollupRecord = crate::fleet::rollup::Bucket;

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct AlertRecord {
    pub code: String,
    /// `critical`, `high` or `medium`.
    pub severity: String,
    pub message: String,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// `version ‖ bincode(record)`.
pub fn encode<T: Encode>(record: &T) -> Vec<u8> {
    let mut out = vec![SCHEMA_VERSION];
    bincode::encode_into_std_write(record, &mut out, config())
        .expect("encoding to a Vec cannot fail");
    out
}

pub fn decode<T: Decode<()>>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&SCHEMA_VERSION, rest)) => bincode::decode_from_slice(rest, config())
            .map(|(r, _)| r)
            .map_err(|e| StoreError::Corrupt {
                tree,
                reason: e.to_string(),
            }),
        Some((v, _)) => Err(StoreError::Corrupt {
            tree,
            reason: format!("record schema version {v}; this release reads version {SCHEMA_VERSION}: upgrade the commander"),
        }),
        None => Err(StoreError::Corrupt {
            tree,
            reason: "empty record".into(),
        }),
    }
}
