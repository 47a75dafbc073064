//! Golden bytes of protocol v1: a change to any v1 encoding breaks this test.
//!
//! Every variant of `SentryMessage` and `CommanderMessage`, the signed
//! payloads (`Heartbeat`, `ActionRequest`, `ActionResultBody`), and every
//! value of every v1 enum has a fixture in
//! `tests/golden/v1/<name>.hex` (hex of the `codec::encode` body, no length
//! prefix). Each value is built from fixed seeds, nonces and timestamps, so
//! the bytes are the same on every run; signatures are deterministic too
//! (Ed25519, and RFC 6979 for the wallet's EIP-191 proof).
//!
//! A missing or different fixture fails the test. To write the fixtures of
//! new messages, run
//! `HASHFLEET_BLESS=1 cargo test -p hashfleet-shared --test golden`
//! and commit the new files. Never re-bless a released fixture: a v1 peer
//! decodes those bytes. New messages go at the end of their enum, with new
//! fixtures (see `docs/protocol.md`, "Evolving the protocol").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::PathBuf;

use hashfleet_shared::action;
use hashfleet_shared::codec::{self, FrameDecoder, MAX_FRAME_LEN};
use hashfleet_shared::handshake::{self, CommanderHandshake};
use hashfleet_shared::heartbeat;
use hashfleet_shared::rotation;
use hashfleet_shared::sign::{self, Domain};
use hashfleet_shared::wire::*;
use hashfleet_shared::{NodeId, NodeKey, WalletKey};

// ---------------------------------------------------------------------------
// Fixed inputs.

/// The sentry's node key and wallet, and the commander's node key.
fn sentry_key() -> NodeKey {
    NodeKey::from_seed(&[1u8; 32])
}

fn sentry_wallet() -> WalletKey {
    WalletKey::from_bytes(&[2u8; 32]).expect("[2; 32] is a valid secp256k1 scalar")
}

fn commander_key() -> NodeKey {
    NodeKey::from_seed(&[3u8; 32])
}

fn sentry_id() -> NodeId {
    sentry_key().node_id()
}

/// The keys after a rotation.
fn next_sentry_key() -> NodeKey {
    NodeKey::from_seed(&[7u8; 32])
}

fn next_wallet() -> WalletKey {
    WalletKey::from_bytes(&[8u8; 32]).expect("[8; 32] is a valid secp256k1 scalar")
}

fn next_commander_key() -> NodeKey {
    NodeKey::from_seed(&[9u8; 32])
}

fn rotation_request() -> RotationRequest {
    RotationRequest {
        sentry_id: 7,
        old_node_id: sentry_id(),
        new_node_id: next_sentry_key().node_id(),
        seq: 4_294_967_296,
        session_nonce: CHALLENGE_NONCE,
        ts_ms: T0_MS,
    }
}

fn key_announcement() -> KeyAnnouncement {
    KeyAnnouncement {
        old_key: commander_key().node_id(),
        new_key: next_commander_key().node_id(),
        announced_at_ms: T0_MS,
        switch_at_ms: T0_MS + 86_400_000,
    }
}

/// The sentry's `Hello.nonce`.
const HELLO_NONCE: [u8; 32] = [4u8; 32];
/// The TLS exporter value of the (imaginary) connection.
const EXPORTER: [u8; 32] = [5u8; 32];
/// The commander's `Challenge.nonce`.
const CHALLENGE_NONCE: [u8; 32] = [6u8; 32];
/// 2026-01-01T00:00:00Z in milliseconds.
const T0_MS: u64 = 1_767_225_600_000;

