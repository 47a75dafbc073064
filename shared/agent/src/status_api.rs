//! A local, read-only HTTP view of the sentry: liveness, readiness and status.
//!
//! Routes (GET only; HEAD is answered as GET without a body):
//! - `/healthz`: 200 `ok` while the process serves requests;
//! - `/readyz`: 200 when the commander approved this sentry and a heartbeat
//!   was acknowledged within 3 intervals, else 503 with the reason;
//! - `/status`: the runtime status and the collectors' states, as JSON.
//!
//! Any other path is a 404 and any other method a 405, both with a JSON
//! body; a request that carries a body is refused with 413.
//!
//! Invariants: the API has no authentication, so it only ever listens on a
//! loopback address ([`check_listen`], enforced again by [`serve`]). It never
//! changes the runtime's state. Its wire shape is [`StatusBody`], not
//! [`AgentStatus`], so the runtime's types can change without the JSON
//! changing unnoticed.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::status::{AgentStatus, StatusHandle};

/// How many heartbeat intervals may pass without an acknowledgement before
/// `/readyz` reports the sentry as not ready.
pub const READY_ACK_INTERVALS: u32 = 3;

/// The collectors' states by name (for example `"gpu" → "ok"`), shared
/// between the collectors that set them and the status API that reads them.
#[derive(Debug, Clone, Default)]
pub struct CollectorStates(Arc<Mutex<BTreeMap<String, String>>>);

impl CollectorStates {
    /// Records the state of collector `name`, replacing the previous one.
    pub fn set(&self, name: impl Into<String>, state: impl Into<String>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(name.into(), state.into());
    }

    /// A copy of all the states, sorted by collector name.
    pub fn get(&self) -> BTreeMap<String, String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The JSON body of `GET /status`: the API's wire shape.
///
/// Times are Unix milliseconds; absent values are `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusBody {
    pub node_id: String,
    pub wallet_address: String,
    pub commander: Option<String>,
    pub connected: bool,
    pub approved: bool,
    pub sentry_id: Option<String>,
    pub last_heartbeat_at: Option<u64>,
    pub last_ack_at: Option<u64>,
    pub last_ack_seq: u64,
    pub last_seq: u64,
    pub outbox_len: usize,
    pub outbox_dropped: u64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub actions_executed: u64,
    pub actions_refused: u64,
    /// Collector name → state.
    pub collectors: BTreeMap<String, String>,
}

impl StatusBody {
    /// Builds the wire view of `status` and the collectors' states.
    pub fn new(status: AgentStatus, collectors: BTreeMap<String, String>) -> Self {
        let AgentStatus {
            node_id,
            wallet_address,
            commander,
            connected,
            approved,
            sentry_id,
            last_heartbeat_at,
            last_ack_at,
            last_ack_seq,
            last_seq,
            outbox_len,
            outbox_dropped,
            consecutive_failures,
            last_error,
            actions_executed,
            actions_refused,
        } = status;
        StatusBody {
            node_id,
            wallet_address,
            commander,
            connected,
            approved,
            sentry_id,
            last_heartbeat_at,
            last_ack_at,
            last_ack_seq,
            last_seq,
            outbox_len,
            outbox_dropped,
            consecutive_failures,
            last_error,
            actions_executed,
            actions_refused,
            collectors,
        }
    }
}

/// The JSON body of `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadyBody {
    pub ready: bool,
    /// Why the sentry is not ready; absent when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Whether the sentry is ready: approved by the commander, and a heartbeat
/// acknowledged within [`READY_ACK_INTERVALS`] intervals of `now_ms`.
///
/// The error says which condition fails. An acknowledgement stamped after
/// `now_ms` (a clock step back) counts as fresh.
pub fn readiness(status: &AgentStatus, now_ms: u64, interval: Duration) -> Result<(), String> {
    if !status.approved {
        return Err("not approved by the commander yet".into());
    }
    let window = interval.saturating_mul(READY_ACK_INTERVALS);
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    let stale = || {
        format!(
            "no heartbeat acknowledged in the last {} ({READY_ACK_INTERVALS} intervals)",
            human(window)
        )
    };
    match status.last_ack_at {
        None => Err(format!("{}: none acknowledged since start", stale())),
        Some(at) if now_ms.saturating_sub(at) > window_ms => Err(format!(
            "{}: the last one was {} ago",
            stale(),
            human(Duration::from_millis(now_ms - at))
        )),
        Some(_) => Ok(()),
    }
}

