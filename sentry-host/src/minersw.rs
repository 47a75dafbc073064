//! Miner software on a rig: the `[[miner]]` config entry, and a client that
//! polls the software's own local API into one `miner` device snapshot and
//! pauses or resumes it where that API can (xmrig only).
//!
//! Kinds and what is read:
//! - `xmrig`: `GET /2/summary` with the bearer `token` (`--http-access-token`);
//! - `trex`: `GET /summary`;
//! - `lolminer`: `GET /summary` (both the `Session`/`GPUs` shape and the
//!   newer `Workers`/`Algorithms` one);
//! - `gminer`: `GET /stat`;
//! - `cgminer`: the CGMiner API over TCP (TeamRedMiner and the like):
//!   `{"command":"summary+devs"}`, read until the miner closes.
//!
//! Every request has a timeout, and every reply is read in chunks up to
//! [`MAX_BODY`] bytes whatever its headers say. The network code only moves
//! bytes; replies are mapped by pure functions ([`parse_xmrig`],
//! [`parse_trex`], [`parse_lolminer`], [`parse_gminer`], [`parse_cgminer`],
//! [`parse_sloppy_json`]) that the tests drive without sockets.
//!
//! Polling never fails: a miner that cannot be reached is `state` =
//! `offline`; a reply that cannot be used is `state` = `error` with an
//! alert and the reason in the `error` label.

pub use hashfleet_agent::text::{check_name, clip, error_chain};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use hashfleet_shared::wire::{DeviceAlert, DeviceSnapshot, Severity};
use serde::Deserialize;
use serde_json::{json, Map, Number, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// Largest reply read from a miner or runtime API; the rest is not read.
pub const MAX_BODY: usize = 1024 * 1024;
/// Longest raw reply kept in a snapshot.
pub const MAX_RAW: usize = 4 * 1024;
/// Per-request timeout unless [`MinerClient::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// GPUs reported per miner; more are counted in `gpus` but not itemized.
pub const MAX_GPUS: usize = 32;
/// The CGMiner API port when a `cgminer` url has none.
pub const CGMINER_DEFAULT_PORT: u16 = 4028;
/// The actions [`MinerClient::execute`] knows.
pub const METHODS: [&str; 2] = ["pauseMiner", "resumeMiner"];

/// Deepest nesting [`parse_sloppy_json`] follows.
const MAX_DEPTH: usize = 32;
/// Longest label value taken from a reply.
const MAX_LABEL: usize = 128;
/// Longest token or name a config may hold.
const MAX_TOKEN: usize = 512;

/// Which miner software an entry polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MinerKind {
    Xmrig,
    Trex,
    Lolminer,
    Gminer,
    /// A CGMiner-API miner over TCP (TeamRedMiner, cgminer, sgminer).
    Cgminer,
}

impl MinerKind {
    /// The config spelling, also used in device ids.
    pub fn as_str(&self) -> &'static str {
        match self {
            MinerKind::Xmrig => "xmrig",
            MinerKind::Trex => "trex",
            MinerKind::Lolminer => "lolminer",
            MinerKind::Gminer => "gminer",
            MinerKind::Cgminer => "cgminer",
        }
    }

    /// The software's name: the snapshot's `make` unless the reply names
    /// it.
    pub fn software(&self) -> &'static str {
        match self {
            MinerKind::Xmrig => "XMRig",
            MinerKind::Trex => "T-Rex",
            MinerKind::Lolminer => "lolMiner",
            MinerKind::Gminer => "GMiner",
            MinerKind::Cgminer => "CGMiner API",
        }
    }

    /// The summary path of an HTTP API (`None` for the TCP CGMiner API).
    pub fn summary_path(&self) -> Option<&'static str> {
        match self {
            MinerKind::Xmrig => Some("/2/summary"),
            MinerKind::Trex | MinerKind::Lolminer => Some("/summary"),
            MinerKind::Gminer => Some("/stat"),
            MinerKind::Cgminer => None,
        }
    }
}

/// One `[[miner]]` in the sentry config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinerEntry {
    pub kind: MinerKind,
    /// `http://HOST:PORT` for the HTTP APIs; `HOST:PORT` or
    /// `tcp://HOST:PORT` for `cgminer` (port 4028 when left out).
    pub url: String,
    /// xmrig's `--http-access-token`, sent as a bearer token. Only xmrig
    /// takes one.
    pub token: Option<String>,
    /// The device id is `miner-<name>` when set, else
    /// `miner-<kind>-<host:port>`.
    pub name: Option<String>,
}

/// A `[[miner]]` or `[[runtime]]` entry that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryError {
    /// `miner` or `runtime`.
    pub table: &'static str,
    /// The entry's name, else its url.
    pub entry: String,
    pub problem: String,
}

impl EntryError {
    pub(crate) fn new(table: &'static str, entry: &str, problem: impl Into<String>) -> EntryError {
        EntryError {
            table,
            entry: clip(entry, 80),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[[{}]] `{}`: {}", self.table, self.entry, self.problem)
    }
}

impl std::error::Error for EntryError {}

/// Where an API listens: a host name or IP literal, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// `host:port`, with an IPv6 host in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl MinerEntry {
    /// Checks every field; the error says which and what to write instead.
    pub fn validate(&self) -> Result<(), EntryError> {
        self.endpoint().map(|_| ())
    }

    fn endpoint(&self) -> Result<Endpoint, EntryError> {
        let who = self.name.as_deref().unwrap_or(&self.url);
        let err = |p: String| EntryError::new("miner", who, p);
        if let Some(name) = &self.name {
            check_name(name).map_err(err)?;
        }
        if let Some(token) = &self.token {
            if self.kind != MinerKind::Xmrig {
                return Err(err(format!(
                    "`token` is only used by xmrig (its --http-access-token); the {} API takes none: remove it",
                    self.kind.as_str()
                )));
            }
            check_token(token).map_err(err)?;
        }
        match self.kind {
            MinerKind::Cgminer => parse_tcp_url(&self.url, CGMINER_DEFAULT_PORT),
            _ => parse_http_url(&self.url),
        }
        .map_err(err)
    }
}

/// Checks a bearer token: 1..=512 printable ASCII characters, no spaces.
pub(crate) fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() || token.len() > MAX_TOKEN {
        return Err(format!("`token` must be 1 to {MAX_TOKEN} characters"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "`token` may only hold printable ASCII characters (no spaces or control characters)"
                .into(),
        );
    }
    Ok(())
}

/// Parses `http://HOST:PORT` (a trailing `/` is allowed; no path, query or
/// user). HOST is an IP literal (IPv6 in brackets) or a host name.
pub(crate) fn parse_http_url(url: &str) -> Result<Endpoint, String> {
    let text = url.trim();
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(format!(
            "`url` `{}`: https is not supported (the sentry's HTTP client has no TLS): use http:// on the rig's LAN or localhost",
            clip(text, 120)
        ));
    }
    let Some(rest) = lower.strip_prefix("http://").map(|_| &text[7..]) else {
        return Err(format!(
            "`url` `{}` must look like http://HOST:PORT (e.g. http://127.0.0.1:4067)",
            clip(text, 120)
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "`url` `{}` must be just http://HOST:PORT, without a path, query or user",
            clip(text, 120)
        ));
    }
    parse_authority(rest, None).map_err(|p| format!("`url` `{}`: {p}", clip(text, 120)))
}

/// Parses `HOST:PORT` or `tcp://HOST:PORT`, with `default_port` when the
/// port is left out.
pub(crate) fn parse_tcp_url(url: &str, default_port: u16) -> Result<Endpoint, String> {
    let text = url.trim();
    let rest = if text
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case("tcp://"))
    {
        &text[6..]
    } else if text.contains("://") {
        return Err(format!(
            "`url` `{}`: the CGMiner API is plain TCP: write HOST:PORT or tcp://HOST:PORT (e.g. 127.0.0.1:{default_port})",
            clip(text, 120)
        ));
    } else {
        text
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "`url` `{}` must be just HOST:PORT",
            clip(text, 120)
        ));
    }
    parse_authority(rest, Some(default_port))
        .map_err(|p| format!("`url` `{}`: {p}", clip(text, 120)))
}

