//! Checking many signatures at once.
//!
//! Ed25519 batch verification checks one random linear combination of many
//! verification equations: for 64 signatures it costs well under half of
//! 64 single checks (`docs/benchmarks.md` measures both on this machine).
//! When a batch fails, its halves are checked, down to single strict checks,
//! so one bad signature costs its batch a few extra combinations and never
//! hides among good ones.
//!
//! The verdict is the strict single check's ([`crate::sign::verify`]) for
//! every signature that check accepts, and for every signature made without
//! the key. The two can differ only on a signature whose own signer put a
//! small-order component into its `R` on purpose, which the batch equation
//! (like the cofactorless single equation it combines) may then accept:
//! that still takes the key, so who signed is never in doubt. Keys are held
//! to the strict rule always: a small-order or non-canonical key fails
//! every check.

use ed25519_dalek::{Signature, VerifyingKey};

use crate::node_id::NodeId;
use crate::sign::{signing_input, Domain};

/// Below this many signatures, single checks are as cheap.
const MIN_BATCH: usize = 3;

/// A node key decompressed once, for the many signatures of one session.
#[derive(Debug, Clone, Copy)]
pub struct PreparedKey {
    /// `None` when the key is not a usable point, or of small order.
    key: Option<VerifyingKey>,
}

impl PreparedKey {
    pub fn new(node: &NodeId) -> Self {
        let key = VerifyingKey::from_bytes(node.public_key())
            .ok()
            .filter(|k| !k.is_weak());
        PreparedKey { key }
    }

    /// Whether any signature can verify under this key.
    pub fn is_usable(&self) -> bool {
        self.key.is_some()
    }
}

/// One signature waiting for its check.
#[derive(Debug, Clone)]
pub struct Pending {
    pub key: PreparedKey,
    /// The signing input ([`signing_input`]), not the bare payload.
    pub message: Vec<u8>,
    pub signature: [u8; 64],
}

impl Pending {
    /// A signature over `payload` for `domain`.
    pub fn new(key: PreparedKey, domain: Domain, payload: &[u8], signature: [u8; 64]) -> Self {
        Pending {
            key,
            message: signing_input(domain, payload),
            signature,
        }
    }

    /// The strict single check.
    pub fn verify(&self) -> bool {
        self.key.key.is_some_and(|k| {
            k.verify_strict(&self.message, &Signature::from_bytes(&self.signature))
                .is_ok()
        })
    }
}

/// Checks every signature; `result[i]` is the verdict on `items[i]`.
pub fn verify_all(items: &[Pending]) -> Vec<bool> {
    let mut out = vec![false; items.len()];
    check(items, &mut out);
    out
}

fn check(items: &[Pending], out: &mut [bool]) {
    if items.len() < MIN_BATCH {
        for (item, verdict) in items.iter().zip(out.iter_mut()) {
            *verdict = item.verify();
        }
        return;
    }
    if batch_ok(items) {
        out.fill(true);
        return;
    }
    let mid = items.len() / 2;
    let (left, right) = out.split_at_mut(mid);
    check(&items[..mid], left);
    check(&items[mid..], right);
}

fn batch_ok(items: &[Pending]) -> bool {
    let mut keys = Vec::with_capacity(items.len());
    for item in items {
        match item.key.key {
            Some(k) => keys.push(k),
            // An unusable key fails: the halves find which.
            None => return false,
        }
    }
    let messages: Vec<&[u8]> = items.iter().map(|i| i.message.as_slice()).collect();
    let signatures: Vec<Signature> = items
        .iter()
        .map(|i| Signature::from_bytes(&i.signature))
        .collect();
    ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_key::NodeKey;
    use crate::sign::sign;

    fn signed(key: &NodeKey, n: u8) -> Pending {
        let payload = vec![n; 40 + n as usize];
        let signature = sign(key, Domain::Heartbeat, &payload);
        Pending::new(
            PreparedKey::new(&key.node_id()),
            Domain::Heartbeat,
            &payload,
            signature,
        )
    }

    #[test]
    fn a_good_batch_passes_whole() {
        let keys: Vec<NodeKey> = (0..8).map(|_| NodeKey::generate()).collect();
        let items: Vec<Pending> = (0..64).map(|i| signed(&keys[i % 8], i as u8)).collect();
        assert_eq!(verify_all(&items), vec![true; 64]);
    }

    #[test]
    fn each_bad_signature_is_found_among_good_ones() {
        let keys: Vec<NodeKey> = (0..4).map(|_| NodeKey::generate()).collect();
        for bad in [
            vec![0],
            vec![63],
            vec![5, 6, 40],
            (0..64).collect::<Vec<_>>(),
        ] {
            let mut items: Vec<Pending> = (0..64).map(|i| signed(&keys[i % 4], i as u8)).collect();
            for &b in &bad {
                match b % 3 {
                    // A flipped bit, a signature of another payload, another key.
                    0 => items[b].signature[10] ^= 1,
                    1 => items[b].message.push(0),
                    _ => items[b].key = PreparedKey::new(&keys[(b + 1) % 4].node_id()),
                }
            }
            let verdicts = verify_all(&items);
            for (i, ok) in verdicts.iter().enumerate() {
                assert_eq!(*ok, !bad.contains(&i), "item {i} with bad {bad:?}");
                assert_eq!(*ok, items[i].verify(), "batch and single disagree on {i}");
            }
        }
    }

    #[test]
    fn a_small_order_key_fails_every_check() {
        // The identity point: every signature with R = identity and s = 0
        // satisfies the cofactorless equation for it.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let key = PreparedKey::new(&NodeId::from_public_key(identity));
        assert!(!key.is_usable());
        let mut forged = [0u8; 64];
        forged[0] = 1;
        let good = NodeKey::generate();
        let mut items: Vec<Pending> = (0..8).map(|i| signed(&good, i)).collect();
        items.push(Pending::new(key, Domain::Heartbeat, b"anything", forged));
        let verdicts = verify_all(&items);
        assert_eq!(verdicts[..8], [true; 8]);
        assert!(!verdicts[8]);
    }
}
