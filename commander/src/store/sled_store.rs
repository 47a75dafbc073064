//! The embedded store on sled 0.34: one tree per record type.

use std::collections::BTreeMap;
use std::path::Path;

use hashfleet_shared::NodeId;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::records::{
    self, ApiTokenKind, ApiTokenRecord, HeartbeatRecord, ProgressRecord, SentryRecord, SentryState,
    TokenRecord, UserRecord,
};
use super::{BackupStats, Checkpoint, HeartbeatWrite, RollupKey, Store, StoreError, TokenUse};
use crate::fleet::rollup::Resolution;
use crate::store::records::{DeviceStateRecord, RollupRecord};

const SENTRIES: &str = "sentries";
const NODE_KEYS: &str = "node_keys";
const PROGRESS: &str = "progress";
const TOKENS: &str = "tokens";
const HEARTBEATS: &str = "heartbeats";
const DEVICES: &str = "devices";
const SERIES: &str = "series";
const ROLLUPS: &str = "rollups";
const ROLLUP_MARKS: &str = "rollup_marks";
const GROUP_MARKS: &str = "rollup_group_marks";
const USERS: &str = "users";
const API_TOKENS: &str = "api_tokens";

/// sled-backed [`Store`].
///
/// Every write takes the `gate` shared; [`Store::backup`] takes it
/// exclusively, so a backup sees no half-written group of trees.
pub struct SledStore {
    pub(super) gate: std::sync::RwLock<()>,
    pub(super) db: sled::Db,
    sentries: sled::Tree,
    node_keys: sled::Tree,
    progress: sled::Tree,
    tokens: sled::Tree,
    heartbeats: sled::Tree,
    devices: sled::Tree,
    series: sled::Tree,
    rollups: sled::Tree,
    rollup_marks: sled::Tree,
    group_marks: sled::Tree,
    users: sled::Tree,
    api_tokens: sled::Tree,
}

fn heartbeat_key(sentry_id: u64, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&sentry_id.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// How long [`SledStore::open`] waits for a lock held by a closing handle.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// sled reports a held directory lock as an I/O error of kind `Other`
/// wrapping `WouldBlock`; the message is the only stable mark.
fn is_lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    ///
    /// sled holds an advisory lock on the directory for as long as any of its
    /// threads keep the database alive, which can outlast the `Db` handle by
    /// a few milliseconds (a restart in the same process, a test reopening).
    /// So a held lock is retried for up to [`LOCK_WAIT`] before it is reported
    /// as what it almost always is then: another process using the store.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new()
                .path(dir)
                .cache_capacity(64 * 1024 * 1024)
                // Durability comes from explicit flushes (group commit), not a timer.
                .flush_every_ms(None)
                .open()
            {
                Ok(db) => break db,
                Err(e) if is_lock_held(&e) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(StoreError::Locked(dir.display().to_string()));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(SledStore {
            gate: std::sync::RwLock::new(()),
            sentries: db.open_tree(SENTRIES)?,
            node_keys: db.open_tree(NODE_KEYS)?,
            progress: db.open_tree(PROGRESS)?,
            tokens: db.open_tree(TOKENS)?,
            heartbeats: db.open_tree(HEARTBEATS)?,
            devices: db.open_tree(DEVICES)?,
            series: db.open_tree(SERIES)?,
            rollups: db.open_tree(ROLLUPS)?,
            rollup_marks: db.open_tree(ROLLUP_MARKS)?,
            group_marks: db.open_tree(GROUP_MARKS)?,
            users: db.open_tree(USERS)?,
            api_tokens: db.open_tree(API_TOKENS)?,
            db,
        })
    }
}

impl Store for SledStore {
    fn sentry(&self, sentry_id: u64) -> Result<Option<SentryRecord>, StoreError> {
        self.sentries
            .get(sentry_id.to_be_bytes())?
            .map(|v| records::decode_sentry(SENTRIES, &v))
            .transpose()
    }

    fn sentry_id_for_node(&self, node: &NodeId) -> Result<Option<u64>, StoreError> {
        match self.node_keys.get(node.public_key())? {
            Some(v) if v.len() == 8 => Ok(Some(u64::from_be_bytes(
                v.as_ref().try_into().expect("8 bytes"),
            ))),
            Some(_) => Err(StoreError::Corrupt {
                tree: NODE_KEYS,
                reason: "sentry id is not 8 bytes".into(),
            }),
            None => Ok(None),
        }
    }

