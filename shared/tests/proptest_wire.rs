//! Property tests of the v1 codec: every message survives encode → decode,
//! and no input, however broken, makes decoding panic or allocate beyond
//! the frame limit.
//!
//! Case counts are modest so that the file runs in seconds in a debug
//! build; `PROPTEST_CASES=10000 cargo test -p hashfleet-shared --test
//! proptest_wire` runs a longer session. The `fuzz/` crate does the same
//! with coverage guidance.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bincode::error::DecodeError;
use hashfleet_shared::action;
use hashfleet_shared::codec::{self, CodecError, FrameDecoder, MAX_FRAME_LEN};
use hashfleet_shared::heartbeat;
use hashfleet_shared::wire::*;
use hashfleet_shared::{NodeId, NodeKey, WalletAddress};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------------------
// Largest single allocation, per thread, so that tests can show a hostile
// length is refused before anything is allocated for it.

struct TrackingAlloc;

thread_local! {
    static LARGEST_ALLOC: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    // `try_with`: the slot may be gone while the thread shuts down.
    let _ = LARGEST_ALLOC.try_with(|largest| {
        if size > largest.get() {
            largest.set(size);
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping touches only a const-initialised thread-local `Cell`, which
// never allocates.
unsafe impl GlobalAlloc for TrackingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: TrackingAlloc = TrackingAlloc;

/// Runs `f` and returns its result with the largest single allocation it
/// made on this thread.
fn largest_alloc_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST_ALLOC.with(|l| l.set(0));
    let out = f();
    (out, LARGEST_ALLOC.with(Cell::get))
}

// ---------------------------------------------------------------------------
// Strategies. Sizes are bounded; floats are finite (NaN != NaN would make an
// exact round trip compare unequal).

fn byte_array<const N: usize>() -> impl Strategy<Value = [u8; N]> {
    vec(any::<u8>(), N).prop_map(|v| v.try_into().expect("N bytes"))
}

fn node_id() -> impl Strategy<Value = NodeId> {
    byte_array::<32>().prop_map(NodeId::from_public_key)
}

fn wallet_address() -> impl Strategy<Value = WalletAddress> {
    byte_array::<20>().prop_map(WalletAddress)
}

/// Any Unicode text (multi-byte characters included) up to `max` chars.
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("(?s:.{{0,{max}}})")).expect("valid regex")
}

fn finite_f64() -> impl Strategy<Value = f64> {
    use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

fn sentry_kind() -> impl Strategy<Value = SentryKind> {
    prop_oneof![
        Just(SentryKind::Host),
        Just(SentryKind::Asic),
        Just(SentryKind::Synthetic)
    ]
}

fn sentry_status() -> impl Strategy<Value = SentryStatus> {
    prop_oneof![Just(SentryStatus::Pending), Just(SentryStatus::Approved)]
}

fn reject_code() -> impl Strategy<Value = RejectCode> {
    prop_oneof![
        Just(RejectCode::VersionMismatch),
        Just(RejectCode::Revoked),
        Just(RejectCode::EnrollTokenInvalid),
        Just(RejectCode::ProofInvalid),
        Just(RejectCode::WalletProofInvalid),
        Just(RejectCode::IdentityMismatch),
        Just(RejectCode::Malformed),
        Just(RejectCode::Unavailable),
        Just(RejectCode::KeyRotated),
    ]
}

fn nack_reason() -> impl Strategy<Value = NackReason> {
    prop_oneof![
        Just(NackReason::Replay),
        Just(NackReason::BadSignature),
        Just(NackReason::ForeignNode),
        Just(NackReason::NotApproved),
        Just(NackReason::Malformed),
        Just(NackReason::ClockSkew),
    ]
}

fn severity() -> impl Strategy<Value = Severity> {
    prop_oneof![
        Just(Severity::Critical),
        Just(Severity::High),
        Just(Severity::Medium)
    ]
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<u16>(),
        node_id(),
        sentry_kind(),
        text(24),
        wallet_address(),
        byte_array::<65>(),
        proptest::option::of(text(40)),
        byte_array::<32>(),
        btree_map(text(8), text(16), 0..5),
    )
        .prop_map(
            |(
                protocol_version,
                node_id,
                kind,
                agent_version,
                wallet_address,
                wallet_proof,
                enroll_token,
                nonce,
                labels,
            )| Hello {
                protocol_version,
                node_id,
                kind,
                agent_version,
                wallet_address,
                wallet_proof,
                enroll_token,
                nonce,
                labels,
            },
        )
}

fn device_alert() -> impl Strategy<Value = DeviceAlert> {
    (text(12), severity(), text(32)).prop_map(|(code, severity, message)| DeviceAlert {
        code,
        severity,
        message,
    })
}

fn device_snapshot() -> impl Strategy<Value = DeviceSnapshot> {
    (
        (text(17), text(10), text(10), text(16), text(12)),
        btree_map(text(20), finite_f64(), 0..6),
        btree_map(text(10), text(16), 0..4),
        vec(device_alert(), 0..3),
        text(64),
    )
        .prop_map(
            |((id, kind, make, model, firmware), metrics, labels, alerts, raw)| DeviceSnapshot {
                id,
                kind,
                make,
                model,
                firmware,
                metrics,
                labels,
                alerts,
                raw,
            },
        )
}

fn heartbeat() -> impl Strategy<Value = Heartbeat> {
    (
        node_id(),
        any::<u64>(),
        any::<u64>(),
        vec(device_snapshot(), 0..4),
    )
        .prop_map(|(node_id, seq, ts_ms, devices)| Heartbeat {
            node_id,
            seq,
            ts_ms,
            body: HeartbeatBody { devices },
        })
}

/// A signed heartbeat whose payload is either a real encoded heartbeat or
/// arbitrary bytes (the wire does not care which).
fn signed_heartbeat() -> impl Strategy<Value = SignedHeartbeat> {
    let payload = prop_oneof![
        heartbeat().prop_map(|hb| codec::encode(&hb).expect("a small heartbeat encodes")),
        vec(any::<u8>(), 0..256),
    ];
    (payload, byte_array::<64>())
        .prop_map(|(payload, signature)| SignedHeartbeat { payload, signature })
}

/// JSON array text, or any text (the wire does not check it).
fn params() -> impl Strategy<Value = String> {
    prop_oneof![
        vec(text(8), 0..4).prop_map(|v| serde_json::to_string(&v).expect("strings serialize")),
        text(40),
    ]
}

fn action_request() -> impl Strategy<Value = ActionRequest> {
    (
        text(40),
        node_id(),
        text(16),
        params(),
        vec(text(20), 0..5),
        vec(text(12), 0..4),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(action_id, node_id, method, params, targets, voters, issued_at_ms, expires_at_ms)| {
                ActionRequest {
                    action_id,
                    node_id,
                    method,
                    params,
                    targets,
                    voters,
                    issued_at_ms,
                    expires_at_ms,
                }
            },
        )
}

fn target_outcome() -> impl Strategy<Value = TargetOutcome> {
    (text(20), any::<bool>(), text(64)).prop_map(|(target, ok, detail)| TargetOutcome {
        target,
        ok,
        detail,
    })
}

fn action_result_body() -> impl Strategy<Value = ActionResultBody> {
    (
        text(40),
        node_id(),
        vec(target_outcome(), 0..5),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(action_id, node_id, results, executed_at_ms, replayed)| ActionResultBody {
                action_id,
                node_id,
                results,
                executed_at_ms,
                replayed,
            },
        )
}

/// A signed action whose payload is a real encoded request or any bytes.
fn signed_action() -> impl Strategy<Value = SignedAction> {
    let payload = prop_oneof![
        action_request().prop_map(|r| codec::encode(&r).expect("a small request encodes")),
        vec(any::<u8>(), 0..256),
    ];
    (payload, byte_array::<64>())
        .prop_map(|(payload, signature)| SignedAction { payload, signature })
}

/// A signed result whose payload is a real encoded body or any bytes.
fn signed_action_result() -> impl Strategy<Value = SignedActionResult> {
    let payload = prop_oneof![
        action_result_body().prop_map(|b| codec::encode(&b).expect("a small result encodes")),
        vec(any::<u8>(), 0..256),
    ];
    (payload, byte_array::<64>())
        .prop_map(|(payload, signature)| SignedActionResult { payload, signature })
}

fn rotation_request() -> impl Strategy<Value = RotationRequest> {
    (
        any::<u64>(),
        node_id(),
        node_id(),
        any::<u64>(),
        byte_array::<32>(),
        any::<u64>(),
    )
        .prop_map(
            |(sentry_id, old_node_id, new_node_id, seq, session_nonce, ts_ms)| RotationRequest {
                sentry_id,
                old_node_id,
                new_node_id,
                seq,
                session_nonce,
                ts_ms,
            },
        )
}

/// A signed rotation whose payload is a real encoded request or any bytes.
fn signed_rotation() -> impl Strategy<Value = SignedRotation> {
    let payload = prop_oneof![
        rotation_request().prop_map(|r| codec::encode(&r).expect("a rotation encodes")),
        vec(any::<u8>(), 0..256),
    ];
    (payload, byte_array::<64>(), byte_array::<64>()).prop_map(
        |(payload, old_signature, new_signature)| SignedRotation {
            payload,
            old_signature,
            new_signature,
        },
    )
}

fn signed_announcement() -> impl Strategy<Value = SignedKeyAnnouncement> {
    let payload = prop_oneof![
        (node_id(), node_id(), any::<u64>(), any::<u64>()).prop_map(
            |(old_key, new_key, announced_at_ms, switch_at_ms)| codec::encode(&KeyAnnouncement {
                old_key,
                new_key,
                announced_at_ms,
                switch_at_ms,
            })
            .expect("an announcement encodes")
        ),
        vec(any::<u8>(), 0..256),
    ];
    (payload, byte_array::<64>(), byte_array::<64>()).prop_map(
        |(payload, old_signature, new_signature)| SignedKeyAnnouncement {
            payload,
            old_signature,
            new_signature,
        },
    )
}

fn sentry_message() -> impl Strategy<Value = SentryMessage> {
    prop_oneof![
        hello().prop_map(SentryMessage::Hello),
        byte_array::<64>().prop_map(|signature| SentryMessage::Proof(Proof { signature })),
        signed_heartbeat().prop_map(SentryMessage::Heartbeat),
        signed_action_result().prop_map(SentryMessage::ActionResult),
        signed_rotation().prop_map(SentryMessage::RotateKey),
        (wallet_address(), byte_array::<65>()).prop_map(|(wallet_address, signature)| {
            SentryMessage::BindWallet(WalletBinding {
                wallet_address,
                signature,
            })
        }),
    ]
}

fn commander_message() -> impl Strategy<Value = CommanderMessage> {
    prop_oneof![
        (byte_array::<32>(), byte_array::<64>())
            .prop_map(|(nonce, proof)| CommanderMessage::Challenge(Challenge { nonce, proof })),
        (any::<u64>(), sentry_status(), any::<u64>(), any::<u64>()).prop_map(
            |(sentry_id, status, last_seq, server_time_ms)| CommanderMessage::Welcome(Welcome {
                sentry_id,
                status,
                last_seq,
                server_time_ms,
            })
        ),
        (reject_code(), text(80))
            .prop_map(|(code, message)| CommanderMessage::Reject(Reject { code, message })),
        sentry_status().prop_map(|status| CommanderMessage::StatusUpdate(StatusUpdate { status })),
        any::<u64>().prop_map(|seq| CommanderMessage::Ack(Ack { seq })),
        (any::<u64>(), nack_reason(), any::<u64>()).prop_map(|(seq, reason, last_seq)| {
            CommanderMessage::Nack(Nack {
                seq,
                reason,
                last_seq,
            })
        }),
        signed_action().prop_map(CommanderMessage::Action),
        text(80).prop_map(|reason| CommanderMessage::RotateRequest(RotateRequest { reason })),
        (node_id(), any::<bool>(), text(80)).prop_map(|(new_node_id, accepted, message)| {
            CommanderMessage::Rotated(RotationOutcome {
                new_node_id,
                accepted,
                message,
            })
        }),
        (wallet_address(), any::<bool>(), text(80)).prop_map(
            |(wallet_address, accepted, message)| {
                CommanderMessage::WalletBound(WalletOutcome {
                    wallet_address,
                    accepted,
                    message,
                })
            }
        ),
        signed_announcement().prop_map(CommanderMessage::KeyAnnouncement),
    ]
}

/// The body of any v1 message or heartbeat payload, as a frame.
fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        sentry_message().prop_map(|m| codec::encode_frame(&m, MAX_FRAME_LEN).unwrap()),
        commander_message().prop_map(|m| codec::encode_frame(&m, MAX_FRAME_LEN).unwrap()),
        heartbeat().prop_map(|hb| codec::encode_frame(&hb, MAX_FRAME_LEN).unwrap()),
        action_request().prop_map(|r| codec::encode_frame(&r, MAX_FRAME_LEN).unwrap()),
        action_result_body().prop_map(|b| codec::encode_frame(&b, MAX_FRAME_LEN).unwrap()),
    ]
}

