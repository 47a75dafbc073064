//! The session handshake, as pure functions over messages.
//!
//! After TLS (which already authenticated both raw public keys):
//! 1. sentry → `Hello` (version, node_id, wallet proof, token, nonce);
//! 2. commander → `Challenge` (its proof over the sentry's nonce, and a
//!    nonce of its own);
//! 3. sentry → `Proof` over the commander's nonce;
//! 4. commander → `Welcome` or `Reject` (decided by [`crate::enroll`]).
//!
//! Both proofs sign `nonce ‖ TLS exporter ‖ sentry key` under their own
//! domain tag, so a proof cannot be replayed on another connection or
//! passed off as the other side's. The commander may send a new
//! `Challenge` at any time; [`SentryHandshake::answer`] handles it the same.

use std::collections::BTreeMap;

use crate::identity::Identity;
use crate::node_id::NodeId;
use crate::node_key::NodeKey;
use crate::sign::{self, challenge_payload, Domain};
use crate::wallet;
use crate::wire::{Challenge, Hello, Proof, Reject, RejectCode, SentryKind, PROTOCOL_VERSION};

/// Bounds on the free-form fields of a `Hello`.
pub const MAX_TOKEN_LEN: usize = 128;
pub const MAX_AGENT_VERSION_LEN: usize = 64;
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_LEN: usize = 128;

/// What a sentry says about itself in `Hello`.
#[derive(Debug, Clone)]
pub struct HelloParams {
    pub kind: SentryKind,
    pub agent_version: String,
    pub enroll_token: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// Why the sentry side of a handshake failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HandshakeError {
    #[error("the commander's proof does not verify for key {0}: this is not the pinned commander, or the connection is being tampered with")]
    CommanderProofInvalid(NodeId),
    #[error("commander refused the session ({code:?}): {message}")]
    Rejected { code: RejectCode, message: String },
    #[error("protocol violation: {0}")]
    Unexpected(&'static str),
}

/// The wallet proof message: the node_id text.
pub fn wallet_proof_message(node_id: &NodeId) -> Vec<u8> {
    node_id.to_string().into_bytes()
}

/// The sentry's half of the handshake.
#[derive(Debug, Clone)]
pub struct SentryHandshake {
    node_id: NodeId,
    nonce: [u8; 32],
    exporter: [u8; 32],
}

impl SentryHandshake {
    /// Builds the `Hello`. `exporter` is the TLS exporter value of this
    /// connection, `nonce` fresh randomness.
    pub fn start(
        identity: &Identity,
        params: HelloParams,
        exporter: [u8; 32],
        nonce: [u8; 32],
    ) -> (Self, Hello) {
        let node_id = identity.node_id();
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            node_id,
            kind: params.kind,
            agent_version: params.agent_version,
            wallet_address: identity.wallet.address(),
            wallet_proof: identity
                .wallet
                .personal_sign(&wallet_proof_message(&node_id)),
            enroll_token: params.enroll_token,
            nonce,
            labels: params.labels,
        };
        (
            SentryHandshake {
                node_id,
                nonce,
                exporter,
            },
            hello,
        )
    }

    /// Checks the commander's proof (made by `commander`, the key TLS
    /// authenticated against the pins) and signs the commander's nonce.
    pub fn answer(
        &self,
        node_key: &NodeKey,
        commander: &NodeId,
        challenge: &Challenge,
    ) -> Result<Proof, HandshakeError> {
        let payload = challenge_payload(&self.nonce, &self.exporter, &self.node_id);
        sign::verify(
            commander,
            Domain::CommanderProof,
            &payload,
            &challenge.proof,
        )
        .map_err(|_| HandshakeError::CommanderProofInvalid(*commander))?;
        let ours = challenge_payload(&challenge.nonce, &self.exporter, &self.node_id);
        Ok(Proof {
            signature: sign::sign(node_key, Domain::SentryProof, &ours),
        })
    }
}

fn reject(code: RejectCode, message: impl Into<String>) -> Reject {
    Reject {
        code,
        message: message.into(),
    }
}

/// The commander's half, between `Hello` and `Proof`.
#[derive(Debug, Clone)]
pub struct CommanderHandshake {
    hello: Hello,
    exporter: [u8; 32],
    nonce: [u8; 32],
}

impl CommanderHandshake {
    /// Checks a `Hello` against the TLS-authenticated peer key and answers
    /// with a `Challenge`.
    pub fn on_hello(
        hello: Hello,
        tls_peer: &NodeId,
        exporter: [u8; 32],
        commander_key: &NodeKey,
        nonce: [u8; 32],
    ) -> Result<(Self, Challenge), Reject> {
        if hello.protocol_version != PROTOCOL_VERSION {
            let upgrade = if hello.protocol_version > PROTOCOL_VERSION {
                "the commander"
            } else {
                "the sentry"
            };
            return Err(reject(
                RejectCode::VersionMismatch,
                format!(
                    "sentry speaks hashfleet/{}, commander speaks hashfleet/{}: upgrade {upgrade}",
                    hello.protocol_version, PROTOCOL_VERSION
                ),
            ));
        }
        if &hello.node_id != tls_peer {
            return Err(reject(
                RejectCode::IdentityMismatch,
                format!(
                    "hello names node {} but TLS authenticated {}",
                    hello.node_id, tls_peer
                ),
            ));
        }
        check_bounds(&hello)?;
        wallet::verify_personal(
            &wallet_proof_message(&hello.node_id),
            &hello.wallet_proof,
            &hello.wallet_address,
        )
        .map_err(|e| {
            reject(
                RejectCode::WalletProofInvalid,
                format!("wallet proof refused: {e}"),
            )
        })?;
        let challenge = make_challenge(commander_key, &hello.nonce, &exporter, tls_peer, nonce);
        Ok((
            CommanderHandshake {
                hello,
                exporter,
                nonce,
            },
            challenge,
        ))
    }

