//! A heartbeat payload as the commander sees it: decoded on its own, and
//! opened (decode, node binding, signature, seq, skew) on a session with a
//! fixed node id.
//!
//! The input is the payload; the signature is the zero signature, which
//! never verifies, so an input that names the session's node ends at
//! `BadSignature` after the full decode. What decodes must re-encode to a
//! canonical form that decodes to the same encoding.
#![no_main]

use hashfleet_shared::codec;
use hashfleet_shared::heartbeat;
use hashfleet_shared::wire::{Heartbeat, NackReason, SignedHeartbeat};
use hashfleet_shared::NodeId;
use libfuzzer_sys::fuzz_target;

/// The public key of `NodeKey::from_seed(&[1; 32])`, the sentry of the
/// golden fixtures (so the seed corpus reaches past the node check).
const SESSION_KEY: [u8; 32] = [
    0x8a, 0x88, 0xe3, 0xdd, 0x74, 0x09, 0xf1, 0x95, 0xfd, 0x52, 0xdb, 0x2d, 0x3c, 0xba, 0x5d, 0x72,
    0xca, 0x67, 0x09, 0xbf, 0x1d, 0x94, 0x12, 0x1b, 0xf3, 0x74, 0x88, 0x01, 0xb4, 0x0f, 0x6f, 0x5c,
];
/// 2026-01-01T00:00:00Z.
const NOW_MS: u64 = 1_767_225_600_000;

fuzz_target!(|data: &[u8]| {
    let session = NodeId::from_public_key(SESSION_KEY);
    let decoded = codec::decode::<Heartbeat>(data);
    if let Ok(hb) = &decoded {
        let again = codec::encode(hb).expect("a decoded heartbeat re-encodes");
        assert!(
            again.len() <= data.len(),
            "canonical form is longer than the input"
        );
        let back: Heartbeat = codec::decode(&again).expect("a re-encoded heartbeat decodes");
        assert_eq!(codec::encode(&back).expect("re-encodes"), again);
    }

    let signed = SignedHeartbeat {
        payload: data.to_vec(),
        signature: [0u8; 64],
    };
    let opened = heartbeat::open(&session, &signed, 0, NOW_MS);
    // `open` reports the first failure, in its documented order.
    match (&decoded, &opened) {
        (Err(_), Err(NackReason::Malformed)) => {}
        (Err(_), other) => panic!("undecodable payload opened as {other:?}"),
        (Ok(hb), Err(NackReason::ForeignNode)) => assert_ne!(hb.node_id, session),
        (Ok(hb), Err(NackReason::BadSignature)) => assert_eq!(hb.node_id, session),
        (Ok(_), other) => panic!("a zero signature gave {other:?}"),
    }
});
