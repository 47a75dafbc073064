//! Sentry identity changes on the commander: node key rotation and wallet
//! re-binding, applied to the store. The signature checks are the pure
//! [`hashfleet_shared::rotation`] functions; this module decides what a
//! verified request does to the sentry record. Blocking (store writes).

use hashfleet_shared::wire::{RotationOutcome, RotationRequest, WalletBinding, WalletOutcome};
use hashfleet_shared::NodeId;
use hashfleet_shared::WalletAddress;

use crate::store::{RotationEntry, SentryState, Store, StoreError, WalletChange};

/// What a verified rotation did.
#[derive(Debug, Clone, PartialEq)]
pub enum Rotated {
    /// The sentry is now bound to the new key.
    Done,
    /// It already was (a retry after a lost answer or a crash).
    Already,
    /// Refused, with the reason for the sentry.
    Refused(String),
}

impl Rotated {
    pub fn outcome(&self, new_node_id: NodeId) -> RotationOutcome {
        RotationOutcome {
            new_node_id,
            accepted: !matches!(self, Rotated::Refused(_)),
            message: match self {
                Rotated::Refused(m) => m.clone(),
                _ => String::new(),
            },
        }
    }
}

/// Rebinds sentry `sentry_id` from `request.old_node_id` to
/// `request.new_node_id`, keeping the history. Idempotent: the same
/// request again answers `Already`. One store write (record and key index
/// in one transaction, flushed).
pub fn rotate(
    store: &dyn Store,
    sentry_id: u64,
    request: &RotationRequest,
    now_ms: u64,
) -> Result<Rotated, StoreError> {
    let Some(mut record) = store.sentry(sentry_id)? else {
        return Ok(Rotated::Refused(format!(
            "sentry {sentry_id:016x} is not enrolled here"
        )));
    };
    let old = *request.old_node_id.public_key();
    let new = *request.new_node_id.public_key();
    if record.state == SentryState::Revoked {
        return Ok(Rotated::Refused(
            "this sentry is revoked: a revoked sentry cannot rotate; it re-enrolls with a new identity and token".into(),
        ));
    }
    if record.node_key == new && record.retired(&old).is_some_and(|r| r.new_key == new) {
        return Ok(Rotated::Already);
    }
    if record.node_key != old {
        return Ok(Rotated::Refused(format!(
            "key {} is no longer this sentry's current key (that is {}): rotate from the current key",
            request.old_node_id,
            NodeId::from_public_key(record.node_key)
        )));
    }
    if let Some(other) = store.sentry_id_for_node(&request.new_node_id)? {
        return Ok(Rotated::Refused(format!(
            "key {} is already known here (sentry {other:016x}): a key is never reused; generate a new one",
            request.new_node_id
        )));
    }
    record.previous_node_keys.push(old);
    record.node_key = new;
    record.rotations.push(RotationEntry {
        old_key: old,
        new_key: new,
        at_ms: now_ms,
        at_seq: request.seq,
    });
    record.rotate_requested_ms = None;
    store.put_sentry(&record)?;
    Ok(Rotated::Done)
}

