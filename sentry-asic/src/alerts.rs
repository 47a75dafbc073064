//! Alert rules for ASIC miners: pure checks over one asic-rs reading, so
//! every threshold is tested without a socket.
//!
//! Codes are stable strings the commander can key on; a message says what
//! was measured and against which threshold. Severities follow MiningOS:
//! PCB warning at 75 °C (high), critical at 80 °C; `hashrate_low` medium;
//! `all_pools_dead` critical.

use asic_rs::core::data::board::BoardData;
use asic_rs::core::data::message::{MessageSeverity, MinerComponent};
use asic_rs::core::data::miner::MinerData;
use hashfleet_shared::wire::{DeviceAlert, Severity};
use serde::Deserialize;

/// `temp_critical`: a board or chip temperature at or over its critical threshold.
pub const TEMP_CRITICAL: &str = "temp_critical";
/// `temp_high`: a board or chip temperature at or over its warning threshold.
pub const TEMP_HIGH: &str = "temp_high";
/// `fan_failure`: a fan (nearly) stopped while mining, or fewer fans than the model has.
pub const FAN_FAILURE: &str = "fan_failure";
/// `hashboard_missing`: fewer boards than the model has, or a board without working chips.
pub const HASHBOARD_MISSING: &str = "hashboard_missing";
/// `hashrate_low`: mining below `hashrate_low_ratio` of the expected hashrate.
pub const HASHRATE_LOW: &str = "hashrate_low";
/// `all_pools_dead`: every configured pool with a known status is dead.
pub const ALL_POOLS_DEAD: &str = "all_pools_dead";
/// Prefix of alerts that carry a firmware message: `firmware_<code>`.
pub const FIRMWARE_PREFIX: &str = "firmware_";

/// Longest message text taken from a firmware message, in characters.
const MAX_FIRMWARE_TEXT: usize = 160;
/// How many over-threshold findings one temperature alert lists.
const MAX_FINDINGS: usize = 3;

/// Thresholds for [`miner_alerts`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertRules {
    /// Hashboard (PCB) temperature raising `temp_high`, °C.
    pub board_temp_warn_c: f64,
    /// Hashboard (PCB) temperature raising `temp_critical`, °C.
    pub board_temp_crit_c: f64,
    /// Chip temperature raising `temp_high`, °C.
    pub chip_temp_warn_c: f64,
    /// Chip temperature raising `temp_critical`, °C.
    pub chip_temp_crit_c: f64,
    /// `hashrate_low` below this fraction of the expected hashrate.
    pub hashrate_low_ratio: f64,
    /// A fan below this speed while mining counts as stopped, rpm.
    pub fan_min_rpm: f64,
    /// At most this many firmware messages become alerts.
    pub max_firmware_alerts: usize,
}

impl Default for AlertRules {
    fn default() -> Self {
        AlertRules {
            board_temp_warn_c: 75.0,
            board_temp_crit_c: 80.0,
            chip_temp_warn_c: 85.0,
            chip_temp_crit_c: 95.0,
            hashrate_low_ratio: 0.8,
            fan_min_rpm: 300.0,
            max_firmware_alerts: 8,
        }
    }
}

impl AlertRules {
    /// Checks the thresholds make sense; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let temps = [
            ("board_temp_warn_c", self.board_temp_warn_c),
            ("board_temp_crit_c", self.board_temp_crit_c),
            ("chip_temp_warn_c", self.chip_temp_warn_c),
            ("chip_temp_crit_c", self.chip_temp_crit_c),
        ];
        for (name, value) in temps {
            if !value.is_finite() || value <= 0.0 || value > 200.0 {
                return Err(format!(
                    "{name} = {value}: use a temperature in °C, above 0 and at most 200"
                ));
            }
        }
        if self.board_temp_warn_c > self.board_temp_crit_c {
            return Err(format!(
                "board_temp_warn_c ({}) is above board_temp_crit_c ({}): the warning must come first",
                self.board_temp_warn_c, self.board_temp_crit_c
            ));
        }
        if self.chip_temp_warn_c > self.chip_temp_crit_c {
            return Err(format!(
                "chip_temp_warn_c ({}) is above chip_temp_crit_c ({}): the warning must come first",
                self.chip_temp_warn_c, self.chip_temp_crit_c
            ));
        }
        if !(self.hashrate_low_ratio > 0.0 && self.hashrate_low_ratio <= 1.0) {
            return Err(format!(
                "hashrate_low_ratio = {}: use a fraction above 0 and at most 1, e.g. 0.8",
                self.hashrate_low_ratio
            ));
        }
        if !self.fan_min_rpm.is_finite() || self.fan_min_rpm < 0.0 {
            return Err(format!(
                "fan_min_rpm = {}: use a speed of 0 rpm or more",
                self.fan_min_rpm
            ));
        }
        Ok(())
    }
}

