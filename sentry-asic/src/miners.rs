//! ASIC miners through asic-rs: [`snapshot`] turns one reading into a wire
//! [`DeviceSnapshot`] (pure), and [`MinerPoller`] keeps the miners found on
//! the configured addresses, polls them and runs approved actions on them.
//!
//! Every asic-rs call (identification, `get_data`, each write) runs in its
//! own task under a timeout: some asic-rs socket code unwraps I/O errors
//! and has no read timeout, so a panic or a hang costs one call and is
//! reported as a failed call, never a crashed sentry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use asic_rs::core::config::pools::{PoolConfig, PoolGroupConfig};
use asic_rs::core::config::tuning::TuningConfig;
use asic_rs::core::data::command::MinerCommand;
use asic_rs::core::data::hashrate::{HashRate, HashRateUnit};
use asic_rs::core::data::miner::{MinerData, MiningMode, TuningTarget};
use asic_rs::core::data::operating_state::OperatingState;
use asic_rs::core::data::pool::{PoolData, PoolURL};
use asic_rs::core::traits::entry::FirmwareEntry;
use asic_rs::core::traits::miner::Miner;
use asic_rs::MinerFactory;
use hashfleet_shared::wire::DeviceSnapshot;
use serde_json::{json, Value};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, warn};

use crate::alerts::{self, miner_alerts, AlertRules};

/// The `kind` of every device this module reports.
pub const KIND: &str = "miner";
/// Largest `raw` summary, in bytes.
pub const RAW_MAX: usize = 4096;
/// Largest label value, in characters (labels come from the device).
const LABEL_MAX: usize = 128;
/// Per-index metrics and labels stop after this many boards, fans, pools.
const MAX_BOARDS: usize = 16;
const MAX_FANS: usize = 16;
const MAX_POOLS: usize = 8;
/// Consecutive failed polls before a miner is polled on a backoff.
const FAILS_BEFORE_BACKOFF: u32 = 3;
/// Consecutive failed polls before its asic-rs handle is dropped, so
/// discovery identifies the address afresh (the firmware may have changed).
const FAILS_BEFORE_REIDENTIFY: u32 = 6;
/// Largest `setPowerLimit`, W.
pub const MAX_POWER_LIMIT_W: f64 = 20_000.0;
/// Most pools `setupPools` takes (stock firmwares have three slots).
pub const MAX_POOLS_CONFIG: usize = 3;

// ---------------------------------------------------------------------------
// Snapshot: MinerData -> DeviceSnapshot, pure.

/// The wire snapshot of one reading, or `None` when the reading has neither
/// a MAC nor a serial number (the caller logs and skips it: an IP address
/// is never an id).
pub fn snapshot(data: &MinerData, rules: &AlertRules) -> Option<DeviceSnapshot> {
    let id = device_id(data)?;
    Some(build_snapshot(data, rules, id))
}

/// The stable id of a reading: the MAC in lower case (`aa:bb:cc:dd:ee:ff`),
/// else `sn-<serial>`.
pub fn device_id(data: &MinerData) -> Option<String> {
    mac_text(data).or_else(|| serial_text(data).map(|s| format!("sn-{s}")))
}

/// The MAC in lower case; all-zero and broadcast addresses count as none.
fn mac_text(data: &MinerData) -> Option<String> {
    let bytes = data.mac.as_ref()?.as_bytes();
    if bytes.iter().all(|&b| b == 0) || bytes.iter().all(|&b| b == 0xff) {
        return None;
    }
    Some(
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// The serial number, trimmed, with characters outside `[A-Za-z0-9._-]`
/// replaced; placeholders such as `unknown` count as none.
fn serial_text(data: &MinerData) -> Option<String> {
    clean_serial(data.serial_number.as_deref()?)
}

fn clean_serial(raw: &str) -> Option<String> {
    let raw = raw.trim();
    const PLACEHOLDERS: [&str; 8] = ["", "0", "-", "na", "n/a", "null", "none", "unknown"];
    if PLACEHOLDERS.iter().any(|p| raw.eq_ignore_ascii_case(p)) {
        return None;
    }
    Some(
        raw.chars()
            .take(64)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
    )
}

/// A hashrate in H/s, if finite.
pub fn hashrate_hs(h: &HashRate) -> Option<f64> {
    let v = h.clone().as_unit(HashRateUnit::Hash).value;
    v.is_finite().then_some(v)
}

/// `123.45 TH/s` and the like, for messages.
pub fn format_hashrate(hs: f64) -> String {
    const UNITS: [(f64, &str); 6] = [
        (1e18, "EH/s"),
        (1e15, "PH/s"),
        (1e12, "TH/s"),
        (1e9, "GH/s"),
        (1e6, "MH/s"),
        (1e3, "kH/s"),
    ];
    for (scale, unit) in UNITS {
        if hs.abs() >= scale {
            return format!("{:.2} {unit}", hs / scale);
        }
    }
    format!("{hs:.0} H/s")
}

/// At most `max` characters of `s`.
pub(crate) fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// `mining`, `sleeping` or `error`, as the commander reads the `state` label.
pub fn miner_state(data: &MinerData) -> &'static str {
    match &data.operating_state {
        Some(OperatingState::Error {}) => "error",
        Some(
            OperatingState::Paused {}
            | OperatingState::Suspended {}
            | OperatingState::Stopping {}
            | OperatingState::Stopped {}
            | OperatingState::Idling {},
        ) => "sleeping",
        _ if !data.is_mining => "sleeping",
        _ => "mining",
    }
}

fn put(metrics: &mut BTreeMap<String, f64>, key: impl Into<String>, value: f64) {
    if value.is_finite() {
        metrics.insert(key.into(), value);
    }
}

fn label(labels: &mut BTreeMap<String, String>, key: impl Into<String>, value: &str) {
    let value = clip(value.trim(), LABEL_MAX);
    if !value.is_empty() {
        labels.insert(key.into(), value);
    }
}

fn pools_flat(data: &MinerData) -> impl Iterator<Item = &PoolData> {
    data.pools.iter().flat_map(|g| g.pools.iter())
}

fn pool_status(p: &PoolData) -> &'static str {
    match (p.alive, p.active) {
        (Some(false), _) => "dead",
        (_, Some(true)) => "active",
        (Some(true), _) => "alive",
        (None, _) => "unknown",
    }
}

fn power_mode(data: &MinerData, state: &str) -> Option<&'static str> {
    if state == "sleeping" {
        return Some("sleep");
    }
    match data.tuning_target.as_ref()? {
        TuningTarget::MiningMode(MiningMode::Low) => Some("low"),
        TuningTarget::MiningMode(MiningMode::Normal) => Some("normal"),
        TuningTarget::MiningMode(MiningMode::High) => Some("high"),
        _ => None,
    }
}

fn firmware_text(data: &MinerData) -> String {
    match data.firmware_version.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() => clip(&format!("{} {v}", data.device_info.firmware), LABEL_MAX),
        _ => data.device_info.firmware.clone(),
    }
}

