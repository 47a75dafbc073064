//! The benchmark table, `docs/benchmarks.md`. Measures and writes; asserts
//! nothing. Run by `tests/bench/run.sh`, which builds everything in release
//! first; this driver finds `hashfleet-commander` and `hashfleet-loadgen`
//! next to itself.
//!
//! Each scenario gets a fresh `hashfleet-commander serve` (its own process,
//! so its RSS and CPU are its own) and one `hashfleet-loadgen` run against
//! it, on this machine. The reference, Ed25519 verification on one core, is
//! measured in this process in the same run.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde_json::Value;

#[derive(Parser)]
#[command(name = "bench-report", about = "Writes docs/benchmarks.md")]
struct Args {
    /// Where the table goes.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// Seconds of sending in each ingest scenario.
    #[arg(long, default_value_t = 30)]
    ingest_secs: u64,
    /// Fleet sizes tried at a 30 s interval, smallest first; the run stops
    /// at the first that breaks (see `broke`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,25000,50000,100000"
    )]
    capacity: Vec<usize>,
    /// Seconds of sending at each capacity step (two heartbeats a sentry).
    #[arg(long, default_value_t = 60)]
    capacity_secs: u64,
    /// Divide every fleet size by 100 and shorten every run: checks the
    /// driver, measures nothing worth keeping.
    #[arg(long)]
    quick: bool,
}

/// A bare Ed25519 reference: verifications per second on this core.
struct Reference {
    message_bytes: usize,
    single_per_s: f64,
    batch_per_s: f64,
    batch: usize,
}

fn reference() -> Reference {
    const KEYS: usize = 256;
    const BATCH: usize = 64;
    // About a one-device heartbeat's signed bytes.
    let message_bytes = 400;
    let keys: Vec<SigningKey> = (0..KEYS)
        .map(|_| SigningKey::from_bytes(&hashfleet_shared::random_bytes()))
        .collect();
    let messages: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| (0..message_bytes).map(|j| (i * 31 + j) as u8).collect())
        .collect();
    let sigs: Vec<Signature> = keys.iter().zip(&messages).map(|(k, m)| k.sign(m)).collect();
    let vks: Vec<VerifyingKey> = keys.iter().map(|k| k.verifying_key()).collect();
    let run_for = Duration::from_secs(3);

    let t = Instant::now();
    let mut n = 0usize;
    while t.elapsed() < run_for {
        let i = n % KEYS;
        vks[i]
            .verify_strict(&messages[i], &sigs[i])
            .expect("a valid signature");
        n += 1;
    }
    let single_per_s = n as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut n = 0usize;
    while t.elapsed() < run_for {
        let at = (n / BATCH * BATCH) % (KEYS - BATCH);
        let msgs: Vec<&[u8]> = messages[at..at + BATCH].iter().map(Vec::as_slice).collect();
        ed25519_dalek::verify_batch(&msgs, &sigs[at..at + BATCH], &vks[at..at + BATCH])
            .expect("a valid batch");
        n += BATCH;
    }
    let batch_per_s = n as f64 / t.elapsed().as_secs_f64();
    Reference {
        message_bytes,
        single_per_s,
        batch_per_s,
        batch: BATCH,
    }
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0 // USER_HZ
}

/// A `VmRSS:`/`VmHWM:` figure of a process, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

