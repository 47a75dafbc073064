//! An Antspace-style cooling container: a small model of its cooling loop
//! (no I/O: [`Container::reading`] and [`Container::handle`] are plain
//! functions of the state and the clock), served as
//! `GET /cooler?operation=…` JSON over HTTP on port 80, without auth.
//!
//! Even-index containers are HK3 (cooling tower), odd-index ones immersion
//! (dry cooler). Every reply is `{"code": 0, "msg": "ok", "data": …}`; an
//! error reply carries the HTTP status as `code` and says why in `msg`.
//!
//! Alarms: each code in [`ALARMS`] has a level (critical, high, medium) and
//! fits HK3, immersion or both. An alarm is raised by injection
//! ([`Container::set_alarm`]) or by the loop itself (supply temperature low
//! or high, freezing). A raised alarm latches: once its condition is gone it
//! is still reported (`"active": false`) until `reset`. Clearing an injected
//! alarm by code removes it at once.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::miners::io::serve_http;
use crate::model::Miner;

/// The liquid supply set point the controller accepts, °C.
pub const SET_TEMP_RANGE: std::ops::RangeInclusive<f64> = 10.0..=45.0;
/// The operations `GET /cooler` knows.
pub const OPERATIONS: [&str; 7] = [
    "coolerState",
    "minerInfo",
    "open",
    "close",
    "reset",
    "setTemp",
    "pid",
];
/// The firmware string the emulated controllers report.
pub const FIRMWARE: &str = "ASC-2.4.1-sim";

/// Below the set point by more than this: `supply_temp_low`.
const LOW_MARGIN_C: f64 = 5.0;
/// Above the set point by more than this: `supply_temp_high`.
const HIGH_MARGIN_C: f64 = 10.0;
/// Supply below this: `freezing`.
const FREEZING_C: f64 = 3.0;
/// Where the liquid drifts with no cooling.
const UNCOOLED_C: f64 = 58.0;
/// How fast the supply follows its target while cooling, and without.
const TAU_COOLING_S: f64 = 40.0;
const TAU_UNCOOLED_S: f64 = 240.0;
/// Tower fan full speed.
const FAN_MAX_RPM: f64 = 1480.0;

/// Which cooling a container has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoolingKind {
    /// HK3: cooling tower (3 tower fans, spray and fluid-infusion pumps).
    Hk3,
    /// Immersion: dry cooler (secondary pump, dry-cooler drive, level sensors).
    Immersion,
}

impl CoolingKind {
    /// `hk3` or `immersion`, as the config and the replies name it.
    pub fn name(&self) -> &'static str {
        match self {
            CoolingKind::Hk3 => "hk3",
            CoolingKind::Immersion => "immersion",
        }
    }

    pub fn model(&self) -> &'static str {
        match self {
            CoolingKind::Hk3 => "Antspace HK3",
            CoolingKind::Immersion => "Antspace Immersion",
        }
    }

    fn nominal_flow_m3h(&self) -> f64 {
        match self {
            CoolingKind::Hk3 => 110.0,
            CoolingKind::Immersion => 100.0,
        }
    }

    /// Heat capacity of the coolant, J/(m³·K): water, or dielectric oil.
    fn capacity_j_m3k(&self) -> f64 {
        match self {
            CoolingKind::Hk3 => 4.18e6,
            CoolingKind::Immersion => 1.8e6,
        }
    }

    /// The heat load when no miners are attached, W.
    fn nominal_load_w(&self) -> f64 {
        match self {
            CoolingKind::Hk3 => 900_000.0,
            CoolingKind::Immersion => 500_000.0,
        }
    }

    fn default_set_point_c(&self) -> f64 {
        match self {
            CoolingKind::Hk3 => 30.0,
            CoolingKind::Immersion => 35.0,
        }
    }
}

/// An alarm's severity, as the controller reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmLevel {
    Critical,
    High,
    Medium,
}

impl AlarmLevel {
    pub fn as_str(&self) -> &'static str {
        match self {
            AlarmLevel::Critical => "critical",
            AlarmLevel::High => "high",
            AlarmLevel::Medium => "medium",
        }
    }
}

