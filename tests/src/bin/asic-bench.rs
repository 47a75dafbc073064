//! `asic-bench [N ...]`: one sentry-asic (its collector, in this process)
//! polling N emulated miners served by a `hashfleet-sim` child process, for
//! each N given (default 1000 and 5000). Prints the first round (discovery
//! and poll), the steady rounds, CPU seconds per round, peak RSS of this
//! process, and how many heartbeat frames a round's snapshot splits into.
//! A measurement, not a test: nothing here fails on a slow machine.
//!
//! `ASIC_BENCH_MODELS=antminer-s21` limits the fleet to some models.
//!
//! Build the sim first: `cargo build --release -p hashfleet-sim`, then
//! `cargo run --release -p hashfleet-tests --bin asic-bench -- 1000 5000`.
//! Runs as root (the sim serves ports 80 and 4028).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hashfleet_agent::Collector;
use hashfleet_sentry_asic::config::AsicFile;

/// Steady rounds measured after the first.
const ROUNDS: usize = 3;

fn sim_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("HASHFLEET_SIM") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let sim = exe
        .parent()
        .map(|d| d.join("hashfleet-sim"))
        .filter(|p| p.exists());
    sim.ok_or_else(|| {
        anyhow::anyhow!(
            "no hashfleet-sim beside {}: run `cargo build --release -p hashfleet-sim` first (or set HASHFLEET_SIM)",
            exe.display()
        )
    })
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`; utime and stime are the 12th and 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident set of this process, MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bench(n: usize, sim: &PathBuf, dir: &std::path::Path) -> anyhow::Result<()> {
    let config = dir.join(format!("sentry-{n}.toml"));
    let mut command = Command::new(sim);
    if let Ok(models) = std::env::var("ASIC_BENCH_MODELS") {
        command.args(["--models", &models]);
    }
    let child = command
        .args([
            "--miners",
            &n.to_string(),
            "--base-ip",
            "127.150.0.1",
            "--write-sentry-config",
            &config.display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let _child = KillOnDrop(child);
    let started = Instant::now();
    while !config.exists() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the sim wrote no config in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let file: AsicFile = toml::from_str(&std::fs::read_to_string(&config)?)?;
    let mut asic = file.asic_config()?;
    asic.concurrency = 512;
    let (mut collector, _executor) = hashfleet_sentry_asic::devices(&asic)?;

    // Discovery: asic-rs identifies a batch of addresses per round; run
    // rounds until every miner reports (or 20 rounds).
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut discovery_rounds = 0;
    let mut first_len = 0;
    loop {
        let body = collector.collect().await;
        discovery_rounds += 1;
        first_len = first_len.max(body.devices.len());
        let hashing = body
            .devices
            .iter()
            .filter(|d| d.metrics.get("hashrate_hs").is_some_and(|h| *h > 0.0))
            .count();
        if hashing >= n || discovery_rounds >= 20 {
            break;
        }
    }
    let first_time = t0.elapsed();
    let first_cpu = cpu_seconds() - cpu0;
    let mut times = Vec::new();
    let mut cpus = Vec::new();
    let mut reported = 0;
    let mut frames = 0;
    let mut states = std::collections::BTreeMap::new();
    for _ in 0..ROUNDS {
        let cpu = cpu_seconds();
        let t = Instant::now();
        let body = collector.collect().await;
        times.push(t.elapsed().as_secs_f64());
        cpus.push(cpu_seconds() - cpu);
        reported = body
            .devices
            .iter()
            .filter(|d| d.metrics.get("hashrate_hs").is_some_and(|h| *h > 0.0))
            .count();
        states = std::collections::BTreeMap::new();
        for d in &body.devices {
            let state = d.labels.get("state").cloned().unwrap_or_default();
            *states.entry(state).or_insert(0usize) += 1;
        }
        frames = hashfleet_shared::heartbeat::split_body(body).len();
    }
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "{n:>6} miners: discovery {:.1} s in {discovery_rounds} rounds ({:.1} CPU s, {} devices); steady round {:.2} s avg ({:.2}-{:.2}), {:.2} CPU s/round; {reported} hashing; {frames} heartbeat frames/round; peak RSS {:.0} MiB; states {states:?}",
        first_time.as_secs_f64(),
        first_cpu,
        first_len,
        avg(&times),
        times.iter().cloned().fold(f64::MAX, f64::min),
        times.iter().cloned().fold(0.0, f64::max),
        avg(&cpus),
        peak_rss_mib(),
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("usage: asic-bench [MINERS ...]"))?;
    let sizes = if sizes.is_empty() {
        vec![1000, 5000]
    } else {
        sizes
    };
    let sim = sim_binary()?;
    let dir = tempfile::tempdir()?;
    println!(
        "asic-bench: one sentry-asic collector, sim {}",
        sim.display()
    );
    for n in sizes {
        bench(n, &sim, dir.path()).await?;
    }
    Ok(())
}
