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
use crate::wire::{
    DeviceAlert, DeviceSnapshot, Heartbeat, HeartbeatBody, NackReason, Severity, SignedHeartbeat,
};

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
    let heartbeat = decode_for(session, signed)?;
    sign::verify(
        session,
        Domain::Heartbeat,
        &signed.payload,
        &signed.signature,
    )
    .map_err(|_| NackReason::BadSignature)?;
    check_fresh(&heartbeat, last_seq, now_ms)?;
    Ok(heartbeat)
}

/// The checks [`open`] makes before the signature: the payload decodes and
/// names the session's node. A caller that checks signatures in batches
/// runs this, then the signature, then [`check_fresh`]: the same order.
pub fn decode_for(session: &NodeId, signed: &SignedHeartbeat) -> Result<Heartbeat, NackReason> {
    let heartbeat: Heartbeat = codec::decode(&signed.payload).map_err(|_| NackReason::Malformed)?;
    if &heartbeat.node_id != session {
        return Err(NackReason::ForeignNode);
    }
    Ok(heartbeat)
}

/// The checks [`open`] makes after the signature: the seq and the clock.
pub fn check_fresh(heartbeat: &Heartbeat, last_seq: u64, now_ms: u64) -> Result<(), NackReason> {
    accept_seq(last_seq, heartbeat.seq)?;
    if heartbeat.ts_ms > now_ms.saturating_add(MAX_FUTURE_SKEW_MS) {
        return Err(NackReason::ClockSkew);
    }
    Ok(())
}

/// The replay rule: a seq must be strictly above the last accepted one.
pub fn accept_seq(last_seq: u64, seq: u64) -> Result<(), NackReason> {
    if seq > last_seq {
        Ok(())
    } else {
        Err(NackReason::Replay)
    }
}

/// What one heartbeat's devices may cost, in wire bytes and in the decode
/// budget bincode charges (in-memory sizes). Well under
/// [`codec::MAX_FRAME_LEN`], so the envelope and signature always fit.
pub const BODY_BUDGET: usize = codec::MAX_FRAME_LEN / 2;

/// Longest `raw` a device keeps when its snapshot alone is over budget.
const RAW_WHEN_SHRUNK: usize = 1024;

/// A conservative cost of one device: the larger of its wire size and
/// what decoding it charges against the budget (a `String` or map entry
/// costs its in-memory size plus its bytes).
pub fn device_cost(d: &DeviceSnapshot) -> usize {
    let strings = d.id.len() + d.kind.len() + d.make.len() + d.model.len() + d.firmware.len();
    let metrics: usize = d.metrics.keys().map(|k| 56 + k.len()).sum();
    let labels: usize = d.labels.iter().map(|(k, v)| 72 + k.len() + v.len()).sum();
    let alerts: usize = d
        .alerts
        .iter()
        .map(|a| 64 + a.code.len() + a.message.len())
        .sum();
    256 + strings + metrics + labels + alerts + d.raw.len()
}

/// Splits a body into bodies of at most [`BODY_BUDGET`] each, keeping the
/// device order. A device over budget on its own is shrunk (see
/// [`shrink_device`]) so that it still fits. An empty body stays one empty
/// body: a sentry with no devices still heartbeats.
pub fn split_body(body: HeartbeatBody) -> Vec<HeartbeatBody> {
    let mut out = Vec::new();
    let mut current = HeartbeatBody::default();
    let mut used = 0usize;
    for mut device in body.devices {
        let mut cost = device_cost(&device);
        if cost > BODY_BUDGET {
            shrink_device(&mut device);
            cost = device_cost(&device);
        }
        if used + cost > BODY_BUDGET && !current.devices.is_empty() {
            out.push(std::mem::take(&mut current));
            used = 0;
        }
        used += cost;
        current.devices.push(device);
    }
    if !current.devices.is_empty() || out.is_empty() {
        out.push(current);
    }
    out
}