/// Which containers an alarm exists on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fits {
    Both,
    Hk3,
    Immersion,
}

/// One alarm the controllers know.
#[derive(Debug)]
pub struct AlarmDef {
    pub code: &'static str,
    pub level: AlarmLevel,
    pub fits: Fits,
    pub description: &'static str,
}

impl AlarmDef {
    pub fn fits(&self, kind: CoolingKind) -> bool {
        matches!(
            (self.fits, kind),
            (Fits::Both, _)
                | (Fits::Hk3, CoolingKind::Hk3)
                | (Fits::Immersion, CoolingKind::Immersion)
        )
    }
}

/// Every alarm code, its level and where it exists.
pub const ALARMS: &[AlarmDef] = &[
    AlarmDef {
        code: "leakage",
        level: AlarmLevel::Critical,
        fits: Fits::Both,
        description: "coolant leakage detected",
    },
    AlarmDef {
        code: "circulating_pump_fault",
        level: AlarmLevel::Critical,
        fits: Fits::Both,
        description: "circulating pump fault",
    },
    AlarmDef {
        code: "supply_temp_low",
        level: AlarmLevel::High,
        fits: Fits::Both,
        description: "supply liquid temperature low",
    },
    AlarmDef {
        code: "supply_temp_high",
        level: AlarmLevel::High,
        fits: Fits::Both,
        description: "supply liquid temperature high",
    },
    AlarmDef {
        code: "freezing",
        level: AlarmLevel::Medium,
        fits: Fits::Both,
        description: "freezing alarm",
    },
    AlarmDef {
        code: "tower_level_low",
        level: AlarmLevel::High,
        fits: Fits::Hk3,
        description: "cooling tower liquid level low",
    },
    AlarmDef {
        code: "tower_fan_fault",
        level: AlarmLevel::High,
        fits: Fits::Hk3,
        description: "cooling tower fan fault",
    },
    AlarmDef {
        code: "spray_pump_fault",
        level: AlarmLevel::Medium,
        fits: Fits::Hk3,
        description: "spray pump fault",
    },
    AlarmDef {
        code: "phase_failure",
        level: AlarmLevel::Critical,
        fits: Fits::Immersion,
        description: "power supply phase failure",
    },
    AlarmDef {
        code: "frequency_converter_fault",
        level: AlarmLevel::High,
        fits: Fits::Immersion,
        description: "dry cooler frequency converter fault",
    },
    AlarmDef {
        code: "temp_sensor_fault",
        level: AlarmLevel::Medium,
        fits: Fits::Immersion,
        description: "temperature sensor fault",
    },
    AlarmDef {
        code: "level_sensor_fault",
        level: AlarmLevel::Medium,
        fits: Fits::Immersion,
        description: "level sensor fault",
    },
    AlarmDef {
        code: "smoke_sensor_fault",
        level: AlarmLevel::Medium,
        fits: Fits::Immersion,
        description: "smoke sensor fault",
    },
];

/// Looks an alarm up by code.
pub fn alarm_def(code: &str) -> Option<&'static AlarmDef> {
    ALARMS.iter().find(|a| a.code == code)
}

#[derive(Debug, Default, Clone, Copy)]
struct AlarmState {
    /// Raised through the control API.
    injected: bool,
    /// Raised at some point and not reset since.
    latched: bool,
}

#[derive(Debug)]
struct CoolerState {
    running: bool,
    set_point_c: f64,
    supply_c: f64,
    /// The model has been advanced up to here.
    last: Instant,
    alarms: BTreeMap<&'static str, AlarmState>,
    rng: fastrand::Rng,
}

/// One alarm as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Alarm {
    pub code: &'static str,
    pub level: AlarmLevel,
    pub description: &'static str,
    /// The condition holds now (otherwise only latched).
    pub active: bool,
}