// ---------------------------------------------------------------------------
// Round trips.

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Shrinking helps read a failure; it need not take long.
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

fn round_trip<T>(value: &T) -> Result<(), TestCaseError>
where
    T: bincode::Encode + bincode::Decode<()> + PartialEq + std::fmt::Debug,
{
    let body = codec::encode(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let decoded: T = codec::decode(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&decoded, value);

    // The same through a frame, fed to the decoder one split at a time.
    let frame = codec::encode_frame(value, MAX_FRAME_LEN).unwrap();
    prop_assert_eq!(&frame[..4], &(body.len() as u32).to_be_bytes()[..]);
    prop_assert_eq!(&frame[4..], &body[..]);
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    let split = frame.len() / 2;
    decoder.push(&frame[..split]);
    prop_assert_eq!(decoder.next_frame().unwrap(), None);
    decoder.push(&frame[split..]);
    let got = decoder.next_frame().unwrap().expect("a whole frame");
    prop_assert_eq!(&got, &body);
    prop_assert_eq!(decoder.buffered(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn sentry_messages_round_trip(msg in sentry_message()) {
        round_trip(&msg)?;
    }

    #[test]
    fn commander_messages_round_trip(msg in commander_message()) {
        round_trip(&msg)?;
    }

    #[test]
    fn heartbeats_round_trip(hb in heartbeat()) {
        round_trip(&hb)?;
    }

    #[test]
    fn action_payloads_round_trip(req in action_request(), body in action_result_body()) {
        round_trip(&req)?;
        round_trip(&body)?;
    }

    /// seal → wire → open gives back the request on its sentry, before it
    /// expires; the result comes back the same way.
    #[test]
    fn sealed_actions_and_results_open(
        mut req in action_request(),
        mut body in action_result_body(),
        lifetime in 1u64..=action::MAX_LIFETIME_MS,
        age in any::<u64>(),
    ) {
        let commander = NodeKey::from_seed(&[3u8; 32]);
        let sentry = NodeKey::from_seed(&[7u8; 32]);
        req.node_id = sentry.node_id();
        req.params = serde_json::to_string(&req.targets).unwrap();
        req.action_id.insert(0, 'a');
        req.method.insert(0, 'm');
        req.targets.push("host".into());
        req.issued_at_ms %= u64::MAX / 2;
        req.expires_at_ms = req.issued_at_ms + lifetime;
        let valid = action::check_request(&req).is_ok();
        match action::seal_action(&commander, &req) {
            Ok(signed) => {
                prop_assert!(valid);
                let msg = CommanderMessage::Action(signed);
                let back: CommanderMessage = codec::decode(&codec::encode(&msg).unwrap()).unwrap();
                let CommanderMessage::Action(signed) = back else {
                    return Err(TestCaseError::fail("not an action"));
                };
                let now = req.issued_at_ms.saturating_add(age % (2 * lifetime));
                let opened = action::open_action(&[commander.node_id()], &sentry.node_id(), &signed, now);
                if now < req.expires_at_ms {
                    prop_assert_eq!(opened, Ok(req));
                } else {
                    let is_expired = matches!(opened, Err(action::ActionRefusal::Expired { .. }));
                    prop_assert!(is_expired);
                }
            }
            Err(_) => prop_assert!(!valid),
        }

        body.node_id = sentry.node_id();
        body.action_id.insert(0, 'a');
        let signed = action::seal_result(&sentry, &body).unwrap();
        let msg = SentryMessage::ActionResult(signed);
        let back: SentryMessage = codec::decode(&codec::encode(&msg).unwrap()).unwrap();
        let SentryMessage::ActionResult(signed) = back else {
            return Err(TestCaseError::fail("not an action result"));
        };
        if body.action_id.len() <= action::MAX_ACTION_ID_LEN {
            prop_assert_eq!(action::open_result(&sentry.node_id(), &signed), Ok(body));
        }
    }

    /// seal → wire → open gives back the heartbeat, on the sealer's session.
    #[test]
    fn sealed_heartbeats_open(mut hb in heartbeat(), last_seq in any::<u64>()) {
        let key = NodeKey::from_seed(&[7u8; 32]);
        hb.node_id = key.node_id();
        hb.seq = last_seq.saturating_add(1).max(1);
        let msg = SentryMessage::Heartbeat(heartbeat::seal(&key, &hb).unwrap());
        let back: SentryMessage = codec::decode(&codec::encode(&msg).unwrap()).unwrap();
        let SentryMessage::Heartbeat(signed) = back else {
            return Err(TestCaseError::fail("not a heartbeat"));
        };
        let opened = heartbeat::open(&key.node_id(), &signed, hb.seq - 1, hb.ts_ms);
        prop_assert_eq!(opened, Ok(hb));
    }
}

// ---------------------------------------------------------------------------
// Hostile input: decoding returns, whatever the bytes.

/// The session key `decode_everything` opens heartbeats for.
fn session() -> NodeId {
    NodeKey::from_seed(&[1u8; 32]).node_id()
}

/// Decodes `body` as every v1 type and opens any heartbeat in it. Only
/// returning matters; a panic fails the test.
fn decode_everything(body: &[u8]) {
    let _ = codec::decode::<CommanderMessage>(body);
    let _ = codec::decode::<Heartbeat>(body);
    if let Ok(SentryMessage::Heartbeat(signed)) = codec::decode::<SentryMessage>(body) {
        let _ = heartbeat::open(&session(), &signed, 0, u64::MAX);
    }
    let signed = SignedHeartbeat {
        payload: body.to_vec(),
        signature: [0u8; 64],
    };
    let _ = heartbeat::open(&session(), &signed, 0, u64::MAX);
    let pins = [NodeKey::from_seed(&[3u8; 32]).node_id()];
    if let Ok(CommanderMessage::Action(signed)) = codec::decode::<CommanderMessage>(body) {
        let _ = action::open_action(&pins, &session(), &signed, 0);
    }
    if let Ok(SentryMessage::ActionResult(signed)) = codec::decode::<SentryMessage>(body) {
        let _ = action::open_result(&session(), &signed);
    }
    let signed = SignedAction {
        payload: body.to_vec(),
        signature: [0u8; 64],
    };
    let _ = action::open_action(&pins, &session(), &signed, 0);
    let _ = action::refusal_result(&session(), &signed, &action::ActionRefusal::BadSignature, 0);
    let signed = SignedActionResult {
        payload: body.to_vec(),
        signature: [0u8; 64],
    };
    let _ = action::open_result(&session(), &signed);
}

/// Feeds `stream` to a frame decoder in `chunk`-byte pieces and decodes
/// every frame it yields; stops at the first framing error, as a session
/// would.
fn decode_stream(stream: &[u8], chunk: usize, max: usize) {
    let mut decoder = FrameDecoder::new(max);
    for piece in stream.chunks(chunk.max(1)) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => decode_everything(&frame),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(decoder.buffered() <= 4 + max, "buffers more than one frame");
    }
}

/// One way to break a valid frame.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte with a non-zero mask.
    Flip(Index, u8),
    /// Cut the frame short.
    Truncate(Index),
    /// Add bytes at the end without fixing the length prefix.
    Extend(Vec<u8>),
    /// Add bytes at the end and grow the length prefix to match.
    ExtendBody(Vec<u8>),
    /// Add to the length prefix only.
    GrowPrefix(u32),
    /// Replace the length prefix.
    SetPrefix(u32),
    /// Insert one byte in the middle (a varint grows, say).
    Insert(Index, u8),
    /// Remove one byte.
    Remove(Index),
    /// Replace one byte with a varint marker (0xfb–0xff) to fake a long length.
    VarintMarker(Index, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => vec(any::<u8>(), 1..16).prop_map(Mutation::Extend),
        1 => vec(any::<u8>(), 1..16).prop_map(Mutation::ExtendBody),
        1 => any::<u32>().prop_map(Mutation::GrowPrefix),
        1 => any::<u32>().prop_map(Mutation::SetPrefix),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Remove),
        2 => (any::<Index>(), 0xfbu8..=0xff).prop_map(|(i, b)| Mutation::VarintMarker(i, b)),
    ]
}

