//! The emulated miner: its model, its state, and the readings it gives.
//! Pure apart from the clock and the noise source, so protocol modules only
//! format what [`Miner::readings`] says and call the mutators here.

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The models the sim emulates, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Model {
    /// Bitmain Antminer S21, stock firmware (bmminer RPC on 4028, CGI on 80).
    AntminerS21,
    /// MicroBT WhatsMiner M56S, stock btminer firmware.
    WhatsminerM56S,
    /// Canaan AvalonMiner A1466, stock firmware (plain-text CGMiner RPC).
    AvalonA1466,
}

/// The firmware families: which protocol module serves a miner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Antminer,
    Whatsminer,
    Avalon,
}

impl Model {
    pub const ALL: [Model; 3] = [
        Model::AntminerS21,
        Model::WhatsminerM56S,
        Model::AvalonA1466,
    ];

    /// The command-line name, e.g. `antminer-s21`.
    pub fn cli_name(&self) -> &'static str {
        match self {
            Model::AntminerS21 => "antminer-s21",
            Model::WhatsminerM56S => "whatsminer-m56s",
            Model::AvalonA1466 => "avalon-a1466",
        }
    }

    pub fn parse(name: &str) -> Result<Model, String> {
        let name = name.trim();
        if name.eq_ignore_ascii_case("avalon-a1346") {
            // Asked for by name in our issue, but asic-rs 0.8.6 has no such
            // model, so it could not identify the emulation as real.
            return Err(
                "avalon-a1346 is not emulated: asic-rs 0.8.6 does not know that model; use avalon-a1466"
                    .into(),
            );
        }
        Model::ALL
            .into_iter()
            .find(|m| m.cli_name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                format!(
                    "unknown model `{name}`: use {}",
                    Model::ALL.map(|m| m.cli_name()).join(", ")
                )
            })
    }

    pub fn family(&self) -> Family {
        match self {
            Model::AntminerS21 => Family::Antminer,
            Model::WhatsminerM56S => Family::Whatsminer,
            Model::AvalonA1466 => Family::Avalon,
        }
    }

    /// The make as asic-rs reports it.
    pub fn make(&self) -> &'static str {
        match self {
            Model::AntminerS21 => "AntMiner",
            Model::WhatsminerM56S => "WhatsMiner",
            Model::AvalonA1466 => "AvalonMiner",
        }
    }

    /// Nominal hashrate in normal mode, TH/s.
    pub fn nominal_ths(&self) -> f64 {
        match self {
            Model::AntminerS21 => 200.0,
            Model::WhatsminerM56S => 212.0,
            Model::AvalonA1466 => 150.0,
        }
    }

    /// Wall power in normal mode, W.
    pub fn nominal_w(&self) -> f64 {
        match self {
            Model::AntminerS21 => 3500.0,
            Model::WhatsminerM56S => 5550.0,
            Model::AvalonA1466 => 3230.0,
        }
    }

    /// Hashboards, as asic-rs's hardware table has them for the model.
    pub fn boards(&self) -> usize {
        match self {
            Model::WhatsminerM56S => 4,
            _ => 3,
        }
    }

    pub fn chips_per_board(&self) -> u32 {
        match self {
            Model::AntminerS21 => 108,
            Model::WhatsminerM56S => 152,
            Model::AvalonA1466 => 176,
        }
    }

    pub fn fans(&self) -> usize {
        match self {
            Model::AntminerS21 => 4,
            Model::WhatsminerM56S => 2,
            Model::AvalonA1466 => 2,
        }
    }

    /// Whether the firmware has low/high power modes besides normal/sleep.
    pub fn has_power_levels(&self) -> bool {
        !matches!(self, Model::AvalonA1466)
    }

    /// TCP ports a real unit of this model answers on.
    pub fn ports(&self) -> &'static [u16] {
        match self {
            Model::AntminerS21 => &[80, 4028],
            Model::WhatsminerM56S => &[80, 4028, 4433],
            Model::AvalonA1466 => &[80, 4028],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerMode {
    Normal,
    Sleep,
    Low,
    High,
}

impl PowerMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            PowerMode::Normal => "normal",
            PowerMode::Sleep => "sleep",
            PowerMode::Low => "low",
            PowerMode::High => "high",
        }
    }

    /// (hashrate factor, power factor) relative to nominal.
    fn factors(&self) -> (f64, f64) {
        match self {
            PowerMode::Normal => (1.0, 1.0),
            PowerMode::Low => (0.75, 0.68),
            PowerMode::High => (1.12, 1.2),
            PowerMode::Sleep => (0.0, 0.0),
        }
    }
}

