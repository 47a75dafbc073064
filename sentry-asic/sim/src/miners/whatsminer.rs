//! WhatsMiner M56S with stock btminer firmware, as asic-rs 0.8.6 drives it.
//!
//! The firmware date in `get_version` is past 2024-11-01, so asic-rs talks
//! API v3: JSON behind a 4-byte little-endian length on TCP 4433, with
//! `set.*` commands carrying `account`, `ts` and a token (the first 8
//! characters of base64(sha256(cmd + password + salt + ts))). Pool settings
//! also come AES-256-ECB encrypted under that sha256. The v2 JSON API on
//! 4028 serves discovery (`devdetails` says btminer) and reads; its
//! md5crypt/AES writes are not emulated and are refused with a pointer to
//! API v3. The web port only redirects to HTTPS.
//!
//! Replies are built by pure functions from [`Miner::readings`]; the
//! socket functions at the bottom only move bytes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aes::cipher::{BlockDecrypt, KeyInit};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::model::{Miner, Pool, PowerMode, Readings};

use super::io;

/// Firmware version; its date picks API v3 in asic-rs.
pub const FW_VERSION: &str = "20250214.22.REL";
/// What `get.device.info` reports as the miner type (asic-rs: `M56SVH30`).
pub const MINER_TYPE: &str = "M56S_VH30";
/// The v3 write account and its factory password.
pub const ACCOUNT: &str = "super";
pub const PASSWORD: &str = "super";
/// How far a write's `ts` may be from the miner's clock.
pub const TOKEN_WINDOW_S: i64 = 600;
/// Requests served on one API v3 connection before it is closed.
const MAX_V3_REQUESTS: usize = 64;
/// Most pools the firmware keeps.
const MAX_POOLS: usize = 3;
/// Longest accepted pool URL, worker or password.
const MAX_POOL_FIELD: usize = 512;

/// API v3 result codes: 0 is success; asic-rs only tests for 0, and the
/// negative values are the sim's choice.
mod code {
    pub const INVALID_COMMAND: i64 = -2;
    pub const INVALID_JSON: i64 = -3;
    pub const PERMISSION_DENIED: i64 = -4;
    pub const INVALID_PARAM: i64 = -5;
}

/// What a request does besides its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Nothing,
    /// Reboot: unreachable once this reply is out.
    Reboot,
}

/// Seconds since the Unix epoch.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// The per-device salt `get.device.info` hands out, stable per MAC.
pub fn salt(miner: &Miner) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    Sha256::digest([b"btminer-salt".as_slice(), &miner.mac].concat())
        .iter()
        .take(8)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// sha256(cmd + password + salt + ts): the token's source and the key that
/// encrypts `set.miner.pools`.
fn command_hash(cmd: &str, password: &str, salt: &str, ts: i64) -> [u8; 32] {
    Sha256::digest(format!("{cmd}{password}{salt}{ts}").as_bytes()).into()
}

