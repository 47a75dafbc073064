//! Modbus TCP power meters and relay controllers (port 502).
//!
//! tokio-modbus 0.17 only serves connections it accepts from its own
//! listener (its codec and request loop are private), while the sim's net
//! layer hands us one already-accepted stream. So the MBAP framing is done
//! here, with bounded reads, and each device answers through a pure
//! function from request PDU to response PDU ([`Meter::respond`],
//! [`Relay::respond`]). Functions: 01 read coils, 03 read holding
//! registers, 05 write single coil, 15 write multiple coils; anything else,
//! or a bad address or value, gets a Modbus exception reply.
//!
//! Meter values are spread over holding registers as in [`METER_REGISTERS`],
//! 32-bit values high word first ([`WORD_ORDER`]), each word big-endian.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::model::Miner;

/// The unit id the emulated devices are configured with. They also answer
/// 0 and 255, which Modbus TCP clients use for "the device itself".
pub const UNIT_ID: u8 = 1;
/// How long a connection may sit idle between requests.
const IDLE: Duration = Duration::from_secs(60);
/// How long the rest of a frame may take once its header arrived.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// MBAP length field bounds: unit id plus a PDU of 1..=253 bytes.
const MAX_MBAP_LEN: usize = 254;

pub const READ_COILS: u8 = 0x01;
pub const READ_HOLDING_REGISTERS: u8 = 0x03;
pub const WRITE_SINGLE_COIL: u8 = 0x05;
pub const WRITE_MULTIPLE_COILS: u8 = 0x0F;

/// The Modbus exception codes the devices answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exception {
    IllegalFunction = 0x01,
    IllegalDataAddress = 0x02,
    IllegalDataValue = 0x03,
    /// The unit id names no device behind this address.
    GatewayTargetFailed = 0x0B,
}

fn exception(function: u8, e: Exception) -> Vec<u8> {
    vec![function | 0x80, e as u8]
}

fn unit_ok(unit: u8) -> bool {
    matches!(unit, 0 | UNIT_ID | 255)
}

/// How a value is spread over registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterKind {
    F32,
    U32,
    I32,
    U16,
}

impl RegisterKind {
    /// As the sentry config names it: `f32`, `u32`, `i32`, `u16`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RegisterKind::F32 => "f32",
            RegisterKind::U32 => "u32",
            RegisterKind::I32 => "i32",
            RegisterKind::U16 => "u16",
        }
    }

    pub fn words(&self) -> u16 {
        match self {
            RegisterKind::U16 => 1,
            _ => 2,
        }
    }
}

/// One value in the meter's holding registers: the register holds
/// `value / scale`.
#[derive(Debug)]
pub struct MeterRegister {
    /// The sentry metric it becomes.
    pub name: &'static str,
    pub address: u16,
    pub kind: RegisterKind,
    pub scale: f64,
    pub description: &'static str,
}

/// 32-bit values: the high word at the lower address.
pub const WORD_ORDER: &str = "high_first";

/// The meter's register map (function 03).
pub const METER_REGISTERS: &[MeterRegister] = &[
    MeterRegister {
        name: "power_w",
        address: 0,
        kind: RegisterKind::F32,
        scale: 1.0,
        description: "total active power, W",
    },
    MeterRegister {
        name: "voltage_v",
        address: 2,
        kind: RegisterKind::F32,
        scale: 1.0,
        description: "average phase voltage (L-N), V",
    },
    MeterRegister {
        name: "current_a",
        address: 4,
        kind: RegisterKind::F32,
        scale: 1.0,
        description: "average phase current, A",
    },
    MeterRegister {
        name: "energy_kwh",
        address: 6,
        kind: RegisterKind::U32,
        scale: 0.01,
        description: "imported active energy, kWh (register counts 10 Wh)",
    },
    MeterRegister {
        name: "frequency_hz",
        address: 8,
        kind: RegisterKind::F32,
        scale: 1.0,
        description: "line frequency, Hz",
    },
    MeterRegister {
        name: "power_factor",
        address: 10,
        kind: RegisterKind::U16,
        scale: 0.001,
        description: "total power factor (register counts 0.001)",
    },
    MeterRegister {
        name: "reactive_power_var",
        address: 12,
        kind: RegisterKind::I32,
        scale: 1.0,
        description: "total reactive power, var (signed)",
    },
];

/// Holding registers 0..METER_REGISTER_COUNT exist.
pub const METER_REGISTER_COUNT: u16 = 14;

