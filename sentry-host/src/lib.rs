//! `hashfleet-sentry-host`: the sentry for GPU/CPU rigs and AI nodes.
//!
//! It reports its host as one device (sysinfo) through the shared sentry
//! runtime (`hashfleet-agent`). GPUs, miner software and AI runtimes come
//! with the host-sentry issue as more collectors.
//!
//! - [`host`]: the sysinfo collector;
//! - [`config`]: the config file;
//! - [`run`]: start the runtime with this sentry's collectors.

pub mod config;
pub mod host;

use std::future::Future;

use hashfleet_agent::{Agent, AgentConfig, Collector};
use hashfleet_shared::wire::HeartbeatBody;

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
}

/// Builds the runtime; nothing touches the network yet.
pub fn agent(config: AgentConfig) -> anyhow::Result<Agent<HostSentry>> {
    Agent::new(config, HostSentry::default())
}

/// Runs the host sentry until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    agent(config)?.run(shutdown).await
}