fn parse_authority(text: &str, default_port: Option<u16>) -> Result<Endpoint, String> {
    let (host, port) = if let Some(inner) = text.strip_prefix('[') {
        let (ip, after) = inner
            .split_once(']')
            .ok_or("an IPv6 address needs its closing `]`")?;
        ip.parse::<Ipv6Addr>()
            .map_err(|_| format!("`{ip}` is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("expected `:PORT` after `]`")?),
        };
        (ip.to_string(), port)
    } else {
        match text.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err("put an IPv6 address in brackets: [::1]:PORT".into())
            }
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (text.to_string(), None),
        }
    };
    if !host.contains(':') && host.parse::<IpAddr>().is_err() {
        let ok = !host.is_empty()
            && host.len() <= 253
            && !host.starts_with(['-', '.'])
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
        if !ok {
            return Err(format!(
                "`{}` is not an IP address or host name",
                clip(&host, 80)
            ));
        }
    }
    let port = match (port, default_port) {
        (Some(p), _) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("`{}` is not a port (1-65535)", clip(p, 20))),
            Ok(n) => n,
        },
        (None, Some(d)) => d,
        (None, None) => return Err("add the API port: HOST:PORT".into()),
    };
    Ok(Endpoint { host, port })
}

/// Why a call to an API failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    /// No connection, or no reply in time: the device is offline.
    Unreachable(String),
    /// It answered, but not with a usable reply.
    BadReply { message: String, raw: String },
    /// It answered with an HTTP error status.
    Refused { message: String, raw: String },
}

impl CallError {
    pub(crate) fn message(&self) -> &str {
        match self {
            CallError::Unreachable(m)
            | CallError::BadReply { message: m, .. }
            | CallError::Refused { message: m, .. } => m,
        }
    }
}

/// A reply as read: the status and at most [`MAX_BODY`] bytes of body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fetched {
    pub status: u16,
    pub body: Vec<u8>,
    /// The body went on past [`MAX_BODY`]; the rest was not read.
    pub truncated: bool,
}

impl Fetched {
    pub(crate) fn text(&self) -> String {
        lossy(&self.body)
    }
}

/// An HTTP client for LAN and localhost APIs: a total timeout per request,
/// no proxy from the environment, no redirects, a fresh connection each
/// time (miner APIs drop idle ones).
pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| format!("HTTP client: {}", error_chain(&e)))
}

/// Sends `req` and reads the body in chunks up to [`MAX_BODY`] bytes,
/// whatever `Content-Length` says, all within `timeout`.
pub(crate) async fn fetch(
    req: reqwest::RequestBuilder,
    who: &str,
    timeout: Duration,
) -> Result<Fetched, CallError> {
    let ms = timeout.as_millis();
    let work = async {
        let mut resp = req.send().await.map_err(|e| {
            let why = error_chain(&e);
            if e.is_connect() || e.is_timeout() {
                CallError::Unreachable(format!("{who}: no reply: {why}"))
            } else {
                CallError::BadReply {
                    message: format!("{who}: not an HTTP reply: {why}"),
                    raw: String::new(),
                }
            }
        })?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        let mut truncated = false;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_BODY - body.len();
                    if chunk.len() > room {
                        body.extend_from_slice(&chunk[..room]);
                        truncated = true;
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return Err(CallError::Unreachable(format!(
                        "{who}: reply not finished within {ms} ms"
                    )))
                }
                Err(e) => {
                    return Err(CallError::BadReply {
                        message: format!("{who}: reply cut short: {}", error_chain(&e)),
                        raw: lossy(&body),
                    })
                }
            }
        }
        Ok(Fetched {
            status,
            body,
            truncated,
        })
    };
    // reqwest's own timeout covers this too; this one cannot be missed.
    match tokio::time::timeout(timeout + Duration::from_millis(200), work).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Unreachable(format!(
            "{who}: no complete reply within {ms} ms"
        ))),
    }
}

/// Bytes as text, without the NULs some firmwares end replies with.
pub(crate) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches(['\0', ' ', '\r', '\n'])
        .to_string()
}

/// A number, or a string holding one; never NaN or infinite.
pub(crate) fn as_num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|x| x.is_finite())
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(as_num)
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

/// A pool address without any `user:password@`.
fn without_userinfo(pool: &str) -> String {
    match (pool.find("://"), pool.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &pool[..s + 3], &pool[at + 1..]),
        (None, Some(at)) => pool[at + 1..].to_string(),
        _ => pool.to_string(),
    }
}

/// What one reply says about a miner, before the client adds its id,
/// address, state and raw reply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MinerReading {
    /// The software's name when the reply gives it.
    pub make: String,
    pub model: String,
    pub firmware: String,
    pub metrics: BTreeMap<String, f64>,
    pub labels: BTreeMap<String, String>,
    pub alerts: Vec<DeviceAlert>,
    pub paused: bool,
}

impl MinerReading {
    fn put(&mut self, key: &str, v: Option<f64>) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.metrics.insert(key.to_string(), v);
        }
    }

    fn gpu(&mut self, i: usize, what: &str, v: Option<f64>) {
        self.put(&format!("gpu_{i}_{what}"), v);
    }

    fn label(&mut self, key: &str, v: Option<&str>) {
        if let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) {
            self.labels.insert(key.to_string(), clip(v, MAX_LABEL));
        }
    }

    fn pool(&mut self, v: Option<&str>) {
        self.label("pool", v.map(without_userinfo).as_deref());
    }

    fn gpus<'a>(&mut self, list: &'a [Value]) -> impl Iterator<Item = (usize, &'a Value)> {
        self.put("gpus", Some(list.len() as f64));
        list.iter().take(MAX_GPUS).enumerate()
    }
}

/// The version in `"lolMiner 1.82"` (the last word when it starts with a
/// digit), else the whole text.
fn version_of(software: &str) -> String {
    let s = software.trim();
    match s.rsplit_once(' ') {
        Some((_, v)) if v.starts_with(|c: char| c.is_ascii_digit()) => clip(v, 64),
        _ => clip(s, 64),
    }
}

/// Maps xmrig's `GET /2/summary`. `hashrate_hs` is the newest of the
/// 10 s, 60 s and 15 min rates that is not null.
pub fn parse_xmrig(r: &Value) -> Result<MinerReading, String> {
    if !r.is_object() {
        return Err("the /2/summary reply is not a JSON object".into());
    }
    let total = r
        .pointer("/hashrate/total")
        .and_then(Value::as_array)
        .ok_or("the /2/summary reply lacks `hashrate.total` ([10s, 60s, 15m]): is this xmrig?")?;
    let at = |i: usize| total.get(i).and_then(as_num);
    let mut m = MinerReading {
        make: MinerKind::Xmrig.software().into(),
        model: text(&r["cpu"], "brand")
            .map(|s| clip(s, 128))
            .unwrap_or_default(),
        firmware: text(r, "version").map(|s| clip(s, 64)).unwrap_or_default(),
        paused: r.get("paused").and_then(Value::as_bool).unwrap_or(false),
        ..MinerReading::default()
    };
    m.put("hashrate_hs", at(0).or(at(1)).or(at(2)));
    m.put("hashrate_60s_hs", at(1));
    m.put("hashrate_15m_hs", at(2));
    m.put("hashrate_highest_hs", num(&r["hashrate"], "highest"));
    let results = &r["results"];
    let conn = &r["connection"];
    match (num(results, "shares_good"), num(results, "shares_total")) {
        (Some(good), total) => {
            m.put("shares_accepted", Some(good));
            m.put("shares_rejected", total.map(|t| (t - good).max(0.0)));
        }
        (None, _) => {
            m.put("shares_accepted", num(conn, "accepted"));
            m.put("shares_rejected", num(conn, "rejected"));
        }
    }
    m.put("uptime_s", num(r, "uptime"));
    m.put("pool_uptime_s", num(conn, "uptime"));
    m.put(
        "mem_rss_bytes",
        r.pointer("/resources/memory/resident_set_memory")
            .and_then(as_num),
    );
    m.pool(text(conn, "pool"));
    m.label("algorithm", text(r, "algo").or_else(|| text(conn, "algo")));
    Ok(m)
}