/// The snapshot of a reading under an id already decided.
fn build_snapshot(data: &MinerData, rules: &AlertRules, id: String) -> DeviceSnapshot {
    let mut m = BTreeMap::new();
    let mut l = BTreeMap::new();
    let state = miner_state(data);

    // Hashrate and power.
    let hs = data.hashrate.as_ref().and_then(hashrate_hs);
    if let Some(hs) = hs {
        put(&mut m, "hashrate_hs", hs);
    }
    if let Some(e) = data.expected_hashrate.as_ref().and_then(hashrate_hs) {
        put(&mut m, "expected_hashrate_hs", e);
    }
    let watts = data.wattage.map(|w| w.as_watts()).filter(|w| w.is_finite());
    if let Some(w) = watts {
        put(&mut m, "power_w", w);
    }
    if let (Some(hs), Some(w)) = (hs, watts) {
        if hs > 0.0 {
            put(&mut m, "efficiency_j_per_th", w / (hs / 1e12));
        }
    }
    if let Some(TuningTarget::Power(p)) = &data.tuning_target {
        put(&mut m, "power_limit_w", p.as_watts());
    }

    // Boards and temperatures.
    let mut temps = Vec::new();
    let mut board_temps = Vec::new();
    let mut any_board_data = false;
    let mut working_boards = 0u32;
    for board in &data.hashboards {
        if !alerts::board_has_reading(board) {
            continue;
        }
        any_board_data = true;
        let bhs = board.hashrate.as_ref().and_then(hashrate_hs);
        let working = match board.working_chips {
            Some(c) => c > 0,
            None => bhs.is_some_and(|h| h > 0.0),
        };
        if working {
            working_boards += 1;
        }
        let bt = alerts::board_temp_c(board);
        let ct = alerts::chip_temp_c(board);
        temps.extend(bt);
        temps.extend(ct);
        board_temps.extend(bt);
        if usize::from(board.position) >= MAX_BOARDS {
            continue;
        }
        let n = board.position;
        if let Some(t) = bt {
            put(&mut m, format!("board_{n}_temp_c"), t);
        }
        if let Some(t) = ct {
            put(&mut m, format!("board_{n}_chip_temp_c"), t);
        }
        if let Some(h) = bhs {
            put(&mut m, format!("board_{n}_hashrate_hs"), h);
        }
        if let Some(c) = board.working_chips {
            put(&mut m, format!("board_{n}_chips"), f64::from(c));
        }
    }
    if let Some(max) = temps.iter().copied().reduce(f64::max) {
        put(&mut m, "temp_c", max);
    }
    let avg = data
        .average_temperature
        .map(|t| t.as_celsius())
        .filter(|t| t.is_finite() && *t > 0.0)
        .or_else(|| {
            (!board_temps.is_empty())
                .then(|| board_temps.iter().sum::<f64>() / board_temps.len() as f64)
        });
    if let Some(avg) = avg {
        put(&mut m, "temp_avg_c", avg);
    }
    if any_board_data {
        put(&mut m, "hashboards", f64::from(working_boards));
    }
    if let Some(e) = data.expected_hashboards {
        put(&mut m, "expected_hashboards", f64::from(e));
    }
    if let Some(c) = data.total_chips {
        put(&mut m, "chips", f64::from(c));
    }
    if let Some(c) = data.expected_chips {
        put(&mut m, "expected_chips", f64::from(c));
    }
    if let Some(t) = data.fluid_temperature.map(|t| t.as_celsius()) {
        put(&mut m, "fluid_temp_c", t);
    }

    // Fans.
    let mut rpms = Vec::new();
    for fan in &data.fans {
        let Some(rpm) = fan.rpm.map(|r| r.as_rpm()).filter(|r| r.is_finite()) else {
            continue;
        };
        rpms.push(rpm);
        if (0..MAX_FANS as i16).contains(&fan.position) {
            put(&mut m, format!("fan_{}_rpm", fan.position), rpm);
        }
    }
    if !rpms.is_empty() {
        put(
            &mut m,
            "fan_rpm",
            rpms.iter().sum::<f64>() / rpms.len() as f64,
        );
    }

    // Status.
    if let Some(up) = data.uptime {
        put(&mut m, "uptime_s", up.as_secs_f64());
    }
    if let Some(led) = data.light_flashing {
        put(&mut m, "led", if led { 1.0 } else { 0.0 });
    }

    // Pools.
    let (mut accepted, mut rejected) = (None::<u64>, None::<u64>);
    for (i, pool) in pools_flat(data).enumerate() {
        if let Some(a) = pool.accepted_shares {
            accepted = Some(accepted.unwrap_or(0).saturating_add(a));
        }
        if let Some(r) = pool.rejected_shares {
            rejected = Some(rejected.unwrap_or(0).saturating_add(r));
        }
        if i >= MAX_POOLS {
            continue;
        }
        if let Some(a) = pool.accepted_shares {
            put(&mut m, format!("pool_{i}_accepted"), a as f64);
        }
        if let Some(r) = pool.rejected_shares {
            put(&mut m, format!("pool_{i}_rejected"), r as f64);
        }
        if let Some(url) = &pool.url {
            label(&mut l, format!("pool_{i}_url"), &url.to_string());
        }
        if let Some(user) = &pool.user {
            label(&mut l, format!("pool_{i}_user"), user);
        }
        label(&mut l, format!("pool_{i}_status"), pool_status(pool));
    }
    if let Some(a) = accepted {
        put(&mut m, "shares_accepted", a as f64);
    }
    if let Some(r) = rejected {
        put(&mut m, "shares_rejected", r as f64);
    }

    // Labels.
    label(&mut l, "ip", &data.ip.to_string());
    if let Some(mac) = mac_text(data) {
        label(&mut l, "mac", &mac);
    }
    if let Some(sn) = data.serial_number.as_deref() {
        label(&mut l, "serial", sn);
    }
    if let Some(h) = data.hostname.as_deref() {
        label(&mut l, "hostname", h);
    }
    label(&mut l, "state", state);
    if let Some(os) = &data.operating_state {
        label(&mut l, "operating_state", &os.to_string());
    }
    if let Some(mode) = power_mode(data, state) {
        label(&mut l, "power_mode", mode);
    }
    if let Some(cb) = &data.control_board_version {
        label(&mut l, "control_board", &cb.to_string());
    }

    DeviceSnapshot {
        id,
        kind: KIND.to_string(),
        make: clip(&data.device_info.make, LABEL_MAX),
        model: clip(&data.device_info.model, LABEL_MAX),
        firmware: firmware_text(data),
        metrics: m,
        labels: l,
        alerts: miner_alerts(data, rules),
        raw: raw_summary(data),
    }
}

fn opt_f64(v: Option<f64>) -> Value {
    match v {
        Some(x) if x.is_finite() => json!((x * 1000.0).round() / 1000.0),
        _ => Value::Null,
    }
}

/// A compact JSON summary of the reading, at most [`RAW_MAX`] bytes: the
/// bulky parts are dropped first until it fits.
fn raw_summary(data: &MinerData) -> String {
    let ths = |h: &Option<HashRate>| opt_f64(h.as_ref().and_then(hashrate_hs).map(|v| v / 1e12));
    let boards: Vec<Value> = data
        .hashboards
        .iter()
        .take(MAX_BOARDS)
        .map(|b| {
            json!({
                "pos": b.position,
                "ths": ths(&b.hashrate),
                "temp_c": opt_f64(alerts::board_temp_c(b)),
                "chip_temp_c": opt_f64(alerts::chip_temp_c(b)),
                "chips": b.working_chips,
                "expected_chips": b.expected_chips,
                "active": b.active,
            })
        })
        .collect();
    let fans: Vec<Value> = data
        .fans
        .iter()
        .take(MAX_FANS)
        .map(|f| opt_f64(f.rpm.map(|r| r.as_rpm().round())))
        .collect();
    let pools: Vec<Value> = pools_flat(data)
        .take(MAX_POOLS)
        .map(|p| {
            json!({
                "url": p.url.as_ref().map(|u| clip(&u.to_string(), 96)),
                "user": p.user.as_deref().map(|u| clip(u, 64)),
                "alive": p.alive,
                "active": p.active,
                "accepted": p.accepted_shares,
                "rejected": p.rejected_shares,
            })
        })
        .collect();
    let messages: Vec<Value> = data
        .messages
        .iter()
        .take(8)
        .map(|msg| {
            json!({
                "code": msg.code,
                "severity": msg.severity.to_string(),
                "message": clip(&msg.message, 96),
            })
        })
        .collect();
    let mut v = json!({
        "ip": data.ip.to_string(),
        "mac": mac_text(data),
        "serial": data.serial_number.as_deref().map(|s| clip(s, 64)),
        "hostname": data.hostname.as_deref().map(|s| clip(s, 64)),
        "make": clip(&data.device_info.make, 64),
        "model": clip(&data.device_info.model, 64),
        "firmware": clip(&data.device_info.firmware, 64),
        "firmware_version": data.firmware_version.as_deref().map(|s| clip(s, 64)),
        "is_mining": data.is_mining,
        "operating_state": data.operating_state.as_ref().map(|s| clip(&s.to_string(), 64)),
        "hashrate_ths": ths(&data.hashrate),
        "expected_ths": ths(&data.expected_hashrate),
        "wattage_w": opt_f64(data.wattage.map(|w| w.as_watts())),
        "uptime_s": data.uptime.map(|u| u.as_secs()),
        "light_flashing": data.light_flashing,
        "boards": boards,
        "fans": fans,
        "pools": pools,
        "messages": messages,
    });
    for bulky in ["messages", "pools", "boards", "fans"] {
        let text = v.to_string();
        if text.len() <= RAW_MAX {
            return text;
        }
        if let Some(o) = v.as_object_mut() {
            o.remove(bulky);
        }
    }
    let text = v.to_string();
    if text.len() <= RAW_MAX {
        return text;
    }
    json!({ "ip": data.ip.to_string(), "mac": mac_text(data), "truncated": true }).to_string()
}

