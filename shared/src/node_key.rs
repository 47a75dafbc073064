//! The Ed25519 node key: signs heartbeats, proofs and TLS handshakes.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey};
use zeroize::Zeroizing;

use crate::node_id::NodeId;

/// PKCS#8 v1 DER header for an Ed25519 private key (RFC 8410), before the seed.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// An Ed25519 private key. Its secret is zeroized on drop and never printed.
#[derive(Clone)]
pub struct NodeKey(SigningKey);

impl NodeKey {
    pub fn generate() -> Self {
        NodeKey(SigningKey::generate(&mut rand_core::OsRng))
    }

    /// From the 32-byte secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        NodeKey(SigningKey::from_bytes(seed))
    }

    /// The 32-byte secret seed (what `identity.json` stores).
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    pub fn node_id(&self) -> NodeId {
        NodeId::from_public_key(self.0.verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// PKCS#8 v1 DER of the key, for rustls.
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        let mut der = Zeroizing::new(Vec::with_capacity(48));
        der.extend_from_slice(&PKCS8_PREFIX);
        der.extend_from_slice(self.seed().as_ref());
        der
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({}, secret redacted)", self.node_id())
    }
}