/// The token a client must send with `cmd` at `ts`.
pub fn token(cmd: &str, password: &str, salt: &str, ts: i64) -> String {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(command_hash(cmd, password, salt, ts));
    encoded.chars().take(8).collect()
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for a Unix time, as error codes are stamped.
fn utc_string(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn power_mode_code(mode: PowerMode) -> &'static str {
    match mode {
        PowerMode::Low => "0",
        PowerMode::Normal | PowerMode::Sleep => "1",
        PowerMode::High => "2",
    }
}

/// The highest power limit the firmware takes, and what it shows unset.
fn max_power_limit(miner: &Miner) -> f64 {
    (miner.model.nominal_w() * 1.2 / 10.0).round() * 10.0
}

const MIN_POWER_LIMIT_W: f64 = 1000.0;

fn psu_fan_rpm(miner: &Miner, r: &Readings) -> u32 {
    if r.power_w <= 0.0 {
        0
    } else {
        (2400.0 + 3600.0 * (r.power_w / miner.model.nominal_w()).min(1.3)) as u32
    }
}

fn present_boards(r: &Readings) -> usize {
    r.boards.iter().filter(|b| b.present).count()
}

/// `(code, reason)` for what the readings show wrong, with the codes the
/// firmware uses (see asic-rs's WhatsMiner error table).
fn error_codes(r: &Readings) -> Vec<(u32, String)> {
    let mut errors = Vec::new();
    let alive = r.power_w > 0.0;
    for (i, rpm) in r.fans_rpm.iter().take(2).enumerate() {
        if alive && *rpm == 0 {
            let which = if i == 0 { "Intake" } else { "Exhaust" };
            errors.push((110 + i as u32, format!("{which} fan speed error.")));
        }
    }
    if r.boards.iter().any(|b| b.present && b.chip_temp_c >= 90.0) {
        errors.push((360, "Hashboard high temperature error.".into()));
    }
    for (i, b) in r.boards.iter().enumerate().take(10) {
        if !b.present {
            errors.push((530 + i as u32, format!("Slot {i} not found.")));
        }
    }
    if !r.pools_alive {
        for i in 0..r.pools.len().min(10) {
            errors.push((2020 + i as u32, format!("Pool {i} connection failed.")));
        }
    }
    errors
}

// ---------------------------------------------------------------- API v3

/// The whole `get.device.info` message.
fn device_info(miner: &Miner, r: &Readings, unix: i64) -> Value {
    let o = miner.addr.octets();
    let mut m = Map::new();
    m.insert("board-num".into(), json!(present_boards(r).to_string()));
    for (i, b) in r.boards.iter().enumerate() {
        if b.present {
            m.insert(
                format!("pcbsn{i}"),
                json!(format!("BKM5CS{:02X}{:02X}{:02X}K{i:04}", o[1], o[2], o[3])),
            );
            m.insert(
                format!("chipdata{i}"),
                json!(format!("K8H{:03}-2406 BINVH3-{:06}", 300 + i, miner.index)),
            );
        }
    }
    m.insert(
        "detect-hash-rate".into(),
        json!(r
            .boards
            .iter()
            .filter(|b| b.present)
            .map(|_| format!("{:.0}", r.expected_ths * 1000.0 / r.boards.len() as f64))
            .collect::<Vec<_>>()
            .join(":")),
    );
    m.insert("fast-boot".into(), json!("disable"));
    m.insert("hash-board".into(), json!("H30"));
    m.insert("hash-percent".into(), json!("0"));
    m.insert("miner-sn".into(), json!(miner.serial));
    m.insert("pool-strategy".into(), json!("FAILOVER"));
    m.insert("type".into(), json!(MINER_TYPE));
    m.insert(
        "working".into(),
        json!(if r.mining { "true" } else { "false" }),
    );

    let since = unix - r.uptime_s as i64;
    let errors: Vec<Value> = error_codes(r)
        .into_iter()
        .map(|(code, reason)| {
            let mut e = Map::new();
            e.insert(code.to_string(), json!(utc_string(since)));
            e.insert("reason".into(), json!(reason));
            Value::Object(e)
        })
        .collect();

    json!({
        "error-code": errors,
        "miner": m,
        "network": {
            "dns": format!("{}.{}.{}.1", o[0], o[1], o[2]),
            "gateway": format!("{}.{}.{}.1", o[0], o[1], o[2]),
            "hostname": miner.hostname,
            "ip": miner.addr.to_string(),
            "mac": miner.mac_string(),
            "netmask": "255.255.255.0",
            "proto": "dhcp",
        },
        "power": {
            "fanspeed": psu_fan_rpm(miner, r),
            "hwversion": "RT0203",
            "iin": round(r.power_w / 230.0, 2),
            "mode": power_mode_code(r.mode),
            "model": "P621B",
            "pin": round(r.power_w, 0),
            "sn": format!("P621B{:012}", miner.index),
            "swversion": "240318.221101",
            "type": "P621B",
            "vendor": "1",
            "vin": if r.power_w > 0.0 { 230.0 } else { 0.0 },
        },
        "salt": salt(miner),
        "system": {
            "api": "3.0.2",
            "apiswitch": "1",
            "control-board-version": "CB6V10",
            "fwversion": FW_VERSION,
            "ledstatus": if r.led { "manual" } else { "auto" },
            "platform": "H616",
        },
    })
}

fn chip_temps(b: &crate::model::BoardReading) -> (f64, f64, f64) {
    if b.chip_temp_c <= 0.0 {
        return (0.0, 0.0, 0.0);
    }
    (
        round(b.chip_temp_c - 6.0, 1),
        round(b.chip_temp_c, 1),
        round(b.chip_temp_c + 5.0, 1),
    )
}

fn miner_summary(miner: &Miner, r: &Readings) -> Value {
    let present: Vec<_> = r.boards.iter().filter(|b| b.present).collect();
    let temps: Vec<(f64, f64, f64)> = present.iter().map(|b| chip_temps(b)).collect();
    let min = temps.iter().map(|t| t.0).fold(f64::INFINITY, f64::min);
    let max = temps.iter().map(|t| t.2).fold(0.0, f64::max);
    let avg = if temps.is_empty() {
        0.0
    } else {
        temps.iter().map(|t| t.1).sum::<f64>() / temps.len() as f64
    };
    let freq = if present.is_empty() {
        0.0
    } else {
        present.iter().map(|b| b.freq_mhz).sum::<f64>() / present.len() as f64
    };
    let rate = if r.ths_avg > 0.0 {
        round(r.power_w / r.ths_avg, 1)
    } else {
        0.0
    };
    json!({
        "summary": {
            "Debug": "",
            "board-temperature": present.iter().map(|b| round(b.board_temp_c, 1)).collect::<Vec<_>>(),
            "bootup-time": r.uptime_s + 95,
            "chip-temp-avg": round(avg, 1),
            "chip-temp-max": round(max, 1),
            "chip-temp-min": if min.is_finite() { round(min, 1) } else { 0.0 },
            "elapsed": r.uptime_s,
            "environment-temperature": round(r.ambient_c, 1),
            "factory-hash": round(r.expected_ths, 3),
            "fan-speed-in": r.fans_rpm.first().copied().unwrap_or(0),
            "fan-speed-out": r.fans_rpm.get(1).copied().unwrap_or(0),
            "freq-avg": freq.round(),
            "hash-15min": round(r.ths_avg, 3),
            "hash-1min": round((r.ths_5s + r.ths_avg) / 2.0, 3),
            "hash-average": round(r.ths_avg, 3),
            "hash-realtime": round(r.ths_5s, 3),
            "power-5min": r.power_w.round(),
            "power-limit": r.power_limit_w.unwrap_or_else(|| max_power_limit(miner)).round(),
            "power-rate": rate,
            "power-realtime": r.power_w.round(),
            "up-freq-finish": 1,
        }
    })
}

fn miner_edevs(r: &Readings) -> Value {
    let present = present_boards(r).max(1) as f64;
    let per_board_expected = r.expected_ths / r.boards.len().max(1) as f64;
    // An undetected slot is not listed at all.
    let edevs: Vec<Value> = r
        .boards
        .iter()
        .enumerate()
        .filter(|(_, b)| b.present)
        .map(|(i, b)| {
            let (min, avg, max) = chip_temps(b);
            json!({
                "chip-temp-avg": avg,
                "chip-temp-max": max,
                "chip-temp-min": min,
                "effective-chips": b.chips,
                "factory-hash": round(per_board_expected, 2),
                "freq": b.freq_mhz.round(),
                "hash-average": round(r.ths_avg / present, 2),
                "hash-realtime": round(b.ths, 2),
                "id": i,
                "status": "alive",
            })
        })
        .collect();
    json!({ "edevs": edevs })
}

fn miner_pools(r: &Readings) -> Value {
    let pools: Vec<Value> = r
        .pools
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({
                "account": p.user,
                "id": i + 1,
                "pool-priority": i,
                "status": if r.pools_alive { "alive" } else { "dead" },
                "stratum-active": r.pools_alive && i == 0,
                "url": p.url,
            })
        })
        .collect();
    json!({ "pools": pools })
}