/// Load the meter sees besides its miners (switches, lights, fans), W.
const BASE_LOAD_W: f64 = 180.0;
const PHASES: f64 = 3.0;

/// What a meter measures at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeterReading {
    pub power_w: f64,
    pub voltage_v: f64,
    pub current_a: f64,
    pub energy_kwh: f64,
    pub frequency_hz: f64,
    pub power_factor: f64,
    pub reactive_power_var: f64,
}

impl MeterReading {
    fn value(&self, name: &str) -> f64 {
        match name {
            "power_w" => self.power_w,
            "voltage_v" => self.voltage_v,
            "current_a" => self.current_a,
            "energy_kwh" => self.energy_kwh,
            "frequency_hz" => self.frequency_hz,
            "power_factor" => self.power_factor,
            "reactive_power_var" => self.reactive_power_var,
            _ => 0.0,
        }
    }
}

#[derive(Debug)]
struct MeterState {
    energy_kwh: f64,
    last: Instant,
    voltage_v: f64,
    rng: fastrand::Rng,
}

/// A three-phase power meter in front of some miners.
#[derive(Debug)]
pub struct Meter {
    pub index: usize,
    pub addr: Ipv4Addr,
    /// The miners whose power this meter measures.
    pub miners: Vec<Arc<Miner>>,
    state: Mutex<MeterState>,
}

impl Meter {
    pub fn new(index: usize, addr: Ipv4Addr, miners: Vec<Arc<Miner>>) -> Meter {
        Meter {
            index,
            addr,
            miners,
            state: Mutex::new(MeterState {
                energy_kwh: 10_000.0 + index as f64 * 1_234.5,
                last: Instant::now(),
                voltage_v: 230.0,
                rng: fastrand::Rng::with_seed(u64::from(u32::from(addr)) ^ 0x3E7E),
            }),
        }
    }

    /// `meter-<index>`, as the sentry config names it.
    pub fn name(&self) -> String {
        format!("sim-{}", self.index)
    }

    /// The readings at `now`; integrates energy since the last reading.
    pub fn reading(&self, now: Instant) -> MeterReading {
        let miners_w: f64 = self.miners.iter().map(|m| m.readings(now).power_w).sum();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let noise = 1.0 + (s.rng.f64() - 0.5) * 0.006;
        let power_w = (miners_w + BASE_LOAD_W) * noise;
        let dt_h = now.saturating_duration_since(s.last).as_secs_f64() / 3600.0;
        if dt_h > 0.0 {
            s.energy_kwh += power_w / 1000.0 * dt_h;
            s.last = now;
        }
        s.voltage_v = (s.voltage_v + (s.rng.f64() - 0.5) * 0.4).clamp(226.0, 234.0);
        let power_factor = if miners_w > 1000.0 { 0.985 } else { 0.92 };
        let frequency_hz = 50.0 + (s.rng.f64() - 0.5) * 0.04;
        let current_a = power_w / (PHASES * s.voltage_v * power_factor);
        let reactive_power_var = power_w * power_factor.acos().tan();
        MeterReading {
            power_w,
            voltage_v: s.voltage_v,
            current_a,
            energy_kwh: s.energy_kwh,
            frequency_hz,
            power_factor,
            reactive_power_var,
        }
    }

    /// The holding registers 0..[`METER_REGISTER_COUNT`] at `now`.
    pub fn registers(&self, now: Instant) -> Vec<u16> {
        let r = self.reading(now);
        let mut words = vec![0u16; usize::from(METER_REGISTER_COUNT)];
        for reg in METER_REGISTERS {
            let encoded = encode(r.value(reg.name) / reg.scale, reg.kind);
            let at = usize::from(reg.address);
            words[at..at + encoded.len()].copy_from_slice(&encoded);
        }
        words
    }