/// The alerts one reading raises, most severe first.
pub fn miner_alerts(data: &MinerData, rules: &AlertRules) -> Vec<DeviceAlert> {
    let mut alerts = Vec::new();
    alerts.extend(temperature_alert(data, rules));
    alerts.extend(fan_alert(data, rules));
    alerts.extend(hashboard_alert(data));
    alerts.extend(hashrate_alert(data, rules));
    alerts.extend(pools_alert(data));
    alerts.extend(firmware_alerts(data, rules));
    alerts.sort_by_key(|a| rank(a.severity));
    alerts
}

fn rank(s: Severity) -> u8 {
    match s {
        Severity::Critical => 0,
        Severity::High => 1,
        Severity::Medium => 2,
    }
}

fn alert(code: &str, severity: Severity, message: String) -> DeviceAlert {
    DeviceAlert {
        code: code.to_string(),
        severity,
        message,
    }
}

/// A usable temperature: finite and above 0 °C (0 and below mean no sensor).
fn usable_c(c: f64) -> Option<f64> {
    (c.is_finite() && c > 0.0).then_some(c)
}

/// The board's PCB temperature, °C.
pub(crate) fn board_temp_c(board: &BoardData) -> Option<f64> {
    board
        .board_temperature
        .and_then(|t| usable_c(t.as_celsius()))
}

/// The hottest chip temperature the board reports (inlet, outlet or per chip), °C.
pub(crate) fn chip_temp_c(board: &BoardData) -> Option<f64> {
    board
        .inlet_chip_temperature
        .iter()
        .chain(board.outlet_chip_temperature.iter())
        .chain(board.chips.iter().filter_map(|c| c.temperature.as_ref()))
        .filter_map(|t| usable_c(t.as_celsius()))
        .reduce(f64::max)
}

/// Whether the board reported anything at all (asic-rs lists every board
/// the model has, with empty fields when the reply was missing).
pub(crate) fn board_has_reading(board: &BoardData) -> bool {
    board.hashrate.is_some()
        || board.working_chips.is_some()
        || board.board_temperature.is_some()
        || board.inlet_chip_temperature.is_some()
        || board.outlet_chip_temperature.is_some()
        || board.chips.iter().any(|c| {
            c.hashrate.is_some()
                || c.temperature.is_some()
                || c.voltage.is_some()
                || c.frequency.is_some()
                || c.working.is_some()
        })
}

fn temperature_alert(data: &MinerData, rules: &AlertRules) -> Option<DeviceAlert> {
    // (margin over the threshold, text), per level.
    let mut critical: Vec<(f64, String)> = Vec::new();
    let mut warning: Vec<(f64, String)> = Vec::new();
    let mut check = |what: String, c: f64, warn: f64, crit: f64| {
        if c >= crit {
            critical.push((
                c - crit,
                format!("{what} {c:.1} °C ≥ critical {crit:.1} °C"),
            ));
        } else if c >= warn {
            warning.push((c - warn, format!("{what} {c:.1} °C ≥ warning {warn:.1} °C")));
        }
    };
    for board in &data.hashboards {
        if let Some(c) = board_temp_c(board) {
            let what = format!("hashboard {} PCB", board.position);
            check(what, c, rules.board_temp_warn_c, rules.board_temp_crit_c);
        }
        if let Some(c) = chip_temp_c(board) {
            let what = format!("hashboard {} chips", board.position);
            check(what, c, rules.chip_temp_warn_c, rules.chip_temp_crit_c);
        }
    }
    let (code, severity, mut findings) = if !critical.is_empty() {
        (TEMP_CRITICAL, Severity::Critical, critical)
    } else if !warning.is_empty() {
        (TEMP_HIGH, Severity::High, warning)
    } else {
        return None;
    };
    findings.sort_by(|a, b| b.0.total_cmp(&a.0));
    let more = findings.len().saturating_sub(MAX_FINDINGS);
    let mut message = findings
        .into_iter()
        .take(MAX_FINDINGS)
        .map(|(_, text)| text)
        .collect::<Vec<_>>()
        .join("; ");
    if more > 0 {
        message.push_str(&format!(" (and {more} more)"));
    }
    Some(alert(code, severity, message))
}