    /// Checks the sentry's proof; on success the `Hello` is trustworthy.
    pub fn on_proof(self, proof: &Proof) -> Result<Hello, Reject> {
        check_proof(&self.hello.node_id, &self.nonce, &self.exporter, proof)?;
        Ok(self.hello)
    }
}

/// A commander challenge: its proof over the sentry's hello nonce plus a
/// fresh nonce for the sentry. Also used to re-challenge a live session.
pub fn make_challenge(
    commander_key: &NodeKey,
    hello_nonce: &[u8; 32],
    exporter: &[u8; 32],
    sentry: &NodeId,
    nonce: [u8; 32],
) -> Challenge {
    let payload = challenge_payload(hello_nonce, exporter, sentry);
    Challenge {
        nonce,
        proof: sign::sign(commander_key, Domain::CommanderProof, &payload),
    }
}

/// Checks a sentry's `Proof` for the challenge `nonce` on this connection.
pub fn check_proof(
    sentry: &NodeId,
    nonce: &[u8; 32],
    exporter: &[u8; 32],
    proof: &Proof,
) -> Result<(), Reject> {
    let payload = challenge_payload(nonce, exporter, sentry);
    sign::verify(sentry, Domain::SentryProof, &payload, &proof.signature).map_err(|_| {
        reject(
            RejectCode::ProofInvalid,
            "the sentry's challenge proof does not verify for its node key",
        )
    })
}

fn check_bounds(hello: &Hello) -> Result<(), Reject> {
    let bad = |what: String| Err(reject(RejectCode::Malformed, what));
    if hello
        .enroll_token
        .as_ref()
        .is_some_and(|t| t.len() > MAX_TOKEN_LEN)
    {
        return bad(format!("enroll token longer than {MAX_TOKEN_LEN} bytes"));
    }
    if hello.agent_version.len() > MAX_AGENT_VERSION_LEN {
        return bad(format!(
            "agent_version longer than {MAX_AGENT_VERSION_LEN} bytes"
        ));
    }
    if hello.labels.len() > MAX_LABELS {
        return bad(format!("more than {MAX_LABELS} labels"));
    }
    if hello
        .labels
        .iter()
        .any(|(k, v)| k.len() > MAX_LABEL_LEN || v.len() > MAX_LABEL_LEN)
    {
        return bad(format!(
            "a label key or value is longer than {MAX_LABEL_LEN} bytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> HelloParams {
        HelloParams {
            kind: SentryKind::Host,
            agent_version: "test".into(),
            enroll_token: Some("tok".into()),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn full_handshake_succeeds_and_proofs_are_bound_to_the_exporter() {
        let sentry = Identity::generate();
        let commander = NodeKey::generate();
        let exporter = [1u8; 32];
        let (hs, hello) = SentryHandshake::start(&sentry, params(), exporter, [2u8; 32]);
        let (ch, challenge) = CommanderHandshake::on_hello(
            hello.clone(),
            &sentry.node_id(),
            exporter,
            &commander,
            [3u8; 32],
        )
        .unwrap();
        let proof = hs
            .answer(&sentry.node, &commander.node_id(), &challenge)
            .unwrap();
        assert_eq!(ch.clone().on_proof(&proof).unwrap(), hello);

        // The same proof on another connection (other exporter) fails.
        let (other, _) = CommanderHandshake::on_hello(
            hello.clone(),
            &sentry.node_id(),
            [9u8; 32],
            &commander,
            [3u8; 32],
        )
        .unwrap();
        assert_eq!(
            other.on_proof(&proof).unwrap_err().code,
            RejectCode::ProofInvalid
        );

        // A challenge signed by another key fails at the sentry.
        let impostor = NodeKey::generate();
        let forged = make_challenge(
            &impostor,
            &[2u8; 32],
            &exporter,
            &sentry.node_id(),
            [3u8; 32],
        );
        assert!(matches!(
            hs.answer(&sentry.node, &commander.node_id(), &forged),
            Err(HandshakeError::CommanderProofInvalid(_))
        ));
    }

    #[test]
    fn hello_checks_version_identity_and_wallet() {
        let sentry = Identity::generate();
        let commander = NodeKey::generate();
        let (_, hello) = SentryHandshake::start(&sentry, params(), [0u8; 32], [0u8; 32]);
        let on = |h: Hello, peer: &NodeId| {
            CommanderHandshake::on_hello(h, peer, [0u8; 32], &commander, [0u8; 32]).map(|_| ())
        };

        let mut newer = hello.clone();
        newer.protocol_version = 2;
        let err = on(newer, &sentry.node_id()).unwrap_err();
        assert_eq!(err.code, RejectCode::VersionMismatch);
        assert!(
            err.message.contains("upgrade the commander"),
            "{}",
            err.message
        );

        let other = NodeKey::generate().node_id();
        assert_eq!(
            on(hello.clone(), &other).unwrap_err().code,
            RejectCode::IdentityMismatch
        );

        let mut stolen_wallet = hello.clone();
        stolen_wallet.wallet_address = crate::wallet::WalletKey::generate().address();
        assert_eq!(
            on(stolen_wallet, &sentry.node_id()).unwrap_err().code,
            RejectCode::WalletProofInvalid
        );

        let mut long = hello;
        long.enroll_token = Some("x".repeat(MAX_TOKEN_LEN + 1));
        assert_eq!(
            on(long, &sentry.node_id()).unwrap_err().code,
            RejectCode::Malformed
        );
    }
}
