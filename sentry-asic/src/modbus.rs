//! Modbus TCP power meters and relay controllers: the `[[powermeter]]` and
//! `[[relay]]` config entries, and tokio-modbus clients that poll them into
//! [`DeviceSnapshot`]s and power-cycle a relay channel.
//!
//! Each poll or action opens its own connection, with a timeout on the
//! connect and on every request, and closes it. Decoding registers and
//! planning reads are pure functions ([`decode`], [`plan_reads`]).
//! A relay channel is the coil of the same number: channel 0 is coil 0.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use hashfleet_shared::wire::DeviceSnapshot;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::{Request, Response, Slave};

use crate::container::{check_name, clip, parse_address, ConfigError, TIMEOUT_RANGE_MS};

pub const DEFAULT_PORT: u16 = 502;
pub const DEFAULT_UNIT: u8 = 1;
pub const DEFAULT_TIMEOUT_MS: u64 = 3000;
pub const DEFAULT_OFF_MS: u64 = 5000;
/// How long `powerCycle` may keep a coil off, ms.
pub const OFF_RANGE_MS: RangeInclusive<u64> = 100..=600_000;
/// The registers every meter entry must map.
pub const REQUIRED_REGISTERS: [&str; 4] = ["power_w", "voltage_v", "current_a", "energy_kwh"];
/// Most channels a relay entry may have.
pub const MAX_CHANNELS: u16 = 256;
/// Most registers in one function-03 request (the protocol's limit).
const MAX_READ: u16 = 125;
/// Registers skipped between two values still read in one request.
const MAX_GAP: u16 = 8;
/// Attempts to switch a channel back on after the off window.
const ON_ATTEMPTS: u32 = 3;

/// How 32-bit values are spread over two registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    /// The high word at the lower address ("ABCD"), the Modbus default.
    #[default]
    HighFirst,
    /// The low word first ("CDAB").
    LowFirst,
}

impl WordOrder {
    pub fn as_str(&self) -> &'static str {
        match self {
            WordOrder::HighFirst => "high_first",
            WordOrder::LowFirst => "low_first",
        }
    }
}

/// A value's register type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterType {
    F32,
    U32,
    I32,
    U16,
}

impl RegisterType {
    pub fn words(&self) -> u16 {
        match self {
            RegisterType::U16 => 1,
            _ => 2,
        }
    }
}

/// Where a meter keeps one value: metric = register value × `scale`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterSpec {
    /// Holding register (function 03), 0-based.
    pub address: u16,
    #[serde(rename = "type")]
    pub kind: RegisterType,
    #[serde(default = "one")]
    pub scale: f64,
}

fn one() -> f64 {
    1.0
}

fn default_unit() -> u8 {
    DEFAULT_UNIT
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

fn default_off_ms() -> u64 {
    DEFAULT_OFF_MS
}

/// One `[[powermeter]]` in the sentry config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterEntry {
    /// The device id is `powermeter-<name>`.
    pub name: String,
    /// An IP address, with `:port` unless it is 502.
    pub address: String,
    #[serde(default = "default_unit")]
    pub unit: u8,
    #[serde(default)]
    pub word_order: WordOrder,
    /// Metric name → register; needs at least [`REQUIRED_REGISTERS`].
    pub registers: BTreeMap<String, RegisterSpec>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// One `[[relay]]` in the sentry config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayEntry {
    /// The device id is `relay-<name>`.
    pub name: String,
    /// An IP address, with `:port` unless it is 502.
    pub address: String,
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Channels 0..channels, channel N on coil N.
    pub channels: u16,
    /// Channel number (as a key: `3 = "10.0.0.7"`) → IPv4 address of the
    /// miner it powers.
    #[serde(default)]
    pub outlets: BTreeMap<String, String>,
    /// How long `powerCycle` keeps the coil off, ms.
    #[serde(default = "default_off_ms")]
    pub off_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn check_timeout(ms: u64) -> Result<(), String> {
    if TIMEOUT_RANGE_MS.contains(&ms) {
        Ok(())
    } else {
        Err(format!(
            "`timeout_ms` {ms} is out of range {}..={}",
            TIMEOUT_RANGE_MS.start(),
            TIMEOUT_RANGE_MS.end()
        ))
    }
}

impl MeterEntry {
    /// Checks every field; the error says which and what to write instead.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.socket_addr().map(|_| ())
    }

    fn socket_addr(&self) -> Result<SocketAddr, ConfigError> {
        let err = |p: String| ConfigError::new("powermeter", &self.name, p);
        check_name(&self.name).map_err(err)?;
        check_timeout(self.timeout_ms).map_err(err)?;
        for required in REQUIRED_REGISTERS {
            if !self.registers.contains_key(required) {
                return Err(err(format!(
                    "`registers` lacks `{required}`: map at least {} (e.g. {required} = {{ address = 0, type = \"f32\" }})",
                    REQUIRED_REGISTERS.join(", ")
                )));
            }
        }
        for (name, r) in &self.registers {
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(err(format!(
                    "register name `{name}` must be a metric name: 1 to 64 of a-z, 0-9, _"
                )));
            }
            if !r.scale.is_finite() || r.scale == 0.0 {
                return Err(err(format!(
                    "register `{name}`: `scale` must be a finite non-zero number"
                )));
            }
            if u32::from(r.address) + u32::from(r.kind.words()) > 65_536 {
                return Err(err(format!(
                    "register `{name}`: address {} runs past register 65535",
                    r.address
                )));
            }
        }
        parse_address(&self.address, DEFAULT_PORT).map_err(err)
    }
}