fn hello(kind: SentryKind, enroll_token: Option<&str>, labels: &[(&str, &str)]) -> Hello {
    let node_id = sentry_id();
    let wallet = sentry_wallet();
    Hello {
        protocol_version: PROTOCOL_VERSION,
        node_id,
        kind,
        agent_version: format!("hashfleet-{}/0.1.0", kind.as_str()),
        wallet_address: wallet.address(),
        wallet_proof: wallet.personal_sign(&handshake::wallet_proof_message(&node_id)),
        enroll_token: enroll_token.map(str::to_string),
        nonce: HELLO_NONCE,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn challenge() -> Challenge {
    handshake::make_challenge(
        &commander_key(),
        &HELLO_NONCE,
        &EXPORTER,
        &sentry_id(),
        CHALLENGE_NONCE,
    )
}

fn proof() -> Proof {
    let payload = sign::challenge_payload(&CHALLENGE_NONCE, &EXPORTER, &sentry_id());
    Proof {
        signature: sign::sign(&sentry_key(), Domain::SentryProof, &payload),
    }
}

fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A heartbeat with a fully populated miner (metrics, labels, one alert of
/// each severity, raw text) and a sparse host device.
fn full_heartbeat() -> Heartbeat {
    let miner = DeviceSnapshot {
        id: "00:1a:2b:3c:4d:5e".into(),
        kind: "miner".into(),
        make: "Bitmain".into(),
        model: "Antminer S19 Pro".into(),
        firmware: "2024-01-05".into(),
        metrics: [
            ("efficiency_j_per_th", 29.5),
            ("fan_rpm", 5400.0),
            ("hashrate_hs", 1.1e14),
            ("power_w", 3250.5),
            ("temp_c", 71.25),
            ("temp_c_min", -5.5),
            ("uptime_s", 86_400.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        labels: strings(&[
            ("ip", "10.0.4.17"),
            ("pool", "stratum+tcp://pool.example:3333"),
        ]),
        alerts: vec![
            DeviceAlert {
                code: "hashboard_missing".into(),
                severity: Severity::Critical,
                message: "chain 2 reports no chips".into(),
            },
            DeviceAlert {
                code: "temp_high".into(),
                severity: Severity::High,
                message: "board temperature 95 °C".into(),
            },
            DeviceAlert {
                code: "fan_slow".into(),
                severity: Severity::Medium,
                message: "fan 3 below 2000 rpm".into(),
            },
        ],
        raw: r#"{"STATUS":[{"STATUS":"S","Msg":"Summary"}],"SUMMARY":[{"GHS 5s":110000.0}]}"#
            .into(),
    };
    let host = DeviceSnapshot {
        id: "host".into(),
        kind: "host".into(),
        metrics: [("uptime_s".to_string(), 3600.0)].into_iter().collect(),
        labels: strings(&[("hostname", "rig-07"), ("os", "Debian 12")]),
        ..DeviceSnapshot::default()
    };
    Heartbeat {
        node_id: sentry_id(),
        seq: 42,
        ts_ms: T0_MS,
        body: HeartbeatBody {
            devices: vec![miner, host],
        },
    }
}

fn empty_heartbeat() -> Heartbeat {
    Heartbeat {
        node_id: sentry_id(),
        seq: 1,
        ts_ms: T0_MS - 60_000,
        body: HeartbeatBody::default(),
    }
}

/// An action for the golden sentry: one hook on its host (sentry id 7, as
/// in the golden `Welcome`) and a miner.
fn action_request() -> ActionRequest {
    ActionRequest {
        action_id: "01JGX7Q9ZK3M8V2N4P6R8T0W2Y".into(),
        node_id: sentry_id(),
        method: "runHook".into(),
        params: r#"["backup"]"#.into(),
        targets: vec!["0000000000000007".into(), "00:1a:2b:3c:4d:5e".into()],
        voters: vec!["alice".into(), "bob".into()],
        issued_at_ms: T0_MS,
        expires_at_ms: T0_MS + 3_600_000,
    }
}

/// The sentry's answer to [`action_request`]: one success, one failure.
fn action_result_body(replayed: bool) -> ActionResultBody {
    ActionResultBody {
        action_id: "01JGX7Q9ZK3M8V2N4P6R8T0W2Y".into(),
        node_id: sentry_id(),
        results: vec![
            TargetOutcome {
                target: "0000000000000007".into(),
                ok: true,
                detail: r#"{"exit_code":0,"stdout_tail":"backup done\n","stderr_tail":"","duration_ms":1234}"#
                    .into(),
            },
            TargetOutcome {
                target: "00:1a:2b:3c:4d:5e".into(),
                ok: false,
                detail: "sentry-host does not support `runHook` on device 00:1a:2b:3c:4d:5e".into(),
            },
        ],
        executed_at_ms: T0_MS + 1_500,
        replayed,
    }
}

// ---------------------------------------------------------------------------
// The fixtures.

/// A v1 value with a fixture, tagged with the type it is decoded as.
#[derive(Debug, Clone)]
enum Golden {
    Sentry(SentryMessage),
    Commander(CommanderMessage),
    Heartbeat(Heartbeat),
    ActionRequest(ActionRequest),
    ActionResultBody(ActionResultBody),
}

fn reject_text(code: RejectCode) -> &'static str {
    match code {
        RejectCode::VersionMismatch => {
            "sentry speaks hashfleet/2, commander speaks hashfleet/1: upgrade the commander"
        }
        RejectCode::Revoked => "this node key was revoked on the commander and is refused for good",
        RejectCode::EnrollTokenInvalid => "the enrollment token is unknown, expired or used up",
        RejectCode::ProofInvalid => "the sentry's challenge proof does not verify for its node key",
        RejectCode::WalletProofInvalid => "wallet proof refused",
        RejectCode::IdentityMismatch => "hello names another node than TLS authenticated",
        RejectCode::Malformed => "more than 32 labels",
        RejectCode::Unavailable => "the commander is shutting down: retry later",
        RejectCode::KeyRotated => "this node key was rotated away and its grace window is over",
    }
}

fn nack(reason: NackReason) -> Nack {
    match reason {
        NackReason::Replay => Nack {
            seq: 41,
            reason,
            last_seq: 42,
        },
        NackReason::BadSignature => Nack {
            seq: 250,
            reason,
            last_seq: 249,
        },
        NackReason::ForeignNode => Nack {
            seq: 251,
            reason,
            last_seq: 250,
        },
        NackReason::NotApproved => Nack {
            seq: 65_536,
            reason,
            last_seq: 0,
        },
        NackReason::Malformed => Nack {
            seq: 4_294_967_296,
            reason,
            last_seq: 4_294_967_295,
        },
        NackReason::ClockSkew => Nack {
            seq: u64::MAX,
            reason,
            last_seq: u64::MAX - 1,
        },
    }
}

fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn fixtures() -> Vec<(String, Golden)> {
    use CommanderMessage as C;
    use Golden::{Commander, Sentry};
    use SentryMessage as S;

    let mut out: Vec<(String, Golden)> = vec![
        (
            "sentry_hello_host".into(),
            Sentry(S::Hello(hello(
                SentryKind::Host,
                Some("hfe_4vJ9rQ1xZkGm7Tn2Lp8Wc3Yb6Hs5Dd1Aa"),
                &[("rack", "r12"), ("site", "lyon-1")],
            ))),
        ),
        (
            "sentry_hello_asic".into(),
            Sentry(S::Hello(hello(SentryKind::Asic, None, &[]))),
        ),
        (
            "sentry_hello_synthetic".into(),
            Sentry(S::Hello(hello(
                SentryKind::Synthetic,
                Some("hfe_load"),
                &[("site", "Zürich ☃")],
            ))),
        ),
        ("sentry_proof".into(), Sentry(S::Proof(proof()))),
        (
            "sentry_heartbeat".into(),
            Sentry(S::Heartbeat(
                heartbeat::seal(&sentry_key(), &full_heartbeat()).expect("seal"),
            )),
        ),
        (
            "commander_challenge".into(),
            Commander(C::Challenge(challenge())),
        ),
        (
            "commander_welcome_approved".into(),
            Commander(C::Welcome(Welcome {
                sentry_id: 7,
                status: SentryStatus::Approved,
                last_seq: 4_294_967_296,
                server_time_ms: T0_MS,
            })),
        ),
        (
            "commander_welcome_pending".into(),
            Commander(C::Welcome(Welcome {
                sentry_id: 300,
                status: SentryStatus::Pending,
                last_seq: 0,
                server_time_ms: T0_MS + 1,
            })),
        ),
    ];
    for code in ALL_REJECT_CODES {
        out.push((
            format!("commander_reject_{}", snake(reject_code_name(code))),
            Commander(C::Reject(Reject {
                code,
                message: reject_text(code).into(),
            })),
        ));
    }
    for status in ALL_SENTRY_STATUSES {
        out.push((
            format!(
                "commander_status_update_{}",
                snake(sentry_status_name(status))
            ),
            Commander(C::StatusUpdate(StatusUpdate { status })),
        ));
    }
    out.push(("commander_ack".into(), Commander(C::Ack(Ack { seq: 300 }))));
    for reason in ALL_NACK_REASONS {
        out.push((
            format!("commander_nack_{}", snake(nack_reason_name(reason))),
            Commander(C::Nack(nack(reason))),
        ));
    }
    out.push(("heartbeat_full".into(), Golden::Heartbeat(full_heartbeat())));
    out.push((
        "heartbeat_empty".into(),
        Golden::Heartbeat(empty_heartbeat()),
    ));
    out.push((
        "commander_action".into(),
        Commander(C::Action(
            action::seal_action(&commander_key(), &action_request()).expect("seal"),
        )),
    ));
    out.push((
        "sentry_action_result".into(),
        Sentry(S::ActionResult(
            action::seal_result(&sentry_key(), &action_result_body(false)).expect("seal"),
        )),
    ));
    out.push((
        "action_request".into(),
        Golden::ActionRequest(action_request()),
    ));
    out.push((
        "sentry_rotate_key".into(),
        Sentry(S::RotateKey(
            rotation::seal_rotation(&sentry_key(), &next_sentry_key(), &rotation_request())
                .expect("seal"),
        )),
    ));
    out.push((
        "sentry_bind_wallet".into(),
        Sentry(S::BindWallet(rotation::bind_wallet(
            &next_wallet(),
            &sentry_id(),
            &CHALLENGE_NONCE,
        ))),
    ));
    out.push((
        "commander_rotate_request".into(),
        Commander(C::RotateRequest(RotateRequest {
            reason: "an operator asked for a rotation".into(),
        })),
    ));
    out.push((
        "commander_rotated".into(),
        Commander(C::Rotated(RotationOutcome {
            new_node_id: next_sentry_key().node_id(),
            accepted: true,
            message: String::new(),
        })),
    ));
    out.push((
        "commander_wallet_bound".into(),
        Commander(C::WalletBound(WalletOutcome {
            wallet_address: next_wallet().address(),
            accepted: false,
            message: "the wallet signature does not verify".into(),
        })),
    ));
    out.push((
        "commander_key_announcement".into(),
        Commander(C::KeyAnnouncement(
            rotation::seal_announcement(
                &commander_key(),
                &next_commander_key(),
                &key_announcement(),
            )
            .expect("seal"),
        )),
    ));
    out.push((
        "action_result_body".into(),
        Golden::ActionResultBody(action_result_body(true)),
    ));
    out
}

// ---------------------------------------------------------------------------
// Coverage. The matches below have no wildcard arm: a new variant does not
// compile until it is named here, added to its `ALL_*` list and given a
// fixture.

fn sentry_variant_name(msg: &SentryMessage) -> &'static str {
    match msg {
        SentryMessage::Hello(_) => "Hello",
        SentryMessage::Proof(_) => "Proof",
        SentryMessage::Heartbeat(_) => "Heartbeat",
        SentryMessage::ActionResult(_) => "ActionResult",
        SentryMessage::RotateKey(_) => "RotateKey",
        SentryMessage::BindWallet(_) => "BindWallet",
    }
}
const ALL_SENTRY_VARIANTS: [&str; 6] = [
    "Hello",
    "Proof",
    "Heartbeat",
    "ActionResult",
    "RotateKey",
    "BindWallet",
];

fn commander_variant_name(msg: &CommanderMessage) -> &'static str {
    match msg {
        CommanderMessage::Challenge(_) => "Challenge",
        CommanderMessage::Welcome(_) => "Welcome",
        CommanderMessage::Reject(_) => "Reject",
        CommanderMessage::StatusUpdate(_) => "StatusUpdate",
        CommanderMessage::Ack(_) => "Ack",
        CommanderMessage::Nack(_) => "Nack",
        CommanderMessage::Action(_) => "Action",
        CommanderMessage::RotateRequest(_) => "RotateRequest",
        CommanderMessage::Rotated(_) => "Rotated",
        CommanderMessage::WalletBound(_) => "WalletBound",
        CommanderMessage::KeyAnnouncement(_) => "KeyAnnouncement",
    }
}
const ALL_COMMANDER_VARIANTS: [&str; 11] = [
    "Challenge",
    "Welcome",
    "Reject",
    "StatusUpdate",
    "Ack",
    "Nack",
    "Action",
    "RotateRequest",
    "Rotated",
    "WalletBound",
    "KeyAnnouncement",
];

fn reject_code_name(code: RejectCode) -> &'static str {
    match code {
        RejectCode::VersionMismatch => "VersionMismatch",
        RejectCode::Revoked => "Revoked",
        RejectCode::EnrollTokenInvalid => "EnrollTokenInvalid",
        RejectCode::ProofInvalid => "ProofInvalid",
        RejectCode::WalletProofInvalid => "WalletProofInvalid",
        RejectCode::IdentityMismatch => "IdentityMismatch",
        RejectCode::Malformed => "Malformed",
        RejectCode::Unavailable => "Unavailable",
        RejectCode::KeyRotated => "KeyRotated",
    }
}
const ALL_REJECT_CODES: [RejectCode; 9] = [
    RejectCode::VersionMismatch,
    RejectCode::Revoked,
    RejectCode::EnrollTokenInvalid,
    RejectCode::ProofInvalid,
    RejectCode::WalletProofInvalid,
    RejectCode::IdentityMismatch,
    RejectCode::Malformed,
    RejectCode::Unavailable,
    RejectCode::KeyRotated,
];

fn nack_reason_name(reason: NackReason) -> &'static str {
    match reason {
        NackReason::Replay => "Replay",
        NackReason::BadSignature => "BadSignature",
        NackReason::ForeignNode => "ForeignNode",
        NackReason::NotApproved => "NotApproved",
        NackReason::Malformed => "Malformed",
        NackReason::ClockSkew => "ClockSkew",
    }
}
const ALL_NACK_REASONS: [NackReason; 6] = [
    NackReason::Replay,
    NackReason::BadSignature,
    NackReason::ForeignNode,
    NackReason::NotApproved,
    NackReason::Malformed,
    NackReason::ClockSkew,
];