struct Commander {
    child: Child,
    quic: String,
    key: String,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Commander {
    fn start(bin: &Path) -> anyhow::Result<Commander> {
        let dir = tempfile::tempdir()?;
        // A free UDP port on loopback: bound, read, released.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let quic = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("commander.log"))?;
        let data = dir.path().join("data");
        let child = Command::new(bin)
            .args(["serve", "--data-dir"])
            .arg(&data)
            .args(["--quic-listen", &quic, "--http-listen", "127.0.0.1:0"])
            // Warnings, and each fleet checkpoint with its duration.
            .env("RUST_LOG", "warn,hashfleet_commander::upkeep=debug")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let t = Instant::now();
        while !data.join("http.addr").exists() {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(60),
                "the commander did not start; see {}",
                dir.path().join("commander.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let info = Command::new(bin)
            .args(["info", "--json", "--data-dir"])
            .arg(&data)
            .output()?;
        let info: Value = serde_json::from_slice(&info.stdout).context("commander info --json")?;
        let key = info["public_key"]
            .as_str()
            .context("no public_key in `info --json`")?
            .to_string();
        Ok(Commander {
            child,
            quic,
            key,
            dir,
            bin: bin.to_path_buf(),
        })
    }

    /// Durations of the fleet checkpoints the commander logged, in ms.
    fn checkpoints_ms(&self) -> Vec<u64> {
        std::fs::read_to_string(self.dir.path().join("commander.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("checkpoint") && l.contains(" ms="))
            .filter_map(|l| {
                l.rsplit_once(" ms=")?
                    .1
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// Ingest commits (store + flush of one batch) that took over 100 ms,
    /// and all of them, from `/metrics`.
    fn slow_commits(&self) -> anyhow::Result<(u64, u64)> {
        let data = self.dir.path().join("data");
        let addr = std::fs::read_to_string(data.join("http.addr"))?;
        let token = std::fs::read_to_string(data.join("admin.token"))?;
        let mut conn = std::net::TcpStream::connect(addr.trim())?;
        write!(
            conn,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            addr.trim(),
            token.trim()
        )?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut conn, &mut text)?;
        let bucket = |le: &str| {
            hashfleet_tests::parse_metric(
                &text,
                &format!("hashfleet_ingest_commit_seconds_bucket{{le=\"{le}\"}}"),
            )
            .unwrap_or(0.0) as u64
        };
        let all = bucket("+Inf");
        Ok((all - bucket("0.1"), all))
    }

    fn token(&self, uses: usize) -> anyhow::Result<String> {
        let out = Command::new(&self.bin)
            .args(["token", "create", "--uses", &uses.to_string()])
            .args(["--ttl-secs", "7200", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }
}

impl Drop for Commander {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One scenario's figures.
struct Row {
    name: String,
    command: String,
    summary: Value,
    rss_peak: u64,
    rss_end: u64,
    /// Commander CPU while sending, in cores (1.0 = one core busy).
    cpu_cores: f64,
    /// The load generator's, same window.
    loadgen_cores: f64,
    checkpoints_ms: Vec<u64>,
    /// Commits over 100 ms, of all commits.
    slow_commits: (u64, u64),
}

fn scenario(
    name: &str,
    commander_bin: &Path,
    loadgen_bin: &Path,
    sentries: usize,
    interval_ms: u64,
    secs: u64,
) -> anyhow::Result<Row> {
    eprintln!("== {name}: {sentries} sentries, interval {interval_ms} ms, {secs} s");
    let c = Commander::start(commander_bin)?;
    let token = c.token(sentries)?;
    let args: Vec<String> = vec![
        "--commander".into(),
        c.quic.clone(),
        "--commander-key".into(),
        c.key.clone(),
        "--enroll-token".into(),
        token,
        "--sentries".into(),
        sentries.to_string(),
        "--interval-ms".into(),
        interval_ms.to_string(),
        "--duration-secs".into(),
        secs.to_string(),
    ];
    let command = format!(
        "hashfleet-loadgen --commander ADDR --commander-key KEY --enroll-token TOKEN --sentries {sentries} --interval-ms {interval_ms} --duration-secs {secs}"
    );
    let mut lg = Command::new(loadgen_bin)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", loadgen_bin.display()))?;
    let lg_pid = lg.id();
    let c_pid = c.child.id();
    // CPU of both processes when the clock starts: the loadgen says when.
    let started: Arc<Mutex<Option<(Instant, f64, f64)>>> = Arc::default();
    let stderr = lg.stderr.take().expect("piped");
    let mark = started.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("loadgen: connected") {
                *mark.lock().unwrap() = Some((Instant::now(), cpu_secs(c_pid), cpu_secs(lg_pid)));
            }
            eprintln!("   {line}");
        }
    });
    let mut stdout = lg.stdout.take().expect("piped");
    let mut rss_peak = 0;
    let (mut c_cpu_end, mut lg_cpu_end, mut end) = (0.0, 0.0, Instant::now());
    while lg.try_wait()?.is_none() {
        rss_peak = rss_peak.max(status_bytes(c_pid, "VmRSS:"));
        // Sampled until the loadgen exits: the last sample is its end.
        (c_cpu_end, lg_cpu_end, end) = (cpu_secs(c_pid), cpu_secs(lg_pid), Instant::now());
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut out)?;
    let _ = reader.join();
    let summary: Value = serde_json::from_str(out.trim())
        .with_context(|| format!("the load generator printed {out:?}"))?;
    let rss_end = status_bytes(c_pid, "VmRSS:");
    let slow_commits = c.slow_commits().unwrap_or((0, 0));
    let checkpoints_ms = c.checkpoints_ms();
    let rss_peak = rss_peak.max(status_bytes(c_pid, "VmHWM:"));
    let (t0, c_cpu0, lg_cpu0) = started
        .lock()
        .unwrap()
        .unwrap_or((end, c_cpu_end, lg_cpu_end));
    let wall = end.saturating_duration_since(t0).as_secs_f64().max(1e-3);
    eprintln!("   {summary}");
    Ok(Row {
        name: name.into(),
        command,
        summary,
        rss_peak,
        rss_end,
        cpu_cores: (c_cpu_end - c_cpu0) / wall,
        loadgen_cores: (lg_cpu_end - lg_cpu0) / wall,
        checkpoints_ms,
        slow_commits,
    })
}

/// A capacity step breaks when a sentry could not connect, more than 1%
/// of the sentries lost a session, the commander's RSS passed 4 GiB, or
/// the ack p99 passed 5 s (a sixth of the 30 s interval).
fn broke(row: &Row) -> bool {
    let s = &row.summary;
    let n = s["sentries"].as_u64().unwrap_or(0);
    s["not_connected"].as_u64() != Some(0)
        || s["errors"].as_u64().unwrap_or(0) * 100 > n
        || row.rss_peak > 4 << 30
        || f(s, "ack_p99_ms") > 5_000.0
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} cores ({model}), {:.1} GiB memory, Linux {}",
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        mem as f64 / (1 << 20) as f64,
        kernel.trim()
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let here = std::env::current_exe()?;
    let bin_dir = here.parent().context("no directory for this binary")?;
    let commander = bin_dir.join("hashfleet-commander");
    let loadgen = bin_dir.join("hashfleet-loadgen");
    for b in [&commander, &loadgen] {
        anyhow::ensure!(
            b.exists(),
            "{} is missing: build it first (tests/bench/run.sh does)",
            b.display()
        );
    }
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    eprintln!("== reference: Ed25519 verification on one core");
    let r = reference();
    eprintln!(
        "   single {:.0}/s, batch of {} {:.0}/s",
        r.single_per_s, r.batch, r.batch_per_s
    );
    let (scale, secs, cap_secs) = if args.quick {
        (100, 3, 3)
    } else {
        (1, args.ingest_secs, args.capacity_secs)
    };
    let ingest_1k = scenario(
        "ingest, 1k sentries",
        &commander,
        &loadgen,
        1_000 / scale,
        0,
        secs,
    )?;
    let ingest_10k = scenario(
        "ingest, 10k sentries",
        &commander,
        &loadgen,
        10_000 / scale,
        0,
        secs,
    )?;
    let at_5k = scenario(
        "ack latency at 5,000 hb/s",
        &commander,
        &loadgen,
        5_000 / scale,
        1_000,
        secs,
    )?;
    let mut capacity = Vec::new();
    for n in args.capacity.iter().map(|n| n / scale) {
        let row = scenario(
            &format!("capacity, {n} sentries at 30 s"),
            &commander,
            &loadgen,
            n,
            30_000,
            cap_secs,
        )?;
        let broke = broke(&row);
        capacity.push(row);
        if broke {
            break;
        }
    }

    let mut md = String::new();
    let w = &mut md;
    use std::fmt::Write as _;
    let _ = writeln!(w, "# Benchmarks\n");
    if args.quick {
        let _ = writeln!(
            w,
            "**A `--quick` run: fleets divided by 100; not the figures.**\n"
        );
    }
    let _ = writeln!(
        w,
        "Written by `tests/bench/run.sh` (the driver is `tests/src/bin/bench-report.rs`) on {started}.\n\
         Machine: {}. The commander and the load generator share it: every figure below\n\
         is measured with both running on these cores. The commander logs warnings and its checkpoints.\n",
        machine()
    );
    let _ = writeln!(w, "## Reference: Ed25519 on one core\n");
    let _ = writeln!(
        w,
        "`ed25519-dalek` `verify_strict` on {}-byte messages, keys decompressed once; batch\n\
         verification over {} signatures by {} different keys, as across connections.\n",
        r.message_bytes, r.batch, r.batch
    );
    let _ = writeln!(w, "| verification | per second |\n|---|---|");
    let _ = writeln!(w, "| single | {:.0} |", r.single_per_s);
    let _ = writeln!(w, "| batch of {} | {:.0} |\n", r.batch, r.batch_per_s);
    let _ = writeln!(w, "## Ingest and latency\n");
    let _ = writeln!(
        w,
        "One `hashfleet-commander serve` on a fresh data directory per row; `hashfleet-loadgen`\n\
         against it with one device a heartbeat. Interval 0 is as fast as acknowledged, one heartbeat\n\
         in flight a sentry. hb/s counts heartbeats verified, stored, flushed and acknowledged, from\n\
         the moment every sentry is connected. CPU is in cores (1.0 is one core busy) over the same\n\
         window; RSS is the commander's. Checkpoints are the fleet checkpoints (rollups and device\n\
         state every 30 s, written in parts of about 256 records that ingest commits run between)\n\
         the commander logged during the row, with their durations; commits are ingest batches\n\
         (store and flush), from its `/metrics`.\n"
    );
    let _ = writeln!(
        w,
        "| scenario | sentries | hb/s | ack p50 | ack p99 | commander RSS peak / end | commander CPU | loadgen CPU | errors | connect | checkpoints | commits > 100 ms |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let all: Vec<&Row> = [&ingest_1k, &ingest_10k, &at_5k]
        .into_iter()
        .chain(capacity.iter())
        .collect();
    for row in &all {
        let s = &row.summary;
        let _ = writeln!(
            w,
            "| {} | {} | {:.0} | {:.1} ms | {:.1} ms | {} / {} | {:.2} | {:.2} | {} | {:.1} s | {} | {} of {} |",
            row.name,
            s["sentries"].as_u64().unwrap_or(0) - s["not_connected"].as_u64().unwrap_or(0),
            f(s, "hb_per_s"),
            f(s, "ack_p50_ms"),
            f(s, "ack_p99_ms"),
            mib(row.rss_peak),
            mib(row.rss_end),
            row.cpu_cores,
            row.loadgen_cores,
            s["errors"].as_u64().unwrap_or(0),
            f(s, "connect_secs"),
            if row.checkpoints_ms.is_empty() {
                "none".to_string()
            } else {
                row.checkpoints_ms
                    .iter()
                    .map(|ms| format!("{ms} ms"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            row.slow_commits.0,
            row.slow_commits.1,
        );
    }
    let ratio = f(&ingest_10k.summary, "hb_per_s") / r.single_per_s;
    let _ = writeln!(
        w,
        "\nIngest at 10k sentries against single verification on one core: {:.0} / {:.0} = **{ratio:.2}**\n\
         (the machine has {} cores, shared with the load generator).\n",
        f(&ingest_10k.summary, "hb_per_s"),
        r.single_per_s,
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    let _ = writeln!(
        w,
        "Capacity steps run from the smallest fleet up and stop at the first that breaks: a sentry\n\
         that cannot connect, more than 1% of the sentries losing a session, commander RSS over\n\
         4 GiB, or an ack p99 over 5 s (a sixth of the 30 s interval).\n"
    );
    let _ = writeln!(w, "## Goals\n");
    let _ = writeln!(w, "| goal | measured | met |\n|---|---|---|");
    let hb10k = f(&ingest_10k.summary, "hb_per_s");
    let _ = writeln!(
        w,
        "| ≥ 20,000 verified and persisted hb/s with 10,000 sentries connected | {hb10k:.0} hb/s | {} |",
        if hb10k >= 20_000.0 { "yes" } else { "no" }
    );
    let p99 = f(&at_5k.summary, "ack_p99_ms");
    let rate5k = f(&at_5k.summary, "hb_per_s");
    let _ = writeln!(
        w,
        "| ack p99 ≤ 50 ms at 5,000 hb/s | p99 {p99:.1} ms at {rate5k:.0} hb/s | {} |",
        if p99 <= 50.0 && rate5k >= 4_750.0 {
            "yes"
        } else {
            "no"
        }
    );
    let best = capacity
        .iter()
        .filter(|r| !broke(r))
        .max_by_key(|r| r.summary["sentries"].as_u64().unwrap_or(0));
    let (cap_n, cap_rss) = best.map_or((0, 0), |r| {
        (r.summary["sentries"].as_u64().unwrap_or(0), r.rss_peak)
    });
    let _ = writeln!(
        w,
        "| 100,000 connected sentries at a 30 s interval, commander RSS ≤ 4 GiB | {cap_n} connected, RSS peak {} | {} |\n",
        mib(cap_rss),
        if cap_n >= 100_000 && cap_rss <= 4 << 30 { "yes" } else { "no" }
    );
    let _ = writeln!(w, "## Commands\n");
    let _ = writeln!(w, "```\ntests/bench/run.sh\n```\n");
    let _ = writeln!(w, "Each row ran:\n");
    for row in &all {
        let _ = writeln!(w, "- {}: `{}`", row.name, row.command);
    }
    let _ = writeln!(
        w,
        "\nwith `hashfleet-commander serve --data-dir DIR --quic-listen 127.0.0.1:PORT --http-listen 127.0.0.1:0`\n\
         and `hashfleet-commander token create --uses N`."
    );
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::create(&args.out)
        .and_then(|mut f| f.write_all(md.as_bytes()))
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("== wrote {}", args.out.display());
    print!("{md}");
    Ok(())
}