// ---------------------------------------------------------------------------
// Guarded calls: each in its own task, under a timeout.

/// Why a guarded asic-rs call gave no result.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// No answer within the limit; the task was aborted.
    TimedOut(Duration),
    /// The call panicked inside asic-rs.
    Panicked(String),
    /// The task was cancelled (the runtime is shutting down).
    Cancelled,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::TimedOut(d) => write!(f, "no answer within {} ms", d.as_millis()),
            CallError::Panicked(msg) => write!(f, "asic-rs panicked: {msg}"),
            CallError::Cancelled => write!(f, "the call was cancelled"),
        }
    }
}

/// Aborts the task when dropped, so a cancelled caller leaves no hung call.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `fut` in its own task for at most `limit`.
async fn guarded<T, F>(limit: Duration, fut: F) -> Result<T, CallError>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut task = AbortOnDrop(tokio::spawn(fut));
    match tokio::time::timeout(limit, &mut task.0).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if e.is_panic() => {
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(CallError::Panicked(clip(&msg, 200)))
        }
        Ok(Err(_)) => Err(CallError::Cancelled),
        Err(_) => Err(CallError::TimedOut(limit)),
    }
}

/// Runs `job` over `items` with at most `limit` in flight, spawning lazily
/// so a large range costs `limit` tasks at a time, not one per address.
async fn bounded<I, T, F, Fut>(items: I, limit: usize, job: F) -> Vec<T>
where
    I: IntoIterator,
    F: Fn(I::Item) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut items = items.into_iter();
    let mut set = JoinSet::new();
    let mut out = Vec::new();
    loop {
        while set.len() < limit.max(1) {
            match items.next() {
                Some(item) => {
                    set.spawn(job(item));
                }
                None => break,
            }
        }
        match set.join_next().await {
            Some(Ok(v)) => out.push(v),
            // The jobs catch their own panics (guarded); this is defence.
            Some(Err(e)) => warn!(error = %e, "a miner task failed"),
            None => break,
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The poller.

/// How the poller talks to miners.
#[derive(Debug, Clone)]
pub struct PollerConfig {
    /// Limit of one `get_data` (all the requests it makes to one miner).
    pub call_timeout: Duration,
    /// Limit of one write (reboot, power mode, LED, pools, power limit).
    /// Stock Antminer firmware answers a mode change only once mining has
    /// restarted, about a minute later, so this is longer than a read.
    pub write_timeout: Duration,
    /// Limit of identifying one address (port check, firmware probes, build).
    pub identify_timeout: Duration,
    /// Most miners contacted at once.
    pub concurrency: usize,
    /// Most addresses one [`MinerPoller::discover`] call tries, so a large
    /// range is swept over several calls instead of blocking polls for
    /// long (an address that does not answer costs about 2 s); addresses
    /// never tried go first.
    pub discover_batch: usize,
    /// Wait before retrying an address that did not answer; doubles per
    /// failure up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub rules: AlertRules,
}

impl Default for PollerConfig {
    fn default() -> Self {
        PollerConfig {
            call_timeout: Duration::from_secs(15),
            write_timeout: Duration::from_secs(120),
            identify_timeout: Duration::from_secs(10),
            concurrency: 32,
            discover_batch: 1024,
            backoff_min: Duration::from_secs(30),
            backoff_max: Duration::from_secs(15 * 60),
            rules: AlertRules::default(),
        }
    }
}

impl PollerConfig {
    /// Checks the limits make sense; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, d) in [
            ("call_timeout", self.call_timeout),
            ("write_timeout", self.write_timeout),
            ("identify_timeout", self.identify_timeout),
            ("backoff_min", self.backoff_min),
        ] {
            if d.is_zero() {
                return Err(format!("{name} is zero: give it a duration such as 10s"));
            }
        }
        if !(1..=1024).contains(&self.concurrency) {
            return Err(format!(
                "concurrency = {}: use 1 to 1024 miners at once",
                self.concurrency
            ));
        }
        if self.discover_batch == 0 {
            return Err("discover_batch is zero: give it 1 or more addresses per sweep".into());
        }
        if self.backoff_min > self.backoff_max {
            return Err(format!(
                "backoff_min ({:?}) is above backoff_max ({:?})",
                self.backoff_min, self.backoff_max
            ));
        }
        self.rules.validate()
    }
}

/// `min × 2^(n-1)`, at most `max`; `n` is the failure count (≥ 1).
fn backoff(min: Duration, max: Duration, n: u32) -> Duration {
    let factor = 1u32 << n.saturating_sub(1).min(20);
    min.saturating_mul(factor).min(max)
}

/// What the poller remembers of a miner it has seen answer.
#[derive(Debug, Clone, PartialEq)]
struct Identity {
    id: String,
    make: String,
    model: String,
    firmware: String,
    mac: Option<String>,
    serial: Option<String>,
    hostname: Option<String>,
    power_mode: Option<String>,
}

impl Identity {
    fn of(snap: &DeviceSnapshot) -> Identity {
        Identity {
            id: snap.id.clone(),
            make: snap.make.clone(),
            model: snap.model.clone(),
            firmware: snap.firmware.clone(),
            mac: snap.labels.get("mac").cloned(),
            serial: snap.labels.get("serial").cloned(),
            hostname: snap.labels.get("hostname").cloned(),
            power_mode: snap.labels.get("power_mode").cloned(),
        }
    }
}

/// One address in the configured ranges.
struct Entry {
    /// The asic-rs handle, once identified.
    miner: Option<Arc<dyn Miner>>,
    /// The last miner seen answering at this address.
    identity: Option<Identity>,
    /// Consecutive failed calls (identification or poll).
    failures: u32,
    /// Not contacted before this.
    retry_at: Option<Instant>,
    /// Poll round of the last answer, to prefer the newest address of an id.
    seen: u64,
}

impl Entry {
    fn empty() -> Entry {
        Entry {
            miner: None,
            identity: None,
            failures: 0,
            retry_at: None,
            seen: 0,
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| t <= now)
    }
}

/// The miners on this sentry's segment: one entry per configured address
/// at most, so memory is bounded by the ranges.
pub struct MinerPoller {
    config: PollerConfig,
    factory: Arc<MinerFactory>,
    entries: HashMap<IpAddr, Entry>,
    round: u64,
}

/// The miner on an address when asic-rs answers; the reason otherwise.
type Identified = (IpAddr, Result<Arc<dyn Miner>, String>);
type Polled = (IpAddr, Result<MinerData, String>);

impl MinerPoller {
    pub fn new(config: PollerConfig) -> MinerPoller {
        let firmwares: Vec<Arc<dyn FirmwareEntry>> = vec![
            Arc::new(asic_rs::antminer::firmware::AntMinerStockFirmware::default()),
            Arc::new(asic_rs::whatsminer::firmware::WhatsMinerFirmware::default()),
            Arc::new(asic_rs::avalonminer::firmware::AvalonStockFirmware::default()),
        ];
        let probe = config.identify_timeout.min(Duration::from_secs(1));
        let factory = MinerFactory::new()
            .with_firmwares(firmwares)
            .with_port_check(true)
            .with_connectivity_timeout(probe)
            .with_connectivity_retries(1)
            .with_identification_timeout(config.identify_timeout)
            // One address at a time per call: its four port probes.
            .with_concurrent_limit(4)
            .with_nofile_adjustment(false);
        MinerPoller {
            config,
            factory: Arc::new(factory),
            entries: HashMap::new(),
            round: 0,
        }
    }

    /// How many addresses hold an identified miner.
    pub fn known(&self) -> usize {
        self.entries.values().filter(|e| e.miner.is_some()).count()
    }