fn sentry_kind_name(kind: SentryKind) -> &'static str {
    match kind {
        SentryKind::Host => "Host",
        SentryKind::Asic => "Asic",
        SentryKind::Synthetic => "Synthetic",
    }
}
const ALL_SENTRY_KINDS: [SentryKind; 3] =
    [SentryKind::Host, SentryKind::Asic, SentryKind::Synthetic];

fn sentry_status_name(status: SentryStatus) -> &'static str {
    match status {
        SentryStatus::Pending => "Pending",
        SentryStatus::Approved => "Approved",
    }
}
const ALL_SENTRY_STATUSES: [SentryStatus; 2] = [SentryStatus::Pending, SentryStatus::Approved];

fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "Critical",
        Severity::High => "High",
        Severity::Medium => "Medium",
    }
}
const ALL_SEVERITIES: [Severity; 3] = [Severity::Critical, Severity::High, Severity::Medium];

/// Adds the variant and enum-value names found in a heartbeat.
fn covered_in_heartbeat(hb: &Heartbeat, seen: &mut BTreeSet<String>) {
    for device in &hb.body.devices {
        for alert in &device.alerts {
            seen.insert(format!("Severity::{}", severity_name(alert.severity)));
        }
        if !device.metrics.is_empty() && !device.labels.is_empty() && !device.raw.is_empty() {
            seen.insert("DeviceSnapshot::full".into());
        }
    }
}

