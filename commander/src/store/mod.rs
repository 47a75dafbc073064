//! Persistence behind the [`Store`] trait; [`SledStore`] is the embedded
//! implementation (sled 0.34).
//!
//! Invariants:
//! - the store never sees wire types or HTTP DTOs, only [`records`];
//! - keys that need ordering are big-endian (`sentry_id ‖ seq`);
//! - [`Store::append_heartbeats`] is atomic across the heartbeat and
//!   progress trees and durable when it returns: only then may a seq be
//!   acknowledged.

pub mod records;
mod sled_store;

use hashfleet_shared::NodeId;

pub use records::{
    AlertRecord, DeviceRecord, HeartbeatRecord, ProgressRecord, SentryRecord, SentryState,
    TokenRecord,
};
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
}
