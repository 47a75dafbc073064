//! Bitmain Antminer stock firmware (the S21): the bmminer CGMiner-style RPC
//! on 4028 and the digest-protected CGI web API on 80, shaped the way
//! asic-rs 0.8.6 identifies and reads them (its `v2023_07` backend, chosen
//! by the 2024 build date we report).
//!
//! Request bytes to reply bytes are plain functions of the request,
//! [`Miner::readings`] and the clock, calling the miner's mutators for
//! writes (`rpc_reply`, `cgi_reply`, `digest_ok`); [`rpc`] and [`web`] only
//! move bytes.
//!
//! What the firmware does not do, we do not do either: there is no power
//! limit on Bitmain stock (asic-rs says so too), only the work modes
//! normal (0), sleep (1), high (2) and low power (3).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use md5::{Digest as _, Md5};
use serde_json::{json, Map, Value};
use tokio::net::TcpStream;

use crate::miners::io;
use crate::model::{Miner, Model, Pool, PowerMode, Reachability, Readings};

/// The build the emulated firmware reports. asic-rs picks its backend from
/// this date: from July 2023 on it uses `v2023_07`, which reads numeric work
/// modes and verifies pause/resume.
const COMPILE_TIME: &str = "Thu Nov 14 10:21:35 CST 2024";
const MINER_VERSION: &str = "49.0.1.3";
const BMMINER_VERSION: &str = "1.0.0";
const API_VERSION: &str = "3.1";
const NEW_API_VERSION: &str = "1.0.0";
const DESCRIPTION: &str = "cgminer 1.0.0";
const KERNEL: &str = "Linux 4.9.113 #1 SMP PREEMPT Thu Nov 14 10:02:11 CST 2024";
/// Control board type as `miner_type.cgi` reports it (an Amlogic board).
const CONTROL_BOARD: &str = "AMLCtrl_BHB68606";

/// HTTP Digest realm and the factory credentials.
pub const REALM: &str = "antMiner Configuration";
pub const USER: &str = "root";
pub const PASSWORD: &str = "root";

/// Largest CGI request body we read.
const MAX_BODY: usize = 16 * 1024;
/// How long a digest nonce stays valid.
const NONCE_LIFETIME_S: u64 = 600;
/// The reboot CGI answers, then the box goes down this much later.
const REBOOT_DELAY: Duration = Duration::from_millis(150);
/// How often an open web connection checks that its miner is still up.
const DOWN_POLL: Duration = Duration::from_millis(50);
/// Longest pool URL, worker or password the config accepts.
const MAX_POOL_FIELD: usize = 256;
/// Pool slots of the stock config.
const POOL_SLOTS: usize = 3;

// ---------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------

/// Serves one connection to the RPC port: one request, one reply, close.
pub async fn rpc(mut stream: TcpStream, miner: Arc<Miner>) {
    let Some(request) = io::read_request(&mut stream).await else {
        return;
    };
    let reply = rpc_reply(&request, &miner, Instant::now(), unix_now());
    io::reply_and_close(stream, &reply).await;
}

/// Serves HTTP on one connection to the web port. A reboot (or power loss)
/// drops every open connection, as a real one does, so a kept-alive client
/// cannot talk to a miner that is booting.
pub async fn web(stream: TcpStream, miner: Arc<Miner>) {
    let router = Router::new().fallback(cgi).with_state(miner.clone());
    tokio::select! {
        () = io::serve_http(stream, router) => {}
        () = until_down(&miner) => {}
    }
}

async fn until_down(miner: &Miner) {
    loop {
        tokio::time::sleep(DOWN_POLL).await;
        if miner.reachability(Instant::now()) == Reachability::Down {
            return;
        }
    }
}

async fn cgi(State(miner): State<Arc<Miner>>, request: Request) -> Response {
    if miner.reachability(Instant::now()) == Reachability::Down {
        // Rebooting: this kept-alive connection is about to be dropped by
        // `web`; no answer comes first.
        return std::future::pending().await;
    }
    let (parts, body) = request.into_parts();
    let now = unix_now();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let authorized = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| digest_ok(h, parts.method.as_str(), target, now));
    if !authorized {
        return unauthorized(now);
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response();
    };
    let reply = cgi_reply(
        &miner,
        &parts.method,
        parts.uri.path(),
        &body,
        Instant::now(),
        now,
    );
    if reply.reboot {
        let miner = miner.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REBOOT_DELAY).await;
            miner.reboot();
        });
    }
    let mut response = match reply.body {
        CgiBody::Json(value) => (
            reply.status,
            [(header::CONTENT_TYPE, "application/json")],
            value.to_string(),
        )
            .into_response(),
        CgiBody::Html(text) => (
            reply.status,
            [(header::CONTENT_TYPE, "text/html")],
            text.to_string(),
        )
            .into_response(),
    };
    if reply.reboot {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn unauthorized(now: u64) -> Response {
    let challenge = digest_challenge(now);
    let mut response = Response::new(Body::from(
        "<html><head><title>401 Unauthorized</title></head>\
         <body><h1>401 Unauthorized</h1></body></html>\n",
    ));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        headers.insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// HTTP Digest (RFC 7616, MD5, qop=auth), as lighttpd on the control board
// ---------------------------------------------------------------------------

fn md5_hex(data: &str) -> String {
    hex::encode(Md5::digest(data.as_bytes()))
}

/// Per-process key that signs our nonces, so any nonce we issued can be
/// checked without remembering it.
fn nonce_key() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| format!("{:032x}", fastrand::u128(..)))
}

fn nonce_tag(issued: u64, salt: u64) -> String {
    md5_hex(&format!("{}:{issued:016x}:{salt:016x}", nonce_key()))
}

/// A fresh nonce: issue time, a random salt and their signature, in hex.
fn make_nonce(now: u64) -> String {
    let salt = fastrand::u64(..);
    format!("{now:016x}{salt:016x}{}", nonce_tag(now, salt))
}

/// Whether `nonce` is one of ours and still fresh.
fn nonce_ok(nonce: &str, now: u64) -> bool {
    if nonce.len() != 64 || !nonce.is_ascii() {
        return false;
    }
    let (Ok(issued), Ok(salt)) = (
        u64::from_str_radix(&nonce[..16], 16),
        u64::from_str_radix(&nonce[16..32], 16),
    ) else {
        return false;
    };
    issued <= now.saturating_add(5)
        && now.saturating_sub(issued) <= NONCE_LIFETIME_S
        && nonce[32..] == nonce_tag(issued, salt)
}

/// The `WWW-Authenticate` value of a 401.
pub fn digest_challenge(now: u64) -> String {
    format!(
        "Digest realm=\"{REALM}\", nonce=\"{}\", qop=\"auth\", algorithm=MD5",
        make_nonce(now)
    )
}