/// Maps T-Rex's `GET /summary` (rates in H/s).
pub fn parse_trex(r: &Value) -> Result<MinerReading, String> {
    let total = num(r, "hashrate")
        .ok_or("the /summary reply lacks a numeric `hashrate`: is this T-Rex?")?;
    let algorithm = text(r, "algorithm");
    let mut m = MinerReading {
        make: MinerKind::Trex.software().into(),
        model: algorithm.map(|s| clip(s, 64)).unwrap_or_default(),
        firmware: text(r, "version").map(|s| clip(s, 64)).unwrap_or_default(),
        paused: r.get("paused").and_then(Value::as_bool).unwrap_or(false),
        ..MinerReading::default()
    };
    m.put("hashrate_hs", Some(total));
    m.put("hashrate_60s_hs", num(r, "hashrate_minute"));
    m.put("shares_accepted", num(r, "accepted_count"));
    m.put("shares_rejected", num(r, "rejected_count"));
    m.put("uptime_s", num(r, "uptime"));
    let gpus = r.get("gpus").and_then(Value::as_array).map(Vec::as_slice);
    for (i, g) in m.gpus(gpus.unwrap_or_default()) {
        m.gpu(i, "hashrate_hs", num(g, "hashrate"));
        m.gpu(i, "temp_c", num(g, "temperature"));
        m.gpu(i, "fan_pct", num(g, "fan_speed"));
        m.gpu(i, "power_w", num(g, "power"));
    }
    m.pool(r.get("active_pool").and_then(|p| text(p, "url")));
    m.label("algorithm", algorithm);
    Ok(m)
}

/// The factor from a rate unit (`Mh/s`, `kH/s`, `Sol/s`, `g/s`, …) to its
/// base unit, and that base unit: `H/s`, `Sol/s` or `G/s` (graphs).
pub fn rate_unit(unit: &str) -> Option<(f64, &'static str)> {
    let lower = unit.trim().to_ascii_lowercase();
    let rest = lower.strip_suffix("/s")?;
    let (prefix, base) = if let Some(p) = rest.strip_suffix("sol") {
        (p, "Sol/s")
    } else if let Some(p) = rest.strip_suffix('h') {
        (p, "H/s")
    } else if let Some(p) = rest.strip_suffix('g') {
        (p, "G/s")
    } else {
        return None;
    };
    let factor = match prefix.trim() {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        "p" => 1e15,
        _ => return None,
    };
    Some((factor, base))
}

/// Maps lolMiner's `GET /summary`: the `Session`/`GPUs` shape, or the
/// newer one with `Workers` and `Algorithms` (its first algorithm only).
/// Rates are converted from `Performance_Unit` to base units.
pub fn parse_lolminer(r: &Value) -> Result<MinerReading, String> {
    let session = r
        .get("Session")
        .filter(|s| s.is_object())
        .ok_or("the /summary reply lacks `Session`: is this lolMiner?")?;
    let algo = r
        .get("Algorithms")
        .and_then(Value::as_array)
        .and_then(|a| a.first());
    let mut m = MinerReading {
        make: MinerKind::Lolminer.software().into(),
        firmware: text(r, "Software").map(version_of).unwrap_or_default(),
        ..MinerReading::default()
    };
    m.put("uptime_s", num(session, "Uptime"));
    let (unit_from, unit) = match algo {
        Some(a) => ("Algorithms[0]", text(a, "Performance_Unit")),
        None => ("Session", text(session, "Performance_Unit")),
    };
    let mut factor = unit.and_then(rate_unit).map(|(f, base)| {
        if base != "H/s" {
            m.labels.insert("hashrate_unit".into(), base.into());
        }
        f
    });
    if let Some(f) = algo.and_then(|a| num(a, "Performance_Factor")) {
        factor = Some(f);
    }
    if factor.is_none() {
        m.alerts.push(DeviceAlert {
            code: "miner_unknown_unit".into(),
            severity: Severity::Medium,
            message: format!(
                "lolMiner reports its rates in `{}` ({unit_from}.Performance_Unit), which Hashfleet cannot convert: hash rates left out",
                clip(unit.unwrap_or("no unit"), 32)
            ),
        });
    }
    let scaled = |v: Option<f64>| v.zip(factor).map(|(v, f)| v * f);
    match algo {
        Some(a) => {
            m.put("hashrate_hs", scaled(num(a, "Total_Performance")));
            m.put("shares_accepted", num(a, "Total_Accepted"));
            m.put("shares_rejected", num(a, "Total_Rejected"));
            let algorithm = text(a, "Algorithm");
            m.model = algorithm.map(|s| clip(s, 64)).unwrap_or_default();
            m.label("algorithm", algorithm);
            m.pool(text(a, "Pool"));
            let perf = a.get("Worker_Performance").and_then(Value::as_array);
            let workers = r
                .get("Workers")
                .and_then(Value::as_array)
                .map(Vec::as_slice);
            let n = workers
                .map(<[Value]>::len)
                .unwrap_or(0)
                .max(perf.map(Vec::len).unwrap_or(0));
            m.put("gpus", Some(n as f64));
            for i in 0..n.min(MAX_GPUS) {
                m.gpu(
                    i,
                    "hashrate_hs",
                    scaled(perf.and_then(|p| p.get(i)).and_then(as_num)),
                );
                if let Some(w) = workers.and_then(|w| w.get(i)) {
                    m.gpu(i, "temp_c", num(w, "Core_Temp"));
                    m.gpu(i, "power_w", num(w, "Power"));
                    m.gpu(i, "fan_pct", num(w, "Fan_Speed"));
                    m.label(&format!("gpu_{i}_bus"), text(w, "PCIE_Address"));
                }
            }
        }
        None => {
            m.put("hashrate_hs", scaled(num(session, "Performance_Summary")));
            let accepted = num(session, "Accepted");
            m.put("shares_accepted", accepted);
            m.put(
                "shares_rejected",
                num(session, "Submitted")
                    .zip(accepted)
                    .map(|(s, a)| (s - a).max(0.0)),
            );
            let algorithm = r.get("Mining").and_then(|x| text(x, "Algorithm"));
            m.model = algorithm.map(|s| clip(s, 64)).unwrap_or_default();
            m.label("algorithm", algorithm);
            m.pool(r.get("Stratum").and_then(|x| text(x, "Current_Pool")));
            let gpus = r.get("GPUs").and_then(Value::as_array).map(Vec::as_slice);
            for (i, g) in m.gpus(gpus.unwrap_or_default()) {
                m.gpu(i, "hashrate_hs", scaled(num(g, "Performance")));
                m.gpu(i, "temp_c", num(g, "Temp (deg C)"));
                m.gpu(i, "power_w", num(g, "Consumption (W)"));
                m.gpu(i, "fan_pct", num(g, "Fan Speed (%)"));
                m.gpu(i, "hw_errors", num(g, "Session_HWErr"));
                m.label(&format!("gpu_{i}_bus"), text(g, "PCIE_Address"));
            }
        }
    }
    Ok(m)
}

/// Maps gminer's `GET /stat` (speeds in H/s unless `speed_unit` says
/// otherwise). The total is the sum of the devices.
pub fn parse_gminer(r: &Value) -> Result<MinerReading, String> {
    let devices = r
        .get("devices")
        .and_then(Value::as_array)
        .ok_or("the /stat reply lacks a `devices` list: is this gminer?")?;
    let algorithm = text(r, "algorithm");
    let mut m = MinerReading {
        make: text(r, "miner")
            .map(|s| clip(s, 32))
            .unwrap_or_else(|| MinerKind::Gminer.software().into()),
        model: algorithm.map(|s| clip(s, 64)).unwrap_or_default(),
        firmware: text(r, "version").map(|s| clip(s, 64)).unwrap_or_default(),
        ..MinerReading::default()
    };
    let factor = match text(r, "speed_unit") {
        None => Some(1.0),
        Some(u) => rate_unit(u).map(|(f, base)| {
            if base != "H/s" {
                m.labels.insert("hashrate_unit".into(), base.into());
            }
            f
        }),
    };
    let scaled = |v: Option<f64>| v.zip(factor).map(|(v, f)| v * f);
    // The sum of the devices that report `key`; None when none does.
    let sum = |key: &str| -> Option<f64> {
        devices
            .iter()
            .filter_map(|d| num(d, key))
            .fold(None, |acc, v| Some(acc.unwrap_or(0.0) + v))
    };
    m.put("hashrate_hs", scaled(sum("speed")));
    m.put(
        "shares_accepted",
        num(r, "total_accepted_shares").or_else(|| sum("accepted_shares")),
    );
    m.put(
        "shares_rejected",
        num(r, "total_rejected_shares").or_else(|| sum("rejected_shares")),
    );
    m.put("uptime_s", num(r, "uptime"));
    for (i, d) in m.gpus(devices) {
        m.gpu(i, "hashrate_hs", scaled(num(d, "speed")));
        m.gpu(i, "temp_c", num(d, "temperature"));
        m.gpu(i, "power_w", num(d, "power_usage"));
        m.gpu(i, "fan_pct", num(d, "fan"));
        m.label(&format!("gpu_{i}_bus"), text(d, "bus_id"));
    }
    m.pool(text(r, "server"));
    m.label("algorithm", algorithm);
    Ok(m)
}

