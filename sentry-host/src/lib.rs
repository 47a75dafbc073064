//! `hashfleet-sentry-host`: the sentry for GPU/CPU rigs and AI nodes.
//!
//! It reports its host as one device (sysinfo) through the shared sentry
//! runtime (`hashfleet-agent`), and runs the host actions its config allows
//! (hooks, reboot). GPUs, miner software and AI runtimes come with the
//! host-sentry issue as more collectors.
//!
//! - [`host`]: the sysinfo collector;
//! - [`actions`]: [`HostExecutor`], the host actions (`runHook`, `reboot`);
//! - [`config`]: the config file;
//! - [`run`], [`run_with`]: start the runtime with this sentry's collectors
//!   and executor.

pub mod actions;
pub mod config;
pub mod host;

use std::future::Future;

use hashfleet_agent::{Agent, AgentConfig, Collector};
use hashfleet_shared::wire::HeartbeatBody;

pub use actions::HostExecutor;
pub use config::{HostActions, HostConfig};
pub use host::HostCollector;

/// Every collector of this sentry, run in turn each interval.
#[derive(Default)]
pub struct HostSentry {
    host: HostCollector,
}

impl Collector for HostSentry {
    async fn collect(&mut self) -> HeartbeatBody {
        HeartbeatBody {
            devices: vec![self.host.snapshot()],
        }
    }

    fn states(&self) -> std::collections::BTreeMap<String, String> {
        [("host".to_string(), "ok".to_string())].into()
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
    Agent::new(
        config.agent,
        HostSentry::default(),
        HostExecutor::new(config.actions),
    )
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
