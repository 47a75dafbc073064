//! Persistence behind the [`Store`] trait; [`SledStore`] is the embedded
//! implementation (sled 0.34).
//!
//! Invariants:
//! - the store never sees wire types or HTTP DTOs, only [`records`];
//! - keys that need ordering are big-endian (`sentry_id ‖ seq`);
//! - [`Store::append_heartbeats`] is atomic across the heartbeat and
//!   progress trees and durable when it returns: only then may a seq be
//!   acknowledged.

pub mod actions;
pub mod backup;
pub mod records;
mod sled_actions;
mod sled_store;

use hashfleet_shared::NodeId;

pub use records::{
    AlertRecord, ApiTokenKind, ApiTokenRecord, DeviceRecord, DeviceStateRecord, HeartbeatRecord,
    ProgressRecord, RollupRecord, RotationEntry, SentryRecord, SentryState, TokenRecord,
    UserRecord, WalletChange,
};

use crate::fleet::rollup::Resolution;

/// Where one rollup bucket lives: series, resolution, bucket start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RollupKey {
    pub series: u64,
    pub resolution: Resolution,
    pub start_ms: u64,
}

impl RollupKey {
    /// `series ‖ resolution code ‖ offset minutes ‖ bucket start`, big-endian,
    /// so one series' buckets of one resolution are contiguous and in time order.
    pub fn to_bytes(&self) -> [u8; 21] {
        let mut out = [0u8; 21];
        out[..8].copy_from_slice(&self.series.to_be_bytes());
        out[8..13].copy_from_slice(&Self::resolution_bytes(self.resolution));
        out[13..].copy_from_slice(&self.start_ms.to_be_bytes());
        out
    }

    fn resolution_bytes(r: Resolution) -> [u8; 5] {
        let (code, offset_min) = r.key_parts();
        let mut out = [0u8; 5];
        out[0] = code;
        // Biased so the bytes sort like the numbers.
        out[1..].copy_from_slice(&((offset_min as i64 + (1 << 31)) as u32).to_be_bytes());
        out
    }

    /// Key of a rollup mark: `sentry ‖ resolution` (13 bytes).
    pub fn mark_key(sentry: u64, r: Resolution) -> [u8; 13] {
        Self::prefix(sentry, r)
    }

    /// Reads a mark key back.
    pub fn parse_mark_key(key: &[u8]) -> Option<(u64, Resolution)> {
        if key.len() != 13 {
            return None;
        }
        let sentry = u64::from_be_bytes(key[..8].try_into().ok()?);
        let offset = (u32::from_be_bytes(key[9..13].try_into().ok()?) as i64 - (1 << 31)) as i32;
        Some((sentry, Resolution::from_key_parts(key[8], offset)?))
    }

    /// The 13-byte prefix of a series at a resolution.
    pub fn prefix(series: u64, r: Resolution) -> [u8; 13] {
        let mut out = [0u8; 13];
        out[..8].copy_from_slice(&series.to_be_bytes());
        out[8..].copy_from_slice(&Self::resolution_bytes(r));
        out
    }
}

/// Everything the fleet state changed since its last checkpoint, written in
/// one transaction.
#[derive(Debug, Default)]
pub struct Checkpoint {
    /// New series names and their ids.
    pub series: Vec<(String, u64)>,
    pub devices: Vec<DeviceStateRecord>,
    pub buckets: Vec<(RollupKey, RollupRecord)>,
    /// Per sentry and resolution: every heartbeat up to this seq is in the
    /// stored buckets of that resolution.
    pub marks: Vec<(u64, Resolution, u64)>,
}
pub use backup::BackupStats;
pub use sled_store::SledStore;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O: {0}")]
    Sled(#[from] sled::Error),
    #[error("store tree `{tree}` holds a record it cannot read ({reason}); restore the data directory from a backup")]
    Corrupt { tree: &'static str, reason: String },
    #[error("store transaction failed: {0}")]
    Transaction(String),
    #[error("backup: {0}")]
    Backup(String),
    #[error("the store at {0} is in use by another process (a running commander?): stop it first, or give this one its own data directory")]
    Locked(String),
}

/// What the ingest pipeline writes: one heartbeat of one sentry.
#[derive(Debug, Clone)]
pub struct HeartbeatWrite {
    pub sentry_id: u64,
    pub record: HeartbeatRecord,
}

/// What a token lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUse {
    /// The token was valid; one use was taken.
    Used,
    Unknown,
    Expired,
    UsedUp,
}

