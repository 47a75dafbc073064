//! Wire snapshots → store records: the one place heartbeat contents cross
//! from the protocol into the store.

use hashfleet_shared::wire::{Heartbeat, Severity};

use crate::store::{AlertRecord, DeviceRecord, HeartbeatRecord};

/// Device ids, kinds and names longer than this are cut.
const MAX_NAME: usize = 128;

fn bounded(mut s: String) -> String {
    if s.len() > MAX_NAME {
        let mut cut = MAX_NAME;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

pub fn severity_str(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::High => "high",
        Severity::Medium => "medium",
    }
}

/// The record of a verified heartbeat. A `host` device without an id gets
/// the sentry id: a host is keyed by its sentry. Non-finite numbers are
/// dropped (they have no JSON form and no meaning in a rollup).
pub fn heartbeat_record(hb: Heartbeat, sentry_id: u64, received_ms: u64) -> HeartbeatRecord {
    let devices = hb
        .body
        .devices
        .into_iter()
        .map(|d| {
            let id = if d.id.is_empty() && d.kind == "host" {
                format!("{sentry_id:016x}")
            } else {
                bounded(d.id)
            };
            DeviceRecord {
                id,
                kind: bounded(d.kind),
                make: bounded(d.make),
                model: bounded(d.model),
                firmware: bounded(d.firmware),
                metrics: d
                    .metrics
                    .into_iter()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(k, v)| (bounded(k), v))
                    .collect(),
                labels: d.labels,
                alerts: d
                    .alerts
                    .into_iter()
                    .map(|a| AlertRecord {
                        code: bounded(a.code),
                        severity: severity_str(a.severity).to_string(),
                        message: a.message,
                    })
                    .collect(),
                raw: d.raw,
            }
        })
        .collect();
    HeartbeatRecord {
        seq: hb.seq,
        ts_ms: hb.ts_ms,
        received_ms,
        devices,
    }
}
