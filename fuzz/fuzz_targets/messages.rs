//! Every wire message type decoded on its own, and every pure check that
//! consumes one, with the fixed keys of the golden fixtures (so the seed
//! corpus from `shared/tests/golden/v1/` reaches past the signatures).
//!
//! `decode_frame` splits streams into frames and decodes the two message
//! enums; this target takes one message body and goes on from there:
//!
//! - 0: a `SentryMessage` as the commander handles it: `Hello` →
//!   `CommanderHandshake::on_hello` (then `on_proof` with a good and a bad
//!   proof), `Proof` → `check_proof`, `Heartbeat` → `heartbeat::open`,
//!   `ActionResult` → `action::open_result`;
//! - 1: a `CommanderMessage` as a sentry handles it: `Challenge` →
//!   `SentryHandshake::answer`, `Action` → `action::open_action` and
//!   `refusal_result`, the rest as the agent reads them;
//! - 2, 3, 4: the signed payloads `Heartbeat`, `ActionRequest`,
//!   `ActionResultBody`, signed here with the right key, so that every
//!   check after the signature is reached: `heartbeat::open` (replay,
//!   skew), `split_body`; `check_request`, `open_action`, `seal_action`,
//!   `distinct_targets`, `refusal_result`; `open_result`, `seal_result`,
//!   `shrink_details`;
//! - 5: any other wire type, picked by the next byte;
//! - other: keys and wallet proofs from bytes: `NodeId` from text, hex
//!   and SPKI DER, `NodeId::verify`, `wallet::recover_personal`.
//!
//! Whatever decodes must re-encode to a canonical form no longer than the
//! input that decodes to the same encoding; each check must fail exactly
//! as its documented order says.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use hashfleet_shared::action::{self, ActionRefusal, ResultRefusal};
use hashfleet_shared::codec;
use hashfleet_shared::enroll::{self, Known, TokenCheck};
use hashfleet_shared::handshake::{
    self, CommanderHandshake, HandshakeError, HelloParams, SentryHandshake,
};
use hashfleet_shared::heartbeat;
use hashfleet_shared::rotation;
use hashfleet_shared::sign::{self, challenge_payload, Domain};
use hashfleet_shared::wallet;
use hashfleet_shared::wire::*;
use hashfleet_shared::{Identity, NodeId, NodeKey, WalletAddress, WalletKey};
use libfuzzer_sys::fuzz_target;

/// The keys and constants of `shared/tests/golden.rs`.
struct Fixed {
    sentry: NodeKey,
    sentry_id: NodeId,
    commander: NodeKey,
    commander_id: NodeId,
    /// The sentry's half of the handshake after its `Hello`.
    sentry_hs: SentryHandshake,
}

const HELLO_NONCE: [u8; 32] = [4u8; 32];
const EXPORTER: [u8; 32] = [5u8; 32];
const CHALLENGE_NONCE: [u8; 32] = [6u8; 32];
/// 2026-01-01T00:00:00Z, the fixtures' clock.
const NOW_MS: u64 = 1_767_225_600_000;
/// The commander's last accepted seq when a heartbeat is opened.
const LAST_SEQ: u64 = 5;

static FIXED: LazyLock<Fixed> = LazyLock::new(|| {
    let sentry = NodeKey::from_seed(&[1u8; 32]);
    let commander = NodeKey::from_seed(&[3u8; 32]);
    let identity = Identity {
        node: NodeKey::from_seed(&[1u8; 32]),
        wallet: WalletKey::from_bytes(&[2u8; 32]).expect("a valid scalar"),
        created_at: "2026-01-01T00:00:00Z".into(),
        previous_node_ids: Vec::new(),
        rotated_at: None,
    };
    let params = HelloParams {
        kind: SentryKind::Host,
        agent_version: "fuzz".into(),
        enroll_token: None,
        labels: BTreeMap::new(),
    };
    let (sentry_hs, _) = SentryHandshake::start(&identity, params, EXPORTER, HELLO_NONCE);
    Fixed {
        sentry_id: sentry.node_id(),
        commander_id: commander.node_id(),
        sentry,
        commander,
        sentry_hs,
    }
});

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 7 {
        0 => sentry_message(body),
        1 => commander_message(body),
        2 => heartbeat_payload(body),
        3 => action_request_payload(body),
        4 => action_result_payload(body),
        5 => any_type(body),
        _ => keys(body),
    }
});