    /// Answers one request PDU from `unit`.
    pub fn respond(&self, unit: u8, pdu: &[u8], now: Instant) -> Vec<u8> {
        let function = pdu.first().copied().unwrap_or(0);
        if !unit_ok(unit) {
            return exception(function, Exception::GatewayTargetFailed);
        }
        if function != READ_HOLDING_REGISTERS {
            return exception(function, Exception::IllegalFunction);
        }
        let Some((start, count)) = address_and_count(pdu) else {
            return exception(function, Exception::IllegalDataValue);
        };
        if !(1..=125).contains(&count) {
            return exception(function, Exception::IllegalDataValue);
        }
        let end = u32::from(start) + u32::from(count);
        if end > u32::from(METER_REGISTER_COUNT) {
            return exception(function, Exception::IllegalDataAddress);
        }
        let words = self.registers(now);
        let mut out = Vec::with_capacity(2 + 2 * usize::from(count));
        out.push(function);
        out.push((count * 2) as u8);
        for w in &words[usize::from(start)..end as usize] {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out
    }
}

/// `value` as registers of `kind`, high word first.
fn encode(value: f64, kind: RegisterKind) -> Vec<u16> {
    let split = |bits: u32| vec![(bits >> 16) as u16, bits as u16];
    match kind {
        RegisterKind::F32 => split((value as f32).to_bits()),
        RegisterKind::U32 => split(value.round().clamp(0.0, f64::from(u32::MAX)) as u32),
        RegisterKind::I32 => split(
            value
                .round()
                .clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32 as u32,
        ),
        RegisterKind::U16 => vec![value.round().clamp(0.0, f64::from(u16::MAX)) as u16],
    }
}

/// The (address, count-or-value) pair that starts most request PDUs.
fn address_and_count(pdu: &[u8]) -> Option<(u16, u16)> {
    if pdu.len() < 5 {
        return None;
    }
    Some((
        u16::from_be_bytes([pdu[1], pdu[2]]),
        u16::from_be_bytes([pdu[3], pdu[4]]),
    ))
}

/// A relay controller (RRC): one coil per channel, each feeding a miner.
#[derive(Debug)]
pub struct Relay {
    pub index: usize,
    pub addr: Ipv4Addr,
    /// Channel `i` powers `channels[i]` (if any miner is wired to it).
    pub channels: Vec<Option<Arc<Miner>>>,
    /// Coils of channels with no miner (wired ones read the miner's power).
    coils: Mutex<Vec<bool>>,
}

impl Relay {
    pub fn new(index: usize, addr: Ipv4Addr, channels: Vec<Option<Arc<Miner>>>) -> Relay {
        let coils = Mutex::new(vec![true; channels.len()]);
        Relay {
            index,
            addr,
            channels,
            coils,
        }
    }

    /// `relay-<index>`, as the sentry config names it.
    pub fn name(&self) -> String {
        format!("sim-{}", self.index)
    }

    /// Whether channel `channel` is closed (feeding power); `None` if
    /// there is no such channel.
    pub fn coil(&self, channel: usize) -> Option<bool> {
        match self.channels.get(channel)? {
            Some(miner) => Some(miner.powered()),
            None => self
                .coils
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(channel)
                .copied(),
        }
    }

    /// Closes (`on`) or opens a channel, powering its miner on or off.
    pub fn set_coil(&self, channel: usize, on: bool) -> Result<(), String> {
        let Some(wired) = self.channels.get(channel) else {
            return Err(format!(
                "{} has channels 0..{}: no channel {channel}",
                self.name(),
                self.channels.len()
            ));
        };
        if let Some(miner) = wired {
            miner.set_power(on);
        }
        if let Some(c) = self
            .coils
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(channel)
        {
            *c = on;
        }
        Ok(())
    }

