//! AvalonMiner A1466 with stock firmware, as asic-rs 0.8.6 drives it.
//!
//! The firmware is Canaan's cgminer 4.11.1: a CGMiner RPC on TCP 4028 that
//! takes JSON (`{"command":…,"parameter":…}`, reads joinable with `+`) or
//! plain text (`cmd|param`), answers once, ends with a NUL and closes. The
//! device's state is packed into the `MM ID0` string of `stats`/`estats`
//! (`Ver[…] … MGHS[…] MTmax[…] PVT_T0[…] …`), one array entry per detected
//! hashboard. Writes go through `ascset|0,<option>,<args>` with no
//! authentication; the replies follow what a live A1466 gives asic-rs
//! (`softoff` answers `ASC 0 set OK`, `softon` closes without a word).
//! The web port serves the login page, which names the device.
//!
//! Replies are built by pure functions from [`Miner::readings`]; the
//! socket functions at the bottom only move bytes and run timers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::model::{BoardReading, Miner, Pool, PowerMode, Readings};

use super::io;

/// Firmware build, as `VERSION` and inside `Ver[…]`.
pub const FW_VERSION: &str = "24052901_b6a7b0b";
/// The model as the version reply names it (asic-rs: `Avalon1466`).
pub const MODEL: &str = "1466";
const DESCRIPTION: &str = "cgminer 4.11.1";
/// Most pools the firmware keeps.
const MAX_POOLS: usize = 3;
/// Longest accepted pool URL, user or password.
const MAX_POOL_FIELD: usize = 512;
/// Commands joined with `+` in one request, at most.
const MAX_JOINED: usize = 8;
/// How far ahead a softoff/softon may be scheduled.
const MAX_SCHEDULE_S: i64 = 7 * 86_400;
/// Scheduled softoff/softon timers pending across all miners, at most.
const MAX_PENDING_TIMERS: usize = 1024;
static PENDING_TIMERS: AtomicUsize = AtomicUsize::new(0);

/// What a request does besides its reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum After {
    Nothing,
    /// Reboot: unreachable once this reply is out.
    Reboot,
    /// Switch to `mode` at Unix time `at` (now or later).
    ModeAt {
        at: i64,
        mode: PowerMode,
    },
}

/// The answer to one request: the bytes to send (`None`: close silently).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub reply: Option<Vec<u8>>,
    pub after: After,
    /// The request was JSON (else plain text), so replies are too.
    pub json: bool,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
struct Request {
    json: bool,
    command: String,
    parameter: Option<String>,
}

fn parse_request(bytes: &[u8]) -> Result<Request, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "Invalid JSON")?;
    let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    if text.starts_with('{') {
        let v: Value = serde_json::from_str(text).map_err(|_| "Invalid JSON")?;
        let command = v
            .get("command")
            .and_then(Value::as_str)
            .ok_or("Missing JSON 'command'")?
            .trim()
            .to_string();
        let parameter = match v.get("parameter") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            Some(_) => return Err("Invalid JSON 'parameter'"),
        };
        Ok(Request {
            json: true,
            command,
            parameter,
        })
    } else {
        let (command, parameter) = match text.split_once('|') {
            Some((c, p)) => (c, Some(p.to_string())),
            None => (text, None),
        };
        Ok(Request {
            json: false,
            command: command.trim().to_string(),
            parameter,
        })
    }
}

fn status(kind: &str, code: u32, msg: &str, unix: i64) -> Value {
    json!([{
        "Code": code,
        "Description": DESCRIPTION,
        "Msg": msg,
        "STATUS": kind,
        "When": unix,
    }])
}

fn section(code: u32, msg: &str, name: &str, items: Vec<Value>, unix: i64) -> Value {
    json!({ "STATUS": status("S", code, msg, unix), name: items, "id": 1 })
}

fn reply(kind: &str, code: u32, msg: &str, unix: i64) -> Value {
    json!({ "STATUS": status(kind, code, msg, unix), "id": 1 })
}

fn error(code: u32, msg: &str, unix: i64) -> Value {
    reply("E", code, msg, unix)
}

// ---------------------------------------------------------------- readings

/// Fixed per-chip spread so chip arrays look measured, not flat.
fn spread(board: usize, chip: usize, salt: u8, span: i64) -> i64 {
    let h = (chip as i64 * 37 + board as i64 * 101 + i64::from(salt) * 13) % (2 * span + 1);
    h - span
}

/// The chip temperatures of one board, 0 where a chip reads nothing.
fn chip_temps(miner: &Miner, i: usize, b: &BoardReading) -> Vec<i64> {
    let salt = miner.addr.octets()[3];
    (0..b.chips as usize)
        .map(|c| {
            if b.chip_temp_c <= 0.0 {
                0
            } else {
                (b.chip_temp_c.round() as i64 + spread(i, c, salt, 5)).max(1)
            }
        })
        .collect()
}

