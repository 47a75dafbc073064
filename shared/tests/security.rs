//! The security suite: generated bad messages, none of which may be
//! accepted. Every case is built from a valid message by one attack
//! (forged, tampered, replayed, foreign node, expired, cross-session,
//! oversized, truncated), then fed to the function the receiver uses. The
//! generator is seeded, so a failure names a reproducible case.

use std::collections::BTreeMap;

use hashfleet_shared::action::{open_action, open_result, seal_action, seal_result};
use hashfleet_shared::codec::{self, MAX_FRAME_LEN};
use hashfleet_shared::heartbeat::{open, seal};
use hashfleet_shared::rotation::{
    bind_wallet, check_wallet_binding, open_announcement, open_rotation, seal_announcement,
    seal_rotation,
};
use hashfleet_shared::wire::{
    ActionRequest, ActionResultBody, DeviceSnapshot, Heartbeat, HeartbeatBody, SentryMessage,
    SignedAction, SignedActionResult, SignedHeartbeat, TargetOutcome,
};
use hashfleet_shared::wire::{KeyAnnouncement, RotationRequest};
use hashfleet_shared::{NodeKey, WalletKey};

const NOW: u64 = 1_790_000_000_000;
/// Cases per attack kind; 8 kinds of heartbeat, 6 of action, 4 of result,
/// 10 of rotation, wallet binding and commander key announcement.
const PER_KIND: usize = 600;

fn heartbeat(key: &NodeKey, seq: u64, rng: &mut fastrand::Rng) -> Heartbeat {
    let devices = (0..rng.usize(0..4))
        .map(|i| DeviceSnapshot {
            id: format!("d{i}"),
            kind: "miner".into(),
            metrics: BTreeMap::from([("hashrate_hs".to_string(), rng.f64() * 1e14)]),
            ..Default::default()
        })
        .collect();
    Heartbeat {
        node_id: key.node_id(),
        seq,
        ts_ms: NOW - rng.u64(0..60_000),
        body: HeartbeatBody { devices },
    }
}

fn flip(bytes: &mut [u8], rng: &mut fastrand::Rng) {
    if bytes.is_empty() {
        return;
    }
    let i = rng.usize(0..bytes.len());
    bytes[i] ^= 1 << rng.u8(0..8);
}

