//! One device in the registry: its tags, derived metrics, status class and
//! the JSON document that queries, the API and CSV export see. Pure: time
//! is passed in.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::store::{AlertRecord, DeviceRecord, DeviceStateRecord};

/// The status classes, from MiningOS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Reporting and working.
    Active,
    /// Reporting, with a high or critical alert, an error state, or
    /// hashrate well below what is expected.
    Degraded,
    /// The sentry reports the device unreachable or off.
    Offline,
    /// Paused or sleeping on purpose.
    Sleeping,
    /// No snapshot for longer than `stale_after`.
    Stale,
    /// No snapshot for longer than `lost_after`.
    Lost,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Active,
        Status::Degraded,
        Status::Offline,
        Status::Sleeping,
        Status::Stale,
        Status::Lost,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Degraded => "degraded",
            Status::Offline => "offline",
            Status::Sleeping => "sleeping",
            Status::Stale => "stale",
            Status::Lost => "lost",
        }
    }

    /// Counts as online in the `online`/`offline` rollups.
    pub fn is_online(&self) -> bool {
        matches!(self, Status::Active | Status::Degraded)
    }
}

/// Thresholds of the status classes.
#[derive(Debug, Clone, Copy)]
pub struct StatusRules {
    pub stale_after_ms: u64,
    pub lost_after_ms: u64,
    /// Below this fraction of `expected_hashrate_hs` a miner is degraded.
    pub degraded_hashrate_ratio: f64,
}

impl Default for StatusRules {
    fn default() -> Self {
        StatusRules {
            stale_after_ms: 90_000,
            lost_after_ms: 900_000,
            degraded_hashrate_ratio: 0.8,
        }
    }
}

/// The state a snapshot reports, before age is considered.
pub fn reported_status(d: &DeviceStateRecord, rules: &StatusRules) -> Status {
    match d.labels.get("state").map(String::as_str) {
        Some("offline") => return Status::Offline,
        Some("sleeping") | Some("paused") => return Status::Sleeping,
        Some("error") => return Status::Degraded,
        _ => {}
    }
    if d.alerts
        .iter()
        .any(|a| a.severity == "critical" || a.severity == "high")
    {
        return Status::Degraded;
    }
    if let (Some(h), Some(e)) = (
        d.metrics.get("hashrate_hs"),
        d.metrics.get("expected_hashrate_hs"),
    ) {
        if *e > 0.0 && *h < e * rules.degraded_hashrate_ratio {
            return Status::Degraded;
        }
    }
    Status::Active
}

/// The status class at `now_ms`.
pub fn status(d: &DeviceStateRecord, now_ms: u64, rules: &StatusRules) -> Status {
    let age = now_ms.saturating_sub(d.last_seen_ms);
    if age > rules.lost_after_ms {
        Status::Lost
    } else if age > rules.stale_after_ms {
        Status::Stale
    } else {
        reported_status(d, rules)
    }
}