/// The commander's persistence.
pub trait Store: Send + Sync + 'static {
    fn sentry(&self, sentry_id: u64) -> Result<Option<SentryRecord>, StoreError>;
    /// The sentry that holds (or held) this node key.
    fn sentry_id_for_node(&self, node: &NodeId) -> Result<Option<u64>, StoreError>;
    /// Sentries ordered by id.
    fn sentries(&self, offset: usize, limit: usize) -> Result<Vec<SentryRecord>, StoreError>;
    fn sentry_count(&self) -> Result<usize, StoreError>;
    /// Creates or updates a sentry and indexes its node keys; durable on return.
    fn put_sentry(&self, record: &SentryRecord) -> Result<(), StoreError>;
    fn progress(&self, sentry_id: u64) -> Result<ProgressRecord, StoreError>;

    /// Stores a new enrollment token under its hash; durable on return.
    fn put_token(&self, hash: &[u8; 32], record: &TokenRecord) -> Result<(), StoreError>;
    /// Takes one use of a token, atomically.
    fn use_token(&self, hash: &[u8; 32], now_ms: u64) -> Result<TokenUse, StoreError>;

    /// Creates a user; `false` (and nothing written) if the name is taken.
    /// Durable on return.
    fn create_user(&self, record: &UserRecord) -> Result<bool, StoreError>;
    /// Replaces an existing user (e.g. to disable it); durable on return.
    fn put_user(&self, record: &UserRecord) -> Result<(), StoreError>;
    fn user(&self, username: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Every user, by name.
    fn users(&self) -> Result<Vec<UserRecord>, StoreError>;

    /// Stores an API token under its SHA-256; durable on return.
    fn put_api_token(&self, hash: &[u8; 32], record: &ApiTokenRecord) -> Result<(), StoreError>;
    fn api_token(&self, hash: &[u8; 32]) -> Result<Option<ApiTokenRecord>, StoreError>;
    /// Every API token with its hash.
    fn api_tokens(&self) -> Result<Vec<([u8; 32], ApiTokenRecord)>, StoreError>;
    /// Marks a token revoked; `false` if there is no such token. Durable on return.
    fn revoke_api_token(&self, hash: &[u8; 32]) -> Result<bool, StoreError>;
    /// Deletes session tokens that expired before `now_ms`; returns how many.
    fn prune_api_tokens(&self, now_ms: u64) -> Result<u64, StoreError>;

    /// Stores heartbeats and the sentries' progress in one transaction, then
    /// flushes to disk.
    fn append_heartbeats(&self, batch: &[HeartbeatWrite]) -> Result<(), StoreError>;
    /// Up to `limit` heartbeats of a sentry, newest first.
    fn recent_heartbeats(
        &self,
        sentry_id: u64,
        limit: usize,
    ) -> Result<Vec<HeartbeatRecord>, StoreError>;

    /// Node keys of every revoked sentry (loaded at start for TLS refusal).
    fn revoked_keys(&self) -> Result<Vec<[u8; 32]>, StoreError>;
    fn flush(&self) -> Result<(), StoreError>;
    /// Bytes the store occupies on disk.
    fn size_on_disk(&self) -> Result<u64, StoreError>;
    /// Bytes of keys and values in every tree: the logical size, to
    /// compare with [`Store::size_on_disk`].
    fn logical_bytes(&self) -> Result<u64, StoreError>;
    /// Every sentry's progress, by sentry id.
    fn all_progress(&self) -> Result<Vec<(u64, ProgressRecord)>, StoreError>;
    /// Up to `limit` heartbeats of a sentry with seq above `after`, ascending.
    fn heartbeats_after(
        &self,
        sentry_id: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<HeartbeatRecord>, StoreError>;
    /// Retention of raw heartbeats: deletes a sentry's heartbeats with
    /// seq ≤ `upto_seq` (the count bound) and those received before
    /// `older_than_ms` (the age bound), but never one with seq > `max_seq`
    /// (not yet in the rollups). Returns how many went.
    fn prune_heartbeats(
        &self,
        sentry_id: u64,
        upto_seq: u64,
        older_than_ms: u64,
        max_seq: u64,
    ) -> Result<u64, StoreError>;

    /// The device registry as last checkpointed.
    fn devices(&self) -> Result<Vec<DeviceStateRecord>, StoreError>;
    /// Series names and ids.
    fn series(&self) -> Result<Vec<(String, u64)>, StoreError>;
    /// Per sentry and resolution, the seq up to which that resolution's
    /// stored buckets are complete.
    fn rollup_marks(&self) -> Result<Vec<(u64, Resolution, u64)>, StoreError>;
    fn bucket(&self, key: &RollupKey) -> Result<Option<RollupRecord>, StoreError>;
    /// Buckets of a series at a resolution with `start ≤ bucket start ≤ end`, ascending.
    fn buckets(
        &self,
        series: u64,
        resolution: Resolution,
        start_ms: u64,
        end_ms: u64,
    ) -> Result<Vec<(u64, RollupRecord)>, StoreError>;
    /// Writes a checkpoint in one transaction, then flushes.
    fn checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError>;
    /// Deletes buckets of these series at `resolution` that start before `before_ms`.
    fn prune_buckets(
        &self,
        series: &[u64],
        resolution: Resolution,
        before_ms: u64,
    ) -> Result<u64, StoreError>;

    /// Writes a consistent copy of every tree to `out`. Writers wait while
    /// it runs, so the copy is one moment of the store.
    fn backup(&self, out: &mut dyn std::io::Write) -> Result<BackupStats, StoreError>;
}