/// Binds the wallet of a verified binding to sentry `sentry_id`.
pub fn bind_wallet(
    store: &dyn Store,
    sentry_id: u64,
    binding: &WalletBinding,
    now_ms: u64,
) -> Result<WalletOutcome, StoreError> {
    let refuse = |message: String| WalletOutcome {
        wallet_address: binding.wallet_address,
        accepted: false,
        message,
    };
    let Some(mut record) = store.sentry(sentry_id)? else {
        return Ok(refuse(format!(
            "sentry {sentry_id:016x} is not enrolled here"
        )));
    };
    if record.state == SentryState::Revoked {
        return Ok(refuse("this sentry is revoked".into()));
    }
    let new = binding.wallet_address.0;
    if record.wallet_address != new {
        record.wallet_changes.push(WalletChange {
            old_wallet: record.wallet_address,
            new_wallet: new,
            at_ms: now_ms,
        });
        record.wallet_address = new;
        store.put_sentry(&record)?;
    }
    Ok(WalletOutcome {
        wallet_address: WalletAddress(new),
        accepted: true,
        message: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enroll;
    use crate::store::SledStore;
    use hashfleet_shared::enroll::token_hash;
    use hashfleet_shared::handshake::wallet_proof_message;
    use hashfleet_shared::wire::{Hello, RejectCode, SentryKind, PROTOCOL_VERSION};
    use hashfleet_shared::{NodeKey, WalletKey};
    use std::time::Duration;

    fn hello(key: &NodeKey, wallet: &WalletKey, token: Option<&str>) -> Hello {
        let node_id = key.node_id();
        Hello {
            protocol_version: PROTOCOL_VERSION,
            node_id,
            kind: SentryKind::Host,
            agent_version: "t".into(),
            wallet_address: wallet.address(),
            wallet_proof: wallet.personal_sign(&wallet_proof_message(&node_id)),
            enroll_token: token.map(str::to_string),
            nonce: [0; 32],
            labels: Default::default(),
        }
    }

    fn enrolled(store: &SledStore, key: &NodeKey, wallet: &WalletKey) -> u64 {
        store
            .put_token(
                &token_hash("tok"),
                &crate::store::TokenRecord {
                    uses_left: 1,
                    expires_ms: u64::MAX,
                    created_ms: 0,
                },
            )
            .unwrap();
        let a = enroll::admit(
            store,
            &hello(key, wallet, Some("tok")),
            0,
            Duration::from_secs(10),
        )
        .unwrap()
        .unwrap();
        a.record.sentry_id
    }

    /// A fresh store with one sentry enrolled by token: its key, wallet, id.
    fn enrolled_sentry() -> (tempfile::TempDir, SledStore, NodeKey, WalletKey, u64) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (key, wallet) = (NodeKey::generate(), WalletKey::generate());
        let id = enrolled(&store, &key, &wallet);
        (dir, store, key, wallet, id)
    }

    fn request(id: u64, old: &NodeKey, new: &NodeKey) -> RotationRequest {
        RotationRequest {
            sentry_id: id,
            old_node_id: old.node_id(),
            new_node_id: new.node_id(),
            seq: 5,
            session_nonce: [0; 32],
            ts_ms: 0,
        }
    }

    #[test]
    fn rotation_rebinds_keeps_history_is_idempotent_and_ends_the_old_key_after_grace() {
        let (_dir, store, old, wallet, id) = enrolled_sentry();
        let new = NodeKey::generate();
        let req = request(id, &old, &new);
        assert_eq!(rotate(&store, id, &req, 1_000).unwrap(), Rotated::Done);
        assert_eq!(rotate(&store, id, &req, 1_500).unwrap(), Rotated::Already);
        let r = store.sentry(id).unwrap().unwrap();
        assert_eq!(r.node_key, *new.node_id().public_key());
        assert_eq!(r.previous_node_keys, vec![*old.node_id().public_key()]);
        assert_eq!(r.rotations.len(), 1);
        assert_eq!(r.rotations[0].at_seq, 5);
        // Both keys find the sentry; the new one is admitted as current.
        assert_eq!(store.sentry_id_for_node(&old.node_id()).unwrap(), Some(id));
        let grace = Duration::from_secs(10);
        let a = enroll::admit(&store, &hello(&new, &wallet, None), 2_000, grace)
            .unwrap()
            .unwrap();
        assert!(!a.retired_key);
        // The old key inside the grace window, then never again.
        let a = enroll::admit(&store, &hello(&old, &wallet, None), 10_999, grace)
            .unwrap()
            .unwrap();
        assert!(a.retired_key);
        let refused = enroll::admit(&store, &hello(&old, &wallet, None), 11_001, grace)
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.code, RejectCode::KeyRotated);
        assert!(refused.message.contains(&new.node_id().to_string()));
        // Rotating from the retired key again is refused, and so is reusing a key.
        let third = NodeKey::generate();
        assert!(matches!(
            rotate(&store, id, &request(id, &old, &third), 3_000).unwrap(),
            Rotated::Refused(_)
        ));
        let mut back = request(id, &new, &old);
        back.seq = 6;
        assert!(matches!(
            rotate(&store, id, &back, 3_000).unwrap(),
            Rotated::Refused(m) if m.contains("never reused")
        ));
    }

    #[test]
    fn a_revoked_sentry_cannot_rotate_and_its_old_keys_stay_refused() {
        let (_dir, store, old, wallet, id) = enrolled_sentry();
        let new = NodeKey::generate();
        assert_eq!(
            rotate(&store, id, &request(id, &old, &new), 1).unwrap(),
            Rotated::Done
        );
        let mut r = store.sentry(id).unwrap().unwrap();
        r.state = SentryState::Revoked;
        store.put_sentry(&r).unwrap();
        let next = NodeKey::generate();
        assert!(matches!(
            rotate(&store, id, &request(id, &new, &next), 2).unwrap(),
            Rotated::Refused(m) if m.contains("revoked")
        ));
        for key in [&old, &new] {
            let refused = enroll::admit(
                &store,
                &hello(key, &wallet, None),
                2,
                Duration::from_secs(60),
            )
            .unwrap()
            .unwrap_err();
            assert_eq!(refused.code, RejectCode::Revoked);
        }
        let mut keys = store.revoked_keys().unwrap();
        keys.sort();
        let mut want = vec![*old.node_id().public_key(), *new.node_id().public_key()];
        want.sort();
        assert_eq!(keys, want);
    }

    #[test]
    fn a_wallet_changes_only_through_a_binding_and_the_change_is_kept() {
        let (_dir, store, key, w1, id) = enrolled_sentry();
        let w2 = WalletKey::generate();
        // A hello with another (self-proven) wallet does not rebind.
        let a = enroll::admit(&store, &hello(&key, &w2, None), 1, Duration::ZERO)
            .unwrap()
            .unwrap();
        assert!(a.unbound_wallet);
        assert_eq!(a.record.wallet_address, w1.address().0);
        let binding = hashfleet_shared::rotation::bind_wallet(&w2, &key.node_id(), &[3; 32]);
        let out = bind_wallet(&store, id, &binding, 5).unwrap();
        assert!(out.accepted);
        let r = store.sentry(id).unwrap().unwrap();
        assert_eq!(r.wallet_address, w2.address().0);
        assert_eq!(r.wallet_changes.len(), 1);
        assert_eq!(r.wallet_changes[0].old_wallet, w1.address().0);
        // Binding the same wallet again changes nothing.
        assert!(bind_wallet(&store, id, &binding, 6).unwrap().accepted);
        assert_eq!(store.sentry(id).unwrap().unwrap().wallet_changes.len(), 1);
    }
}