/// `30 s` for whole seconds, `1500 ms` otherwise.
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Refuses any listen address that is not loopback: the API has no
/// authentication.
/// A collector's state from the devices it reported this round: `ok: N
/// reporting`, or `degraded: D of N offline or failing` when some carry
/// `state=offline|error`.
pub fn reporting_state<'a>(
    devices: impl IntoIterator<Item = &'a hashfleet_shared::wire::DeviceSnapshot>,
) -> String {
    let (mut all, mut down) = (0usize, 0usize);
    for d in devices {
        all += 1;
        if matches!(
            d.labels.get("state").map(String::as_str),
            Some("offline" | "error")
        ) {
            down += 1;
        }
    }
    if down == 0 {
        format!("ok: {all} reporting")
    } else {
        format!("degraded: {down} of {all} offline or failing")
    }
}

pub fn check_listen(addr: SocketAddr) -> Result<(), String> {
    if addr.ip().to_canonical().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "refusing to serve the status API on {addr}: \
             the status API has no authentication: listen on 127.0.0.1 or ::1"
        ))
    }
}

#[derive(Clone)]
struct ApiState {
    status: StatusHandle,
    interval: Duration,
    collectors: CollectorStates,
}

/// Serves the status API on `listener` until `shutdown` completes, then
/// lets requests in flight finish.
///
/// Fails with `InvalidInput` before serving anything if `listener` is not
/// bound to a loopback address (see [`check_listen`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    status: StatusHandle,
    interval: Duration,
    collectors: CollectorStates,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    check_listen(listener.local_addr()?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let app = router(ApiState {
        status,
        interval,
        collectors,
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such route: the status API serves GET /healthz, /readyz and /status",
            )
        })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: the status API is read-only (GET only)",
            )
        })
        .layer(axum::middleware::from_fn(refuse_body))
        .with_state(state)
}

async fn readyz(State(api): State<ApiState>) -> Response {
    let now = hashfleet_shared::now_ms();
    match readiness(&api.status.get(), now, api.interval) {
        Ok(()) => Json(ReadyBody {
            ready: true,
            reason: None,
        })
        .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ReadyBody {
                ready: false,
                reason: Some(reason),
            }),
        )
            .into_response(),
    }
}

async fn status(State(api): State<ApiState>) -> Json<StatusBody> {
    Json(StatusBody::new(api.status.get(), api.collectors.get()))
}

/// No route reads a body, so a request that announces one is refused
/// rather than left unread.
async fn refuse_body(req: Request, next: Next) -> Response {
    let headers = req.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the status API accepts no request body",
        );
    }
    next.run(req).await
}