fn set_prefix(frame: &mut [u8], len: u32) {
    if frame.len() >= 4 {
        frame[..4].copy_from_slice(&len.to_be_bytes());
    }
}

fn prefix(frame: &[u8]) -> u32 {
    if frame.len() >= 4 {
        u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]])
    } else {
        0
    }
}

fn mutate(frame: &mut Vec<u8>, mutation: &Mutation) {
    if frame.is_empty() {
        frame.push(0);
    }
    match mutation {
        Mutation::Flip(i, mask) => {
            let at = i.index(frame.len());
            frame[at] ^= mask;
        }
        Mutation::Truncate(i) => frame.truncate(i.index(frame.len())),
        Mutation::Extend(bytes) => frame.extend_from_slice(bytes),
        Mutation::ExtendBody(bytes) => {
            let len = prefix(frame).wrapping_add(bytes.len() as u32);
            set_prefix(frame, len);
            frame.extend_from_slice(bytes);
        }
        Mutation::GrowPrefix(by) => {
            let len = prefix(frame).wrapping_add(*by);
            set_prefix(frame, len);
        }
        Mutation::SetPrefix(len) => set_prefix(frame, *len),
        Mutation::Insert(i, b) => frame.insert(i.index(frame.len() + 1), *b),
        Mutation::Remove(i) => {
            frame.remove(i.index(frame.len()));
        }
        Mutation::VarintMarker(i, b) => {
            let at = i.index(frame.len());
            frame[at] = *b;
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn random_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..4096),
        chunk in 1usize..512,
        max in prop_oneof![Just(MAX_FRAME_LEN), 0usize..4096],
    ) {
        let ((), largest) = largest_alloc_during(|| {
            decode_everything(&bytes);
            decode_stream(&bytes, chunk, max);
        });
        // A length the input cannot back is refused, not allocated.
        prop_assert!(largest <= MAX_FRAME_LEN, "allocated {} bytes at once", largest);
    }

    #[test]
    fn mutated_frames_never_panic(
        frames in vec(valid_frame(), 1..4),
        mutations in vec(mutation(), 1..5),
        target in any::<Index>(),
        chunk in 1usize..256,
    ) {
        // Mutate one frame of a short stream, so that framing errors also
        // land between or inside the following frames.
        let mut frames = frames;
        let which = target.index(frames.len());
        for m in &mutations {
            mutate(&mut frames[which], m);
        }
        let stream = frames.concat();
        let ((), largest) = largest_alloc_during(|| {
            decode_stream(&stream, chunk, MAX_FRAME_LEN);
            let broken = &frames[which];
            decode_everything(broken.get(4..).unwrap_or(broken));
        });
        prop_assert!(largest <= MAX_FRAME_LEN, "allocated {} bytes at once", largest);
    }
}