fn join<T: ToString>(values: impl IntoIterator<Item = T>) -> String {
    values
        .into_iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn power_limit(miner: &Miner, r: &Readings) -> f64 {
    r.power_limit_w.unwrap_or(miner.model.nominal_w()).round()
}

/// The `MM ID0` string: every field the firmware packs, from the readings.
/// Per-board arrays list detected boards only.
pub fn mm_id0(miner: &Miner, r: &Readings) -> String {
    let salt = miner.addr.octets()[3];
    let boards: Vec<(usize, &BoardReading)> = r
        .boards
        .iter()
        .enumerate()
        .filter(|(_, b)| b.present)
        .collect();
    let temps: Vec<Vec<i64>> = boards
        .iter()
        .map(|(i, b)| chip_temps(miner, *i, b))
        .collect();
    let mt_max: Vec<i64> = temps
        .iter()
        .map(|t| t.iter().copied().max().unwrap_or(0))
        .collect();
    let mt_avg: Vec<i64> = temps
        .iter()
        .map(|t| {
            if t.is_empty() {
                0
            } else {
                (t.iter().sum::<i64>() as f64 / t.len() as f64).round() as i64
            }
        })
        .collect();
    let t_max = mt_max.iter().copied().max().unwrap_or(0);
    let t_avg = if mt_avg.is_empty() {
        0
    } else {
        (mt_avg.iter().sum::<i64>() as f64 / mt_avg.len() as f64).round() as i64
    };
    let present_share = boards.len() as f64 / r.boards.len().max(1) as f64;
    let freq = boards.iter().map(|(_, b)| b.freq_mhz).fold(0.0, f64::max);
    let vout = if r.mining { 1316 } else { 1200 };
    let iout = (r.power_w / (f64::from(vout) / 100.0)).round() as i64;
    let fans: Vec<u32> = r.fans_rpm.clone();
    let fan_pct = fans
        .iter()
        .map(|f| (f64::from(*f) / 70.0).round() as i64)
        .max()
        .unwrap_or(0)
        .clamp(0, 100);
    let total_chips: u32 = boards.iter().map(|(_, b)| b.chips).sum();
    let hw_errors = r.accepted / 40;

    let mut f = vec![
        format!("Ver[{MODEL}-{:.0}-{FW_VERSION}]", miner.model.nominal_ths()),
        format!("DNA[{}]", miner.serial),
        "MEMFREE[1318636.0]".to_string(),
        "NETFAIL[0 0 0 0 0 0 0 0]".to_string(),
        format!(
            "SYSTEMSTATU[Work: {}, Hash Board: {} ]",
            if r.mining { "In Work" } else { "In Idle" },
            boards.len()
        ),
        format!("Elapsed[{}]", r.uptime_s),
        "BOOTBY[0x04.00000000]".to_string(),
        format!("LW[{}]", r.uptime_s * 1000),
        format!("MH[{}]", join(boards.iter().map(|_| 0))),
        format!("HW[{hw_errors}]"),
        format!("DH[{}%]", if r.mining { "1.204" } else { "0.000" }),
        format!("Temp[{}]", r.ambient_c.round()),
        format!("TMax[{t_max}]"),
        format!("TAvg[{t_avg}]"),
    ];
    for (i, rpm) in fans.iter().enumerate() {
        f.push(format!("Fan{}[{rpm}]", i + 1));
    }
    f.extend([
        format!("FanR[{fan_pct}%]"),
        format!("Vo[{}]", if r.mining { 329 } else { 0 }),
        format!(
            "PS[0 1215 {vout} {iout} {} {} {}]",
            r.power_w.round(),
            vout + 4,
            power_limit(miner, r)
        ),
    ]);
    for (i, b) in &boards {
        let base = b.freq_mhz.round() as i64;
        f.push(format!(
            "PLL{i}[{}]",
            if base > 0 {
                "1796 4524 5435 2165"
            } else {
                "0 0 0 0"
            }
        ));
    }
    f.extend([
        format!("GHSspd[{:.2}]", r.ths_5s * 1000.0),
        format!("DHspd[{}%]", if r.mining { "1.204" } else { "0.000" }),
        format!("GHSmm[{:.2}]", r.expected_ths * 1000.0 * present_share),
        format!("GHSavg[{:.2}]", r.ths_avg * 1000.0),
        format!("WU[{:.2}]", r.ths_avg * 1000.0 * 13.97),
        format!("Freq[{freq:.2}]"),
        format!("Led[{}]", u8::from(r.led)),
        format!(
            "MGHS[{}]",
            join(boards.iter().map(|(_, b)| format!("{:.2}", b.ths * 1000.0)))
        ),
        format!("MTmax[{}]", join(mt_max.iter())),
        format!("MTavg[{}]", join(mt_avg.iter())),
        format!("TA[{total_chips}]"),
        "Core[A3205]".to_string(),
        format!("PING[{}]", 40 + u32::from(salt % 50)),
        "POWS[0]".to_string(),
        format!("HASHS[{}]", join(boards.iter().map(|_| 0))),
        format!("POOLS[{}]", u8::from(!r.pools_alive)),
        format!("SoftOFF[{}]", u8::from(r.mode == PowerMode::Sleep)),
        format!("ECHU[{}]", join(boards.iter().map(|_| 0))),
        "ECMM[0]".to_string(),
    ]);
    let sf = |b: &BoardReading| {
        let base = b.freq_mhz.round() as i64;
        if base > 0 {
            join([base - 30, base - 10, base + 10, base + 30])
        } else {
            join([0, 0, 0, 0])
        }
    };
    for (i, b) in &boards {
        f.push(format!("SF{i}[{}]", sf(b)));
    }
    for ((i, _), t) in boards.iter().zip(&temps) {
        f.push(format!(
            "PVT_T{i}[{}]",
            join(t.iter().map(|v| format!("{v:>3}")))
        ));
    }
    for (i, b) in &boards {
        let volts = (0..b.chips as usize).map(|c| {
            if r.mining {
                300 + spread(*i, c, salt, 8)
            } else {
                0
            }
        });
        f.push(format!("PVT_V{i}[{}]", join(volts)));
    }
    let works: Vec<Vec<i64>> = boards
        .iter()
        .map(|(i, b)| {
            (0..b.chips as usize)
                .map(|c| {
                    if r.mining {
                        620 + spread(*i, c, salt.wrapping_add(7), 60)
                    } else {
                        0
                    }
                })
                .collect()
        })
        .collect();
    f.push(format!(
        "MW[{}]",
        join(works.iter().map(|w| w.iter().sum::<i64>() * 13_000))
    ));
    for ((i, _), w) in boards.iter().zip(&works) {
        f.push(format!("MW{i}[{}]", join(w.iter())));
    }
    f.extend([
        format!("CRC[{}]", join(boards.iter().map(|_| 0))),
        "POW_I2C[OK]".to_string(),
        "FACOPTS0[]".to_string(),
        "FACOPTS1[]".to_string(),
        "ADJ[1]".to_string(),
        format!("COP[{}]", join(boards.iter().map(|_| 0))),
        format!("MPO[{}]", power_limit(miner, r)),
        "MVL[87]".to_string(),
    ]);
    for (i, b) in &boards {
        f.push(format!("ATABD{i}[{}]", sf(b)));
    }
    f.push("WORKMODE[1]".to_string());
    f.join(" ")
}

fn version(miner: &Miner, unix: i64) -> Value {
    let compact_mac: String = miner.mac.iter().map(|b| format!("{b:02x}")).collect();
    section(
        22,
        "CGMiner versions",
        "VERSION",
        vec![json!({
            "API": "3.7",
            "CGMiner": "4.11.1",
            "DNA": miner.serial,
            "HWTYPE": "MM4v2_X3",
            "LOADER": "d0d779de.00",
            "LVERSION": FW_VERSION,
            "BVERSION": FW_VERSION,
            "CGVERSION": FW_VERSION,
            "MAC": compact_mac,
            "MODEL": MODEL,
            "PROD": format!("AvalonMiner {MODEL}"),
            "STM8": "20.08.01",
            "SWTYPE": "MM314",
            "UPAPI": "2",
            "VERSION": FW_VERSION,
        })],
        unix,
    )
}

fn summary(r: &Readings, unix: i64) -> Value {
    let mhs = |ths: f64| (ths * 1e8).round() / 100.0;
    section(
        11,
        "Summary",
        "SUMMARY",
        vec![json!({
            "Accepted": r.accepted,
            "Best Share": 35_491_457 + r.accepted,
            "Device Hardware%": if r.mining { 0.0012 } else { 0.0 },
            "Device Rejected%": if r.accepted > 0 { r.rejected as f64 * 100.0 / r.accepted as f64 } else { 0.0 },
            "Difficulty Accepted": r.accepted as f64 * 524_288.0,
            "Difficulty Rejected": r.rejected as f64 * 524_288.0,
            "Difficulty Stale": 0.0,
            "Discarded": r.accepted * 2,
            "Elapsed": r.uptime_s,
            "Found Blocks": 0,
            "Get Failures": u64::from(!r.pools_alive),
            "Getworks": r.uptime_s / 30,
            "Hardware Errors": r.accepted / 40,
            "Last getwork": unix,
            "Local Work": r.uptime_s * 5,
            "MHS 15m": mhs(r.ths_avg),
            "MHS 1m": mhs(r.ths_avg),
            "MHS 5m": mhs(r.ths_avg),
            "MHS 5s": mhs(r.ths_5s),
            "MHS av": mhs(r.ths_avg),
            "Network Blocks": r.uptime_s / 600,
            "Pool Rejected%": if r.accepted > 0 { r.rejected as f64 * 100.0 / r.accepted as f64 } else { 0.0 },
            "Pool Stale%": 0.0,
            "Rejected": r.rejected,
            "Remote Failures": 0,
            "Stale": 0,
            "Total MH": (r.ths_avg * 1e6 * r.uptime_s as f64).round(),
            "Utility": if r.uptime_s > 0 { (r.accepted as f64 * 6000.0 / r.uptime_s as f64).round() / 100.0 } else { 0.0 },
            "Work Utility": (r.ths_avg * 1000.0 * 13.97 * 100.0).round() / 100.0,
        })],
        unix,
    )
}

fn devs(r: &Readings, unix: i64) -> Value {
    let mhs = |ths: f64| (ths * 1e8).round() / 100.0;
    let temps: Vec<f64> = r
        .boards
        .iter()
        .filter(|b| b.present)
        .map(|b| b.chip_temp_c)
        .collect();
    let temp = if temps.is_empty() {
        0.0
    } else {
        temps.iter().sum::<f64>() / temps.len() as f64
    };
    section(
        9,
        "1 ASC(s)",
        "DEVS",
        vec![json!({
            "ASC": 0,
            "Accepted": r.accepted,
            "Device Elapsed": r.uptime_s,
            "Device Hardware%": if r.mining { 0.0012 } else { 0.0 },
            "Device Rejected%": if r.accepted > 0 { r.rejected as f64 * 100.0 / r.accepted as f64 } else { 0.0 },
            "Diff1 Work": r.accepted * 440_000,
            "Difficulty Accepted": r.accepted as f64 * 524_288.0,
            "Difficulty Rejected": r.rejected as f64 * 524_288.0,
            "Enabled": "Y",
            "Hardware Errors": r.accepted / 40,
            "ID": 0,
            "Last Share Difficulty": 524_288.0,
            "Last Share Pool": 0,
            "Last Share Time": if r.mining && r.accepted > 0 { unix - 4 } else { 0 },
            "Last Valid Work": unix,
            "MHS 15m": mhs(r.ths_avg),
            "MHS 1m": mhs(r.ths_avg),
            "MHS 5m": mhs(r.ths_avg),
            "MHS 5s": mhs(r.ths_5s),
            "MHS av": mhs(r.ths_avg),
            "Name": "AVALON",
            "Rejected": r.rejected,
            "Status": "Alive",
            "Temperature": (temp * 10.0).round() / 10.0,
            "Total MH": (r.ths_avg * 1e6 * r.uptime_s as f64).round(),
            "Utility": if r.uptime_s > 0 { (r.accepted as f64 * 6000.0 / r.uptime_s as f64).round() / 100.0 } else { 0.0 },
        })],
        unix,
    )
}

fn pools(r: &Readings, unix: i64) -> Value {
    let items: Vec<Value> = r
        .pools
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let active = r.pools_alive && i == 0;
            let accepted = if active { r.accepted } else { 0 };
            json!({
                "Accepted": accepted,
                "Bad Work": 0,
                "Best Share": if active { 35_491_457 } else { 0 },
                "Current Block Height": 907_089 + unix / 600 - 2_923_000,
                "Current Block Version": 536_870_912,
                "Diff1 Shares": accepted * 440_000,
                "Difficulty Accepted": accepted as f64 * 524_288.0,
                "Difficulty Rejected": if active { r.rejected as f64 * 524_288.0 } else { 0.0 },
                "Difficulty Stale": 0.0,
                "Discarded": accepted * 2,
                "Get Failures": u64::from(!r.pools_alive),
                "Getworks": if active { r.uptime_s / 30 } else { 0 },
                "Has GBT": false,
                "Has Stratum": true,
                "Has Vmask": true,
                "Last Share Difficulty": if active { 524_288.0 } else { 0.0 },
                "Last Share Time": if active && r.mining && accepted > 0 { unix - 4 } else { 0 },
                "Long Poll": "N",
                "POOL": i,
                "Password": p.password,
                "Pool Rejected%": 0.0,
                "Pool Stale%": 0.0,
                "Priority": i,
                "Proxy": "",
                "Proxy Type": "",
                "Quota": 1,
                "Rejected": if active { r.rejected } else { 0 },
                "Remote Failures": 0,
                "Stale": 0,
                "Status": if r.pools_alive { "Alive" } else { "Dead" },
                "Stratum Active": active,
                "Stratum Difficulty": if active { 524_288.0 } else { 0.0 },
                "Stratum URL": if active { p.url.as_str() } else { "" },
                "URL": p.url,
                "User": p.user,
                "Work Difficulty": if active { 524_288.0 } else { 0.0 },
                "Works": if active { r.uptime_s * 3 } else { 0 },
            })
        })
        .collect();
    let n = items.len();
    section(7, &format!("{n} Pool(s)"), "POOLS", items, unix)
}