/// Adds what an action result body covers: both values of `ok` and of
/// `replayed`.
fn covered_in_result(body: &ActionResultBody, seen: &mut BTreeSet<String>) {
    seen.insert(format!("ActionResultBody::replayed={}", body.replayed));
    for outcome in &body.results {
        seen.insert(format!("TargetOutcome::ok={}", outcome.ok));
    }
}

#[test]
fn fixtures_cover_every_variant_and_enum_value() {
    let mut seen = BTreeSet::new();
    for (_, golden) in fixtures() {
        match golden {
            Golden::Sentry(msg) => {
                seen.insert(format!("SentryMessage::{}", sentry_variant_name(&msg)));
                match msg {
                    SentryMessage::Hello(h) => {
                        seen.insert(format!("SentryKind::{}", sentry_kind_name(h.kind)));
                    }
                    SentryMessage::Heartbeat(signed) => {
                        let hb: Heartbeat = codec::decode(&signed.payload).unwrap();
                        covered_in_heartbeat(&hb, &mut seen);
                    }
                    SentryMessage::ActionResult(signed) => {
                        let body: ActionResultBody = codec::decode(&signed.payload).unwrap();
                        covered_in_result(&body, &mut seen);
                    }
                    SentryMessage::RotateKey(signed) => {
                        let _: RotationRequest = codec::decode(&signed.payload).unwrap();
                    }
                    SentryMessage::Proof(_) | SentryMessage::BindWallet(_) => {}
                }
            }
            Golden::Commander(msg) => {
                seen.insert(format!(
                    "CommanderMessage::{}",
                    commander_variant_name(&msg)
                ));
                match msg {
                    CommanderMessage::Welcome(w) => {
                        seen.insert(format!("SentryStatus::{}", sentry_status_name(w.status)));
                    }
                    CommanderMessage::StatusUpdate(s) => {
                        seen.insert(format!("SentryStatus::{}", sentry_status_name(s.status)));
                    }
                    CommanderMessage::Reject(r) => {
                        seen.insert(format!("RejectCode::{}", reject_code_name(r.code)));
                    }
                    CommanderMessage::Nack(n) => {
                        seen.insert(format!("NackReason::{}", nack_reason_name(n.reason)));
                    }
                    CommanderMessage::Action(signed) => {
                        let _: ActionRequest = codec::decode(&signed.payload).unwrap();
                    }
                    CommanderMessage::KeyAnnouncement(signed) => {
                        let _: KeyAnnouncement = codec::decode(&signed.payload).unwrap();
                    }
                    CommanderMessage::Challenge(_)
                    | CommanderMessage::Ack(_)
                    | CommanderMessage::RotateRequest(_)
                    | CommanderMessage::Rotated(_)
                    | CommanderMessage::WalletBound(_) => {}
                }
            }
            Golden::Heartbeat(hb) => {
                seen.insert("Heartbeat".into());
                covered_in_heartbeat(&hb, &mut seen);
            }
            Golden::ActionRequest(_) => {
                seen.insert("ActionRequest".into());
            }
            Golden::ActionResultBody(body) => {
                seen.insert("ActionResultBody".into());
                covered_in_result(&body, &mut seen);
            }
        }
    }

    let mut wanted = BTreeSet::new();
    wanted.extend(ALL_SENTRY_VARIANTS.map(|v| format!("SentryMessage::{v}")));
    wanted.extend(ALL_COMMANDER_VARIANTS.map(|v| format!("CommanderMessage::{v}")));
    wanted.extend(ALL_REJECT_CODES.map(|v| format!("RejectCode::{}", reject_code_name(v))));
    wanted.extend(ALL_NACK_REASONS.map(|v| format!("NackReason::{}", nack_reason_name(v))));
    wanted.extend(ALL_SENTRY_KINDS.map(|v| format!("SentryKind::{}", sentry_kind_name(v))));
    wanted.extend(ALL_SENTRY_STATUSES.map(|v| format!("SentryStatus::{}", sentry_status_name(v))));
    wanted.extend(ALL_SEVERITIES.map(|v| format!("Severity::{}", severity_name(v))));
    wanted.insert("Heartbeat".into());
    wanted.insert("DeviceSnapshot::full".into());
    wanted.insert("ActionRequest".into());
    wanted.insert("ActionResultBody".into());
    for b in [false, true] {
        wanted.insert(format!("ActionResultBody::replayed={b}"));
        wanted.insert(format!("TargetOutcome::ok={b}"));
    }

    let missing: Vec<_> = wanted.difference(&seen).collect();
    assert!(missing.is_empty(), "no golden fixture covers {missing:?}");
}