/// Decodes `bytes` as `T`; what decodes re-encodes canonically.
fn decode<T>(bytes: &[u8]) -> Option<T>
where
    T: bincode::Encode + bincode::Decode<()>,
{
    let msg: T = codec::decode(bytes).ok()?;
    let again = codec::encode(&msg).expect("a decoded message re-encodes");
    assert!(
        again.len() <= bytes.len(),
        "canonical form is longer than the input"
    );
    let back: T = codec::decode(&again).expect("a re-encoded message decodes");
    assert_eq!(codec::encode(&back).expect("re-encodes"), again);
    Some(msg)
}

// ---------------------------------------------------------------------------
// 0: what a commander receives.

fn sentry_message(body: &[u8]) {
    let Some(msg) = decode::<SentryMessage>(body) else {
        return;
    };
    let f = &*FIXED;
    match msg {
        SentryMessage::Hello(hello) => on_hello(hello),
        SentryMessage::Proof(proof) => {
            let ok = handshake::check_proof(&f.sentry_id, &CHALLENGE_NONCE, &EXPORTER, &proof);
            if let Err(r) = ok {
                assert_eq!(r.code, RejectCode::ProofInvalid);
            }
        }
        SentryMessage::Heartbeat(signed) => {
            if let Ok(hb) = heartbeat::open(&f.sentry_id, &signed, LAST_SEQ, NOW_MS) {
                assert_eq!(Some(hb), decode::<Heartbeat>(&signed.payload));
            }
            open_heartbeat(&signed.payload);
        }
        SentryMessage::ActionResult(signed) => {
            if let Ok(result) = action::open_result(&f.sentry_id, &signed) {
                assert_eq!(result.node_id, f.sentry_id);
            }
            open_result(&signed.payload);
        }
        SentryMessage::RotateKey(signed) => {
            // As received on the session of the sentry key (id 7); the
            // payload also signed by both keys reaches the checks after the
            // signatures.
            if let Ok(req) = rotation::open_rotation(&signed, &f.sentry_id, 7, &CHALLENGE_NONCE) {
                assert_eq!(req.old_node_id, f.sentry_id);
                assert_ne!(req.new_node_id, req.old_node_id);
            }
            if let Some(req) = decode::<RotationRequest>(&signed.payload) {
                let resigned = rotation::seal_rotation(&f.sentry, &f.commander, &req);
                if let Ok(resigned) = resigned {
                    let _ = rotation::open_rotation(
                        &resigned,
                        &f.sentry_id,
                        req.sentry_id,
                        &req.session_nonce,
                    );
                }
            }
        }
        SentryMessage::BindWallet(binding) => {
            let _ = rotation::check_wallet_binding(&binding, &f.sentry_id, &CHALLENGE_NONCE);
        }
    }
}

fn on_hello(hello: Hello) {
    let f = &*FIXED;
    if let Some(token) = &hello.enroll_token {
        let _ = enroll::token_hash(token);
    }
    for known in [
        None,
        Some(Known::Approved),
        Some(Known::Pending),
        Some(Known::Revoked),
    ] {
        for token in [TokenCheck::Absent, TokenCheck::Valid, TokenCheck::Invalid] {
            let _ = enroll::decide(known, token);
        }
    }
    // TLS authenticated the key the hello names (the common case), and
    // the fixtures' sentry (the hello may name another).
    for peer in [hello.node_id, f.sentry_id] {
        let result = CommanderHandshake::on_hello(
            hello.clone(),
            &peer,
            EXPORTER,
            &f.commander,
            CHALLENGE_NONCE,
        );
        let (hs, challenge) = match result {
            Ok(ok) => ok,
            Err(reject) => {
                let want = if hello.protocol_version != PROTOCOL_VERSION {
                    RejectCode::VersionMismatch
                } else if hello.node_id != peer {
                    RejectCode::IdentityMismatch
                } else {
                    // Bounds or the wallet proof.
                    assert!(
                        matches!(
                            reject.code,
                            RejectCode::Malformed | RejectCode::WalletProofInvalid
                        ),
                        "{reject:?}"
                    );
                    reject.code
                };
                assert_eq!(reject.code, want, "{}", reject.message);
                continue;
            }
        };
        assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
        assert_eq!(hello.node_id, peer);
        // The commander proved its key over the sentry's nonce.
        let payload = challenge_payload(&hello.nonce, &EXPORTER, &peer);
        sign::verify(
            &f.commander_id,
            Domain::CommanderProof,
            &payload,
            &challenge.proof,
        )
        .expect("the commander's proof verifies");
        assert_eq!(challenge.nonce, CHALLENGE_NONCE);
        // A zero proof never passes; the sentry key's real one does.
        let zero = Proof {
            signature: [0u8; 64],
        };
        assert_eq!(
            hs.clone().on_proof(&zero).unwrap_err().code,
            RejectCode::ProofInvalid
        );
        if peer == f.sentry_id {
            let ours = challenge_payload(&CHALLENGE_NONCE, &EXPORTER, &peer);
            let proof = Proof {
                signature: sign::sign(&f.sentry, Domain::SentryProof, &ours),
            };
            assert_eq!(hs.on_proof(&proof).expect("a good proof"), hello);
        }
    }
}

