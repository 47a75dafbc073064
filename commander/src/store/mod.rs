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

    /// Key of a resolution's group marks: `resolution code ‖ offset` (5 bytes).
    pub fn resolution_bytes(r: Resolution) -> [u8; 5] {
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

    /// Reads a group-marks key ([`RollupKey::resolution_bytes`]) back.
    pub fn parse_resolution_bytes(key: &[u8]) -> Option<Resolution> {
        if key.len() != 5 {
            return None;
        }
        let offset = (u32::from_be_bytes(key[1..5].try_into().ok()?) as i64 - (1 << 31)) as i32;
        Resolution::from_key_parts(key[0], offset)
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

/// Everything the fleet state changed since its last checkpoint, in the
/// atomic parts the store writes, in this order:
///
/// 1. `series`: new series names (alone they are harmless);
/// 2. `devices`: device records, which replaying heartbeats the marks do
///    not cover brings to the same end (so they go first, in batches);
/// 3. `groups`: the group-series buckets with every sentry's group mark,
///    in one atomic write;
/// 4. each of `parts`, in one atomic write each: device-series buckets
///    with their sentries' device marks.
///
/// No part is large, so ingest commits interleave with a checkpoint
/// instead of waiting for all of it (sled runs one transaction at a time).
/// The order keeps every stored group mark at or above the device marks of
/// the same sentry and resolution, which is what replay needs (see
/// `Fleet::load`).
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    /// New series names and their ids.
    pub series: Vec<(String, u64)>,
    pub devices: Vec<DeviceStateRecord>,
    pub groups: GroupPart,
    pub parts: Vec<DevicePart>,
}

/// Group-series buckets and, per resolution written, the group mark of
/// every sentry: each group bucket of that resolution holds every
/// heartbeat up to the sentry's mark and none after it.
#[derive(Debug, Clone, Default)]
pub struct GroupPart {
    pub buckets: Vec<(RollupKey, RollupRecord)>,
    /// Per resolution, all sentries' marks (this replaces the stored set).
    pub marks: GroupMarks,
}

/// Device-series buckets with the device marks of the sentries that fed
/// them: each of those buckets of a marked resolution holds every
/// heartbeat of its sentry up to the mark and none after it.
#[derive(Debug, Clone, Default)]
pub struct DevicePart {
    pub buckets: Vec<(RollupKey, RollupRecord)>,
    /// Per sentry and resolution: the device mark.
    pub marks: Vec<(u64, Resolution, u64)>,
}

impl GroupPart {
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty() && self.marks.is_empty()
    }
}

impl DevicePart {
    /// Records this part writes.
    pub fn len(&self) -> usize {
        self.buckets.len() + self.marks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Per resolution, every sentry's group mark: `(sentry, seq)` pairs.
pub type GroupMarks = Vec<(Resolution, Vec<(u64, u64)>)>;

/// Group marks of one resolution as stored: `(sentry ‖ seq)` pairs,
/// big-endian, 16 bytes each.
pub fn encode_group_marks(marks: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(marks.len() * 16);
    for (sentry, seq) in marks {
        out.extend_from_slice(&sentry.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
    }
    out
}

/// Reads [`encode_group_marks`] back; `None` when the length is not a
/// multiple of 16.
pub fn decode_group_marks(bytes: &[u8]) -> Option<Vec<(u64, u64)>> {
    if bytes.len() % 16 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(16)
            .map(|c| {
                let (a, b) = c.split_at(8);
                (
                    u64::from_be_bytes(a.try_into().unwrap_or_default()),
                    u64::from_be_bytes(b.try_into().unwrap_or_default()),
                )
            })
            .collect(),
    )
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
    /// stored device-series buckets are complete (the device marks).
    fn rollup_marks(&self) -> Result<Vec<(u64, Resolution, u64)>, StoreError>;
    /// Per resolution and sentry, the seq up to which that resolution's
    /// stored group-series buckets are complete (the group marks). A
    /// resolution missing here was last written by a commander that kept
    /// one mark for both: its device marks hold for the groups too.
    fn group_marks(&self) -> Result<GroupMarks, StoreError>;
    fn bucket(&self, key: &RollupKey) -> Result<Option<RollupRecord>, StoreError>;
    /// Buckets of a series at a resolution with `start ≤ bucket start ≤ end`, ascending.
    fn buckets(
        &self,
        series: u64,
        resolution: Resolution,
        start_ms: u64,
        end_ms: u64,
    ) -> Result<Vec<(u64, RollupRecord)>, StoreError>;
    /// Writes a checkpoint part by part, in the order [`Checkpoint`]
    /// gives, each part atomically, then flushes.
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