/// Splits the parameters of a Digest `Authorization` header. `None` if it
/// is not one or is malformed.
fn digest_params(header: &str) -> Option<HashMap<String, String>> {
    let header = header.trim();
    let scheme = header.get(..6)?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let mut rest = header.get(6..)?.trim_start();
    let mut params = HashMap::new();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_ascii_lowercase();
        rest = rest[eq + 1..].trim_start();
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut end = None;
            let mut chars = quoted.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    _ => value.push(c),
                }
            }
            rest = &quoted[end?..];
            value
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            let value = rest[..end].trim().to_string();
            rest = &rest[end..];
            value
        };
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after.trim_start();
        } else if !rest.is_empty() {
            return None;
        }
        if key.is_empty() || params.len() >= 16 {
            return None;
        }
        params.insert(key, value);
    }
    Some(params)
}

/// Checks a Digest `Authorization` header for `method` on `target` (the
/// request's path and query) against the factory credentials.
pub fn digest_ok(header: &str, method: &str, target: &str, now: u64) -> bool {
    let Some(p) = digest_params(header) else {
        return false;
    };
    let field = |k: &str| p.get(k).map(String::as_str);
    let (Some(user), Some(realm), Some(nonce), Some(uri), Some(response)) = (
        field("username"),
        field("realm"),
        field("nonce"),
        field("uri"),
        field("response"),
    ) else {
        return false;
    };
    if user != USER || realm != REALM || uri != target || !nonce_ok(nonce, now) {
        return false;
    }
    if field("algorithm").is_some_and(|a| !a.eq_ignore_ascii_case("md5")) {
        return false;
    }
    let ha1 = md5_hex(&format!("{USER}:{REALM}:{PASSWORD}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let expected = match field("qop") {
        None => md5_hex(&format!("{ha1}:{nonce}:{ha2}")),
        Some("auth") => {
            let (Some(nc), Some(cnonce)) = (field("nc"), field("cnonce")) else {
                return false;
            };
            md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
        }
        Some(_) => return false,
    };
    response.eq_ignore_ascii_case(&expected)
}

// ---------------------------------------------------------------------------
// What the firmware reports, derived from the readings
// ---------------------------------------------------------------------------

fn type_name(model: Model) -> &'static str {
    match model {
        Model::AntminerS21 => "Antminer S21",
        // Only Antminers are served here; name the others plainly.
        Model::WhatsminerM56S => "WhatsMiner M56S",
        Model::AvalonA1466 => "AvalonMiner 1466",
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn whole(x: f64) -> i64 {
    x.round() as i64
}

/// One hash chain as bmminer reports it.
struct Chain {
    present: bool,
    rate_ghs: f64,
    ideal_ghs: f64,
    chips: u32,
    freq: u64,
    /// Two inlet then two outlet PCB sensors.
    pcb: [i64; 4],
    chip: [i64; 4],
    pic: [i64; 4],
    hw: u64,
}

impl Chain {
    fn temps(t: &[i64; 4]) -> String {
        t.map(|v| v.to_string()).join("-")
    }

    /// `ooooooooo oooooooo …`, one `o` per working chip.
    fn acs(&self) -> String {
        (0..self.chips as usize)
            .map(|i| if i > 0 && i % 8 == 0 { " o" } else { "o" })
            .collect()
    }

    fn board_temp(&self) -> i64 {
        self.pcb.iter().copied().max().unwrap_or(0)
    }

    fn chip_temp(&self) -> i64 {
        self.chip.iter().copied().max().unwrap_or(0)
    }
}

/// The readings, as numbers the firmware prints.
struct Report<'a> {
    miner: &'a Miner,
    r: Readings,
    chains: Vec<Chain>,
    when: u64,
}

impl<'a> Report<'a> {
    fn new(miner: &'a Miner, now: Instant, when: u64) -> Report<'a> {
        let r = miner.readings(now);
        let total = r.boards.len().max(1) as f64;
        let chains = r
            .boards
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let sensed = b.present && b.board_temp_c > 0.0;
                let pcb = if sensed {
                    let t = b.board_temp_c;
                    [t - 7.0, t - 5.0, t + 5.0, t + 7.0].map(whole)
                } else {
                    [0; 4]
                };
                let chip = if sensed {
                    let t = b.chip_temp_c;
                    [t - 5.0, t - 3.0, t - 1.0, t].map(whole)
                } else {
                    [0; 4]
                };
                let pic = pcb.map(|t| (t - 10).max(0));
                Chain {
                    present: b.present,
                    rate_ghs: b.ths * 1000.0,
                    ideal_ghs: if b.present {
                        r.expected_ths * 1000.0 / total
                    } else {
                        0.0
                    },
                    chips: b.chips,
                    freq: b.freq_mhz.round().max(0.0) as u64,
                    pcb,
                    chip,
                    pic,
                    hw: if b.present {
                        r.uptime_s / 1800 + i as u64 * 3
                    } else {
                        0
                    },
                }
            })
            .collect();
        Report {
            miner,
            r,
            chains,
            when,
        }
    }

    fn ghs_5s(&self) -> f64 {
        round2(self.r.ths_5s * 1000.0)
    }

    fn ghs_av(&self) -> f64 {
        round2(self.r.ths_avg * 1000.0)
    }

    fn ghs_30m(&self) -> f64 {
        round2((self.r.ths_avg * 2.0 + self.r.ths_5s) / 3.0 * 1000.0)
    }

    fn ideal_ghs(&self) -> f64 {
        round2(self.chains.iter().map(|c| c.ideal_ghs).sum())
    }

    fn hw_errors(&self) -> u64 {
        self.chains.iter().map(|c| c.hw).sum()
    }

    fn freq_avg(&self) -> u64 {
        let present: Vec<u64> = self
            .chains
            .iter()
            .filter(|c| c.present)
            .map(|c| c.freq)
            .collect();
        if present.is_empty() {
            0
        } else {
            present.iter().sum::<u64>() / present.len() as u64
        }
    }

    /// Difficulty the pool gives this miner.
    fn share_diff(&self) -> f64 {
        524_288.0
    }

    /// `Last Share Time` of the active pool, `0:00:03` style.
    fn last_share(&self) -> String {
        if self.r.mining && self.r.pools_alive {
            format!("0:00:{:02}", self.r.uptime_s % 6)
        } else {
            "0".into()
        }
    }

    /// The web UI's status lights: rate, network, fans, temp.
    fn status_lights(&self) -> Vec<Value> {
        let light = |kind: &str, ok: bool, code: u32, msg: &str| {
            json!({
                "type": kind,
                "status": if ok { "s" } else { "e" },
                "code": if ok { 0 } else { code },
                "msg": if ok { "" } else { msg },
            })
        };
        let lost = self.chains.iter().filter(|c| c.chips == 0).count();
        let fans_ok = !self.r.mining || self.r.fans_rpm.iter().all(|&f| f > 0);
        let hot = self.chains.iter().any(|c| c.chip_temp() >= 95);
        vec![
            light("rate", lost == 0, 131, "Some chains lost, hashrate is low"),
            light("network", self.r.pools_alive, 64, "Pools are all dead"),
            light("fans", fans_ok, 66, "Fan lost"),
            light("temp", !hot, 81, "Temperature is too high"),
        ]
    }
}