// ---------------------------------------------------------------------------
// Deterministic hostile lengths.

/// bincode's varint form of a u64 above u32::MAX: 0xfd then 8 bytes LE.
fn varint_u64(n: u64) -> Vec<u8> {
    let mut out = vec![0xfd];
    out.extend_from_slice(&n.to_le_bytes());
    out
}

/// A `Hello` up to (not including) its `agent_version` length.
fn hello_head() -> Vec<u8> {
    let mut out = vec![0x00, 0x01]; // SentryMessage::Hello, protocol_version 1
    out.extend_from_slice(&[0xaa; 32]); // node_id
    out.push(0x00); // SentryKind::Host
    out
}

/// A `Hello` up to its `labels` length (empty version, no token).
fn hello_head_to_labels() -> Vec<u8> {
    let mut out = hello_head();
    out.push(0x00); // agent_version ""
    out.extend_from_slice(&[0xbb; 20]); // wallet_address
    out.extend_from_slice(&[0xcc; 65]); // wallet_proof
    out.push(0x00); // enroll_token None
    out.extend_from_slice(&[0xdd; 32]); // nonce
    out
}

/// A `Heartbeat` up to its device count.
fn heartbeat_head() -> Vec<u8> {
    let mut out = vec![0xee; 32]; // node_id
    out.extend_from_slice(&[0x01, 0x01]); // seq 1, ts_ms 1
    out
}