    /// Identifies the addresses in `addrs` that hold no known miner, at most
    /// `concurrency` at once and `discover_batch` per call, skipping those
    /// still in backoff. `addrs` is the whole configured range: entries for
    /// other addresses are dropped. Returns how many miners were newly
    /// identified.
    pub async fn discover(&mut self, addrs: &[IpAddr]) -> usize {
        let wanted: HashSet<IpAddr> = addrs.iter().copied().collect();
        self.entries.retain(|ip, _| wanted.contains(ip));
        let now = Instant::now();
        let mut seen = HashSet::new();
        // Never tried first, then the longest waiting.
        let mut todo: Vec<(Option<Instant>, IpAddr)> = Vec::new();
        for ip in addrs.iter().copied().filter(|ip| seen.insert(*ip)) {
            match self.entries.get(&ip) {
                None => todo.push((None, ip)),
                Some(e) if e.miner.is_none() && e.due(now) => {
                    todo.push((Some(e.retry_at.unwrap_or(now)), ip))
                }
                Some(_) => {}
            }
        }
        todo.sort_by_key(|(at, _)| *at);
        todo.truncate(self.config.discover_batch);
        let todo: Vec<IpAddr> = todo.into_iter().map(|(_, ip)| ip).collect();
        if todo.is_empty() {
            return 0;
        }
        // The factory bounds itself with its own timeout; ours also covers
        // the port checks before it and a hang it does not see.
        let limit = self.config.identify_timeout + Duration::from_secs(3);
        let factory = self.factory.clone();
        let results: Vec<Identified> = bounded(todo, self.config.concurrency, |ip| {
            let factory = factory.clone();
            async move {
                let found = guarded(limit, async move { factory.scan_miner(ip).await }).await;
                let result = match found {
                    Ok(Ok(Some(miner))) => Ok(Arc::<dyn Miner>::from(miner)),
                    Ok(Ok(None)) => Err("no supported miner answered".to_string()),
                    Ok(Err(e)) => Err(format!("identification failed: {e:#}")),
                    Err(e) => Err(format!("identification: {e}")),
                };
                (ip, result)
            }
        })
        .await;
        let now = Instant::now();
        let mut identified = 0;
        for (ip, result) in results {
            let entry = self.entries.entry(ip).or_insert_with(Entry::empty);
            match result {
                Ok(miner) => {
                    let info = miner.get_device_info();
                    debug!(%ip, make = %info.make, model = %info.model, "miner identified");
                    entry.miner = Some(miner);
                    entry.failures = 0;
                    entry.retry_at = None;
                    identified += 1;
                }
                Err(reason) => {
                    entry.failures = entry.failures.saturating_add(1);
                    let wait = backoff(
                        self.config.backoff_min,
                        self.config.backoff_max,
                        entry.failures,
                    );
                    entry.retry_at = Some(now + wait);
                    if entry.identity.is_some() {
                        debug!(%ip, %reason, retry_in = ?wait, "known miner still not answering");
                    }
                }
            }
        }
        // Addresses that never answered and have no history are only a
        // backoff record; they stay (bounded by the range) to pace retries.
        identified
    }

    /// Reads every known miner (at most `concurrency` at once, each under
    /// `call_timeout`). A miner that fails is reported under its last id
    /// with `state=offline`; after repeated failures it is polled on a
    /// backoff. A MAC seen at a new address keeps its id and the old
    /// address entry is dropped.
    pub async fn poll(&mut self) -> Vec<DeviceSnapshot> {
        self.round += 1;
        let round = self.round;
        let now = Instant::now();
        let todo: Vec<(IpAddr, Arc<dyn Miner>)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.due(now))
            .filter_map(|(ip, e)| e.miner.clone().map(|m| (*ip, m)))
            .collect();
        let limit = self.config.call_timeout;
        let results: Vec<Polled> =
            bounded(todo, self.config.concurrency, |(ip, miner)| async move {
                let read = async move {
                    let mut data = miner.get_data().await;
                    if needs_soft_off_probe(&data)
                        && avalon_soft_off(miner.as_ref()).await == Some(true)
                    {
                        mark_asleep(&mut data);
                    }
                    data
                };
                let result = match guarded(limit, read).await {
                    Ok(data) if has_readings(&data) => Ok(data),
                    Ok(_) => Err("no reply to any request".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                (ip, result)
            })
            .await;

        let now = Instant::now();
        let mut fresh: Vec<(IpAddr, DeviceSnapshot)> = Vec::new();
        let mut failed: HashMap<IpAddr, String> = HashMap::new();
        for (ip, result) in results {
            let Some(entry) = self.entries.get_mut(&ip) else {
                continue;
            };
            match result {
                Ok(data) => {
                    entry.failures = 0;
                    entry.retry_at = None;
                    entry.seen = round;
                    match resolve_id(&data, entry.identity.as_ref()) {
                        Some(id) => {
                            let snap = build_snapshot(&data, &self.config.rules, id);
                            entry.identity = Some(Identity::of(&snap));
                            fresh.push((ip, snap));
                        }
                        None => warn!(
                            %ip,
                            make = %data.device_info.make,
                            model = %data.device_info.model,
                            "miner answered without a MAC or serial number: not reported"
                        ),
                    }
                }
                Err(reason) => {
                    entry.failures = entry.failures.saturating_add(1);
                    if entry.failures >= FAILS_BEFORE_BACKOFF {
                        let n = entry.failures - FAILS_BEFORE_BACKOFF + 1;
                        entry.retry_at = Some(
                            now + backoff(self.config.backoff_min, self.config.backoff_max, n),
                        );
                    }
                    if entry.failures >= FAILS_BEFORE_REIDENTIFY {
                        entry.miner = None;
                    }
                    debug!(%ip, %reason, failures = entry.failures, "miner poll failed");
                    failed.insert(ip, reason);
                }
            }
        }

        // One address per id: the newest answer wins, older entries go.
        let mut owner: HashMap<String, IpAddr> = HashMap::new();
        fresh.sort_by_key(|(ip, _)| *ip);
        fresh.retain(|(ip, snap)| match owner.get(&snap.id) {
            Some(other) => {
                warn!(id = %snap.id, %ip, other = %other, "two addresses answer with one id: reporting the first");
                false
            }
            None => {
                owner.insert(snap.id.clone(), *ip);
                true
            }
        });
        let stale: Vec<IpAddr> = self
            .entries
            .iter()
            .filter_map(|(ip, e)| {
                let id = &e.identity.as_ref()?.id;
                let new_ip = owner.get(id)?;
                (new_ip != ip && e.seen < round).then_some(*ip)
            })
            .collect();
        for ip in stale {
            debug!(%ip, "miner moved to another address: dropping the old entry");
            self.entries.remove(&ip);
        }

        // Known miners that did not answer (now or still in backoff); if
        // two silent addresses share an id, the one seen last speaks.
        let mut out: Vec<DeviceSnapshot> = fresh.into_iter().map(|(_, s)| s).collect();
        let mut silent: Vec<(&IpAddr, &Entry, &Identity)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.seen != round)
            .filter_map(|(ip, e)| e.identity.as_ref().map(|i| (ip, e, i)))
            .filter(|(_, _, i)| !owner.contains_key(&i.id))
            .collect();
        silent.sort_by_key(|(ip, e, _)| (std::cmp::Reverse(e.seen), **ip));
        let mut reported: HashSet<&str> = HashSet::new();
        for (ip, e, ident) in silent {
            if !reported.insert(ident.id.as_str()) {
                continue;
            }
            let reason = match (failed.get(ip), &e.miner) {
                (Some(r), _) => r.clone(),
                (None, Some(_)) => "not polled: waiting before retrying".to_string(),
                (None, None) => "not answering identification".to_string(),
            };
            out.push(offline_snapshot(ident, *ip, &reason, e.failures));
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The address of the miner reported as `device_id`.
    pub fn address_of(&self, device_id: &str) -> Option<IpAddr> {
        self.entry_of(device_id).map(|(ip, _)| ip)
    }

    fn entry_of(&self, device_id: &str) -> Option<(IpAddr, &Entry)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.identity.as_ref().is_some_and(|i| i.id == device_id))
            .max_by_key(|(ip, e)| (e.seen, std::cmp::Reverse(**ip)))
            .map(|(ip, e)| (*ip, e))
    }

    /// Runs an approved action on one miner: `reboot`, `setPowerMode`
    /// `["sleep"|"normal"|"low"|"high"]`, `setLED` `[bool]`, `setupPools`
    /// `[{"pools":[{"url","user","password"}]}]`, `setPowerLimit` `[watts]`.
    pub async fn execute(
        &self,
        method: &str,
        params: &Value,
        target: &str,
    ) -> Result<Value, String> {
        self.prepare(method, params, target)?.run().await
    }