// ---------------------------------------------------------------------------
// Checking and blessing.

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1")
}

fn blessing() -> bool {
    std::env::var_os("HASHFLEET_BLESS").is_some_and(|v| v == "1")
}

/// Compares `value` with its fixture both ways; returns what is wrong.
fn check<T>(name: &str, value: &T) -> Option<String>
where
    T: bincode::Encode + bincode::Decode<()> + PartialEq + Debug,
{
    let encoded = match codec::encode(value) {
        Ok(bytes) => bytes,
        Err(e) => return Some(format!("{name}: cannot encode: {e}")),
    };
    let path = fixture_dir().join(format!("{name}.hex"));
    if blessing() {
        std::fs::create_dir_all(fixture_dir()).expect("create the fixture directory");
        std::fs::write(&path, format!("{}\n", hex::encode(&encoded))).expect("write a fixture");
        eprintln!("blessed {}", path.display());
    }
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            return Some(format!(
                "{name}: fixture {} is missing ({e}). If `{name}` is a new message, create it with \
                 `HASHFLEET_BLESS=1 cargo test -p hashfleet-shared --test golden` and commit it",
                path.display()
            ))
        }
    };
    let digits: String = text.split_whitespace().collect();
    let golden = match hex::decode(&digits) {
        Ok(bytes) => bytes,
        Err(e) => return Some(format!("{name}: {} is not hex: {e}", path.display())),
    };
    if golden != encoded {
        return Some(format!(
            "{name}: the v1 encoding changed, which breaks every deployed peer.\n  fixture: {}\n  now:     {}",
            hex::encode(&golden),
            hex::encode(&encoded)
        ));
    }
    match codec::decode::<T>(&golden) {
        Ok(decoded) if &decoded == value => None,
        Ok(decoded) => Some(format!(
            "{name}: the fixture decodes to another value:\n  {decoded:?}\n  expected {value:?}"
        )),
        Err(e) => Some(format!("{name}: the fixture does not decode: {e}")),
    }
}