// ---------------------------------------------------------------------------
// RPC on 4028: the cgminer protocol as bmminer speaks it
// ---------------------------------------------------------------------------

/// cgminer's privileged commands: known, but outside the `api-groups` the
/// stock config grants, so they are refused rather than unknown.
const PRIVILEGED_COMMANDS: [&str; 14] = [
    "switchpool",
    "enablepool",
    "disablepool",
    "addpool",
    "removepool",
    "poolpriority",
    "poolquota",
    "save",
    "restart",
    "quit",
    "ascset",
    "pgaset",
    "setconfig",
    "privileged",
];

/// A parsed RPC request.
#[derive(Debug, PartialEq)]
struct RpcRequest {
    commands: Vec<String>,
    /// `{"command":…}` rather than plain text `command|param`.
    json: bool,
    /// Bitmain's `"new_api": true` flag: the web API's shapes.
    new_api: bool,
}

/// Why a request got no command.
#[derive(Debug, PartialEq)]
enum RpcParseError {
    InvalidJson,
    MissingCommand,
}

fn parse_rpc(request: &[u8]) -> Result<RpcRequest, RpcParseError> {
    let text = String::from_utf8_lossy(request);
    let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    if text.starts_with('{') {
        let value: Value = serde_json::from_str(text).map_err(|_| RpcParseError::InvalidJson)?;
        let command = value
            .get("command")
            .and_then(Value::as_str)
            .ok_or(RpcParseError::MissingCommand)?;
        let new_api = value.get("new_api").is_some_and(|v| match v {
            Value::Bool(b) => *b,
            Value::String(s) => s.eq_ignore_ascii_case("true") || s == "1",
            Value::Number(n) => n.as_u64() == Some(1),
            _ => false,
        });
        Ok(RpcRequest {
            commands: split_commands(command),
            json: true,
            new_api,
        })
    } else {
        let command = text.split('|').next().unwrap_or_default();
        Ok(RpcRequest {
            commands: split_commands(command),
            json: false,
            new_api: false,
        })
    }
}

fn split_commands(command: &str) -> Vec<String> {
    command
        .split('+')
        .map(|c| c.trim().to_string())
        .take(16)
        .collect()
}

/// The reply bytes, NUL-terminated like the firmware's. Plain-text
/// requests get cgminer's plain-text form.
fn rpc_reply(request: &[u8], miner: &Miner, now: Instant, when: u64) -> Vec<u8> {
    let (reply, json) = match parse_rpc(request) {
        // Only a request opening with `{` can fail to parse.
        Err(RpcParseError::InvalidJson) => (error_reply(23, "Invalid JSON", when), true),
        Err(RpcParseError::MissingCommand) => {
            (error_reply(24, "Missing JSON 'command'", when), true)
        }
        Ok(req) => {
            let report = Report::new(miner, now, when);
            let reply = if req.commands.len() == 1 {
                command_reply(&req.commands[0], req.new_api, &report)
            } else {
                let mut joined = Map::new();
                for command in &req.commands {
                    let reply = command_reply(command, req.new_api, &report);
                    joined.insert(command.clone(), Value::Array(vec![reply]));
                }
                joined.insert("id".into(), json!(1));
                Value::Object(joined)
            };
            (reply, req.json)
        }
    };
    let mut bytes = if json {
        reply.to_string().into_bytes()
    } else {
        render_text(&reply).into_bytes()
    };
    bytes.push(0);
    bytes
}

fn status(kind: &str, code: u32, msg: &str, when: u64) -> Value {
    json!({
        "STATUS": kind,
        "When": when,
        "Code": code,
        "Msg": msg,
        "Description": DESCRIPTION,
    })
}

fn error_reply(code: u32, msg: &str, when: u64) -> Value {
    json!({ "STATUS": [status("E", code, msg, when)], "id": 1 })
}

fn section_reply(section: &str, rows: Vec<Value>, code: u32, msg: &str, when: u64) -> Value {
    json!({
        "STATUS": [status("S", code, msg, when)],
        section: rows,
        "id": 1,
    })
}

fn command_reply(command: &str, new_api: bool, rep: &Report) -> Value {
    let when = rep.when;
    match (command, new_api) {
        ("summary", true) => new_summary(rep),
        ("stats", true) => new_stats(rep),
        ("pools", true) => new_pools(rep),
        ("version", _) => section_reply("VERSION", version_rows(rep), 22, "CGMiner versions", when),
        ("summary", _) => section_reply("SUMMARY", summary_rows(rep), 11, "Summary", when),
        ("pools", _) => {
            let rows = pools_rows(rep);
            if rows.is_empty() {
                error_reply(8, "No pools", when)
            } else {
                let msg = format!("{} Pool(s)", rows.len());
                section_reply("POOLS", rows, 7, &msg, when)
            }
        }
        ("stats", _) => section_reply("STATS", stats_rows(rep), 70, "CGMiner stats", when),
        ("devs" | "edevs", _) => section_reply("DEVS", devs_rows(rep), 9, "1 ASC(s)", when),
        ("devdetails", _) => section_reply(
            "DEVDETAILS",
            devdetails_rows(rep),
            69,
            "Device Details",
            when,
        ),
        ("config", _) => section_reply("CONFIG", config_rows(rep), 33, "CGMiner config", when),
        (c, _) if PRIVILEGED_COMMANDS.contains(&c) => {
            error_reply(45, &format!("Access denied to '{c}' command"), when)
        }
        _ => error_reply(14, "Invalid command", when),
    }
}

fn version_rows(rep: &Report) -> Vec<Value> {
    vec![json!({
        "BMMiner": BMMINER_VERSION,
        "API": API_VERSION,
        "Miner": MINER_VERSION,
        "CompileTime": COMPILE_TIME,
        "Type": type_name(rep.miner.model),
    })]
}