#[test]
fn ten_thousand_bad_messages_are_all_refused() {
    let mut rng = fastrand::Rng::with_seed(0x5ec_u64);
    let sentry = NodeKey::generate();
    let other = NodeKey::generate();
    let commander = NodeKey::generate();
    let rogue_commander = NodeKey::generate();
    let mut refused: BTreeMap<&str, usize> = BTreeMap::new();
    let mut count = |kind: &'static str| *refused.entry(kind).or_default() += 1;

    for _ in 0..PER_KIND {
        let last_seq = rng.u64(10..1_000_000);
        let seq = last_seq + rng.u64(1..100);
        let hb = heartbeat(&sentry, seq, &mut rng);
        let good = seal(&sentry, &hb).unwrap();
        assert!(
            open(&sentry.node_id(), &good, last_seq, NOW).is_ok(),
            "the control case opens"
        );

        // Forged: signed by another key, claiming the sentry's node id.
        let forged = SignedHeartbeat {
            payload: good.payload.clone(),
            signature: seal(&other, &hb).unwrap().signature,
        };
        assert!(open(&sentry.node_id(), &forged, last_seq, NOW).is_err());
        count("heartbeat forged");

        // Tampered payload, or tampered signature.
        let mut tampered = good.clone();
        flip(&mut tampered.payload, &mut rng);
        assert!(open(&sentry.node_id(), &tampered, last_seq, NOW).is_err());
        count("heartbeat tampered payload");
        let mut tampered = good.clone();
        flip(&mut tampered.signature, &mut rng);
        assert!(open(&sentry.node_id(), &tampered, last_seq, NOW).is_err());
        count("heartbeat tampered signature");

        // Replayed: at or below the last accepted seq.
        let old = heartbeat(&sentry, last_seq - rng.u64(0..10), &mut rng);
        let replay = seal(&sentry, &old).unwrap();
        assert!(open(&sentry.node_id(), &replay, last_seq, NOW).is_err());
        count("heartbeat replayed");

        // Cross-session: another sentry's valid heartbeat on this session.
        let foreign = seal(&other, &heartbeat(&other, seq, &mut rng)).unwrap();
        assert!(open(&sentry.node_id(), &foreign, last_seq, NOW).is_err());
        count("heartbeat cross-session");

        // From the future, beyond the allowed skew.
        let mut future = hb.clone();
        future.ts_ms = NOW + 10 * 60_000 + rng.u64(0..1_000_000);
        let future = seal(&sentry, &future).unwrap();
        assert!(open(&sentry.node_id(), &future, last_seq, NOW).is_err());
        count("heartbeat future");

        // Truncated anywhere.
        let mut cut = good.clone();
        cut.payload.truncate(rng.usize(0..good.payload.len()));
        assert!(open(&sentry.node_id(), &cut, last_seq, NOW).is_err());
        count("heartbeat truncated");

        // Oversized: a frame over the limit never decodes.
        let mut big = codec::encode(&SentryMessage::Heartbeat(good.clone())).unwrap();
        big.resize(MAX_FRAME_LEN + 1 + rng.usize(0..1024), 0);
        assert!(codec::decode::<SentryMessage>(&big).is_err());
        count("frame oversized");
    }

    for _ in 0..PER_KIND {
        let issued = NOW - rng.u64(0..60_000);
        let request = ActionRequest {
            action_id: format!("act-{}", rng.u64(..)),
            node_id: sentry.node_id(),
            method: "runHook".into(),
            params: r#"["backup"]"#.into(),
            targets: vec!["0000000000000007".into()],
            voters: vec!["alice".into()],
            issued_at_ms: issued,
            expires_at_ms: issued + 3_600_000,
        };
        let pins = [commander.node_id()];
        let good = seal_action(&commander, &request).unwrap();
        assert!(open_action(&pins, &sentry.node_id(), &good, NOW).is_ok());

        let forged = seal_action(&rogue_commander, &request).unwrap();
        assert!(open_action(&pins, &sentry.node_id(), &forged, NOW).is_err());
        count("action forged");

        let mut tampered = good.clone();
        flip(&mut tampered.payload, &mut rng);
        assert!(open_action(&pins, &sentry.node_id(), &tampered, NOW).is_err());
        count("action tampered payload");
        let mut tampered = good.clone();
        flip(&mut tampered.signature, &mut rng);
        assert!(open_action(&pins, &sentry.node_id(), &tampered, NOW).is_err());
        count("action tampered signature");

        // Signed for another sentry, replayed to this one.
        assert!(open_action(&pins, &other.node_id(), &good, NOW).is_err());
        count("action cross-session");

        // Expired (a late replay).
        let later = request.expires_at_ms + rng.u64(0..10_000_000);
        assert!(open_action(&pins, &sentry.node_id(), &good, later).is_err());
        count("action expired");

        let cut = SignedAction {
            payload: good.payload[..rng.usize(0..good.payload.len())].to_vec(),
            signature: good.signature,
        };
        assert!(open_action(&pins, &sentry.node_id(), &cut, NOW).is_err());
        count("action truncated");
    }

    for _ in 0..PER_KIND {
        let body = ActionResultBody {
            action_id: format!("act-{}", rng.u64(..)),
            node_id: sentry.node_id(),
            results: vec![TargetOutcome {
                target: "0000000000000007".into(),
                ok: rng.bool(),
                detail: "{}".into(),
            }],
            executed_at_ms: NOW,
            replayed: false,
        };
        let good = seal_result(&sentry, &body).unwrap();
        assert!(open_result(&sentry.node_id(), &good).is_ok());

        // Another sentry's key, claiming this sentry.
        let forged = SignedActionResult {
            payload: good.payload.clone(),
            signature: seal_result(&other, &body).unwrap().signature,
        };
        assert!(open_result(&sentry.node_id(), &forged).is_err());
        count("result forged");

        let mut tampered = good.clone();
        flip(&mut tampered.payload, &mut rng);
        assert!(open_result(&sentry.node_id(), &tampered).is_err());
        count("result tampered");

        // A valid result of one sentry presented on another's session.
        assert!(open_result(&other.node_id(), &good).is_err());
        count("result cross-session");

        let cut = SignedActionResult {
            payload: good.payload[..rng.usize(0..good.payload.len())].to_vec(),
            signature: good.signature,
        };
        assert!(open_result(&sentry.node_id(), &cut).is_err());
        count("result truncated");
    }

    for _ in 0..PER_KIND {
        let new = NodeKey::from_seed(&rng.u64(..).to_le_bytes().repeat(4).try_into().unwrap());
        let nonce: [u8; 32] = std::array::from_fn(|_| rng.u8(..));
        let sentry_id = rng.u64(1..);
        let request = RotationRequest {
            sentry_id,
            old_node_id: sentry.node_id(),
            new_node_id: new.node_id(),
            seq: rng.u64(..),
            session_nonce: nonce,
            ts_ms: NOW,
        };
        let good = seal_rotation(&sentry, &new, &request).unwrap();
        let me = sentry.node_id();
        assert!(open_rotation(&good, &me, sentry_id, &nonce).is_ok());

        // Signed by the new key only, by the old key only, by neither.
        let only_new = seal_rotation(&new, &new, &request).unwrap();
        assert!(open_rotation(&only_new, &me, sentry_id, &nonce).is_err());
        count("rotation without the old key");
        let only_old = seal_rotation(&sentry, &sentry, &request).unwrap();
        assert!(open_rotation(&only_old, &me, sentry_id, &nonce).is_err());
        count("rotation without the new key");
        let forged = seal_rotation(&other, &new, &request).unwrap();
        assert!(open_rotation(&forged, &me, sentry_id, &nonce).is_err());
        count("rotation forged");

        let mut tampered = good.clone();
        flip(&mut tampered.payload, &mut rng);
        assert!(open_rotation(&tampered, &me, sentry_id, &nonce).is_err());
        count("rotation tampered");

        // Replayed on another session, or presented for another sentry.
        let mut later = nonce;
        flip(&mut later, &mut rng);
        assert!(open_rotation(&good, &me, sentry_id, &later).is_err());
        count("rotation replayed on another session");
        assert!(open_rotation(&good, &other.node_id(), sentry_id, &nonce).is_err());
        count("rotation cross-session");

        // A wallet claimed without its signature, or for another session.
        let wallet = WalletKey::from_bytes(&std::array::from_fn(|i| (i as u8) | 1)).unwrap();
        let thief = WalletKey::generate();
        let mut claim = bind_wallet(&thief, &me, &nonce);
        claim.wallet_address = wallet.address();
        assert!(check_wallet_binding(&claim, &me, &nonce).is_err());
        count("wallet claimed without its signature");
        let binding = bind_wallet(&wallet, &me, &nonce);
        assert!(check_wallet_binding(&binding, &me, &later).is_err());
        count("wallet binding replayed");

        // A commander key announcement not signed by the serving key.
        let ann = KeyAnnouncement {
            old_key: commander.node_id(),
            new_key: new.node_id(),
            announced_at_ms: NOW,
            switch_at_ms: NOW + rng.u64(1..86_400_000),
        };
        let forged = seal_announcement(&rogue_commander, &new, &ann).unwrap();
        assert!(open_announcement(&forged, &commander.node_id()).is_err());
        count("key announcement forged");
        let mut tampered = seal_announcement(&commander, &new, &ann).unwrap();
        flip(&mut tampered.payload, &mut rng);
        assert!(open_announcement(&tampered, &commander.node_id()).is_err());
        count("key announcement tampered");
    }

    let total: usize = refused.values().sum();
    println!("security suite: {total} bad messages, all refused: {refused:?}");
    assert!(total >= 10_000, "{total} cases");
}
