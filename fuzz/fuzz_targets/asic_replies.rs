//! Device data as sentry-asic reads it: cooling-container JSON replies,
//! Modbus register words, asic-rs miner readings, the JSON a miner or the
//! commander hands over (Avalon `stats`, action params) and the address
//! and range texts of the allow-list. Every parser must return (a value or
//! an error), never panic, whatever the input; what it returns must keep
//! the bounds it documents.
//!
//! The first byte picks the parser family; the rest is its input:
//!
//! - 0: a container's HTTP body (JSON), as `ContainerClient::poll` maps it;
//! - 1: Modbus: register words, a register map and a meter's read blocks
//!   (built from the bytes);
//! - 2: an asic-rs `MinerData` reading (built from the bytes: asic-rs
//!   parses the firmware's own replies, this crate maps its readings);
//! - 3: JSON: Avalon `stats`, miner, container and relay action params;
//! - other: text: scan ranges, subnets, device addresses, names.
#![no_main]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use asic_rs::core::data::board::{BoardData, ChipData, MinerControlBoard};
use asic_rs::core::data::device::{DeviceInfo, HashAlgorithm, MinerHardware};
use asic_rs::core::data::fan::FanData;
use asic_rs::core::data::hashrate::{HashRate, HashRateUnit};
use asic_rs::core::data::message::{MessageSeverity, MinerComponent, MinerMessage};
use asic_rs::core::data::miner::{MinerData, MiningMode, TuningTarget};
use asic_rs::core::data::operating_state::OperatingState;
use asic_rs::core::data::pool::{PoolData, PoolGroupData, PoolURL};
use hashfleet_sentry_asic::alerts::{self, AlertRules};
use hashfleet_sentry_asic::allow::{self, AllowList, MAX_SCAN_HOSTS};
use hashfleet_sentry_asic::config::literal_v4;
use hashfleet_sentry_asic::container::{self, ContainerKind};
use hashfleet_sentry_asic::miners;
use hashfleet_sentry_asic::modbus::{self, MeterClient, MeterEntry, RegisterSpec, RegisterType};
use hashfleet_shared::codec;
use hashfleet_shared::wire::DeviceSnapshot;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use measurements::{AngularVelocity, Frequency, Power, Temperature, Voltage};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => container_reply(rest),
        1 => {
            let _ = modbus_words(&mut Unstructured::new(rest));
        }
        2 => {
            let mut u = Unstructured::new(rest);
            if let Ok(reading) = miner_data(&mut u) {
                miner_reading(&reading, &mut u);
            }
        }
        3 => json_params(rest),
        _ => texts(&String::from_utf8_lossy(rest)),
    }
});

/// A snapshot must go on the wire as it is.
fn encodes(s: &DeviceSnapshot) {
    codec::encode(s).expect("a device snapshot encodes");
}

// ---------------------------------------------------------------------------
// 0: containers.

