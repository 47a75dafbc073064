//! Approved actions on the wire: the commander seals an [`ActionRequest`]
//! for one sentry, the sentry opens it, runs it at most once and seals an
//! [`ActionResultBody`] that the commander opens. Pure functions: the clock
//! and the keys are arguments.
//!
//! - A request is signed by the commander key under [`Domain::Action`]; a
//!   sentry accepts it only if one of its pinned commander keys verifies it,
//!   it names this sentry (`node_id`), it is within bounds and it has not
//!   expired ([`open_action`], first failure wins).
//! - A result is signed by the sentry's node key under
//!   [`Domain::ActionResult`] ([`seal_result`], [`open_result`]).
//! - Exactly once is the sentry's job (the agent's journal): a resent
//!   request gets the stored result, marked `replayed`.

use std::collections::BTreeSet;

use crate::codec::{self, CodecError};
use crate::node_id::NodeId;
use crate::node_key::NodeKey;
use crate::sign::{self, Domain};
use crate::wire::{
    ActionRequest, ActionResultBody, CommanderMessage, SentryMessage, SignedAction,
    SignedActionResult, TargetOutcome,
};

/// Longest `action_id`, in bytes.
pub const MAX_ACTION_ID_LEN: usize = 128;
/// Longest `method`, in bytes.
pub const MAX_METHOD_LEN: usize = 64;
/// Longest `params` JSON text, in bytes (64 KiB).
pub const MAX_PARAMS_LEN: usize = 64 * 1024;
/// Most targets in one request (and outcomes in one result).
pub const MAX_TARGETS: usize = 10_000;
/// Longest target (device id), in bytes.
pub const MAX_TARGET_LEN: usize = 128;
/// Most bytes of all targets together (512 KiB): with this bound every
/// valid request's result fits one frame, however many targets it has.
pub const MAX_TARGET_BYTES: usize = 512 * 1024;
/// Most voters in one request.
pub const MAX_VOTERS: usize = 1_000;
/// Longest voter name, in bytes.
pub const MAX_VOTER_LEN: usize = 128;
/// Longest time between `issued_at_ms` and `expires_at_ms` (30 days). It
/// bounds how long a sentry must remember an executed action id.
pub const MAX_LIFETIME_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Why a sentry refuses an action request. The `Display` text says what to
/// do; the sentry sends it back as `refused: <text>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionRefusal {
    #[error("malformed action request ({0}): the commander sent something this sentry cannot accept; check that the commander and the sentry run compatible versions")]
    Malformed(String),
    #[error("the action is not signed by a commander key this sentry pins: pin the commander's current key (the `keys` of its [[commander]] entry, or --commander-key) or have the commander re-sign the action")]
    BadSignature,
    #[error("the action is for sentry {for_node}, not this one ({me}): the commander must send it to the sentry it names")]
    WrongSentry { for_node: NodeId, me: NodeId },
    #[error("the action expired at {expires_at_ms} ms, and it is now {now_ms} ms: push it again (and check both clocks if it should not have expired)")]
    Expired { expires_at_ms: u64, now_ms: u64 },
}

impl ActionRefusal {
    /// A short code for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            ActionRefusal::Malformed(_) => "malformed",
            ActionRefusal::BadSignature => "bad_signature",
            ActionRefusal::WrongSentry { .. } => "wrong_sentry",
            ActionRefusal::Expired { .. } => "expired",
        }
    }
}

/// Why a commander refuses an action result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultRefusal {
    #[error("malformed action result ({0}): check that the commander and the sentry run compatible versions")]
    Malformed(String),
    #[error("the action result names sentry {signed_for}, but it came from sentry {session}")]
    ForeignNode { signed_for: NodeId, session: NodeId },
    #[error("the action result's signature does not verify for sentry {0}")]
    BadSignature(NodeId),
}

/// Why a request or result could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("action request out of bounds: {0}")]
    OutOfBounds(String),
    #[error("{0}; split the targets over several actions")]
    Codec(#[from] CodecError),
}