    /// Checks an action against the target and what asic-rs supports for
    /// its model, without contacting it. The returned action owns what it
    /// needs, so a caller holding the poller behind a lock can release the
    /// lock before [`PreparedAction::run`] (a write may take a minute).
    pub fn prepare(
        &self,
        method: &str,
        params: &Value,
        target: &str,
    ) -> Result<PreparedAction, String> {
        let Some((ip, entry)) = self.entry_of(target) else {
            return Err(format!("no miner `{target}` on this sentry"));
        };
        let action = parse_action(method, params)?;
        let ident = entry.identity.as_ref();
        let Some(miner) = entry.miner.clone() else {
            return Err(format!(
                "miner `{target}` at {ip} is offline (it has not answered since {} failed calls): try again once it reports again",
                entry.failures
            ));
        };
        let info = miner.get_device_info();
        let prepared = PreparedAction {
            miner,
            action,
            target: target.to_string(),
            ip,
            make: info.make,
            model: info.model,
            firmware: info.firmware,
            power_mode: ident.and_then(|i| i.power_mode.clone()),
            timeout: self.config.write_timeout,
        };
        prepared.check_supported()?;
        Ok(prepared)
    }
}

/// Whether asic-rs got any answer at all (it fills a `MinerData` even when
/// every request failed, listing the model's boards with empty fields).
#[doc(hidden)] // pub for the fuzz targets
pub fn has_readings(data: &MinerData) -> bool {
    data.mac.is_some()
        || data.serial_number.is_some()
        || data.hostname.is_some()
        || data.firmware_version.is_some()
        || data.hashrate.is_some()
        || data.wattage.is_some()
        || data.uptime.is_some()
        || !data.fans.is_empty()
        || data.pools.iter().any(|g| !g.pools.is_empty())
        || data.hashboards.iter().any(alerts::board_has_reading)
}

/// Whether to ask a stock Avalon whether it is soft-off: asic-rs reads no
/// sleep state from that firmware (`is_mining` is always true), so a
/// reading at (almost) no hashrate is checked against `SoftOFF[1]`.
#[doc(hidden)] // pub for the fuzz targets
pub fn needs_soft_off_probe(data: &MinerData) -> bool {
    if !data
        .device_info
        .make
        .to_ascii_lowercase()
        .contains("avalon")
        || !data.is_mining
        || data.operating_state.is_some()
    {
        return false;
    }
    let hs = data.hashrate.as_ref().and_then(hashrate_hs);
    let expected = data.expected_hashrate.as_ref().and_then(hashrate_hs);
    match (hs, expected) {
        (None, _) => true,
        (Some(h), Some(e)) if e > 0.0 => h <= e * 0.01,
        (Some(h), _) => h <= 0.0,
    }
}

/// The `SoftOFF` flag of a stock Avalon's `stats` (`MM ID0`), if it has one.
async fn avalon_soft_off(miner: &dyn Miner) -> Option<bool> {
    let stats = miner
        .get_api_result(&MinerCommand::RPC {
            command: "stats",
            parameters: None,
        })
        .await
        .ok()?;
    soft_off_flag(&stats)
}

/// `SoftOFF` in a stock Avalon's `stats` reply, if it is there.
#[doc(hidden)] // pub for the fuzz targets
pub fn soft_off_flag(stats: &Value) -> Option<bool> {
    let flag = stats
        .pointer("/STATS/0/MM ID0/SoftOFF")
        .or_else(|| stats.pointer("/STATS/0/MM ID0:Summary/STATS/SoftOFF"))?;
    flag.as_u64()
        .map(|n| n != 0)
        .or_else(|| flag.as_str().map(|s| s.trim() != "0"))
}

/// A reading of a miner the firmware says is paused.
fn mark_asleep(data: &mut MinerData) {
    data.is_mining = false;
    data.operating_state = Some(OperatingState::Paused {});
}

/// The id of a reading from a known address: its MAC; without one, the
/// previous id when make, model and serial agree; else `sn-<serial>`.
fn resolve_id(data: &MinerData, prev: Option<&Identity>) -> Option<String> {
    if let Some(mac) = mac_text(data) {
        return Some(mac);
    }
    let serial = serial_text(data);
    if let Some(prev) = prev {
        let same_model = prev.make == data.device_info.make && prev.model == data.device_info.model;
        let prev_serial = prev.serial.as_deref().and_then(clean_serial);
        let serial_agrees = match (&serial, &prev_serial) {
            (Some(a), Some(b)) => a == b,
            (None, _) => true,
            (Some(_), None) => false,
        };
        if same_model && serial_agrees {
            return Some(prev.id.clone());
        }
    }
    serial.map(|s| format!("sn-{s}"))
}

fn offline_snapshot(ident: &Identity, ip: IpAddr, reason: &str, failures: u32) -> DeviceSnapshot {
    let mut labels = BTreeMap::new();
    label(&mut labels, "state", "offline");
    label(&mut labels, "ip", &ip.to_string());
    for (k, v) in [
        ("mac", &ident.mac),
        ("serial", &ident.serial),
        ("hostname", &ident.hostname),
    ] {
        if let Some(v) = v {
            label(&mut labels, k, v);
        }
    }
    DeviceSnapshot {
        id: ident.id.clone(),
        kind: KIND.to_string(),
        make: ident.make.clone(),
        model: ident.model.clone(),
        firmware: ident.firmware.clone(),
        metrics: BTreeMap::new(),
        labels,
        alerts: Vec::new(),
        raw: json!({ "ip": ip.to_string(), "error": clip(reason, 256), "failures": failures })
            .to_string(),
    }
}

// ---------------------------------------------------------------------------
// Actions.

/// A power mode `setPowerMode` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerMode {
    Sleep,
    Normal,
    Low,
    High,
}

impl PowerMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            PowerMode::Sleep => "sleep",
            PowerMode::Normal => "normal",
            PowerMode::Low => "low",
            PowerMode::High => "high",
        }
    }
}

/// One pool of `setupPools`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub url: String,
    pub user: String,
    pub password: String,
}

/// A validated miner action.
#[derive(Debug, Clone, PartialEq)]
pub enum MinerAction {
    Reboot,
    SetPowerMode(PowerMode),
    SetLed(bool),
    SetupPools(Vec<PoolSpec>),
    SetPowerLimit(f64),
}

impl MinerAction {
    /// `setPowerMode low` and the like, for messages.
    pub fn describe(&self) -> String {
        match self {
            MinerAction::Reboot => "reboot".into(),
            MinerAction::SetPowerMode(m) => format!("setPowerMode {}", m.as_str()),
            MinerAction::SetLed(on) => format!("setLED {on}"),
            MinerAction::SetupPools(p) => format!("setupPools ({} pools)", p.len()),
            MinerAction::SetPowerLimit(w) => format!("setPowerLimit {w} W"),
        }
    }
}

/// The single parameter of `params` (`[x]`).
fn one_param<'a>(method: &str, params: &'a Value, shape: &str) -> Result<&'a Value, String> {
    match params.as_array().map(Vec::as_slice) {
        Some([one]) => Ok(one),
        _ => Err(format!(
            "{method} takes one parameter, {shape}; got {}",
            clip(&params.to_string(), 120)
        )),
    }
}