impl RelayEntry {
    /// Checks every field; the error says which and what to write instead.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.parsed().map(|_| ())
    }

    fn parsed(&self) -> Result<(SocketAddr, BTreeMap<u16, Ipv4Addr>), ConfigError> {
        let err = |p: String| ConfigError::new("relay", &self.name, p);
        check_name(&self.name).map_err(err)?;
        check_timeout(self.timeout_ms).map_err(err)?;
        if !(1..=MAX_CHANNELS).contains(&self.channels) {
            return Err(err(format!(
                "`channels` {} is out of range 1..={MAX_CHANNELS}",
                self.channels
            )));
        }
        if !OFF_RANGE_MS.contains(&self.off_ms) {
            return Err(err(format!(
                "`off_ms` {} is out of range {}..={}",
                self.off_ms,
                OFF_RANGE_MS.start(),
                OFF_RANGE_MS.end()
            )));
        }
        let mut outlets = BTreeMap::new();
        for (key, miner) in &self.outlets {
            let channel = key
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|c| *c < self.channels)
                .ok_or_else(|| {
                    err(format!(
                        "outlet `{key}` is not a channel: use 0..={}",
                        self.channels - 1
                    ))
                })?;
            let ip = miner.trim().parse::<Ipv4Addr>().map_err(|_| {
                err(format!(
                    "outlet {channel} = `{miner}` is not an IPv4 address (the miner it powers)"
                ))
            })?;
            if outlets.insert(channel, ip).is_some() {
                return Err(err(format!(
                    "channel {channel} is listed twice in `outlets`"
                )));
            }
        }
        let addr = parse_address(&self.address, DEFAULT_PORT).map_err(err)?;
        Ok((addr, outlets))
    }
}

/// Decodes a value from its registers (`words.len()` = `kind.words()`),
/// scaled; `None` if the words are too few or the float is not finite.
pub fn decode(words: &[u16], kind: RegisterType, order: WordOrder, scale: f64) -> Option<f64> {
    let joined = || -> Option<u32> {
        let (a, b) = (*words.first()?, *words.get(1)?);
        let (hi, lo) = match order {
            WordOrder::HighFirst => (a, b),
            WordOrder::LowFirst => (b, a),
        };
        Some((u32::from(hi) << 16) | u32::from(lo))
    };
    let raw = match kind {
        RegisterType::U16 => f64::from(*words.first()?),
        RegisterType::U32 => f64::from(joined()?),
        RegisterType::I32 => f64::from(joined()? as i32),
        RegisterType::F32 => f64::from(f32::from_bits(joined()?)),
    };
    Some(raw * scale).filter(|v| v.is_finite())
}