fn device_stats(miner: &Miner, r: &Readings) -> Value {
    json!({
        "Calls": 0,
        "Elapsed": r.uptime_s,
        "ID": "AVA100",
        "MM Count": 1,
        "MM ID0": mm_id0(miner, r),
        "Max": 0.0,
        "Min": 99_999_999.0,
        "Nonce Mask": 25,
        "STATS": 0,
        "Smart Speed": 1,
        "Voltage Level Offset": 0,
        "Wait": 0.0,
    })
}

fn stats(miner: &Miner, r: &Readings, unix: i64, with_pools: bool) -> Value {
    let mut items = vec![device_stats(miner, r)];
    if with_pools {
        for (i, _) in r.pools.iter().enumerate() {
            let active = r.pools_alive && i == 0;
            items.push(json!({
                "Bytes Recv": if active { r.uptime_s * 175 } else { 2055 },
                "Bytes Sent": if active { r.uptime_s * 10 } else { 255 },
                "Calls": 0,
                "Elapsed": r.uptime_s,
                "ID": format!("POOL{i}"),
                "Max": 0.0,
                "Min": 99_999_999.0,
                "Pool Attempts": 0,
                "Pool Av": 0.0,
                "Pool Calls": 0,
                "Pool Max": 0.0,
                "Pool Min": 99_999_999.0,
                "Pool Wait": 0.0,
                "STATS": i + 1,
                "Wait": 0.0,
                "Work Can Roll": false,
                "Work Diff": if active { 524_288.0 } else { 0.0 },
                "Work Had Expire": false,
                "Work Had Roll Time": false,
                "Work Roll Time": 0,
            }));
        }
    }
    section(70, "CGMiner stats", "STATS", items, unix)
}