/// Checks every bound of a request; `Err` says which one is broken.
pub fn check_request(req: &ActionRequest) -> Result<(), String> {
    if req.action_id.is_empty() || req.action_id.len() > MAX_ACTION_ID_LEN {
        return Err(format!(
            "action_id must be 1 to {MAX_ACTION_ID_LEN} bytes, not {}",
            req.action_id.len()
        ));
    }
    if req.method.is_empty() || req.method.len() > MAX_METHOD_LEN {
        return Err(format!(
            "method must be 1 to {MAX_METHOD_LEN} bytes, not {}",
            req.method.len()
        ));
    }
    if req.params.len() > MAX_PARAMS_LEN {
        return Err(format!(
            "params are {} bytes, more than {MAX_PARAMS_LEN}",
            req.params.len()
        ));
    }
    match serde_json::from_str::<serde_json::Value>(&req.params) {
        Ok(serde_json::Value::Array(_)) => {}
        Ok(_) => return Err("params must be a JSON array".into()),
        Err(e) => return Err(format!("params are not JSON: {e}")),
    }
    check_targets(&req.targets)?;
    if req.voters.len() > MAX_VOTERS {
        return Err(format!(
            "{} voters, more than {MAX_VOTERS}",
            req.voters.len()
        ));
    }
    if let Some(v) = req.voters.iter().find(|v| v.len() > MAX_VOTER_LEN) {
        return Err(format!(
            "a voter name is {} bytes, more than {MAX_VOTER_LEN}",
            v.len()
        ));
    }
    if req.expires_at_ms <= req.issued_at_ms {
        return Err("expires_at_ms must be after issued_at_ms".into());
    }
    if req.expires_at_ms - req.issued_at_ms > MAX_LIFETIME_MS {
        return Err(format!(
            "the action lives {} ms, more than {MAX_LIFETIME_MS} ms (30 days)",
            req.expires_at_ms - req.issued_at_ms
        ));
    }
    Ok(())
}

fn check_targets(targets: &[String]) -> Result<(), String> {
    if targets.is_empty() {
        return Err("no targets".into());
    }
    if targets.len() > MAX_TARGETS {
        return Err(format!(
            "{} targets, more than {MAX_TARGETS}",
            targets.len()
        ));
    }
    if let Some(t) = targets
        .iter()
        .find(|t| t.is_empty() || t.len() > MAX_TARGET_LEN)
    {
        return Err(format!(
            "a target is {} bytes; targets are 1 to {MAX_TARGET_LEN} bytes",
            t.len()
        ));
    }
    let total: usize = targets.iter().map(String::len).sum();
    if total > MAX_TARGET_BYTES {
        return Err(format!(
            "the targets take {total} bytes, more than {MAX_TARGET_BYTES}"
        ));
    }
    Ok(())
}

/// The targets of a request without repeats, in first-seen order: each is
/// executed once and gets one outcome.
pub fn distinct_targets(targets: &[String]) -> Vec<&str> {
    let mut seen = BTreeSet::new();
    targets
        .iter()
        .filter(|t| seen.insert(t.as_str()))
        .map(String::as_str)
        .collect()
}

/// Encodes and signs a request with the commander key. Refuses a request
/// a sentry would refuse as malformed, and one whose
/// `CommanderMessage::Action` would not fit a frame.
pub fn seal_action(
    commander_key: &NodeKey,
    request: &ActionRequest,
) -> Result<SignedAction, SealError> {
    check_request(request).map_err(SealError::OutOfBounds)?;
    let payload = codec::encode(request)?;
    let signature = sign::sign(commander_key, Domain::Action, &payload);
    let signed = SignedAction { payload, signature };
    let message = CommanderMessage::Action(signed);
    codec::encode(&message)?;
    let CommanderMessage::Action(signed) = message else {
        unreachable!("built above")
    };
    Ok(signed)
}