/// Injected faults; all off means healthy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Chips run ~25 °C hotter than they should.
    pub overheat: bool,
    /// Every fan stops.
    pub fan_stop: bool,
    /// The first hashboard is gone: no chips, no hashrate.
    pub hashboard_loss: bool,
    /// The miner answers nothing (connections are dropped).
    pub offline: bool,
    /// Each reply is delayed by this long.
    pub slow: Option<Duration>,
    /// Replies are cut short and garbled.
    pub malformed: bool,
    /// Every pool is dead.
    pub pools_dead: bool,
}

/// One injectable fault, as named on the command line and in the control API.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    Overheat,
    FanStop,
    HashboardLoss,
    Offline,
    Slow(Duration),
    Malformed,
    PoolsDead,
}

impl Fault {
    /// `overheat`, `fan-stop`, `hashboard-loss`, `offline`, `slow` (2 s),
    /// `slow=MS`, `malformed`, `pools-dead`.
    pub fn parse(text: &str) -> Result<Fault, String> {
        let (name, arg) = match text.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (text.trim(), None),
        };
        let fault = match name {
            "overheat" => Fault::Overheat,
            "fan-stop" => Fault::FanStop,
            "hashboard-loss" => Fault::HashboardLoss,
            "offline" => Fault::Offline,
            "malformed" => Fault::Malformed,
            "pools-dead" => Fault::PoolsDead,
            "slow" => {
                let ms = match arg {
                    None => 2000,
                    Some(a) => a.parse::<u64>().map_err(|_| {
                        format!("`slow={a}`: the delay is whole milliseconds, e.g. slow=1500")
                    })?,
                };
                if ms > 600_000 {
                    return Err(format!("`slow={ms}`: at most 600000 ms"));
                }
                return Ok(Fault::Slow(Duration::from_millis(ms)));
            }
            other => {
                return Err(format!(
                    "unknown fault `{other}`: use overheat, fan-stop, hashboard-loss, offline, slow[=MS], malformed or pools-dead"
                ))
            }
        };
        if arg.is_some() {
            return Err(format!("fault `{name}` takes no value"));
        }
        Ok(fault)
    }

    pub fn apply(&self, faults: &mut Faults, on: bool) {
        match self {
            Fault::Overheat => faults.overheat = on,
            Fault::FanStop => faults.fan_stop = on,
            Fault::HashboardLoss => faults.hashboard_loss = on,
            Fault::Offline => faults.offline = on,
            Fault::Slow(d) => faults.slow = on.then_some(*d),
            Fault::Malformed => faults.malformed = on,
            Fault::PoolsDead => faults.pools_dead = on,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub url: String,
    pub user: String,
    pub password: String,
}

/// What a miner reports at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Readings {
    /// Mining now (false when asleep, booting or powered off).
    pub mining: bool,
    /// 5-second hashrate, TH/s.
    pub ths_5s: f64,
    /// Average since boot, TH/s.
    pub ths_avg: f64,
    /// What the model should do in the current mode, TH/s.
    pub expected_ths: f64,
    pub power_w: f64,
    pub boards: Vec<BoardReading>,
    pub fans_rpm: Vec<u32>,
    /// Seconds since the miner (re)started mining.
    pub uptime_s: u64,
    pub mode: PowerMode,
    pub power_limit_w: Option<f64>,
    pub led: bool,
    pub pools: Vec<Pool>,
    pub pools_alive: bool,
    pub accepted: u64,
    pub rejected: u64,
    pub ambient_c: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BoardReading {
    pub present: bool,
    pub ths: f64,
    pub chips: u32,
    pub chip_temp_c: f64,
    pub board_temp_c: f64,
    pub freq_mhz: f64,
}

/// The mutable part of a miner.
#[derive(Debug)]
pub struct MinerState {
    pub mode: PowerMode,
    pub power_limit_w: Option<f64>,
    pub led: bool,
    pub pools: Vec<Pool>,
    pub faults: Faults,
    /// When mining (re)started.
    pub started: Instant,
    /// Booting until then: unreachable.
    pub booting_until: Option<Instant>,
    /// The relay feeding it is open: no power at all.
    pub powered_off: bool,
    /// Noise state (a slow random walk around 1.0).
    noise: f64,
    rng: fastrand::Rng,
}

/// One emulated miner. Shared by its protocol tasks.
#[derive(Debug)]
pub struct Miner {
    pub index: usize,
    pub addr: Ipv4Addr,
    pub model: Model,
    pub mac: [u8; 6],
    pub serial: String,
    pub hostname: String,
    /// How long a reboot or power-on keeps it unreachable.
    pub boot_time: Duration,
    state: Mutex<MinerState>,
}

/// What a request finds when it reaches a miner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    Up,
    /// Off, booting or faulted offline: drop the connection.
    Down,
}

