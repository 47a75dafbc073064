//! Identity rotation, as pure functions over messages.
//!
//! - **Node key rotation** (sentry → commander): a [`RotationRequest`]
//!   signed by the old key (the session's) *and* the new key, bound to one
//!   session by its `Challenge.nonce`. [`open_rotation`] is the commander's
//!   check order: decode, session key, sentry id, session nonce, distinct
//!   keys, old signature, new signature.
//! - **Wallet binding** (sentry → commander): the wallet key's EIP-191
//!   signature over [`wallet_binding_message`] (node id and session nonce).
//! - **Commander key announcement** (commander → sentry): a
//!   [`KeyAnnouncement`] signed by the serving key and the next key;
//!   [`open_announcement`] is the sentry's check.
//!
//! A stolen node key can be rotated by whoever stole it: rotation proves
//! possession of the old key, nothing more. Revocation is the answer to a
//! stolen key, and a revoked sentry cannot rotate.

use crate::codec::{self, CodecError};
use crate::node_id::NodeId;
use crate::node_key::NodeKey;
use crate::sign::{self, Domain};
use crate::wallet::{self, WalletKey};
use crate::wire::{
    KeyAnnouncement, RotationRequest, SignedKeyAnnouncement, SignedRotation, WalletBinding,
};

/// Why a rotation, a wallet binding or an announcement is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("signed for key {signed_for}, but this session is key {session}: a sentry rotates only the key it is connected with")]
    ForeignKey { signed_for: NodeId, session: NodeId },
    #[error("signed for sentry id {signed_for:016x}, but this session is sentry {session:016x}")]
    WrongSentry { signed_for: u64, session: u64 },
    #[error("signed for another session (its nonce is not this session's): a rotation is valid only on the session it was made for; a replayed one is refused")]
    OtherSession,
    #[error("the new key is the old key: generate a new key")]
    SameKey,
    #[error("the old key's signature does not verify")]
    OldSignature,
    #[error("the new key's signature does not verify: the sender does not hold the new key")]
    NewSignature,
    #[error("the wallet signature does not verify for {0}: a wallet is bound only with its own key's signature")]
    WalletSignature(String),
    #[error("the announcement switches at {switch_at_ms} ms, not after it was made ({announced_at_ms} ms)")]
    BadSchedule {
        announced_at_ms: u64,
        switch_at_ms: u64,
    },
}

/// Signs a rotation with the old and the new key.
pub fn seal_rotation(
    old: &NodeKey,
    new: &NodeKey,
    request: &RotationRequest,
) -> Result<SignedRotation, CodecError> {
    let payload = codec::encode(request)?;
    Ok(SignedRotation {
        old_signature: sign::sign(old, Domain::Rotation, &payload),
        new_signature: sign::sign(new, Domain::Rotation, &payload),
        payload,
    })
}

/// The commander's check of a rotation received on the session of
/// `session_key` (sentry `sentry_id`) whose `Challenge.nonce` was
/// `session_nonce`.
pub fn open_rotation(
    signed: &SignedRotation,
    session_key: &NodeId,
    sentry_id: u64,
    session_nonce: &[u8; 32],
) -> Result<RotationRequest, RotationError> {
    let request: RotationRequest =
        codec::decode(&signed.payload).map_err(|e| RotationError::Malformed(e.to_string()))?;
    if &request.old_node_id != session_key {
        return Err(RotationError::ForeignKey {
            signed_for: request.old_node_id,
            session: *session_key,
        });
    }
    if request.sentry_id != sentry_id {
        return Err(RotationError::WrongSentry {
            signed_for: request.sentry_id,
            session: sentry_id,
        });
    }
    if &request.session_nonce != session_nonce {
        return Err(RotationError::OtherSession);
    }
    if request.new_node_id == request.old_node_id {
        return Err(RotationError::SameKey);
    }
    sign::verify(
        &request.old_node_id,
        Domain::Rotation,
        &signed.payload,
        &signed.old_signature,
    )
    .map_err(|_| RotationError::OldSignature)?;
    sign::verify(
        &request.new_node_id,
        Domain::Rotation,
        &signed.payload,
        &signed.new_signature,
    )
    .map_err(|_| RotationError::NewSignature)?;
    Ok(request)
}