/// Groups registers into function-03 reads: `(start, count)`, each at most
/// 125 registers, merging neighbours at most [`MAX_GAP`] apart.
pub fn plan_reads(registers: &BTreeMap<String, RegisterSpec>) -> Vec<(u16, u16)> {
    let mut spans: Vec<(u32, u32)> = registers
        .values()
        .map(|r| {
            (
                u32::from(r.address),
                u32::from(r.address) + u32::from(r.kind.words()),
            )
        })
        .collect();
    spans.sort_unstable();
    let mut plan: Vec<(u32, u32)> = Vec::new();
    for (start, end) in spans {
        match plan.last_mut() {
            Some((s, e))
                if start <= *e + u32::from(MAX_GAP) && end.max(*e) - *s <= u32::from(MAX_READ) =>
            {
                *e = end.max(*e);
            }
            _ => plan.push((start, end)),
        }
    }
    plan.into_iter()
        .map(|(s, e)| (s as u16, (e - s) as u16))
        .collect()
}

/// Why a Modbus exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// No connection: the device is offline.
    Unreachable(String),
    /// Connected, but the exchange failed (timeout, bad frame, exception).
    Device(String),
}

impl Failure {
    fn state(&self) -> &'static str {
        match self {
            Failure::Unreachable(_) => "offline",
            Failure::Device(_) => "error",
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Unreachable(m) | Failure::Device(m) => m,
        }
    }
}

/// A connection to one device, closed on drop.
struct Link {
    ctx: Context,
    timeout: Duration,
    who: String,
}

impl Link {
    async fn open(
        addr: SocketAddr,
        unit: u8,
        timeout: Duration,
        who: String,
    ) -> Result<Link, Failure> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Failure::Unreachable(format!("{who}: connect failed: {e}"))),
            Err(_) => {
                return Err(Failure::Unreachable(format!(
                    "{who}: no connection within {} ms",
                    timeout.as_millis()
                )))
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(Link {
            ctx: tokio_modbus::client::tcp::attach_slave(stream, Slave(unit)),
            timeout,
            who,
        })
    }

    /// One request with the timeout; `what` names it in errors. It goes
    /// through `Client::call` and the reply is checked here: tokio-modbus's
    /// typed helpers (`read_holding_registers`, …) `debug_assert` on short
    /// replies, which would let a faulty device panic a debug build.
    async fn call(&mut self, what: &str, request: Request<'static>) -> Result<Response, Failure> {
        let who = &self.who;
        match tokio::time::timeout(self.timeout, self.ctx.call(request)).await {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(exception))) => Err(Failure::Device(format!(
                "{who}: {what}: the device answered with exception {exception:?}"
            ))),
            Ok(Err(e)) => Err(Failure::Device(format!("{who}: {what}: {e}"))),
            Err(_) => Err(Failure::Device(format!(
                "{who}: {what}: no reply within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    fn unexpected(&self, what: &str, detail: String) -> Failure {
        Failure::Device(format!("{}: {what}: {detail}", self.who))
    }

    async fn read_registers(&mut self, start: u16, count: u16) -> Result<Vec<u16>, Failure> {
        let what = format!(
            "reading holding registers {start}..{}",
            u32::from(start) + u32::from(count)
        );
        match self
            .call(&what, Request::ReadHoldingRegisters(start, count))
            .await?
        {
            Response::ReadHoldingRegisters(words) if words.len() == usize::from(count) => Ok(words),
            Response::ReadHoldingRegisters(words) => Err(self.unexpected(
                &what,
                format!("got {} registers, asked for {count}", words.len()),
            )),
            other => Err(self.unexpected(&what, format!("unexpected reply {other:?}"))),
        }
    }

    async fn read_coils(&mut self, start: u16, count: u16) -> Result<Vec<bool>, Failure> {
        let what = format!(
            "reading coils {start}..{}",
            u32::from(start) + u32::from(count)
        );
        match self.call(&what, Request::ReadCoils(start, count)).await? {
            Response::ReadCoils(mut coils) if coils.len() >= usize::from(count) => {
                coils.truncate(usize::from(count));
                Ok(coils)
            }
            Response::ReadCoils(coils) => Err(self.unexpected(
                &what,
                format!("got {} coils, asked for {count}", coils.len()),
            )),
            other => Err(self.unexpected(&what, format!("unexpected reply {other:?}"))),
        }
    }

    async fn write_coil(&mut self, coil: u16, on: bool) -> Result<(), Failure> {
        let what = format!("switching channel {coil} {}", if on { "on" } else { "off" });
        match self.call(&what, Request::WriteSingleCoil(coil, on)).await? {
            Response::WriteSingleCoil(a, v) if a == coil && v == on => Ok(()),
            other => Err(self.unexpected(&what, format!("unexpected reply {other:?}"))),
        }
    }

    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(200), self.ctx.disconnect()).await;
    }
}