fn config(r: &Readings, unix: i64) -> Value {
    section(
        33,
        "CGMiner config",
        "CONFIG",
        vec![json!({
            "ASC Count": 1,
            "Device Code": "AVALON",
            "Hotplug": "None",
            "Log Interval": 5,
            "OS": "Linux",
            "PGA Count": 0,
            "Pool Count": r.pools.len(),
            "Strategy": "Failover",
        })],
        unix,
    )
}

fn devdetails(unix: i64) -> Value {
    section(
        69,
        "Device Details",
        "DEVDETAILS",
        vec![json!({
            "DEVDETAILS": 0,
            "Device Path": "",
            "Driver": "avalon",
            "ID": 0,
            "Kernel": "",
            "Model": "",
            "Name": "AVALON",
        })],
        unix,
    )
}

/// A read-only command's reply; `None` if `command` is not one.
fn read(miner: &Miner, now: Instant, unix: i64, command: &str) -> Option<Value> {
    let known = matches!(
        command,
        "version"
            | "summary"
            | "pools"
            | "devs"
            | "edevs"
            | "stats"
            | "estats"
            | "config"
            | "devdetails"
    );
    if !known {
        return None;
    }
    if command == "version" {
        return Some(version(miner, unix));
    }
    if command == "devdetails" {
        return Some(devdetails(unix));
    }
    let r = miner.readings(now);
    Some(match command {
        "summary" => summary(&r, unix),
        "pools" => pools(&r, unix),
        "devs" | "edevs" => devs(&r, unix),
        "stats" => stats(miner, &r, unix, true),
        "estats" => stats(miner, &r, unix, false),
        _ => config(&r, unix),
    })
}