fn fan_alert(data: &MinerData, rules: &AlertRules) -> Option<DeviceAlert> {
    let mut problems = Vec::new();
    if data.is_mining {
        for fan in &data.fans {
            if let Some(rpm) = fan.rpm.map(|r| r.as_rpm()).filter(|r| r.is_finite()) {
                if rpm < rules.fan_min_rpm {
                    problems.push(format!(
                        "fan {} at {rpm:.0} rpm while mining (minimum {:.0} rpm)",
                        fan.position, rules.fan_min_rpm
                    ));
                }
            }
        }
    }
    // Only a partial list counts: an empty one is a missing reply (a miner
    // whose fans all died still lists them, at 0 rpm).
    if let Some(expected) = data.expected_fans.filter(|&e| e > 0) {
        let reported = data.fans.len();
        if reported > 0 && reported < usize::from(expected) {
            problems.push(format!("{reported} of {expected} fans reported"));
        }
    }
    if problems.is_empty() {
        return None;
    }
    Some(alert(FAN_FAILURE, Severity::High, problems.join("; ")))
}

fn hashboard_alert(data: &MinerData) -> Option<DeviceAlert> {
    let with_data: Vec<&BoardData> = data
        .hashboards
        .iter()
        .filter(|b| board_has_reading(b))
        .collect();
    if with_data.is_empty() {
        // No board data at all: nothing to judge (a failed reply, not a
        // missing board).
        return None;
    }
    let mut problems = Vec::new();
    // asic-rs lists the boards the model has; one that reports nothing
    // while others do (a slot the firmware does not see) is missing. Only
    // judged while mining: asleep, some firmwares report no boards.
    let expected = data
        .expected_hashboards
        .map(usize::from)
        .unwrap_or(0)
        .max(data.hashboards.len());
    if data.is_mining && with_data.len() < expected {
        problems.push(format!(
            "{} of {expected} hashboards report data",
            with_data.len()
        ));
    }
    if data.is_mining {
        for board in with_data {
            let hashing = board
                .hashrate
                .as_ref()
                .is_some_and(|h| h.value.is_finite() && h.value > 0.0);
            let dead = board.working_chips == Some(0)
                || (board.active == Some(false) && !hashing && board.working_chips.is_none());
            if dead {
                let chips = match board.expected_chips {
                    Some(e) => format!("0 of {e} chips working"),
                    None => "no working chips".to_string(),
                };
                problems.push(format!(
                    "hashboard {} has {chips} while mining",
                    board.position
                ));
            }
        }
    }
    if problems.is_empty() {
        return None;
    }
    Some(alert(
        HASHBOARD_MISSING,
        Severity::High,
        problems.join("; "),
    ))
}

fn hashrate_alert(data: &MinerData, rules: &AlertRules) -> Option<DeviceAlert> {
    if !data.is_mining {
        return None;
    }
    let hs = crate::miners::hashrate_hs(data.hashrate.as_ref()?)?;
    let expected = crate::miners::hashrate_hs(data.expected_hashrate.as_ref()?)?;
    if expected <= 0.0 || hs >= expected * rules.hashrate_low_ratio {
        return None;
    }
    Some(alert(
        HASHRATE_LOW,
        Severity::Medium,
        format!(
            "hashrate {} is {:.0}% of the expected {} (alert below {:.0}%)",
            crate::miners::format_hashrate(hs),
            hs / expected * 100.0,
            crate::miners::format_hashrate(expected),
            rules.hashrate_low_ratio * 100.0
        ),
    ))
}