/// A CGMiner-API rate in H/s: `<K|M|G|T>HS <window>` (e.g. `MHS 5s`).
fn cgminer_rate(v: &Value, window: &str) -> Option<f64> {
    [("KHS", 1e3), ("MHS", 1e6), ("GHS", 1e9), ("THS", 1e12)]
        .iter()
        .find_map(|(prefix, f)| num(v, &format!("{prefix} {window}")).map(|x| x * f))
}

/// Every `name` section (`SUMMARY`, `DEVS`, `STATUS`) of a CGMiner reply,
/// each a list: at the top of each value, or inside a joined command's
/// part (`{"summary":[{…}],"devs":[{…}]}`, also with an object for the
/// list).
fn cgminer_sections<'a>(values: &'a [Value], name: &str) -> Vec<&'a [Value]> {
    let mut out = Vec::new();
    for v in values {
        if let Some(a) = v.get(name).and_then(Value::as_array) {
            out.push(a.as_slice());
        }
        let Some(parts) = v.as_object() else {
            continue;
        };
        for part in parts.values() {
            let inner: &[Value] = match part {
                Value::Array(a) => a,
                Value::Object(_) => std::slice::from_ref(part),
                _ => continue,
            };
            out.extend(
                inner
                    .iter()
                    .filter_map(|s| s.get(name).and_then(Value::as_array))
                    .map(Vec::as_slice),
            );
        }
    }
    out
}

/// The first `name` section, if any.
fn cgminer_section<'a>(values: &'a [Value], name: &str) -> Option<&'a [Value]> {
    cgminer_sections(values, name).into_iter().next()
}

/// Maps a CGMiner-API `summary+devs` reply (TeamRedMiner and the like),
/// tolerating what real firmware sends (see [`parse_sloppy_json`]).
pub fn parse_cgminer(bytes: &[u8]) -> Result<MinerReading, String> {
    let values = parse_sloppy_json(bytes)?;
    let statuses: Vec<&Value> = cgminer_sections(&values, "STATUS")
        .into_iter()
        .flatten()
        .collect();
    let Some(summary) = cgminer_section(&values, "SUMMARY").and_then(|s| s.first()) else {
        let failed = statuses
            .iter()
            .find(|s| matches!(text(s, "STATUS"), Some("E" | "F")));
        return Err(match failed.map(|s| (text(s, "STATUS"), text(s, "Msg"))) {
            Some((Some(code), msg)) => format!(
                "the CGMiner API answered {code}: {}",
                clip(msg.unwrap_or("no message"), 200)
            ),
            _ => "the reply has no SUMMARY section: is this a CGMiner-API miner?".into(),
        });
    };
    let mut m = MinerReading::default();
    if let Some(desc) = statuses.iter().find_map(|s| text(s, "Description")) {
        // "TeamRedMiner 0.10.21", "cgminer 4.9.0".
        match desc.trim().split_once(' ') {
            Some((make, version)) => {
                m.make = clip(make, 32);
                m.firmware = clip(version.trim(), 64);
            }
            None => m.make = clip(desc, 32),
        }
    }
    m.put(
        "hashrate_hs",
        cgminer_rate(summary, "5s")
            .or_else(|| cgminer_rate(summary, "30s"))
            .or_else(|| cgminer_rate(summary, "av")),
    );
    m.put("hashrate_avg_hs", cgminer_rate(summary, "av"));
    m.put("hashrate_60s_hs", cgminer_rate(summary, "1m"));
    m.put("hashrate_15m_hs", cgminer_rate(summary, "15m"));
    m.put("shares_accepted", num(summary, "Accepted"));
    m.put("shares_rejected", num(summary, "Rejected"));
    m.put("hw_errors", num(summary, "Hardware Errors"));
    m.put("uptime_s", num(summary, "Elapsed"));
    let devs = cgminer_section(&values, "DEVS").unwrap_or_default();
    let mut sick = Vec::new();
    for (i, d) in m.gpus(devs) {
        m.gpu(
            i,
            "hashrate_hs",
            cgminer_rate(d, "5s")
                .or_else(|| cgminer_rate(d, "30s"))
                .or_else(|| cgminer_rate(d, "av")),
        );
        m.gpu(i, "temp_c", num(d, "Temperature"));
        m.gpu(i, "fan_pct", num(d, "Fan Percent"));
        m.gpu(
            i,
            "power_w",
            num(d, "GPU Power").or_else(|| num(d, "Power")),
        );
        m.gpu(i, "hw_errors", num(d, "Hardware Errors"));
        if let Some(s @ ("Sick" | "Dead")) = text(d, "Status") {
            sick.push(format!("GPU {i} is {s}"));
        }
    }
    if !sick.is_empty() {
        m.alerts.push(DeviceAlert {
            code: "miner_gpu_unhealthy".into(),
            severity: Severity::High,
            message: clip(&sick.join(", "), 300),
        });
    }
    Ok(m)
}

/// Parses what CGMiner-style APIs really send into JSON values: a trailing
/// NUL, `,}` and `,]`, raw newlines inside strings, `}{` with no comma,
/// bare `inf`/`nan` (as null), invalid escapes, truncation (open strings
/// and containers are closed), and several top-level values (all
/// returned). Errs on an empty reply or nesting deeper than 32.
pub fn parse_sloppy_json(bytes: &[u8]) -> Result<Vec<Value>, String> {
    let mut p = Sloppy { s: bytes, i: 0 };
    let mut values = Vec::new();
    loop {
        p.skip_ws();
        match p.peek() {
            None => break,
            Some(b'}' | b']' | b',' | b':') => p.i += 1,
            Some(_) => {
                values.push(p.value(0)?);
                if values.len() >= 64 {
                    break;
                }
            }
        }
    }
    if values.is_empty() {
        return Err("the reply is empty".into());
    }
    Ok(values)
}

struct Sloppy<'a> {
    s: &'a [u8],
    i: usize,
}