fn summary_rows(rep: &Report) -> Vec<Value> {
    let r = &rep.r;
    let minutes = (r.uptime_s as f64 / 60.0).max(1.0 / 60.0);
    let diff = rep.share_diff();
    vec![json!({
        "Elapsed": r.uptime_s,
        "GHS 5s": rep.ghs_5s(),
        "GHS av": rep.ghs_av(),
        "GHS 30m": rep.ghs_30m(),
        "Found Blocks": 0,
        "Getwork": r.uptime_s / 30,
        "Accepted": r.accepted,
        "Rejected": r.rejected,
        "Hardware Errors": rep.hw_errors(),
        "Utility": round2(r.accepted as f64 / minutes),
        "Discarded": r.uptime_s * 12,
        "Stale": r.rejected / 4,
        "Get Failures": 0,
        "Local Work": r.uptime_s * 90,
        "Remote Failures": 0,
        "Network Blocks": r.uptime_s / 600,
        "Total MH": (rep.ghs_av() * 1000.0 * r.uptime_s as f64).round(),
        "Work Utility": round2(rep.ghs_av() * 60.0 / 4.295),
        "Difficulty Accepted": r.accepted as f64 * diff,
        "Difficulty Rejected": r.rejected as f64 * diff,
        "Difficulty Stale": 0.0,
        "Best Share": (r.accepted * 104_729) % 9_999_999_967,
        "Device Hardware%": 0.0,
        "Device Rejected%": 0.0,
        "Pool Rejected%": 0.0,
        "Pool Stale%": 0.0,
        "Last getwork": rep.when,
    })]
}

fn pool_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(':').next().unwrap_or(rest)
}

fn pools_rows(rep: &Report) -> Vec<Value> {
    let r = &rep.r;
    let diff = rep.share_diff();
    r.pools
        .iter()
        .enumerate()
        .map(|(i, pool)| {
            let active = i == 0 && r.pools_alive;
            let accepted = if i == 0 { r.accepted } else { 0 };
            let rejected = if i == 0 { r.rejected } else { 0 };
            json!({
                "POOL": i,
                "URL": pool.url,
                "Status": if r.pools_alive { "Alive" } else { "Dead" },
                "Priority": i,
                "Quota": 1,
                "Long Poll": "N",
                "Getworks": if i == 0 { r.uptime_s / 30 } else { 3 },
                "Accepted": accepted,
                "Rejected": rejected,
                "Discarded": if i == 0 { r.uptime_s * 12 } else { 0 },
                "Stale": 0,
                "Get Failures": 0,
                "Remote Failures": 0,
                "User": pool.user,
                "Last Share Time": if i == 0 { rep.last_share() } else { "0".into() },
                "Diff": if active { "512K" } else { "" },
                "Diff1 Shares": 0,
                "Proxy Type": "",
                "Proxy": "",
                "Difficulty Accepted": accepted as f64 * diff,
                "Difficulty Rejected": rejected as f64 * diff,
                "Difficulty Stale": 0.0,
                "Last Share Difficulty": if active { diff } else { 0.0 },
                "Has Stratum": true,
                "Stratum Active": active,
                "Stratum URL": if active { pool_host(&pool.url) } else { "" },
                "Has GBT": false,
                "Best Share": if i == 0 { (r.accepted * 104_729) % 9_999_999_967 } else { 0 },
                "Pool Rejected%": 0.0,
                "Pool Stale%%": 0.0,
            })
        })
        .collect()
}

fn stats_rows(rep: &Report) -> Vec<Value> {
    let r = &rep.r;
    let mut row = Map::new();
    let mut put = |k: String, v: Value| {
        row.insert(k, v);
    };
    put("STATS".into(), json!(0));
    put("ID".into(), json!("BTM_SOC0"));
    put("Elapsed".into(), json!(r.uptime_s));
    put("Calls".into(), json!(0));
    put("Wait".into(), json!(0.0));
    put("Max".into(), json!(0.0));
    put("Min".into(), json!(99_999_999.0));
    put("GHS 5s".into(), json!(rep.ghs_5s()));
    put("GHS av".into(), json!(rep.ghs_av()));
    put("rate_30m".into(), json!(rep.ghs_30m()));
    put("Mode".into(), json!(2));
    put("miner_count".into(), json!(rep.chains.len()));
    put("frequency".into(), json!(rep.freq_avg()));
    put("fan_num".into(), json!(r.fans_rpm.len()));
    for (i, rpm) in r.fans_rpm.iter().enumerate() {
        put(format!("fan{}", i + 1), json!(rpm));
    }
    put("temp_num".into(), json!(rep.chains.len()));
    for (i, c) in rep.chains.iter().enumerate() {
        let n = i + 1;
        put(format!("temp{n}"), json!(c.board_temp()));
        put(format!("temp2_{n}"), json!(c.chip_temp()));
        put(format!("temp_pcb{n}"), json!(Chain::temps(&c.pcb)));
        put(format!("temp_pic{n}"), json!(Chain::temps(&c.pic)));
        put(format!("temp_chip{n}"), json!(Chain::temps(&c.chip)));
        put(format!("chain_acn{n}"), json!(c.chips));
        put(format!("chain_acs{n}"), json!(c.acs()));
        put(format!("chain_hw{n}"), json!(c.hw));
        // A chain without a board prints an empty rate, as the firmware does.
        let rate = if c.present {
            format!("{:.2}", c.rate_ghs)
        } else {
            String::new()
        };
        put(format!("chain_rate{n}"), json!(rate));
        put(format!("freq{n}"), json!(c.freq));
    }
    let temp_max = rep.chains.iter().map(Chain::chip_temp).max().unwrap_or(0);
    put("temp_max".into(), json!(temp_max));
    put("total_rateideal".into(), json!(rep.ideal_ghs()));
    put("rate_unit".into(), json!("GH"));
    put("total_freqavg".into(), json!(rep.freq_avg()));
    put(
        "total_acn".into(),
        json!(rep.chains.iter().map(|c| c.chips).sum::<u32>()),
    );
    put("total rate".into(), json!(rep.ghs_av()));
    put("no_matching_work".into(), json!(rep.hw_errors()));
    put(
        "chain_power".into(),
        json!(format!("{} W", whole(r.power_w))),
    );
    put("miner_version".into(), json!(MINER_VERSION));
    put("miner_id".into(), json!(miner_id(rep.miner)));
    vec![
        json!({
            "BMMiner": BMMINER_VERSION,
            "Miner": MINER_VERSION,
            "CompileTime": COMPILE_TIME,
            "Type": type_name(rep.miner.model),
        }),
        Value::Object(row),
    ]
}

fn miner_id(miner: &Miner) -> String {
    md5_hex(&miner.serial)[..16].to_string()
}