// ---------------------------------------------------------------------------
// 1: what a sentry receives.

fn commander_message(body: &[u8]) {
    let Some(msg) = decode::<CommanderMessage>(body) else {
        return;
    };
    let f = &*FIXED;
    match msg {
        CommanderMessage::Challenge(challenge) => {
            // As received: only the pinned commander's proof passes.
            match f.sentry_hs.answer(&f.sentry, &f.commander_id, &challenge) {
                Ok(proof) => {
                    handshake::check_proof(&f.sentry_id, &challenge.nonce, &EXPORTER, &proof)
                        .expect("the sentry's answer verifies");
                }
                Err(e) => assert!(matches!(e, HandshakeError::CommanderProofInvalid(_))),
            }
            // The same nonce with the commander's real proof: the answer
            // passes the commander's check.
            let good = handshake::make_challenge(
                &f.commander,
                &HELLO_NONCE,
                &EXPORTER,
                &f.sentry_id,
                challenge.nonce,
            );
            let proof = f
                .sentry_hs
                .answer(&f.sentry, &f.commander_id, &good)
                .expect("a real commander proof");
            handshake::check_proof(&f.sentry_id, &challenge.nonce, &EXPORTER, &proof)
                .expect("the sentry's answer verifies");
        }
        CommanderMessage::Action(signed) => {
            open_action(&signed);
            open_action_payload(&signed.payload);
        }
        CommanderMessage::Reject(reject) => {
            let e = HandshakeError::Rejected {
                code: reject.code,
                message: reject.message,
            };
            let _ = e.to_string();
        }
        CommanderMessage::Nack(nack) => {
            let _ = nack.reason.as_str();
        }
        CommanderMessage::KeyAnnouncement(signed) => {
            if let Ok(ann) = rotation::open_announcement(&signed, &f.commander_id) {
                assert_eq!(ann.old_key, f.commander_id);
                assert!(ann.switch_at_ms > ann.announced_at_ms);
            }
            if let Some(ann) = decode::<KeyAnnouncement>(&signed.payload) {
                if let Ok(resigned) = rotation::seal_announcement(&f.commander, &f.sentry, &ann) {
                    let _ = rotation::open_announcement(&resigned, &f.commander_id);
                }
            }
        }
        CommanderMessage::Welcome(_)
        | CommanderMessage::StatusUpdate(_)
        | CommanderMessage::Ack(_)
        | CommanderMessage::RotateRequest(_)
        | CommanderMessage::Rotated(_)
        | CommanderMessage::WalletBound(_) => {}
    }
}

// ---------------------------------------------------------------------------
// 2: a heartbeat payload, signed by the session's key.

fn heartbeat_payload(payload: &[u8]) {
    let decoded = decode::<Heartbeat>(payload);
    open_heartbeat(payload);
    if let Some(hb) = decoded {
        // A sentry splits what it collected into bodies that always seal.
        let devices = hb.body.devices.len();
        let parts = heartbeat::split_body(hb.body.clone());
        assert_eq!(
            parts.iter().map(|p| p.devices.len()).sum::<usize>(),
            devices
        );
        for (i, body) in parts.into_iter().enumerate() {
            let part = Heartbeat {
                node_id: hb.node_id,
                seq: hb.seq.wrapping_add(i as u64),
                ts_ms: hb.ts_ms,
                body,
            };
            heartbeat::seal(&FIXED.sentry, &part).expect("a split body seals");
        }
    }
}