/// What a wallet signs (EIP-191) to be bound to `node_id` on the session
/// whose `Challenge.nonce` is `session_nonce`.
pub fn wallet_binding_message(node_id: &NodeId, session_nonce: &[u8; 32]) -> Vec<u8> {
    format!(
        "hashfleet wallet binding\nnode: {node_id}\nnonce: {}",
        hex::encode(session_nonce)
    )
    .into_bytes()
}

/// A wallet binding for `node_id` on one session.
pub fn bind_wallet(
    wallet: &WalletKey,
    node_id: &NodeId,
    session_nonce: &[u8; 32],
) -> WalletBinding {
    WalletBinding {
        wallet_address: wallet.address(),
        signature: wallet.personal_sign(&wallet_binding_message(node_id, session_nonce)),
    }
}

/// The commander's check of a wallet binding.
pub fn check_wallet_binding(
    binding: &WalletBinding,
    node_id: &NodeId,
    session_nonce: &[u8; 32],
) -> Result<(), RotationError> {
    wallet::verify_personal(
        &wallet_binding_message(node_id, session_nonce),
        &binding.signature,
        &binding.wallet_address,
    )
    .map_err(|e| RotationError::WalletSignature(format!("{} ({e})", binding.wallet_address)))
}

/// Signs an announcement with the serving (old) key and the next key.
pub fn seal_announcement(
    old: &NodeKey,
    new: &NodeKey,
    announcement: &KeyAnnouncement,
) -> Result<SignedKeyAnnouncement, CodecError> {
    let payload = codec::encode(announcement)?;
    Ok(SignedKeyAnnouncement {
        old_signature: sign::sign(old, Domain::KeyAnnouncement, &payload),
        new_signature: sign::sign(new, Domain::KeyAnnouncement, &payload),
        payload,
    })
}

