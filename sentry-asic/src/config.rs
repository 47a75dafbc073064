//! The sentry-asic config file: the shared sentry keys plus what to watch.
//!
//! ```toml
//! interval_secs = 10          # poll round, also the heartbeat interval
//! site = "dc1"
//! rack = "row-4"
//! concurrency = 256           # device calls in flight
//! call_timeout_secs = 5       # per device call
//! rescan_secs = 300           # how often unidentified addresses are retried at most
//!
//! [[scan]]
//! range = "10.0.1.1-10.0.1.254"
//! [[scan]]
//! subnet = "10.0.2.0/24"
//!
//! [[container]]   # see container.rs
//! [[powermeter]]  # see modbus.rs
//! [[relay]]       # see modbus.rs
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hashfleet_agent::cli::CommonFile;
use hashfleet_agent::config::CommanderEntry;
use serde::Deserialize;

use crate::allow::{self, AllowList};
use crate::container::{parse_address, ContainerEntry};
use crate::modbus::{MeterEntry, RelayEntry};

/// The file as written. The common keys are repeated rather than
/// flattened, because serde cannot refuse unknown keys of a flattened
/// struct.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsicFile {
    pub home: Option<PathBuf>,
    pub interval_secs: Option<u64>,
    pub site: Option<String>,
    pub rack: Option<String>,
    pub reconnect_min_ms: Option<u64>,
    pub reconnect_max_ms: Option<u64>,
    pub primary_retry_secs: Option<u64>,
    pub status_listen: Option<std::net::SocketAddr>,
    #[serde(default)]
    pub commander: Vec<CommanderEntry>,
    pub concurrency: Option<usize>,
    pub call_timeout_secs: Option<u64>,
    pub rescan_secs: Option<u64>,
    #[serde(default)]
    pub scan: Vec<ScanEntry>,
    #[serde(default)]
    pub container: Vec<ContainerEntry>,
    #[serde(default)]
    pub powermeter: Vec<MeterEntry>,
    #[serde(default)]
    pub relay: Vec<RelayEntry>,
}

/// One `[[scan]]`: a `range` or a `subnet`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanEntry {
    pub range: Option<String>,
    pub subnet: Option<String>,
}

/// What the device side of the sentry runs with.
#[derive(Debug, Clone)]
pub struct AsicConfig {
    pub allow: AllowList,
    pub containers: Vec<ContainerEntry>,
    pub meters: Vec<MeterEntry>,
    pub relays: Vec<RelayEntry>,
    pub concurrency: usize,
    pub call_timeout: Duration,
    pub rescan: Duration,
}

impl Default for AsicConfig {
    fn default() -> Self {
        AsicConfig {
            allow: AllowList::default(),
            containers: Vec::new(),
            meters: Vec::new(),
            relays: Vec::new(),
            concurrency: 256,
            call_timeout: Duration::from_secs(5),
            rescan: Duration::from_secs(300),
        }
    }
}

/// The IPv4 address of a `host[:port]` device entry, which must be a
/// literal: a name could resolve anywhere, past the allow-list.
pub fn literal_v4(addr: &SocketAddr, what: &str) -> Result<Ipv4Addr, String> {
    match addr.ip() {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(_) => Err(format!("{what}: only IPv4 device addresses are supported")),
    }
}

impl AsicFile {
    /// The common part, for the shared runtime.
    pub fn common(&self) -> CommonFile {
        CommonFile {
            home: self.home.clone(),
            interval_secs: self.interval_secs,
            site: self.site.clone(),
            rack: self.rack.clone(),
            reconnect_min_ms: self.reconnect_min_ms,
            reconnect_max_ms: self.reconnect_max_ms,
            primary_retry_secs: self.primary_retry_secs,
            status_listen: self.status_listen,
            commander: self.commander.clone(),
        }
    }

    /// Checks every entry and builds the allow-list.
    pub fn asic_config(&self) -> anyhow::Result<AsicConfig> {
        let mut scan = Vec::new();
        for (i, s) in self.scan.iter().enumerate() {
            let range = match (&s.range, &s.subnet) {
                (Some(r), None) => allow::parse_range(r),
                (None, Some(n)) => allow::parse_subnet(n),
                _ => Err("give exactly one of `range` or `subnet`".to_string()),
            }
            .map_err(|e| anyhow::anyhow!("[[scan]] entry {}: {e}", i + 1))?;
            scan.push(range);
        }
        let mut devices = Vec::new();
        let mut ids = std::collections::BTreeSet::new();
        let mut add = |table: &str, kind: &str, name: &str, address: &str, port: u16| {
            let addr = parse_address(address, port)
                .map_err(|e| anyhow::anyhow!("[[{table}]] `{name}`: {e}"))?;
            let what = format!("{kind} {name}");
            let v4 = literal_v4(&addr, &what).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                ids.insert(format!("{kind}-{name}")),
                "[[{table}]] `{name}` is named twice: names must be unique per kind"
            );
            devices.push((v4, what));
            Ok(())
        };
        for c in &self.container {
            c.validate()?;
            add("container", "container", &c.name, &c.address, 80)?;
        }
        for m in &self.powermeter {
            m.validate()?;
            add("powermeter", "powermeter", &m.name, &m.address, 502)?;
        }
        for r in &self.relay {
            r.validate()?;
            add("relay", "relay", &r.name, &r.address, 502)?;
        }
        let allow = AllowList::new(scan, devices).map_err(anyhow::Error::msg)?;
        let defaults = AsicConfig::default();
        let concurrency = self.concurrency.unwrap_or(defaults.concurrency);
        anyhow::ensure!(
            (1..=4096).contains(&concurrency),
            "concurrency = {concurrency}: give 1..=4096 device calls in flight"
        );
        let call_timeout = self.call_timeout_secs.unwrap_or(5);
        anyhow::ensure!(
            (1..=120).contains(&call_timeout),
            "call_timeout_secs = {call_timeout}: give 1..=120"
        );
        let rescan = self.rescan_secs.unwrap_or(300);
        anyhow::ensure!(
            (10..=86_400).contains(&rescan),
            "rescan_secs = {rescan}: give 10..=86400"
        );
        Ok(AsicConfig {
            allow,
            containers: self.container.clone(),
            meters: self.powermeter.clone(),
            relays: self.relay.clone(),
            concurrency,
            call_timeout: Duration::from_secs(call_timeout),
            rescan: Duration::from_secs(rescan),
        })
    }
}