fn check_golden(name: &str, golden: &Golden) -> Option<String> {
    match golden {
        Golden::Sentry(msg) => check(name, msg),
        Golden::Commander(msg) => check(name, msg),
        Golden::Heartbeat(hb) => check(name, hb),
        Golden::ActionRequest(req) => check(name, req),
        Golden::ActionResultBody(body) => check(name, body),
    }
}

fn encode_golden(golden: &Golden) -> Vec<u8> {
    match golden {
        Golden::Sentry(msg) => codec::encode(msg),
        Golden::Commander(msg) => codec::encode(msg),
        Golden::Heartbeat(hb) => codec::encode(hb),
        Golden::ActionRequest(req) => codec::encode(req),
        Golden::ActionResultBody(body) => codec::encode(body),
    }
    .expect("a golden value encodes")
}

#[test]
fn every_v1_message_matches_its_golden_bytes() {
    let fixtures = fixtures();
    let mut names = BTreeSet::new();
    for (name, _) in &fixtures {
        assert!(
            names.insert(name.clone()),
            "fixture name {name} is used twice"
        );
    }
    let failures: Vec<String> = fixtures
        .iter()
        .filter_map(|(name, golden)| check_golden(name, golden))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} golden fixtures failed:\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n")
    );
}

#[test]
fn no_stale_fixture_files() {
    let names: BTreeSet<String> = fixtures().into_iter().map(|(name, _)| name).collect();
    let entries = std::fs::read_dir(fixture_dir())
        .unwrap_or_else(|e| panic!("{}: {e}", fixture_dir().display()));
    let stale: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| {
            f.strip_suffix(".hex")
                .is_none_or(|stem| !names.contains(stem))
        })
        .collect();
    assert!(
        stale.is_empty(),
        "files in tests/golden/v1 that no fixture in golden.rs checks: {stale:?}"
    );
}