fn devs_rows(rep: &Report) -> Vec<Value> {
    let r = &rep.r;
    vec![json!({
        "ASC": 0,
        "Name": "BTM_SOC",
        "ID": 0,
        "Enabled": "Y",
        "Status": "Alive",
        "Temperature": rep.chains.iter().map(Chain::chip_temp).max().unwrap_or(0),
        "MHS av": round2(rep.ghs_av() * 1000.0),
        "MHS 5s": round2(rep.ghs_5s() * 1000.0),
        "Accepted": r.accepted,
        "Rejected": r.rejected,
        "Hardware Errors": rep.hw_errors(),
        "Utility": 0.0,
        "Last Share Pool": 0,
        "Last Share Time": rep.when,
        "Total MH": (rep.ghs_av() * 1000.0 * r.uptime_s as f64).round(),
        "Diff1 Work": 0,
        "Difficulty Accepted": r.accepted as f64 * rep.share_diff(),
        "Difficulty Rejected": r.rejected as f64 * rep.share_diff(),
        "Last Share Difficulty": rep.share_diff(),
        "Last Valid Work": rep.when,
        "Device Hardware%": 0.0,
        "Device Rejected%": 0.0,
        "Device Elapsed": r.uptime_s,
    })]
}

fn devdetails_rows(rep: &Report) -> Vec<Value> {
    vec![json!({
        "DEVDETAILS": 0,
        "Name": "BTM_SOC",
        "ID": 0,
        "Driver": "bitmain_soc",
        "Kernel": "",
        "Model": type_name(rep.miner.model),
        "Device Path": "",
    })]
}

fn config_rows(rep: &Report) -> Vec<Value> {
    vec![json!({
        "ASC Count": 1,
        "PGA Count": 0,
        "Pool Count": rep.r.pools.len(),
        "Strategy": "Failover",
        "Log Interval": 5,
        "Device Code": "",
        "OS": "Linux",
        "Hotplug": "None",
    })]
}

// The `new_api` shapes, shared with the web CGI.

fn new_status(msg: &str, when: u64) -> Value {
    json!({ "STATUS": "S", "when": when, "Msg": msg, "api_version": NEW_API_VERSION })
}

fn new_info(rep: &Report) -> Value {
    json!({
        "miner_version": MINER_VERSION,
        "CompileTime": COMPILE_TIME,
        "type": type_name(rep.miner.model),
    })
}

fn new_summary(rep: &Report) -> Value {
    json!({
        "STATUS": new_status("summary", rep.when),
        "INFO": new_info(rep),
        "SUMMARY": [{
            "elapsed": rep.r.uptime_s,
            "rate_5s": rep.ghs_5s(),
            "rate_30m": rep.ghs_30m(),
            "rate_avg": rep.ghs_av(),
            "rate_ideal": rep.ideal_ghs(),
            "rate_unit": "GH/s",
            "hw_all": rep.hw_errors(),
            "bestshare": (rep.r.accepted * 104_729) % 9_999_999_967,
            "status": rep.status_lights(),
        }],
    })
}

fn new_stats(rep: &Report) -> Value {
    let r = &rep.r;
    let chains: Vec<Value> = rep
        .chains
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "index": i,
                "freq_avg": c.freq,
                "rate_ideal": round2(c.ideal_ghs),
                "rate_real": round2(c.rate_ghs),
                "asic_num": c.chips,
                "asic": c.acs(),
                "temp_pic": c.pic,
                "temp_pcb": c.pcb,
                "temp_chip": c.chip,
                "hw": c.hw,
                "eeprom_loaded": c.present,
                "sn": if c.present { format!("{}B{}", rep.miner.serial, i) } else { String::new() },
                "hwp": 0.0,
                "tpl": [],
            })
        })
        .collect();
    json!({
        "STATUS": new_status("stats", rep.when),
        "INFO": new_info(rep),
        "STATS": [{
            "elapsed": r.uptime_s,
            "rate_5s": rep.ghs_5s(),
            "rate_30m": rep.ghs_30m(),
            "rate_avg": rep.ghs_av(),
            "rate_ideal": rep.ideal_ghs(),
            "rate_unit": "GH/s",
            "chain_num": rep.chains.len(),
            "fan_num": r.fans_rpm.len(),
            "fan": r.fans_rpm,
            "hwp_total": 0.0,
            "miner-mode": work_mode_value(r.mode),
            "freq-level": 100,
            "chain": chains,
        }],
    })
}

fn new_pools(rep: &Report) -> Value {
    let legacy = pools_rows(rep);
    let pools: Vec<Value> = legacy
        .iter()
        .map(|p| {
            json!({
                "index": p["POOL"],
                "url": p["URL"],
                "user": p["User"],
                "status": p["Status"],
                "priority": p["Priority"],
                "getworks": p["Getworks"],
                "accepted": p["Accepted"],
                "rejected": p["Rejected"],
                "discarded": p["Discarded"],
                "stale": p["Stale"],
                "diff": p["Diff"],
                "diff1": p["Diff1 Shares"],
                "diffa": p["Difficulty Accepted"],
                "diffr": p["Difficulty Rejected"],
                "diffs": p["Difficulty Stale"],
                "lsdiff": p["Last Share Difficulty"],
                "lstime": p["Last Share Time"],
            })
        })
        .collect();
    json!({
        "STATUS": new_status("pools", rep.when),
        "INFO": new_info(rep),
        "POOLS": pools,
    })
}

