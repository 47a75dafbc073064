//! `hashfleet-sentry-host`: the sentry for GPU/CPU rigs and AI nodes.
//!
//! It reports its host (sysinfo), its NVIDIA GPUs (nvidia-smi, DCGM), the
//! miner software and the AI runtimes on it through the shared sentry
//! runtime (`hashfleet-agent`), and runs the host actions its config allows
//! (hooks, reboot, pause/resume of a miner whose API allows it).
//!
//! - [`host`]: the sysinfo collector; [`gpu`]: GPUs; [`minersw`]: miner
//!   software APIs; [`runtime_ai`]: OpenAI-compatible runtimes;
//! - [`actions`]: [`HostExecutor`], the host actions (`runHook`, `reboot`);
//! - [`config`]: the config file;
//! - [`run`], [`run_with`]: start the runtime with this sentry's collectors
//!   and executor.

pub mod actions;
pub mod config;
pub mod gpu;
pub mod host;
pub mod minersw;
pub mod runtime_ai;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use hashfleet_agent::{Agent, AgentConfig, Collector};
use hashfleet_shared::wire::HeartbeatBody;

pub use actions::HostExecutor;
pub use config::{HostActions, HostConfig, HostSources};
use gpu::GpuCollector;
pub use host::HostCollector;
use minersw::MinerClient;
use runtime_ai::RuntimeClient;

/// Every collector of this sentry, run each interval; a failing one
/// reports the failure on its devices and the heartbeat still goes out.
pub struct HostSentry {
    host: HostCollector,
    gpu: GpuCollector,
    miners: Arc<Vec<Arc<MinerClient>>>,
    runtimes: Vec<Arc<RuntimeClient>>,
    states: BTreeMap<String, String>,
}

impl HostSentry {
    /// The collectors `sources` asks for (checked already).
    pub fn new(sources: &HostSources) -> anyhow::Result<HostSentry> {
        let miners = sources
            .miners
            .iter()
            .map(|m| MinerClient::new(m.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let runtimes = sources
            .runtimes
            .iter()
            .map(|r| RuntimeClient::new(r.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let mut gpu = GpuCollector::from_config(&sources.gpu);
        if sources.gpu.timeout_ms > 0 {
            gpu = gpu.timeout(std::time::Duration::from_millis(sources.gpu.timeout_ms));
        }
        Ok(HostSentry {
            host: HostCollector::new(),
            gpu,
            miners: Arc::new(miners),
            runtimes,
            states: BTreeMap::new(),
        })
    }
}

impl Default for HostSentry {
    fn default() -> Self {
        HostSentry::new(&HostSources::default()).expect("no sources to check")
    }
}

impl Collector for HostSentry {
    async fn collect(&mut self) -> HeartbeatBody {
        // Miner and runtime APIs in their own tasks (each bounded by its
        // client's timeout), concurrently with the GPU collector.
        let mut set = tokio::task::JoinSet::new();
        for (i, m) in self.miners.iter().enumerate() {
            let m = m.clone();
            set.spawn(async move { (0, i, m.poll().await) });
        }
        for (i, r) in self.runtimes.iter().enumerate() {
            let r = r.clone();
            set.spawn(async move { (1, i, r.poll().await) });
        }
        let mut devices = vec![self.host.snapshot()];
        devices.extend(self.gpu.collect().await);
        let mut polled = Vec::with_capacity(set.len());
        while let Some(done) = set.join_next().await {
            match done {
                Ok(p) => polled.push(p),
                Err(e) => tracing::error!("a collector task failed: {e}"),
            }
        }
        polled.sort_by_key(|(kind, i, _)| (*kind, *i));
        let mut states = BTreeMap::new();
        states.insert("host".to_string(), "ok".to_string());
        states.insert("gpu".to_string(), self.gpu.state());
        for (kind, name) in [(0, "miners"), (1, "runtimes")] {
            let mut of_kind = polled.iter().filter(|(k, _, _)| *k == kind).peekable();
            if of_kind.peek().is_some() {
                states.insert(
                    name.to_string(),
                    hashfleet_agent::status_api::reporting_state(of_kind.map(|(_, _, d)| d)),
                );
            }
        }
        self.states = states;
        devices.extend(polled.into_iter().map(|(_, _, d)| d));
        HeartbeatBody { devices }
    }

    fn states(&self) -> BTreeMap<String, String> {
        self.states.clone()
    }
}

/// Builds the runtime with the default host actions (no hooks, no
/// reboot); nothing touches the network yet.
pub fn agent(config: AgentConfig) -> anyhow::Result<Agent<HostSentry, HostExecutor>> {
    agent_with(HostConfig::new(config))
}

/// Builds the runtime with the host actions of `config`.
pub fn agent_with(config: HostConfig) -> anyhow::Result<Agent<HostSentry, HostExecutor>> {
    config.actions.validate()?;
    config.sources.validate()?;
    let sentry = HostSentry::new(&config.sources)?;
    let executor = HostExecutor::new(config.actions).with_miners(sentry.miners.clone());
    Agent::new(config.agent, sentry, executor)
}

/// Runs the host sentry, with the default host actions (no hooks, no
/// reboot), until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    agent(config)?.run(shutdown).await
}

/// Runs the host sentry with the host actions of `config` until
/// `shutdown` resolves (what the binary does).
pub async fn run_with(
    config: HostConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    agent_with(config)?.run(shutdown).await
}