impl Sloppy<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n' | 0)) {
            self.i += 1;
        }
    }

    /// A value starting at a byte that is not whitespace (always consumes
    /// at least one byte).
    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth >= MAX_DEPTH {
            return Err(format!("the reply nests deeper than {MAX_DEPTH} levels"));
        }
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(Value::String(self.string())),
            _ => Ok(self.bare()),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, String> {
        self.i += 1;
        let mut map = Map::new();
        loop {
            self.skip_ws();
            let key = match self.peek() {
                None => break,
                Some(b'}' | b']') => {
                    self.i += 1;
                    break;
                }
                Some(b',' | b':') => {
                    self.i += 1;
                    continue;
                }
                Some(b'{' | b'[') => {
                    // A value where a key belongs: skip it.
                    self.value(depth + 1)?;
                    continue;
                }
                Some(b'"') => self.string(),
                Some(_) => match self.bare() {
                    Value::String(s) => s,
                    other => other.to_string(),
                },
            };
            self.skip_ws();
            if self.peek() != Some(b':') {
                map.insert(key, Value::Null);
                continue;
            }
            self.i += 1;
            self.skip_ws();
            let v = match self.peek() {
                None | Some(b'}' | b']' | b',') => Value::Null,
                Some(_) => self.value(depth + 1)?,
            };
            map.insert(key, v);
        }
        Ok(Value::Object(map))
    }

    fn array(&mut self, depth: usize) -> Result<Value, String> {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                None => break,
                Some(b']' | b'}') => {
                    self.i += 1;
                    break;
                }
                Some(b',' | b':') => self.i += 1,
                Some(_) => items.push(self.value(depth + 1)?),
            }
        }
        Ok(Value::Array(items))
    }

    /// A string from its opening quote to its closing one or the end.
    fn string(&mut self) -> String {
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => break,
                0 => {}
                b'\\' => self.escape(&mut out),
                other => out.push(other),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn escape(&mut self, out: &mut Vec<u8>) {
        let Some(n) = self.peek() else {
            out.push(b'\\');
            return;
        };
        self.i += 1;
        let c = match n {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => match self.hex4() {
                Some(hi @ 0xD800..=0xDBFF) => {
                    let lo = (self.s.get(self.i..self.i + 2) == Some(&b"\\u"[..]))
                        .then(|| {
                            self.i += 2;
                            self.hex4()
                        })
                        .flatten();
                    match lo {
                        Some(lo @ 0xDC00..=0xDFFF) => {
                            char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                                .unwrap_or('\u{FFFD}')
                        }
                        _ => '\u{FFFD}',
                    }
                }
                Some(cp) => char::from_u32(cp).unwrap_or('\u{FFFD}'),
                None => {
                    out.extend_from_slice(b"\\u");
                    return;
                }
            },
            other => {
                out.push(b'\\');
                out.push(other);
                return;
            }
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.s.get(self.i..self.i + 4)?;
        let text = std::str::from_utf8(digits).ok()?;
        let cp = u32::from_str_radix(text, 16).ok()?;
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        self.i += 4;
        Some(cp)
    }

    /// A number, `true`/`false`/`null`, `inf`/`nan` (null), or any other
    /// bare word as a string.
    fn bare(&mut self) -> Value {
        let start = self.i;
        while let Some(b) = self.peek() {
            if matches!(
                b,
                b'{' | b'}' | b'[' | b']' | b',' | b':' | b'"' | b' ' | b'\t' | b'\r' | b'\n' | 0
            ) {
                break;
            }
            self.i += 1;
        }
        if self.i == start {
            self.i += 1;
            return Value::Null;
        }
        let word = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        match word.as_str() {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            "null" => return Value::Null,
            _ => {}
        }
        if let Ok(n) = word.parse::<i64>() {
            return Value::Number(n.into());
        }
        if let Ok(n) = word.parse::<u64>() {
            return Value::Number(n.into());
        }
        match word.parse::<f64>() {
            Ok(x) => Number::from_f64(x).map_or(Value::Null, Value::Number),
            Err(_) => Value::String(word),
        }
    }
}

/// The xmrig JSON-RPC method for an action, with its params checked. Errs
/// on an unknown method, params other than `[]`, and a kind whose API
/// cannot pause.
pub fn action_rpc(kind: MinerKind, method: &str, params: &Value) -> Result<&'static str, String> {
    let rpc = match method {
        "pauseMiner" => "pause",
        "resumeMiner" => "resume",
        other => {
            return Err(format!(
                "miner action `{}` is not supported: use {}",
                clip(other, 64),
                METHODS.join(" or ")
            ))
        }
    };
    match params {
        Value::Null => {}
        Value::Array(a) if a.is_empty() => {}
        other => {
            return Err(format!(
                "{method} takes no params ([]), got {}",
                clip(&other.to_string(), 80)
            ))
        }
    }
    match kind {
        MinerKind::Xmrig => Ok(rpc),
        MinerKind::Trex => Err(format!(
            "`{method}` is not supported by trex: Hashfleet does not drive T-Rex's /control API (it needs the API password)"
        )),
        other => Err(format!(
            "`{method}` is not supported by {}: its API has no pause",
            other.as_str()
        )),
    }
}

/// Polls and drives one miner's API.
#[derive(Debug, Clone)]
pub struct MinerClient {
    entry: MinerEntry,
    endpoint: Endpoint,
    timeout: Duration,
    http: reqwest::Client,
}