fn v3_ok(cmd: &str, msg: Value, unix: i64) -> Value {
    json!({ "code": 0, "desc": cmd, "msg": msg, "when": unix })
}

fn v3_err(code: i64, cmd: &str, text: &str, unix: i64) -> Value {
    json!({ "code": code, "desc": cmd, "msg": text, "when": unix })
}

/// Answers one API v3 request. Writes are applied to `miner` here.
pub fn v3_reply(miner: &Miner, now: Instant, unix: i64, request: &[u8]) -> (Value, After) {
    let Ok(req) = serde_json::from_slice::<Value>(request) else {
        return (
            v3_err(code::INVALID_JSON, "", "invalid json", unix),
            After::Nothing,
        );
    };
    let Some(cmd) = req.get("cmd").and_then(Value::as_str) else {
        return (
            v3_err(code::INVALID_JSON, "", "missing cmd", unix),
            After::Nothing,
        );
    };
    let param = req.get("param");
    if cmd.starts_with("set.") {
        if let Err(why) = check_token(miner, cmd, &req, unix) {
            return (
                v3_err(code::PERMISSION_DENIED, cmd, why, unix),
                After::Nothing,
            );
        }
        return v3_write(miner, cmd, param, &req, unix);
    }
    let r = miner.readings(now);
    let reply = match cmd {
        "get.device.info" => {
            let info = device_info(miner, &r, unix);
            match param.and_then(Value::as_str) {
                None | Some("") => v3_ok(cmd, info, unix),
                Some(section) => match info.get(section) {
                    Some(v) => v3_ok(cmd, json!({ section: v }), unix),
                    None => v3_err(code::INVALID_PARAM, cmd, "invalid param", unix),
                },
            }
        }
        "get.miner.status" => match param.and_then(Value::as_str) {
            Some("summary") => v3_ok(cmd, miner_summary(miner, &r), unix),
            Some("edevs") => v3_ok(cmd, miner_edevs(&r), unix),
            Some("pools") => v3_ok(cmd, miner_pools(&r), unix),
            _ => v3_err(code::INVALID_PARAM, cmd, "invalid param", unix),
        },
        _ => v3_err(code::INVALID_COMMAND, cmd, "invalid command", unix),
    };
    (reply, After::Nothing)
}