/// A decoder under test: bytes in, only success or failure out.
type DecodeFn = fn(&[u8]) -> Result<(), CodecError>;

fn assert_limit_exceeded(
    what: &str,
    result: Result<(), CodecError>,
    largest: usize,
    took: Duration,
) {
    assert!(
        matches!(result, Err(CodecError::Decode(DecodeError::LimitExceeded))),
        "{what}: expected LimitExceeded, got {result:?}"
    );
    assert!(
        largest < 64 * 1024,
        "{what}: allocated {largest} bytes at once"
    );
    assert!(took < Duration::from_secs(2), "{what}: took {took:?}");
}

#[test]
fn huge_claimed_lengths_fail_fast_without_allocating() {
    for claimed in [1u64 << 40, u64::MAX, (MAX_FRAME_LEN as u64) + 1] {
        // SignedHeartbeat.payload: Vec<u8>.
        let mut heartbeat_payload = vec![0x02];
        heartbeat_payload.extend(varint_u64(claimed));
        // Hello.agent_version: String.
        let mut agent_version = hello_head();
        agent_version.extend(varint_u64(claimed));
        // Hello.labels: BTreeMap<String, String>.
        let mut labels = hello_head_to_labels();
        labels.extend(varint_u64(claimed));
        labels.extend_from_slice(&[0x01, b'k', 0x01, b'v']);
        // Heartbeat.body.devices: Vec<DeviceSnapshot>.
        let mut devices = heartbeat_head();
        devices.extend(varint_u64(claimed));
        // SignedAction.payload and SignedActionResult.payload: Vec<u8>.
        let mut action_payload = vec![0x06];
        action_payload.extend(varint_u64(claimed));
        let mut result_payload = vec![0x03];
        result_payload.extend(varint_u64(claimed));
        // ActionRequest.targets: Vec<String> (after action_id "a", node_id,
        // method "m", params "[]").
        let mut targets = vec![0x01, b'a'];
        targets.extend_from_slice(&[0xee; 32]);
        targets.extend_from_slice(&[0x01, b'm', 0x02, b'[', b']']);
        targets.extend(varint_u64(claimed));

        let cases: [(&str, &[u8], DecodeFn); 7] = [
            ("SignedHeartbeat.payload", &heartbeat_payload, |b| {
                codec::decode::<SentryMessage>(b).map(drop)
            }),
            ("Hello.agent_version", &agent_version, |b| {
                codec::decode::<SentryMessage>(b).map(drop)
            }),
            ("Hello.labels", &labels, |b| {
                codec::decode::<SentryMessage>(b).map(drop)
            }),
            ("HeartbeatBody.devices", &devices, |b| {
                codec::decode::<Heartbeat>(b).map(drop)
            }),
            ("SignedAction.payload", &action_payload, |b| {
                codec::decode::<CommanderMessage>(b).map(drop)
            }),
            ("SignedActionResult.payload", &result_payload, |b| {
                codec::decode::<SentryMessage>(b).map(drop)
            }),
            ("ActionRequest.targets", &targets, |b| {
                codec::decode::<ActionRequest>(b).map(drop)
            }),
        ];
        for (what, bytes, decode) in cases {
            let start = Instant::now();
            let (result, largest) = largest_alloc_during(|| decode(bytes));
            assert_limit_exceeded(
                &format!("{what} of {claimed}"),
                result,
                largest,
                start.elapsed(),
            );
        }
    }
}

