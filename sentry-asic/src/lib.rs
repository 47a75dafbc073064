//! `hashfleet-sentry-asic`: the sentry that watches a LAN segment of ASIC
//! miners (through asic-rs), cooling containers (HTTP JSON), Modbus TCP
//! power meters and relay controllers, and runs approved actions on them.
//!
//! - [`config`]: the config file and the allow-list it yields ([`allow`]);
//!   the sentry contacts no address outside it, and logs it at start.
//! - [`miners`] and [`alerts`]: discovery, polling and actions through
//!   asic-rs, each device call in its own task under a timeout.
//! - [`container`] and [`modbus`]: the hand-written device clients.
//! - [`AsicCollector`] polls everything each round; [`AsicExecutor`]
//!   routes an action to the device its target names.

pub mod alerts;
pub mod allow;
pub mod config;
pub mod container;
pub mod miners;
pub mod modbus;

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hashfleet_agent::cli::{agent_config, read_toml, RunArgs};
use hashfleet_agent::status_api::reporting_state;
use hashfleet_agent::{Agent, AgentConfig, Collector, Executor};
use hashfleet_shared::wire::{DeviceSnapshot, HeartbeatBody, SentryKind};
use serde_json::Value;
use tokio::sync::Mutex;
use tracing::info;

use crate::allow::AllowList;
use crate::config::{AsicConfig, AsicFile};
use crate::container::ContainerClient;
use crate::miners::{MinerPoller, PollerConfig};
use crate::modbus::{MeterClient, RelayClient};

pub const DEFAULT_HOME: &str = "/var/lib/hashfleet/sentry-asic";

/// The runtime config plus what to watch.
#[derive(Debug, Clone)]
pub struct SentryAsicConfig {
    pub agent: AgentConfig,
    pub asic: AsicConfig,
}

impl AsRef<AgentConfig> for SentryAsicConfig {
    fn as_ref(&self) -> &AgentConfig {
        &self.agent
    }
}

impl SentryAsicConfig {
    /// Reads the devices (and `interval_secs`, `site`, `rack`) from a config
    /// file for an agent config built elsewhere (the demo, tests).
    pub fn from_file(mut agent: AgentConfig, path: &Path) -> anyhow::Result<SentryAsicConfig> {
        let file: AsicFile = read_toml(path)?;
        if let Some(secs) = file.interval_secs {
            agent.interval = Duration::from_secs(secs);
        }
        if let Some(site) = &file.site {
            agent.labels.insert("site".into(), site.clone());
        }
        if let Some(rack) = &file.rack {
            agent.labels.insert("rack".into(), rack.clone());
        }
        let asic = file
            .asic_config()
            .map_err(|e| anyhow::anyhow!("config {}: {e:#}", path.display()))?;
        agent.validate()?;
        Ok(SentryAsicConfig { agent, asic })
    }
}

/// Loads the config file (if any) and applies the flags.
pub fn load_config(args: &RunArgs) -> anyhow::Result<SentryAsicConfig> {
    let file: AsicFile = match &args.config {
        Some(path) => read_toml(Path::new(path))?,
        None => AsicFile::default(),
    };
    let asic = file.asic_config().map_err(|e| match &args.config {
        Some(path) => anyhow::anyhow!("config {}: {e:#}", path.display()),
        None => e,
    })?;
    let agent = agent_config(file.common(), args, SentryKind::Asic, DEFAULT_HOME)?;
    Ok(SentryAsicConfig { agent, asic })
}

/// Everything the sentry polls, shared with the executor.
struct Devices {
    allow: AllowList,
    miners: Mutex<MinerPoller>,
    containers: Vec<ContainerClient>,
    meters: Vec<MeterClient>,
    relays: Vec<RelayClient>,
}

/// Polls every device each round.
pub struct AsicCollector {
    devices: Arc<Devices>,
    hosts: Vec<IpAddr>,
    states: std::collections::BTreeMap<String, String>,
}

/// Runs approved actions on the device each target names.
pub struct AsicExecutor {
    devices: Arc<Devices>,
}