fn check_token(miner: &Miner, cmd: &str, req: &Value, unix: i64) -> Result<(), &'static str> {
    if req.get("account").and_then(Value::as_str) != Some(ACCOUNT) {
        return Err("permission denied: unknown account");
    }
    let ts = req
        .get("ts")
        .and_then(Value::as_i64)
        .ok_or("permission denied: missing ts")?;
    if (ts - unix).abs() > TOKEN_WINDOW_S {
        return Err("permission denied: ts out of window");
    }
    let sent = req
        .get("token")
        .and_then(Value::as_str)
        .ok_or("permission denied: missing token")?;
    if sent != token(cmd, PASSWORD, &salt(miner), ts) {
        return Err("permission denied: bad token");
    }
    Ok(())
}

fn v3_write(
    miner: &Miner,
    cmd: &str,
    param: Option<&Value>,
    req: &Value,
    unix: i64,
) -> (Value, After) {
    let ok = |after| (v3_ok(cmd, json!("ok"), unix), after);
    let bad = |text: &str| (v3_err(code::INVALID_PARAM, cmd, text, unix), After::Nothing);
    match cmd {
        "set.system.reboot" => ok(After::Reboot),
        "set.miner.service" => match param.and_then(Value::as_str) {
            Some("stop") => {
                miner.set_mode(PowerMode::Sleep);
                ok(After::Nothing)
            }
            Some("start") | Some("restart") => {
                if miner.mode() == PowerMode::Sleep {
                    miner.set_mode(PowerMode::Normal);
                }
                ok(After::Nothing)
            }
            _ => bad("invalid param: use start, stop or restart"),
        },
        "set.miner.mode" => {
            let mode = match param.and_then(Value::as_str) {
                Some("low") => PowerMode::Low,
                Some("normal") => PowerMode::Normal,
                Some("high") => PowerMode::High,
                _ => return bad("invalid param: use low, normal or high"),
            };
            miner.set_mode(mode);
            ok(After::Nothing)
        }
        "set.miner.power_limit" => {
            let watts = param.and_then(|p| {
                p.as_f64()
                    .or_else(|| p.as_str().and_then(|s| s.trim().parse::<f64>().ok()))
            });
            match watts {
                Some(w)
                    if w.is_finite()
                        && (MIN_POWER_LIMIT_W..=max_power_limit(miner)).contains(&w) =>
                {
                    miner.set_power_limit(Some(w));
                    ok(After::Nothing)
                }
                _ => bad("invalid param: power limit out of range"),
            }
        }
        "set.system.led" => match param {
            Some(Value::String(s)) if s == "auto" => {
                miner.set_led(false);
                ok(After::Nothing)
            }
            Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_object) => {
                miner.set_led(true);
                ok(After::Nothing)
            }
            Some(Value::Object(_)) => {
                miner.set_led(true);
                ok(After::Nothing)
            }
            _ => bad("invalid param: use \"auto\" or a list of led steps"),
        },
        "set.miner.pools" => {
            let Some(cipher) = param.and_then(Value::as_str) else {
                return bad("invalid param: pools must be encrypted");
            };
            // check_token already vouched for ts.
            let ts = req.get("ts").and_then(Value::as_i64).unwrap_or_default();
            let key = command_hash(cmd, PASSWORD, &salt(miner), ts);
            match decrypt_pools(&key, cipher) {
                Ok(pools) => {
                    miner.set_pools(pools);
                    ok(After::Nothing)
                }
                Err(why) => bad(why),
            }
        }
        _ => (
            v3_err(code::INVALID_COMMAND, cmd, "invalid command", unix),
            After::Nothing,
        ),
    }
}