fn container_reply(body: &[u8]) {
    let raw = String::from_utf8_lossy(body);
    let _ = container::clip(&raw, 120);
    let Ok(reply) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    // What `ContainerClient::call` takes from a reply: `code`, `msg`, `data`.
    let _ = reply.get("code").and_then(Value::as_i64);
    if let Some(m) = reply.get("msg").and_then(Value::as_str) {
        assert!(container::clip(m, 300).len() <= 300);
    }
    let data = reply.get("data").cloned().unwrap_or(Value::Null);
    for kind in [ContainerKind::Hk3, ContainerKind::Immersion] {
        for d in [&data, &reply] {
            if let Ok(s) = container::snapshot_from_reply("container-c1", kind, d, &raw) {
                assert!(s.raw.len() <= container::MAX_RAW, "raw over MAX_RAW");
                assert!(s.labels.values().all(|v| v.len() <= 64));
                assert!(s.metrics.values().all(|v| v.is_finite()));
                encodes(&s);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 1: Modbus.

fn register_type(u: &mut Unstructured) -> Result<RegisterType> {
    Ok(*u.choose(&[
        RegisterType::F32,
        RegisterType::U32,
        RegisterType::I32,
        RegisterType::U16,
    ])?)
}

fn word_order(u: &mut Unstructured) -> Result<modbus::WordOrder> {
    Ok(if u.arbitrary()? {
        modbus::WordOrder::HighFirst
    } else {
        modbus::WordOrder::LowFirst
    })
}

fn modbus_words(u: &mut Unstructured) -> Result<()> {
    // One value from its words.
    let words: Vec<u16> = (0..u.int_in_range(0..=3)?)
        .map(|_| u.arbitrary())
        .collect::<Result<_>>()?;
    let (kind, order, scale) = (register_type(u)?, word_order(u)?, u.arbitrary::<f64>()?);
    if let Some(v) = modbus::decode(&words, kind, order, scale) {
        assert!(v.is_finite());
    }

    // A register map: its reads, then a meter polled with words of them.
    let mut registers = BTreeMap::new();
    for name in modbus::REQUIRED_REGISTERS {
        registers.insert(name.to_string(), register_spec(u)?);
    }
    for i in 0..u.int_in_range(0..=12)? {
        registers.insert(format!("extra_{i}"), register_spec(u)?);
    }
    let plan = modbus::plan_reads(&registers);
    for &(start, count) in &plan {
        assert!((1..=125).contains(&count), "a read of {count} registers");
        assert!(u32::from(start) + u32::from(count) <= 65_537);
    }
    for r in registers.values() {
        let (from, to) = (
            u32::from(r.address),
            u32::from(r.address) + u32::from(r.kind.words()),
        );
        assert!(
            plan.iter()
                .any(|&(s, c)| u32::from(s) <= from && to <= u32::from(s) + u32::from(c)),
            "register {from}..{to} is in no read of {plan:?}"
        );
    }
    let entry = MeterEntry {
        name: "m1".into(),
        address: "10.0.0.9".into(),
        unit: u.arbitrary()?,
        word_order: word_order(u)?,
        registers,
        timeout_ms: modbus::DEFAULT_TIMEOUT_MS,
    };
    let Ok(meter) = MeterClient::new(entry) else {
        return Ok(());
    };
    // The blocks a poll reads: one per planned read (of the asked length:
    // `read_registers` refuses others), or fewer when the input runs out.
    let mut blocks = Vec::new();
    for &(start, count) in &plan {
        let mut words = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            words.push(u.arbitrary::<u16>()?);
        }
        blocks.push((start, words));
        if u.is_empty() {
            break;
        }
    }
    let s = meter.snapshot(&blocks);
    assert!(s.metrics.values().all(|v| v.is_finite()));
    encodes(&s);
    Ok(())
}

fn register_spec(u: &mut Unstructured) -> Result<RegisterSpec> {
    Ok(RegisterSpec {
        address: if u.arbitrary()? {
            u.int_in_range(0..=300)?
        } else {
            u.arbitrary()?
        },
        kind: register_type(u)?,
        scale: *u.choose(&[1.0, 0.1, 0.001, 1000.0, -1.0, f64::MAX])?,
    })
}

// ---------------------------------------------------------------------------
// 2: miners.

fn text(u: &mut Unstructured) -> Result<String> {
    let len = u.int_in_range(0..=24)?;
    let bytes = u.bytes(len)?;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

fn opt<T>(
    u: &mut Unstructured,
    f: impl FnOnce(&mut Unstructured) -> Result<T>,
) -> Result<Option<T>> {
    Ok(if u.arbitrary()? { Some(f(u)?) } else { None })
}

/// A number a device could report: often ordinary, sometimes anything
/// (NaN, infinities, negatives, huge).
fn number(u: &mut Unstructured) -> Result<f64> {
    Ok(match u.int_in_range(0..=3)? {
        0 => u.arbitrary()?,
        1 => f64::from(u.int_in_range(-50i32..=150)?),
        2 => f64::from(u.arbitrary::<u16>()?),
        _ => *u.choose(&[
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
        ])?,
    })
}

fn hashrate(u: &mut Unstructured) -> Result<HashRate> {
    Ok(HashRate {
        value: number(u)?,
        unit: *u.choose(&[
            HashRateUnit::Hash,
            HashRateUnit::KiloHash,
            HashRateUnit::MegaHash,
            HashRateUnit::GigaHash,
            HashRateUnit::TeraHash,
            HashRateUnit::PetaHash,
            HashRateUnit::ExaHash,
            HashRateUnit::ZettaHash,
            HashRateUnit::YottaHash,
        ])?,
        algo: HashAlgorithm::SHA256,
    })
}

fn celsius(u: &mut Unstructured) -> Result<Temperature> {
    Ok(Temperature::from_celsius(number(u)?))
}

fn board(u: &mut Unstructured) -> Result<BoardData> {
    let mut chips = Vec::new();
    for i in 0..u.int_in_range(0..=4)? {
        chips.push(ChipData {
            position: i,
            hashrate: opt(u, hashrate)?,
            temperature: opt(u, celsius)?,
            voltage: opt(u, |u| Ok(Voltage::from_volts(number(u)?)))?,
            frequency: opt(u, |u| Ok(Frequency::from_megahertz(number(u)?)))?,
            tuned: u.arbitrary()?,
            working: u.arbitrary()?,
        });
    }
    Ok(BoardData {
        position: u.arbitrary()?,
        hashrate: opt(u, hashrate)?,
        expected_hashrate: opt(u, hashrate)?,
        board_temperature: opt(u, celsius)?,
        inlet_chip_temperature: opt(u, celsius)?,
        outlet_chip_temperature: opt(u, celsius)?,
        expected_chips: u.arbitrary()?,
        working_chips: u.arbitrary()?,
        serial_number: opt(u, text)?,
        chips,
        voltage: None,
        frequency: None,
        tuned: u.arbitrary()?,
        active: u.arbitrary()?,
    })
}

fn pool(u: &mut Unstructured) -> Result<PoolData> {
    Ok(PoolData {
        position: u.arbitrary()?,
        url: opt(u, |u| Ok(PoolURL::from(text(u)?)))?,
        accepted_shares: u.arbitrary()?,
        rejected_shares: u.arbitrary()?,
        last_share_time: u.arbitrary()?,
        active: u.arbitrary()?,
        alive: u.arbitrary()?,
        user: opt(u, text)?,
    })
}

fn message(u: &mut Unstructured) -> Result<MinerMessage> {
    Ok(MinerMessage {
        timestamp: u.arbitrary()?,
        code: u.arbitrary()?,
        message: text(u)?,
        severity: u
            .choose(&[
                MessageSeverity::Error,
                MessageSeverity::Warning,
                MessageSeverity::Info,
            ])?
            .clone(),
        component: match u.int_in_range(0..=4)? {
            0 => None,
            1 => Some(MinerComponent::ControlBoard {}),
            2 => Some(MinerComponent::HashBoard {
                idx: u.arbitrary()?,
                chip_idx: u.arbitrary()?,
            }),
            3 => Some(MinerComponent::Fan {
                idx: u.arbitrary()?,
            }),
            _ => Some(MinerComponent::PowerSupply {
                idx: u.arbitrary()?,
            }),
        },
    })
}

fn miner_data(u: &mut Unstructured) -> Result<MinerData> {
    let mac = match u.int_in_range(0..=3)? {
        0 => None,
        1 => Some(macaddr::MacAddr6::from(u.arbitrary::<[u8; 6]>()?).into()),
        2 => Some(macaddr::MacAddr8::from(u.arbitrary::<[u8; 8]>()?).into()),
        _ => Some(macaddr::MacAddr6::from(*u.choose(&[[0u8; 6], [0xff; 6]])?).into()),
    };
    let hashboards = (0..u.int_in_range(0..=5)?)
        .map(|_| board(u))
        .collect::<Result<_>>()?;
    let fans = (0..u.int_in_range(0..=5)?)
        .map(|_| {
            Ok(FanData {
                position: u.arbitrary()?,
                rpm: opt(u, |u| Ok(AngularVelocity::from_rpm(number(u)?)))?,
            })
        })
        .collect::<Result<_>>()?;
    let pools = (0..u.int_in_range(0..=2)?)
        .map(|_| {
            Ok(PoolGroupData {
                name: text(u)?,
                quota: u.arbitrary()?,
                pools: (0..u.int_in_range(0..=10)?)
                    .map(|_| pool(u))
                    .collect::<Result<_>>()?,
            })
        })
        .collect::<Result<_>>()?;
    let messages = (0..u.int_in_range(0..=12)?)
        .map(|_| message(u))
        .collect::<Result<_>>()?;
    let make = text(u)?;
    Ok(MinerData {
        schema_version: "0.8.6".into(),
        timestamp: u.arbitrary()?,
        ip: IpAddr::V4(Ipv4Addr::from(u.arbitrary::<u32>()?)),
        mac,
        device_info: DeviceInfo {
            make: if u.arbitrary()? {
                "AvalonMiner".into()
            } else {
                make
            },
            model: text(u)?,
            hardware: MinerHardware {
                fans: u.arbitrary()?,
                boards: None,
            },
            firmware: text(u)?,
            algo: HashAlgorithm::SHA256,
        },
        serial_number: opt(u, text)?,
        hostname: opt(u, text)?,
        api_version: None,
        firmware_version: opt(u, text)?,
        control_board_version: opt(u, |u| {
            Ok(MinerControlBoard {
                known: u.arbitrary()?,
                name: text(u)?,
            })
        })?,
        expected_hashboards: u.arbitrary()?,
        hashboards,
        hashrate: opt(u, hashrate)?,
        expected_hashrate: opt(u, hashrate)?,
        expected_chips: u.arbitrary()?,
        total_chips: u.arbitrary()?,
        expected_fans: u.arbitrary()?,
        fans,
        psu_fans: vec![],
        average_temperature: opt(u, celsius)?,
        fluid_temperature: opt(u, celsius)?,
        outlet_fluid_temperature: None,
        wattage: opt(u, |u| Ok(Power::from_watts(number(u)?)))?,
        tuning_percent: None,
        tuning_target: match u.int_in_range(0..=3)? {
            0 => None,
            1 => Some(TuningTarget::Power(Power::from_watts(number(u)?))),
            2 => Some(TuningTarget::MiningMode(*u.choose(&[
                MiningMode::Low,
                MiningMode::Normal,
                MiningMode::High,
            ])?)),
            _ => Some(TuningTarget::Preset(text(u)?)),
        },
        scaled_tuning_target: None,
        tuning_capabilities: None,
        efficiency: u.arbitrary()?,
        light_flashing: u.arbitrary()?,
        messages,
        uptime: opt(u, |u| {
            Ok(Duration::new(
                u.arbitrary()?,
                u.int_in_range(0..=999_999_999)?,
            ))
        })?,
        is_mining: u.arbitrary()?,
        operating_state: opt(u, |u| Ok(OperatingState::from_label(&text(u)?)))?.flatten(),
        devfee_connected: None,
        pools,
        best_share: None,
        session_best_share: None,
    })
}

fn miner_reading(reading: &MinerData, u: &mut Unstructured) {
    let _ = miners::has_readings(reading);
    let _ = miners::needs_soft_off_probe(reading);
    let _ = miners::miner_state(reading);
    // The default rules, and the input's own when they pass validation
    // (the only rules a poller runs with), from the rest of the input.
    let mut rules = vec![AlertRules::default()];
    let custom = AlertRules {
        board_temp_warn_c: u.arbitrary().unwrap_or(75.0),
        board_temp_crit_c: u.arbitrary().unwrap_or(80.0),
        chip_temp_warn_c: u.arbitrary().unwrap_or(85.0),
        chip_temp_crit_c: u.arbitrary().unwrap_or(95.0),
        hashrate_low_ratio: u.arbitrary().unwrap_or(0.8),
        fan_min_rpm: u.arbitrary().unwrap_or(300.0),
        max_firmware_alerts: u.int_in_range(0..=16).unwrap_or(8),
    };
    if custom.validate().is_ok() {
        rules.push(custom);
    }
    for rules in &rules {
        let alerts = alerts::miner_alerts(reading, rules);
        assert!(
            alerts
                .iter()
                .filter(|a| a.code.starts_with(alerts::FIRMWARE_PREFIX))
                .count()
                <= rules.max_firmware_alerts
        );
        match miners::snapshot(reading, rules) {
            Some(s) => {
                assert_eq!(Some(&s.id), miners::device_id(reading).as_ref());
                assert!(s.raw.len() <= miners::RAW_MAX, "raw over RAW_MAX");
                assert!(s.labels.values().all(|v| v.chars().count() <= 128));
                assert!(s.metrics.values().all(|v| v.is_finite()));
                encodes(&s);
            }
            None => assert!(miners::device_id(reading).is_none()),
        }
    }
}

// ---------------------------------------------------------------------------
// 3: JSON from a miner or in an action's params.

fn json_params(bytes: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let _ = miners::soft_off_flag(&v);
    for method in [
        "reboot",
        "setPowerMode",
        "setLED",
        "setupPools",
        "setPowerLimit",
        "unknown",
    ] {
        if let Ok(action) = miners::parse_action(method, &v) {
            let _ = action.describe();
            if let miners::MinerAction::SetupPools(pools) = &action {
                assert!((1..=miners::MAX_POOLS_CONFIG).contains(&pools.len()));
            }
        }
    }
    for method in container::METHODS.iter().copied().chain(["other"]) {
        let _ = container::action_query(method, &v);
    }
    let _ = modbus::channel_param(&v);
    if let Some(f) = v.as_f64() {
        let _ = miners::format_hashrate(f);
    }
}

// ---------------------------------------------------------------------------
// Other: texts of the config that the allow-list is made of.

fn texts(t: &str) {
    let mut scan = Vec::new();
    if let Ok(r) = allow::parse_range(t) {
        assert!(r.start <= r.end);
        scan.push(r);
    }
    if let Ok(r) = allow::parse_subnet(t) {
        assert!(r.start <= r.end && r.len() <= MAX_SCAN_HOSTS);
        scan.push(r);
    }
    let mut devices = Vec::new();
    if let Ok(addr) = container::parse_address(t, 502) {
        assert_ne!(addr.port(), 0);
        if let Ok(v4) = literal_v4(&addr, "device") {
            devices.push((v4, "device".to_string()));
        }
    }
    if let Ok(list) = AllowList::new(scan.clone(), devices.clone()) {
        for r in &scan {
            assert!(list.contains(IpAddr::V4(r.start)) && list.contains(IpAddr::V4(r.end)));
        }
        for (ip, _) in &devices {
            assert!(allow::check(&list, IpAddr::V4(*ip)).is_ok());
        }
        let _ = list.describe();
        assert!(list.scan_hosts().len() <= MAX_SCAN_HOSTS);
    }
    let _ = container::check_name(t);
    for max in [3, 16, 64] {
        assert!(container::clip(t, max).len() <= max);
    }
}