/// Builds the collector and executor for `config`, checking every device
/// address against the allow-list.
pub fn devices(config: &AsicConfig) -> anyhow::Result<(AsicCollector, AsicExecutor)> {
    let allow = config.allow.clone();
    let containers = config
        .containers
        .iter()
        .map(|e| ContainerClient::new(e.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let meters = config
        .meters
        .iter()
        .map(|e| MeterClient::new(e.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let relays = config
        .relays
        .iter()
        .map(|e| RelayClient::new(e.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let addrs = containers
        .iter()
        .map(|c| c.addr())
        .chain(meters.iter().map(|m| m.addr()))
        .chain(relays.iter().map(|r| r.addr()));
    for addr in addrs {
        allow::check(&allow, addr.ip()).map_err(anyhow::Error::msg)?;
    }
    let poller = MinerPoller::new(PollerConfig {
        call_timeout: config.call_timeout,
        concurrency: config.concurrency,
        backoff_max: config.rescan,
        ..PollerConfig::default()
    });
    let hosts = allow.scan_hosts();
    let devices = Arc::new(Devices {
        allow,
        miners: Mutex::new(poller),
        containers,
        meters,
        relays,
    });
    Ok((
        AsicCollector {
            devices: devices.clone(),
            hosts,
            states: Default::default(),
        },
        AsicExecutor { devices },
    ))
}

impl Collector for AsicCollector {
    async fn collect(&mut self) -> HeartbeatBody {
        let d = self.devices.clone();
        let hosts = &self.hosts;
        let miners = async {
            let mut poller = d.miners.lock().await;
            poller.discover(hosts).await;
            poller.poll().await
        };
        let (mut devices, others) = tokio::join!(miners, poll_others(self.devices.clone()));
        devices.extend(others);
        self.states = states(&devices, self.hosts.len());
        HeartbeatBody { devices }
    }

    fn states(&self) -> std::collections::BTreeMap<String, String> {
        self.states.clone()
    }
}

/// Per device kind: how many report and how many are down.
fn states(
    devices: &[DeviceSnapshot],
    scanned: usize,
) -> std::collections::BTreeMap<String, String> {
    let mut kinds: std::collections::BTreeMap<&str, Vec<&DeviceSnapshot>> = Default::default();
    for d in devices {
        kinds.entry(d.kind.as_str()).or_default().push(d);
    }
    let mut out: std::collections::BTreeMap<String, String> = kinds
        .into_iter()
        .map(|(kind, ds)| (kind.to_string(), reporting_state(ds)))
        .collect();
    out.entry("miner".into())
        .or_insert_with(|| format!("ok: none identified yet in {scanned} scanned addresses"));
    out
}

/// Polls the containers, meters and relays, each in its own task (a panic
/// in one client costs that device's snapshot, not the round).
async fn poll_others(d: Arc<Devices>) -> Vec<DeviceSnapshot> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..d.containers.len() {
        let d = d.clone();
        set.spawn(async move { (0, i, d.containers[i].poll().await) });
    }
    for i in 0..d.meters.len() {
        let d = d.clone();
        set.spawn(async move { (1, i, d.meters[i].poll_meter().await) });
    }
    for i in 0..d.relays.len() {
        let d = d.clone();
        set.spawn(async move { (2, i, d.relays[i].poll_relay().await) });
    }
    let mut out = Vec::with_capacity(set.len());
    while let Some(done) = set.join_next().await {
        match done {
            Ok(polled) => out.push(polled),
            Err(e) => tracing::error!("a device poll task failed: {e}"),
        }
    }
    out.sort_by_key(|(kind, i, _)| (*kind, *i));
    out.into_iter().map(|(_, _, s)| s).collect()
}

impl Executor for AsicExecutor {
    async fn execute(&self, method: &str, params: &Value, target: &str) -> Result<Value, String> {
        let d = &self.devices;
        if let Some(c) = d.containers.iter().find(|c| c.id() == target) {
            return c.execute(method, params).await;
        }
        if let Some(r) = d.relays.iter().find(|r| r.id() == target) {
            return r.execute(method, params).await;
        }
        if let Some(m) = d.meters.iter().find(|m| m.id() == target) {
            return m.execute(method, params).await;
        }
        // A miner: prepare under the lock, run without it (a write can take
        // a minute on stock firmware).
        let prepared = {
            let poller = d.miners.lock().await;
            let prepared = poller.prepare(method, params, target)?;
            if let Some(ip) = poller.address_of(target) {
                allow::check(&d.allow, ip)?;
            }
            prepared
        };
        prepared.run().await
    }
}

/// Runs the ASIC sentry until `shutdown` resolves.
pub async fn run_with(
    config: SentryAsicConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (collector, executor) = devices(&config.asic)?;
    info!(
        "allow-list: this sentry contacts only {}",
        config.asic.allow.describe()
    );
    info!(
        scan_hosts = collector.hosts.len(),
        containers = config.asic.containers.len(),
        meters = config.asic.meters.len(),
        relays = config.asic.relays.len(),
        "watching"
    );
    Agent::new(config.agent, collector, executor)?
        .run(shutdown)
        .await
}
