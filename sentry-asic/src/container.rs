//! Antspace-style cooling containers: the `[[container]]` config entry, and
//! an HTTP JSON client that polls `GET /cooler?operation=coolerState` into a
//! normalized [`DeviceSnapshot`] and runs the three container actions.
//!
//! The reply is read in chunks up to [`MAX_REPLY`] bytes whatever the
//! headers say, and parsed by pure functions ([`snapshot_from_reply`]) so
//! the mapping is testable without a socket.

pub use hashfleet_agent::text::{check_name, clip, error_chain};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use hashfleet_shared::wire::{DeviceAlert, DeviceSnapshot, Severity};
use serde::Deserialize;
use serde_json::{json, Value};

pub const DEFAULT_PORT: u16 = 80;
/// Largest reply body read from a container.
pub const MAX_REPLY: usize = 256 * 1024;
/// Longest raw reply kept in a snapshot.
pub const MAX_RAW: usize = 16 * 1024;
pub const DEFAULT_TIMEOUT_MS: u64 = 3000;
/// Timeouts a config may ask for, ms.
pub const TIMEOUT_RANGE_MS: RangeInclusive<u64> = 100..=60_000;
/// The liquid supply set point `setLiquidSupplyTemperature` accepts, °C.
pub const SET_TEMP_RANGE: RangeInclusive<f64> = 10.0..=45.0;
/// The actions [`ContainerClient::execute`] knows.
pub const METHODS: [&str; 3] = [
    "switchCoolingSystem",
    "resetCoolingSystem",
    "setLiquidSupplyTemperature",
];

/// Most alarms, fans or sensors taken from one reply.
const MAX_ITEMS: usize = 64;

/// Which cooling a container has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerKind {
    /// Cooling tower.
    Hk3,
    /// Dry cooler.
    Immersion,
}

impl ContainerKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ContainerKind::Hk3 => "hk3",
            ContainerKind::Immersion => "immersion",
        }
    }
}

/// One `[[container]]` in the sentry config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerEntry {
    /// Unique among containers; the device id is `container-<name>`.
    pub name: String,
    /// An IP address, with `:port` unless it is 80.
    pub address: String,
    /// `hk3` or `immersion`.
    pub kind: ContainerKind,
    /// Per-request timeout, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

/// A config entry that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[[{table}]] `{name}`: {problem}")]
pub struct ConfigError {
    /// `container`, `powermeter` or `relay`.
    pub table: &'static str,
    pub name: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(table: &'static str, name: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            table,
            name: name.to_string(),
            problem: problem.into(),
        }
    }
}

/// Parses `ip` or `ip:port` (IPv6 as `[ip]:port`). Device addresses are IP
/// literals: a sentry does not resolve names for its LAN devices.
pub fn parse_address(text: &str, default_port: u16) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("address `{text}`: port 0 is not a device port"));
        }
        return Ok(addr);
    }
    if let Ok(ip) = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, default_port));
    }
    Err(format!(
        "address `{text}` is not an IP address or IP:port (e.g. 10.0.0.5 or 10.0.0.5:{default_port}); host names are not resolved"
    ))
}

impl ContainerEntry {
    /// Checks every field; the error says which and what to write instead.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.socket_addr().map(|_| ())
    }

    fn socket_addr(&self) -> Result<SocketAddr, ConfigError> {
        let err = |p: String| ConfigError::new("container", &self.name, p);
        check_name(&self.name).map_err(err)?;
        if !TIMEOUT_RANGE_MS.contains(&self.timeout_ms) {
            return Err(err(format!(
                "`timeout_ms` {} is out of range {}..={}",
                self.timeout_ms,
                TIMEOUT_RANGE_MS.start(),
                TIMEOUT_RANGE_MS.end()
            )));
        }
        parse_address(&self.address, DEFAULT_PORT).map_err(err)
    }
}

/// Why a call to the container failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CallError {
    /// No connection, or no reply in time: the device is offline.
    Unreachable(String),
    /// It answered, but not with a usable reply.
    BadReply(String),
    /// It answered with an error (`code` ≠ 0 or an HTTP error status).
    Refused(String),
}

impl CallError {
    fn message(&self) -> &str {
        match self {
            CallError::Unreachable(m) | CallError::BadReply(m) | CallError::Refused(m) => m,
        }
    }
}

