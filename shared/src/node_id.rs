//! The node_id: an Ed25519 public key written as a libp2p Peer ID (`12D3KooW…`).
//!
//! The Peer ID of an Ed25519 key is the identity multihash of the protobuf
//! `PublicKey { Type = Ed25519, Data = key }`, in base58btc with no multibase
//! prefix. Since the multihash is the identity, a node_id carries the whole
//! public key: a node_id is enough to verify that node's signatures.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, VerifyingKey};

/// `00 24` (identity multihash, 36 bytes) then `08 01 12 20` (protobuf
/// field 1 = Ed25519, field 2 = 32 bytes).
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
/// SubjectPublicKeyInfo DER header for Ed25519 (RFC 8410).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// Length of a base58 Ed25519 Peer ID is 52; anything much longer is junk.
const MAX_TEXT_LEN: usize = 64;

/// An Ed25519 public key, shown as a libp2p Peer ID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; 32]);

/// Why a node_id or a signature by it was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error("node_id `{0}` is not base58: expected a libp2p Peer ID starting with 12D3KooW")]
    NotBase58(String),
    #[error("node_id `{0}` is not an Ed25519 libp2p Peer ID (expected 12D3KooW…)")]
    NotEd25519(String),
    #[error("node_id is {0} characters long; an Ed25519 Peer ID has 52")]
    TooLong(usize),
    #[error("public key hex must be 64 hex digits (32 bytes)")]
    BadHex,
    #[error("the public key is not a valid Ed25519 point")]
    BadPoint,
    #[error("signature does not verify for this node_id")]
    BadSignature,
}

impl NodeId {
    pub const fn from_public_key(key: [u8; 32]) -> Self {
        NodeId(key)
    }

    pub fn public_key(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_public_key_hex(text: &str) -> Result<Self, NodeIdError> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key).map_err(|_| NodeIdError::BadHex)?;
        Ok(NodeId(key))
    }

    /// The 38 bytes of the identity multihash.
    pub fn to_multihash(&self) -> [u8; 38] {
        let mut out = [0u8; 38];
        out[..6].copy_from_slice(&PEER_ID_PREFIX);
        out[6..].copy_from_slice(&self.0);
        out
    }

    /// The SubjectPublicKeyInfo DER (44 bytes) used as the TLS raw public key.
    pub fn to_spki_der(&self) -> [u8; 44] {
        let mut out = [0u8; 44];
        out[..12].copy_from_slice(&SPKI_PREFIX);
        out[12..].copy_from_slice(&self.0);
        out
    }

    /// Reads an Ed25519 SubjectPublicKeyInfo; anything else gives `None`.
    pub fn from_spki_der(der: &[u8]) -> Option<Self> {
        if der.len() != 44 || der[..12] != SPKI_PREFIX {
            return None;
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&der[12..]);
        Some(NodeId(key))
    }

    /// Verifies a signature strictly (no malleable or small-order keys).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> Result<(), NodeIdError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| NodeIdError::BadPoint)?;
        key.verify_strict(message, &Signature::from_bytes(signature))
            .map_err(|_| NodeIdError::BadSignature)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.to_multihash()).into_string())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() > MAX_TEXT_LEN {
            return Err(NodeIdError::TooLong(text.len()));
        }
        let bytes = bs58::decode(text)
            .into_vec()
            .map_err(|_| NodeIdError::NotBase58(text.to_string()))?;
        if bytes.len() != 38 || bytes[..6] != PEER_ID_PREFIX {
            return Err(NodeIdError::NotEd25519(text.to_string()));
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[6..]);
        Ok(NodeId(key))
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

// On the wire a node_id is its raw 32-byte key.
impl bincode::Encode for NodeId {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        e: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        bincode::Encode::encode(&self.0, e)
    }
}

impl<C> bincode::Decode<C> for NodeId {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        d: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        Ok(NodeId(<[u8; 32] as bincode::Decode<C>>::decode(d)?))
    }
}
bincode::impl_borrow_decode!(NodeId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_other_key_types_and_junk() {
        // A secp256k1 Peer ID (16Uiu2…) is valid libp2p but not ours.
        assert!(matches!(
            "16Uiu2HAmLhLvBoYaoZfaMUKuibM6ac163GwKY74c5kiSLg5KvLpY".parse::<NodeId>(),
            Err(NodeIdError::NotEd25519(_))
        ));
        assert!(matches!(
            "0OIl".parse::<NodeId>(),
            Err(NodeIdError::NotBase58(_))
        ));
        assert!(matches!(
            "1".repeat(200).parse::<NodeId>(),
            Err(NodeIdError::TooLong(200))
        ));
    }

    #[test]
    fn spki_round_trip() {
        let id = NodeId::from_public_key([7u8; 32]);
        assert_eq!(NodeId::from_spki_der(&id.to_spki_der()), Some(id));
        assert_eq!(NodeId::from_spki_der(&id.to_spki_der()[..43]), None);
    }
}