fn open_heartbeat(payload: &[u8]) {
    let f = &*FIXED;
    let signed = SignedHeartbeat {
        payload: payload.to_vec(),
        signature: sign::sign(&f.sentry, Domain::Heartbeat, payload),
    };
    let opened = heartbeat::open(&f.sentry_id, &signed, LAST_SEQ, NOW_MS);
    let Ok(hb) = codec::decode::<Heartbeat>(payload) else {
        assert_eq!(opened, Err(NackReason::Malformed));
        return;
    };
    let want = if hb.node_id != f.sentry_id {
        Err(NackReason::ForeignNode)
    } else if hb.seq <= LAST_SEQ {
        Err(NackReason::Replay)
    } else if hb.ts_ms > NOW_MS + heartbeat::MAX_FUTURE_SKEW_MS {
        Err(NackReason::ClockSkew)
    } else {
        Ok(hb)
    };
    assert_eq!(opened, want);
}

// ---------------------------------------------------------------------------
// 3: an action request, signed by the pinned commander.

fn action_request_payload(payload: &[u8]) {
    let f = &*FIXED;
    let signed = SignedAction {
        payload: payload.to_vec(),
        signature: sign::sign(&f.commander, Domain::Action, payload),
    };
    open_action(&signed);
    open_action_payload(payload);
}

/// An action as received (any signature): the refusal is answered.
fn open_action(signed: &SignedAction) {
    let f = &*FIXED;
    let opened = action::open_action(&[f.commander_id], &f.sentry_id, signed, NOW_MS);
    if let Err(refusal) = &opened {
        let _ = refusal.as_str();
        if let Some(result) = action::refusal_result(&f.sentry_id, signed, refusal, NOW_MS) {
            assert!(result.results.iter().all(|o| !o.ok));
            // Every refusal the sentry answers reaches the commander.
            let sealed = action::seal_result(&f.sentry, &result).expect("a refusal seals");
            let back = action::open_result(&f.sentry_id, &sealed).expect("and opens");
            assert_eq!(back.results.len(), result.results.len());
        }
    }
}

/// The checks after the signature, on a payload signed by the pin.
fn open_action_payload(payload: &[u8]) {
    let f = &*FIXED;
    let signed = SignedAction {
        payload: payload.to_vec(),
        signature: sign::sign(&f.commander, Domain::Action, payload),
    };
    let opened = action::open_action(&[f.commander_id], &f.sentry_id, &signed, NOW_MS);
    let Some(req) = decode::<ActionRequest>(payload) else {
        assert!(
            matches!(opened, Err(ActionRefusal::Malformed(_))),
            "{opened:?}"
        );
        return;
    };
    // A stranger's signature over the same bytes never passes.
    let stranger = action::open_action(&[f.sentry_id], &f.sentry_id, &signed, NOW_MS);
    assert_eq!(stranger, Err(ActionRefusal::BadSignature));

    let checked = action::check_request(&req);
    match &opened {
        Ok(got) => {
            assert_eq!(got, &req);
            assert!(checked.is_ok() && NOW_MS < req.expires_at_ms);
        }
        Err(ActionRefusal::WrongSentry { for_node, me }) => {
            assert_eq!((for_node, me), (&req.node_id, &f.sentry_id));
        }
        Err(ActionRefusal::Malformed(_)) => {
            assert_eq!(req.node_id, f.sentry_id);
            assert!(checked.is_err());
        }
        Err(ActionRefusal::Expired { expires_at_ms, .. }) => {
            assert!(checked.is_ok() && *expires_at_ms <= NOW_MS);
        }
        Err(ActionRefusal::BadSignature) => panic!("the pinned key's signature refused"),
    }

    let distinct = action::distinct_targets(&req.targets);
    let set: BTreeSet<&str> = req.targets.iter().map(String::as_str).collect();
    assert_eq!(distinct.len(), set.len());
    assert_eq!(
        distinct.first().copied(),
        req.targets.first().map(String::as_str)
    );

    // What passes the bounds, the commander can seal, and it opens the same.
    if checked.is_ok() {
        let sealed = action::seal_action(&f.commander, &req).expect("a valid request seals");
        let again = action::open_action(&[f.commander_id], &f.sentry_id, &sealed, NOW_MS);
        assert_eq!(again, opened);
    } else {
        assert!(action::seal_action(&f.commander, &req).is_err());
    }
}

// ---------------------------------------------------------------------------
// 4: an action result, signed by the session's sentry.