#[test]
fn a_length_within_the_limit_but_missing_its_bytes_is_unexpected_end() {
    let mut bytes = vec![0x02];
    bytes.extend_from_slice(&[0xfc]);
    bytes.extend_from_slice(&1000u32.to_le_bytes()); // payload of 1000 bytes…
    bytes.extend_from_slice(&[0u8; 10]); // …of which 10 arrive
    assert!(matches!(
        codec::decode::<SentryMessage>(&bytes),
        Err(CodecError::Decode(DecodeError::UnexpectedEnd { .. }))
    ));
}

#[test]
fn a_huge_frame_prefix_is_refused_before_buffering() {
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    let (result, largest) = largest_alloc_during(|| {
        decoder.push(&u32::MAX.to_be_bytes());
        decoder.next_frame()
    });
    assert!(matches!(result, Err(CodecError::FrameTooLarge { len, max })
        if len == u32::MAX as usize && max == MAX_FRAME_LEN));
    assert!(largest < 1024, "allocated {largest} bytes");
    // One byte over the limit, too; exactly the limit waits for the body.
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    decoder.push(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes());
    assert!(decoder.next_frame().is_err());
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    decoder.push(&(MAX_FRAME_LEN as u32).to_be_bytes());
    assert_eq!(decoder.next_frame().unwrap(), None);
}

