//! Sealing and opening heartbeats: signature, node binding, seq order.
//!
//! The commander opens a heartbeat in this order, and the first failure is
//! the reason reported (and counted): malformed payload, foreign node,
//! bad signature, replay (seq not above the last accepted), clock skew.
//! Buffered heartbeats may be old, so the timestamp only bounds skew into
//! the future; replay protection rests on the seq.

use crate::codec::{self, CodecError};
use crate::node_id::NodeId;
use crate::node_key::NodeKey;
use crate::sign::{self, Domain};
use crate::wire::{Heartbeat, NackReason, SignedHeartbeat};

/// How far into the future a heartbeat timestamp may be (5 minutes).
pub const MAX_FUTURE_SKEW_MS: u64 = 5 * 60 * 1000;

/// Encodes and signs a heartbeat.
pub fn seal(key: &NodeKey, heartbeat: &Heartbeat) -> Result<SignedHeartbeat, CodecError> {
    let payload = codec::encode(heartbeat)?;
    let signature = sign::sign(key, Domain::Heartbeat, &payload);
    Ok(SignedHeartbeat { payload, signature })
}

/// Verifies a heartbeat received on a session authenticated as `session`.
pub fn open(
    session: &NodeId,
    signed: &SignedHeartbeat,
    last_seq: u64,
    now_ms: u64,
) -> Result<Heartbeat, NackReason> {
    let heartbeat: Heartbeat = codec::decode(&signed.payload).map_err(|_| NackReason::Malformed)?;
    if &heartbeat.node_id != session {
        return Err(NackReason::ForeignNode);
    }
    sign::verify(
        session,
        Domain::Heartbeat,
        &signed.payload,
        &signed.signature,
    )
    .map_err(|_| NackReason::BadSignature)?;
    accept_seq(last_seq, heartbeat.seq)?;
    if heartbeat.ts_ms > now_ms.saturating_add(MAX_FUTURE_SKEW_MS) {
        return Err(NackReason::ClockSkew);
    }
    Ok(heartbeat)
}

/// The replay rule: a seq must be strictly above the last accepted one.
pub fn accept_seq(last_seq: u64, seq: u64) -> Result<(), NackReason> {
    if seq > last_seq {
        Ok(())
    } else {
        Err(NackReason::Replay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::HeartbeatBody;

    fn hb(key: &NodeKey, seq: u64, ts_ms: u64) -> Heartbeat {
        Heartbeat {
            node_id: key.node_id(),
            seq,
            ts_ms,
            body: HeartbeatBody::default(),
        }
    }

    #[test]
    fn open_accepts_good_and_names_each_failure() {
        let key = NodeKey::generate();
        let id = key.node_id();
        let now = 1_000_000;
        let good = seal(&key, &hb(&key, 5, now)).unwrap();
        assert_eq!(open(&id, &good, 4, now).unwrap().seq, 5);
        assert_eq!(open(&id, &good, 5, now), Err(NackReason::Replay));
        assert_eq!(open(&id, &good, 9, now), Err(NackReason::Replay));

        let mut tampered = good.clone();
        let last = tampered.payload.len() - 1;
        tampered.payload[last] ^= 1;
        assert!(matches!(
            open(&id, &tampered, 0, now),
            Err(NackReason::BadSignature | NackReason::Malformed)
        ));
        let mut bad_sig = good.clone();
        bad_sig.signature[0] ^= 1;
        assert_eq!(open(&id, &bad_sig, 0, now), Err(NackReason::BadSignature));

        let other = NodeKey::generate();
        let foreign = seal(&other, &hb(&other, 6, now)).unwrap();
        assert_eq!(open(&id, &foreign, 0, now), Err(NackReason::ForeignNode));

        // Claims our node_id but is signed by another key.
        let mut forged = hb(&key, 7, now);
        forged.node_id = id;
        let forged = seal(&other, &forged).unwrap();
        assert_eq!(open(&id, &forged, 0, now), Err(NackReason::BadSignature));

        let future = seal(&key, &hb(&key, 8, now + MAX_FUTURE_SKEW_MS + 1)).unwrap();
        assert_eq!(open(&id, &future, 0, now), Err(NackReason::ClockSkew));
        // Old heartbeats (from an outbox) are fine.
        let old = seal(&key, &hb(&key, 9, 1)).unwrap();
        assert!(open(&id, &old, 0, now).is_ok());
    }
}