/// Validates an action and its parameters; pure.
pub fn parse_action(method: &str, params: &Value) -> Result<MinerAction, String> {
    match method {
        "reboot" => match params {
            Value::Null => Ok(MinerAction::Reboot),
            Value::Array(a) if a.is_empty() => Ok(MinerAction::Reboot),
            other => Err(format!(
                "reboot takes no parameters; got {}",
                clip(&other.to_string(), 120)
            )),
        },
        "setPowerMode" => {
            let shape = r#"["sleep"|"normal"|"low"|"high"]"#;
            let mode = match one_param(method, params, shape)?.as_str() {
                Some("sleep") => PowerMode::Sleep,
                Some("normal") => PowerMode::Normal,
                Some("low") => PowerMode::Low,
                Some("high") => PowerMode::High,
                _ => {
                    return Err(format!(
                        "setPowerMode takes {shape}; got {}",
                        clip(&params.to_string(), 120)
                    ))
                }
            };
            Ok(MinerAction::SetPowerMode(mode))
        }
        "setLED" => match one_param(method, params, "[true|false]")?.as_bool() {
            Some(on) => Ok(MinerAction::SetLed(on)),
            None => Err(format!(
                "setLED takes [true|false]; got {}",
                clip(&params.to_string(), 120)
            )),
        },
        "setupPools" => {
            let shape = r#"[{"pools":[{"url","user","password"}]}]"#;
            let arg = one_param(method, params, shape)?;
            let Some(obj) = arg.as_object() else {
                return Err(format!("setupPools takes {shape}"));
            };
            if let Some(k) = obj.keys().find(|k| *k != "pools") {
                return Err(format!("setupPools: unknown field `{k}`; the shape is {shape}"));
            }
            let Some(list) = obj.get("pools").and_then(Value::as_array) else {
                return Err(format!("setupPools: `pools` must be a list; the shape is {shape}"));
            };
            if list.is_empty() || list.len() > MAX_POOLS_CONFIG {
                return Err(format!(
                    "setupPools takes 1 to {MAX_POOLS_CONFIG} pools; got {}",
                    list.len()
                ));
            }
            list.iter()
                .enumerate()
                .map(|(i, p)| parse_pool(i, p))
                .collect::<Result<Vec<_>, _>>()
                .map(MinerAction::SetupPools)
        }
        "setPowerLimit" => {
            let arg = one_param(method, params, "[watts]")?;
            match arg.as_f64() {
                Some(w) if w.is_finite() && w > 0.0 && w <= MAX_POWER_LIMIT_W => {
                    Ok(MinerAction::SetPowerLimit(w))
                }
                _ => Err(format!(
                    "setPowerLimit takes [watts], a number above 0 and at most {MAX_POWER_LIMIT_W}; got {}",
                    clip(&arg.to_string(), 60)
                )),
            }
        }
        other => Err(format!(
            "unknown miner action `{}`: use reboot, setPowerMode, setLED, setupPools or setPowerLimit",
            clip(other, 60)
        )),
    }
}

fn parse_pool(i: usize, p: &Value) -> Result<PoolSpec, String> {
    let Some(obj) = p.as_object() else {
        return Err(format!(
            "setupPools: pool {i} must be an object {{url, user, password}}"
        ));
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "url" | "user" | "password"))
    {
        return Err(format!(
            "setupPools: pool {i} has unknown field `{k}`; use url, user, password"
        ));
    }
    let text = |key: &str| obj.get(key).and_then(Value::as_str).map(str::trim);
    let url = text("url").unwrap_or("");
    if url.is_empty() {
        return Err(format!("setupPools: pool {i} has no url"));
    }
    if url.len() > 256 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("setupPools: pool {i} url is not a pool URL (spaces, control characters or over 256 bytes)"));
    }
    let parsed = PoolURL::from(url.to_string());
    if parsed.host.is_empty() || parsed.port == 0 {
        return Err(format!(
            "setupPools: pool {i} url `{}` is not a pool URL: use stratum+tcp://host:port",
            clip(url, 80)
        ));
    }
    let user = match obj.get("user") {
        Some(Value::String(u)) if !u.trim().is_empty() && u.len() <= 256 => u.trim().to_string(),
        _ => {
            return Err(format!(
                "setupPools: pool {i} needs a non-empty user (the worker name)"
            ))
        }
    };
    let password = match obj.get("password") {
        None | Some(Value::Null) => "x".to_string(),
        Some(Value::String(p)) if p.len() <= 256 => p.clone(),
        Some(_) => {
            return Err(format!(
                "setupPools: pool {i} password must be a string of at most 256 bytes"
            ))
        }
    };
    Ok(PoolSpec {
        url: url.to_string(),
        user,
        password,
    })
}

/// An action checked against its target, ready to run; owns its handle.
pub struct PreparedAction {
    miner: Arc<dyn Miner>,
    action: MinerAction,
    target: String,
    ip: IpAddr,
    make: String,
    model: String,
    firmware: String,
    /// The mode the last snapshot showed.
    power_mode: Option<String>,
    timeout: Duration,
}

impl PreparedAction {
    fn who(&self) -> String {
        format!("{} {} (miner `{}`)", self.make, self.model, self.target)
    }

    fn unsupported(&self, what: &str) -> String {
        format!(
            "{what} is not supported on {} {} (miner `{}`, {} firmware): asic-rs offers no way to do it for this model",
            self.make, self.model, self.target, self.firmware
        )
    }

    fn check_supported(&self) -> Result<(), String> {
        let m = &self.miner;
        let ok = match &self.action {
            MinerAction::Reboot => m.supports_restart(),
            MinerAction::SetPowerMode(PowerMode::Sleep) => m.supports_pause(),
            MinerAction::SetPowerMode(PowerMode::Normal) => {
                m.supports_resume() || m.supports_tuning_config()
            }
            MinerAction::SetPowerMode(PowerMode::Low | PowerMode::High) => {
                m.supports_tuning_config()
            }
            MinerAction::SetLed(_) => m.supports_set_fault_light(),
            MinerAction::SetupPools(_) => m.supports_pools_config(),
            MinerAction::SetPowerLimit(_) => m.supports_set_power_limit(),
        };
        if ok {
            Ok(())
        } else {
            Err(self.unsupported(&self.action.describe()))
        }
    }

    /// Runs the action in its own task under the write timeout.
    pub async fn run(self) -> Result<Value, String> {
        let what = self.action.describe();
        let miner = self.miner.clone();
        let action = self.action.clone();
        let back_from_level = matches!(self.power_mode.as_deref(), Some("low" | "high"));
        let result = guarded(self.timeout, async move {
            run_action(miner, action, back_from_level).await
        })
        .await;
        match result {
            Ok(Ok(true)) => Ok(json!({
                "device": self.target,
                "ip": self.ip.to_string(),
                "done": what,
            })),
            Ok(Ok(false)) => Err(format!(
                "{} did not apply {what}: the firmware refused it or did not confirm it",
                self.who()
            )),
            Ok(Err(e)) => Err(format!("{what} failed on {}: {}", self.who(), clip(&e, 300))),
            Err(CallError::TimedOut(d)) => Err(format!(
                "{what} on {} got no answer within {} s; it may still take effect: check the next heartbeat",
                self.who(),
                d.as_secs()
            )),
            Err(e) => Err(format!("{what} on {} failed: {e}", self.who())),
        }
    }
}

/// The asic-rs calls of one action. `Ok(false)`: the firmware said no.
async fn run_action(
    miner: Arc<dyn Miner>,
    action: MinerAction,
    back_from_level: bool,
) -> Result<bool, String> {
    let err = |e: anyhow::Error| format!("{e:#}");
    let mode = |m: MiningMode| TuningConfig::new(TuningTarget::MiningMode(m));
    match action {
        MinerAction::Reboot => miner.restart().await.map_err(err),
        MinerAction::SetPowerMode(PowerMode::Sleep) => miner.pause(None).await.map_err(err),
        MinerAction::SetPowerMode(PowerMode::Normal) => {
            if miner.supports_resume() && !miner.resume(None).await.map_err(err)? {
                return Ok(false);
            }
            // Resume wakes a sleeping miner; a miner in low or high mode
            // also needs its mode set back.
            if miner.supports_tuning_config() && (back_from_level || !miner.supports_resume()) {
                return miner
                    .set_tuning_config(mode(MiningMode::Normal), None)
                    .await
                    .map_err(err);
            }
            Ok(true)
        }
        MinerAction::SetPowerMode(PowerMode::Low) => miner
            .set_tuning_config(mode(MiningMode::Low), None)
            .await
            .map_err(err),
        MinerAction::SetPowerMode(PowerMode::High) => miner
            .set_tuning_config(mode(MiningMode::High), None)
            .await
            .map_err(err),
        MinerAction::SetLed(on) => miner.set_fault_light(on).await.map_err(err),
        MinerAction::SetupPools(pools) => {
            let group = PoolGroupConfig {
                name: "default".into(),
                quota: 1,
                pools: pools
                    .into_iter()
                    .map(|p| PoolConfig {
                        url: PoolURL::from(p.url),
                        username: p.user,
                        password: p.password,
                    })
                    .collect(),
            };
            miner.set_pools_config(vec![group]).await.map_err(err)
        }
        MinerAction::SetPowerLimit(w) => {
            let limit = power_from_watts(w)?;
            miner.set_power_limit(limit).await.map_err(err)
        }
    }
}