#[test]
fn unknown_variants_and_bad_values_are_errors() {
    // Variant indexes past the end of each v1 enum.
    assert!(codec::decode::<SentryMessage>(&[0x06]).is_err());
    assert!(codec::decode::<CommanderMessage>(&[0x0b]).is_err());
    // The last variants with nothing behind them.
    assert!(codec::decode::<SentryMessage>(&[0x05]).is_err());
    assert!(codec::decode::<CommanderMessage>(&[0x0a]).is_err());
    // Reject with RejectCode 9, Nack with NackReason 6, StatusUpdate 2.
    assert!(codec::decode::<CommanderMessage>(&[0x02, 0x09, 0x00]).is_err());
    assert!(codec::decode::<CommanderMessage>(&[0x05, 0x01, 0x06, 0x00]).is_err());
    assert!(codec::decode::<CommanderMessage>(&[0x03, 0x02]).is_err());
    // Option tag 2, invalid UTF-8 in a string.
    let mut token = hello_head();
    token.push(0x00);
    token.extend_from_slice(&[0u8; 20 + 65]);
    token.push(0x02);
    assert!(codec::decode::<SentryMessage>(&token).is_err());
    let reject = [0x02, 0x00, 0x02, 0xc3, 0x28];
    assert!(matches!(
        codec::decode::<CommanderMessage>(&reject),
        Err(CodecError::Decode(DecodeError::Utf8 { .. }))
    ));
    // A varint marker with no bytes behind it.
    assert!(codec::decode::<CommanderMessage>(&[0x04, 0xfd, 0x01]).is_err());
}