fn error(code: StatusCode, message: &str) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(10);
    const NOW: u64 = 1_700_000_000_000;

    fn approved(last_ack_at: Option<u64>) -> AgentStatus {
        AgentStatus {
            approved: true,
            last_ack_at,
            ..AgentStatus::default()
        }
    }

    #[test]
    fn reporting_state_counts_devices_down() {
        use hashfleet_shared::wire::DeviceSnapshot;
        let up = DeviceSnapshot::default();
        let mut down = DeviceSnapshot::default();
        down.labels.insert("state".into(), "offline".into());
        assert_eq!(reporting_state([&up, &up]), "ok: 2 reporting");
        assert_eq!(
            reporting_state([&up, &down]),
            "degraded: 1 of 2 offline or failing"
        );
    }

    #[test]
    fn not_ready_until_approved() {
        let status = AgentStatus {
            approved: false,
            last_ack_at: Some(NOW),
            ..AgentStatus::default()
        };
        let err = readiness(&status, NOW, INTERVAL).unwrap_err();
        assert_eq!(err, "not approved by the commander yet");
    }

    #[test]
    fn approved_without_ack_is_not_ready() {
        let err = readiness(&approved(None), NOW, INTERVAL).unwrap_err();
        assert_eq!(
            err,
            "no heartbeat acknowledged in the last 30 s (3 intervals): \
             none acknowledged since start"
        );
    }

    #[test]
    fn stale_ack_is_not_ready() {
        let err = readiness(&approved(Some(NOW - 30_001)), NOW, INTERVAL).unwrap_err();
        assert_eq!(
            err,
            "no heartbeat acknowledged in the last 30 s (3 intervals): \
             the last one was 30001 ms ago"
        );
        let err = readiness(&approved(Some(NOW - 95_000)), NOW, INTERVAL).unwrap_err();
        assert!(err.ends_with("the last one was 95 s ago"), "{err}");
    }

    #[test]
    fn fresh_ack_is_ready() {
        assert_eq!(readiness(&approved(Some(NOW)), NOW, INTERVAL), Ok(()));
        assert_eq!(readiness(&approved(Some(NOW - 1)), NOW, INTERVAL), Ok(()));
        // The window is inclusive.
        assert_eq!(
            readiness(&approved(Some(NOW - 30_000)), NOW, INTERVAL),
            Ok(())
        );
    }

    #[test]
    fn ack_from_the_future_is_ready() {
        assert_eq!(
            readiness(&approved(Some(NOW + 5_000)), NOW, INTERVAL),
            Ok(())
        );
    }

    #[test]
    fn sub_second_interval_reports_milliseconds() {
        let err = readiness(&approved(None), NOW, Duration::from_millis(250)).unwrap_err();
        assert!(
            err.starts_with("no heartbeat acknowledged in the last 750 ms"),
            "{err}"
        );
    }

    #[test]
    fn huge_interval_does_not_overflow() {
        assert_eq!(
            readiness(&approved(Some(0)), u64::MAX, Duration::MAX),
            Ok(())
        );
    }

    #[test]
    fn check_listen_accepts_loopback() {
        for addr in [
            "127.0.0.1:0",
            "127.0.0.2:9100",
            "[::1]:9100",
            "[::ffff:127.0.0.1]:0",
        ] {
            assert_eq!(check_listen(addr.parse().unwrap()), Ok(()), "{addr}");
        }
    }

    #[test]
    fn check_listen_refuses_other_addresses() {
        for addr in [
            "0.0.0.0:9100",
            "[::]:9100",
            "192.168.1.10:9100",
            "[::ffff:10.0.0.1]:0",
        ] {
            let err = check_listen(addr.parse().unwrap()).unwrap_err();
            assert!(
                err.contains("the status API has no authentication: listen on 127.0.0.1 or ::1"),
                "{addr}: {err}"
            );
            assert!(err.contains(addr), "{err}");
        }
    }

    #[test]
    fn collector_states_are_shared_and_sorted() {
        let states = CollectorStates::default();
        let clone = states.clone();
        clone.set("gpu", "ok");
        clone.set("asic", "unreachable");
        clone.set("gpu", "degraded");
        let got: Vec<_> = states.get().into_iter().collect();
        assert_eq!(
            got,
            [
                ("asic".to_string(), "unreachable".to_string()),
                ("gpu".to_string(), "degraded".to_string())
            ]
        );
    }

    /// Schema drift breaks this test: a change to the wire shape of
    /// `/status` must be deliberate.
    #[test]
    fn status_body_wire_shape() {
        let status = AgentStatus {
            node_id: "n1".into(),
            wallet_address: "w1".into(),
            commander: Some("127.0.0.1:4433".into()),
            connected: true,
            approved: true,
            sentry_id: None,
            last_heartbeat_at: Some(10),
            last_ack_at: Some(9),
            last_ack_seq: 4,
            last_seq: 5,
            outbox_len: 1,
            outbox_dropped: 2,
            consecutive_failures: 3,
            last_error: None,
            actions_executed: 6,
            actions_refused: 7,
        };
        let collectors = BTreeMap::from([("gpu".to_string(), "ok".to_string())]);
        let json = serde_json::to_string(&StatusBody::new(status, collectors)).unwrap();
        assert_eq!(
            json,
            r#"{"node_id":"n1","wallet_address":"w1","commander":"127.0.0.1:4433","connected":true,"approved":true,"sentry_id":null,"last_heartbeat_at":10,"last_ack_at":9,"last_ack_seq":4,"last_seq":5,"outbox_len":1,"outbox_dropped":2,"consecutive_failures":3,"last_error":null,"actions_executed":6,"actions_refused":7,"collectors":{"gpu":"ok"}}"#
        );
    }

    #[test]
    fn ready_body_wire_shape() {
        let ready = ReadyBody {
            ready: true,
            reason: None,
        };
        assert_eq!(serde_json::to_string(&ready).unwrap(), r#"{"ready":true}"#);
        let not = ReadyBody {
            ready: false,
            reason: Some("x".into()),
        };
        assert_eq!(
            serde_json::to_string(&not).unwrap(),
            r#"{"ready":false,"reason":"x"}"#
        );
    }
}
