//! Domain-separated signatures: no signature made for one purpose verifies
//! for another.
//!
//! A signing input is `len(tag) as u8 ‖ tag ‖ payload`, where the tag is a
//! fixed ASCII string such as `hashfleet/v1/heartbeat`.

use crate::node_id::{NodeId, NodeIdError};
use crate::node_key::NodeKey;

/// What a signature is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// A sentry's heartbeat payload.
    Heartbeat,
    /// A sentry's answer to a commander challenge.
    SentryProof,
    /// A commander's proof over the sentry's hello nonce.
    CommanderProof,
    /// A commander's action request.
    Action,
    /// A sentry's result of an action.
    ActionResult,
    /// A sentry's node key rotation (signed by the old and the new key).
    Rotation,
    /// A commander's announcement of its next key (old and new key).
    KeyAnnouncement,
}

impl Domain {
    pub fn tag(&self) -> &'static str {
        match self {
            Domain::Heartbeat => "hashfleet/v1/heartbeat",
            Domain::SentryProof => "hashfleet/v1/sentry-proof",
            Domain::CommanderProof => "hashfleet/v1/commander-proof",
            Domain::Action => "hashfleet/v1/action",
            Domain::ActionResult => "hashfleet/v1/action-result",
            Domain::Rotation => "hashfleet/v1/rotation",
            Domain::KeyAnnouncement => "hashfleet/v1/key-announcement",
        }
    }
}

/// The exact bytes that are signed for `domain` and `payload`.
pub fn signing_input(domain: Domain, payload: &[u8]) -> Vec<u8> {
    let tag = domain.tag().as_bytes();
    let mut out = Vec::with_capacity(1 + tag.len() + payload.len());
    out.push(tag.len() as u8);
    out.extend_from_slice(tag);
    out.extend_from_slice(payload);
    out
}

pub fn sign(key: &NodeKey, domain: Domain, payload: &[u8]) -> [u8; 64] {
    key.sign(&signing_input(domain, payload))
}

pub fn verify(
    signer: &NodeId,
    domain: Domain,
    payload: &[u8],
    signature: &[u8; 64],
) -> Result<(), NodeIdError> {
    signer.verify(&signing_input(domain, payload), signature)
}

/// The challenge payload: `nonce ‖ TLS exporter value ‖ sentry node key`.
/// Binding to the exporter ties a proof to one TLS connection.
pub fn challenge_payload(nonce: &[u8; 32], exporter: &[u8; 32], sentry: &NodeId) -> [u8; 96] {
    let mut out = [0u8; 96];
    out[..32].copy_from_slice(nonce);
    out[32..64].copy_from_slice(exporter);
    out[64..].copy_from_slice(sentry.public_key());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_for_one_domain_fails_for_another() {
        let key = NodeKey::from_seed(&[9u8; 32]);
        let sig = sign(&key, Domain::SentryProof, b"payload");
        assert!(verify(&key.node_id(), Domain::SentryProof, b"payload", &sig).is_ok());
        assert!(verify(&key.node_id(), Domain::CommanderProof, b"payload", &sig).is_err());
        assert!(verify(&key.node_id(), Domain::Heartbeat, b"payload", &sig).is_err());
        assert!(verify(&key.node_id(), Domain::Action, b"payload", &sig).is_err());
        assert!(verify(&key.node_id(), Domain::ActionResult, b"payload", &sig).is_err());
        assert!(verify(&key.node_id(), Domain::SentryProof, b"payloaD", &sig).is_err());
    }
}