/// The sentry's check of an announcement that arrived on a session with
/// the commander key `serving` (which TLS matched against the pins).
pub fn open_announcement(
    signed: &SignedKeyAnnouncement,
    serving: &NodeId,
) -> Result<KeyAnnouncement, RotationError> {
    let ann: KeyAnnouncement =
        codec::decode(&signed.payload).map_err(|e| RotationError::Malformed(e.to_string()))?;
    if &ann.old_key != serving {
        return Err(RotationError::ForeignKey {
            signed_for: ann.old_key,
            session: *serving,
        });
    }
    if ann.new_key == ann.old_key {
        return Err(RotationError::SameKey);
    }
    if ann.switch_at_ms <= ann.announced_at_ms {
        return Err(RotationError::BadSchedule {
            announced_at_ms: ann.announced_at_ms,
            switch_at_ms: ann.switch_at_ms,
        });
    }
    sign::verify(
        &ann.old_key,
        Domain::KeyAnnouncement,
        &signed.payload,
        &signed.old_signature,
    )
    .map_err(|_| RotationError::OldSignature)?;
    sign::verify(
        &ann.new_key,
        Domain::KeyAnnouncement,
        &signed.payload,
        &signed.new_signature,
    )
    .map_err(|_| RotationError::NewSignature)?;
    Ok(ann)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (NodeKey, NodeKey) {
        (NodeKey::from_seed(&[1; 32]), NodeKey::from_seed(&[2; 32]))
    }

    fn request(old: &NodeKey, new: &NodeKey) -> RotationRequest {
        RotationRequest {
            sentry_id: 7,
            old_node_id: old.node_id(),
            new_node_id: new.node_id(),
            seq: 42,
            session_nonce: [9; 32],
            ts_ms: 1,
        }
    }

    #[test]
    fn a_rotation_signed_by_both_keys_opens() {
        let (old, new) = keys();
        let signed = seal_rotation(&old, &new, &request(&old, &new)).unwrap();
        let got = open_rotation(&signed, &old.node_id(), 7, &[9; 32]).unwrap();
        assert_eq!(got.new_node_id, new.node_id());
        assert_eq!(got.seq, 42);
    }

    #[test]
    fn a_rotation_signed_by_one_key_only_is_refused() {
        let (old, new) = keys();
        let other = NodeKey::from_seed(&[3; 32]);
        let req = request(&old, &new);
        // Only the new key (the old signature made by the new key).
        let mut only_new = seal_rotation(&new, &new, &req).unwrap();
        assert_eq!(
            open_rotation(&only_new, &old.node_id(), 7, &[9; 32]),
            Err(RotationError::OldSignature)
        );
        // Only the old key.
        let only_old = seal_rotation(&old, &old, &req).unwrap();
        assert_eq!(
            open_rotation(&only_old, &old.node_id(), 7, &[9; 32]),
            Err(RotationError::NewSignature)
        );
        // A third key's signature in the new slot.
        only_new.old_signature = sign::sign(&old, Domain::Rotation, &only_new.payload);
        only_new.new_signature = sign::sign(&other, Domain::Rotation, &only_new.payload);
        assert_eq!(
            open_rotation(&only_new, &old.node_id(), 7, &[9; 32]),
            Err(RotationError::NewSignature)
        );
    }

    #[test]
    fn a_rotation_for_another_session_key_or_sentry_is_refused() {
        let (old, new) = keys();
        let signed = seal_rotation(&old, &new, &request(&old, &new)).unwrap();
        assert_eq!(
            open_rotation(&signed, &old.node_id(), 7, &[8; 32]),
            Err(RotationError::OtherSession)
        );
        assert!(matches!(
            open_rotation(&signed, &new.node_id(), 7, &[9; 32]),
            Err(RotationError::ForeignKey { .. })
        ));
        assert!(matches!(
            open_rotation(&signed, &old.node_id(), 8, &[9; 32]),
            Err(RotationError::WrongSentry { .. })
        ));
        let same = seal_rotation(&old, &old, &request(&old, &old)).unwrap();
        assert_eq!(
            open_rotation(&same, &old.node_id(), 7, &[9; 32]),
            Err(RotationError::SameKey)
        );
        let mut garbage = signed.clone();
        garbage.payload.truncate(5);
        assert!(matches!(
            open_rotation(&garbage, &old.node_id(), 7, &[9; 32]),
            Err(RotationError::Malformed(_))
        ));
    }

    #[test]
    fn a_wallet_binding_needs_the_wallets_signature_for_this_node_and_session() {
        let (node, _) = keys();
        let wallet = WalletKey::from_bytes(&[5; 32]).unwrap();
        let binding = bind_wallet(&wallet, &node.node_id(), &[1; 32]);
        assert!(check_wallet_binding(&binding, &node.node_id(), &[1; 32]).is_ok());
        // Another session's nonce, or another node.
        assert!(check_wallet_binding(&binding, &node.node_id(), &[2; 32]).is_err());
        let other = NodeKey::from_seed(&[6; 32]).node_id();
        assert!(check_wallet_binding(&binding, &other, &[1; 32]).is_err());
        // Claiming a wallet one does not hold: address of one, signature of another.
        let thief = WalletKey::from_bytes(&[7; 32]).unwrap();
        let mut claim = bind_wallet(&thief, &node.node_id(), &[1; 32]);
        claim.wallet_address = wallet.address();
        assert!(matches!(
            check_wallet_binding(&claim, &node.node_id(), &[1; 32]),
            Err(RotationError::WalletSignature(_))
        ));
    }

    #[test]
    fn an_announcement_needs_the_serving_key_and_the_next_key() {
        let (old, new) = keys();
        let ann = KeyAnnouncement {
            old_key: old.node_id(),
            new_key: new.node_id(),
            announced_at_ms: 10,
            switch_at_ms: 20,
        };
        let signed = seal_announcement(&old, &new, &ann).unwrap();
        assert_eq!(open_announcement(&signed, &old.node_id()).unwrap(), ann);
        assert!(matches!(
            open_announcement(&signed, &new.node_id()),
            Err(RotationError::ForeignKey { .. })
        ));
        let forged = seal_announcement(&new, &new, &ann).unwrap();
        assert_eq!(
            open_announcement(&forged, &old.node_id()),
            Err(RotationError::OldSignature)
        );
        let unheld = seal_announcement(&old, &old, &ann).unwrap();
        assert_eq!(
            open_announcement(&unheld, &old.node_id()),
            Err(RotationError::NewSignature)
        );
        let backwards = KeyAnnouncement {
            switch_at_ms: 10,
            ..ann
        };
        let signed = seal_announcement(&old, &new, &backwards).unwrap();
        assert!(matches!(
            open_announcement(&signed, &old.node_id()),
            Err(RotationError::BadSchedule { .. })
        ));
    }
}
