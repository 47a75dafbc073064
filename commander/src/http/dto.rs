//! HTTP shapes. Built from store records; never stored.

use std::collections::BTreeMap;

use hashfleet_shared::{NodeId, WalletAddress};
use serde::{Deserialize, Serialize};

use crate::store::{ApiTokenRecord, HeartbeatRecord, ProgressRecord, SentryRecord, UserRecord};

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
    /// Earlier node ids, oldest first.
    pub node_id_history: Vec<String>,
    /// Every node key rotation, oldest first.
    pub rotations: Vec<RotationDto>,
    /// An operator asked for a rotation that has not happened yet.
    pub rotate_requested: bool,
    pub wallet_address: String,
    /// Earlier wallets, oldest first.
    pub wallet_history: Vec<String>,
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

/// One node key rotation.
#[derive(Debug, Serialize, Deserialize)]
pub struct RotationDto {
    pub old_node_id: String,
    pub new_node_id: String,
    pub at: String,
    /// The sentry's last assigned heartbeat seq when it rotated.
    pub at_seq: u64,
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
            rotations: r
                .rotations
                .iter()
                .map(|x| RotationDto {
                    old_node_id: NodeId::from_public_key(x.old_key).to_string(),
                    new_node_id: NodeId::from_public_key(x.new_key).to_string(),
                    at: rfc3339_ms(x.at_ms),
                    at_seq: x.at_seq,
                })
                .collect(),
            rotate_requested: r.rotate_requested_ms.is_some(),
            wallet_address: WalletAddress(r.wallet_address).to_string(),
            wallet_history: r
                .wallet_changes
                .iter()
                .map(|c| WalletAddress(c.old_wallet).to_string())
                .collect(),
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

/// `POST /api/v1/users`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub admin: bool,
}

impl std::fmt::Debug for CreateUserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateUserRequest")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("permissions", &self.permissions)
            .field("admin", &self.admin)
            .finish()
    }
}

/// A user as the API shows it: never the password hash.
#[derive(Debug, Serialize, Deserialize)]
pub struct UserDto {
    pub username: String,
    pub permissions: Vec<String>,
    pub admin: bool,
    pub disabled: bool,
    pub created_at: String,
}

impl UserDto {
    pub fn new(r: &UserRecord) -> Self {
        UserDto {
            username: r.username.clone(),
            permissions: r.permissions.clone(),
            admin: r.admin,
            disabled: r.disabled,
            created_at: rfc3339_ms(r.created_ms),
        }
    }
}

/// `POST /api/v1/auth/login`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
pub struct LoginResponse {
    pub token: String,
    /// The token's id (to revoke it: `DELETE /api/v1/tokens/{id}`).
    pub id: String,
    pub username: String,
    pub expires_at: String,
}

/// `GET /api/v1/auth/me`.
#[derive(Debug, Serialize, Deserialize)]
pub struct MeDto {
    pub username: String,
    /// As stored for the user (roles unexpanded); empty for the bootstrap token.
    pub permissions: Vec<String>,
    /// What they grant, roles expanded, as `type:level`.
    pub effective: Vec<String>,
    pub admin: bool,
}

/// A just-made personal token: the only time the token is shown.
#[derive(Serialize, Deserialize)]
pub struct NewApiTokenDto {
    pub id: String,
    pub token: String,
    pub created_at: String,
}

/// An API token as listed (never the token itself).
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiTokenDto {
    pub id: String,
    pub username: String,
    pub kind: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked: bool,
}

impl ApiTokenDto {
    pub fn new(r: &ApiTokenRecord) -> Self {
        ApiTokenDto {
            id: r.id.clone(),
            username: r.username.clone(),
            kind: r.kind.as_str().to_string(),
            created_at: rfc3339_ms(r.created_ms),
            expires_at: (r.expires_ms > 0).then(|| rfc3339_ms(r.expires_ms)),
            revoked: r.revoked,
        }
    }
}