fn failed_snapshot(id: String, kind: &str, addr: SocketAddr, f: &Failure) -> DeviceSnapshot {
    let mut labels = BTreeMap::new();
    labels.insert("state".into(), f.state().into());
    labels.insert("error".into(), clip(f.message(), 500));
    labels.insert("address".into(), addr.to_string());
    DeviceSnapshot {
        id,
        kind: kind.into(),
        make: "modbus-tcp".into(),
        labels,
        ..DeviceSnapshot::default()
    }
}

/// Polls one power meter.
#[derive(Debug, Clone)]
pub struct MeterClient {
    entry: MeterEntry,
    addr: SocketAddr,
    plan: Vec<(u16, u16)>,
}

impl MeterClient {
    /// Validates `entry` and builds the client (no I/O yet).
    pub fn new(entry: MeterEntry) -> Result<MeterClient, ConfigError> {
        let addr = entry.socket_addr()?;
        let plan = plan_reads(&entry.registers);
        Ok(MeterClient { entry, addr, plan })
    }

    pub fn entry(&self) -> &MeterEntry {
        &self.entry
    }

    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// `powermeter-<name>`.
    pub fn id(&self) -> String {
        format!("powermeter-{}", self.entry.name)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn who(&self) -> String {
        format!("power meter `{}` at {}", self.entry.name, self.addr)
    }

    /// Reads every mapped register. Never fails: an unreachable meter gives
    /// `state` = `offline`, a failed exchange `state` = `error`, with the
    /// reason in the `error` label.
    pub async fn poll_meter(&self) -> DeviceSnapshot {
        match self.read_all().await {
            Ok(blocks) => self.snapshot(&blocks),
            Err(f) => failed_snapshot(self.id(), "powermeter", self.addr, &f),
        }
    }

    async fn read_all(&self) -> Result<Vec<(u16, Vec<u16>)>, Failure> {
        let timeout = Duration::from_millis(self.entry.timeout_ms);
        let mut link = Link::open(self.addr, self.entry.unit, timeout, self.who()).await?;
        let mut blocks = Vec::with_capacity(self.plan.len());
        let mut result = Ok(());
        for &(start, count) in &self.plan {
            match link.read_registers(start, count).await {
                Ok(words) => blocks.push((start, words)),
                Err(f) => {
                    result = Err(f);
                    break;
                }
            }
        }
        link.close().await;
        result.map(|()| blocks)
    }

    /// The snapshot of the register blocks a poll read.
    #[doc(hidden)] // pub for the fuzz targets
    pub fn snapshot(&self, blocks: &[(u16, Vec<u16>)]) -> DeviceSnapshot {
        let mut metrics = BTreeMap::new();
        let mut bad = Vec::new();
        for (name, r) in &self.entry.registers {
            let words = blocks.iter().find_map(|(start, words)| {
                let from = usize::from(r.address.checked_sub(*start)?);
                words.get(from..from + usize::from(r.kind.words()))
            });
            match words.and_then(|w| decode(w, r.kind, self.entry.word_order, r.scale)) {
                Some(v) => {
                    metrics.insert(name.clone(), v);
                }
                None => bad.push(name.as_str()),
            }
        }
        let mut labels = BTreeMap::new();
        labels.insert("state".into(), "online".into());
        labels.insert("address".into(), self.addr.to_string());
        labels.insert("unit".into(), self.entry.unit.to_string());
        labels.insert("word_order".into(), self.entry.word_order.as_str().into());
        if !bad.is_empty() {
            labels.insert(
                "error".into(),
                format!("not a finite number: {}", bad.join(", ")),
            );
        }
        let raw = json!({
            "blocks": blocks.iter().map(|(start, words)| json!({
                "address": start, "words": words,
            })).collect::<Vec<_>>(),
        });
        DeviceSnapshot {
            id: self.id(),
            kind: "powermeter".into(),
            make: "modbus-tcp".into(),
            model: "powermeter".into(),
            firmware: String::new(),
            metrics,
            labels,
            alerts: Vec::new(),
            raw: clip(&raw.to_string(), crate::container::MAX_RAW),
        }
    }

    /// Meters take no actions: always an error naming the method.
    pub async fn execute(&self, method: &str, _params: &Value) -> Result<Value, String> {
        Err(format!(
            "power meter `{}` has no actions: `{method}` is not supported",
            self.entry.name
        ))
    }
}

/// Polls and drives one relay controller.
#[derive(Debug, Clone)]
pub struct RelayClient {
    entry: RelayEntry,
    addr: SocketAddr,
    outlets: BTreeMap<u16, Ipv4Addr>,
}

impl RelayClient {
    /// Validates `entry` and builds the client (no I/O yet).
    pub fn new(entry: RelayEntry) -> Result<RelayClient, ConfigError> {
        let (addr, outlets) = entry.parsed()?;
        Ok(RelayClient {
            entry,
            addr,
            outlets,
        })
    }

