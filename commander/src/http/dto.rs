//! HTTP shapes. Built from store records; never stored.

use std::collections::BTreeMap;

use hashfleet_shared::{NodeId, WalletAddress};
use serde::{Deserialize, Serialize};

use crate::store::{HeartbeatRecord, ProgressRecord, SentryRecord};

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

pub fn sentry_id_text(id: u64) -> String {
    format!("{id:016x}")
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SentryDto {
    pub sentry_id: String,
    pub node_id: String,
    pub node_id_history: Vec<String>,
    pub wallet_address: String,
    pub kind: String,
    pub status: String,
    pub agent_version: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: String,
    pub last_seen: Option<String>,
    pub last_seq: u64,
    pub heartbeats: u64,
    pub connected: bool,
}

impl SentryDto {
    pub fn new(r: &SentryRecord, p: &ProgressRecord, connected: bool) -> Self {
        SentryDto {
            sentry_id: sentry_id_text(r.sentry_id),
            node_id: NodeId::from_public_key(r.node_key).to_string(),
            node_id_history: r
                .previous_node_keys
                .iter()
                .map(|k| NodeId::from_public_key(*k).to_string())
                .collect(),
            wallet_address: WalletAddress(r.wallet_address).to_string(),
            kind: r.kind.clone(),
            status: r.state.as_str().to_string(),
            agent_version: r.agent_version.clone(),
            labels: r.labels.clone(),
            created_at: rfc3339_ms(r.created_ms),
            last_seen: (p.last_seen_ms > 0).then(|| rfc3339_ms(p.last_seen_ms)),
            last_seq: p.last_seq,
            heartbeats: p.heartbeats,
            connected,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HeartbeatDto {
    pub seq: u64,
    pub ts_ms: u64,
    pub received_ms: u64,
    pub snapshot: SnapshotDto,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotDto {
    pub devices: Vec<DeviceDto>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceDto {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub make: String,
    pub model: String,
    pub firmware: String,
    pub metrics: BTreeMap<String, f64>,
    pub labels: BTreeMap<String, String>,
    pub alerts: Vec<AlertDto>,
    /// The device's raw reply: JSON when it parses as JSON, else a string.
    pub raw: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AlertDto {
    pub code: String,
    pub severity: String,
    pub message: String,
}

impl HeartbeatDto {
    pub fn new(r: HeartbeatRecord) -> Self {
        HeartbeatDto {
            seq: r.seq,
            ts_ms: r.ts_ms,
            received_ms: r.received_ms,
            snapshot: SnapshotDto {
                devices: r
                    .devices
                    .into_iter()
                    .map(|d| DeviceDto {
                        id: d.id,
                        kind: d.kind,
                        make: d.make,
                        model: d.model,
                        firmware: d.firmware,
                        metrics: d.metrics,
                        labels: d.labels,
                        alerts: d
                            .alerts
                            .into_iter()
                            .map(|a| AlertDto {
                                code: a.code,
                                severity: a.severity,
                                message: a.message,
                            })
                            .collect(),
                        raw: if d.raw.is_empty() {
                            serde_json::Value::Null
                        } else {
                            serde_json::from_str(&d.raw).unwrap_or(serde_json::Value::String(d.raw))
                        },
                    })
                    .collect(),
            },
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub uses: u32,
    pub ttl_secs: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TokenDto {
    pub token: String,
    pub uses: u32,
    pub expires_at: String,
}