    fn sentries(&self, offset: usize, limit: usize) -> Result<Vec<SentryRecord>, StoreError> {
        self.sentries
            .iter()
            .skip(offset)
            .take(limit)
            .map(|kv| records::decode_sentry(SENTRIES, &kv?.1))
            .collect()
    }

    fn sentry_count(&self) -> Result<usize, StoreError> {
        Ok(self.sentries.len())
    }

    fn put_sentry(&self, record: &SentryRecord) -> Result<(), StoreError> {
        let _write = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let id = record.sentry_id.to_be_bytes();
        let value = records::encode_sentry(record);
        let keys: Vec<[u8; 32]> = record.all_keys().collect();
        (&self.sentries, &self.node_keys)
            .transaction(|(sentries, node_keys)| {
                sentries.insert(&id, value.as_slice())?;
                for key in &keys {
                    node_keys.insert(key, &id)?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_error)?;
        self.db.flush()?;
        Ok(())
    }

    fn progress(&self, sentry_id: u64) -> Result<ProgressRecord, StoreError> {
        Ok(self
            .progress
            .get(sentry_id.to_be_bytes())?
            .map(|v| records::decode(PROGRESS, &v))
            .transpose()?
            .unwrap_or_default())
    }

    fn put_token(&self, hash: &[u8; 32], record: &TokenRecord) -> Result<(), StoreError> {
        let _write = self.gate.read().unwrap_or_else(|p| p.into_inner());
        self.tokens.insert(hash, records::encode(record))?;
        self.db.flush()?;
        Ok(())
    }

    fn use_token(&self, hash: &[u8; 32], now_ms: u64) -> Result<TokenUse, StoreError> {
        let _write = self.gate.read().unwrap_or_else(|p| p.into_inner());
        loop {
            let Some(current) = self.tokens.get(hash)? else {
                return Ok(TokenUse::Unknown);
            };
            let record: TokenRecord = records::decode(TOKENS, &current)?;
            if record.expires_ms <= now_ms {
                return Ok(TokenUse::Expired);
            }
            if record.uses_left == 0 {
                return Ok(TokenUse::UsedUp);
            }
            let next = TokenRecord {
                uses_left: record.uses_left - 1,
                ..record
            };
            let swapped =
                self.tokens
                    .compare_and_swap(hash, Some(&current), Some(records::encode(&next)))?;
            if swapped.is_ok() {
                self.db.flush()?;
                return Ok(TokenUse::Used);
            }
        }
    }

    fn create_user(&self, record: &UserRecord) -> Result<bool, StoreError> {
        let _write = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let created = self
            .users
            .compare_and_swap(
                record.username.as_bytes(),
                None as Option<&[u8]>,
                Some(records::encode(record)),
            )?
            .is_ok();
        if created {
            self.db.flush()?;
        }
        Ok(created)
    }

    fn put_user(&self, record: &UserRecord) -> Result<(), StoreError> {
        let _write = self.gate.read().unwrap_or_else(|p| p.into_inner());
        self.users
            .insert(record.username.as_bytes(), records::encode(record))?;
        self.db.flush()?;
        Ok(())
    }

    fn user(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        self.users
            .get(username.as_bytes())?
            .map(|v| records::decode(USERS, &v))
            .transpose()
    }

    fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.users
            .iter()
            .map(|kv| records::decode(USERS, &kv?.1))
            .collect()
    }

    fn put_api_token(&self, hash: &[u8; 32], record: &ApiTokenRecord) -> Result<(), StoreError> {
        let _write = self.gate.read().unwrap_or_else(|p| p.into_inner());
        self.api_tokens.insert(hash, records::encode(record))?;
        self.db.flush()?;
        Ok(())
    }

    fn api_token(&self, hash: &[u8; 32]) -> Result<Option<ApiTokenRecord>, StoreError> {
        self.api_tokens
            .get(hash)?
            .map(|v| records::decode(API_TOKENS, &v))
            .transpose()
    }

    fn api_tokens(&self) -> Result<Vec<([u8; 32], ApiTokenRecord)>, StoreError> {
        self.api_tokens
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let hash: [u8; 32] = k.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    tree: API_TOKENS,
                    reason: format!("key is {} bytes, not a 32-byte hash", k.len()),
                })?;
                Ok((hash, records::decode(API_TOKENS, &v)?))
            })
            .collect()
    }

    fn revoke_api_token(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        let _write = self.gate.read().unwrap_or_else(|p| p.into_inner());
        loop {
            let Some(current) = self.api_tokens.get(hash)? else {
                return Ok(false);
            };
            let mut record: ApiTokenRecord = records::decode(API_TOKENS, &current)?;
            if record.revoked {
                return Ok(true);
            }
            record.revoked = true;
            // Compare-and-swap: a token pruned meanwhile is not brought back.
            let swapped = self.api_tokens.compare_and_swap(
                hash,
                Some(&current),
                Some(records::encode(&record)),
            )?;
            if swapped.is_ok() {
                self.db.flush()?;
                return Ok(true);
            }
        }
    }

    fn prune_api_tokens(&self, now_ms: u64) -> Result<u64, StoreError> {
        let _write = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        let mut n = 0u64;
        for kv in self.api_tokens.iter() {
            let (key, value) = kv?;
            let record: ApiTokenRecord = records::decode(API_TOKENS, &value)?;
            if record.kind == ApiTokenKind::Session && record.expires_ms <= now_ms {
                batch.remove(key);
                n += 1;
            }
        }
        if n > 0 {
            self.api_tokens.apply_batch(batch)?;
            self.db.flush()?;
        }
        Ok(n)
    }

    fn append_heartbeats(&self, batch: &[HeartbeatWrite]) -> Result<(), StoreError> {
        let _write = self.gate.read().unwrap_or_else(|p| p.into_inner());
        if batch.is_empty() {
            return Ok(());
        }
        let encoded: Vec<([u8; 16], Vec<u8>)> = batch
            .iter()
            .map(|w| {
                (
                    heartbeat_key(w.sentry_id, w.record.seq),
                    records::encode(&w.record),
                )
            })
            .collect();
        // Per sentry: highest seq, count, last receipt.
        let mut touched: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
        for w in batch {
            let entry = touched.entry(w.sentry_id).or_default();
            entry.0 = entry.0.max(w.record.seq);
            entry.1 += 1;
            entry.2 = entry.2.max(w.record.received_ms);
        }
        (&self.heartbeats, &self.progress)
            .transaction(|(heartbeats, progress)| {
                for (key, value) in &encoded {
                    heartbeats.insert(key, value.as_slice())?;
                }
                for (id, (last_seq, count, last_seen)) in &touched {
                    let key = id.to_be_bytes();
                    let mut p: ProgressRecord = match progress.get(key)? {
                        Some(v) => records::decode(PROGRESS, &v)
                            .map_err(ConflictableTransactionError::Abort)?,
                        None => ProgressRecord::default(),
                    };
                    p.last_seq = p.last_seq.max(*last_seq);
                    p.heartbeats += count;
                    p.last_seen_ms = p.last_seen_ms.max(*last_seen);
                    progress.insert(&key, records::encode(&p))?;
                }
                Ok(())
            })
            .map_err(tx_error)?;
        self.db.flush()?;
        Ok(())
    }

    fn recent_heartbeats(
        &self,
        sentry_id: u64,
        limit: usize,
    ) -> Result<Vec<HeartbeatRecord>, StoreError> {
        self.heartbeats
            .scan_prefix(sentry_id.to_be_bytes())
            .rev()
            .take(limit)
            .map(|kv| records::decode(HEARTBEATS, &kv?.1))
            .collect()
    }

    fn revoked_keys(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        let mut out = Vec::new();
        for kv in self.sentries.iter() {
            let record: SentryRecord = records::decode_sentry(SENTRIES, &kv?.1)?;
            if record.state == SentryState::Revoked {
                out.push(record.node_key);
                out.extend(record.previous_node_keys);
            }
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    fn logical_bytes(&self) -> Result<u64, StoreError> {
        let mut total = 0u64;
        for name in self.db.tree_names() {
            for kv in self.db.open_tree(name)?.iter() {
                let (k, v) = kv?;
                total += (k.len() + v.len()) as u64;
            }
        }
        Ok(total)
    }

    fn all_progress(&self) -> Result<Vec<(u64, ProgressRecord)>, StoreError> {
        self.progress
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((be_u64(PROGRESS, &k)?, records::decode(PROGRESS, &v)?))
            })
            .collect()
    }

    fn heartbeats_after(
        &self,
        sentry_id: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<HeartbeatRecord>, StoreError> {
        let start = heartbeat_key(sentry_id, after.saturating_add(1));
        let end = heartbeat_key(sentry_id, u64::MAX);
        self.heartbeats
            .range(start..=end)
            .take(limit)
            .map(|kv| records::decode(HEARTBEATS, &kv?.1))
            .collect()
    }

    fn prune_heartbeats(
        &self,
        sentry_id: u64,
        upto_seq: u64,
        older_than_ms: u64,
        max_seq: u64,
    ) -> Result<u64, StoreError> {
        let _write = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        let mut n = 0u64;
        for kv in self
            .heartbeats
            .range(heartbeat_key(sentry_id, 0)..=heartbeat_key(sentry_id, max_seq))
        {
            let (key, value) = kv?;
            let seq = u64::from_be_bytes(key[8..16].try_into().expect("16-byte key"));
            let old = if seq <= upto_seq {
                true
            } else {
                let record: HeartbeatRecord = records::decode(HEARTBEATS, &value)?;
                record.received_ms < older_than_ms
            };
            if !old {
                // Keys are in seq order and receipt times rise with seq.
                break;
            }
            batch.remove(key);
            n += 1;
        }
        if n > 0 {
            self.heartbeats.apply_batch(batch)?;
        }
        Ok(n)
    }

    fn devices(&self) -> Result<Vec<DeviceStateRecord>, StoreError> {
        self.devices
            .iter()
            .map(|kv| records::decode(DEVICES, &kv?.1))
            .collect()
    }

    fn series(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.series
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let name = String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt {
                    tree: SERIES,
                    reason: "series name is not UTF-8".into(),
                })?;
                Ok((name, be_u64(SERIES, &v)?))
            })
            .collect()
    }

    fn rollup_marks(&self) -> Result<Vec<(u64, Resolution, u64)>, StoreError> {
        self.rollup_marks
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let (sentry, r) =
                    RollupKey::parse_mark_key(&k).ok_or_else(|| StoreError::Corrupt {
                        tree: ROLLUP_MARKS,
                        reason: "mark key is not sentry ‖ resolution".into(),
                    })?;
                Ok((sentry, r, be_u64(ROLLUP_MARKS, &v)?))
            })
            .collect()
    }

    fn bucket(&self, key: &RollupKey) -> Result<Option<RollupRecord>, StoreError> {
        self.rollups
            .get(key.to_bytes())?
            .map(|v| records::decode(ROLLUPS, &v))
            .transpose()
    }

    fn buckets(
        &self,
        series: u64,
        resolution: Resolution,
        start_ms: u64,
        end_ms: u64,
    ) -> Result<Vec<(u64, RollupRecord)>, StoreError> {
        let from = RollupKey {
            series,
            resolution,
            start_ms,
        }
        .to_bytes();
        let to = RollupKey {
            series,
            resolution,
            start_ms: end_ms,
        }
        .to_bytes();
        self.rollups
            .range(from..=to)
            .map(|kv| {
                let (k, v) = kv?;
                let start = u64::from_be_bytes(k[13..21].try_into().expect("21-byte key"));
                Ok((start, records::decode(ROLLUPS, &v)?))
            })
            .collect()
    }

    fn group_marks(&self) -> Result<super::GroupMarks, StoreError> {
        self.group_marks
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let r =
                    RollupKey::parse_resolution_bytes(&k).ok_or_else(|| StoreError::Corrupt {
                        tree: GROUP_MARKS,
                        reason: "key is not a resolution".into(),
                    })?;
                let marks = super::decode_group_marks(&v).ok_or_else(|| StoreError::Corrupt {
                    tree: GROUP_MARKS,
                    reason: "marks are not sentry ‖ seq pairs".into(),
                })?;
                Ok((r, marks))
            })
            .collect()
    }

    fn checkpoint(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        let _write = self.gate.read().unwrap_or_else(|p| p.into_inner());
        // New series first, in batches: a name with no bucket yet is harmless.
        for chunk in cp.series.chunks(1024) {
            let mut batch = sled::Batch::default();
            for (name, id) in chunk {
                batch.insert(name.as_bytes(), &id.to_be_bytes());
            }
            self.series.apply_batch(batch)?;
        }
        for chunk in cp.devices.chunks(1024) {
            let mut batch = sled::Batch::default();
            for d in chunk {
                batch.insert(d.id.as_bytes(), records::encode(d));
            }
            self.devices.apply_batch(batch)?;
        }
        // The group part, before any device part: a stored group mark is
        // never below a stored device mark.
        if !cp.groups.is_empty() {
            let buckets = encode_buckets(&cp.groups.buckets);
            let marks: Vec<([u8; 5], Vec<u8>)> = cp
                .groups
                .marks
                .iter()
                .map(|(r, m)| {
                    (
                        RollupKey::resolution_bytes(*r),
                        super::encode_group_marks(m),
                    )
                })
                .collect();
            (&self.rollups, &self.group_marks)
                .transaction(|(rollups_t, marks_t)| {
                    for (k, v) in &buckets {
                        rollups_t.insert(k, v.as_slice())?;
                    }
                    for (k, v) in &marks {
                        marks_t.insert(k, v.as_slice())?;
                    }
                    Ok::<_, ConflictableTransactionError<StoreError>>(())
                })
                .map_err(tx_error)?;
        }
        for part in &cp.parts {
            // sled runs one transaction at a time, and its lock does not
            // queue: step aside so a waiting ingest commit goes first.
            std::thread::yield_now();
            let buckets = encode_buckets(&part.buckets);
            (&self.rollups, &self.rollup_marks)
                .transaction(|(rollups_t, marks_t)| {
                    for (k, v) in &buckets {
                        rollups_t.insert(k, v.as_slice())?;
                    }
                    for (sentry, r, seq) in &part.marks {
                        marks_t.insert(&RollupKey::mark_key(*sentry, *r), &seq.to_be_bytes())?;
                    }
                    Ok::<_, ConflictableTransactionError<StoreError>>(())
                })
                .map_err(tx_error)?;
        }
        self.db.flush()?;
        Ok(())
    }

    fn prune_buckets(
        &self,
        series: &[u64],
        resolution: Resolution,
        before_ms: u64,
    ) -> Result<u64, StoreError> {
        let _write = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let mut n = 0u64;
        for &s in series {
            let from = RollupKey {
                series: s,
                resolution,
                start_ms: 0,
            }
            .to_bytes();
            let to = RollupKey {
                series: s,
                resolution,
                start_ms: before_ms,
            }
            .to_bytes();
            let mut batch = sled::Batch::default();
            let mut any = false;
            for kv in self.rollups.range(from..to) {
                batch.remove(kv?.0);
                any = true;
                n += 1;
            }
            if any {
                self.rollups.apply_batch(batch)?;
            }
        }
        Ok(n)
    }

    fn backup(&self, out: &mut dyn std::io::Write) -> Result<BackupStats, StoreError> {
        let _exclusive = self.gate.write().unwrap_or_else(|p| p.into_inner());
        super::backup::export(&self.db, out)
    }
}