/// asic-rs takes `measurements::Power`, a crate this one does not depend
/// on; its serde form (`{"watts": w}`) builds one.
fn power_from_watts<T: serde::de::DeserializeOwned>(w: f64) -> Result<T, String> {
    serde_json::from_value(json!({ "watts": w }))
        .map_err(|e| format!("cannot express {w} W for asic-rs: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::tests::{celsius, healthy, ths, watts};
    use hashfleet_shared::wire::Severity;

    fn rules() -> AlertRules {
        AlertRules::default()
    }

    #[test]
    fn healthy_snapshot_has_mac_id_base_units_and_no_alerts() {
        let s = snapshot(&healthy(), &rules()).unwrap();
        assert_eq!(s.id, "02:48:ab:cd:ef:01");
        assert_eq!(s.kind, "miner");
        assert_eq!(s.make, "AntMiner");
        assert_eq!(s.model, "S21");
        assert_eq!(s.firmware, "AntMiner Stock 2024.01.01");
        assert!(s.alerts.is_empty(), "{:?}", s.alerts);
        let m = &s.metrics;
        let close = |k: &str, v: f64| {
            let got = m
                .get(k)
                .copied()
                .unwrap_or_else(|| panic!("no metric {k}: {m:?}"));
            assert!(
                (got - v).abs() <= v.abs() * 1e-9 + 1e-6,
                "{k} = {got}, want {v}"
            );
        };
        close("hashrate_hs", 200e12);
        close("expected_hashrate_hs", 200e12);
        close("power_w", 3500.0);
        close("efficiency_j_per_th", 17.5);
        close("temp_c", 70.0);
        close("temp_avg_c", 60.0);
        close("board_1_temp_c", 60.0);
        close("board_1_chip_temp_c", 70.0);
        close("board_2_hashrate_hs", 66.7e12);
        close("board_0_chips", 108.0);
        close("hashboards", 3.0);
        close("expected_hashboards", 3.0);
        close("chips", 324.0);
        close("fan_3_rpm", 5800.0);
        close("fan_rpm", 5800.0);
        close("uptime_s", 7200.0);
        close("pool_1_accepted", 1001.0);
        close("pool_2_rejected", 2.0);
        close("shares_accepted", 3003.0);
        close("led", 0.0);
        let l = &s.labels;
        assert_eq!(l["ip"], "10.0.0.7");
        assert_eq!(l["mac"], "02:48:ab:cd:ef:01");
        assert_eq!(l["serial"], "JYZZ0001");
        assert_eq!(l["hostname"], "s21-rack1");
        assert_eq!(l["state"], "mining");
        assert_eq!(l["pool_0_url"], "stratum+tcp://pool0.example:3333");
        assert_eq!(l["pool_0_user"], "acct.worker");
        assert_eq!(l["pool_0_status"], "active");
        assert_eq!(l["pool_1_status"], "alive");
        let raw: Value = serde_json::from_str(&s.raw).unwrap();
        assert!(s.raw.len() <= RAW_MAX);
        assert_eq!(raw["hashrate_ths"], json!(200.0));
    }

    #[test]
    fn hashrate_units_convert_to_hashes_per_second() {
        let mut d = healthy();
        d.hashrate = Some(HashRate {
            value: 195_000.0,
            unit: HashRateUnit::GigaHash,
            algo: d.device_info.algo,
        });
        d.expected_hashrate = Some(ths(200.0).as_unit(HashRateUnit::PetaHash));
        let s = snapshot(&d, &rules()).unwrap();
        assert!((s.metrics["hashrate_hs"] - 195e12).abs() < 1.0);
        assert!((s.metrics["expected_hashrate_hs"] - 200e12).abs() < 1.0);
        assert_eq!(format_hashrate(195e12), "195.00 TH/s");
    }

    #[test]
    fn overheated_board_is_critical() {
        let mut d = healthy();
        d.hashboards[0].board_temperature = Some(celsius(82.0));
        d.hashboards[0].outlet_chip_temperature = Some(celsius(97.0));
        let s = snapshot(&d, &rules()).unwrap();
        assert_eq!(s.metrics["temp_c"], 97.0_f64.max(s.metrics["temp_c"]));
        assert!((s.metrics["board_0_temp_c"] - 82.0).abs() < 1e-9);
        let a = &s.alerts[0];
        assert_eq!(
            (a.code.as_str(), a.severity),
            ("temp_critical", Severity::Critical)
        );
    }

    #[test]
    fn stopped_fan_is_fan_failure() {
        let mut d = healthy();
        d.fans[0].rpm = Some(crate::alerts::tests::rpm(0.0));
        let s = snapshot(&d, &rules()).unwrap();
        assert_eq!(s.alerts.len(), 1);
        assert_eq!(s.alerts[0].code, "fan_failure");
        assert_eq!(s.metrics["fan_0_rpm"], 0.0);
    }

    #[test]
    fn missing_board_is_hashboard_missing_and_counted() {
        let mut d = healthy();
        d.hashboards[0].working_chips = Some(0);
        d.hashboards[0].hashrate = Some(ths(0.0));
        d.hashboards[0].board_temperature = None;
        d.hashboards[0].outlet_chip_temperature = None;
        let s = snapshot(&d, &rules()).unwrap();
        assert_eq!(s.metrics["hashboards"], 2.0);
        assert_eq!(s.metrics["expected_hashboards"], 3.0);
        assert!(s
            .alerts
            .iter()
            .any(|a| a.code == "hashboard_missing" && a.severity == Severity::High));
    }

    #[test]
    fn all_pools_dead_is_critical() {
        let mut d = healthy();
        for p in &mut d.pools[0].pools {
            p.alive = Some(false);
        }
        let s = snapshot(&d, &rules()).unwrap();
        assert_eq!(s.alerts[0].code, "all_pools_dead");
        assert_eq!(s.alerts[0].severity, Severity::Critical);
        assert_eq!(s.labels["pool_0_status"], "dead");
    }

    #[test]
    fn no_mac_uses_serial_and_neither_gives_none() {
        let mut d = healthy();
        d.mac = None;
        assert_eq!(snapshot(&d, &rules()).unwrap().id, "sn-JYZZ0001");
        d.mac = Some("00:00:00:00:00:00".parse().unwrap());
        assert_eq!(device_id(&d).unwrap(), "sn-JYZZ0001");
        d.serial_number = Some("  unknown ".into());
        assert!(snapshot(&d, &rules()).is_none());
        d.serial_number = None;
        assert!(snapshot(&d, &rules()).is_none());
    }

    #[test]
    fn paused_or_not_mining_is_sleeping_and_error_state_is_error() {
        let mut d = healthy();
        d.is_mining = false;
        d.hashrate = Some(ths(0.0));
        let s = snapshot(&d, &rules()).unwrap();
        assert_eq!(s.labels["state"], "sleeping");
        assert_eq!(s.labels["power_mode"], "sleep");
        assert!(!s.metrics.contains_key("efficiency_j_per_th"));
        assert!(s.alerts.is_empty(), "{:?}", s.alerts);
        d.is_mining = true;
        d.operating_state = Some(OperatingState::Paused {});
        assert_eq!(snapshot(&d, &rules()).unwrap().labels["state"], "sleeping");
        d.operating_state = Some(OperatingState::Error {});
        assert_eq!(snapshot(&d, &rules()).unwrap().labels["state"], "error");
        d.operating_state = None;
        d.tuning_target = Some(TuningTarget::MiningMode(MiningMode::Low));
        assert_eq!(snapshot(&d, &rules()).unwrap().labels["power_mode"], "low");
        d.tuning_target = Some(TuningTarget::Power(watts(3000.0)));
        assert_eq!(
            snapshot(&d, &rules()).unwrap().metrics["power_limit_w"],
            3000.0
        );
    }

    #[test]
    fn raw_stays_bounded_and_labels_are_clipped() {
        let mut d = healthy();
        d.hostname = Some("h".repeat(10_000));
        d.messages = (0..500)
            .map(|i| {
                asic_rs::core::data::message::MinerMessage::new(
                    0,
                    i,
                    "m".repeat(5000),
                    asic_rs::core::data::message::MessageSeverity::Info,
                )
            })
            .collect();
        for g in 0..20 {
            let mut group = d.pools[0].clone();
            group.name = format!("g{g}");
            d.pools.push(group);
        }
        let s = snapshot(&d, &rules()).unwrap();
        assert!(s.raw.len() <= RAW_MAX, "{}", s.raw.len());
        serde_json::from_str::<Value>(&s.raw).unwrap();
        assert_eq!(s.labels["hostname"].len(), LABEL_MAX);
        assert!(!s.labels.contains_key("pool_8_url"));
        assert!(s.labels.contains_key("pool_7_url"));
    }

    #[test]
    fn unreachable_reading_has_no_readings() {
        let mut d = healthy();
        assert!(has_readings(&d));
        d.mac = None;
        d.serial_number = None;
        d.hostname = None;
        d.firmware_version = None;
        d.hashrate = None;
        d.wattage = None;
        d.uptime = None;
        d.fans.clear();
        // asic-rs keeps an empty default group.
        d.pools[0].pools.clear();
        for b in &mut d.hashboards {
            *b = asic_rs::core::data::board::BoardData::new(b.position, Some(108));
            // Some backends list the chips even with no reply.
            b.chips = (0..108)
                .map(|position| asic_rs::core::data::board::ChipData {
                    position,
                    ..Default::default()
                })
                .collect();
        }
        assert!(!has_readings(&d));
    }

    #[test]
    fn id_without_mac_sticks_to_the_previous_one_when_the_miner_agrees() {
        let first = snapshot(&healthy(), &rules()).unwrap();
        let prev = Identity::of(&first);
        let mut d = healthy();
        d.mac = None;
        assert_eq!(resolve_id(&d, Some(&prev)).unwrap(), "02:48:ab:cd:ef:01");
        d.serial_number = Some("OTHER".into());
        assert_eq!(resolve_id(&d, Some(&prev)).unwrap(), "sn-OTHER");
        d.serial_number = None;
        d.device_info.model = "S19".into();
        assert_eq!(resolve_id(&d, Some(&prev)), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let (min, max) = (Duration::from_secs(30), Duration::from_secs(300));
        assert_eq!(backoff(min, max, 1), Duration::from_secs(30));
        assert_eq!(backoff(min, max, 2), Duration::from_secs(60));
        assert_eq!(backoff(min, max, 4), Duration::from_secs(240));
        assert_eq!(backoff(min, max, 5), max);
        assert_eq!(backoff(min, max, u32::MAX), max);
        PollerConfig::default().validate().unwrap();
    }

    #[test]
    fn actions_parse_and_bad_params_are_named() {
        assert_eq!(parse_action("reboot", &json!([])), Ok(MinerAction::Reboot));
        assert_eq!(
            parse_action("setPowerMode", &json!(["sleep"])),
            Ok(MinerAction::SetPowerMode(PowerMode::Sleep))
        );
        assert_eq!(
            parse_action("setLED", &json!([true])),
            Ok(MinerAction::SetLed(true))
        );
        assert_eq!(
            parse_action("setPowerLimit", &json!([3000])),
            Ok(MinerAction::SetPowerLimit(3000.0))
        );
        let pools = json!([{"pools": [
            {"url": "stratum+tcp://a.example:3333", "user": "acct.w1", "password": "x"},
            {"url": "b.example:443", "user": "acct.w1"}
        ]}]);
        match parse_action("setupPools", &pools).unwrap() {
            MinerAction::SetupPools(p) => {
                assert_eq!(p.len(), 2);
                assert_eq!(p[1].password, "x");
            }
            other => panic!("{other:?}"),
        }
        let err = |m: &str, p: Value| parse_action(m, &p).unwrap_err();
        assert!(err("setPowerMode", json!(["turbo"])).contains("setPowerMode takes"));
        assert!(err("setLED", json!(["on"])).contains("setLED takes [true|false]"));
        assert!(err("setPowerLimit", json!([0])).contains("above 0"));
        assert!(err("setPowerLimit", json!([20001])).contains("at most 20000"));
        assert!(err("setupPools", json!([{"pools": []}])).contains("1 to 3 pools"));
        assert!(
            err("setupPools", json!([{"pools": [{"url": "", "user": "u"}]}])).contains("no url")
        );
        assert!(err("setupPools", json!([{"pools": [{"url": "a:1", "user": "u"}, {"url": "a:1", "user": "u"}, {"url": "a:1", "user": "u"}, {"url": "a:1", "user": "u"}]}])).contains("1 to 3 pools"));
        assert!(err(
            "setupPools",
            json!([{"pools": [{"url": "a.example:3333"}]}])
        )
        .contains("non-empty user"));
        assert!(err("reboot", json!([1])).contains("no parameters"));
        assert!(err("updateFirmware", json!([])).contains("unknown miner action `updateFirmware`"));
    }

    #[test]
    fn avalon_soft_off_makes_a_reading_asleep() {
        let mut d = healthy();
        d.device_info.make = "AvalonMiner".into();
        assert!(!needs_soft_off_probe(&d));
        d.hashrate = Some(ths(0.0));
        assert!(needs_soft_off_probe(&d));
        let stats = json!({"STATS": [{"MM ID0": {"SoftOFF": 1, "Elapsed": 10}}]});
        assert_eq!(soft_off_flag(&stats), Some(true));
        assert_eq!(
            soft_off_flag(&json!({"STATS": [{"MM ID0": {"SoftOFF": 0}}]})),
            Some(false)
        );
        assert_eq!(soft_off_flag(&json!({"STATS": [{}]})), None);
        mark_asleep(&mut d);
        let s = snapshot(&d, &rules()).unwrap();
        assert_eq!(s.labels["state"], "sleeping");
        assert!(s.alerts.is_empty(), "{:?}", s.alerts);
    }

    #[test]
    fn power_limit_reaches_asic_rs_in_watts() {
        let mut d = healthy();
        d.wattage = Some(power_from_watts(2750.0).unwrap());
        assert_eq!(d.wattage.unwrap().as_watts(), 2750.0);
    }

    #[tokio::test]
    async fn guarded_calls_survive_panics_and_hangs() {
        let panicked = guarded(Duration::from_secs(1), async {
            if true {
                panic!("unwrap on a closed socket");
            }
        })
        .await;
        assert!(matches!(panicked, Err(CallError::Panicked(m)) if m.contains("closed socket")));
        let hung = guarded(Duration::from_millis(50), std::future::pending::<()>()).await;
        assert_eq!(hung, Err(CallError::TimedOut(Duration::from_millis(50))));
        assert_eq!(guarded(Duration::from_secs(1), async { 7 }).await, Ok(7));
    }

    #[tokio::test]
    async fn unknown_target_and_unanswered_range_are_handled() {
        let mut poller = MinerPoller::new(PollerConfig {
            identify_timeout: Duration::from_millis(300),
            backoff_min: Duration::from_secs(60),
            ..PollerConfig::default()
        });
        let err = poller
            .execute("reboot", &json!([]), "aa:bb")
            .await
            .unwrap_err();
        assert_eq!(err, "no miner `aa:bb` on this sentry");
        // 127.204.0.x: nothing listens; every address gets a backoff record.
        let addrs: Vec<IpAddr> = (1..=4).map(|i| IpAddr::from([127, 204, 0, i])).collect();
        assert_eq!(poller.discover(&addrs).await, 0);
        assert_eq!(poller.entries.len(), 4);
        assert!(poller.entries.values().all(|e| e.retry_at.is_some()));
        // In backoff: not contacted again, so this returns at once.
        let started = Instant::now();
        assert_eq!(poller.discover(&addrs).await, 0);
        assert!(started.elapsed() < Duration::from_millis(200));
        // A batch of one tries only the address never tried before.
        poller.config.discover_batch = 1;
        let mut wider = addrs.clone();
        wider.push(IpAddr::from([127, 204, 0, 9]));
        poller.entries.values_mut().for_each(|e| e.retry_at = None);
        assert_eq!(poller.discover(&wider).await, 0);
        assert!(poller.entries.contains_key(&wider[4]));
        assert!(poller.entries.values().filter(|e| e.failures == 1).count() == 5);
        // The range shrinks: entries outside it go.
        poller.discover(&addrs[..1]).await;
        assert_eq!(poller.entries.len(), 1);
        assert!(poller.poll().await.is_empty());
    }
}