/// Decrypts and parses a `set.miner.pools` parameter: base64 of
/// AES-256-ECB (zero padded) over `[{"pool","worker","passwd"}, ...]`.
fn decrypt_pools(key: &[u8; 32], cipher_b64: &str) -> Result<Vec<Pool>, &'static str> {
    let mut data = base64::engine::general_purpose::STANDARD
        .decode(cipher_b64.trim())
        .map_err(|_| "invalid param: not base64")?;
    if data.is_empty() || data.len() % 16 != 0 {
        return Err("invalid param: not whole AES blocks");
    }
    let aes = aes::Aes256::new(key.into());
    for block in data.chunks_exact_mut(16) {
        let block: &mut [u8; 16] = block.try_into().map_err(|_| "invalid param")?;
        aes.decrypt_block(block.into());
    }
    while data.last() == Some(&0) {
        data.pop();
    }
    let list: Vec<Value> =
        serde_json::from_slice(&data).map_err(|_| "invalid param: pools do not decrypt")?;
    if list.is_empty() || list.len() > MAX_POOLS {
        return Err("invalid param: give 1 to 3 pools");
    }
    list.iter()
        .map(|p| {
            let field = |name: &str| -> Result<String, &'static str> {
                let v = p.get(name).and_then(Value::as_str).unwrap_or("");
                if v.len() > MAX_POOL_FIELD {
                    Err("invalid param: pool field too long")
                } else {
                    Ok(v.to_string())
                }
            };
            let url = field("pool")?;
            if url.is_empty() {
                return Err("invalid param: pool url is empty");
            }
            Ok(Pool {
                url,
                user: field("worker")?,
                password: field("passwd")?,
            })
        })
        .collect()
}

// ---------------------------------------------------------------- API v2

fn v2_msg(code: u32, msg: Value, unix: i64) -> Value {
    json!({ "Code": code, "Description": "", "Msg": msg, "STATUS": "S", "When": unix })
}

fn v2_error(code: u32, text: &str, unix: i64) -> Value {
    json!({ "Code": code, "Description": "", "Msg": text, "STATUS": "E", "When": unix })
}

fn v2_section(code: u32, msg: &str, name: &str, items: Vec<Value>, unix: i64) -> Value {
    json!({
        "STATUS": [{
            "Code": code,
            "Description": "btminer",
            "Msg": msg,
            "STATUS": "S",
            "When": unix,
        }],
        name: items,
        "id": 1,
    })
}