    pub fn entry(&self) -> &RelayEntry {
        &self.entry
    }

    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// `relay-<name>`.
    pub fn id(&self) -> String {
        format!("relay-{}", self.entry.name)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Channel → the miner it powers.
    pub fn outlets(&self) -> &BTreeMap<u16, Ipv4Addr> {
        &self.outlets
    }

    /// The channel that powers the miner at `ip`, if any.
    pub fn channel_of(&self, ip: Ipv4Addr) -> Option<u16> {
        self.outlets
            .iter()
            .find(|(_, m)| **m == ip)
            .map(|(c, _)| *c)
    }

    fn who(&self) -> String {
        format!("relay `{}` at {}", self.entry.name, self.addr)
    }

    async fn link(&self) -> Result<Link, Failure> {
        Link::open(
            self.addr,
            self.entry.unit,
            Duration::from_millis(self.entry.timeout_ms),
            self.who(),
        )
        .await
    }

    /// Reads every coil: metrics `channel_N_on` (1/0), labels
    /// `channel_N_miner`. Never fails (see [`MeterClient::poll_meter`]).
    pub async fn poll_relay(&self) -> DeviceSnapshot {
        let coils = match self.read_coils(0, self.entry.channels).await {
            Ok(c) => c,
            Err(f) => {
                let mut s = failed_snapshot(self.id(), "relay", self.addr, &f);
                self.label_outlets(&mut s.labels);
                return s;
            }
        };
        let mut metrics = BTreeMap::new();
        for (channel, on) in coils.iter().enumerate() {
            metrics.insert(format!("channel_{channel}_on"), if *on { 1.0 } else { 0.0 });
        }
        metrics.insert("channels".into(), f64::from(self.entry.channels));
        let mut labels = BTreeMap::new();
        labels.insert("state".into(), "online".into());
        labels.insert("address".into(), self.addr.to_string());
        labels.insert("unit".into(), self.entry.unit.to_string());
        self.label_outlets(&mut labels);
        let raw = json!({ "coils": coils.iter().map(|c| u8::from(*c)).collect::<Vec<_>>() });
        DeviceSnapshot {
            id: self.id(),
            kind: "relay".into(),
            make: "modbus-tcp".into(),
            model: "relay".into(),
            firmware: String::new(),
            metrics,
            labels,
            alerts: Vec::new(),
            raw: clip(&raw.to_string(), crate::container::MAX_RAW),
        }
    }

    fn label_outlets(&self, labels: &mut BTreeMap<String, String>) {
        for (channel, ip) in &self.outlets {
            labels.insert(format!("channel_{channel}_miner"), ip.to_string());
        }
    }

    async fn read_coils(&self, start: u16, count: u16) -> Result<Vec<bool>, Failure> {
        let mut link = self.link().await?;
        let result = link.read_coils(start, count).await;
        link.close().await;
        result
    }

    /// Writes one coil and reads it back.
    async fn switch(&self, channel: u16, on: bool) -> Result<(), Failure> {
        let mut link = self.link().await?;
        let mut result = link.write_coil(channel, on).await;
        if result.is_ok() {
            result = match link.read_coils(channel, 1).await {
                Ok(c) if c.first() == Some(&on) => Ok(()),
                Ok(_) => Err(Failure::Device(format!(
                    "{}: channel {channel} did not switch {} (read back differs)",
                    self.who(),
                    if on { "on" } else { "off" }
                ))),
                Err(f) => Err(f),
            };
        }
        link.close().await;
        result
    }

    /// Switches `channel` off, waits `off_ms`, switches it on and reads it
    /// back. If it cannot be switched on again, the error says the channel
    /// is left off.
    pub async fn power_cycle(&self, channel: u16) -> Result<Value, String> {
        if channel >= self.entry.channels {
            return Err(format!(
                "relay `{}` has channels 0..={}: there is no channel {channel}",
                self.entry.name,
                self.entry.channels - 1
            ));
        }
        self.switch(channel, false).await.map_err(|f| {
            format!(
                "powerCycle: could not switch channel {channel} off, nothing was cycled: {}",
                f.message()
            )
        })?;
        tokio::time::sleep(Duration::from_millis(self.entry.off_ms)).await;
        let mut last = None;
        for attempt in 0..ON_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            match self.switch(channel, true).await {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(f) => last = Some(f),
            }
        }
        if let Some(f) = last {
            return Err(format!(
                "powerCycle: channel {channel} is left OFF after {ON_ATTEMPTS} attempts to switch it back on ({}); switch it on by hand",
                f.message()
            ));
        }
        Ok(json!({
            "relay": self.entry.name,
            "channel": channel,
            "miner": self.outlets.get(&channel).map(|ip| ip.to_string()),
            "off_ms": self.entry.off_ms,
            "on": true,
        }))
    }