impl Miner {
    pub fn new(index: usize, addr: Ipv4Addr, model: Model, boot_time: Duration) -> Miner {
        let o = addr.octets();
        // Locally administered, unique per address.
        let mac = [0x02, 0x48, o[0], o[1], o[2], o[3]];
        let serial = format!(
            "{}{:02X}{:02X}{:02X}{:06}",
            match model.family() {
                Family::Antminer => "JYZZ",
                Family::Whatsminer => "HTM3",
                Family::Avalon => "AVA1",
            },
            o[1],
            o[2],
            o[3],
            index
        );
        let hostname = format!("{}-{}-{}-{}", model.cli_name(), o[1], o[2], o[3]);
        let pools = (0..3)
            .map(|i| Pool {
                url: format!("stratum+tcp://pool{i}.hashfleet.invalid:3333"),
                user: format!("hashfleet.{}x{}x{}", o[1], o[2], o[3]),
                password: "x".into(),
            })
            .collect();
        let seed = u64::from(u32::from(addr));
        Miner {
            index,
            addr,
            model,
            mac,
            serial,
            hostname,
            boot_time,
            state: Mutex::new(MinerState {
                mode: PowerMode::Normal,
                power_limit_w: None,
                led: false,
                pools,
                faults: Faults::default(),
                // Pretend it has been up for a while, different per miner.
                started: Instant::now()
                    .checked_sub(Duration::from_secs(3600 + seed % 86_400))
                    .unwrap_or_else(Instant::now),
                booting_until: None,
                powered_off: false,
                noise: 1.0,
                rng: fastrand::Rng::with_seed(seed),
            }),
        }
    }

    /// `aa:bb:cc:dd:ee:ff`, upper case as firmwares print it.
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MinerState> {
        // A panic while holding the lock cannot leave the state half-made
        // (every mutation is one assignment), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub fn set_fault(&self, fault: Fault, on: bool) {
        fault.apply(&mut self.lock().faults, on);
    }

    pub fn clear_faults(&self) {
        self.lock().faults = Faults::default();
    }

    pub fn reachability(&self, now: Instant) -> Reachability {
        let mut s = self.lock();
        if s.powered_off || s.faults.offline {
            return Reachability::Down;
        }
        match s.booting_until {
            Some(t) if now < t => Reachability::Down,
            Some(_) => {
                s.booting_until = None;
                Reachability::Up
            }
            None => Reachability::Up,
        }
    }

    pub fn mode(&self) -> PowerMode {
        self.lock().mode
    }

    /// Sleep stops hashing at once; waking restarts the uptime clock.
    pub fn set_mode(&self, mode: PowerMode) {
        let mut s = self.lock();
        if s.mode == PowerMode::Sleep && mode != PowerMode::Sleep {
            s.started = Instant::now();
        }
        s.mode = mode;
    }

    pub fn set_led(&self, on: bool) {
        self.lock().led = on;
    }