/// Polls and drives one container.
#[derive(Debug, Clone)]
pub struct ContainerClient {
    entry: ContainerEntry,
    addr: SocketAddr,
    http: reqwest::Client,
}

impl ContainerClient {
    /// Validates `entry` and builds the client (no I/O yet).
    pub fn new(entry: ContainerEntry) -> Result<ContainerClient, ConfigError> {
        let addr = entry.socket_addr()?;
        let timeout = Duration::from_millis(entry.timeout_ms);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // LAN devices: an HTTP_PROXY from the environment must not apply.
            .no_proxy()
            // A fresh connection per request: controllers drop idle ones.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| ConfigError::new("container", &entry.name, format!("HTTP client: {e}")))?;
        Ok(ContainerClient { entry, addr, http })
    }

    pub fn entry(&self) -> &ContainerEntry {
        &self.entry
    }

    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// `container-<name>`.
    pub fn id(&self) -> String {
        format!("container-{}", self.entry.name)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// One `GET /cooler?operation=…`: the `data` of a good reply, and the
    /// raw body.
    async fn call(&self, query: &str) -> Result<(Value, String), CallError> {
        let url = format!("http://{}/cooler?operation={query}", self.addr);
        let who = format!("container `{}` at {}", self.entry.name, self.addr);
        let mut resp = self.http.get(&url).send().await.map_err(|e| {
            let why = error_chain(&e);
            if e.is_connect() || e.is_timeout() {
                CallError::Unreachable(format!("{who}: no reply: {why}"))
            } else {
                CallError::BadReply(format!("{who}: not an HTTP reply: {why}"))
            }
        })?;
        let status = resp.status();
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_REPLY {
                        return Err(CallError::BadReply(format!(
                            "{who}: reply larger than {MAX_REPLY} bytes"
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return Err(CallError::Unreachable(format!(
                        "{who}: reply not finished within {} ms",
                        self.entry.timeout_ms
                    )))
                }
                Err(e) => {
                    return Err(CallError::BadReply(format!(
                        "{who}: reply cut short: {}",
                        error_chain(&e)
                    )))
                }
            }
        }
        let raw = String::from_utf8_lossy(&body).into_owned();
        let reply: Value = serde_json::from_slice(&body).map_err(|e| {
            CallError::BadReply(format!(
                "{who}: reply is not JSON ({e}), HTTP {status}: {}",
                clip(&raw, 120)
            ))
        })?;
        let code = reply.get("code").and_then(Value::as_i64);
        let msg = reply
            .get("msg")
            .and_then(Value::as_str)
            .map(|m| clip(m, 300))
            .unwrap_or_default();
        if !status.is_success() || code.is_some_and(|c| c != 0) {
            return Err(CallError::Refused(format!(
                "{who} refused `{}`: {} (HTTP {status})",
                query.split('&').next().unwrap_or(query),
                if msg.is_empty() {
                    "no reason given"
                } else {
                    &msg
                }
            )));
        }
        if code.is_none() {
            return Err(CallError::BadReply(format!(
                "{who}: reply has no `code`: {}",
                clip(&raw, 120)
            )));
        }
        Ok((reply.get("data").cloned().unwrap_or(Value::Null), raw))
    }

    /// Reads the cooling state. Never fails: an unreachable container
    /// gives `state` = `offline`, a bad reply `state` = `error`, with the
    /// reason in the `error` label.
    pub async fn poll(&self) -> DeviceSnapshot {
        match self.call("coolerState").await {
            Ok((data, raw)) => snapshot_from_reply(&self.id(), self.entry.kind, &data, &raw)
                .unwrap_or_else(|problem| {
                    self.failed(CallError::BadReply(format!(
                        "container `{}` at {}: {problem}",
                        self.entry.name, self.addr
                    )))
                }),
            Err(e) => self.failed(e),
        }
    }

    fn failed(&self, e: CallError) -> DeviceSnapshot {
        let state = match e {
            CallError::Unreachable(_) => "offline",
            CallError::BadReply(_) | CallError::Refused(_) => "error",
        };
        let mut labels = BTreeMap::new();
        labels.insert("state".into(), state.into());
        labels.insert("error".into(), clip(e.message(), 500));
        labels.insert("container_type".into(), self.entry.kind.as_str().into());
        labels.insert("address".into(), self.addr.to_string());
        DeviceSnapshot {
            id: self.id(),
            kind: "container".into(),
            make: "Antspace".into(),
            labels,
            ..DeviceSnapshot::default()
        }
    }

    /// Runs a container action:
    /// - `switchCoolingSystem` `[true|false]`,
    /// - `resetCoolingSystem` `[]`,
    /// - `setLiquidSupplyTemperature` `[°C]` within [`SET_TEMP_RANGE`].
    pub async fn execute(&self, method: &str, params: &Value) -> Result<Value, String> {
        let query = action_query(method, params)?;
        let (data, _) = self.call(&query).await.map_err(|e| match e {
            CallError::Refused(m) => m,
            other => format!("{method} failed: {}", other.message()),
        })?;
        Ok(json!({
            "container": self.entry.name,
            "method": method,
            "reply": data,
        }))
    }
}

/// The `operation=…` query for an action, with its params checked.
pub fn action_query(method: &str, params: &Value) -> Result<String, String> {
    let args: &[Value] = match params {
        Value::Array(a) => a,
        Value::Null => &[],
        other => {
            return Err(format!(
                "{method}: params must be a JSON array, got {}",
                clip(&other.to_string(), 80)
            ))
        }
    };
    match method {
        "switchCoolingSystem" => match args {
            [Value::Bool(on)] => Ok(if *on { "open" } else { "close" }.into()),
            _ => Err(format!(
                "switchCoolingSystem takes [true] (on) or [false] (off), got {}",
                clip(&params.to_string(), 80)
            )),
        },
        "resetCoolingSystem" if args.is_empty() => Ok("reset".into()),
        "resetCoolingSystem" => Err(format!(
            "resetCoolingSystem takes no params ([]), got {}",
            clip(&params.to_string(), 80)
        )),
        "setLiquidSupplyTemperature" => {
            let celsius = match args {
                [v] => v.as_f64(),
                _ => None,
            }
            .ok_or_else(|| {
                format!(
                    "setLiquidSupplyTemperature takes [°C] (one number), got {}",
                    clip(&params.to_string(), 80)
                )
            })?;
            if !SET_TEMP_RANGE.contains(&celsius) {
                return Err(format!(
                    "setLiquidSupplyTemperature: {celsius} °C is out of range {}..={} °C",
                    SET_TEMP_RANGE.start(),
                    SET_TEMP_RANGE.end()
                ));
            }
            Ok(format!("setTemp&temp={celsius}"))
        }
        other => Err(format!(
            "container action `{other}` is not supported: use {}",
            METHODS.join(", ")
        )),
    }
}

/// Maps a `coolerState` reply's `data` to a snapshot; `Err` says what the
/// reply lacks.
pub fn snapshot_from_reply(
    id: &str,
    configured: ContainerKind,
    data: &Value,
    raw: &str,
) -> Result<DeviceSnapshot, String> {
    let obj = data
        .as_object()
        .ok_or("coolerState reply has no `data` object")?;
    let running = obj
        .get("running")
        .and_then(Value::as_bool)
        .ok_or("coolerState reply lacks `running` (true/false)")?;
    let supply = num(data, "supplyTemp").ok_or("coolerState reply lacks `supplyTemp`")?;
    let reported = obj.get("type").and_then(Value::as_str);
    let mut metrics = BTreeMap::new();
    let mut put = |name: &str, v: Option<f64>| {
        if let Some(v) = v {
            metrics.insert(name.to_string(), v);
        }
    };
    put("supply_temp_c", Some(supply));
    put("temp_c", Some(supply));
    put("return_temp_c", num(data, "returnTemp"));
    put("set_temp_c", num(data, "setTemp"));
    put("supply_pressure_bar", num(data, "supplyPressure"));
    put("return_pressure_bar", num(data, "returnPressure"));
    put("flow_m3h", num(data, "flow"));
    put("power_w", num(data, "power"));
    put("heat_load_w", num(data, "heatLoad"));
    put("ambient_temp_c", num(data, "ambientTemp"));
    put("humidity_pct", num(data, "humidity"));
    put("circulation_pump_on", flag(data, "circulationPump"));
    // HK3.
    put("spray_pump_on", flag(data, "sprayPump"));
    put("infusion_pump_on", flag(data, "infusionPump"));
    put("liquid_level_pct", num(data, "liquidLevel"));
    for (i, fan) in items(data, "towerFans") {
        put(&format!("tower_fan_{i}_rpm"), num(fan, "speed"));
    }
    // Immersion.
    put("secondary_pump_on", flag(data, "secondaryPump"));
    put(
        "secondary_pump_hz",
        data.get("secondaryPump").and_then(|p| num(p, "freq")),
    );
    put("dry_cooler_on", flag(data, "dryCooler"));
    put(
        "dry_cooler_hz",
        data.get("dryCooler").and_then(|p| num(p, "freq")),
    );
    put("pdb_temp_c", num(data, "pdbTemp"));
    for (i, sensor) in items(data, "levelSensors") {
        put(&format!("level_sensor_{i}_pct"), num(sensor, "level"));
    }
    let alerts = alerts_from(data, configured, reported);
    put("alarms", Some(alerts.len() as f64));
    let mut labels = BTreeMap::new();
    labels.insert("state".into(), "online".into());
    labels.insert(
        "container_type".into(),
        reported
            .map(|t| clip(t, 32))
            .unwrap_or_else(|| configured.as_str().into()),
    );
    labels.insert("cooling".into(), if running { "on" } else { "off" }.into());
    if let Some(sn) = obj.get("sn").and_then(Value::as_str) {
        labels.insert("serial".into(), clip(sn, 64));
    }
    let text = |key: &str| {
        obj.get(key)
            .and_then(Value::as_str)
            .map(|s| clip(s, 64))
            .unwrap_or_default()
    };
    Ok(DeviceSnapshot {
        id: id.to_string(),
        kind: "container".into(),
        make: "Antspace".into(),
        model: text("model"),
        firmware: text("firmware"),
        metrics,
        labels,
        alerts,
        raw: clip(raw, MAX_RAW),
    })
}

fn alerts_from(
    data: &Value,
    configured: ContainerKind,
    reported: Option<&str>,
) -> Vec<DeviceAlert> {
    let mut alerts = Vec::new();
    if let Some(t) = reported.filter(|t| *t != configured.as_str()) {
        alerts.push(DeviceAlert {
            code: "container_type_mismatch".into(),
            severity: Severity::Medium,
            message: format!(
                "configured as {} but the container reports `{}`: fix `kind` in its [[container]] entry",
                configured.as_str(),
                clip(t, 32)
            ),
        });
    }
    let list = data.get("alarms").and_then(Value::as_array);
    for alarm in list.into_iter().flatten().take(MAX_ITEMS) {
        let Some(code) = alarm.get("code").and_then(Value::as_str) else {
            continue;
        };
        let level = alarm.get("level").and_then(Value::as_str).unwrap_or("");
        let (severity, note) = match level {
            "critical" => (Severity::Critical, String::new()),
            "high" => (Severity::High, String::new()),
            "medium" => (Severity::Medium, String::new()),
            other => (
                Severity::Medium,
                format!(" (unknown level `{}`)", clip(other, 16)),
            ),
        };
        let desc = alarm
            .get("desc")
            .and_then(Value::as_str)
            .map(|d| clip(d, 200))
            .unwrap_or_else(|| code.to_string());
        let latched = alarm.get("active").and_then(Value::as_bool) == Some(false);
        alerts.push(DeviceAlert {
            code: clip(code, 64),
            severity,
            message: format!(
                "{desc}{note}{}",
                if latched {
                    " (condition gone; latched until resetCoolingSystem)"
                } else {
                    ""
                }
            ),
        });
    }
    alerts
}

/// A finite number at `key`.
fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64).filter(|x| x.is_finite())
}