impl MinerClient {
    /// Validates `entry` and builds the client (no I/O yet), with
    /// [`DEFAULT_TIMEOUT`] per request.
    pub fn new(entry: MinerEntry) -> Result<MinerClient, EntryError> {
        let endpoint = entry.endpoint()?;
        let http = http_client(DEFAULT_TIMEOUT).map_err(|p| {
            EntryError::new("miner", entry.name.as_deref().unwrap_or(&entry.url), p)
        })?;
        Ok(MinerClient {
            entry,
            endpoint,
            timeout: DEFAULT_TIMEOUT,
            http,
        })
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> MinerClient {
        if let Ok(http) = http_client(timeout) {
            self.http = http;
            self.timeout = timeout;
        }
        self
    }

    pub fn entry(&self) -> &MinerEntry {
        &self.entry
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `miner-<name>`, else `miner-<kind>-<host:port>`.
    pub fn id(&self) -> String {
        match &self.entry.name {
            Some(name) => format!("miner-{name}"),
            None => format!(
                "miner-{}-{}",
                self.entry.kind.as_str(),
                self.endpoint.authority()
            ),
        }
    }

    fn who(&self) -> String {
        format!(
            "{} at {}",
            self.entry.kind.as_str(),
            self.endpoint.authority()
        )
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("http://{}{path}", self.endpoint.authority());
        let req = self.http.request(method, url);
        match &self.entry.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// What an HTTP error status means for this API.
    fn refused(&self, what: &str, f: &Fetched) -> CallError {
        let who = self.who();
        let hint = match (f.status, self.entry.kind) {
            (401, MinerKind::Xmrig) => match self.entry.token {
                Some(_) => {
                    ": the access token is wrong: set `token` to xmrig's --http-access-token"
                }
                None => ": xmrig wants an access token: set `token` to its --http-access-token",
            },
            (401 | 403, _) => ": the API refuses this sentry",
            (404, _) => ": check `kind` and `url` (is this the right miner and port?)",
            _ => "",
        };
        CallError::Refused {
            message: format!("{who}: {what} answered HTTP {}{hint}", f.status),
            raw: f.text(),
        }
    }

    /// `GET path` as JSON, and the raw body.
    async fn get_json(&self, path: &str) -> Result<(Value, String), CallError> {
        let who = self.who();
        let f = fetch(self.request(reqwest::Method::GET, path), &who, self.timeout).await?;
        let raw = f.text();
        if !(200..300).contains(&f.status) {
            return Err(self.refused(&format!("GET {path}"), &f));
        }
        if f.truncated {
            return Err(CallError::BadReply {
                message: format!(
                    "{who}: GET {path}: the reply is larger than {MAX_BODY} bytes (cut there, not parsed)"
                ),
                raw,
            });
        }
        let value = serde_json::from_str::<Value>(&raw).map_err(|e| CallError::BadReply {
            message: format!(
                "{who}: GET {path}: the reply is not JSON ({e}): {}",
                clip(&raw, 120)
            ),
            raw: raw.clone(),
        })?;
        Ok((value, raw))
    }

    /// One CGMiner-API exchange: the command, then the reply until the
    /// miner closes, [`MAX_BODY`] is passed (an error) or the timeout (what
    /// came so far, if anything, is the reply).
    async fn cgminer_call(&self, command: &str) -> Result<Vec<u8>, CallError> {
        let who = self.who();
        let ms = self.timeout.as_millis();
        let deadline = Instant::now() + self.timeout;
        let connect = TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port));
        let mut stream = match timeout_at(deadline, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(CallError::Unreachable(format!(
                    "{who}: cannot connect: {e}"
                )))
            }
            Err(_) => {
                return Err(CallError::Unreachable(format!(
                    "{who}: no connection within {ms} ms"
                )))
            }
        };
        let request = json!({ "command": command }).to_string();
        match timeout_at(deadline, stream.write_all(request.as_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(CallError::Unreachable(format!("{who}: cannot send: {e}"))),
            Err(_) => {
                return Err(CallError::Unreachable(format!(
                    "{who}: could not send within {ms} ms"
                )))
            }
        }
        let mut body = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => {
                    if body.len() + n > MAX_BODY {
                        return Err(CallError::BadReply {
                            message: format!(
                                "{who}: the reply is larger than {MAX_BODY} bytes (cut there, not parsed)"
                            ),
                            raw: lossy(&body[..body.len().min(MAX_RAW)]),
                        });
                    }
                    body.extend_from_slice(&buf[..n]);
                }
                Ok(Err(e)) if body.is_empty() => {
                    return Err(CallError::Unreachable(format!(
                        "{who}: connection closed without a reply: {e}"
                    )))
                }
                Err(_) if body.is_empty() => {
                    return Err(CallError::Unreachable(format!(
                        "{who}: no reply within {ms} ms"
                    )))
                }
                // A reset or a stall after part of the reply: parse what came.
                Ok(Err(_)) | Err(_) => break,
            }
        }
        Ok(body)
    }

    async fn read(&self) -> Result<(MinerReading, String), CallError> {
        let who = self.who();
        let bad = |message: String, raw: &str| CallError::BadReply {
            message: format!("{who}: {message}"),
            raw: raw.to_string(),
        };
        let Some(path) = self.entry.kind.summary_path() else {
            let body = self.cgminer_call("summary+devs").await?;
            let raw = lossy(&body);
            return parse_cgminer(&body)
                .map(|m| (m, raw.clone()))
                .map_err(|e| bad(e, &raw));
        };
        let (value, raw) = self.get_json(path).await?;
        let parsed = match self.entry.kind {
            MinerKind::Xmrig => parse_xmrig(&value),
            MinerKind::Trex => parse_trex(&value),
            MinerKind::Lolminer => parse_lolminer(&value),
            MinerKind::Gminer | MinerKind::Cgminer => parse_gminer(&value),
        };
        parsed.map(|m| (m, raw.clone())).map_err(|e| bad(e, &raw))
    }

    /// Reads the miner. Never fails: an unreachable miner gives `state` =
    /// `offline`, a bad reply `state` = `error` with an alert, with the
    /// reason in the `error` label.
    pub async fn poll(&self) -> DeviceSnapshot {
        match self.read().await {
            Ok((m, raw)) => self.snapshot(m, &raw),
            Err(e) => self.failed(e),
        }
    }

    fn base_labels(&self, state: &str) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        labels.insert("state".into(), state.into());
        labels.insert("address".into(), self.endpoint.authority());
        labels.insert("software".into(), self.entry.kind.as_str().into());
        labels
    }

    fn snapshot(&self, m: MinerReading, raw: &str) -> DeviceSnapshot {
        let mut labels = m.labels;
        labels.extend(self.base_labels(if m.paused { "paused" } else { "mining" }));
        DeviceSnapshot {
            id: self.id(),
            kind: "miner".into(),
            make: if m.make.is_empty() {
                self.entry.kind.software().into()
            } else {
                m.make
            },
            model: m.model,
            firmware: m.firmware,
            metrics: m.metrics,
            labels,
            alerts: m.alerts,
            raw: clip(raw, MAX_RAW),
        }
    }

    fn failed(&self, e: CallError) -> DeviceSnapshot {
        let (state, alert, raw) = match &e {
            CallError::Unreachable(_) => ("offline", None, ""),
            CallError::BadReply { raw, .. } => ("error", Some("miner_bad_reply"), raw.as_str()),
            CallError::Refused { raw, .. } => ("error", Some("miner_api_refused"), raw.as_str()),
        };
        let mut labels = self.base_labels(state);
        labels.insert("error".into(), clip(e.message(), 500));
        DeviceSnapshot {
            id: self.id(),
            kind: "miner".into(),
            make: self.entry.kind.software().into(),
            labels,
            alerts: alert
                .map(|code| DeviceAlert {
                    code: code.into(),
                    severity: Severity::High,
                    message: clip(e.message(), 500),
                })
                .into_iter()
                .collect(),
            raw: clip(raw, MAX_RAW),
            ..DeviceSnapshot::default()
        }
    }

    /// Runs `pauseMiner` or `resumeMiner` (params `[]`). Only xmrig can:
    /// `POST /json_rpc` `{"method":"pause"|"resume"}` with the bearer
    /// token, which xmrig allows only when started with
    /// `--http-no-restricted`. Every other kind is an error, never a
    /// silent success.
    pub async fn execute(&self, method: &str, params: &Value) -> Result<Value, String> {
        let rpc = action_rpc(self.entry.kind, method, params)?;
        let who = self.who();
        let body = json!({ "jsonrpc": "2.0", "id": 1, "method": rpc });
        let req = self.request(reqwest::Method::POST, "/json_rpc").json(&body);
        let f = fetch(req, &who, self.timeout)
            .await
            .map_err(|e| format!("{method} failed: {}", e.message()))?;
        if f.status == 403 {
            return Err(format!(
                "{method} refused by {who} (HTTP 403): xmrig's API is read-only: start xmrig with --http-no-restricted (and an --http-access-token) to allow pause and resume"
            ));
        }
        if !(200..300).contains(&f.status) {
            return Err(format!(
                "{method} failed: {}",
                self.refused("POST /json_rpc", &f).message()
            ));
        }
        let text = f.text();
        let reply: Value = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{method} failed: {who}: the json_rpc reply is not JSON ({e}): {}",
                clip(&text, 120)
            )
        })?;
        if let Some(err) = reply.get("error").filter(|e| !e.is_null()) {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .map(|m| clip(m, 200))
                .unwrap_or_else(|| clip(&err.to_string(), 200));
            return Err(format!("{method}: {who} refused `{rpc}`: {msg}"));
        }
        Ok(json!({
            "miner": self.id(),
            "method": method,
            "reply": reply.get("result").cloned().unwrap_or(reply),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: MinerKind, url: &str) -> MinerEntry {
        MinerEntry {
            kind,
            url: url.into(),
            token: None,
            name: None,
        }
    }

    #[test]
    fn urls_are_checked_with_clear_errors() {
        let ok = parse_http_url("http://127.0.0.1:4067/").unwrap();
        assert_eq!(ok.authority(), "127.0.0.1:4067");
        assert_eq!(
            parse_http_url("http://[::1]:8080").unwrap().authority(),
            "[::1]:8080"
        );
        assert_eq!(
            parse_http_url("HTTP://rig-1.lan:80").unwrap().host,
            "rig-1.lan"
        );
        let e = parse_http_url("https://10.0.0.1:443").unwrap_err();
        assert!(e.contains("no TLS"), "{e}");
        assert!(parse_http_url("10.0.0.1:80")
            .unwrap_err()
            .contains("http://HOST:PORT"));
        assert!(parse_http_url("http://10.0.0.1")
            .unwrap_err()
            .contains("port"));
        assert!(parse_http_url("http://10.0.0.1:0")
            .unwrap_err()
            .contains("port"));
        assert!(parse_http_url("http://10.0.0.1:80/api")
            .unwrap_err()
            .contains("path"));
        assert!(parse_http_url("http://u:p@10.0.0.1:80")
            .unwrap_err()
            .contains("user"));
        assert!(parse_http_url("http://::1:80")
            .unwrap_err()
            .contains("brackets"));
        assert!(parse_http_url("http://bad host:80").is_err());

        assert_eq!(parse_tcp_url("10.0.0.5", 4028).unwrap().port, 4028);
        assert_eq!(
            parse_tcp_url("tcp://10.0.0.5:4029", 4028).unwrap().port,
            4029
        );
        assert!(parse_tcp_url("http://10.0.0.5:4028", 4028)
            .unwrap_err()
            .contains("plain TCP"));
    }

    #[test]
    fn entries_validate_token_name_and_url() {
        let mut e = entry(MinerKind::Xmrig, "http://127.0.0.1:8080");
        e.token = Some("s3cret".into());
        e.name = Some("cpu-rig".into());
        e.validate().unwrap();
        e.token = Some("has space".into());
        assert!(e.validate().unwrap_err().to_string().contains("printable"));
        e.token = None;
        e.name = Some("bad/name".into());
        let err = e.validate().unwrap_err();
        assert_eq!(err.table, "miner");
        assert!(err.to_string().starts_with("[[miner]] `bad/name`"), "{err}");

        let mut t = entry(MinerKind::Trex, "http://127.0.0.1:4067");
        t.token = Some("x".into());
        assert!(t
            .validate()
            .unwrap_err()
            .problem
            .contains("only used by xmrig"));

        let c = entry(MinerKind::Cgminer, "127.0.0.1");
        c.validate().unwrap();
        let client = MinerClient::new(c).unwrap();
        assert_eq!(client.id(), "miner-cgminer-127.0.0.1:4028");
    }

    #[test]
    fn entry_rejects_unknown_fields_and_kinds() {
        let v = json!({"kind": "xmrig", "url": "http://127.0.0.1:1", "tokn": "x"});
        assert!(serde_json::from_value::<MinerEntry>(v).is_err());
        let v = json!({"kind": "nbminer", "url": "http://127.0.0.1:1"});
        assert!(serde_json::from_value::<MinerEntry>(v).is_err());
        let v = json!({"kind": "lolminer", "url": "http://127.0.0.1:1"});
        let e: MinerEntry = serde_json::from_value(v).unwrap();
        assert_eq!(e.kind, MinerKind::Lolminer);
    }

    #[test]
    fn xmrig_summary_maps_rates_shares_and_nulls() {
        let r = json!({
            "version": "6.21.0", "uptime": 3600, "paused": false, "algo": "rx/0",
            "cpu": {"brand": "AMD Ryzen 9 5950X 16-Core Processor"},
            "hashrate": {"total": [null, 15000.5, 14900.0], "highest": 15500.0},
            "results": {"shares_good": 98, "shares_total": 100},
            "connection": {"pool": "pool.example:3333", "accepted": 50, "rejected": 1, "uptime": 1800},
            "resources": {"memory": {"resident_set_memory": 2_500_000_000u64}}
        });
        let m = parse_xmrig(&r).unwrap();
        assert_eq!(m.metrics["hashrate_hs"], 15000.5);
        assert_eq!(m.metrics["hashrate_60s_hs"], 15000.5);
        assert_eq!(m.metrics["hashrate_15m_hs"], 14900.0);
        assert_eq!(m.metrics["shares_accepted"], 98.0);
        assert_eq!(m.metrics["shares_rejected"], 2.0);
        assert_eq!(m.metrics["uptime_s"], 3600.0);
        assert_eq!(m.metrics["pool_uptime_s"], 1800.0);
        assert_eq!(m.labels["pool"], "pool.example:3333");
        assert_eq!(m.labels["algorithm"], "rx/0");
        assert_eq!(m.model, "AMD Ryzen 9 5950X 16-Core Processor");
        assert_eq!(m.firmware, "6.21.0");
        assert!(!m.paused);

        let all_null = json!({"hashrate": {"total": [null, null, null]}, "paused": true,
            "connection": {"accepted": 3, "rejected": 0}});
        let m = parse_xmrig(&all_null).unwrap();
        assert!(!m.metrics.contains_key("hashrate_hs"));
        assert_eq!(m.metrics["shares_accepted"], 3.0);
        assert!(m.paused);
        assert!(parse_xmrig(&json!({"foo": 1}))
            .unwrap_err()
            .contains("hashrate.total"));
        assert!(parse_xmrig(&json!([1, 2])).is_err());
    }

    #[test]
    fn trex_summary_maps_gpus() {
        let r = json!({
            "hashrate": 61000000, "hashrate_minute": 60500000, "accepted_count": 10,
            "rejected_count": 1, "uptime": 120, "algorithm": "ethash", "version": "0.26.8",
            "active_pool": {"url": "stratum+tcp://worker:pw@eth.pool.example:4444"},
            "gpus": [
                {"hashrate": 30000000, "temperature": 60, "fan_speed": 70, "power": 120},
                {"hashrate": 31000000, "temperature": 62, "fan_speed": 71, "power": 125}
            ]
        });
        let m = parse_trex(&r).unwrap();
        assert_eq!(m.metrics["hashrate_hs"], 61e6);
        assert_eq!(m.metrics["hashrate_60s_hs"], 60.5e6);
        assert_eq!(m.metrics["gpus"], 2.0);
        assert_eq!(m.metrics["gpu_1_hashrate_hs"], 31e6);
        assert_eq!(m.metrics["gpu_1_temp_c"], 62.0);
        assert_eq!(m.metrics["gpu_0_fan_pct"], 70.0);
        assert_eq!(m.metrics["gpu_0_power_w"], 120.0);
        assert_eq!(m.labels["pool"], "stratum+tcp://eth.pool.example:4444");
        assert_eq!(m.model, "ethash");
        assert!(parse_trex(&json!({"gpus": []})).is_err());
    }

    #[test]
    fn rate_units_convert() {
        assert_eq!(rate_unit("Mh/s"), Some((1e6, "H/s")));
        assert_eq!(rate_unit("mh/s"), Some((1e6, "H/s")));
        assert_eq!(rate_unit("KH/s"), Some((1e3, "H/s")));
        assert_eq!(rate_unit("h/s"), Some((1.0, "H/s")));
        assert_eq!(rate_unit("GH/s"), Some((1e9, "H/s")));
        assert_eq!(rate_unit("g/s"), Some((1.0, "G/s")));
        assert_eq!(rate_unit("sol/s"), Some((1.0, "Sol/s")));
        assert_eq!(rate_unit("kSol/s"), Some((1e3, "Sol/s")));
        assert_eq!(rate_unit("bananas"), None);
        assert_eq!(rate_unit("xh/s"), None);
    }

    #[test]
    fn lolminer_session_shape_converts_units() {
        let r = json!({
            "Software": "lolMiner 1.82",
            "Mining": {"Algorithm": "Etchash"},
            "Stratum": {"Current_Pool": "etc.pool.example:1010"},
            "Session": {"Uptime": 600, "Accepted": 40, "Submitted": 42,
                        "Performance_Summary": 60.5, "Performance_Unit": "Mh/s"},
            "GPUs": [
                {"Performance": 30.25, "PCIE_Address": "1:0", "Session_HWErr": 0,
                 "Temp (deg C)": 55, "Consumption (W)": 110.5, "Fan Speed (%)": 40},
                {"Performance": 30.25, "PCIE_Address": "2:0", "Session_HWErr": 3}
            ]
        });
        let m = parse_lolminer(&r).unwrap();
        assert_eq!(m.metrics["hashrate_hs"], 60.5e6);
        assert_eq!(m.metrics["gpu_0_hashrate_hs"], 30.25e6);
        assert_eq!(m.metrics["gpu_0_temp_c"], 55.0);
        assert_eq!(m.metrics["gpu_0_power_w"], 110.5);
        assert_eq!(m.metrics["gpu_1_hw_errors"], 3.0);
        assert_eq!(m.metrics["shares_accepted"], 40.0);
        assert_eq!(m.metrics["shares_rejected"], 2.0);
        assert_eq!(m.labels["gpu_1_bus"], "2:0");
        assert_eq!(m.labels["pool"], "etc.pool.example:1010");
        assert_eq!(m.firmware, "1.82");
        assert!(m.alerts.is_empty());

        let mut odd = r.clone();
        odd["Session"]["Performance_Unit"] = json!("furlongs");
        let m = parse_lolminer(&odd).unwrap();
        assert!(!m.metrics.contains_key("hashrate_hs"));
        assert_eq!(m.alerts[0].code, "miner_unknown_unit");
        assert!(parse_lolminer(&json!({"GPUs": []})).is_err());
    }

    #[test]
    fn lolminer_algorithms_shape_uses_the_factor() {
        let r = json!({
            "Software": "lolMiner 1.76",
            "Session": {"Uptime": 60},
            "Workers": [{"Index": 0, "Power": 100, "Core_Temp": 50, "Fan_Speed": 30, "PCIE_Address": "3:0"}],
            "Algorithms": [{"Algorithm": "Autolykos V2", "Pool": "erg.pool.example:9999",
                "Performance_Unit": "Mh/s", "Performance_Factor": 1000000,
                "Total_Performance": 150.0, "Total_Accepted": 9, "Total_Rejected": 1,
                "Worker_Performance": [150.0]}]
        });
        let m = parse_lolminer(&r).unwrap();
        assert_eq!(m.metrics["hashrate_hs"], 150e6);
        assert_eq!(m.metrics["gpu_0_hashrate_hs"], 150e6);
        assert_eq!(m.metrics["gpu_0_power_w"], 100.0);
        assert_eq!(m.metrics["shares_rejected"], 1.0);
        assert_eq!(m.labels["algorithm"], "Autolykos V2");
        assert_eq!(m.labels["gpu_0_bus"], "3:0");
    }

    #[test]
    fn gminer_stat_sums_devices() {
        let r = json!({
            "uptime": 900, "miner": "GMiner", "version": "3.44", "algorithm": "KAWPOW",
            "server": "rvn.pool.example:3333",
            "devices": [
                {"gpu_id": 0, "bus_id": "0000:01:00.0", "speed": 20000000, "temperature": 61,
                 "power_usage": 150, "fan": 55, "accepted_shares": 5, "rejected_shares": 0},
                {"gpu_id": 2, "bus_id": "0000:03:00.0", "speed": 21000000, "temperature": 63,
                 "power_usage": 155, "accepted_shares": 6, "rejected_shares": 1}
            ]
        });
        let m = parse_gminer(&r).unwrap();
        assert_eq!(m.metrics["hashrate_hs"], 41e6);
        assert_eq!(m.metrics["shares_accepted"], 11.0);
        assert_eq!(m.metrics["shares_rejected"], 1.0);
        assert_eq!(m.metrics["gpu_1_temp_c"], 63.0);
        assert_eq!(m.metrics["gpu_0_fan_pct"], 55.0);
        assert!(!m.metrics.contains_key("gpu_1_fan_pct"));
        assert_eq!(m.labels["gpu_1_bus"], "0000:03:00.0");
        assert_eq!(m.make, "GMiner");
        assert!(parse_gminer(&json!({"uptime": 1})).is_err());
    }

    const TRM: &str = "{\"summary\":[{\"STATUS\":[{\"STATUS\":\"S\",\"When\":1,\"Code\":11,\"Msg\":\"Summary\",\"Description\":\"TeamRedMiner 0.10.21\"}],\"SUMMARY\":[{\"Elapsed\":3600,\"MHS av\":62.5,\"MHS 5s\":63.1,\"MHS 1m\":62.9,\"MHS 15m\":62.7,\"Accepted\":120,\"Rejected\":2,\"Hardware Errors\":1,}],\"id\":1}],\"devs\":[{\"STATUS\":[{\"STATUS\":\"S\",\"Msg\":\"2 GPU(s)\"}],\"DEVS\":[{\"GPU\":0,\"Status\":\"Alive\",\"Temperature\":58.0,\"Fan Percent\":45,\"MHS av\":31.2,\"MHS 5s\":31.5},{\"GPU\":1,\"Status\":\"Sick\",\"Temperature\":\"inf\",\"Fan Percent\":nan,\"MHS 5s\":31.6}]}],\"id\":1}\0";

    #[test]
    fn cgminer_joined_reply_maps_summary_and_devs() {
        let m = parse_cgminer(TRM.as_bytes()).unwrap();
        assert_eq!(m.make, "TeamRedMiner");
        assert_eq!(m.firmware, "0.10.21");
        assert!((m.metrics["hashrate_hs"] - 63.1e6).abs() < 1e-3);
        assert!((m.metrics["hashrate_avg_hs"] - 62.5e6).abs() < 1e-3);
        assert!((m.metrics["hashrate_60s_hs"] - 62.9e6).abs() < 1e-3);
        assert!((m.metrics["hashrate_15m_hs"] - 62.7e6).abs() < 1e-3);
        assert_eq!(m.metrics["shares_accepted"], 120.0);
        assert_eq!(m.metrics["uptime_s"], 3600.0);
        assert_eq!(m.metrics["gpus"], 2.0);
        assert!((m.metrics["gpu_1_hashrate_hs"] - 31.6e6).abs() < 1e-3);
        assert_eq!(m.metrics["gpu_0_temp_c"], 58.0);
        assert!(
            !m.metrics.contains_key("gpu_1_temp_c"),
            "inf is not a reading"
        );
        assert!(
            !m.metrics.contains_key("gpu_1_fan_pct"),
            "nan is not a reading"
        );
        assert_eq!(m.alerts[0].code, "miner_gpu_unhealthy");
    }

    #[test]
    fn cgminer_sections_without_commas_and_errors() {
        let glued = "{\"STATUS\":[{\"STATUS\":\"S\",\"Description\":\"sgminer 5.6\"}],\"SUMMARY\":[{\"KHS 5s\":500,\"Elapsed\":5}]}{\"STATUS\":[{\"STATUS\":\"S\"}],\"DEVS\":[{\"KHS 5s\":250},{\"KHS 5s\":250}]}\0";
        let m = parse_cgminer(glued.as_bytes()).unwrap();
        assert_eq!(m.metrics["hashrate_hs"], 500e3);
        assert_eq!(m.metrics["gpu_1_hashrate_hs"], 250e3);
        let refused = "{\"STATUS\":[{\"STATUS\":\"E\",\"Code\":45,\"Msg\":\"Access denied to 'summary' command\"}],\"id\":1}";
        let e = parse_cgminer(refused.as_bytes()).unwrap_err();
        assert!(
            e.contains("answered E") && e.contains("Access denied"),
            "{e}"
        );
        assert!(parse_cgminer(b"hello world")
            .unwrap_err()
            .contains("SUMMARY"));
        assert!(parse_cgminer(b"\0\0  ").unwrap_err().contains("empty"));
    }

    #[test]
    fn sloppy_json_tolerates_real_firmware() {
        let v = parse_sloppy_json(b"{\"a\":1,}\0").unwrap();
        assert_eq!(v, vec![json!({"a": 1})]);
        let v = parse_sloppy_json(b"{\"a\":[1,2,],\"b\":\"x\ny\"}").unwrap();
        assert_eq!(v[0], json!({"a": [1, 2], "b": "x\ny"}));
        let v = parse_sloppy_json(b"[{\"a\":1}{\"a\":2}]").unwrap();
        assert_eq!(v[0], json!([{"a": 1}, {"a": 2}]));
        let v = parse_sloppy_json(b"{\"a\":inf,\"b\":-inf,\"c\":NaN,\"d\":\"nan\",\"e\":1.5e3}")
            .unwrap();
        assert_eq!(
            v[0],
            json!({"a": null, "b": null, "c": null, "d": "nan", "e": 1500.0})
        );
        // Truncated: open string, key without value, open containers.
        let v = parse_sloppy_json(b"{\"a\":{\"b\":[1,2").unwrap();
        assert_eq!(v[0], json!({"a": {"b": [1, 2]}}));
        let v = parse_sloppy_json(b"{\"a\":1,\"Desc").unwrap();
        assert_eq!(v[0], json!({"a": 1, "Desc": null}));
        let v = parse_sloppy_json(b"{\"a\":\"unfinished").unwrap();
        assert_eq!(v[0], json!({"a": "unfinished"}));
        let v = parse_sloppy_json(b"{\"a\":}").unwrap();
        assert_eq!(v[0], json!({"a": null}));
        // Escapes, valid and not.
        let v = parse_sloppy_json(br#"{"a":"\u00e9\ud83d\ude00\q\u12"}"#).unwrap();
        assert_eq!(v[0]["a"], json!("é😀\\q\\u12"));
        // Two top-level values.
        assert_eq!(parse_sloppy_json(b"{}{}").unwrap().len(), 2);
        // Too deep is an error, not a stack overflow.
        let deep = "[".repeat(10_000);
        assert!(parse_sloppy_json(deep.as_bytes())
            .unwrap_err()
            .contains("deeper"));
    }

    #[test]
    fn sloppy_json_never_panics_on_noise() {
        // A fixed pseudo-random sequence: bytes biased towards JSON syntax.
        let alphabet = b"{}[],:\"\\ \0\n01e.-+truefalsnulinfa\xc3\xa9\xff";
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..2000usize {
            let mut input = Vec::with_capacity(len % 300);
            for _ in 0..(len % 300) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                input.push(alphabet[(seed >> 33) as usize % alphabet.len()]);
            }
            let _ = parse_sloppy_json(&input);
            let _ = parse_cgminer(&input);
        }
    }

    #[test]
    fn actions_are_checked_before_any_io() {
        assert_eq!(
            action_rpc(MinerKind::Xmrig, "pauseMiner", &json!([])),
            Ok("pause")
        );
        assert_eq!(
            action_rpc(MinerKind::Xmrig, "resumeMiner", &Value::Null),
            Ok("resume")
        );
        let e = action_rpc(MinerKind::Xmrig, "pauseMiner", &json!([1])).unwrap_err();
        assert!(e.contains("takes no params"), "{e}");
        let e = action_rpc(MinerKind::Xmrig, "reboot", &json!([])).unwrap_err();
        assert!(
            e.contains("not supported") && e.contains("pauseMiner"),
            "{e}"
        );
        let e = action_rpc(MinerKind::Lolminer, "pauseMiner", &json!([])).unwrap_err();
        assert_eq!(
            e,
            "`pauseMiner` is not supported by lolminer: its API has no pause"
        );
        let e = action_rpc(MinerKind::Trex, "resumeMiner", &json!([])).unwrap_err();
        assert!(
            e.starts_with("`resumeMiner` is not supported by trex"),
            "{e}"
        );
    }

    #[test]
    fn clip_stays_within_bounds_on_char_boundaries() {
        assert_eq!(clip("short", 10), "short");
        let long = "é".repeat(3000);
        let c = clip(&long, MAX_RAW);
        assert!(c.len() <= MAX_RAW && c.ends_with('…'));
        assert_eq!(
            without_userinfo("stratum+tcp://u:p@h:1"),
            "stratum+tcp://h:1"
        );
        assert_eq!(without_userinfo("u@h:1"), "h:1");
        assert_eq!(without_userinfo("h:1"), "h:1");
    }
}