    /// Answers one request PDU from `unit`.
    pub fn respond(&self, unit: u8, pdu: &[u8]) -> Vec<u8> {
        let function = pdu.first().copied().unwrap_or(0);
        if !unit_ok(unit) {
            return exception(function, Exception::GatewayTargetFailed);
        }
        let coils = self.channels.len() as u32;
        let Some((start, value)) = address_and_count(pdu) else {
            return match function {
                READ_COILS | WRITE_SINGLE_COIL | WRITE_MULTIPLE_COILS => {
                    exception(function, Exception::IllegalDataValue)
                }
                _ => exception(function, Exception::IllegalFunction),
            };
        };
        match function {
            READ_COILS => {
                let count = value;
                if !(1..=2000).contains(&count) {
                    return exception(function, Exception::IllegalDataValue);
                }
                if u32::from(start) + u32::from(count) > coils {
                    return exception(function, Exception::IllegalDataAddress);
                }
                let bits: Vec<bool> = (start..start + count)
                    .map(|c| self.coil(usize::from(c)).unwrap_or(false))
                    .collect();
                let mut out = vec![function, 0];
                out.extend(pack_bits(&bits));
                out[1] = (out.len() - 2) as u8;
                out
            }
            WRITE_SINGLE_COIL => {
                let on = match value {
                    0xFF00 => true,
                    0x0000 => false,
                    _ => return exception(function, Exception::IllegalDataValue),
                };
                if u32::from(start) >= coils {
                    return exception(function, Exception::IllegalDataAddress);
                }
                let _ = self.set_coil(usize::from(start), on);
                pdu[..5].to_vec()
            }
            WRITE_MULTIPLE_COILS => {
                let count = value;
                let byte_count = usize::from(count).div_ceil(8);
                if !(1..=1968).contains(&count)
                    || pdu.len() < 6
                    || usize::from(pdu[5]) != byte_count
                    || pdu.len() != 6 + byte_count
                {
                    return exception(function, Exception::IllegalDataValue);
                }
                if u32::from(start) + u32::from(count) > coils {
                    return exception(function, Exception::IllegalDataAddress);
                }
                for i in 0..usize::from(count) {
                    let on = pdu[6 + i / 8] & (1 << (i % 8)) != 0;
                    let _ = self.set_coil(usize::from(start) + i, on);
                }
                pdu[..5].to_vec()
            }
            _ => exception(function, Exception::IllegalFunction),
        }
    }
}

/// Coils packed LSB first, as function 01 returns them.
fn pack_bits(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

/// An MBAP header: transaction id, protocol id (0), length, unit id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbapHeader {
    pub transaction: u16,
    /// Bytes after the length field: the unit id and the PDU.
    pub length: u16,
    pub unit: u8,
}

/// Checks a received header; `None` means the stream is not Modbus TCP
/// (or out of step) and the connection should close.
pub fn parse_header(bytes: &[u8; 7]) -> Option<MbapHeader> {
    let protocol = u16::from_be_bytes([bytes[2], bytes[3]]);
    let length = u16::from_be_bytes([bytes[4], bytes[5]]);
    (protocol == 0 && (2..=MAX_MBAP_LEN as u16).contains(&length)).then_some(MbapHeader {
        transaction: u16::from_be_bytes([bytes[0], bytes[1]]),
        length,
        unit: bytes[6],
    })
}

/// A reply ADU for `request` carrying `pdu`.
pub fn frame_reply(request: MbapHeader, pdu: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(7 + pdu.len());
    out.extend_from_slice(&request.transaction.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
    out.push(request.unit);
    out.extend_from_slice(pdu);
    out
}

/// Runs the request loop on one connection until the peer closes, idles
/// out or sends something that is not a Modbus TCP frame.
async fn serve_mbap(mut stream: TcpStream, mut answer: impl FnMut(u8, &[u8]) -> Vec<u8>) {
    let _ = stream.set_nodelay(true);
    let mut header = [0u8; 7];
    let mut pdu = [0u8; MAX_MBAP_LEN];
    loop {
        match tokio::time::timeout(IDLE, stream.read_exact(&mut header)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(h) = parse_header(&header) else {
            return;
        };
        let body = &mut pdu[..usize::from(h.length) - 1];
        match tokio::time::timeout(FRAME_TIMEOUT, stream.read_exact(body)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let reply = frame_reply(h, &answer(h.unit, body));
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// Serves one Modbus TCP connection (port 502) to a meter.
pub async fn serve_meter(stream: TcpStream, meter: Arc<Meter>) {
    serve_mbap(stream, |unit, pdu| meter.respond(unit, pdu, Instant::now())).await;
}

/// Serves one Modbus TCP connection (port 502) to a relay controller.
pub async fn serve_relay(stream: TcpStream, relay: Arc<Relay>) {
    serve_mbap(stream, |unit, pdu| relay.respond(unit, pdu)).await;
}

/// The sentry config block for this meter: `[[powermeter]]` with its
/// register map.
pub fn meter_config_toml(m: &Meter) -> String {
    let mut out = format!(
        "[[powermeter]]\nname = \"{}\"\naddress = \"{}:502\"\nunit = {UNIT_ID}\nword_order = \"{WORD_ORDER}\"\n\n[powermeter.registers]\n",
        m.name(),
        m.addr
    );
    for r in METER_REGISTERS {
        out.push_str(&format!(
            "{} = {{ address = {}, type = \"{}\", scale = {:?} }}\n",
            r.name,
            r.address,
            r.kind.as_str(),
            r.scale
        ));
    }
    out
}

/// The sentry config block for this relay: `[[relay]]`, each wired channel
/// mapped to the IPv4 address of the miner it powers.
pub fn relay_config_toml(r: &Relay) -> String {
    let mut out = format!(
        "[[relay]]\nname = \"{}\"\naddress = \"{}:502\"\nunit = {UNIT_ID}\nchannels = {}\n\n[relay.outlets]\n",
        r.name(),
        r.addr,
        r.channels.len()
    );
    for (channel, miner) in r.channels.iter().enumerate() {
        if let Some(m) = miner {
            out.push_str(&format!("{channel} = \"{}\"\n", m.addr));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Model, PowerMode};

    fn miner(last: u8) -> Arc<Miner> {
        Arc::new(Miner::new(
            usize::from(last),
            Ipv4Addr::new(127, 204, 8, last),
            Model::AntminerS21,
            Duration::from_millis(50),
        ))
    }

    fn f32_at(words: &[u16], at: usize) -> f32 {
        f32::from_bits((u32::from(words[at]) << 16) | u32::from(words[at + 1]))
    }

    #[test]
    fn meter_power_follows_miners_and_energy_grows() {
        let miners = vec![miner(1), miner(2)];
        let meter = Meter::new(0, Ipv4Addr::new(127, 204, 8, 100), miners.clone());
        let t0 = Instant::now();
        let w = meter.registers(t0);
        let p = f32_at(&w, 0);
        assert!((6900.0..7500.0).contains(&p), "{p}");
        let e0 = (u32::from(w[6]) << 16) | u32::from(w[7]);
        miners[0].set_mode(PowerMode::Sleep);
        let w = meter.registers(t0 + Duration::from_secs(3600));
        let p = f32_at(&w, 0);
        assert!((3500.0..4000.0).contains(&p), "{p}");
        let e1 = (u32::from(w[6]) << 16) | u32::from(w[7]);
        // About 3.7 kWh in the hour, in 10 Wh steps.
        assert!((350..400).contains(&(e1 - e0)), "{e0} {e1}");
        assert!(w[10] > 900 && w[10] <= 1000);
    }

    #[test]
    fn meter_answers_exceptions_not_panics() {
        let meter = Meter::new(0, Ipv4Addr::new(127, 204, 8, 101), vec![]);
        let now = Instant::now();
        assert_eq!(meter.respond(1, &[3, 0, 0, 0, 14], now).len(), 2 + 28);
        assert_eq!(meter.respond(1, &[3, 0, 13, 0, 2], now), vec![0x83, 2]);
        assert_eq!(meter.respond(1, &[3, 0, 0, 0, 0], now), vec![0x83, 3]);
        assert_eq!(meter.respond(1, &[3, 0], now), vec![0x83, 3]);
        assert_eq!(meter.respond(1, &[4, 0, 0, 0, 2], now), vec![0x84, 1]);
        assert_eq!(meter.respond(7, &[3, 0, 0, 0, 2], now), vec![0x83, 0x0B]);
        assert_eq!(meter.respond(1, &[], now), vec![0x80, 1]);
    }

    #[test]
    fn relay_coils_switch_miners() {
        let m = miner(3);
        let relay = Relay::new(
            0,
            Ipv4Addr::new(127, 204, 8, 102),
            vec![None, Some(m.clone())],
        );
        assert_eq!(relay.respond(1, &[1, 0, 0, 0, 2]), vec![1, 1, 0b11]);
        assert_eq!(relay.respond(1, &[5, 0, 1, 0, 0]), vec![5, 0, 1, 0, 0]);
        assert!(!m.powered());
        assert_eq!(relay.respond(1, &[1, 0, 0, 0, 2]), vec![1, 1, 0b01]);
        assert_eq!(
            relay.respond(1, &[15, 0, 0, 0, 2, 1, 0b10]),
            vec![15, 0, 0, 0, 2]
        );
        assert!(m.powered());
        assert_eq!(relay.coil(0), Some(false));
        assert_eq!(relay.respond(1, &[5, 0, 2, 0xFF, 0]), vec![0x85, 2]);
        assert_eq!(relay.respond(1, &[5, 0, 1, 0x12, 0x34]), vec![0x85, 3]);
        assert_eq!(relay.respond(1, &[15, 0, 0, 0, 2, 2, 0, 0]), vec![0x8F, 3]);
        assert_eq!(relay.respond(1, &[1, 0, 1, 0, 2]), vec![0x81, 2]);
        assert_eq!(relay.respond(1, &[3, 0, 0, 0, 1]), vec![0x83, 1]);
        assert_eq!(relay.respond(1, &[1]), vec![0x81, 3]);
        assert!(relay
            .set_coil(9, true)
            .unwrap_err()
            .contains("no channel 9"));
    }

    #[test]
    fn headers_that_are_not_modbus_close_the_connection() {
        assert!(parse_header(&[0, 1, 0, 0, 0, 6, 1]).is_some());
        assert!(parse_header(&[0, 1, 0, 7, 0, 6, 1]).is_none());
        assert!(parse_header(&[0, 1, 0, 0, 0, 1, 1]).is_none());
        assert!(parse_header(&[0, 1, 0, 0, 1, 0, 1]).is_none());
        let h = parse_header(&[0, 9, 0, 0, 0, 6, 1]).unwrap();
        assert_eq!(
            frame_reply(h, &[0x83, 2]),
            vec![0, 9, 0, 0, 0, 3, 1, 0x83, 2]
        );
    }

    #[tokio::test]
    async fn serves_one_stream_to_a_tokio_modbus_client() {
        use tokio_modbus::client::{Reader, Writer};
        let m = miner(4);
        let relay = Arc::new(Relay::new(
            0,
            Ipv4Addr::new(127, 204, 8, 103),
            vec![Some(m.clone())],
        ));
        let listener = tokio::net::TcpListener::bind("127.204.8.103:0")
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let served = relay.clone();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve_relay(stream, served).await;
        });
        let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, tokio_modbus::Slave(1))
            .await
            .unwrap();
        ctx.write_single_coil(0, false).await.unwrap().unwrap();
        assert!(!m.powered());
        assert_eq!(ctx.read_coils(0, 1).await.unwrap().unwrap()[..1], [false]);
        let e = ctx.read_coils(0, 5).await.unwrap().unwrap_err();
        assert_eq!(e, tokio_modbus::ExceptionCode::IllegalDataAddress);
        ctx.write_multiple_coils(0, &[true]).await.unwrap().unwrap();
        assert!(m.powered());
    }

    #[tokio::test]
    async fn garbage_and_truncated_frames_close_the_connection() {
        let meter = Arc::new(Meter::new(3, Ipv4Addr::new(127, 204, 8, 106), vec![]));
        let listener = tokio::net::TcpListener::bind("127.204.8.106:0")
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let served = meter.clone();
        let server = tokio::spawn(async move {
            for _ in 0..3 {
                let (stream, _) = listener.accept().await.unwrap();
                serve_meter(stream, served.clone()).await;
            }
        });
        let mut reply = Vec::new();
        // Not Modbus TCP (protocol id 0x4745, "GE" of "GET"): closed unanswered.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        // Closed with unread bytes: EOF or a reset, never a reply.
        assert!(matches!(s.read_to_end(&mut reply).await, Ok(0) | Err(_)));
        // A good request first, then half a frame and EOF.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&[0, 5, 0, 0, 0, 6, 1, 3, 0, 0, 0, 2])
            .await
            .unwrap();
        s.write_all(&[0, 6, 0, 0, 0, 6, 1, 3]).await.unwrap();
        s.shutdown().await.unwrap();
        s.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply.len(), 7 + 2 + 4);
        assert_eq!(reply[..2], [0, 5]);
        // An oversized length field.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&[0, 7, 0, 0, 0xFF, 0xFF, 1]).await.unwrap();
        let mut rest = Vec::new();
        assert!(matches!(s.read_to_end(&mut rest).await, Ok(0) | Err(_)));
        server.await.unwrap();
    }

    #[test]
    fn config_blocks_carry_the_map_and_the_outlets() {
        let meter = Meter::new(2, Ipv4Addr::new(127, 204, 8, 104), vec![]);
        let text = meter_config_toml(&meter);
        assert!(text.contains("name = \"sim-2\""));
        assert!(text.contains("energy_kwh = { address = 6, type = \"u32\", scale = 0.01 }"));
        let relay = Relay::new(
            1,
            Ipv4Addr::new(127, 204, 8, 105),
            vec![None, Some(miner(9))],
        );
        let text = relay_config_toml(&relay);
        assert!(text.contains("channels = 2"));
        assert!(text.contains("1 = \"127.204.8.9\""));
        assert!(!text.contains("0 = "));
    }
}