    /// Runs a relay action: `powerCycle` with `[N]` or `[{"channel": N}]`.
    pub async fn execute(&self, method: &str, params: &Value) -> Result<Value, String> {
        match method {
            "powerCycle" => self.power_cycle(channel_param(params)?).await,
            other => Err(format!(
                "relay action `{other}` is not supported: use powerCycle [channel] or [{{\"channel\": N}}]"
            )),
        }
    }
}

/// The channel in `powerCycle`'s params: `[N]` or `[{"channel": N}]`.
pub fn channel_param(params: &Value) -> Result<u16, String> {
    let n = match params.as_array().map(Vec::as_slice) {
        Some([Value::Number(n)]) => n.as_u64(),
        Some([Value::Object(o)]) if o.len() == 1 => o.get("channel").and_then(Value::as_u64),
        _ => None,
    };
    n.and_then(|n| u16::try_from(n).ok()).ok_or_else(|| {
        format!(
            "powerCycle takes [channel] or [{{\"channel\": N}}] with N a channel number, got {}",
            clip(&params.to_string(), 80)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(address: u16, kind: RegisterType) -> RegisterSpec {
        RegisterSpec {
            address,
            kind,
            scale: 1.0,
        }
    }

    fn meter_entry() -> MeterEntry {
        let registers = [
            ("power_w", reg(0, RegisterType::F32)),
            ("voltage_v", reg(2, RegisterType::F32)),
            ("current_a", reg(4, RegisterType::F32)),
            ("energy_kwh", reg(6, RegisterType::U32)),
        ]
        .into_iter()
        .map(|(n, r)| (n.to_string(), r))
        .collect();
        MeterEntry {
            name: "m".into(),
            address: "10.0.0.9".into(),
            unit: 1,
            word_order: WordOrder::HighFirst,
            registers,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }

    #[test]
    fn decode_honours_type_order_and_scale() {
        let bits = 1234.5f32.to_bits();
        let (hi, lo) = ((bits >> 16) as u16, bits as u16);
        let f = |w: &[u16], o| decode(w, RegisterType::F32, o, 1.0);
        assert_eq!(f(&[hi, lo], WordOrder::HighFirst), Some(1234.5));
        assert_eq!(f(&[lo, hi], WordOrder::LowFirst), Some(1234.5));
        assert_eq!(
            decode(&[1, 2], RegisterType::U32, WordOrder::HighFirst, 0.01),
            Some(655.38)
        );
        assert_eq!(
            decode(
                &[0xFFFF, 0xFFFE],
                RegisterType::I32,
                WordOrder::HighFirst,
                1.0
            ),
            Some(-2.0)
        );
        assert_eq!(
            decode(&[985], RegisterType::U16, WordOrder::HighFirst, 0.001),
            Some(0.985)
        );
        assert_eq!(
            decode(&[1], RegisterType::U32, WordOrder::HighFirst, 1.0),
            None
        );
        let nan = f32::NAN.to_bits();
        assert_eq!(
            f(&[(nan >> 16) as u16, nan as u16], WordOrder::HighFirst),
            None
        );
    }

    #[test]
    fn reads_are_merged_within_limits() {
        let mut regs = meter_entry().registers;
        assert_eq!(plan_reads(&regs), vec![(0, 8)]);
        regs.insert("far".into(), reg(300, RegisterType::U16));
        regs.insert("near_far".into(), reg(305, RegisterType::F32));
        regs.insert("edge".into(), reg(120, RegisterType::F32));
        assert_eq!(plan_reads(&regs), vec![(0, 8), (120, 2), (300, 7)]);
    }

    #[test]
    fn meter_validation_names_the_problem() {
        assert!(meter_entry().validate().is_ok());
        let mut e = meter_entry();
        e.registers.remove("energy_kwh");
        let msg = e.validate().unwrap_err().to_string();
        assert!(
            msg.starts_with("[[powermeter]] `m`: `registers` lacks `energy_kwh`"),
            "{msg}"
        );
        let mut e = meter_entry();
        e.registers.get_mut("power_w").unwrap().scale = 0.0;
        assert!(e.validate().unwrap_err().to_string().contains("scale"));
        let mut e = meter_entry();
        e.registers
            .insert("Bad-Name".into(), reg(9, RegisterType::U16));
        assert!(e
            .validate()
            .unwrap_err()
            .to_string()
            .contains("metric name"));
        let mut e = meter_entry();
        e.registers
            .insert("top".into(), reg(65535, RegisterType::F32));
        assert!(e.validate().unwrap_err().to_string().contains("65535"));
        let e = toml::from_str::<MeterEntry>(
            "name = \"m\"\naddress = \"10.0.0.9\"\nword_order = \"middle\"\n[registers]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("high_first"), "{e}");
    }

    #[test]
    fn relay_validation_checks_outlets_and_windows() {
        let text = "name = \"r\"\naddress = \"10.0.0.8:1502\"\nchannels = 4\n[outlets]\n0 = \"10.0.1.1\"\n3 = \"10.0.1.4\"\n";
        let entry: RelayEntry = toml::from_str(text).unwrap();
        assert_eq!(entry.off_ms, DEFAULT_OFF_MS);
        let client = RelayClient::new(entry.clone()).unwrap();
        assert_eq!(client.addr().port(), 1502);
        assert_eq!(client.channel_of("10.0.1.4".parse().unwrap()), Some(3));
        let mut bad = entry.clone();
        bad.outlets.insert("4".into(), "10.0.1.5".into());
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("outlet `4` is not a channel"));
        let mut bad = entry.clone();
        bad.outlets.insert("1".into(), "miner-1".into());
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not an IPv4"));
        let mut bad = entry.clone();
        bad.outlets.insert("03".into(), "10.0.1.9".into());
        assert!(bad.validate().unwrap_err().to_string().contains("twice"));
        let mut bad = entry.clone();
        bad.off_ms = 10;
        assert!(bad.validate().unwrap_err().to_string().contains("off_ms"));
        let mut bad = entry;
        bad.channels = 0;
        assert!(bad.validate().unwrap_err().to_string().contains("channels"));
        let e = toml::from_str::<RelayEntry>(
            "name = \"r\"\naddress = \"10.0.0.8\"\nchannels = 2\ncoils = 2\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `coils`"), "{e}");
    }

    #[test]
    fn power_cycle_params() {
        assert_eq!(channel_param(&json!([3])), Ok(3));
        assert_eq!(channel_param(&json!([{"channel": 2}])), Ok(2));
        for bad in [
            json!([]),
            json!(["3"]),
            json!([-1]),
            json!([1, 2]),
            json!({"channel": 1}),
            json!([{"channel": 1, "x": 0}]),
            json!([70000]),
        ] {
            assert!(
                channel_param(&bad)
                    .unwrap_err()
                    .contains("powerCycle takes"),
                "{bad}"
            );
        }
    }
}