/// `{key: {"run": bool}}` as 1/0.
fn flag(v: &Value, key: &str) -> Option<f64> {
    v.get(key)
        .and_then(|p| p.get("run"))
        .and_then(Value::as_bool)
        .map(|b| if b { 1.0 } else { 0.0 })
}

/// The objects of the array at `key`, numbered by their `id` (1..=64) or
/// their position from 1.
fn items<'a>(v: &'a Value, key: &str) -> Vec<(u64, &'a Value)> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .take(MAX_ITEMS)
        .enumerate()
        .map(|(i, item)| {
            let id = item
                .get("id")
                .and_then(Value::as_u64)
                .filter(|id| (1..=MAX_ITEMS as u64).contains(id))
                .unwrap_or(i as u64 + 1);
            (id, item)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(address: &str) -> ContainerEntry {
        ContainerEntry {
            name: "c1".into(),
            address: address.into(),
            kind: ContainerKind::Hk3,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }

    #[test]
    fn addresses_take_a_default_port_and_refuse_names() {
        assert_eq!(
            parse_address("10.0.0.5", 80).unwrap(),
            "10.0.0.5:80".parse().unwrap()
        );
        assert_eq!(
            parse_address("10.0.0.5:8080", 80).unwrap(),
            "10.0.0.5:8080".parse().unwrap()
        );
        assert_eq!(
            parse_address("[::1]", 502).unwrap(),
            "[::1]:502".parse().unwrap()
        );
        assert!(parse_address("cooler.local", 80)
            .unwrap_err()
            .contains("host names are not resolved"));
        assert!(parse_address("10.0.0.5:0", 80).is_err());
    }

    #[test]
    fn validate_names_the_field() {
        assert!(entry("10.0.0.5").validate().is_ok());
        let e = entry("nope").validate().unwrap_err().to_string();
        assert!(e.starts_with("[[container]] `c1`: address `nope`"), "{e}");
        let mut bad = entry("10.0.0.5");
        bad.name = "a b".into();
        assert!(bad.validate().unwrap_err().to_string().contains("`name`"));
        let mut bad = entry("10.0.0.5");
        bad.timeout_ms = 5;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("timeout_ms"));
    }

    #[test]
    fn unknown_fields_and_kinds_are_refused() {
        let e = toml::from_str::<ContainerEntry>(
            "name = \"a\"\naddress = \"10.0.0.1\"\nkind = \"hk3\"\nport = 80\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `port`"), "{e}");
        let e = toml::from_str::<ContainerEntry>(
            "name = \"a\"\naddress = \"10.0.0.1\"\nkind = \"hk4\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("hk3") && e.contains("immersion"), "{e}");
    }

    #[test]
    fn actions_check_their_params() {
        assert_eq!(
            action_query("switchCoolingSystem", &json!([false])).unwrap(),
            "close"
        );
        assert_eq!(
            action_query("resetCoolingSystem", &json!([])).unwrap(),
            "reset"
        );
        assert_eq!(
            action_query("setLiquidSupplyTemperature", &json!([27.5])).unwrap(),
            "setTemp&temp=27.5"
        );
        assert!(action_query("switchCoolingSystem", &json!(["on"]))
            .unwrap_err()
            .contains("[true]"));
        assert!(action_query("resetCoolingSystem", &json!([1])).is_err());
        assert!(action_query("setLiquidSupplyTemperature", &json!([46]))
            .unwrap_err()
            .contains("out of range"));
        assert!(action_query("setLiquidSupplyTemperature", &json!({"t": 30})).is_err());
        let e = action_query("reboot", &json!([])).unwrap_err();
        assert!(e.contains("`reboot` is not supported") && e.contains("resetCoolingSystem"));
    }

    #[test]
    fn reply_maps_to_metrics_labels_and_alerts() {
        let data = json!({
            "type": "immersion", "model": "Antspace Immersion", "firmware": "x",
            "running": false, "supplyTemp": 41.5, "returnTemp": 43.0, "flow": 0.0,
            "secondaryPump": {"run": false, "freq": 0.0},
            "levelSensors": [{"id": 1, "level": 90.0}, {"id": 999, "level": 89.0}],
            "alarms": [
                {"code": "phase_failure", "level": "critical", "desc": "phase", "active": true},
                {"code": "x", "level": "weird", "active": false},
                {"level": "high"}
            ]
        });
        let s = snapshot_from_reply("container-c1", ContainerKind::Hk3, &data, "{}").unwrap();
        assert_eq!(s.metrics["temp_c"], 41.5);
        assert_eq!(s.metrics["secondary_pump_on"], 0.0);
        assert_eq!(s.metrics["level_sensor_2_pct"], 89.0);
        assert_eq!(s.labels["cooling"], "off");
        assert_eq!(s.labels["container_type"], "immersion");
        let codes: Vec<_> = s
            .alerts
            .iter()
            .map(|a| (a.code.as_str(), a.severity))
            .collect();
        assert_eq!(
            codes,
            [
                ("container_type_mismatch", Severity::Medium),
                ("phase_failure", Severity::Critical),
                ("x", Severity::Medium)
            ]
        );
        assert!(s.alerts[2].message.contains("latched"));
        assert!(
            snapshot_from_reply("c", ContainerKind::Hk3, &json!({"running": true}), "")
                .unwrap_err()
                .contains("supplyTemp")
        );
        assert!(snapshot_from_reply("c", ContainerKind::Hk3, &json!([1]), "").is_err());
    }
}