/// The command named by a v2 request: JSON `cmd`/`command`, or plain text.
fn v2_command(request: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(request).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    if text.starts_with('{') {
        let v: Value = serde_json::from_str(text).ok()?;
        if v.get("enc").is_some() {
            return Some("enc".into());
        }
        v.get("cmd")
            .or_else(|| v.get("command"))
            .and_then(Value::as_str)
            .map(str::to_string)
    } else {
        let cmd = text.split('|').next()?.trim();
        (!cmd.is_empty()).then(|| cmd.to_string())
    }
}

/// Answers one request on the v2 API (TCP 4028).
pub fn v2_reply(miner: &Miner, now: Instant, unix: i64, request: &[u8]) -> Value {
    let Some(cmd) = v2_command(request) else {
        return v2_error(23, "invalid JSON", unix);
    };
    let r = miner.readings(now);
    let present = present_boards(&r).max(1) as f64;
    match cmd.as_str() {
        "get_version" => v2_msg(
            131,
            json!({ "api_ver": "2.0.5", "fw_ver": FW_VERSION, "platform": "H616" }),
            unix,
        ),
        "devdetails" => {
            let items = r
                .boards
                .iter()
                .enumerate()
                .filter(|(_, b)| b.present)
                .map(|(i, _)| {
                    json!({
                        "DEVDETAILS": i, "Name": "SM", "ID": i, "Driver": "bitmicro",
                        "Kernel": "", "Model": MINER_TYPE.replace('_', ""),
                    })
                })
                .collect();
            v2_section(69, "Device Details", "DEVDETAILS", items, unix)
        }
        "summary" => {
            let item = json!({
                "Accepted": r.accepted,
                "Chip Temp Avg": r.boards.iter().filter(|b| b.present).map(|b| chip_temps(b).1).sum::<f64>() / present,
                "Elapsed": r.uptime_s,
                "Env Temp": r.ambient_c,
                "Factory GHS": (r.expected_ths * 1000.0).round(),
                "Fan Speed In": r.fans_rpm.first().copied().unwrap_or(0),
                "Fan Speed Out": r.fans_rpm.get(1).copied().unwrap_or(0),
                "HS RT": round(r.ths_5s * 1e6, 2),
                "MAC": miner.mac_string(),
                "MHS 5s": round(r.ths_5s * 1e6, 2),
                "MHS av": round(r.ths_avg * 1e6, 2),
                "Power": r.power_w.round(),
                "Power Limit": r.power_limit_w.unwrap_or_else(|| max_power_limit(miner)).round(),
                "Power Mode": match r.mode {
                    PowerMode::Low => "Low",
                    PowerMode::High => "High",
                    PowerMode::Normal | PowerMode::Sleep => "Normal",
                },
                "Rejected": r.rejected,
                "Uptime": r.uptime_s + 95,
            });
            v2_section(11, "Summary", "SUMMARY", vec![item], unix)
        }
        "edevs" | "devs" => {
            let items = r
                .boards
                .iter()
                .enumerate()
                .filter(|(_, b)| b.present)
                .map(|(i, b)| {
                    let (min, avg, max) = chip_temps(b);
                    json!({
                        "ASC": i, "Slot": i, "ID": i, "Name": "SM", "Enabled": "Y",
                        "Status": "Alive", "Temperature": round(b.board_temp_c, 1),
                        "Chip Temp Min": min, "Chip Temp Avg": avg, "Chip Temp Max": max,
                        "Chip Frequency": b.freq_mhz.round(), "Frequency": b.freq_mhz.round(),
                        "Effective Chips": b.chips,
                        "MHS av": round(r.ths_avg / present * 1e6, 2),
                        "MHS 5s": round(b.ths * 1e6, 2),
                        "Factory GHS": (r.expected_ths * 1000.0 / r.boards.len().max(1) as f64).round(),
                        "Device Elapsed": r.uptime_s,
                    })
                })
                .collect();
            v2_section(9, "ASC(s)", "DEVS", items, unix)
        }
        "pools" => {
            let items = r
                .pools
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    json!({
                        "POOL": i + 1, "URL": p.url, "User": p.user, "Priority": i,
                        "Status": if r.pools_alive { "Alive" } else { "Dead" },
                        "Stratum Active": r.pools_alive && i == 0,
                        "Accepted": if i == 0 { r.accepted } else { 0 },
                        "Rejected": if i == 0 { r.rejected } else { 0 },
                    })
                })
                .collect();
            v2_section(7, "Pool(s)", "POOLS", items, unix)
        }
        "get_miner_info" => v2_msg(
            131,
            json!({
                "hostname": miner.hostname,
                "ip": miner.addr.to_string(),
                "ledstat": if r.led { "manual" } else { "auto" },
                "mac": miner.mac_string(),
                "proto": "dhcp",
            }),
            unix,
        ),
        "get_psu" => v2_msg(
            131,
            json!({
                "fan_speed": psu_fan_rpm(miner, &r).to_string(),
                "hw_version": "RT0203",
                "model": "P621B",
                "name": "P621B",
                "sw_version": "240318.221101",
            }),
            unix,
        ),
        "get_error_code" => {
            let since = unix - r.uptime_s as i64;
            let list: Vec<Value> = error_codes(&r)
                .into_iter()
                .map(|(code, _)| json!({ code.to_string(): utc_string(since) }))
                .collect();
            v2_msg(131, json!({ "error_code": list }), unix)
        }
        "status" => v2_msg(
            131,
            json!({
                "FirmwareVersion": FW_VERSION,
                "hash_percent": "0",
                "mineroff": if r.mode == PowerMode::Sleep { "true" } else { "false" },
                "power_limit_set": r.power_limit_w.unwrap_or_else(|| max_power_limit(miner)).round().to_string(),
                "power_mode": match r.mode {
                    PowerMode::Low => "low",
                    PowerMode::High => "high",
                    PowerMode::Normal | PowerMode::Sleep => "normal",
                },
            }),
            unix,
        ),
        "enc" | "get_token" | "open_write_api" => v2_error(
            45,
            "API v2 writes are off on this firmware: use API v3 on port 4433",
            unix,
        ),
        _ => v2_error(14, "invalid cmd", unix),
    }
}

