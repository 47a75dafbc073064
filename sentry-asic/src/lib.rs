//! `hashfleet-sentry-asic`: the sentry that watches a LAN segment of ASIC
//! miners, cooling containers, power meters and relay controllers.
//!
//! This release carries the shared runtime only: it enrolls, keeps its
//! identity and session, and sends signed heartbeats with no devices; it
//! refuses every action ([`NoActions`]: each target fails, saying so). The
//! device drivers (asic-rs, containers, Modbus meters and relays) and the
//! emulator fleet `hashfleet-sim` come with the ASIC sentry issue.

use std::future::Future;
use std::path::Path;

use hashfleet_agent::cli::{agent_config, read_toml, CommonFile, RunArgs};
use hashfleet_agent::{Agent, AgentConfig, Collector, NoActions};
use hashfleet_shared::wire::{HeartbeatBody, SentryKind};

pub const DEFAULT_HOME: &str = "/var/lib/hashfleet/sentry-asic";

/// The devices this sentry watches: none until drivers are added.
#[derive(Default)]
pub struct AsicSentry;

impl Collector for AsicSentry {
    async fn collect(&mut self) -> HeartbeatBody {
        HeartbeatBody::default()
    }
}

/// Loads the config file (if any) and applies the flags.
pub fn load_config(args: &RunArgs) -> anyhow::Result<AgentConfig> {
    let file: CommonFile = match &args.config {
        Some(path) => read_toml(Path::new(path))?,
        None => CommonFile::default(),
    };
    agent_config(file, args, SentryKind::Asic, DEFAULT_HOME)
}

/// Runs the ASIC sentry until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::warn!(
        "this build of sentry-asic has no device drivers yet: heartbeats carry no devices"
    );
    Agent::new(config, AsicSentry, NoActions)?
        .run(shutdown)
        .await
}