/// The parts only one kind of container has.
#[derive(Debug, Clone, PartialEq)]
pub enum KindReading {
    Hk3 {
        tower_fans_rpm: [f64; 3],
        spray_pump: bool,
        infusion_pump: bool,
        liquid_level_pct: f64,
    },
    Immersion {
        secondary_pump: bool,
        secondary_pump_hz: f64,
        dry_cooler_hz: f64,
        pdb_temp_c: f64,
        level_sensors_pct: [f64; 2],
    },
}

/// What the controller reports at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct CoolerReading {
    pub running: bool,
    pub set_point_c: f64,
    pub supply_c: f64,
    pub return_c: f64,
    pub supply_bar: f64,
    pub return_bar: f64,
    pub flow_m3h: f64,
    /// The cooling equipment's own draw, W.
    pub power_w: f64,
    /// Heat taken from the miners, W.
    pub heat_load_w: f64,
    pub ambient_c: f64,
    pub humidity_pct: f64,
    pub circulation_pump: bool,
    pub kind: KindReading,
    pub alarms: Vec<Alarm>,
}

/// One emulated cooling container. Shared by its connection tasks.
#[derive(Debug)]
pub struct Container {
    pub index: usize,
    pub addr: Ipv4Addr,
    pub kind: CoolingKind,
    pub serial: String,
    /// The miners it cools (their power is the heat load); none means a
    /// nominal load.
    miners: Mutex<Vec<Arc<Miner>>>,
    state: Mutex<CoolerState>,
}

impl Container {
    pub fn new(index: usize, addr: Ipv4Addr) -> Container {
        let kind = if index % 2 == 0 {
            CoolingKind::Hk3
        } else {
            CoolingKind::Immersion
        };
        let o = addr.octets();
        let set_point_c = kind.default_set_point_c();
        Container {
            index,
            addr,
            kind,
            serial: format!(
                "{}{:02X}{:02X}{:02X}{:04}",
                match kind {
                    CoolingKind::Hk3 => "ASHK3",
                    CoolingKind::Immersion => "ASIMM",
                },
                o[1],
                o[2],
                o[3],
                index
            ),
            miners: Mutex::new(Vec::new()),
            state: Mutex::new(CoolerState {
                running: true,
                set_point_c,
                supply_c: set_point_c + 0.4,
                last: Instant::now(),
                alarms: BTreeMap::new(),
                rng: fastrand::Rng::with_seed(u64::from(u32::from(addr)) ^ 0xC001),
            }),
        }
    }