// ---------------------------------------------------------------------------
// What the fixtures mean: their signatures verify as the protocol says.

#[test]
fn golden_signatures_verify() {
    let sentry = sentry_id();
    let commander = commander_key().node_id();

    // The commander accepts each golden Hello (version, bounds, wallet proof)
    // and answers with the golden Challenge.
    for kind in ALL_SENTRY_KINDS {
        let h = hello(kind, None, &[]);
        let (pending, ch) = CommanderHandshake::on_hello(
            h.clone(),
            &sentry,
            EXPORTER,
            &commander_key(),
            CHALLENGE_NONCE,
        )
        .expect("golden hello is accepted");
        assert_eq!(ch, challenge());
        assert_eq!(
            pending.on_proof(&proof()).expect("golden proof verifies"),
            h
        );
    }

    // The commander's proof covers the sentry's hello nonce.
    let ch = challenge();
    let payload = sign::challenge_payload(&HELLO_NONCE, &EXPORTER, &sentry);
    sign::verify(&commander, Domain::CommanderProof, &payload, &ch.proof).unwrap();
    // The sentry's proof covers the commander's nonce.
    handshake::check_proof(&sentry, &CHALLENGE_NONCE, &EXPORTER, &proof()).unwrap();

    // The golden heartbeat opens on the sentry's session.
    let signed = heartbeat::seal(&sentry_key(), &full_heartbeat()).unwrap();
    assert_eq!(
        heartbeat::open(&sentry, &signed, 41, T0_MS).unwrap(),
        full_heartbeat()
    );
    assert_eq!(signed.payload, codec::encode(&full_heartbeat()).unwrap());

    // The golden action opens on the golden sentry, which pins the golden
    // commander, until it expires; its payload is the golden request.
    let signed = action::seal_action(&commander_key(), &action_request()).unwrap();
    assert_eq!(signed.payload, codec::encode(&action_request()).unwrap());
    assert_eq!(
        action::open_action(&[commander], &sentry, &signed, T0_MS + 1_000).unwrap(),
        action_request()
    );
    sign::verify(
        &commander,
        Domain::Action,
        &signed.payload,
        &signed.signature,
    )
    .unwrap();
    assert!(matches!(
        action::open_action(&[commander], &sentry, &signed, T0_MS + 3_600_000),
        Err(action::ActionRefusal::Expired { .. })
    ));
    // The golden rotation opens on the golden sentry's session; the golden
    // wallet binding and commander key announcement verify.
    let signed =
        rotation::seal_rotation(&sentry_key(), &next_sentry_key(), &rotation_request()).unwrap();
    assert_eq!(
        rotation::open_rotation(&signed, &sentry, 7, &CHALLENGE_NONCE).unwrap(),
        rotation_request()
    );
    let binding = rotation::bind_wallet(&next_wallet(), &sentry, &CHALLENGE_NONCE);
    rotation::check_wallet_binding(&binding, &sentry, &CHALLENGE_NONCE).unwrap();
    let signed =
        rotation::seal_announcement(&commander_key(), &next_commander_key(), &key_announcement())
            .unwrap();
    assert_eq!(
        rotation::open_announcement(&signed, &commander).unwrap(),
        key_announcement()
    );
    // The golden result opens for the golden sentry.
    let signed = action::seal_result(&sentry_key(), &action_result_body(false)).unwrap();
    assert_eq!(
        signed.payload,
        codec::encode(&action_result_body(false)).unwrap()
    );
    assert_eq!(
        action::open_result(&sentry, &signed).unwrap(),
        action_result_body(false)
    );
    sign::verify(
        &sentry,
        Domain::ActionResult,
        &signed.payload,
        &signed.signature,
    )
    .unwrap();
}