/// cgminer's plain-text form: `STATUS=S,When=…,…|SUMMARY,Elapsed=…|`, with
/// `,`, `=`, `|` and `\` escaped by a backslash.
fn render_text(reply: &Value) -> String {
    fn escape(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if matches!(c, ',' | '=' | '|' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }
    fn scalar(v: &Value) -> String {
        match v {
            Value::String(s) => escape(s),
            Value::Null => String::new(),
            other => escape(&other.to_string()),
        }
    }
    /// `k=v,…` with the keys in `first` leading, in that order.
    fn fields(row: &Value, first: &[&str]) -> String {
        let Some(o) = row.as_object() else {
            return String::new();
        };
        let leading = first.iter().filter_map(|k| o.get_key_value(*k));
        let rest = o.iter().filter(|(k, _)| !first.contains(&k.as_str()));
        leading
            .chain(rest)
            .map(|(k, v)| format!("{}={}", escape(k), scalar(v)))
            .collect::<Vec<_>>()
            .join(",")
    }
    let Some(object) = reply.as_object() else {
        return String::new();
    };
    let mut out = String::new();
    let statuses = object.get("STATUS").and_then(Value::as_array);
    for status in statuses.into_iter().flatten() {
        out.push_str(&fields(status, &STATUS_ORDER));
        out.push('|');
    }
    for (section, value) in object {
        if section == "STATUS" || section == "id" {
            continue;
        }
        for row in value.as_array().into_iter().flatten() {
            // One-row sections are named; many-row ones lead with their index.
            if matches!(section.as_str(), "SUMMARY" | "VERSION" | "CONFIG") {
                out.push_str(section);
                out.push(',');
            }
            out.push_str(&fields(row, &ROW_INDEX_KEYS));
            out.push('|');
        }
    }
    out
}

/// The order of a plain-text STATUS section.
const STATUS_ORDER: [&str; 5] = ["STATUS", "When", "Code", "Msg", "Description"];
/// Index keys that open a plain-text row.
const ROW_INDEX_KEYS: [&str; 5] = ["POOL", "STATS", "ASC", "DEVDETAILS", "ID"];

// ---------------------------------------------------------------------------
// Web CGI on 80
// ---------------------------------------------------------------------------

/// What a CGI request gets back.
#[derive(Debug)]
struct CgiReply {
    status: StatusCode,
    body: CgiBody,
    /// Reboot once the reply is out.
    reboot: bool,
}

#[derive(Debug)]
enum CgiBody {
    Json(Value),
    Html(&'static str),
}

impl CgiReply {
    fn json(value: Value) -> CgiReply {
        CgiReply {
            status: StatusCode::OK,
            body: CgiBody::Json(value),
            reboot: false,
        }
    }

    fn html(status: StatusCode, text: &'static str) -> CgiReply {
        CgiReply {
            status,
            body: CgiBody::Html(text),
            reboot: false,
        }
    }
}

const INDEX_HTML: &str = "<!DOCTYPE html><html><head><meta charset=\"utf-8\">\
<title>Antminer</title></head><body><div id=\"app\"></div>\
<script src=\"/js/app.js\"></script></body></html>\n";
const NOT_FOUND_HTML: &str = "<html><head><title>404 Not Found</title></head>\
<body><h1>404 Not Found</h1></body></html>\n";
const NOT_ALLOWED_HTML: &str = "<html><head><title>405 Method Not Allowed</title></head>\
<body><h1>405 Method Not Allowed</h1></body></html>\n";

/// Answers an authenticated request for `path` at `now` (`when` in Unix
/// seconds).
fn cgi_reply(
    miner: &Miner,
    method: &Method,
    path: &str,
    body: &[u8],
    now: Instant,
    when: u64,
) -> CgiReply {
    if path == "/" || path == "/index.html" {
        return CgiReply::html(StatusCode::OK, INDEX_HTML);
    }
    let Some(name) = path
        .strip_prefix("/cgi-bin/")
        .and_then(|p| p.strip_suffix(".cgi"))
    else {
        return CgiReply::html(StatusCode::NOT_FOUND, NOT_FOUND_HTML);
    };
    let is_write = matches!(name, "set_miner_conf" | "blink" | "reboot");
    let method_ok = if is_write {
        method == Method::POST
    } else {
        method == Method::GET || method == Method::POST
    };
    let known = matches!(
        name,
        "get_system_info"
            | "miner_type"
            | "get_network_info"
            | "get_miner_conf"
            | "get_blink_status"
            | "summary"
            | "stats"
            | "pools"
    ) || is_write;
    if !known {
        return CgiReply::html(StatusCode::NOT_FOUND, NOT_FOUND_HTML);
    }
    if !method_ok {
        return CgiReply::html(StatusCode::METHOD_NOT_ALLOWED, NOT_ALLOWED_HTML);
    }
    match name {
        "get_system_info" => CgiReply::json(system_info(miner)),
        "miner_type" => CgiReply::json(json!({
            "miner_type": type_name(miner.model),
            "subtype": CONTROL_BOARD,
            "fw_version": COMPILE_TIME,
        })),
        "get_network_info" => CgiReply::json(network_info(miner)),
        "get_miner_conf" => CgiReply::json(miner_conf(miner, &miner.readings(now))),
        "get_blink_status" => CgiReply::json(json!({ "blink": miner.readings(now).led })),
        "summary" => CgiReply::json(new_summary(&Report::new(miner, now, when))),
        "stats" => CgiReply::json(new_stats(&Report::new(miner, now, when))),
        "pools" => CgiReply::json(new_pools(&Report::new(miner, now, when))),
        "set_miner_conf" => CgiReply::json(match parse_conf_update(body) {
            Ok(update) => {
                apply_conf_update(miner, update);
                json!({ "stats": "success", "code": "M000", "msg": "OK!" })
            }
            Err(why) => json!({ "stats": "error", "code": "M001", "msg": why }),
        }),
        "blink" => CgiReply::json(match parse_blink(body) {
            Some(on) => {
                miner.set_led(on);
                json!({ "stats": "success", "code": "B000", "msg": "OK!" })
            }
            None => json!({ "stats": "error", "code": "B001", "msg": "Illegal parameters!" }),
        }),
        "reboot" => CgiReply {
            reboot: true,
            ..CgiReply::json(json!({ "stats": "success", "code": "R000", "msg": "OK!" }))
        },
        _ => CgiReply::html(StatusCode::NOT_FOUND, NOT_FOUND_HTML),
    }
}

fn system_info(miner: &Miner) -> Value {
    json!({
        "minertype": type_name(miner.model),
        "nettype": "DHCP",
        "netdevice": "eth0",
        "macaddr": miner.mac_string(),
        "hostname": miner.hostname,
        "ipaddress": miner.addr.to_string(),
        "netmask": "255.0.0.0",
        "gateway": "",
        "dnsservers": "",
        "system_mode": "GNU/Linux",
        "system_kernel_version": KERNEL,
        "system_filesystem_version": COMPILE_TIME,
        "firmware_type": "Release",
        "serinum": miner.serial,
    })
}

fn network_info(miner: &Miner) -> Value {
    json!({
        "nettype": "DHCP",
        "netdevice": "eth0",
        "macaddr": miner.mac_string(),
        "ipaddress": miner.addr.to_string(),
        "netmask": "255.0.0.0",
        "conf_nettype": "DHCP",
        "conf_hostname": miner.hostname,
        "conf_ipaddress": "",
        "conf_netmask": "",
        "conf_gateway": "",
        "conf_dnsservers": "",
    })
}

/// `miner-mode` / `bitmain-work-mode` values.
fn work_mode_value(mode: PowerMode) -> u8 {
    match mode {
        PowerMode::Normal => 0,
        PowerMode::Sleep => 1,
        PowerMode::High => 2,
        PowerMode::Low => 3,
    }
}

fn work_mode_from(value: &Value) -> Option<PowerMode> {
    let n = value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse::<u64>().ok()))?;
    match n {
        0 => Some(PowerMode::Normal),
        1 => Some(PowerMode::Sleep),
        2 => Some(PowerMode::High),
        3 => Some(PowerMode::Low),
        _ => None,
    }
}

/// Fan settings of the stock config. The model has no place for them, so
/// they are kept here, per miner address.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FanSettings {
    manual: bool,
    pwm: u8,
}

impl Default for FanSettings {
    fn default() -> Self {
        FanSettings {
            manual: false,
            pwm: 100,
        }
    }
}