/// Opens a request on sentry `me`, whose pinned commander keys are `pins`.
/// Checks, first failure wins: the payload decodes (`Malformed`), one of
/// `pins` signed it (`BadSignature`), it names `me` (`WrongSentry`), its
/// fields are within bounds (`Malformed`), `now_ms < expires_at_ms`
/// (`Expired`). So `Expired` means everything else was fine.
pub fn open_action(
    pins: &[NodeId],
    me: &NodeId,
    signed: &SignedAction,
    now_ms: u64,
) -> Result<ActionRequest, ActionRefusal> {
    let request: ActionRequest = codec::decode(&signed.payload)
        .map_err(|e| ActionRefusal::Malformed(format!("the payload does not decode: {e}")))?;
    let signed_by_pin = pins
        .iter()
        .any(|pin| sign::verify(pin, Domain::Action, &signed.payload, &signed.signature).is_ok());
    if !signed_by_pin {
        return Err(ActionRefusal::BadSignature);
    }
    if &request.node_id != me {
        return Err(ActionRefusal::WrongSentry {
            for_node: request.node_id,
            me: *me,
        });
    }
    check_request(&request).map_err(ActionRefusal::Malformed)?;
    if now_ms >= request.expires_at_ms {
        return Err(ActionRefusal::Expired {
            expires_at_ms: request.expires_at_ms,
            now_ms,
        });
    }
    Ok(request)
}

/// The result a sentry sends for a refused request: every distinct target
/// `ok = false`, `detail = "refused: <reason>"`. `None` when the payload
/// does not decode, or its id or targets are out of bounds: then there is
/// nothing to answer (the sentry logs and counts it).
pub fn refusal_result(
    me: &NodeId,
    signed: &SignedAction,
    refusal: &ActionRefusal,
    now_ms: u64,
) -> Option<ActionResultBody> {
    let request: ActionRequest = codec::decode(&signed.payload).ok()?;
    if request.action_id.is_empty() || request.action_id.len() > MAX_ACTION_ID_LEN {
        return None;
    }
    check_targets(&request.targets).ok()?;
    let detail = format!("refused: {refusal}");
    Some(ActionResultBody {
        action_id: request.action_id.clone(),
        node_id: *me,
        results: distinct_targets(&request.targets)
            .into_iter()
            .map(|target| TargetOutcome {
                target: target.to_string(),
                ok: false,
                detail: detail.clone(),
            })
            .collect(),
        executed_at_ms: now_ms,
        replayed: false,
    })
}

/// Detail budgets, in bytes, tried in turn until a result fits a frame.
const DETAIL_BUDGETS: [usize; 5] = [16 * 1024, 4 * 1024, 512, 64, 0];

/// Shortens every detail longer than `budget` bytes: an `ok` detail (JSON)
/// becomes `{"truncated_bytes":N}`, an error message is cut at a character
/// boundary and ends with `…`.
pub fn shrink_details(body: &mut ActionResultBody, budget: usize) {
    for outcome in &mut body.results {
        let len = outcome.detail.len();
        if len <= budget {
            continue;
        }
        if outcome.ok {
            outcome.detail = format!("{{\"truncated_bytes\":{len}}}");
        } else {
            let mut cut = budget;
            while !outcome.detail.is_char_boundary(cut) {
                cut -= 1;
            }
            outcome.detail.truncate(cut);
            outcome.detail.push('…');
        }
    }
}

/// Encodes and signs a result with the sentry's node key. If the
/// `SentryMessage::ActionResult` would not fit a frame, details are
/// shortened ([`shrink_details`]) until it does, so the payload may hold
/// less than `body`; the sentry's journal keeps the whole outcome.
pub fn seal_result(
    node_key: &NodeKey,
    body: &ActionResultBody,
) -> Result<SignedActionResult, SealError> {
    let mut body = body.clone();
    let mut budgets = DETAIL_BUDGETS.iter();
    loop {
        let attempt = codec::encode(&body).and_then(|payload| {
            let signature = sign::sign(node_key, Domain::ActionResult, &payload);
            let message = SentryMessage::ActionResult(SignedActionResult { payload, signature });
            codec::encode(&message)?;
            match message {
                SentryMessage::ActionResult(signed) => Ok(signed),
                _ => unreachable!("built above"),
            }
        });
        match (attempt, budgets.next()) {
            (Ok(signed), _) => return Ok(signed),
            (Err(CodecError::OverBudget { .. } | CodecError::FrameTooLarge { .. }), Some(&b)) => {
                shrink_details(&mut body, b)
            }
            (Err(e), _) => return Err(SealError::Codec(e)),
        }
    }
}