// ---------------------------------------------------------------- sockets

/// TCP 4028: one v2 request, one reply, close.
pub async fn rpc(mut stream: TcpStream, miner: Arc<Miner>) {
    let Some(request) = io::read_request(&mut stream).await else {
        return;
    };
    let reply = v2_reply(&miner, Instant::now(), unix_now(), &request);
    io::reply_and_close(stream, reply.to_string().as_bytes()).await;
}

/// TCP 80: the stock web UI only redirects to HTTPS.
pub async fn web(stream: TcpStream, miner: Arc<Miner>) {
    let location = format!("https://{}/", miner.addr);
    let router = axum::Router::new().fallback(move || {
        let location = location.clone();
        async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, location)],
            )
        }
    });
    io::serve_http(stream, router).await;
}

/// TCP 4433: API v3, length-framed requests until the client closes.
pub async fn rpc_v3(mut stream: TcpStream, miner: Arc<Miner>) {
    for _ in 0..MAX_V3_REQUESTS {
        let Some(request) = io::read_le_frame(&mut stream).await else {
            break;
        };
        let (reply, after) = v3_reply(&miner, Instant::now(), unix_now(), &request);
        let body = reply.to_string().into_bytes();
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&body);
        // Down from now on, so a client that has its reply finds the miner
        // gone; this connection is already in and still gets its answer.
        if after == After::Reboot {
            miner.reboot();
        }
        let sent = tokio::time::timeout(Duration::from_secs(10), stream.write_all(&frame)).await;
        if after == After::Reboot {
            let _ = stream.shutdown().await;
            return;
        }
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use crate::model::{Fault, Model};

    fn miner() -> Miner {
        Miner::new(
            3,
            Ipv4Addr::new(127, 9, 1, 3),
            Model::WhatsminerM56S,
            Duration::from_millis(100),
        )
    }

    fn signed(m: &Miner, cmd: &str, param: Value, unix: i64) -> Vec<u8> {
        json!({
            "cmd": cmd, "param": param, "account": ACCOUNT, "ts": unix,
            "token": token(cmd, PASSWORD, &salt(m), unix),
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn utc_strings_match_known_dates() {
        assert_eq!(utc_string(0), "1970-01-01 00:00:00");
        assert_eq!(utc_string(1_779_527_950), "2026-05-23 09:19:10");
        assert_eq!(utc_string(951_782_400), "2000-02-29 00:00:00");
    }

    #[test]
    fn a_signed_write_applies_and_a_bad_token_is_refused() {
        let m = miner();
        let unix = unix_now();
        let (reply, _) = v3_reply(
            &m,
            Instant::now(),
            unix,
            &signed(&m, "set.miner.service", json!("stop"), unix),
        );
        assert_eq!(reply["code"], 0, "{reply}");
        assert_eq!(m.mode(), PowerMode::Sleep);

        let mut forged: Value =
            serde_json::from_slice(&signed(&m, "set.miner.service", json!("start"), unix)).unwrap();
        forged["token"] = json!("AAAAAAAA");
        let (reply, _) = v3_reply(&m, Instant::now(), unix, forged.to_string().as_bytes());
        assert_eq!(reply["code"], code::PERMISSION_DENIED);
        assert_eq!(m.mode(), PowerMode::Sleep);

        // A token for another command does not carry over.
        let mut moved: Value =
            serde_json::from_slice(&signed(&m, "set.miner.mode", json!("start"), unix)).unwrap();
        moved["cmd"] = json!("set.miner.service");
        let (reply, _) = v3_reply(&m, Instant::now(), unix, moved.to_string().as_bytes());
        assert_eq!(reply["code"], code::PERMISSION_DENIED);

        // A stale ts is refused even with the right token.
        let old = unix - 3600;
        let (reply, _) = v3_reply(
            &m,
            Instant::now(),
            unix,
            &signed(&m, "set.miner.service", json!("start"), old),
        );
        assert_eq!(reply["code"], code::PERMISSION_DENIED);
    }

    #[test]
    fn garbage_never_panics() {
        let m = miner();
        let unix = unix_now();
        for req in [
            &b""[..],
            b"\xff\xfe",
            b"null",
            b"[]",
            b"{\"cmd\":5}",
            b"{\"cmd\":\"set.miner.pools\",\"param\":\"!!\",\"ts\":1e99}",
            b"{\"cmd\":\"get.miner.status\",\"param\":{}}",
        ] {
            let (reply, after) = v3_reply(&m, Instant::now(), unix, req);
            assert_ne!(reply["code"], 0, "{reply}");
            assert_eq!(after, After::Nothing);
            let v2 = v2_reply(&m, Instant::now(), unix, req);
            assert_eq!(v2["STATUS"], "E", "{v2}");
        }
        let key = [7u8; 32];
        assert!(decrypt_pools(&key, "AAAA").is_err());
        assert!(decrypt_pools(&key, &"A".repeat(64)).is_err());
    }

    #[test]
    fn lost_board_is_unlisted_and_named_in_error_codes() {
        let m = miner();
        m.set_fault(Fault::HashboardLoss, true);
        let unix = unix_now();
        let (reply, _) = v3_reply(
            &m,
            Instant::now(),
            unix,
            br#"{"cmd":"get.miner.status","param":"edevs"}"#,
        );
        let edevs = reply["msg"]["edevs"].as_array().unwrap();
        assert_eq!(edevs.len(), m.model.boards() - 1);
        assert_eq!(edevs[0]["id"], 1);
        let (info, _) = v3_reply(&m, Instant::now(), unix, br#"{"cmd":"get.device.info"}"#);
        assert_eq!(
            info["msg"]["miner"]["board-num"],
            (m.model.boards() - 1).to_string()
        );
        assert!(info["msg"]["error-code"][0].get("530").is_some(), "{info}");
    }
}