// ---------------------------------------------------------------- writes

fn parse_watts(text: &str) -> Option<f64> {
    let text = text.replace('\u{a0}', " ").trim().to_ascii_lowercase();
    let (number, scale) = if let Some(n) = text.strip_suffix("kw") {
        (n, 1000.0)
    } else if let Some(n) = text.strip_suffix('w') {
        (n, 1.0)
    } else {
        (text.as_str(), 1.0)
    };
    let watts = number.trim().parse::<f64>().ok()? * scale;
    watts.is_finite().then_some(watts)
}

/// `ascset|<dev>,<option>[,<args>]`.
fn ascset(miner: &Miner, unix: i64, parameter: Option<&str>) -> (Option<Value>, After) {
    let ok = |after| (Some(reply("S", 119, "ASC 0 set OK", unix)), after);
    let failed = |why: &str| {
        (
            Some(error(120, &format!("ASC 0 set failed: {why}"), unix)),
            After::Nothing,
        )
    };
    let Some(parameter) = parameter.filter(|p| !p.trim().is_empty()) else {
        return (
            Some(error(15, "Missing device id parameter", unix)),
            After::Nothing,
        );
    };
    let mut parts = parameter.splitn(3, ',');
    let dev = parts.next().unwrap_or("").trim();
    match dev.parse::<i64>() {
        Ok(0) => {}
        Ok(n) => {
            return (
                Some(error(
                    107,
                    &format!("Invalid ASC id {n} - range is 0 - 0"),
                    unix,
                )),
                After::Nothing,
            )
        }
        Err(_) => {
            return (
                Some(error(15, "Missing device id parameter", unix)),
                After::Nothing,
            )
        }
    }
    let Some(option) = parts.next().map(str::trim).filter(|o| !o.is_empty()) else {
        return (
            Some(error(117, "Missing option after ASC number", unix)),
            After::Nothing,
        );
    };
    let args = parts.next().unwrap_or("").trim();
    match option {
        "help" => (
            Some(reply(
                "I",
                118,
                "ASC 0 set info: help|led|reboot|softoff|softon|worklevel|",
                unix,
            )),
            After::Nothing,
        ),
        "softoff" | "softon" => {
            // `<mode>:<unix time>`; no time means now.
            let at = match args.split_once(':') {
                None if args.is_empty() => unix,
                None => return failed("invalid time"),
                Some((_, t)) => match t.trim().parse::<i64>() {
                    Ok(t) => t.max(unix),
                    Err(_) => return failed("invalid time"),
                },
            };
            if at - unix > MAX_SCHEDULE_S {
                return failed("time too far ahead");
            }
            if option == "softoff" {
                ok(After::ModeAt {
                    at,
                    mode: PowerMode::Sleep,
                })
            } else {
                // A live A1466 closes the connection without a reply.
                (
                    None,
                    After::ModeAt {
                        at,
                        mode: PowerMode::Normal,
                    },
                )
            }
        }
        "reboot" => ok(After::Reboot),
        "led" => match args.rsplit('-').next().map(str::trim) {
            Some("1") if args.contains('-') => {
                miner.set_led(true);
                ok(After::Nothing)
            }
            Some("0") if args.contains('-') => {
                miner.set_led(false);
                ok(After::Nothing)
            }
            _ => failed("invalid led value"),
        },
        "worklevel" => {
            let value = args.strip_prefix("set,").map(str::trim);
            let max = (miner.model.nominal_w() * 1.2).round();
            match value.and_then(parse_watts) {
                Some(w) if (1000.0..=max).contains(&w) => {
                    miner.set_power_limit(Some(w.round()));
                    ok(After::Nothing)
                }
                _ => failed(&format!("invalid worklevel {args}")),
            }
        }
        other => failed(&format!("Unknown option: {other}")),
    }
}