    /// `hk3` or `immersion`.
    pub fn kind_name(&self) -> &'static str {
        self.kind.name()
    }

    /// The name the sentry config gives it: `container-<index>`.
    pub fn name(&self) -> String {
        format!("sim-{}", self.index)
    }

    /// The miners whose heat this container carries away.
    pub fn attach_miners(&self, miners: Vec<Arc<Miner>>) {
        *self.miners.lock().unwrap_or_else(|p| p.into_inner()) = miners;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CoolerState> {
        // Every mutation is a plain assignment: a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The alarm codes this container knows.
    pub fn alarm_codes(&self) -> Vec<&'static str> {
        ALARMS
            .iter()
            .filter(|a| a.fits(self.kind))
            .map(|a| a.code)
            .collect()
    }

    /// Raises (`on`) or clears an alarm by code, as the control API asks.
    /// Clearing also drops its latch.
    pub fn set_alarm(&self, code: &str, on: bool) -> Result<(), String> {
        let def = alarm_def(code)
            .filter(|a| a.fits(self.kind))
            .ok_or_else(|| {
                format!(
                    "unknown alarm `{code}` for {} container {}: use {}",
                    self.kind.name(),
                    self.name(),
                    self.alarm_codes().join(", ")
                )
            })?;
        let mut s = self.lock();
        let a = s.alarms.entry(def.code).or_default();
        a.injected = on;
        a.latched = on;
        Ok(())
    }

    /// Switches the cooling system on (`open`) or off (`close`).
    pub fn switch(&self, on: bool) {
        let mut s = self.lock();
        self.advance(&mut s, Instant::now());
        s.running = on;
    }

    pub fn running(&self) -> bool {
        self.lock().running
    }

    pub fn set_point_c(&self) -> f64 {
        self.lock().set_point_c
    }

    /// Sets the liquid supply temperature, within [`SET_TEMP_RANGE`].
    pub fn set_temp(&self, celsius: f64) -> Result<(), String> {
        if !celsius.is_finite() || !SET_TEMP_RANGE.contains(&celsius) {
            return Err(format!(
                "temp {celsius} is out of range: the supply set point is {}..={} °C",
                SET_TEMP_RANGE.start(),
                SET_TEMP_RANGE.end()
            ));
        }
        let mut s = self.lock();
        self.advance(&mut s, Instant::now());
        s.set_point_c = celsius;
        Ok(())
    }

    /// Clears every latched alarm whose condition has gone; returns how
    /// many were cleared.
    pub fn reset(&self) -> usize {
        let mut s = self.lock();
        self.advance(&mut s, Instant::now());
        let derived = derived_alarms(&s);
        let mut cleared = 0;
        for (code, a) in s.alarms.iter_mut() {
            if a.latched && !a.injected && !derived.contains(code) {
                a.latched = false;
                cleared += 1;
            }
        }
        cleared
    }

    fn heat_load_w(&self, now: Instant) -> f64 {
        let miners = self
            .miners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if miners.is_empty() {
            self.kind.nominal_load_w()
        } else {
            miners.iter().map(|m| m.readings(now).power_w).sum()
        }
    }

    /// Moves the loop from `s.last` to `now`.
    fn advance(&self, s: &mut CoolerState, now: Instant) {
        let dt = now
            .saturating_duration_since(s.last)
            .min(Duration::from_secs(3600))
            .as_secs_f64();
        if dt > 0.0 {
            let (target, tau) = supply_target(self.kind, s);
            let alpha = 1.0 - (-dt / tau).exp();
            s.supply_c += (target - s.supply_c) * alpha;
            s.last = now;
        }
        for code in derived_alarms(s) {
            s.alarms.entry(code).or_default().latched = true;
        }
        let injected: Vec<&'static str> = s
            .alarms
            .iter()
            .filter(|(_, a)| a.injected)
            .map(|(c, _)| *c)
            .collect();
        for code in injected {
            s.alarms.entry(code).or_default().latched = true;
        }
    }

    /// The readings at `now`; moves the model and the noise.
    pub fn reading(&self, now: Instant) -> CoolerReading {
        let heat_w = self.heat_load_w(now);
        let mut guard = self.lock();
        self.advance(&mut guard, now);
        // A plain reference, so closures borrow fields apart.
        let s = &mut *guard;
        let kind = self.kind;
        let on = |code: &str| s.alarms.get(code).is_some_and(|a| a.injected);
        let phase_failure = on("phase_failure");
        let circulation_pump = s.running && !on("circulating_pump_fault") && !phase_failure;
        let noise = |rng: &mut fastrand::Rng, amp: f64| (rng.f64() - 0.5) * 2.0 * amp;
        let flow_m3h = if circulation_pump {
            kind.nominal_flow_m3h() * (1.0 + noise(&mut s.rng, 0.01))
        } else {
            0.0
        };
        let supply_c = s.supply_c + noise(&mut s.rng, 0.05);
        let return_c = if flow_m3h > 0.0 {
            supply_c + heat_w / (kind.capacity_j_m3k() * flow_m3h / 3600.0)
        } else {
            supply_c + 1.5
        } + noise(&mut s.rng, 0.05);
        let leak_drop = if on("leakage") { 0.7 } else { 0.0 };
        let (supply_bar, return_bar) = if circulation_pump {
            (
                2.3 - leak_drop + noise(&mut s.rng, 0.02),
                1.4 - leak_drop * 0.6 + noise(&mut s.rng, 0.02),
            )
        } else {
            (0.6 - leak_drop * 0.5, 0.6 - leak_drop * 0.5)
        };
        // Fans and the dry-cooler drive follow the supply error.
        let error_c = s.supply_c - s.set_point_c;
        let demand = (0.55 + 0.15 * error_c).clamp(0.2, 1.0);
        let mut power_w = 250.0 + if circulation_pump { 7500.0 } else { 0.0 };
        let kind_reading = match kind {
            CoolingKind::Hk3 => {
                let fans = s.running && !on("tower_fan_fault");
                let mut tower_fans_rpm = [0.0; 3];
                for (i, rpm) in tower_fans_rpm.iter_mut().enumerate() {
                    if fans {
                        *rpm = (FAN_MAX_RPM * demand + i as f64 * 6.0 + noise(&mut s.rng, 8.0))
                            .round();
                        power_w += 5500.0 * demand.powi(3);
                    }
                }
                let spray_pump = s.running && !on("spray_pump_fault");
                let liquid_level_pct = if on("tower_level_low") {
                    18.0
                } else if on("leakage") {
                    55.0
                } else {
                    82.0
                } + noise(&mut s.rng, 0.4);
                let infusion_pump = s.running && liquid_level_pct < 70.0;
                power_w += if spray_pump { 4000.0 } else { 0.0 }
                    + if infusion_pump { 1500.0 } else { 0.0 };
                KindReading::Hk3 {
                    tower_fans_rpm,
                    spray_pump,
                    infusion_pump,
                    liquid_level_pct: round2(liquid_level_pct),
                }
            }
            CoolingKind::Immersion => {
                let secondary_pump = s.running && !phase_failure;
                let secondary_pump_hz = if secondary_pump {
                    45.0 + noise(&mut s.rng, 0.2)
                } else {
                    0.0
                };
                let drive = s.running && !phase_failure && !on("frequency_converter_fault");
                let dry_cooler_hz = if drive {
                    50.0 * demand + noise(&mut s.rng, 0.2)
                } else {
                    0.0
                };
                power_w += if secondary_pump { 5500.0 } else { 0.0 }
                    + 8.0 * 1500.0 * (dry_cooler_hz / 50.0).powi(3);
                let load = heat_w / kind.nominal_load_w();
                let pdb_temp_c = 30.0 + 10.0 * load.min(1.5) + noise(&mut s.rng, 0.2);
                let level = if on("leakage") { 60.0 } else { 90.0 };
                KindReading::Immersion {
                    secondary_pump,
                    secondary_pump_hz: round2(secondary_pump_hz),
                    dry_cooler_hz: round2(dry_cooler_hz),
                    pdb_temp_c: round2(pdb_temp_c),
                    level_sensors_pct: [
                        round2(level + noise(&mut s.rng, 0.3)),
                        round2(level - 0.6 + noise(&mut s.rng, 0.3)),
                    ],
                }
            }
        };
        let derived = derived_alarms(s);
        let alarms = ALARMS
            .iter()
            .filter_map(|def| {
                let a = s.alarms.get(def.code).copied().unwrap_or_default();
                let active = a.injected || derived.contains(&def.code);
                (active || a.latched).then_some(Alarm {
                    code: def.code,
                    level: def.level,
                    description: def.description,
                    active,
                })
            })
            .collect();
        let ambient_c = 24.0 + (self.index % 5) as f64 * 0.3 + noise(&mut s.rng, 0.1);
        let humidity_pct = 45.0 + noise(&mut s.rng, 1.0);
        CoolerReading {
            running: s.running,
            set_point_c: s.set_point_c,
            supply_c: round2(supply_c),
            return_c: round2(return_c),
            supply_bar: round2(supply_bar),
            return_bar: round2(return_bar),
            flow_m3h: round2(flow_m3h),
            power_w: power_w.round(),
            heat_load_w: heat_w.round(),
            ambient_c: round2(ambient_c),
            humidity_pct: round2(humidity_pct),
            circulation_pump,
            kind: kind_reading,
            alarms,
        }
    }

    /// Answers one `/cooler` request: (HTTP status, JSON body). `temp` is
    /// the raw `temp` query value.
    pub fn handle(
        &self,
        operation: Option<&str>,
        temp: Option<&str>,
        now: Instant,
    ) -> (u16, Value) {
        let Some(operation) = operation else {
            return error(
                400,
                format!("missing `operation`: use {}", OPERATIONS.join(", ")),
            );
        };
        match operation {
            "coolerState" => ok(self.state_json(now)),
            "minerInfo" => ok(self.miner_info(now)),
            "open" | "close" => {
                self.switch(operation == "open");
                ok(json!({ "running": operation == "open" }))
            }
            "reset" => {
                let cleared = self.reset();
                ok(json!({ "cleared": cleared }))
            }
            "setTemp" => {
                let Some(text) = temp else {
                    return error(400, "setTemp needs `temp=N` (°C)".into());
                };
                let Ok(celsius) = text.trim().parse::<f64>() else {
                    return error(400, format!("temp `{text}` is not a number"));
                };
                match self.set_temp(celsius) {
                    Ok(()) => ok(json!({ "setTemp": celsius })),
                    Err(e) => error(400, e),
                }
            }
            "pid" => {
                let r = self.reading(now);
                let output =
                    ((0.55 + 0.15 * (r.supply_c - r.set_point_c)).clamp(0.2, 1.0) * 100.0).round();
                ok(json!({
                    "kp": 2.0, "ki": 0.1, "kd": 0.0,
                    "setTemp": r.set_point_c,
                    "feedback": r.supply_c,
                    "output": if r.running { output } else { 0.0 },
                }))
            }
            other => error(
                400,
                format!("unknown operation `{other}`: use {}", OPERATIONS.join(", ")),
            ),
        }
    }

    fn state_json(&self, now: Instant) -> Value {
        let r = self.reading(now);
        let mut data = json!({
            "type": self.kind.name(),
            "model": self.kind.model(),
            "sn": self.serial,
            "firmware": FIRMWARE,
            "running": r.running,
            "setTemp": r.set_point_c,
            "supplyTemp": r.supply_c,
            "returnTemp": r.return_c,
            "supplyPressure": r.supply_bar,
            "returnPressure": r.return_bar,
            "flow": r.flow_m3h,
            "power": r.power_w,
            "heatLoad": r.heat_load_w,
            "ambientTemp": r.ambient_c,
            "humidity": r.humidity_pct,
            "circulationPump": { "run": r.circulation_pump },
            "alarms": r.alarms.iter().map(|a| json!({
                "code": a.code,
                "level": a.level.as_str(),
                "desc": a.description,
                "active": a.active,
            })).collect::<Vec<_>>(),
        });
        let extra = match r.kind {
            KindReading::Hk3 {
                tower_fans_rpm,
                spray_pump,
                infusion_pump,
                liquid_level_pct,
            } => json!({
                "towerFans": tower_fans_rpm.iter().enumerate().map(|(i, rpm)| json!({
                    "id": i + 1, "run": *rpm > 0.0, "speed": rpm,
                })).collect::<Vec<_>>(),
                "sprayPump": { "run": spray_pump },
                "infusionPump": { "run": infusion_pump },
                "liquidLevel": liquid_level_pct,
            }),
            KindReading::Immersion {
                secondary_pump,
                secondary_pump_hz,
                dry_cooler_hz,
                pdb_temp_c,
                level_sensors_pct,
            } => json!({
                "secondaryPump": { "run": secondary_pump, "freq": secondary_pump_hz },
                "dryCooler": { "run": dry_cooler_hz > 0.0, "freq": dry_cooler_hz },
                "pdbTemp": pdb_temp_c,
                "levelSensors": level_sensors_pct.iter().enumerate().map(|(i, l)| json!({
                    "id": i + 1, "level": l,
                })).collect::<Vec<_>>(),
            }),
        };
        if let (Some(d), Value::Object(e)) = (data.as_object_mut(), extra) {
            d.extend(e);
        }
        data
    }

    fn miner_info(&self, now: Instant) -> Value {
        let miners = self
            .miners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let list: Vec<Value> = miners
            .iter()
            .enumerate()
            .map(|(slot, m)| {
                let r = m.readings(now);
                json!({
                    "slot": slot + 1,
                    "ip": m.addr.to_string(),
                    "model": m.model.cli_name(),
                    "powered": m.powered(),
                    "mining": r.mining,
                    "power": r.power_w.round(),
                })
            })
            .collect();
        let total: f64 = list.iter().filter_map(|m| m["power"].as_f64()).sum::<f64>();
        json!({ "total": list.len(), "power": total, "miners": list })
    }
}

