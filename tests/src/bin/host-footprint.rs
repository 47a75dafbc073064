//! `host-footprint [SECONDS]`: the sentry-host's own footprint next to
//! `prometheus-node-exporter`'s, on this machine, over SECONDS (default
//! 600) at a 10 s interval. The sentry runs as a child process with every
//! collector on a fake source (a fake `nvidia-smi`, a fake DCGM exporter,
//! fake xmrig/T-Rex/lolMiner/gminer APIs and a fake vLLM runtime), sending
//! heartbeats to a commander in this process; node_exporter is scraped
//! every 10 s, as Prometheus would. Samples RSS and CPU (utime + stime of
//! each process itself, not its children such as `nvidia-smi`) from /proc.
//! A measurement, not a test.
//!
//! `cargo build --profile agent -p hashfleet-sentry-host` (the profile the
//! packages ship) and `cargo build --release -p hashfleet-tests`, then
//! `SENTRY_HOST=target/agent/hashfleet-sentry-host ./target/release/host-footprint 600`
//! (without `SENTRY_HOST` the release build beside it is used). node_exporter comes from Debian's
//! `prometheus-node-exporter` package (or `NODE_EXPORTER=PATH`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hashfleet_tests::TestCommander;

const INTERVAL: Duration = Duration::from_secs(10);

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (CPU seconds, RSS KiB) of one process, itself only.
fn sample(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit(')').next()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some((cpu, rss))
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .map(|d| d.join(name))
        .filter(|p| p.exists())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no {name} beside {}: cargo build --release -p hashfleet-sentry-host first",
                exe.display()
            )
        })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .map_err(|_| anyhow::anyhow!("usage: host-footprint [SECONDS]"))?
        .unwrap_or(600);
    let sentry_bin = match std::env::var("SENTRY_HOST") {
        Ok(p) => PathBuf::from(p),
        Err(_) => sibling("hashfleet-sentry-host")?,
    };
    let exporter = std::env::var("NODE_EXPORTER")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/usr/bin/prometheus-node-exporter"));
    anyhow::ensure!(
        exporter.exists(),
        "{} is missing: apt-get install prometheus-node-exporter (or set NODE_EXPORTER)",
        exporter.display()
    );
    let dir = tempfile::tempdir()?;
    let commander = TestCommander::start_in(&dir.path().join("c"), None).await;
    let token = commander.enrollment_token(1).await;
    let config = dir.path().join("sentry-host.toml");
    let fakes = hashfleet_tests::fakes::start(dir.path()).await?;
    std::fs::write(&config, fakes.config_toml())?;

    let sentry = KillOnDrop(
        Command::new(&sentry_bin)
            .args(["run", "--home"])
            .arg(dir.path().join("s"))
            .args(["--config"])
            .arg(&config)
            .args(["--commander", &commander.quic.to_string()])
            .args(["--commander-key", &commander.node_id.public_key_hex()])
            .args(["--enroll-token", &token])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exporter_child = KillOnDrop(
        Command::new(&exporter)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let scrape = format!("http://127.0.0.1:{port}/metrics");
    // Let both start (the sentry enrolls, the exporter binds).
    tokio::time::sleep(Duration::from_secs(5)).await;

    let pids = [
        ("sentry-host", sentry.0.id()),
        ("node_exporter", exporter_child.0.id()),
    ];
    let start: Vec<(f64, u64)> = pids
        .iter()
        .map(|(_, p)| sample(*p).unwrap_or_default())
        .collect();
    let mut rss: Vec<Vec<u64>> = vec![Vec::new(); pids.len()];
    let began = Instant::now();
    let client = reqwest::Client::new();
    while began.elapsed() < Duration::from_secs(secs) {
        let _ = client
            .get(&scrape)
            .send()
            .await
            .and_then(|r| r.error_for_status());
        tokio::time::sleep(INTERVAL).await;
        for (i, (_, pid)) in pids.iter().enumerate() {
            if let Some((_, r)) = sample(*pid) {
                rss[i].push(r);
            }
        }
    }
    let wall = began.elapsed().as_secs_f64();
    println!("sentry-host binary: {}", sentry_bin.display());
    println!(
        "host-footprint: {:.0} s at a {} s interval on {} cores",
        wall,
        INTERVAL.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (i, (name, pid)) in pids.iter().enumerate() {
        let (cpu_end, _) = sample(*pid).unwrap_or_default();
        let cpu = cpu_end - start[i].0;
        let r = &rss[i];
        let avg = r.iter().sum::<u64>() as f64 / r.len().max(1) as f64 / 1024.0;
        let max = r.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
        println!(
            "{name:>14}: RSS avg {avg:.1} MiB, max {max:.1} MiB; CPU {cpu:.2} s = {:.3}% of a core",
            100.0 * cpu / wall
        );
    }
    let stored = commander
        .sentries()
        .await
        .first()
        .and_then(|s| s["heartbeats"].as_u64())
        .unwrap_or(0);
    println!("heartbeats stored by the commander meanwhile: {stored}");
    Ok(())
}