/// Splits cgminer's comma list, where `\,` is a literal comma.
fn split_escaped(text: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    if let Some(last) = out.last_mut() {
                        last.push(next);
                    }
                }
            }
            ',' => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

fn pool_index(parameter: Option<&str>, len: usize, unix: i64) -> Result<usize, Value> {
    let n = parameter
        .and_then(|p| p.trim().parse::<usize>().ok())
        .ok_or_else(|| error(14, "Missing pool id parameter", unix))?;
    if n >= len {
        return Err(error(
            54,
            &format!(
                "Invalid pool id {n} - range is 0 - {}",
                len.saturating_sub(1)
            ),
            unix,
        ));
    }
    Ok(n)
}

fn pool_write(miner: &Miner, unix: i64, command: &str, parameter: Option<&str>) -> Value {
    let mut list = miner.pools();
    match command {
        "addpool" => {
            let fields = split_escaped(parameter.unwrap_or(""));
            let valid = fields.len() == 3
                && !fields[0].trim().is_empty()
                && fields.iter().all(|f| f.len() <= MAX_POOL_FIELD);
            if !valid {
                return error(56, "Invalid addpool details", unix);
            }
            if list.len() >= MAX_POOLS {
                return error(56, "Invalid addpool details: at most 3 pools", unix);
            }
            let url = fields[0].trim().to_string();
            list.push(Pool {
                url: url.clone(),
                user: fields[1].clone(),
                password: fields[2].clone(),
            });
            let n = list.len() - 1;
            miner.set_pools(list);
            reply("S", 55, &format!("Added pool {n}: '{url}'"), unix)
        }
        "removepool" => match pool_index(parameter, list.len(), unix) {
            Err(e) => e,
            Ok(0) => error(
                67,
                &format!("Cannot remove active pool 0:'{}'", list[0].url),
                unix,
            ),
            Ok(n) => {
                let gone = list.remove(n);
                miner.set_pools(list);
                reply("S", 68, &format!("Removed pool {n}:'{}'", gone.url), unix)
            }
        },
        _ => match pool_index(parameter, list.len(), unix) {
            Err(e) => e,
            Ok(n) => {
                let chosen = list.remove(n);
                let url = chosen.url.clone();
                list.insert(0, chosen);
                miner.set_pools(list);
                reply("S", 27, &format!("Switching to pool {n}:'{url}'"), unix)
            }
        },
    }
}

// ---------------------------------------------------------------- dispatch

/// cgminer's plain-text form of a JSON reply: `KEY=value,…|` per entry.
fn to_text(v: &Value) -> String {
    fn scalar(v: &Value) -> String {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if matches!(c, ',' | '|' | '=' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }
    fn entry(prefix: Option<&str>, item: &Map<String, Value>) -> String {
        let mut fields: Vec<String> = prefix.map(str::to_string).into_iter().collect();
        fields.extend(item.iter().map(|(k, v)| format!("{k}={}", scalar(v))));
        fields.join(",") + "|"
    }
    let Some(obj) = v.as_object() else {
        return String::new();
    };
    if let Some(Value::String(s)) = obj.get("STATUS") {
        return s.clone();
    }
    let mut out = String::new();
    for item in obj
        .get("STATUS")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
    {
        let mut item = item.clone();
        let kind = item.remove("STATUS").unwrap_or(Value::Null);
        out += &entry(Some(&format!("STATUS={}", scalar(&kind))), &item);
    }
    for (name, items) in obj {
        if name == "STATUS" || name == "id" {
            continue;
        }
        for item in items
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
        {
            let indexed = [name.as_str(), name.trim_end_matches('S'), "ASC"]
                .iter()
                .any(|k| item.contains_key(*k));
            let prefix = (!indexed).then_some(name.as_str());
            out += &entry(prefix, item);
        }
    }
    out
}

fn encode(json: bool, v: &Value) -> Vec<u8> {
    let mut bytes = if json {
        v.to_string().into_bytes()
    } else {
        to_text(v).into_bytes()
    };
    bytes.push(0);
    bytes
}

/// Answers one request on TCP 4028. Writes are applied to `miner` here,
/// except timed mode switches and reboots, which [`Outcome::after`] names.
pub fn handle(miner: &Miner, now: Instant, unix: i64, request: &[u8]) -> Outcome {
    let req = match parse_request(request) {
        Ok(r) => r,
        Err(why) => {
            return Outcome {
                reply: Some(encode(true, &error(23, why, unix))),
                after: After::Nothing,
                json: true,
            }
        }
    };
    let done = |v: Value, after| Outcome {
        reply: Some(encode(req.json, &v)),
        after,
        json: req.json,
    };
    let command = req.command.as_str();
    let param = req.parameter.as_deref();
    if command.contains('+') {
        // Joined commands: JSON only, reads only.
        let parts: Vec<&str> = command.split('+').collect();
        if !req.json || parts.len() > MAX_JOINED {
            return done(error(14, "Invalid command", unix), After::Nothing);
        }
        let mut joined = Map::new();
        for part in parts {
            match read(miner, now, unix, part) {
                Some(v) => {
                    joined.insert(part.to_string(), json!([v]));
                }
                None => {
                    return done(
                        error(45, &format!("Access denied to '{part}' command"), unix),
                        After::Nothing,
                    )
                }
            }
        }
        joined.insert("id".into(), json!(1));
        return done(Value::Object(joined), After::Nothing);
    }
    if let Some(v) = read(miner, now, unix, command) {
        return done(v, After::Nothing);
    }
    match command {
        "ascset" => {
            let (reply, after) = ascset(miner, unix, param);
            Outcome {
                reply: reply.map(|v| encode(req.json, &v)),
                after,
                json: req.json,
            }
        }
        "restart" => done(json!({ "STATUS": "RESTART" }), After::Reboot),
        "quit" => done(json!({ "STATUS": "BYE" }), After::Reboot),
        "addpool" | "removepool" | "switchpool" => {
            done(pool_write(miner, unix, command, param), After::Nothing)
        }
        _ => done(error(14, "Invalid command", unix), After::Nothing),
    }
}

// ---------------------------------------------------------------- sockets

/// Applies `mode` at Unix time `at`: now, or from a timer task.
/// `false` if too many timers are pending already.
fn schedule(miner: &Arc<Miner>, at: i64, mode: PowerMode) -> bool {
    let delay = at - unix_now();
    if delay <= 0 {
        miner.set_mode(mode);
        return true;
    }
    if PENDING_TIMERS.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING_TIMERS {
        PENDING_TIMERS.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    let miner = miner.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(delay as u64)).await;
        miner.set_mode(mode);
        PENDING_TIMERS.fetch_sub(1, Ordering::SeqCst);
    });
    true
}