fn pools_alert(data: &MinerData) -> Option<DeviceAlert> {
    if !data.is_mining {
        // A sleeping miner need not hold its pool connections.
        return None;
    }
    let pools: Vec<_> = data
        .pools
        .iter()
        .flat_map(|g| g.pools.iter())
        .filter(|p| p.url.is_some() || p.user.is_some())
        .collect();
    let known: Vec<_> = pools.iter().filter(|p| p.alive.is_some()).collect();
    if known.is_empty() || known.iter().any(|p| p.alive == Some(true)) {
        return None;
    }
    let urls: Vec<String> = known
        .iter()
        .take(3)
        .map(|p| {
            p.url
                .as_ref()
                .map(|u| crate::miners::clip(&u.to_string(), 80))
                .unwrap_or_else(|| "(no url)".into())
        })
        .collect();
    Some(alert(
        ALL_POOLS_DEAD,
        Severity::Critical,
        format!(
            "all {} configured pools are dead: {}",
            known.len(),
            urls.join(", ")
        ),
    ))
}

fn firmware_alerts(data: &MinerData, rules: &AlertRules) -> Vec<DeviceAlert> {
    let mut out: Vec<DeviceAlert> = Vec::new();
    for msg in &data.messages {
        if out.len() >= rules.max_firmware_alerts {
            break;
        }
        let (severity, level) = match msg.severity {
            MessageSeverity::Error => (Severity::High, "error"),
            MessageSeverity::Warning => (Severity::Medium, "warning"),
            MessageSeverity::Info => continue,
        };
        let code = format!("{FIRMWARE_PREFIX}{}", msg.code);
        if out.iter().any(|a| a.code == code) {
            continue;
        }
        let place = match &msg.component {
            Some(MinerComponent::ControlBoard {}) | None => String::new(),
            Some(c) => format!(" ({c})"),
        };
        let text = crate::miners::clip(msg.message.trim(), MAX_FIRMWARE_TEXT);
        out.push(alert(
            &code,
            severity,
            format!("firmware {level} {}{place}: {text}", msg.code),
        ));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use asic_rs::core::data::board::ChipData;
    use asic_rs::core::data::device::{DeviceInfo, HashAlgorithm, MinerHardware};
    use asic_rs::core::data::fan::FanData;
    use asic_rs::core::data::hashrate::{HashRate, HashRateUnit};
    use asic_rs::core::data::message::MinerMessage;
    use asic_rs::core::data::pool::{PoolData, PoolGroupData, PoolURL};
    use serde::de::DeserializeOwned;
    use std::time::Duration;

    // asic-rs takes its units from the `measurements` and `macaddr` crates,
    // which this crate does not depend on; their serde forms build them.
    pub fn celsius<T: DeserializeOwned>(c: f64) -> T {
        serde_json::from_value(serde_json::json!({ "degrees_kelvin": c + 273.15 })).unwrap()
    }
    pub fn rpm<T: DeserializeOwned>(rpm: f64) -> T {
        let rad_s = rpm * std::f64::consts::TAU / 60.0;
        serde_json::from_value(serde_json::json!({ "radians_per_second": rad_s })).unwrap()
    }
    pub fn watts<T: DeserializeOwned>(w: f64) -> T {
        serde_json::from_value(serde_json::json!({ "watts": w })).unwrap()
    }
    pub fn ths(v: f64) -> HashRate {
        HashRate {
            value: v,
            unit: HashRateUnit::TeraHash,
            algo: HashAlgorithm::SHA256,
        }
    }

    /// A healthy three-board, four-fan 200 TH/s miner.
    pub fn healthy() -> MinerData {
        let boards = (0..3u8)
            .map(|i| BoardData {
                position: i,
                hashrate: Some(ths(66.7)),
                expected_hashrate: Some(ths(66.7)),
                board_temperature: Some(celsius(60.0)),
                outlet_chip_temperature: Some(celsius(70.0)),
                expected_chips: Some(108),
                working_chips: Some(108),
                active: Some(true),
                ..Default::default()
            })
            .collect();
        let fans = (0..4)
            .map(|i| FanData {
                position: i,
                rpm: Some(rpm(5800.0)),
            })
            .collect();
        let pools = vec![PoolGroupData {
            name: "default".into(),
            quota: 1,
            pools: (0..3)
                .map(|i| PoolData {
                    position: Some(i),
                    url: Some(PoolURL::from(format!("stratum+tcp://pool{i}.example:3333"))),
                    accepted_shares: Some(1000 + u64::from(i)),
                    rejected_shares: Some(2),
                    last_share_time: None,
                    active: Some(i == 0),
                    alive: Some(true),
                    user: Some("acct.worker".into()),
                })
                .collect(),
        }];
        MinerData {
            schema_version: "0.8.6".into(),
            timestamp: 1_700_000_000,
            ip: "10.0.0.7".parse().unwrap(),
            mac: Some("02:48:AB:CD:EF:01".parse().unwrap()),
            device_info: DeviceInfo {
                make: "AntMiner".into(),
                model: "S21".into(),
                hardware: MinerHardware {
                    fans: Some(4),
                    boards: Some(vec![Some(108); 3]),
                },
                firmware: "AntMiner Stock".into(),
                algo: HashAlgorithm::SHA256,
            },
            serial_number: Some("JYZZ0001".into()),
            hostname: Some("s21-rack1".into()),
            api_version: None,
            firmware_version: Some("2024.01.01".into()),
            control_board_version: None,
            expected_hashboards: Some(3),
            hashboards: boards,
            hashrate: Some(ths(200.0)),
            expected_hashrate: Some(ths(200.0)),
            expected_chips: Some(324),
            total_chips: Some(324),
            expected_fans: Some(4),
            fans,
            psu_fans: vec![],
            average_temperature: Some(celsius(60.0)),
            fluid_temperature: None,
            outlet_fluid_temperature: None,
            wattage: Some(watts(3500.0)),
            tuning_percent: None,
            tuning_target: None,
            scaled_tuning_target: None,
            tuning_capabilities: None,
            efficiency: Some(17.5),
            light_flashing: Some(false),
            messages: vec![],
            uptime: Some(Duration::from_secs(7200)),
            is_mining: true,
            operating_state: None,
            devfee_connected: None,
            pools,
            best_share: None,
            session_best_share: None,
        }
    }

    fn codes(data: &MinerData) -> Vec<String> {
        miner_alerts(data, &AlertRules::default())
            .into_iter()
            .map(|a| a.code)
            .collect()
    }

    fn only(data: &MinerData, code: &str) -> DeviceAlert {
        let alerts = miner_alerts(data, &AlertRules::default());
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].code, code);
        alerts[0].clone()
    }

    #[test]
    fn healthy_miner_raises_nothing() {
        assert_eq!(codes(&healthy()), Vec::<String>::new());
        AlertRules::default().validate().unwrap();
    }

    #[test]
    fn board_at_75_is_high_and_at_80_critical() {
        let mut d = healthy();
        d.hashboards[1].board_temperature = Some(celsius(76.0));
        let a = only(&d, TEMP_HIGH);
        assert_eq!(a.severity, Severity::High);
        assert!(
            a.message
                .contains("hashboard 1 PCB 76.0 °C ≥ warning 75.0 °C"),
            "{}",
            a.message
        );

        d.hashboards[2].board_temperature = Some(celsius(81.5));
        let a = only(&d, TEMP_CRITICAL);
        assert_eq!(a.severity, Severity::Critical);
        assert!(
            a.message
                .contains("hashboard 2 PCB 81.5 °C ≥ critical 80.0 °C"),
            "{}",
            a.message
        );
    }

    #[test]
    fn hot_chips_use_their_own_thresholds() {
        let mut d = healthy();
        d.hashboards[0].chips = vec![ChipData {
            position: 7,
            temperature: Some(celsius(96.0)),
            ..Default::default()
        }];
        let a = only(&d, TEMP_CRITICAL);
        assert!(
            a.message
                .contains("hashboard 0 chips 96.0 °C ≥ critical 95.0 °C"),
            "{}",
            a.message
        );
        d.hashboards[0].chips.clear();
        d.hashboards[0].inlet_chip_temperature = Some(celsius(86.0));
        assert_eq!(only(&d, TEMP_HIGH).severity, Severity::High);
    }

    #[test]
    fn stopped_fan_while_mining_is_a_fan_failure() {
        let mut d = healthy();
        d.fans[2].rpm = Some(rpm(0.0));
        let a = only(&d, FAN_FAILURE);
        assert_eq!(a.severity, Severity::High);
        assert!(
            a.message.contains("fan 2 at 0 rpm while mining"),
            "{}",
            a.message
        );
        // Asleep, a stopped fan is expected.
        d.is_mining = false;
        assert!(!codes(&d).contains(&FAN_FAILURE.to_string()));
    }

    #[test]
    fn fewer_fans_than_the_model_has_is_a_fan_failure() {
        let mut d = healthy();
        d.fans.truncate(3);
        assert!(only(&d, FAN_FAILURE)
            .message
            .contains("3 of 4 fans reported"));
    }

    #[test]
    fn lost_board_is_hashboard_missing() {
        let mut d = healthy();
        d.hashboards[0].working_chips = Some(0);
        d.hashboards[0].hashrate = Some(ths(0.0));
        d.hashboards[0].active = Some(false);
        d.hashrate = Some(ths(190.0));
        let a = only(&d, HASHBOARD_MISSING);
        assert_eq!(a.severity, Severity::High);
        assert!(
            a.message.contains("hashboard 0 has 0 of 108 chips working"),
            "{}",
            a.message
        );

        let mut d = healthy();
        d.hashboards.pop();
        let a = only(&d, HASHBOARD_MISSING);
        assert!(
            a.message.contains("2 of 3 hashboards report data"),
            "{}",
            a.message
        );
        // A slot the firmware does not see: listed by asic-rs, but empty.
        let mut d = healthy();
        d.hashboards[2] = BoardData::new(2, Some(108));
        let a = only(&d, HASHBOARD_MISSING);
        assert!(
            a.message.contains("2 of 3 hashboards report data"),
            "{}",
            a.message
        );
        d.is_mining = false;
        assert!(codes(&d).is_empty());
    }

    #[test]
    fn boards_without_any_reading_are_not_judged() {
        let mut d = healthy();
        for b in &mut d.hashboards {
            *b = BoardData::new(b.position, Some(108));
            b.active = Some(false);
        }
        assert_eq!(codes(&d), Vec::<String>::new());
    }

    #[test]
    fn low_hashrate_is_medium() {
        let mut d = healthy();
        d.hashrate = Some(ths(150.0));
        let a = only(&d, HASHRATE_LOW);
        assert_eq!(a.severity, Severity::Medium);
        assert!(
            a.message
                .contains("150.00 TH/s is 75% of the expected 200.00 TH/s"),
            "{}",
            a.message
        );
        d.is_mining = false;
        d.hashrate = Some(ths(0.0));
        assert!(codes(&d).is_empty());
    }

    #[test]
    fn all_pools_dead_is_critical_and_one_alive_pool_is_enough() {
        let mut d = healthy();
        for p in &mut d.pools[0].pools {
            p.alive = Some(false);
        }
        let a = only(&d, ALL_POOLS_DEAD);
        assert_eq!(a.severity, Severity::Critical);
        assert!(
            a.message.contains("all 3 configured pools are dead"),
            "{}",
            a.message
        );
        d.pools[0].pools[1].alive = Some(true);
        assert!(codes(&d).is_empty());
    }

    #[test]
    fn firmware_messages_map_by_severity_and_are_bounded() {
        let mut d = healthy();
        d.messages = vec![
            MinerMessage::new(0, 2010, "fan speed error".into(), MessageSeverity::Error),
            MinerMessage::new(0, 2010, "fan speed error".into(), MessageSeverity::Error),
            MinerMessage::new(0, 300, "pcb temp high".into(), MessageSeverity::Warning),
            MinerMessage::new(0, 1, "boot ok".into(), MessageSeverity::Info),
        ];
        let alerts = miner_alerts(&d, &AlertRules::default());
        let got: Vec<_> = alerts
            .iter()
            .map(|a| (a.code.as_str(), a.severity))
            .collect();
        assert_eq!(
            got,
            vec![
                ("firmware_2010", Severity::High),
                ("firmware_300", Severity::Medium)
            ]
        );
        d.messages = (0..50)
            .map(|i| MinerMessage::new(0, i, "x".repeat(1000), MessageSeverity::Error))
            .collect();
        let alerts = miner_alerts(&d, &AlertRules::default());
        assert_eq!(alerts.len(), 8);
        assert!(alerts.iter().all(|a| a.message.len() < 250));
    }

    #[test]
    fn bad_rules_are_named() {
        let rules = AlertRules {
            board_temp_warn_c: 90.0,
            ..AlertRules::default()
        };
        assert!(rules.validate().unwrap_err().contains("board_temp_warn_c"));
        let rules = AlertRules {
            hashrate_low_ratio: 1.5,
            ..AlertRules::default()
        };
        assert!(rules.validate().unwrap_err().contains("hashrate_low_ratio"));
    }
}
