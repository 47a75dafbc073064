//! The control API: what the sim serves, how often each address was
//! contacted, and fault injection mid-run. Loopback only, no auth.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::fleet::{Device, Fleet};
use crate::model::Fault;

pub fn router(fleet: Arc<Fleet>) -> Router {
    Router::new()
        .route("/devices", get(devices))
        .route("/contacts", get(contacts))
        .route("/faults", post(faults))
        .route("/miners/{addr}", get(miner))
        .route("/containers/{addr}/alarms", post(container_alarm))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(fleet)
}

type Reply = (StatusCode, Json<Value>);

fn bad(message: String) -> Reply {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message })))
}

async fn devices(State(fleet): State<Arc<Fleet>>) -> Json<Value> {
    let mut out = Vec::new();
    for addr in fleet.addresses() {
        let Some(d) = fleet.device(addr) else {
            continue;
        };
        let mut item = json!({ "addr": addr.to_string(), "kind": d.kind() });
        if let Device::Miner(m) = d {
            item["model"] = json!(m.model.cli_name());
            item["mac"] = json!(m.mac_string());
            item["serial"] = json!(m.serial);
        }
        out.push(item);
    }
    Json(Value::Array(out))
}

async fn contacts(State(fleet): State<Arc<Fleet>>) -> Json<Value> {
    let map: serde_json::Map<String, Value> = fleet
        .contacts()
        .into_iter()
        .map(|(a, n)| (a.to_string(), json!(n)))
        .collect();
    Json(Value::Object(map))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    /// `all`, an address or `A-B`.
    #[serde(default)]
    target: String,
    /// As on the command line: `overheat`, `slow=1500`, …
    fault: String,
    #[serde(default = "yes")]
    on: bool,
}

fn yes() -> bool {
    true
}

async fn faults(State(fleet): State<Arc<Fleet>>, Json(req): Json<FaultRequest>) -> Reply {
    let fault = match Fault::parse(&req.fault) {
        Ok(f) => f,
        Err(e) => return bad(e),
    };
    match fleet.set_fault(&req.target, fault, req.on) {
        Ok(n) => (StatusCode::OK, Json(json!({ "miners": n }))),
        Err(e) => bad(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmRequest {
    code: String,
    #[serde(default = "yes")]
    on: bool,
}

async fn container_alarm(
    State(fleet): State<Arc<Fleet>>,
    Path(addr): Path<String>,
    Json(req): Json<AlarmRequest>,
) -> Reply {
    let Ok(ip) = addr.parse() else {
        return bad(format!("`{addr}` is not an IPv4 address"));
    };
    let Some(Device::Container(c)) = fleet.device(ip) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no emulated container at {addr}") })),
        );
    };
    match c.set_alarm(&req.code, req.on) {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "code": req.code, "on": req.on })),
        ),
        Err(e) => bad(e),
    }
}

async fn miner(State(fleet): State<Arc<Fleet>>, Path(addr): Path<String>) -> Reply {
    let Ok(ip) = addr.parse() else {
        return bad(format!("`{addr}` is not an IPv4 address"));
    };
    let Some(Device::Miner(m)) = fleet.device(ip) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no emulated miner at {addr}") })),
        );
    };
    let r = m.readings(Instant::now());
    (
        StatusCode::OK,
        Json(json!({
            "addr": addr,
            "model": m.model.cli_name(),
            "mac": m.mac_string(),
            "mode": r.mode.as_str(),
            "mining": r.mining,
            "ths": r.ths_5s,
            "power_w": r.power_w,
            "led": r.led,
            "powered": m.powered(),
            "power_limit_w": r.power_limit_w,
            "pools": r.pools.iter().map(|p| json!({"url": p.url, "user": p.user})).collect::<Vec<_>>(),
            "faults": format!("{:?}", m.faults()),
        })),
    )
}
