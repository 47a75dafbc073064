//! `hashfleet-sim`: one process emulating a fleet of ASIC miners, cooling
//! containers, power meters and relay controllers on loopback, so demos,
//! tests and benchmarks run without hardware.
//!
//! Every device gets its own address in 127.0.0.0/8 and serves its real
//! ports (miners 80/4028/4433, containers 80, meters and relays 502), so
//! asic-rs identifies each miner as the real model. Layout in [`fleet`],
//! miner state in [`model`], firmwares in [`miners`], the other devices in
//! [`devices`], sockets in [`net`], the control API in [`control`].

pub mod control;
pub mod devices;
pub mod fleet;
pub mod miners;
pub mod model;
pub mod net;
pub mod sentry_config;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;

pub use fleet::{Fleet, Layout};
pub use model::{Fault, Model};
pub use net::ListenMode;

/// Everything `hashfleet-sim` is told.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub layout: Layout,
    pub listen: ListenMode,
    /// The control API; port 0 picks one. Loopback only.
    pub control_listen: SocketAddr,
    /// `--fault` flags: fault and target.
    pub faults: Vec<(Fault, String)>,
    /// Written once every listener is bound.
    pub write_sentry_config: Option<PathBuf>,
    /// Poll interval written into that config.
    pub sentry_interval_secs: u64,
}

impl SimConfig {
    /// A fleet of `miners` from `base_ip`, every model in turn, no other
    /// devices, control API on an ephemeral port.
    pub fn new(miners: usize, base_ip: std::net::Ipv4Addr) -> SimConfig {
        SimConfig {
            layout: Layout {
                miners,
                base_ip,
                models: Model::ALL.to_vec(),
                containers: 0,
                meters: 0,
                relays: 0,
                relay_channels: 8,
                boot_time: Duration::from_secs(20),
            },
            listen: ListenMode::Auto,
            control_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            faults: Vec::new(),
            write_sentry_config: None,
            sentry_interval_secs: 10,
        }
    }
}

/// A running sim. Dropping it stops serving.
pub struct Sim {
    pub fleet: Arc<Fleet>,
    pub control_addr: SocketAddr,
    pub mode: ListenMode,
    pub sockets: usize,
    tasks: JoinSet<()>,
    _locks: Vec<std::fs::File>,
}

impl Sim {
    /// Lays out the fleet, applies `--fault`s, binds every socket, starts
    /// serving, then writes the sentry config (if asked).
    pub async fn start(config: SimConfig) -> anyhow::Result<Sim> {
        if !config.control_listen.ip().is_loopback() {
            anyhow::bail!(
                "--control-listen {}: the control API has no auth, so it serves loopback only",
                config.control_listen
            );
        }
        let fleet = Arc::new(Fleet::new(config.layout.clone()).map_err(anyhow::Error::msg)?);
        for (fault, target) in &config.faults {
            fleet
                .set_fault(target, *fault, true)
                .map_err(|e| anyhow::anyhow!("--fault: {e}"))?;
        }
        let bound = net::bind(&fleet, config.listen).map_err(anyhow::Error::msg)?;
        let (mode, sockets) = (bound.mode, bound.sockets());
        let control = tokio::net::TcpListener::bind(config.control_listen)
            .await
            .with_context(|| format!("binding the control API on {}", config.control_listen))?;
        let control_addr = control.local_addr()?;
        let (mut tasks, locks) = net::serve(fleet.clone(), bound);
        let router = control::router(fleet.clone());
        tasks.spawn(async move {
            let _ = axum::serve(control, router).await;
        });
        if let Some(path) = &config.write_sentry_config {
            sentry_config::write(path, &fleet, config.sentry_interval_secs)
                .with_context(|| format!("writing the sentry config {}", path.display()))?;
        }
        Ok(Sim {
            fleet,
            control_addr,
            mode,
            sockets,
            tasks,
            _locks: locks,
        })
    }

    /// One line per device kind, with its address range.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (kind, count, range) in self.fleet.ranges() {
            if let Some(r) = range {
                let detail = match kind {
                    "miners" => {
                        let models: Vec<&str> = self
                            .fleet
                            .layout
                            .models
                            .iter()
                            .map(|m| m.cli_name())
                            .collect();
                        format!(
                            "ports 80, 4028 (4433 WhatsMiner); models {}",
                            models.join(", ")
                        )
                    }
                    "containers" => "HTTP port 80, /cooler".to_string(),
                    _ => "Modbus TCP port 502".to_string(),
                };
                lines.push(format!(
                    "{kind:<10} {count:>6}  {}-{}  {detail}",
                    r.start(),
                    r.end()
                ));
            }
        }
        lines.push(format!(
            "control    http://{}  (GET /devices, GET /contacts, GET /miners/ADDR, POST /faults, POST /containers/ADDR/alarms)",
            self.control_addr
        ));
        lines.push(format!(
            "listening  {} sockets ({})",
            self.sockets,
            match self.mode {
                ListenMode::Wildcard => "one wildcard socket per port, routed by local address",
                _ => "one socket per device and port",
            }
        ));
        lines
    }

    /// Stops serving and releases the address locks.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Runs the sim until `shutdown` resolves, printing what it serves.
pub async fn run(config: SimConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let sim = Sim::start(config.clone()).await?;
    for line in sim.describe() {
        println!("{line}");
    }
    if let Some(path) = &config.write_sentry_config {
        println!("sentry     config written to {}", path.display());
    }
    shutdown.await;
    sim.shutdown().await;
    Ok(())
}