    pub fn set_pools(&self, pools: Vec<Pool>) {
        self.lock().pools = pools;
    }

    pub fn pools(&self) -> Vec<Pool> {
        self.lock().pools.clone()
    }

    /// `None` lifts the limit.
    pub fn set_power_limit(&self, watts: Option<f64>) {
        self.lock().power_limit_w = watts;
    }

    /// Unreachable for `boot_time`, then back with a fresh uptime.
    pub fn reboot(&self) {
        let now = Instant::now();
        let mut s = self.lock();
        s.booting_until = Some(now + self.boot_time);
        s.started = now + self.boot_time;
    }

    /// The relay feeding this miner opened (`false`) or closed (`true`).
    pub fn set_power(&self, on: bool) {
        let now = Instant::now();
        let mut s = self.lock();
        if on && s.powered_off {
            s.powered_off = false;
            s.booting_until = Some(now + self.boot_time);
            s.started = now + self.boot_time;
        } else if !on {
            s.powered_off = true;
        }
    }

    pub fn powered(&self) -> bool {
        !self.lock().powered_off
    }

    /// The readings at `now`. Each call moves the noise a little.
    pub fn readings(&self, now: Instant) -> Readings {
        let model = self.model;
        let mut s = self.lock();
        let step = (s.rng.f64() - 0.5) * 0.01;
        s.noise = (s.noise + step).clamp(0.97, 1.03);
        let noise = s.noise;
        let booting = s.booting_until.is_some_and(|t| now < t);
        let alive = !s.powered_off && !booting;
        let (mut hash_factor, mut power_factor) = s.mode.factors();
        if let Some(limit) = s.power_limit_w {
            let cap = (limit / model.nominal_w()).clamp(0.0, 1.3);
            if power_factor > cap {
                // Hashrate falls a bit slower than power when limited.
                hash_factor *= (cap / power_factor).powf(0.85);
                power_factor = cap;
            }
        }
        let boards_total = model.boards();
        let present_boards = if s.faults.hashboard_loss {
            boards_total - 1
        } else {
            boards_total
        };
        let mining = alive && s.mode != PowerMode::Sleep;
        let expected_ths = model.nominal_ths() * hash_factor;
        let board_share = present_boards as f64 / boards_total as f64;
        let ths_5s = if mining {
            expected_ths * board_share * noise
        } else {
            0.0
        };
        let ths_avg = if mining {
            expected_ths * board_share
        } else {
            0.0
        };
        // Control board and fans draw ~15 W asleep; hashboards the rest.
        let power_w = if !alive {
            0.0
        } else if mining {
            15.0 + (model.nominal_w() - 15.0) * power_factor * board_share * noise
        } else {
            15.0
        };
        let ambient_c = 25.0;
        let load = if mining { power_factor } else { 0.0 };
        let heat = if s.faults.overheat { 27.0 } else { 0.0 };
        let fan_heat = if s.faults.fan_stop && mining {
            20.0
        } else {
            0.0
        };
        let chip_temp = ambient_c + 45.0 * load + heat + fan_heat + (noise - 1.0) * 30.0;
        let board_temp = ambient_c + 35.0 * load + heat * 0.8 + fan_heat * 0.8;
        let boards = (0..boards_total)
            .map(|i| {
                let present = !(s.faults.hashboard_loss && i == 0);
                BoardReading {
                    present,
                    ths: if present && mining {
                        ths_5s / present_boards as f64
                    } else {
                        0.0
                    },
                    chips: if present { model.chips_per_board() } else { 0 },
                    chip_temp_c: if present && alive { chip_temp } else { 0.0 },
                    board_temp_c: if present && alive { board_temp } else { 0.0 },
                    freq_mhz: if present && mining {
                        490.0 * hash_factor
                    } else {
                        0.0
                    },
                }
            })
            .collect();
        let fans_rpm = (0..model.fans())
            .map(|i| {
                if !alive || s.faults.fan_stop {
                    0
                } else {
                    let base = if mining {
                        3000.0 + 2800.0 * load
                    } else {
                        1200.0
                    };
                    (base + i as f64 * 40.0 + (noise - 1.0) * 2000.0) as u32
                }
            })
            .collect();
        let uptime_s = if alive {
            now.saturating_duration_since(s.started).as_secs()
        } else {
            0
        };
        let accepted = if mining {
            uptime_s / 6 + u64::from(self.addr.octets()[3])
        } else {
            uptime_s / 6
        };
        Readings {
            mining,
            ths_5s,
            ths_avg,
            expected_ths,
            power_w,
            boards,
            fans_rpm,
            uptime_s,
            mode: s.mode,
            power_limit_w: s.power_limit_w,
            led: s.led,
            pools: s.pools.clone(),
            pools_alive: !s.faults.pools_dead,
            accepted,
            rejected: accepted / 500,
            ambient_c,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn miner() -> Miner {
        Miner::new(
            0,
            Ipv4Addr::new(127, 9, 0, 1),
            Model::AntminerS21,
            Duration::from_millis(200),
        )
    }

    #[test]
    fn healthy_miner_hashes_near_nominal() {
        let m = miner();
        let r = m.readings(Instant::now());
        assert!(r.mining);
        assert!((r.ths_5s - 200.0).abs() < 200.0 * 0.04, "{}", r.ths_5s);
        assert!((r.power_w - 3500.0).abs() < 3500.0 * 0.04, "{}", r.power_w);
        assert!(r.boards.iter().all(|b| b.present && b.chip_temp_c < 75.0));
        assert!(r.fans_rpm.iter().all(|&f| f > 4000));
    }

    #[test]
    fn sleep_stops_hashing_and_drops_power() {
        let m = miner();
        m.set_mode(PowerMode::Sleep);
        let r = m.readings(Instant::now());
        assert_eq!(r.ths_5s, 0.0);
        assert!(r.power_w < 50.0);
        m.set_mode(PowerMode::Normal);
        assert!(m.readings(Instant::now()).ths_5s > 150.0);
    }

    #[test]
    fn faults_show_in_readings() {
        let m = miner();
        m.set_fault(Fault::Overheat, true);
        assert!(m.readings(Instant::now()).boards[1].chip_temp_c > 85.0);
        m.set_fault(Fault::HashboardLoss, true);
        let r = m.readings(Instant::now());
        assert!(!r.boards[0].present);
        assert!(r.ths_5s < 200.0 * 0.7);
        m.set_fault(Fault::FanStop, true);
        assert!(m.readings(Instant::now()).fans_rpm.iter().all(|&f| f == 0));
        m.clear_faults();
        assert_eq!(m.faults(), Faults::default());
    }

    #[test]
    fn reboot_and_power_cycle_take_it_down_then_back() {
        let m = miner();
        m.reboot();
        assert_eq!(m.reachability(Instant::now()), Reachability::Down);
        assert_eq!(
            m.reachability(Instant::now() + Duration::from_millis(300)),
            Reachability::Up
        );
        m.set_power(false);
        assert_eq!(m.reachability(Instant::now()), Reachability::Down);
        assert_eq!(m.readings(Instant::now()).power_w, 0.0);
        m.set_power(true);
        assert_eq!(m.reachability(Instant::now()), Reachability::Down);
        assert_eq!(
            m.reachability(Instant::now() + Duration::from_millis(300)),
            Reachability::Up
        );
    }

    #[test]
    fn power_limit_caps_power_and_hashrate() {
        let m = miner();
        m.set_power_limit(Some(2800.0));
        let r = m.readings(Instant::now());
        assert!(r.power_w <= 2800.0 * 1.04, "{}", r.power_w);
        assert!(r.ths_5s < 195.0);
    }

    #[test]
    fn fault_names_parse_and_bad_ones_are_named() {
        assert_eq!(Fault::parse("overheat"), Ok(Fault::Overheat));
        assert_eq!(
            Fault::parse("slow=250"),
            Ok(Fault::Slow(Duration::from_millis(250)))
        );
        assert!(Fault::parse("melt")
            .unwrap_err()
            .contains("unknown fault `melt`"));
        assert!(Fault::parse("slow=abc").is_err());
        assert!(Fault::parse("overheat=1").is_err());
    }
}