/// Opens a result that came from sentry `sentry` (the session's key).
/// Checks, first failure wins: the payload decodes and is within bounds
/// (`Malformed`), it names `sentry` (`ForeignNode`), `sentry` signed it
/// (`BadSignature`).
pub fn open_result(
    sentry: &NodeId,
    signed: &SignedActionResult,
) -> Result<ActionResultBody, ResultRefusal> {
    let body: ActionResultBody = codec::decode(&signed.payload)
        .map_err(|e| ResultRefusal::Malformed(format!("the payload does not decode: {e}")))?;
    if body.action_id.is_empty() || body.action_id.len() > MAX_ACTION_ID_LEN {
        return Err(ResultRefusal::Malformed(format!(
            "action_id must be 1 to {MAX_ACTION_ID_LEN} bytes, not {}",
            body.action_id.len()
        )));
    }
    if body.results.len() > MAX_TARGETS {
        return Err(ResultRefusal::Malformed(format!(
            "{} outcomes, more than {MAX_TARGETS}",
            body.results.len()
        )));
    }
    if &body.node_id != sentry {
        return Err(ResultRefusal::ForeignNode {
            signed_for: body.node_id,
            session: *sentry,
        });
    }
    sign::verify(
        sentry,
        Domain::ActionResult,
        &signed.payload,
        &signed.signature,
    )
    .map_err(|_| ResultRefusal::BadSignature(*sentry))?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_767_225_600_000;

    fn commander() -> NodeKey {
        NodeKey::from_seed(&[3u8; 32])
    }

    fn sentry() -> NodeKey {
        NodeKey::from_seed(&[1u8; 32])
    }

    fn request() -> ActionRequest {
        ActionRequest {
            action_id: "act-1".into(),
            node_id: sentry().node_id(),
            method: "runHook".into(),
            params: r#"["backup"]"#.into(),
            targets: vec!["00000000000000a1".into()],
            voters: vec!["alice".into(), "bob".into()],
            issued_at_ms: NOW - 1_000,
            expires_at_ms: NOW + 60_000,
        }
    }

    fn open(signed: &SignedAction, now: u64) -> Result<ActionRequest, ActionRefusal> {
        open_action(&[commander().node_id()], &sentry().node_id(), signed, now)
    }

    #[test]
    fn a_sealed_request_opens_on_its_sentry() {
        let signed = seal_action(&commander(), &request()).unwrap();
        assert_eq!(open(&signed, NOW).unwrap(), request());
        // Any pinned key will do (a commander rotating its key).
        let other = NodeKey::from_seed(&[8u8; 32]).node_id();
        let pins = [other, commander().node_id()];
        assert!(open_action(&pins, &sentry().node_id(), &signed, NOW).is_ok());
    }

    #[test]
    fn unsigned_and_mis_signed_requests_are_refused() {
        let mut unsigned = seal_action(&commander(), &request()).unwrap();
        unsigned.signature = [0u8; 64];
        assert_eq!(open(&unsigned, NOW), Err(ActionRefusal::BadSignature));

        let mut tampered = seal_action(&commander(), &request()).unwrap();
        tampered.signature[5] ^= 1;
        assert_eq!(open(&tampered, NOW), Err(ActionRefusal::BadSignature));

        // Signed by a key the sentry does not pin.
        let stranger = NodeKey::from_seed(&[9u8; 32]);
        let foreign = seal_action(&stranger, &request()).unwrap();
        assert_eq!(open(&foreign, NOW), Err(ActionRefusal::BadSignature));

        // A commander signature for another purpose does not count.
        let mut wrong_domain = seal_action(&commander(), &request()).unwrap();
        wrong_domain.signature =
            sign::sign(&commander(), Domain::CommanderProof, &wrong_domain.payload);
        assert_eq!(open(&wrong_domain, NOW), Err(ActionRefusal::BadSignature));

        // Nothing pinned: nothing verifies.
        let signed = seal_action(&commander(), &request()).unwrap();
        assert_eq!(
            open_action(&[], &sentry().node_id(), &signed, NOW),
            Err(ActionRefusal::BadSignature)
        );
        let text = ActionRefusal::BadSignature.to_string();
        assert!(text.contains("pin"), "{text}");
    }

    #[test]
    fn a_request_for_another_sentry_is_refused() {
        let mut req = request();
        let other = NodeKey::from_seed(&[7u8; 32]).node_id();
        req.node_id = other;
        let signed = seal_action(&commander(), &req).unwrap();
        assert_eq!(
            open(&signed, NOW),
            Err(ActionRefusal::WrongSentry {
                for_node: other,
                me: sentry().node_id()
            })
        );
    }

    #[test]
    fn an_expired_request_is_refused() {
        let signed = seal_action(&commander(), &request()).unwrap();
        let exp = request().expires_at_ms;
        assert!(open(&signed, exp - 1).is_ok());
        let refusal = open(&signed, exp).unwrap_err();
        assert_eq!(
            refusal,
            ActionRefusal::Expired {
                expires_at_ms: exp,
                now_ms: exp
            }
        );
        assert!(refusal.to_string().contains("push it again"), "{refusal}");
    }

    #[test]
    fn malformed_requests_are_refused() {
        let garbage = SignedAction {
            payload: vec![0xff; 10],
            signature: [0u8; 64],
        };
        assert!(matches!(
            open(&garbage, NOW),
            Err(ActionRefusal::Malformed(_))
        ));
        assert!(refusal_result(
            &sentry().node_id(),
            &garbage,
            &ActionRefusal::BadSignature,
            NOW
        )
        .is_none());

        type Change = Box<dyn Fn(&mut ActionRequest)>;
        let cases: Vec<(&str, Change)> = vec![
            ("action_id", Box::new(|r| r.action_id = "x".repeat(129))),
            ("action_id", Box::new(|r| r.action_id.clear())),
            ("method", Box::new(|r| r.method = "m".repeat(65))),
            (
                "params",
                Box::new(|r| r.params = format!("[\"{}\"]", "p".repeat(64 * 1024))),
            ),
            ("JSON array", Box::new(|r| r.params = r#"{"a":1}"#.into())),
            ("not JSON", Box::new(|r| r.params = "[".into())),
            (
                "targets",
                Box::new(|r| r.targets = vec!["t".into(); 10_001]),
            ),
            ("no targets", Box::new(|r| r.targets.clear())),
            ("target is", Box::new(|r| r.targets = vec!["t".repeat(129)])),
            ("voters", Box::new(|r| r.voters = vec!["v".into(); 1_001])),
            (
                "after issued",
                Box::new(|r| r.expires_at_ms = r.issued_at_ms),
            ),
            (
                "30 days",
                Box::new(|r| r.expires_at_ms = r.issued_at_ms + MAX_LIFETIME_MS + 1),
            ),
        ];
        for (what, change) in cases {
            let mut req = request();
            change(&mut req);
            // The commander cannot seal it…
            let err = seal_action(&commander(), &req).unwrap_err();
            assert!(err.to_string().contains(what), "{what}: {err}");
            // …and a sentry refuses it when it comes signed anyway.
            let payload = codec::encode(&req).unwrap();
            let signed = SignedAction {
                signature: sign::sign(&commander(), Domain::Action, &payload),
                payload,
            };
            match open(&signed, NOW) {
                Err(ActionRefusal::Malformed(reason)) => {
                    assert!(reason.contains(what), "{what}: {reason}")
                }
                other => panic!("{what}: {other:?}"),
            }
        }
        // Bounds hold exactly at the limit.
        let mut req = request();
        req.action_id = "x".repeat(MAX_ACTION_ID_LEN);
        req.method = "m".repeat(MAX_METHOD_LEN);
        req.targets = vec!["t".repeat(MAX_TARGET_LEN)];
        req.expires_at_ms = req.issued_at_ms + MAX_LIFETIME_MS;
        let signed = seal_action(&commander(), &req).unwrap();
        assert!(open(&signed, NOW).is_ok());
    }

    #[test]
    fn a_refusal_answers_every_distinct_target() {
        let mut req = request();
        req.targets = vec!["a".into(), "b".into(), "a".into()];
        let signed = seal_action(&commander(), &req).unwrap();
        let refusal = ActionRefusal::Expired {
            expires_at_ms: 1,
            now_ms: 2,
        };
        let body = refusal_result(&sentry().node_id(), &signed, &refusal, NOW).unwrap();
        assert_eq!(body.action_id, "act-1");
        assert_eq!(body.node_id, sentry().node_id());
        assert!(!body.replayed);
        let targets: Vec<_> = body.results.iter().map(|o| o.target.as_str()).collect();
        assert_eq!(targets, ["a", "b"]);
        for o in &body.results {
            assert!(!o.ok);
            assert!(
                o.detail.starts_with("refused: the action expired"),
                "{}",
                o.detail
            );
        }
    }

    fn body(sentry: &NodeKey) -> ActionResultBody {
        ActionResultBody {
            action_id: "act-1".into(),
            node_id: sentry.node_id(),
            results: vec![
                TargetOutcome {
                    target: "00000000000000a1".into(),
                    ok: true,
                    detail: r#"{"exit_code":0}"#.into(),
                },
                TargetOutcome {
                    target: "gpu-1".into(),
                    ok: false,
                    detail: "sentry-host does not support `pauseMiner`".into(),
                },
            ],
            executed_at_ms: NOW,
            replayed: false,
        }
    }

    #[test]
    fn a_sealed_result_opens_for_its_sentry_only() {
        let signed = seal_result(&sentry(), &body(&sentry())).unwrap();
        assert_eq!(
            open_result(&sentry().node_id(), &signed).unwrap(),
            body(&sentry())
        );

        // Another node's result, about itself, on this sentry's session.
        let other = NodeKey::from_seed(&[7u8; 32]);
        let foreign = seal_result(&other, &body(&other)).unwrap();
        assert_eq!(
            open_result(&sentry().node_id(), &foreign),
            Err(ResultRefusal::ForeignNode {
                signed_for: other.node_id(),
                session: sentry().node_id()
            })
        );
        // Another node's signature over a body that names this sentry.
        let forged = seal_result(&other, &body(&sentry())).unwrap();
        assert_eq!(
            open_result(&sentry().node_id(), &forged),
            Err(ResultRefusal::BadSignature(sentry().node_id()))
        );
        // A request signature is not a result signature.
        let mut wrong_domain = signed.clone();
        wrong_domain.signature = sign::sign(&sentry(), Domain::Action, &signed.payload);
        assert!(matches!(
            open_result(&sentry().node_id(), &wrong_domain),
            Err(ResultRefusal::BadSignature(_))
        ));
        let garbage = SignedActionResult {
            payload: vec![1, 2, 3],
            signature: [0u8; 64],
        };
        assert!(matches!(
            open_result(&sentry().node_id(), &garbage),
            Err(ResultRefusal::Malformed(_))
        ));
    }

    #[test]
    fn a_large_result_is_shrunk_to_fit_a_frame() {
        // 10 000 targets of 52 bytes (within MAX_TARGET_BYTES), each with a
        // 4 KiB detail: 40 MB of details cannot go out as they are.
        let mut big = body(&sentry());
        big.results = (0..MAX_TARGETS)
            .map(|i| TargetOutcome {
                target: format!("{i:052}"),
                ok: i % 2 == 0,
                detail: if i % 2 == 0 {
                    format!("{{\"out\":\"{}\"}}", "x".repeat(4096))
                } else {
                    "é".repeat(2048)
                },
            })
            .collect();
        let signed = seal_result(&sentry(), &big).unwrap();
        let opened = open_result(&sentry().node_id(), &signed).unwrap();
        assert_eq!(opened.results.len(), MAX_TARGETS);
        assert!(opened.results[0]
            .detail
            .starts_with("{\"truncated_bytes\":"));
        assert!(opened.results[1].detail.ends_with('…'));
        for (a, b) in opened.results.iter().zip(&big.results) {
            assert_eq!((&a.target, a.ok), (&b.target, b.ok));
        }
    }

    #[test]
    fn distinct_targets_keep_first_seen_order() {
        let t: Vec<String> = ["b", "a", "b", "c", "a"].map(String::from).to_vec();
        assert_eq!(distinct_targets(&t), ["b", "a", "c"]);
    }
}
