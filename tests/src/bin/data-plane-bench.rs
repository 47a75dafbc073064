//! Data-plane figures on this machine. Measures and prints; asserts nothing.
//!
//! `cargo run --release -p hashfleet-tests --bin data-plane-bench`
//!
//! - device query latency over 10,000 devices (100 virtual sentries × 100);
//! - history query latency over 30 days of 1-minute data of one device;
//! - bytes on disk per stored sample, and sled's on-disk size against the
//!   logical size of its keys and values.

use std::time::{Duration, Instant};

use hashfleet_commander::fleet::rollup::Resolution;
use hashfleet_shared::now_ms;
use hashfleet_tests::{device, TestCommander, VirtualSentry};
use serde_json::json;

const MIN: u64 = 60_000;
const DAY: u64 = 86_400_000;

/// The 100 miners of virtual sentry `s`.
fn fleet_devices(s: u64) -> Vec<hashfleet_shared::wire::DeviceSnapshot> {
    (0..100)
        .map(|i| {
            let n = s * 100 + i;
            let make = if n % 3 == 0 { "Whatsminer" } else { "Antminer" };
            device(
                &format!(
                    "aa:bb:{:02x}:{:02x}:{:02x}:{:02x}",
                    n >> 24 & 255,
                    n >> 16 & 255,
                    n >> 8 & 255,
                    n & 255
                ),
                "miner",
                make,
                if n % 2 == 0 { "S21" } else { "M56S" },
                &[
                    ("hashrate_hs", 100e12 + (n % 100) as f64 * 1e12),
                    ("expected_hashrate_hs", 200e12),
                    ("power_w", 3000.0 + (n % 50) as f64),
                    ("temp_c", 50.0 + (n % 40) as f64),
                    ("fan_rpm", 4000.0),
                    ("uptime_s", 3600.0),
                ],
            )
        })
        .collect()
}

fn pct(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    (p(0.5), p(0.99))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut c = TestCommander::start_with(&dir.path().join("c"), None, |cfg| {
        cfg.retention.m1 = Duration::from_secs(40 * 86_400);
        cfg.retention.heartbeats_max_age = Duration::from_secs(40 * 86_400);
    })
    .await;

    // 10,000 devices.
    let t = Instant::now();
    let mut samples = 0u64;
    let mut sentries = Vec::new();
    for s in 0..100u64 {
        let mut v = VirtualSentry::enroll(
            &c,
            &[
                ("site", &format!("s{}", s % 10)),
                ("rack", &format!("r{s}")),
            ],
        )
        .await;
        v.send(now_ms(), fleet_devices(s)).await;
        sentries.push(v);
        samples += 100 * 6;
    }
    println!(
        "ingested 10,000 devices in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let app = c.running.as_ref().unwrap().app.clone();
    let t = Instant::now();
    hashfleet_commander::upkeep::checkpoint_now(&app).await;
    println!(
        "first checkpoint of 10,000 devices, every resolution: {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    // A second round, as ten seconds later, then each cadence's checkpoint.
    for (s, v) in sentries.iter_mut().enumerate() {
        v.send(now_ms(), fleet_devices(s as u64)).await;
    }
    let cadences: [(&str, Vec<Resolution>); 3] = [
        ("1m + devices (every round)", vec![Resolution::M1]),
        ("5m (every 2nd round)", vec![Resolution::M5]),
        (
            "1h + 1d (every 10th round)",
            vec![Resolution::H1, Resolution::D1 { offset_ms: 0 }],
        ),
    ];
    for (name, resolutions) in cadences {
        let t = Instant::now();
        let stats = app
            .fleet
            .checkpoint(app.store.as_ref(), now_ms(), &resolutions)?;
        println!(
            "steady-state checkpoint {name}: {} buckets, {} devices, {:.0} ms",
            stats.buckets,
            stats.devices,
            t.elapsed().as_secs_f64() * 1e3
        );
    }

    let queries = [
        (
            "type = miner, first 100",
            json!({"query": {"type": "miner"}, "limit": 100}),
        ),
        (
            "hashrate > 150 TH/s at one site, sorted, 50",
            json!({"query": {"hashrate_hs": {"$gt": 150e12}, "tags": "site-s7"}, "sort": {"hashrate_hs": -1}, "limit": 50}),
        ),
        (
            "$or + $regex, projected, 1000",
            json!({"query": {"$or": [{"model": {"$regex": "^m56", "$options": "i"}}, {"temp_c": {"$gte": 85}}]},
                   "fields": {"id": 1, "temp_c": 1}, "limit": 1000}),
        ),
    ];
    for (name, q) in &queries {
        let mut times = Vec::new();
        let mut total = 0;
        for _ in 0..30 {
            let t = Instant::now();
            let (status, body) = c.post("/api/v1/devices/query", q.clone()).await;
            times.push(t.elapsed());
            assert_eq!(status, 200, "{body}");
            total = body["total"].as_u64().unwrap_or(0);
        }
        let (p50, p99) = pct(times);
        println!("device query over 10,000 devices — {name}: {total} matches, p50 {p50:.1} ms, p99 {p99:.1} ms (HTTP round trip)");
    }

    // 30 days of 1-minute data for one device.
    let mut v = VirtualSentry::enroll(&c, &[("site", "hist")]).await;
    let end = (now_ms() / MIN) * MIN;
    let start = end - 30 * DAY;
    let t = Instant::now();
    let mut ts = start;
    let mut n = 0u64;
    while ts < end {
        v.send(
            ts,
            vec![device(
                "hist-1",
                "miner",
                "Antminer",
                "S21",
                &[("hashrate_hs", 200e12 + (n % 60) as f64)],
            )],
        )
        .await;
        ts += MIN;
        n += 1;
    }
    samples += n;
    println!(
        "sent {n} one-minute samples in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for res in ["1m", "1h", "1d"] {
        let path = format!("/api/v1/devices/hist-1/history?metric=hashrate_hs&resolution={res}&start={start}&end={end}");
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..10 {
            let t = Instant::now();
            let body = c.get(&path).await;
            times.push(t.elapsed());
            rows = body.as_array().map(|a| a.len()).unwrap_or(0);
        }
        let (p50, p99) = pct(times);
        println!("history over 30 days at {res}: {rows} rows, p50 {p50:.1} ms, p99 {p99:.1} ms");
    }

    // Sizes after a checkpoint (every rollup on disk) and a retention pass.
    let t = Instant::now();
    hashfleet_commander::upkeep::checkpoint_now(&app).await;
    println!(
        "final checkpoint took {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    app.store.flush()?;
    let disk = app.store.size_on_disk()?;
    let logical = app.store.logical_bytes()?;
    println!("samples stored (metric values): {samples}");
    println!(
        "sled on disk {:.1} MiB, logical keys+values {:.1} MiB (ratio {:.2})",
        disk as f64 / 1048576.0,
        logical as f64 / 1048576.0,
        disk as f64 / logical as f64
    );
    println!(
        "bytes on disk per stored sample (raw heartbeats + all rollups): {:.0}",
        disk as f64 / samples as f64
    );
    println!(
        "logical bytes per stored sample: {:.0}",
        logical as f64 / samples as f64
    );
    c.stop().await;
    Ok(())
}