/// The supply temperature the loop heads for, and how fast.
fn supply_target(kind: CoolingKind, s: &CoolerState) -> (f64, f64) {
    let on = |code: &str| s.alarms.get(code).is_some_and(|a| a.injected);
    let flowing = s.running && !on("circulating_pump_fault") && !on("phase_failure");
    if !flowing {
        return (UNCOOLED_C, TAU_UNCOOLED_S);
    }
    // Lost heat rejection: the loop still flows but settles warmer.
    let degraded = match kind {
        CoolingKind::Hk3 => on("tower_fan_fault"),
        CoolingKind::Immersion => on("frequency_converter_fault"),
    };
    if degraded {
        (s.set_point_c + 12.0, TAU_UNCOOLED_S)
    } else {
        (s.set_point_c, TAU_COOLING_S)
    }
}

/// Alarms the loop raises by itself from its temperatures.
fn derived_alarms(s: &CoolerState) -> Vec<&'static str> {
    let mut out = Vec::new();
    if s.running && s.supply_c < s.set_point_c - LOW_MARGIN_C {
        out.push("supply_temp_low");
    }
    if s.supply_c > s.set_point_c + HIGH_MARGIN_C {
        out.push("supply_temp_high");
    }
    if s.supply_c < FREEZING_C {
        out.push("freezing");
    }
    out
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn ok(data: Value) -> (u16, Value) {
    (200, json!({ "code": 0, "msg": "ok", "data": data }))
}

