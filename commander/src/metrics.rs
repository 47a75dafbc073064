//! The commander's own counters, rendered in the Prometheus text format.
//!
//! Naming follows the Prometheus guide: `hashfleet_` prefix, `_total` on
//! counters, base units (seconds), bounded label values only.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use hashfleet_shared::wire::NackReason;

/// Results a heartbeat can have, as `result` label values.
pub const HEARTBEAT_RESULTS: [&str; 8] = [
    "ok",
    "duplicate",
    "bad_sig",
    "replay",
    "foreign",
    "not_approved",
    "malformed",
    "clock_skew",
];

/// Results a handshake can have.
pub const HANDSHAKE_RESULTS: [&str; 9] = [
    "ok",
    "tls_refused",
    "rejected",
    "bad_proof",
    "timeout",
    "protocol_error",
    "store_error",
    "refused_capacity",
    "refused_source",
];

/// Results a node key rotation can have.
pub const ROTATION_RESULTS: [&str; 3] = ["done", "already", "refused"];

/// Bucket bounds (seconds) of the ingest histograms.
const COMMIT_BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Debug, Default)]
pub struct Metrics {
    heartbeats: [AtomicU64; 8],
    handshakes: [AtomicU64; 9],
    rotations: [AtomicU64; 3],
    connected: AtomicI64,
    verify_batches: AtomicU64,
    verify_signatures: AtomicU64,
    commit: Histogram,
    latency: Histogram,
}

impl Metrics {
    pub fn heartbeat(&self, result: &str) {
        self.heartbeats_n(result, 1);
    }

    pub fn heartbeats_n(&self, result: &str, n: u64) {
        if let Some(i) = HEARTBEAT_RESULTS.iter().position(|r| *r == result) {
            self.heartbeats[i].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn rejected(&self, reason: NackReason) {
        self.heartbeat(reason.as_str());
    }

    pub fn heartbeats_of(&self, result: &str) -> u64 {
        HEARTBEAT_RESULTS
            .iter()
            .position(|r| *r == result)
            .map(|i| self.heartbeats[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    pub fn handshake(&self, result: &str) {
        if let Some(i) = HANDSHAKE_RESULTS.iter().position(|r| *r == result) {
            self.handshakes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn rotation(&self, result: &str) {
        if let Some(i) = ROTATION_RESULTS.iter().position(|r| *r == result) {
            self.rotations[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One batch of `n` heartbeat signatures was checked.
    pub fn verified_batch(&self, n: usize) {
        self.verify_batches.fetch_add(1, Ordering::Relaxed);
        self.verify_signatures
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Batches and signatures checked so far.
    pub fn verified(&self) -> (u64, u64) {
        (
            self.verify_batches.load(Ordering::Relaxed),
            self.verify_signatures.load(Ordering::Relaxed),
        )
    }

    pub fn connected(&self, delta: i64) {
        self.connected.fetch_add(delta, Ordering::Relaxed);
    }

    /// Time to store and flush one batch.
    pub fn commit(&self, seconds: f64) {
        self.commit.observe(seconds);
    }

    /// Time from receiving a heartbeat to having it durably stored.
    pub fn ingest_latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    /// Prometheus text exposition of everything, plus the store size.
    pub fn render(&self, store_bytes: u64, sentries: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP hashfleet_build_info Build of the running commander."
        );
        let _ = writeln!(out, "# TYPE hashfleet_build_info gauge");
        let _ = writeln!(
            out,
            "hashfleet_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        counter_family(
            &mut out,
            "hashfleet_heartbeats_total",
            "Heartbeats received, by result.",
            &HEARTBEAT_RESULTS,
            &self.heartbeats,
        );
        counter_family(
            &mut out,
            "hashfleet_handshakes_total",
            "Session handshakes, by result.",
            &HANDSHAKE_RESULTS,
            &self.handshakes,
        );
        counter_family(
            &mut out,
            "hashfleet_node_key_rotations_total",
            "Sentry node key rotations, by result.",
            &ROTATION_RESULTS,
            &self.rotations,
        );
        let _ = writeln!(
            out,
            "# HELP hashfleet_connected_sentries Sentries with a live session."
        );
        let _ = writeln!(out, "# TYPE hashfleet_connected_sentries gauge");
        let _ = writeln!(
            out,
            "hashfleet_connected_sentries {}",
            self.connected.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP hashfleet_sentries Sentries known to this commander."
        );
        let _ = writeln!(out, "# TYPE hashfleet_sentries gauge");
        let _ = writeln!(out, "hashfleet_sentries {sentries}");
        let (batches, signatures) = self.verified();
        let _ = writeln!(
            out,
            "# HELP hashfleet_verify_batches_total Batches of heartbeat signatures checked."
        );
        let _ = writeln!(out, "# TYPE hashfleet_verify_batches_total counter");
        let _ = writeln!(out, "hashfleet_verify_batches_total {batches}");
        let _ = writeln!(
            out,
            "# HELP hashfleet_verify_signatures_total Heartbeat signatures checked in batches."
        );
        let _ = writeln!(out, "# TYPE hashfleet_verify_signatures_total counter");
        let _ = writeln!(out, "hashfleet_verify_signatures_total {signatures}");
        self.commit.render(
            &mut out,
            "hashfleet_ingest_commit_seconds",
            "Time to store and flush one batch of heartbeats.",
        );
        self.latency.render(
            &mut out,
            "hashfleet_ingest_latency_seconds",
            "Time from receiving a heartbeat to storing it durably.",
        );
        let _ = writeln!(
            out,
            "# HELP hashfleet_store_size_bytes Bytes the store occupies on disk."
        );
        let _ = writeln!(out, "# TYPE hashfleet_store_size_bytes gauge");
        let _ = writeln!(out, "hashfleet_store_size_bytes {store_bytes}");
        out
    }
}

/// A counter with one `result` label value per slot.
fn counter_family(
    out: &mut String,
    name: &str,
    help: &str,
    results: &[&str],
    values: &[AtomicU64],
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (r, v) in results.iter().zip(values) {
        let _ = writeln!(
            out,
            "{name}{{result=\"{r}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
}

/// A Prometheus histogram with fixed buckets (seconds).
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; 10],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, seconds: f64) {
        for (i, bound) in COMMIT_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (i, bound) in COMMIT_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}