/// TCP 4028: one request, one reply (or none), close.
pub async fn rpc(mut stream: TcpStream, miner: Arc<Miner>) {
    let Some(request) = io::read_request(&mut stream).await else {
        return;
    };
    let unix = unix_now();
    let mut out = handle(&miner, Instant::now(), unix, &request);
    if let After::ModeAt { at, mode } = out.after {
        if !schedule(&miner, at, mode) {
            out.reply = Some(encode(
                out.json,
                &error(120, "ASC 0 set failed: too many pending timers", unix),
            ));
        }
    }
    // Down from now on, so a client that has its reply finds the miner
    // gone; this connection is already in and still gets its answer.
    if out.after == After::Reboot {
        miner.reboot();
    }
    match out.reply {
        Some(bytes) => io::reply_and_close(stream, &bytes).await,
        None => {
            let _ = stream.shutdown().await;
        }
    }
}

/// TCP 80: the login page of the stock web UI.
pub async fn web(stream: TcpStream, _miner: Arc<Miner>) {
    const PAGE: &str = concat!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">",
        "<title>Avalon Device</title></head><body>",
        "<h1>AvalonMiner 1466</h1>",
        "<form method=\"post\" action=\"/login.cgi\">",
        "<input name=\"username\"><input name=\"passwd\" type=\"password\">",
        "<button type=\"submit\">Login</button></form></body></html>",
    );
    let router = axum::Router::new().fallback(|| async { axum::response::Html(PAGE) });
    io::serve_http(stream, router).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use crate::model::{Fault, Model};

    fn miner() -> Miner {
        Miner::new(
            1,
            Ipv4Addr::new(127, 9, 2, 1),
            Model::AvalonA1466,
            Duration::from_millis(100),
        )
    }

    fn text(out: &Outcome) -> String {
        String::from_utf8_lossy(out.reply.as_deref().unwrap_or_default()).into_owned()
    }

    fn json_of(out: &Outcome) -> Value {
        let bytes = out.reply.as_deref().expect("a reply");
        serde_json::from_slice(bytes.strip_suffix(&[0]).expect("NUL ended")).expect("JSON")
    }

    /// The `key[value]` fields of an `MM ID0` string, as asic-rs reads them.
    fn fields(mm: &str) -> std::collections::HashMap<String, String> {
        let mut out = std::collections::HashMap::new();
        let mut rest = mm;
        while let Some(open) = rest.find('[') {
            let key = rest[..open].rsplit(' ').next().unwrap_or("").to_string();
            let Some(close) = rest[open..].find(']') else {
                break;
            };
            out.insert(key, rest[open + 1..open + close].to_string());
            rest = &rest[open + close + 1..];
        }
        out
    }

    #[test]
    fn mm_id0_packs_the_readings() {
        let m = miner();
        let r = m.readings(Instant::now());
        let f = fields(&mm_id0(&m, &r));
        let mghs: Vec<f64> = f["MGHS"]
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(mghs.len(), 3);
        let total: f64 = mghs.iter().sum::<f64>() / 1000.0;
        assert!((total - r.ths_5s).abs() < 0.1, "{total} vs {}", r.ths_5s);
        assert_eq!(
            f["PVT_T0"].split_whitespace().count(),
            m.model.chips_per_board() as usize
        );
        assert_eq!(f["Fan2"], r.fans_rpm[1].to_string());
        assert!(f["SYSTEMSTATU"].contains("Hash Board: 3"));
        assert_eq!(f["Ver"], format!("1466-150-{FW_VERSION}"));
    }

    #[test]
    fn lost_board_drops_out_of_the_arrays() {
        let m = miner();
        m.set_fault(Fault::HashboardLoss, true);
        let f = fields(&mm_id0(&m, &m.readings(Instant::now())));
        assert_eq!(f["MGHS"].split_whitespace().count(), 2);
        assert_eq!(f["MTmax"].split_whitespace().count(), 2);
        assert!(!f.contains_key("PVT_T0"));
        assert!(f.contains_key("PVT_T1"));
        assert!(f["SYSTEMSTATU"].contains("Hash Board: 2"));
    }

    #[test]
    fn text_and_json_forms_answer_alike() {
        let m = miner();
        let unix = unix_now();
        let t = text(&handle(&m, Instant::now(), unix, b"summary"));
        assert!(t.starts_with("STATUS=S,"), "{t}");
        assert!(t.contains("SUMMARY,"), "{t}");
        assert!(t.ends_with("|\0"), "{t}");
        let j = json_of(&handle(
            &m,
            Instant::now(),
            unix,
            br#"{"command":"summary+pools"}"#,
        ));
        assert_eq!(j["summary"][0]["STATUS"][0]["STATUS"], "S");
        assert_eq!(j["pools"][0]["POOLS"].as_array().unwrap().len(), 3);
        let j = json_of(&handle(
            &m,
            Instant::now(),
            unix,
            br#"{"command":"summary+ascset","parameter":"0,reboot,0"}"#,
        ));
        assert_eq!(j["STATUS"][0]["STATUS"], "E");
    }

    #[test]
    fn ascset_writes_and_refusals() {
        let m = miner();
        let unix = unix_now();
        let call = |req: &str| handle(&m, Instant::now(), unix, req.as_bytes());

        let out = call(&format!("ascset|0,softoff,1:{unix}"));
        assert!(text(&out).contains("ASC 0 set OK"));
        assert_eq!(
            out.after,
            After::ModeAt {
                at: unix,
                mode: PowerMode::Sleep
            }
        );
        let out = call(&format!("ascset|0,softon,1:{}", unix + 5));
        assert_eq!(out.reply, None);
        assert_eq!(
            out.after,
            After::ModeAt {
                at: unix + 5,
                mode: PowerMode::Normal
            }
        );
        assert!(text(&call("ascset|0,led,1-1")).contains("ASC 0 set OK"));
        assert!(m.readings(Instant::now()).led);
        let out = call("ascset|0,worklevel,set,2.8\u{a0}kW");
        assert!(text(&out).contains("ASC 0 set OK"), "{}", text(&out));
        assert_eq!(m.readings(Instant::now()).power_limit_w, Some(2800.0));
        assert_eq!(call("ascset|0,reboot,0").after, After::Reboot);

        for bad in [
            "ascset",
            "ascset|",
            "ascset|x,led,1-1",
            "ascset|1,led,1-1",
            "ascset|0",
            "ascset|0,led,maybe",
            "ascset|0,worklevel,set,9 MW",
            "ascset|0,worklevel,set,-1",
            "ascset|0,softoff,1:tomorrow",
            "ascset|0,softoff,1:99999999999999",
            "ascset|0,fan-spd,100",
        ] {
            let out = call(bad);
            assert!(text(&out).starts_with("STATUS=E"), "{bad}: {}", text(&out));
            assert_eq!(out.after, After::Nothing, "{bad}");
        }
        assert!(text(&call("ascset|0,fan-spd,100")).contains("Unknown option: fan-spd"));
    }

    #[test]
    fn pool_commands_edit_the_list() {
        let m = miner();
        let unix = unix_now();
        let call = |req: &str| text(&handle(&m, Instant::now(), unix, req.as_bytes()));
        assert!(call("removepool|2").starts_with("STATUS=S"));
        assert!(call("addpool|stratum+tcp://a.invalid:3333,w\\,1,x").starts_with("STATUS=S"));
        assert_eq!(m.pools()[2].user, "w,1");
        assert!(call("addpool|stratum+tcp://b.invalid:3333,w,x").starts_with("STATUS=E"));
        assert!(call("switchpool|2").starts_with("STATUS=S"));
        assert_eq!(m.pools()[0].url, "stratum+tcp://a.invalid:3333");
        assert!(call("removepool|0").starts_with("STATUS=E"));
        assert!(call("removepool|7").starts_with("STATUS=E"));
        assert!(call("switchpool").starts_with("STATUS=E"));
    }

    #[test]
    fn garbage_never_panics() {
        let m = miner();
        let unix = unix_now();
        for req in [
            &b""[..],
            b"\xff\xfe",
            b"{",
            b"{\"command\":7}",
            b"{\"command\":\"ascset\",\"parameter\":[\"0\",\"led\",\"1-1\"]}",
            b"|||",
            b"+",
            b"{\"command\":\"+++++++++++\"}",
            b"version|\x00\x00",
        ] {
            let out = handle(&m, Instant::now(), unix, req);
            assert!(out.reply.is_some());
            assert_eq!(out.after, After::Nothing);
        }
    }
}