fn action_result_payload(payload: &[u8]) {
    open_result(payload);
    let Some(body) = decode::<ActionResultBody>(payload) else {
        return;
    };
    for budget in [0, 1, 3, 64, 512] {
        let mut shrunk = body.clone();
        action::shrink_details(&mut shrunk, budget);
        for (before, after) in body.results.iter().zip(&shrunk.results) {
            if before.detail.len() <= budget {
                assert_eq!(before.detail, after.detail);
            } else if before.ok {
                assert!(after.detail.starts_with("{\"truncated_bytes\":"));
            } else {
                assert!(after.detail.len() <= budget + '…'.len_utf8());
                assert!(after.detail.ends_with('…'));
            }
        }
    }
}

fn open_result(payload: &[u8]) {
    let f = &*FIXED;
    let signed = SignedActionResult {
        payload: payload.to_vec(),
        signature: sign::sign(&f.sentry, Domain::ActionResult, payload),
    };
    let opened = action::open_result(&f.sentry_id, &signed);
    let Some(body) = decode::<ActionResultBody>(payload) else {
        assert!(
            matches!(opened, Err(ResultRefusal::Malformed(_))),
            "{opened:?}"
        );
        return;
    };
    let in_bounds = !body.action_id.is_empty()
        && body.action_id.len() <= action::MAX_ACTION_ID_LEN
        && body.results.len() <= action::MAX_TARGETS;
    match &opened {
        Ok(got) => assert!(in_bounds && got == &body),
        Err(ResultRefusal::Malformed(_)) => assert!(!in_bounds),
        Err(ResultRefusal::ForeignNode { signed_for, .. }) => {
            assert!(in_bounds && signed_for == &body.node_id && body.node_id != f.sentry_id)
        }
        Err(ResultRefusal::BadSignature(_)) => panic!("the session key's signature refused"),
    }
    // The sentry's seal of any body opens as that body (details may be
    // shortened to fit a frame).
    let sealed = action::seal_result(&f.sentry, &body).expect("a decoded body seals");
    match action::open_result(&f.sentry_id, &sealed) {
        Ok(back) => {
            assert!(opened.is_ok());
            assert_eq!(back.action_id, body.action_id);
            assert_eq!(back.results.len(), body.results.len());
        }
        Err(e) => assert_eq!(
            std::mem::discriminant(&e),
            std::mem::discriminant(opened.as_ref().unwrap_err())
        ),
    }
}

// ---------------------------------------------------------------------------
// 5: every other wire type on its own.

fn any_type(bytes: &[u8]) {
    let Some((&pick, body)) = bytes.split_first() else {
        return;
    };
    match pick % 20 {
        0 => check::<Hello>(body),
        1 => check::<Challenge>(body),
        2 => check::<Proof>(body),
        3 => check::<Welcome>(body),
        4 => check::<Reject>(body),
        5 => check::<StatusUpdate>(body),
        6 => check::<Ack>(body),
        7 => check::<Nack>(body),
        8 => check::<SignedHeartbeat>(body),
        9 => check::<SignedAction>(body),
        10 => check::<SignedActionResult>(body),
        11 => check::<HeartbeatBody>(body),
        12 => check::<DeviceSnapshot>(body),
        13 => check::<DeviceAlert>(body),
        14 => check::<TargetOutcome>(body),
        15 => check::<SentryKind>(body),
        16 => check::<RejectCode>(body),
        17 => check::<NackReason>(body),
        18 => check::<SentryStatus>(body),
        _ => check::<Severity>(body),
    }
}

fn check<T: bincode::Encode + bincode::Decode<()>>(body: &[u8]) {
    let _ = decode::<T>(body);
}

// ---------------------------------------------------------------------------
// Other: keys and wallet proofs.

fn keys(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(id) = text.parse::<NodeId>() {
        assert_eq!(id.to_string().parse::<NodeId>().ok(), Some(id));
    }
    let _ = NodeId::from_public_key_hex(&text);
    if let Some(id) = NodeId::from_spki_der(bytes) {
        assert_eq!(&id.to_spki_der()[..], bytes);
    }
    let _ = text.parse::<WalletAddress>();
    if bytes.len() >= 97 {
        let (sig, rest) = bytes.split_at(65);
        let (key, message) = rest.split_at(32);
        let sig65: [u8; 65] = sig.try_into().expect("65 bytes");
        if let Ok(addr) = wallet::recover_personal(message, &sig65) {
            wallet::verify_personal(message, &sig65, &addr).expect("the recovered signer");
        }
        let sig64: [u8; 64] = sig[..64].try_into().expect("64 bytes");
        let id = NodeId::from_public_key(key.try_into().expect("32 bytes"));
        let _ = id.verify(message, &sig64);
        let _ = sign::verify(&id, Domain::Heartbeat, message, &sig64);
    }
}