fn error(status: u16, msg: String) -> (u16, Value) {
    (status, json!({ "code": status, "msg": msg }))
}

async fn cooler(
    State(container): State<Arc<Container>>,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let (status, body) = container.handle(
        query.get("operation").map(String::as_str),
        query.get("temp").map(String::as_str),
        Instant::now(),
    );
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
}

/// The container's HTTP API.
pub fn router(container: Arc<Container>) -> Router {
    Router::new()
        .route("/cooler", get(cooler))
        .with_state(container)
}

/// Serves one HTTP connection (port 80).
pub async fn serve(stream: TcpStream, container: Arc<Container>) {
    serve_http(stream, router(container)).await;
}

/// The sentry config block for this container: a `[[container]]` table.
pub fn container_config_toml(c: &Container) -> String {
    format!(
        "[[container]]\nname = \"{}\"\naddress = \"{}:80\"\nkind = \"{}\"\n",
        c.name(),
        c.addr,
        c.kind_name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hk3() -> Container {
        Container::new(0, Ipv4Addr::new(127, 204, 9, 1))
    }

    fn immersion() -> Container {
        Container::new(1, Ipv4Addr::new(127, 204, 9, 2))
    }

    #[test]
    fn even_is_hk3_and_odd_is_immersion() {
        assert_eq!(hk3().kind_name(), "hk3");
        assert_eq!(immersion().kind_name(), "immersion");
        let (status, body) = immersion().handle(Some("coolerState"), None, Instant::now());
        assert_eq!(status, 200);
        assert_eq!(body["data"]["type"], "immersion");
        assert!(body["data"]["dryCooler"]["freq"].as_f64().unwrap() > 0.0);
        assert_eq!(body["data"]["levelSensors"].as_array().unwrap().len(), 2);
        let (_, body) = hk3().handle(Some("coolerState"), None, Instant::now());
        assert_eq!(body["data"]["towerFans"].as_array().unwrap().len(), 3);
        assert!(body["data"]["flow"].as_f64().unwrap() > 100.0);
    }

    #[test]
    fn supply_follows_the_set_point_over_time() {
        let c = hk3();
        c.set_temp(20.0).unwrap();
        let later = Instant::now() + Duration::from_secs(600);
        let r = c.reading(later);
        assert!((r.supply_c - 20.0).abs() < 0.5, "{}", r.supply_c);
        assert!(r.return_c > r.supply_c + 3.0, "{r:?}");
    }

    #[test]
    fn switched_off_pumps_stop_and_liquid_warms() {
        let c = immersion();
        c.switch(false);
        let r = c.reading(Instant::now() + Duration::from_secs(1800));
        assert!(!r.running && !r.circulation_pump);
        assert_eq!(r.flow_m3h, 0.0);
        assert!(matches!(
            r.kind,
            KindReading::Immersion {
                secondary_pump: false,
                ..
            }
        ));
        assert!(r.supply_c > 50.0, "{}", r.supply_c);
        // Far above the set point: the loop raised supply_temp_high.
        assert!(r
            .alarms
            .iter()
            .any(|a| a.code == "supply_temp_high" && a.active));
    }

    #[test]
    fn latched_alarm_needs_reset_after_condition_clears() {
        let c = hk3();
        c.switch(false);
        let t = Instant::now() + Duration::from_secs(1800);
        assert!(c
            .reading(t)
            .alarms
            .iter()
            .any(|a| a.code == "supply_temp_high"));
        c.switch(true);
        let t = t + Duration::from_secs(1800);
        let r = c.reading(t);
        let a = r
            .alarms
            .iter()
            .find(|a| a.code == "supply_temp_high")
            .unwrap();
        assert!(!a.active, "latched only");
        assert!(c.reset() >= 1);
        assert!(c.reading(t).alarms.is_empty());
    }

    #[test]
    fn injected_alarms_have_levels_and_bad_codes_are_named() {
        let c = hk3();
        c.set_alarm("leakage", true).unwrap();
        c.set_alarm("tower_fan_fault", true).unwrap();
        let r = c.reading(Instant::now());
        let leak = r.alarms.iter().find(|a| a.code == "leakage").unwrap();
        assert_eq!(leak.level, AlarmLevel::Critical);
        assert!(matches!(
            r.kind,
            KindReading::Hk3 {
                tower_fans_rpm: [0.0, 0.0, 0.0],
                ..
            }
        ));
        let err = c.set_alarm("phase_failure", true).unwrap_err();
        assert!(err.contains("unknown alarm `phase_failure`") && err.contains("tower_fan_fault"));
        c.set_alarm("leakage", false).unwrap();
        c.set_alarm("tower_fan_fault", false).unwrap();
        assert!(c.reading(Instant::now()).alarms.is_empty());
        assert!(immersion().set_alarm("phase_failure", true).is_ok());
    }

    #[test]
    fn operations_and_bad_requests() {
        let c = hk3();
        let now = Instant::now();
        assert_eq!(c.handle(Some("setTemp"), Some("25.5"), now).0, 200);
        assert_eq!(c.set_point_c(), 25.5);
        let (status, body) = c.handle(Some("setTemp"), Some("50"), now);
        assert_eq!(status, 400);
        assert!(body["msg"].as_str().unwrap().contains("out of range"));
        assert_eq!(c.handle(Some("setTemp"), Some("NaN"), now).0, 400);
        assert_eq!(c.handle(Some("setTemp"), None, now).0, 400);
        let (status, body) = c.handle(Some("melt"), None, now);
        assert_eq!(status, 400);
        assert!(body["msg"].as_str().unwrap().contains("coolerState"));
        assert_eq!(c.handle(None, None, now).0, 400);
        assert_eq!(c.handle(Some("close"), None, now).0, 200);
        assert!(!c.running());
        assert_eq!(c.handle(Some("pid"), None, now).1["data"]["output"], 0.0);
        assert_eq!(c.handle(Some("minerInfo"), None, now).1["data"]["total"], 0);
    }

    #[test]
    fn config_block_names_the_container() {
        let text = container_config_toml(&immersion());
        assert!(text.starts_with("[[container]]\n"));
        assert!(text.contains("name = \"sim-1\""));
        assert!(text.contains("address = \"127.204.9.2:80\""));
        assert!(text.contains("kind = \"immersion\""));
    }
}