impl SledStore {
    /// Restores a backup file into `dir`, which must not hold a store yet.
    pub fn restore(file: &Path, dir: &Path) -> Result<BackupStats, StoreError> {
        super::backup::restore(file, dir)
    }
}

fn be_u64(tree: &'static str, bytes: &[u8]) -> Result<u64, StoreError> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            tree,
            reason: format!("expected 8 bytes, found {}", bytes.len()),
        })
}

fn encode_buckets(buckets: &[(RollupKey, RollupRecord)]) -> Vec<([u8; 21], Vec<u8>)> {
    buckets
        .iter()
        .map(|(k, b)| (k.to_bytes(), records::encode(b)))
        .collect()
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::DeviceRecord;

    #[test]
    fn a_lock_released_soon_is_waited_for_and_one_held_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let first = SledStore::open(dir.path()).unwrap();
        // Held for good: the second open waits out LOCK_WAIT and says why.
        let started = std::time::Instant::now();
        let err = SledStore::open(dir.path()).err().expect("the lock is held");
        assert!(matches!(err, StoreError::Locked(_)), "{err}");
        assert!(err.to_string().contains("in use by another process"));
        assert!(started.elapsed() >= LOCK_WAIT);
        // Released a moment later: the open goes through.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(first);
        });
        SledStore::open(dir.path()).expect("opens once the holder is gone");
        releaser.join().unwrap();
    }

    fn hb(seq: u64) -> HeartbeatRecord {
        HeartbeatRecord {
            seq,
            ts_ms: seq * 1000,
            received_ms: seq * 1000 + 5,
            devices: vec![DeviceRecord {
                id: "d".into(),
                kind: "host".into(),
                make: String::new(),
                model: String::new(),
                firmware: String::new(),
                metrics: [("cpu_pct".to_string(), 1.5)].into(),
                labels: BTreeMap::new(),
                alerts: vec![],
                raw: String::new(),
            }],
        }
    }

    #[test]
    fn heartbeats_and_progress_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let batch: Vec<_> = (1..=3)
                .map(|seq| HeartbeatWrite {
                    sentry_id: 7,
                    record: hb(seq),
                })
                .collect();
            store.append_heartbeats(&batch).unwrap();
            store
                .append_heartbeats(&[HeartbeatWrite {
                    sentry_id: 8,
                    record: hb(1),
                }])
                .unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let p = store.progress(7).unwrap();
        assert_eq!((p.last_seq, p.heartbeats, p.last_seen_ms), (3, 3, 3005));
        let recent: Vec<u64> = store
            .recent_heartbeats(7, 10)
            .unwrap()
            .iter()
            .map(|h| h.seq)
            .collect();
        assert_eq!(recent, vec![3, 2, 1]);
        assert_eq!(store.recent_heartbeats(7, 2).unwrap().len(), 2);
        assert_eq!(store.progress(9).unwrap(), ProgressRecord::default());
    }

    #[test]
    fn tokens_are_used_up_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let h = [1u8; 32];
        store
            .put_token(
                &h,
                &TokenRecord {
                    uses_left: 2,
                    expires_ms: 1000,
                    created_ms: 0,
                },
            )
            .unwrap();
        assert_eq!(store.use_token(&h, 10).unwrap(), TokenUse::Used);
        assert_eq!(store.use_token(&h, 10).unwrap(), TokenUse::Used);
        assert_eq!(store.use_token(&h, 10).unwrap(), TokenUse::UsedUp);
        assert_eq!(store.use_token(&[2u8; 32], 10).unwrap(), TokenUse::Unknown);
        store
            .put_token(
                &h,
                &TokenRecord {
                    uses_left: 2,
                    expires_ms: 1000,
                    created_ms: 0,
                },
            )
            .unwrap();
        assert_eq!(store.use_token(&h, 1000).unwrap(), TokenUse::Expired);
    }

    #[test]
    fn users_and_api_tokens_round_trip_revoke_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let alice = UserRecord {
            username: "alice".into(),
            password_hash: "$argon2id$…".into(),
            permissions: vec!["miner:r".into()],
            admin: false,
            created_ms: 1,
            disabled: false,
        };
        assert!(store.create_user(&alice).unwrap());
        assert!(!store.create_user(&alice).unwrap(), "names are unique");
        assert_eq!(store.user("alice").unwrap().as_ref(), Some(&alice));
        assert_eq!(store.user("bob").unwrap(), None);
        let disabled = UserRecord {
            disabled: true,
            ..alice.clone()
        };
        store.put_user(&disabled).unwrap();
        assert_eq!(store.users().unwrap(), vec![disabled]);

        let token = |kind, expires_ms| ApiTokenRecord {
            id: "00112233aabbccdd".into(),
            username: "alice".into(),
            kind,
            created_ms: 1,
            expires_ms,
            revoked: false,
        };
        store
            .put_api_token(&[1; 32], &token(ApiTokenKind::Personal, 0))
            .unwrap();
        store
            .put_api_token(&[2; 32], &token(ApiTokenKind::Session, 100))
            .unwrap();
        store
            .put_api_token(&[3; 32], &token(ApiTokenKind::Session, 500))
            .unwrap();
        assert!(store
            .api_token(&[1; 32])
            .unwrap()
            .unwrap()
            .is_live(u64::MAX));
        assert!(store.api_token(&[2; 32]).unwrap().unwrap().is_live(99));
        assert!(!store.api_token(&[2; 32]).unwrap().unwrap().is_live(100));
        assert!(store.revoke_api_token(&[1; 32]).unwrap());
        assert!(!store.api_token(&[1; 32]).unwrap().unwrap().is_live(0));
        assert!(!store.revoke_api_token(&[9; 32]).unwrap());
        // Only expired sessions go; revoked personal tokens stay listed.
        assert_eq!(store.prune_api_tokens(200).unwrap(), 1);
        let left: Vec<[u8; 32]> = store.api_tokens().unwrap().iter().map(|t| t.0).collect();
        assert_eq!(left, vec![[1; 32], [3; 32]]);
    }

    #[test]
    fn records_with_an_unknown_schema_are_refused() {
        let err = records::decode::<ProgressRecord>("progress", &[9, 0, 0, 0]).unwrap_err();
        assert!(err.to_string().contains("schema version 9"), "{err}");
    }
}