#[test]
fn signing_inputs_are_tag_length_tag_payload() {
    let cases = [
        (Domain::Heartbeat, "hashfleet/v1/heartbeat"),
        (Domain::SentryProof, "hashfleet/v1/sentry-proof"),
        (Domain::CommanderProof, "hashfleet/v1/commander-proof"),
        (Domain::Action, "hashfleet/v1/action"),
        (Domain::ActionResult, "hashfleet/v1/action-result"),
    ];
    for (domain, tag) in cases {
        assert_eq!(domain.tag(), tag);
        let mut want = vec![tag.len() as u8];
        want.extend_from_slice(tag.as_bytes());
        want.extend_from_slice(b"payload");
        assert_eq!(sign::signing_input(domain, b"payload"), want);
    }
    let payload = sign::challenge_payload(&[1u8; 32], &[2u8; 32], &sentry_id());
    assert_eq!(&payload[..32], &[1u8; 32]);
    assert_eq!(&payload[32..64], &[2u8; 32]);
    assert_eq!(&payload[64..], sentry_id().public_key());
    assert_eq!(
        handshake::wallet_proof_message(&sentry_id()),
        sentry_id().to_string().into_bytes()
    );
}

// ---------------------------------------------------------------------------
// Framing.

#[test]
fn a_frame_is_a_big_endian_u32_length_then_the_body() {
    // Ack { seq: 300 }: variant 4, then the varint 300 (0xfb, u16 LE).
    let frame =
        codec::encode_frame(&CommanderMessage::Ack(Ack { seq: 300 }), MAX_FRAME_LEN).unwrap();
    assert_eq!(frame, [0, 0, 0, 4, 0x04, 0xfb, 0x2c, 0x01]);

    for (name, golden) in fixtures() {
        let body = encode_golden(&golden);
        let frame = match &golden {
            Golden::Sentry(msg) => codec::encode_frame(msg, MAX_FRAME_LEN),
            Golden::Commander(msg) => codec::encode_frame(msg, MAX_FRAME_LEN),
            Golden::Heartbeat(hb) => codec::encode_frame(hb, MAX_FRAME_LEN),
            Golden::ActionRequest(req) => codec::encode_frame(req, MAX_FRAME_LEN),
            Golden::ActionResultBody(body) => codec::encode_frame(body, MAX_FRAME_LEN),
        }
        .unwrap();
        assert_eq!(&frame[..4], &(body.len() as u32).to_be_bytes(), "{name}");
        assert_eq!(&frame[4..], &body[..], "{name}");
        // The peer's limit applies to the body.
        assert!(
            match &golden {
                Golden::Sentry(msg) => codec::encode_frame(msg, body.len() - 1),
                Golden::Commander(msg) => codec::encode_frame(msg, body.len() - 1),
                Golden::Heartbeat(hb) => codec::encode_frame(hb, body.len() - 1),
                Golden::ActionRequest(req) => codec::encode_frame(req, body.len() - 1),
                Golden::ActionResultBody(b) => codec::encode_frame(b, body.len() - 1),
            }
            .is_err(),
            "{name}"
        );
    }
}

#[test]
fn golden_frames_split_anywhere_come_back_whole() {
    let fixtures = fixtures();
    let bodies: Vec<Vec<u8>> = fixtures.iter().map(|(_, g)| encode_golden(g)).collect();
    let mut stream = Vec::new();
    for body in &bodies {
        stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
        stream.extend_from_slice(body);
    }
    for chunk in [1, 2, 3, 5, 64, 1000, stream.len()] {
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            decoder.push(piece);
            while let Some(frame) = decoder.next_frame().unwrap() {
                got.push(frame);
            }
        }
        assert_eq!(got, bodies, "chunks of {chunk}");
        assert_eq!(decoder.buffered(), 0);
    }
}
