//! [`ActionStore`] on sled.

use std::sync::atomic::{AtomicU64, Ordering};

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::actions::{ActionRecord, ActionStore, AuditRecord};
use super::records;
use super::sled_store::SledStore;
use super::StoreError;

const ACTIONS: &str = "actions";
const ACTIONS_BY_TIME: &str = "actions_by_time";
const ACTIONS_OPEN: &str = "actions_open";
const AUDIT: &str = "audit";

/// Distinguishes audit entries written in the same millisecond.
static AUDIT_COUNTER: AtomicU64 = AtomicU64::new(0);

fn time_key(ms: u64, id: &str) -> Vec<u8> {
    let mut key = ms.to_be_bytes().to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

fn is_open(state: &str) -> bool {
    !matches!(state, "done" | "cancelled")
}

impl ActionStore for SledStore {
    fn put_action(&self, action: &ActionRecord) -> Result<(), StoreError> {
        let _write = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let actions = self.db.open_tree(ACTIONS)?;
        let by_time = self.db.open_tree(ACTIONS_BY_TIME)?;
        let open = self.db.open_tree(ACTIONS_OPEN)?;
        let value = records::encode(action);
        let tkey = time_key(action.created_ms, &action.id);
        let still_open = is_open(&action.state);
        (&actions, &by_time, &open)
            .transaction(|(actions, by_time, open)| {
                actions.insert(action.id.as_bytes(), value.as_slice())?;
                by_time.insert(tkey.as_slice(), &[])?;
                if still_open {
                    open.insert(action.id.as_bytes(), &[])?;
                } else {
                    open.remove(action.id.as_bytes())?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Abort(e) => e,
                sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
            })?;
        self.db.flush()?;
        Ok(())
    }

    fn action(&self, id: &str) -> Result<Option<ActionRecord>, StoreError> {
        self.db
            .open_tree(ACTIONS)?
            .get(id.as_bytes())?
            .map(|v| records::decode(ACTIONS, &v))
            .transpose()
    }

    fn actions_between(
        &self,
        gte_ms: u64,
        lte_ms: u64,
        limit: usize,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        let by_time = self.db.open_tree(ACTIONS_BY_TIME)?;
        let mut out = Vec::new();
        let end = (lte_ms.saturating_add(1)).to_be_bytes();
        for kv in by_time.range(gte_ms.to_be_bytes()..end) {
            let (key, _) = kv?;
            let id = String::from_utf8_lossy(&key[8..]).into_owned();
            if let Some(a) = self.action(&id)? {
                out.push(a);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn open_actions(&self) -> Result<Vec<ActionRecord>, StoreError> {
        let open = self.db.open_tree(ACTIONS_OPEN)?;
        let mut out = Vec::new();
        for kv in open.iter() {
            let (id, _) = kv?;
            if let Some(a) = self.action(&String::from_utf8_lossy(&id))? {
                out.push(a);
            }
        }
        Ok(out)
    }

    fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let _write = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let mut key = record.ts_ms.to_be_bytes().to_vec();
        key.extend_from_slice(&AUDIT_COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        self.db
            .open_tree(AUDIT)?
            .insert(key, records::encode(record))?;
        self.db.flush()?;
        Ok(())
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.db
            .open_tree(AUDIT)?
            .iter()
            .rev()
            .take(limit)
            .map(|kv| records::decode(AUDIT, &kv?.1))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn action(id: &str, created: u64, state: &str) -> ActionRecord {
        ActionRecord {
            id: id.into(),
            batch_uid: None,
            method: "runHook".into(),
            params: "[\"x\"]".into(),
            creator: "alice".into(),
            targets: vec![],
            required_perms: vec!["host:w".into()],
            votes: BTreeMap::new(),
            req_votes_pos: 1,
            req_votes_neg: 1,
            state: state.into(),
            reason: None,
            created_ms: created,
            updated_ms: created,
            expires_ms: created + 1000,
            results: BTreeMap::new(),
        }
    }

    #[test]
    fn actions_by_time_open_set_and_audit_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.put_action(&action("a", 10, "voting")).unwrap();
            s.put_action(&action("b", 20, "ready")).unwrap();
            s.put_action(&action("c", 30, "done")).unwrap();
            s.put_action(&action("a", 10, "cancelled")).unwrap();
            for i in 0..3 {
                s.append_audit(&AuditRecord {
                    ts_ms: 100,
                    actor: "alice".into(),
                    operation: format!("POST /x/{i}"),
                    subject: String::new(),
                    from: "127.0.0.1".into(),
                    status: 200,
                    outcome: "ok".into(),
                })
                .unwrap();
            }
        }
        let s = SledStore::open(dir.path()).unwrap();
        let ids = |v: Vec<ActionRecord>| v.into_iter().map(|a| a.id).collect::<Vec<_>>();
        assert_eq!(ids(s.actions_between(0, 100, 10).unwrap()), ["a", "b", "c"]);
        assert_eq!(ids(s.actions_between(15, 30, 10).unwrap()), ["b", "c"]);
        assert_eq!(ids(s.actions_between(0, 100, 1).unwrap()), ["a"]);
        assert_eq!(ids(s.open_actions().unwrap()), ["b"]);
        assert_eq!(s.action("a").unwrap().unwrap().state, "cancelled");
        let audit = s.audit(2).unwrap();
        assert_eq!(audit.len(), 2);
        assert_eq!(audit[0].operation, "POST /x/2", "newest first");
    }
}
