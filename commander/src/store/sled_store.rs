//! The embedded store on sled 0.34: one tree per record type.

use std::collections::BTreeMap;
use std::path::Path;

use hashfleet_shared::NodeId;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::records::{
    self, HeartbeatRecord, ProgressRecord, SentryRecord, SentryState, TokenRecord,
};
use super::{HeartbeatWrite, Store, StoreError, TokenUse};

const SENTRIES: &str = "sentries";
const NODE_KEYS: &str = "node_keys";
const PROGRESS: &str = "progress";
const TOKENS: &str = "tokens";
const HEARTBEATS: &str = "heartbeats";

/// sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
    sentries: sled::Tree,
    node_keys: sled::Tree,
    progress: sled::Tree,
    tokens: sled::Tree,
    heartbeats: sled::Tree,
}

fn heartbeat_key(sentry_id: u64, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&sentry_id.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024 * 1024)
            // Durability comes from explicit flushes (group commit), not a timer.
            .flush_every_ms(None)
            .open()?;
        Ok(SledStore {
            sentries: db.open_tree(SENTRIES)?,
            node_keys: db.open_tree(NODE_KEYS)?,
            progress: db.open_tree(PROGRESS)?,
            tokens: db.open_tree(TOKENS)?,
            heartbeats: db.open_tree(HEARTBEATS)?,
            db,
        })
    }
}

impl Store for SledStore {
    fn sentry(&self, sentry_id: u64) -> Result<Option<SentryRecord>, StoreError> {
        self.sentries
            .get(sentry_id.to_be_bytes())?
            .map(|v| records::decode(SENTRIES, &v))
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
            .map(|kv| records::decode(SENTRIES, &kv?.1))
            .collect()
    }

    fn sentry_count(&self) -> Result<usize, StoreError> {
        Ok(self.sentries.len())
    }

    fn put_sentry(&self, record: &SentryRecord) -> Result<(), StoreError> {
        let id = record.sentry_id.to_be_bytes();
        let value = records::encode(record);
        let keys: Vec<[u8; 32]> = std::iter::once(record.node_key)
            .chain(record.previous_node_keys.iter().copied())
            .collect();
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
        self.tokens.insert(hash, records::encode(record))?;
        self.db.flush()?;
        Ok(())
    }

    fn use_token(&self, hash: &[u8; 32], now_ms: u64) -> Result<TokenUse, StoreError> {
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

    fn append_heartbeats(&self, batch: &[HeartbeatWrite]) -> Result<(), StoreError> {
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
            let record: SentryRecord = records::decode(SENTRIES, &kv?.1)?;
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
    fn records_with_an_unknown_schema_are_refused() {
        let err = records::decode::<ProgressRecord>("progress", &[9, 0, 0, 0]).unwrap_err();
        assert!(err.to_string().contains("schema version 9"), "{err}");
    }
}