/// Cuts a device's snapshot down to something that always fits: the raw
/// reply is truncated, and if that is not enough the labels and metrics go
/// too, with an alert saying so.
pub fn shrink_device(d: &mut DeviceSnapshot) {
    if d.raw.len() > RAW_WHEN_SHRUNK {
        let mut cut = RAW_WHEN_SHRUNK;
        while !d.raw.is_char_boundary(cut) {
            cut -= 1;
        }
        d.raw.truncate(cut);
    }
    if device_cost(d) <= BODY_BUDGET {
        return;
    }
    let before = (d.metrics.len(), d.labels.len(), d.alerts.len());
    d.metrics.clear();
    d.labels.clear();
    d.alerts.truncate(16);
    for a in &mut d.alerts {
        a.message.truncate(256);
        a.code.truncate(64);
    }
    for s in [
        &mut d.id,
        &mut d.kind,
        &mut d.make,
        &mut d.model,
        &mut d.firmware,
    ] {
        if s.len() > 256 {
            let mut cut = 256;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
    }
    d.alerts.push(DeviceAlert {
        code: "snapshot_too_large".into(),
        severity: Severity::Medium,
        message: format!(
            "the snapshot was too large for one heartbeat: {} metrics, {} labels and {} alerts dropped",
            before.0, before.1, before.2
        ),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{HeartbeatBody, SentryMessage};

    fn miner(i: usize, raw: usize) -> DeviceSnapshot {
        DeviceSnapshot {
            id: format!("02:48:7f:01:{:02x}:{:02x}", i / 256, i % 256),
            kind: "miner".into(),
            make: "AntMiner".into(),
            model: "S21".into(),
            firmware: "2024".into(),
            metrics: (0..40)
                .map(|m| (format!("board_{m}_temp_c"), m as f64))
                .collect(),
            labels: (0..12)
                .map(|l| {
                    (
                        format!("pool_{l}_url"),
                        "stratum+tcp://pool.example:3333".into(),
                    )
                })
                .collect(),
            alerts: vec![],
            raw: "x".repeat(raw),
        }
    }

    #[test]
    fn five_thousand_miners_split_into_frames_that_encode_and_decode() {
        let key = NodeKey::generate();
        let body = HeartbeatBody {
            devices: (0..5000).map(|i| miner(i, 2000)).collect(),
        };
        let parts = split_body(body);
        assert!(parts.len() > 10, "{} parts", parts.len());
        let mut seen = 0;
        for (n, part) in parts.iter().enumerate() {
            let hb = Heartbeat {
                node_id: key.node_id(),
                seq: n as u64 + 1,
                ts_ms: 1,
                body: part.clone(),
            };
            let signed = seal(&key, &hb).expect("each part seals");
            let frame =
                codec::encode(&SentryMessage::Heartbeat(signed)).expect("each part encodes");
            assert!(frame.len() < codec::MAX_FRAME_LEN);
            // Order is kept across parts.
            assert_eq!(part.devices[0].id, miner(seen, 0).id);
            seen += part.devices.len();
        }
        assert_eq!(seen, 5000);
    }

    #[test]
    fn a_device_too_large_alone_is_shrunk_with_an_alert() {
        let mut huge = miner(1, 3 * codec::MAX_FRAME_LEN);
        huge.metrics = (0..40_000).map(|m| (format!("m{m}"), 1.0)).collect();
        let parts = split_body(HeartbeatBody {
            devices: vec![miner(0, 10), huge, miner(2, 10)],
        });
        let all: Vec<&DeviceSnapshot> = parts.iter().flat_map(|p| &p.devices).collect();
        assert_eq!(all.len(), 3);
        assert!(all[1].raw.len() <= 1024);
        assert!(all[1].metrics.is_empty());
        assert_eq!(all[1].alerts.last().unwrap().code, "snapshot_too_large");
        for p in &parts {
            assert!(codec::encode(p).is_ok());
        }
        // Nothing to send still makes one (empty) heartbeat.
        assert_eq!(split_body(HeartbeatBody::default()).len(), 1);
    }

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