#[test]
fn labels_are_encoded_in_key_order() {
    // BTreeMap makes the encoding independent of insertion order.
    let mut a = BTreeMap::new();
    a.insert("site".to_string(), "x".to_string());
    a.insert("rack".to_string(), "y".to_string());
    let mut b = BTreeMap::new();
    b.insert("rack".to_string(), "y".to_string());
    b.insert("site".to_string(), "x".to_string());
    assert_eq!(codec::encode(&a).unwrap(), codec::encode(&b).unwrap());
}

// ---------------------------------------------------------------------------
// bincode's decode limit counts in-memory claims (count × size_of element),
// not only wire bytes: see docs/protocol.md, "Limits".

fn heartbeat_of_empty_devices(count: usize) -> Heartbeat {
    Heartbeat {
        node_id: NodeId::from_public_key([0x11; 32]),
        seq: 1,
        ts_ms: 1,
        body: HeartbeatBody {
            devices: vec![DeviceSnapshot::default(); count],
        },
    }
}

#[test]
fn a_heartbeat_of_4000_devices_round_trips() {
    let hb = heartbeat_of_empty_devices(4000);
    let body = codec::encode(&hb).unwrap();
    assert_eq!(codec::decode::<Heartbeat>(&body).unwrap(), hb);
}

/// `encode` never emits what `decode` refuses: a 44 KB heartbeat of 4 900
/// empty devices claims 4 900 × 216 bytes > 1 MiB, so `encode` refuses it.
#[test]
fn everything_encode_accepts_decodes() {
    // Regression: 4,900 empty devices encode to ~44 KB but claim more than
    // the decode budget; encode must refuse them rather than emit bytes the
    // commander can never decode.
    for n in [100, 4_000, 4_900, 20_000] {
        let hb = heartbeat_of_empty_devices(n);
        match codec::encode(&hb) {
            Ok(body) => assert_eq!(
                codec::decode::<Heartbeat>(&body).unwrap(),
                hb,
                "{n} devices"
            ),
            Err(e) => {
                assert!(n >= 4_900, "{n} devices must encode: {e}");
                assert!(matches!(e, codec::CodecError::OverBudget { .. }), "{e}");
            }
        }
    }
}