fn fan_settings() -> std::sync::MutexGuard<'static, HashMap<Ipv4Addr, FanSettings>> {
    static FANS: OnceLock<Mutex<HashMap<Ipv4Addr, FanSettings>>> = OnceLock::new();
    FANS.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn miner_conf(miner: &Miner, r: &Readings) -> Value {
    let mut pools: Vec<Value> = r
        .pools
        .iter()
        .take(POOL_SLOTS)
        .map(|p| json!({ "url": p.url, "user": p.user, "pass": p.password }))
        .collect();
    pools.resize(POOL_SLOTS, json!({ "url": "", "user": "", "pass": "" }));
    let fans = fan_settings().get(&miner.addr).copied().unwrap_or_default();
    let mode = work_mode_value(r.mode);
    let freq = r
        .boards
        .iter()
        .find(|b| b.present && b.freq_mhz > 0.0)
        .map_or(490, |b| b.freq_mhz.round() as u64);
    json!({
        "pools": pools,
        "api-listen": true,
        "api-network": true,
        "api-groups": "A:stats:pools:devs:edevs:summary:version:config:devdetails",
        "api-allow": "A:0/0,W:*",
        "bitmain-fan-ctrl": fans.manual,
        "bitmain-fan-pwm": fans.pwm.to_string(),
        "bitmain-use-vil": true,
        "bitmain-freq": freq.to_string(),
        "bitmain-voltage": "1320",
        "bitmain-ccdelay": "0",
        "bitmain-pwth": "0",
        "bitmain-work-mode": mode.to_string(),
        "miner-mode": mode,
        "freq-level": "100",
    })
}

/// The parts of a `set_miner_conf` body this firmware acts on; absent
/// fields stay as they are.
#[derive(Debug, Default, PartialEq)]
struct ConfUpdate {
    mode: Option<PowerMode>,
    pools: Option<Vec<Pool>>,
    fan_manual: Option<bool>,
    fan_pwm: Option<u8>,
}

fn parse_conf_update(body: &[u8]) -> Result<ConfUpdate, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| "Illegal parameters!".to_string())?;
    let Some(conf) = value.as_object() else {
        return Err("Illegal parameters!".into());
    };
    let mut update = ConfUpdate::default();
    for key in ["miner-mode", "bitmain-work-mode"] {
        if let Some(v) = conf.get(key) {
            let mode = work_mode_from(v).ok_or_else(|| format!("Illegal {key}!"))?;
            // `miner-mode` wins when both are sent.
            update.mode.get_or_insert(mode);
        }
    }
    if let Some(pools) = conf.get("pools") {
        update.pools = Some(parse_pools(pools)?);
    }
    if let Some(v) = conf.get("bitmain-fan-ctrl") {
        let manual = v
            .as_bool()
            .or_else(|| match v.as_str() {
                Some("true" | "1") => Some(true),
                Some("false" | "0") => Some(false),
                _ => None,
            })
            .ok_or("Illegal bitmain-fan-ctrl!")?;
        update.fan_manual = Some(manual);
    }
    if let Some(v) = conf.get("bitmain-fan-pwm") {
        let pwm = v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse::<u64>().ok()))
            .filter(|&p| p <= 100)
            .ok_or("Illegal bitmain-fan-pwm!")?;
        update.fan_pwm = Some(pwm as u8);
    }
    Ok(update)
}

fn parse_pools(value: &Value) -> Result<Vec<Pool>, String> {
    let slots = value.as_array().ok_or("Illegal pools!")?;
    if slots.len() > POOL_SLOTS {
        return Err(format!("At most {POOL_SLOTS} pools!"));
    }
    let mut pools = Vec::new();
    for slot in slots {
        let field = |k: &str| -> Result<String, String> {
            match slot.get(k) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) if s.len() <= MAX_POOL_FIELD && !s.contains('\0') => {
                    Ok(s.trim().to_string())
                }
                Some(_) => Err(format!("Illegal pool {k}!")),
            }
        };
        if !slot.is_object() {
            return Err("Illegal pools!".into());
        }
        let url = field("url")?;
        if url.is_empty() {
            continue;
        }
        // The CGI takes `host:port` and mines over stratum+tcp.
        let url = if url.contains("://") {
            url
        } else {
            format!("stratum+tcp://{url}")
        };
        pools.push(Pool {
            url,
            user: field("user")?,
            password: field("pass")?,
        });
    }
    Ok(pools)
}

fn apply_conf_update(miner: &Miner, update: ConfUpdate) {
    if let Some(pools) = update.pools {
        miner.set_pools(pools);
    }
    if update.fan_manual.is_some() || update.fan_pwm.is_some() {
        let mut fans = fan_settings();
        let entry = fans.entry(miner.addr).or_default();
        if let Some(manual) = update.fan_manual {
            entry.manual = manual;
        }
        if let Some(pwm) = update.fan_pwm {
            entry.pwm = pwm;
        }
    }
    if let Some(mode) = update.mode {
        if miner.mode() != mode {
            miner.set_mode(mode);
        }
    }
}