fn slug(text: &str) -> String {
    text.trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Automatic tags: `t-<type>`, `t-<type>-<make>`, `sentry-<id>`, and
/// `site-<site>`, `rack-<rack>` from the sentry's config.
pub fn tags(kind: &str, make: &str, sentry_id: u64, site: &str, rack: &str) -> Vec<String> {
    let mut out = vec![format!("t-{}", slug(kind))];
    if !make.trim().is_empty() {
        out.push(format!("t-{}-{}", slug(kind), slug(make)));
    }
    out.push(format!("sentry-{sentry_id:016x}"));
    if !site.trim().is_empty() {
        out.push(format!("site-{}", slug(site)));
    }
    if !rack.trim().is_empty() {
        out.push(format!("rack-{}", slug(rack)));
    }
    out
}

/// Metrics the commander derives when the sentry did not send them.
pub fn derive_metrics(metrics: &mut BTreeMap<String, f64>) {
    if !metrics.contains_key("efficiency_j_per_th") {
        if let (Some(p), Some(h)) = (metrics.get("power_w"), metrics.get("hashrate_hs")) {
            if *h > 0.0 {
                let value = p / (h / 1e12);
                metrics.insert("efficiency_j_per_th".into(), value);
            }
        }
    }
}

/// Folds a new snapshot of a device into its registry state.
pub fn update(
    previous: Option<&DeviceStateRecord>,
    snapshot: &DeviceRecord,
    sentry_id: u64,
    site: &str,
    rack: &str,
    ts_ms: u64,
    received_ms: u64,
) -> DeviceStateRecord {
    let mut metrics = snapshot.metrics.clone();
    derive_metrics(&mut metrics);
    DeviceStateRecord {
        id: snapshot.id.clone(),
        kind: snapshot.kind.clone(),
        make: snapshot.make.clone(),
        model: snapshot.model.clone(),
        firmware: snapshot.firmware.clone(),
        sentry_id,
        site: site.to_string(),
        rack: rack.to_string(),
        tags: tags(&snapshot.kind, &snapshot.make, sentry_id, site, rack),
        metrics,
        labels: snapshot.labels.clone(),
        alerts: snapshot.alerts.clone(),
        raw: snapshot.raw.clone(),
        first_seen_ms: previous.map(|p| p.first_seen_ms).unwrap_or(received_ms),
        last_seen_ms: received_ms,
        last_ts_ms: ts_ms,
    }
}

/// Fields of a device document that a metric may not overwrite.
pub const RESERVED: [&str; 16] = [
    "id",
    "type",
    "make",
    "model",
    "firmware",
    "sentry_id",
    "site",
    "rack",
    "tags",
    "status",
    "last_seen",
    "first_seen",
    "alerts",
    "labels",
    "raw",
    "ts",
];

fn alert_json(a: &AlertRecord) -> Value {
    json!({"code": a.code, "severity": a.severity, "message": a.message})
}

/// The device document: fixed fields, the latest metrics as top-level
/// fields (so `{"hashrate_hs":{"$gt":0}}` addresses them), labels, alerts
/// and the raw reply (JSON when it parses).
pub fn document(d: &DeviceStateRecord, status: Status) -> Value {
    let mut doc = Map::new();
    doc.insert("id".into(), json!(d.id));
    doc.insert("type".into(), json!(d.kind));
    doc.insert("make".into(), json!(d.make));
    doc.insert("model".into(), json!(d.model));
    doc.insert("firmware".into(), json!(d.firmware));
    doc.insert("sentry_id".into(), json!(format!("{:016x}", d.sentry_id)));
    doc.insert("site".into(), json!(d.site));
    doc.insert("rack".into(), json!(d.rack));
    doc.insert("tags".into(), json!(d.tags));
    doc.insert("status".into(), json!(status.as_str()));
    doc.insert("last_seen".into(), json!(d.last_seen_ms));
    doc.insert("first_seen".into(), json!(d.first_seen_ms));
    doc.insert("ts".into(), json!(d.last_ts_ms));
    doc.insert(
        "alerts".into(),
        Value::Array(d.alerts.iter().map(alert_json).collect()),
    );
    doc.insert("labels".into(), json!(d.labels));
    for (name, value) in &d.metrics {
        if !RESERVED.contains(&name.as_str()) {
            doc.insert(name.clone(), json!(value));
        }
    }
    let raw = if d.raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&d.raw).unwrap_or_else(|_| Value::String(d.raw.clone()))
    };
    doc.insert("raw".into(), raw);
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn miner() -> DeviceStateRecord {
        DeviceStateRecord {
            id: "aa:bb".into(),
            kind: "miner".into(),
            make: "Antminer".into(),
            model: "S21".into(),
            firmware: "x".into(),
            sentry_id: 1,
            site: "hel1".into(),
            rack: "r 2".into(),
            tags: vec![],
            metrics: [
                ("hashrate_hs".to_string(), 200e12),
                ("power_w".to_string(), 3500.0),
            ]
            .into(),
            labels: BTreeMap::new(),
            alerts: vec![],
            raw: "{\"a\":1}".into(),
            first_seen_ms: 0,
            last_seen_ms: 1_000,
            last_ts_ms: 1_000,
        }
    }

    #[test]
    fn status_classes_follow_age_state_alerts_and_hashrate() {
        let rules = StatusRules {
            stale_after_ms: 100,
            lost_after_ms: 1_000,
            degraded_hashrate_ratio: 0.8,
        };
        let mut d = miner();
        assert_eq!(status(&d, 1_050, &rules), Status::Active);
        assert_eq!(status(&d, 1_101, &rules), Status::Stale);
        assert_eq!(status(&d, 2_001, &rules), Status::Lost);
        d.labels.insert("state".into(), "sleeping".into());
        assert_eq!(status(&d, 1_000, &rules), Status::Sleeping);
        d.labels.insert("state".into(), "offline".into());
        assert_eq!(status(&d, 1_000, &rules), Status::Offline);
        d.labels.clear();
        d.metrics.insert("expected_hashrate_hs".into(), 300e12);
        assert_eq!(status(&d, 1_000, &rules), Status::Degraded);
        d.metrics.insert("expected_hashrate_hs".into(), 210e12);
        assert_eq!(status(&d, 1_000, &rules), Status::Active);
        d.alerts.push(AlertRecord {
            code: "overheat".into(),
            severity: "critical".into(),
            message: String::new(),
        });
        assert_eq!(status(&d, 1_000, &rules), Status::Degraded);
    }

    #[test]
    fn tags_and_derived_efficiency() {
        assert_eq!(
            tags("miner", "Antminer", 0xab, "Hel 1", "r2"),
            vec![
                "t-miner",
                "t-miner-antminer",
                "sentry-00000000000000ab",
                "site-hel-1",
                "rack-r2"
            ]
        );
        let mut m: BTreeMap<String, f64> = [
            ("hashrate_hs".to_string(), 200e12),
            ("power_w".to_string(), 3500.0),
        ]
        .into();
        derive_metrics(&mut m);
        assert_eq!(m["efficiency_j_per_th"], 17.5);
    }

    #[test]
    fn document_puts_metrics_at_the_top_and_protects_fixed_fields() {
        let mut d = miner();
        d.metrics.insert("status".into(), 5.0);
        let doc = document(&d, Status::Active);
        assert_eq!(doc["hashrate_hs"], json!(200e12));
        assert_eq!(doc["status"], "active");
        assert_eq!(doc["raw"]["a"], 1);
        assert_eq!(doc["sentry_id"], "0000000000000001");
    }
}