fn parse_blink(body: &[u8]) -> Option<bool> {
    let value: Value = serde_json::from_slice(body).ok()?;
    match value.get("blink")? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") || s == "1" => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") || s == "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn miner() -> Miner {
        Miner::new(
            0,
            Ipv4Addr::new(127, 9, 1, 1),
            Model::AntminerS21,
            Duration::from_millis(200),
        )
    }

    fn rpc_json(request: &[u8], m: &Miner) -> Value {
        let reply = rpc_reply(request, m, Instant::now(), 1_700_000_000);
        assert_eq!(reply.last(), Some(&0), "replies end with a NUL");
        serde_json::from_slice(&reply[..reply.len() - 1]).expect("reply is JSON")
    }

    fn answer(challenge_nonce: &str, password: &str, method: &str, uri: &str) -> String {
        let ha1 = md5_hex(&format!("{USER}:{REALM}:{password}"));
        let ha2 = md5_hex(&format!("{method}:{uri}"));
        let response = md5_hex(&format!(
            "{ha1}:{challenge_nonce}:00000001:abcdef:auth:{ha2}"
        ));
        format!(
            "Digest username=\"root\", realm=\"{REALM}\", nonce=\"{challenge_nonce}\", \
             uri=\"{uri}\", qop=auth, nc=00000001, cnonce=\"abcdef\", response=\"{response}\", \
             algorithm=MD5"
        )
    }

    #[test]
    fn digest_accepts_root_root_and_refuses_the_rest() {
        let now = 1_700_000_000;
        let nonce = make_nonce(now);
        let uri = "/cgi-bin/get_system_info.cgi";
        assert!(digest_ok(
            &answer(&nonce, "root", "GET", uri),
            "GET",
            uri,
            now
        ));
        assert!(!digest_ok(
            &answer(&nonce, "admin", "GET", uri),
            "GET",
            uri,
            now
        ));
        // Signed for another method or URI.
        assert!(!digest_ok(
            &answer(&nonce, "root", "GET", uri),
            "POST",
            uri,
            now
        ));
        assert!(!digest_ok(
            &answer(&nonce, "root", "GET", uri),
            "GET",
            "/cgi-bin/reboot.cgi",
            now
        ));
        // A nonce we did not issue, or an old one.
        let forged = format!("{now:016x}{:016x}{}", 7, "0".repeat(32));
        assert!(!digest_ok(
            &answer(&forged, "root", "GET", uri),
            "GET",
            uri,
            now
        ));
        assert!(!digest_ok(
            &answer(&nonce, "root", "GET", uri),
            "GET",
            uri,
            now + NONCE_LIFETIME_S + 1
        ));
        for junk in [
            "",
            "Basic cm9vdDpyb290",
            "Digest",
            "Digest username=\"root",
            "Digest =,=,=",
            "Digest username=root realm=x",
            "Digest\u{0}\u{ffff}é=\"\\",
        ] {
            assert!(!digest_ok(junk, "GET", uri, now), "{junk:?}");
        }
    }

    #[test]
    fn challenge_names_the_antminer_realm() {
        let c = digest_challenge(1_700_000_000);
        assert!(
            c.starts_with("Digest realm=\"antMiner Configuration\""),
            "{c}"
        );
        assert!(c.contains("qop=\"auth\""));
    }

    #[test]
    fn rpc_answers_json_joined_and_plain_text() {
        let m = miner();
        let v = rpc_json(br#"{"command":"version"}"#, &m);
        assert_eq!(v["VERSION"][0]["Type"], "Antminer S21");
        assert_eq!(v["STATUS"][0]["STATUS"], "S");

        let v = rpc_json(b"{\"command\":\"summary+pools\"}\n", &m);
        assert!(v["summary"][0]["SUMMARY"][0]["GHS 5s"].as_f64().unwrap() > 150_000.0);
        assert_eq!(v["pools"][0]["POOLS"].as_array().unwrap().len(), 3);

        let text = rpc_reply(b"summary|", &m, Instant::now(), 1);
        let text = String::from_utf8(text).unwrap();
        assert!(text.starts_with("STATUS=S,"), "{text}");
        assert!(text.contains("|SUMMARY,"), "{text}");
        assert!(text.ends_with("|\0"));

        let v = rpc_json(br#"{"command":"stats","new_api":true}"#, &m);
        assert_eq!(v["STATS"][0]["chain"].as_array().unwrap().len(), 3);
        assert_eq!(v["INFO"]["CompileTime"], COMPILE_TIME);
    }

    #[test]
    fn rpc_errors_are_cgminer_errors() {
        let m = miner();
        let v = rpc_json(br#"{"command":"melt"}"#, &m);
        assert_eq!(v["STATUS"][0]["STATUS"], "E");
        assert_eq!(v["STATUS"][0]["Msg"], "Invalid command");
        let v = rpc_json(br#"{"command":"restart"}"#, &m);
        assert_eq!(v["STATUS"][0]["Code"], 45);
        let v = rpc_json(br#"{"command":"#, &m);
        assert_eq!(v["STATUS"][0]["Msg"], "Invalid JSON");
        let v = rpc_json(br#"{"cmd":"summary"}"#, &m);
        assert_eq!(v["STATUS"][0]["Code"], 24);
        let v = rpc_json(br#"{"command":7}"#, &m);
        assert_eq!(v["STATUS"][0]["STATUS"], "E");
        let text = rpc_reply(b"\xff\xfe\x00garbage,=|", &m, Instant::now(), 1);
        let text = String::from_utf8_lossy(&text);
        assert!(text.starts_with("STATUS=E,"), "{text}");
    }

    #[test]
    fn a_lost_board_is_a_chain_with_no_chips_and_no_rate() {
        let m = miner();
        m.set_fault(crate::model::Fault::HashboardLoss, true);
        let v = rpc_json(br#"{"command":"stats"}"#, &m);
        let s = &v["STATS"][1];
        assert_eq!(s["chain_acn1"], 0);
        assert_eq!(s["chain_rate1"], "");
        assert_eq!(s["temp_pcb1"], "0-0-0-0");
        assert_eq!(s["chain_acn2"], 108);
    }

    #[test]
    fn set_miner_conf_parses_modes_pools_and_refuses_junk() {
        let u = parse_conf_update(br#"{"miner-mode":1,"bitmain-work-mode":"0"}"#).unwrap();
        assert_eq!(u.mode, Some(PowerMode::Sleep));
        let u = parse_conf_update(br#"{"bitmain-work-mode":"3"}"#).unwrap();
        assert_eq!(u.mode, Some(PowerMode::Low));
        let u = parse_conf_update(
            br#"{"pools":[{"url":"pool.example:3333","user":"w.1","pass":"x"},
                          {"url":"","user":"","pass":""}]}"#,
        )
        .unwrap();
        let pools = u.pools.unwrap();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].url, "stratum+tcp://pool.example:3333");
        for junk in [
            &b"not json"[..],
            b"[]",
            br#"{"miner-mode":9}"#,
            br#"{"miner-mode":"sleep"}"#,
            br#"{"pools":{}}"#,
            br#"{"pools":[1]}"#,
            br#"{"pools":[{"url":5}]}"#,
            br#"{"pools":[{},{},{},{}]}"#,
            br#"{"bitmain-fan-pwm":"101"}"#,
        ] {
            assert!(
                parse_conf_update(junk).is_err(),
                "{}",
                String::from_utf8_lossy(junk)
            );
        }
        let long = format!(r#"{{"pools":[{{"url":"{}"}}]}}"#, "a".repeat(300));
        assert!(parse_conf_update(long.as_bytes()).is_err());
    }

    #[test]
    fn cgi_writes_reach_the_miner() {
        let m = miner();
        let now = Instant::now();
        let r = cgi_reply(
            &m,
            &Method::POST,
            "/cgi-bin/set_miner_conf.cgi",
            br#"{"miner-mode":3}"#,
            now,
            1,
        );
        assert!(matches!(r.body, CgiBody::Json(ref v) if v["code"] == "M000"));
        assert_eq!(m.mode(), PowerMode::Low);
        cgi_reply(
            &m,
            &Method::POST,
            "/cgi-bin/blink.cgi",
            br#"{"blink":"true"}"#,
            now,
            1,
        );
        assert!(m.readings(now).led);
        let r = cgi_reply(&m, &Method::GET, "/cgi-bin/reboot.cgi", b"", now, 1);
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        let r = cgi_reply(&m, &Method::POST, "/cgi-bin/reboot.cgi", b"", now, 1);
        assert!(r.reboot);
        let r = cgi_reply(&m, &Method::GET, "/cgi-bin/../../etc/passwd", b"", now, 1);
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
}
