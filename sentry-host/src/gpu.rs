//! The GPU collector: this host's NVIDIA GPUs as `gpu` devices, from
//! `nvidia-smi` and the DCGM exporter.
//!
//! **Sources.** `nvidia-smi --query-gpu=… --format=csv,noheader,nounits` is
//! the primary source. A dcgm-exporter (`dcgm_url`, Prometheus text) is the
//! fallback when nvidia-smi is absent or fails, and a supplement when both
//! work: its readings are merged into the nvidia-smi device with the same
//! UUID, nvidia-smi winning where both have a metric (so DCGM adds
//! `xid_errors`, `energy_j`, `mem_free_bytes` and fills readings nvidia-smi
//! gave as `[N/A]`). GPUs only DCGM knows are reported from DCGM alone. Both
//! sources are read at the same time, each within the timeout, so a
//! collection never holds the heartbeat much longer than the timeout.
//!
//! **No I/O in the parsers.** [`parse_smi`] and [`parse_dcgm`] are pure
//! functions over text, and the merge is too; [`GpuCollector`] only runs
//! the program (stdout capped at [`MAX_SMI_OUTPUT`], killed with its process
//! group on timeout) and fetches the page (body capped at [`MAX_DCGM_BODY`]).
//!
//! **Soft failure.** A collection never panics and never fails the
//! heartbeat:
//! - no `nvidia_smi` configured, none on `PATH` and no `dcgm_url`: the
//!   collector is off, logs that once and reports no devices;
//! - one source fails, the other works: the working source's devices, each
//!   with a medium `gpu_collector_error` alert naming the failure;
//! - every source fails: the GPUs of earlier collections with label
//!   `state=error`, an `error` label and a medium `gpu_collector_error`
//!   alert, keeping only the `gpu_index` metric (old readings are not
//!   passed off as new ones). If no GPU was ever seen, one device with id
//!   [`COLLECTOR_DEVICE_ID`] (kind `gpu`) carries the error instead;
//! - an nvidia-smi line that cannot be read (wrong number of fields, no
//!   UUID) is skipped: the GPU it names by UUID is reported failed as
//!   above, and an error that names no GPU goes on the
//!   [`COLLECTOR_DEVICE_ID`] device;
//! - a GPU that simply stops being listed is not reported: the commander
//!   ages it to stale, then lost, like any device that stops reporting.
//!
//! [`GpuCollector::state`] sums this up for the status API: `off: …`,
//! `ok`, `degraded: …` (some readings missing) or `error: …` (no fresh
//! reading at all).

use hashfleet_agent::text::{clip, error_chain};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::ops::RangeInclusive;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hashfleet_shared::wire::{DeviceAlert, DeviceSnapshot, Severity};
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long one source may take, by default.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;
/// Timeouts a config may ask for, ms.
pub const TIMEOUT_RANGE_MS: RangeInclusive<u64> = 100..=60_000;
/// Largest nvidia-smi output read; more is an error.
pub const MAX_SMI_OUTPUT: usize = 1024 * 1024;
/// Largest DCGM exporter page read; more is an error.
pub const MAX_DCGM_BODY: usize = 4 * 1024 * 1024;
/// Most GPUs reported; the rest are left out (and the state says so).
pub const MAX_GPUS: usize = 64;
/// Longest raw reply kept in a snapshot.
pub const MAX_RAW: usize = 4096;
/// At or above this temperature a GPU gets a high `gpu_temp_high` alert.
pub const TEMP_HIGH_C: f64 = 85.0;
/// At or above this temperature a GPU gets a critical `gpu_temp_critical`
/// alert (instead of the high one).
pub const TEMP_CRITICAL_C: f64 = 95.0;
/// The device that carries errors no GPU can be named for.
pub const COLLECTOR_DEVICE_ID: &str = "gpu-collector";
/// The `--query-gpu` fields, in the order [`parse_smi`] reads them.
pub const SMI_QUERY: &str = "index,uuid,name,pci.bus_id,driver_version,pstate,temperature.gpu,\
fan.speed,power.draw,power.limit,clocks.sm,clocks.mem,utilization.gpu,utilization.memory,\
memory.total,memory.used";

/// Fields in one nvidia-smi line (the fields of [`SMI_QUERY`]).
const SMI_FIELDS: usize = 16;
/// The nvidia-smi numeric fields: field index, metric, factor to base units.
const SMI_METRICS: [(usize, &str, f64); 11] = [
    (6, "temp_c", 1.0),
    (7, "fan_pct", 1.0),
    (8, "power_w", 1.0),
    (9, "power_limit_w", 1.0),
    (10, "sm_clock_mhz", 1.0),
    (11, "mem_clock_mhz", 1.0),
    (12, "util_pct", 1.0),
    (13, "mem_util_pct", 1.0),
    (14, "mem_total_bytes", MIB),
    (15, "mem_used_bytes", MIB),
    (0, "gpu_index", 1.0),
];
/// The DCGM exporter metrics read: name, metric, factor to base units.
const DCGM_METRICS: [(&str, &str, f64); 9] = [
    ("DCGM_FI_DEV_GPU_TEMP", "temp_c", 1.0),
    ("DCGM_FI_DEV_POWER_USAGE", "power_w", 1.0),
    ("DCGM_FI_DEV_GPU_UTIL", "util_pct", 1.0),
    ("DCGM_FI_DEV_FB_USED", "mem_used_bytes", MIB),
    ("DCGM_FI_DEV_FB_FREE", "mem_free_bytes", MIB),
    ("DCGM_FI_DEV_SM_CLOCK", "sm_clock_mhz", 1.0),
    ("DCGM_FI_DEV_MEM_CLOCK", "mem_clock_mhz", 1.0),
    ("DCGM_FI_DEV_XID_ERRORS", "xid_errors", 1.0),
    // mJ.
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "energy_j", 0.001),
];
const MIB: f64 = 1024.0 * 1024.0;
/// Longest text field (name, UUID, bus id…) kept from a source.
const MAX_TEXT: usize = 128;
/// Longest `error` label.
const MAX_ERROR_LABEL: usize = 500;
/// Stderr kept from nvidia-smi for the error message.
const MAX_STDERR: usize = 2048;
/// After nvidia-smi exits, how long its output may still take to arrive.
const DRAIN: Duration = Duration::from_millis(200);

/// The `[gpu]` settings. Nothing is wired to a config file here; a config
/// that embeds this gets unknown keys refused and [`GpuConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuConfig {
    /// nvidia-smi to run; default: `nvidia-smi` on `PATH`, if there is one.
    pub nvidia_smi: Option<PathBuf>,
    /// A dcgm-exporter, e.g. `http://127.0.0.1:9400/metrics` (`/metrics`
    /// is added to a URL with no path).
    pub dcgm_url: Option<String>,
    /// How long each source may take, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            nvidia_smi: None,
            dcgm_url: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }
}

impl GpuConfig {
    /// Checks the URL and the timeout; the error says which and why.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.dcgm_url {
            dcgm_metrics_url(url).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if let Some(p) = &self.nvidia_smi {
            if p.as_os_str().is_empty() {
                anyhow::bail!("nvidia_smi is empty: give a path, or leave it out to use PATH");
            }
        }
        if !TIMEOUT_RANGE_MS.contains(&self.timeout_ms) {
            anyhow::bail!(
                "timeout_ms must be between {} and {}, not {}",
                TIMEOUT_RANGE_MS.start(),
                TIMEOUT_RANGE_MS.end(),
                self.timeout_ms
            );
        }
        Ok(())
    }
}

/// The GPUs of this host, read each heartbeat (see the module docs).
pub struct GpuCollector {
    /// A configured nvidia-smi; `None`: look for one on the search path.
    nvidia_smi: Option<PathBuf>,
    /// Where to look for `nvidia-smi`; `None`: `$PATH`.
    search_path: Option<OsString>,
    dcgm_url: Option<String>,
    /// The exporter client, or why there is none (a bad URL).
    dcgm: Option<Result<Dcgm, String>>,
    timeout: Duration,
    /// The last good snapshot of each GPU, by UUID.
    seen: BTreeMap<String, DeviceSnapshot>,
    state: String,
    /// The state last logged, so the log shows changes only.
    logged: String,
}

struct Dcgm {
    url: reqwest::Url,
    http: reqwest::Client,
}

impl GpuCollector {
    /// A collector of `nvidia_smi` (default: `nvidia-smi` on `PATH`) and
    /// the exporter at `dcgm_url`, with the default timeout. A bad URL is
    /// reported by every collection (check it first with
    /// [`GpuConfig::validate`]).
    pub fn new(nvidia_smi: Option<PathBuf>, dcgm_url: Option<String>) -> GpuCollector {
        let timeout = Duration::from_millis(DEFAULT_TIMEOUT_MS);
        GpuCollector {
            nvidia_smi,
            search_path: None,
            dcgm: dcgm_url.as_deref().map(|u| dcgm_client(u, timeout)),
            dcgm_url,
            timeout,
            seen: BTreeMap::new(),
            state: "off: not collected yet".into(),
            logged: String::new(),
        }
    }

    /// A collector with the settings of `config`.
    pub fn from_config(config: &GpuConfig) -> GpuCollector {
        GpuCollector::new(config.nvidia_smi.clone(), config.dcgm_url.clone())
            .timeout(Duration::from_millis(config.timeout_ms))
    }

    /// How long each source may take.
    pub fn timeout(mut self, timeout: Duration) -> GpuCollector {
        self.timeout = timeout;
        self.dcgm = self.dcgm_url.as_deref().map(|u| dcgm_client(u, timeout));
        self
    }

    /// Looks for `nvidia-smi` in these directories (`PATH` syntax) instead
    /// of `$PATH`; for tests and for services with a bare `PATH`.
    pub fn search_path(mut self, path: impl Into<OsString>) -> GpuCollector {
        self.search_path = Some(path.into());
        self
    }

    /// `off: …`, `ok`, `degraded: …` or `error: …`, for the status API.
    pub fn state(&self) -> String {
        self.state.clone()
    }

    /// One snapshot of every GPU (see the module docs for failures).
    pub async fn collect(&mut self) -> Vec<DeviceSnapshot> {
        let program = match &self.nvidia_smi {
            Some(p) => Some(p.clone()),
            None => find_program("nvidia-smi", self.search_path.as_deref()),
        };
        if program.is_none() && self.dcgm.is_none() {
            self.set_state(format!(
                "off: no nvidia-smi on {} and no dcgm_url",
                if self.search_path.is_some() {
                    "the search path"
                } else {
                    "PATH"
                }
            ));
            return Vec::new();
        }
        let timeout = self.timeout;
        let smi = async {
            let program = program.as_deref()?;
            let who = format!("nvidia-smi `{}`", program.display());
            Some(
                run_smi(program, timeout)
                    .await
                    .map(|out| parse_smi(&out))
                    .map_err(|e| format!("{who}: {e}")),
            )
        };
        let dcgm = async {
            Some(match self.dcgm.as_ref()? {
                Ok(d) => fetch_dcgm(d, timeout).await.and_then(|body| {
                    parse_dcgm(&body).map_err(|e| format!("dcgm-exporter {}: {e}", d.url))
                }),
                Err(e) => Err(e.clone()),
            })
        };
        let (smi, dcgm) = tokio::join!(smi, dcgm);
        let round = assemble(smi, dcgm, &self.seen);
        if round.complete {
            self.seen.clear();
        }
        for d in &round.fresh {
            self.seen.insert(d.id.clone(), d.clone());
        }
        if self.seen.len() > MAX_GPUS {
            // UUIDs that came and went: keep the ones just seen.
            self.seen
                .retain(|id, _| round.fresh.iter().any(|d| &d.id == id));
        }
        self.set_state(round.state);
        round.devices
    }

    fn set_state(&mut self, state: String) {
        if state != self.logged {
            if state.starts_with("off") {
                tracing::info!("GPU collector {state}");
            } else if state == "ok" {
                tracing::info!("GPU collector ok");
            } else {
                tracing::warn!("GPU collector {state}");
            }
            self.logged = state.clone();
        }
        self.state = state;
    }
}

/// What nvidia-smi printed, read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SmiReading {
    /// One device per readable line, in output order.
    pub gpus: Vec<DeviceSnapshot>,
    /// The lines that could not be read.
    pub unreadable: Vec<SmiLineError>,
}

/// An nvidia-smi line that could not be read.
#[derive(Debug, Clone, PartialEq)]
pub struct SmiLineError {
    /// The UUID field, when the line has one that looks like a UUID.
    pub uuid: Option<String>,
    /// Which line and why, with the start of the line.
    pub message: String,
}

/// Reads `nvidia-smi --query-gpu=SMI_QUERY --format=csv,noheader,nounits`.
/// `[N/A]`, `[Not Supported]`, `N/A`, empty or non-numeric readings are
/// left out; a line without 16 fields or without a UUID is unreadable.
pub fn parse_smi(text: &str) -> SmiReading {
    let mut reading = SmiReading::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let uuid = fields.get(1).and_then(|u| uuid_text(u));
        let fail = |why: String| SmiLineError {
            uuid: uuid.clone(),
            message: format!("nvidia-smi line {}: {why}: `{}`", n + 1, clip(line, 80)),
        };
        if fields.len() != SMI_FIELDS {
            reading.unreadable.push(fail(format!(
                "{} fields where {SMI_FIELDS} were asked for",
                fields.len()
            )));
            continue;
        }
        let Some(id) = uuid.clone() else {
            reading.unreadable.push(fail("no GPU UUID".into()));
            continue;
        };
        if reading.gpus.len() == MAX_GPUS {
            reading
                .unreadable
                .push(fail(format!("more than {MAX_GPUS} GPUs")));
            continue;
        }
        let mut metrics = BTreeMap::new();
        for (i, name, factor) in SMI_METRICS {
            if let Some(v) = number(fields[i]) {
                metrics.insert(name.to_string(), v * factor);
            }
        }
        let mut labels = BTreeMap::new();
        labels.insert("state".to_string(), "online".to_string());
        labels.insert("source".to_string(), "nvidia-smi".to_string());
        for (i, name) in [(3, "pci_bus_id"), (5, "pstate")] {
            if let Some(t) = text_field(fields[i]) {
                labels.insert(name.to_string(), t);
            }
        }
        let raw = serde_json::json!({ "nvidia_smi": clip(line, 1024) }).to_string();
        reading.gpus.push(DeviceSnapshot {
            id,
            kind: "gpu".into(),
            make: "NVIDIA".into(),
            model: text_field(fields[2]).unwrap_or_default(),
            firmware: text_field(fields[4]).unwrap_or_default(),
            metrics,
            labels,
            alerts: Vec::new(),
            raw,
        });
    }
    reading
}

/// Reads a dcgm-exporter page into one device per GPU (by its `UUID`
/// label). A page with no `DCGM_FI_DEV_*` sample of a GPU is an error.
pub fn parse_dcgm(text: &str) -> Result<Vec<DeviceSnapshot>, String> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).map_err(|e| e.to_string())?;
    // UUID → (labels of its first sample, DCGM field → value).
    let mut gpus: BTreeMap<String, (DcgmLabels, BTreeMap<&'static str, f64>)> = BTreeMap::new();
    let mut more_gpus = false;
    for sample in &scrape.samples {
        let Some(&(field, _, _)) = DCGM_METRICS.iter().find(|m| m.0 == sample.metric) else {
            continue;
        };
        let value = match sample.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let Some(uuid) = label(&sample.labels, "UUID").and_then(uuid_text) else {
            continue;
        };
        if !gpus.contains_key(&uuid) && gpus.len() == MAX_GPUS {
            more_gpus = true;
            continue;
        }
        let gpu = gpus
            .entry(uuid)
            .or_insert_with(|| (DcgmLabels::of(&sample.labels), BTreeMap::new()));
        if value.is_finite() {
            // With MIG a GPU has one sample per instance: the first wins.
            gpu.1.entry(field).or_insert(value);
        }
    }
    if gpus.is_empty() {
        return Err(format!(
            "no DCGM_FI_DEV_* sample with a UUID label in {} bytes (is this a dcgm-exporter \
             /metrics page?): `{}`",
            text.len(),
            clip(text.trim_start(), 80)
        ));
    }
    if more_gpus {
        tracing::warn!("dcgm-exporter lists more than {MAX_GPUS} GPUs: the rest are left out");
    }
    Ok(gpus
        .into_iter()
        .map(|(uuid, (l, fields))| {
            let mut metrics = BTreeMap::new();
            for (field, name, factor) in DCGM_METRICS {
                if let Some(v) = fields.get(field) {
                    metrics.insert(name.to_string(), v * factor);
                }
            }
            if let (Some(used), Some(free)) =
                (metrics.get("mem_used_bytes"), metrics.get("mem_free_bytes"))
            {
                // Without the driver's reserved memory: nvidia-smi's total
                // is preferred when both sources work.
                metrics.insert("mem_total_bytes".into(), used + free);
            }
            if let Some(i) = l.gpu {
                metrics.insert("gpu_index".into(), i);
            }
            let mut labels = BTreeMap::new();
            labels.insert("state".to_string(), "online".to_string());
            labels.insert("source".to_string(), "dcgm".to_string());
            if let Some(d) = l.device {
                labels.insert("device".into(), d);
            }
            if let Some(p) = l.pci_bus_id {
                labels.insert("pci_bus_id".into(), p);
            }
            let raw = serde_json::json!({ "dcgm": fields }).to_string();
            DeviceSnapshot {
                id: uuid,
                kind: "gpu".into(),
                make: "NVIDIA".into(),
                model: l.model.unwrap_or_default(),
                firmware: l.driver.unwrap_or_default(),
                metrics,
                labels,
                alerts: Vec::new(),
                raw: clip(&raw, MAX_RAW),
            }
        })
        .collect())
}

/// The labels taken from a GPU's first DCGM sample.
struct DcgmLabels {
    gpu: Option<f64>,
    model: Option<String>,
    driver: Option<String>,
    device: Option<String>,
    pci_bus_id: Option<String>,
}

impl DcgmLabels {
    fn of(labels: &prometheus_parse::Labels) -> DcgmLabels {
        let text = |name| label(labels, name).and_then(text_field);
        DcgmLabels {
            gpu: label(labels, "gpu").and_then(number),
            model: text("modelName"),
            driver: text("DCGM_FI_DRIVER_VERSION"),
            device: text("device"),
            pci_bus_id: text("pci_bus_id"),
        }
    }
}

/// A label by name; the parser keeps any space after a comma in the name.
fn label<'a>(labels: &'a prometheus_parse::Labels, name: &str) -> Option<&'a str> {
    labels.get(name).or_else(|| {
        labels
            .iter()
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.as_str())
    })
}

/// One collection, put together from what each source gave.
struct Round {
    devices: Vec<DeviceSnapshot>,
    /// The devices with fresh readings (for the next failure).
    fresh: Vec<DeviceSnapshot>,
    /// Every source worked and every line was read: GPUs not listed are
    /// gone and need not be remembered.
    complete: bool,
    state: String,
}

/// Merges the two sources (`None`: not in use) and applies the failure
/// rules of the module docs; `seen` is the last good snapshot of each GPU.
fn assemble(
    smi: Option<Result<SmiReading, String>>,
    dcgm: Option<Result<Vec<DeviceSnapshot>, String>>,
    seen: &BTreeMap<String, DeviceSnapshot>,
) -> Round {
    let mut errors: Vec<String> = Vec::new();
    let mut unreadable = Vec::new();
    let smi_gpus = match smi {
        Some(Ok(reading)) if reading.gpus.is_empty() && !reading.unreadable.is_empty() => {
            let first = &reading.unreadable[0].message;
            errors.push(format!(
                "nvidia-smi output unreadable ({} lines), {first}",
                reading.unreadable.len()
            ));
            None
        }
        Some(Ok(reading)) => {
            unreadable = reading.unreadable;
            Some(reading.gpus)
        }
        Some(Err(e)) => {
            errors.push(e);
            None
        }
        None => None,
    };
    let dcgm_gpus = match dcgm {
        Some(Ok(gpus)) => Some(gpus),
        Some(Err(e)) => {
            errors.push(e);
            None
        }
        None => None,
    };
    let any_source = smi_gpus.is_some() || dcgm_gpus.is_some();
    let mut fresh = merge(smi_gpus.unwrap_or_default(), dcgm_gpus.unwrap_or_default());
    for d in &mut fresh {
        reading_alerts(d);
    }
    let mut devices = fresh.clone();
    if any_source && !errors.is_empty() {
        // One source failed, the other did not.
        let why = errors.join("; ");
        for d in &mut devices {
            d.alerts.push(collector_alert(&why));
        }
    }
    let mut orphan_errors = Vec::new();
    if !any_source {
        // Nothing fresh: every GPU seen before is in error.
        let why = errors.join("; ");
        devices.extend(seen.values().map(|d| failed_copy(d, &why)));
        if seen.is_empty() {
            orphan_errors.push(why);
        }
    }
    for line in &unreadable {
        let Some(uuid) = &line.uuid else {
            orphan_errors.push(line.message.clone());
            continue;
        };
        if let Some(d) = devices.iter_mut().find(|d| &d.id == uuid) {
            // DCGM still had fresh readings of it.
            d.alerts.push(collector_alert(&line.message));
            continue;
        }
        let before = seen.get(uuid).cloned().unwrap_or_else(|| DeviceSnapshot {
            id: uuid.clone(),
            kind: "gpu".into(),
            make: "NVIDIA".into(),
            ..DeviceSnapshot::default()
        });
        devices.push(failed_copy(&before, &line.message));
    }
    devices.sort_by(|a, b| {
        let index = |d: &DeviceSnapshot| d.metrics.get("gpu_index").copied().unwrap_or(f64::MAX);
        index(a).total_cmp(&index(b)).then_with(|| a.id.cmp(&b.id))
    });
    if !orphan_errors.is_empty() {
        devices.push(collector_device(&orphan_errors.join("; ")));
    }
    let problems: Vec<String> = errors
        .iter()
        .cloned()
        .chain(unreadable.iter().map(|l| l.message.clone()))
        .collect();
    let state = if problems.is_empty() {
        "ok".to_string()
    } else if fresh.is_empty() {
        format!("error: {}", problems.join("; "))
    } else {
        format!("degraded: {}", problems.join("; "))
    };
    Round {
        complete: problems.is_empty(),
        devices,
        fresh,
        state,
    }
}

/// nvidia-smi's GPUs, each with the DCGM readings it lacks, then the GPUs
/// only DCGM lists.
fn merge(smi: Vec<DeviceSnapshot>, dcgm: Vec<DeviceSnapshot>) -> Vec<DeviceSnapshot> {
    let mut dcgm: BTreeMap<String, DeviceSnapshot> =
        dcgm.into_iter().map(|d| (d.id.clone(), d)).collect();
    let mut out = Vec::with_capacity(smi.len() + dcgm.len());
    for mut d in smi {
        if let Some(extra) = dcgm.remove(&d.id) {
            for (k, v) in extra.metrics {
                if k == "mem_total_bytes" && d.metrics.contains_key(k.as_str()) {
                    continue;
                }
                d.metrics.entry(k).or_insert(v);
            }
            for (k, v) in extra.labels {
                d.labels.entry(k).or_insert(v);
            }
            d.labels.insert("source".into(), "nvidia-smi+dcgm".into());
            if d.model.is_empty() {
                d.model = extra.model;
            }
            if d.firmware.is_empty() {
                d.firmware = extra.firmware;
            }
            d.raw = merge_raw(&d.raw, &extra.raw);
        }
        out.push(d);
    }
    out.extend(dcgm.into_values());
    out
}

/// `{"nvidia_smi": …, "dcgm": …}` from the two raw objects.
fn merge_raw(smi: &str, dcgm: &str) -> String {
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).ok();
    match (parse(smi), parse(dcgm)) {
        (Some(serde_json::Value::Object(mut a)), Some(serde_json::Value::Object(b))) => {
            a.extend(b);
            clip(&serde_json::Value::Object(a).to_string(), MAX_RAW)
        }
        _ => clip(smi, MAX_RAW),
    }
}

/// The alerts a GPU's readings call for: temperature and Xid errors.
fn reading_alerts(d: &mut DeviceSnapshot) {
    if let Some(&t) = d.metrics.get("temp_c") {
        if t >= TEMP_CRITICAL_C {
            d.alerts.push(DeviceAlert {
                code: "gpu_temp_critical".into(),
                severity: Severity::Critical,
                message: format!("GPU at {t} °C (critical from {TEMP_CRITICAL_C} °C)"),
            });
        } else if t >= TEMP_HIGH_C {
            d.alerts.push(DeviceAlert {
                code: "gpu_temp_high".into(),
                severity: Severity::High,
                message: format!("GPU at {t} °C (high from {TEMP_HIGH_C} °C)"),
            });
        }
    }
    if let Some(&x) = d.metrics.get("xid_errors") {
        if x != 0.0 {
            d.alerts.push(DeviceAlert {
                code: "xid_error".into(),
                severity: Severity::High,
                message: format!(
                    "the driver reported Xid {x} (DCGM_FI_DEV_XID_ERRORS, the last Xid seen): \
                     check the kernel log and NVIDIA's Xid catalog"
                ),
            });
        }
    }
}

fn collector_alert(why: &str) -> DeviceAlert {
    DeviceAlert {
        code: "gpu_collector_error".into(),
        severity: Severity::Medium,
        message: clip(why, MAX_ERROR_LABEL),
    }
}

/// A GPU seen before, in error now: identity and `gpu_index` only.
fn failed_copy(d: &DeviceSnapshot, why: &str) -> DeviceSnapshot {
    let mut metrics = BTreeMap::new();
    if let Some(&i) = d.metrics.get("gpu_index") {
        metrics.insert("gpu_index".to_string(), i);
    }
    let mut labels: BTreeMap<String, String> = d
        .labels
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "pci_bus_id" | "device"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert("state".into(), "error".into());
    labels.insert("error".into(), clip(why, MAX_ERROR_LABEL));
    DeviceSnapshot {
        id: d.id.clone(),
        kind: "gpu".into(),
        make: d.make.clone(),
        model: d.model.clone(),
        firmware: d.firmware.clone(),
        metrics,
        labels,
        alerts: vec![collector_alert(why)],
        raw: String::new(),
    }
}

/// The [`COLLECTOR_DEVICE_ID`] device, carrying `why`.
fn collector_device(why: &str) -> DeviceSnapshot {
    let mut labels = BTreeMap::new();
    labels.insert("state".to_string(), "error".to_string());
    labels.insert("error".to_string(), clip(why, MAX_ERROR_LABEL));
    DeviceSnapshot {
        id: COLLECTOR_DEVICE_ID.into(),
        kind: "gpu".into(),
        make: "NVIDIA".into(),
        labels,
        alerts: vec![collector_alert(why)],
        ..DeviceSnapshot::default()
    }
}

/// True for the ways nvidia-smi and exporters say "no value".
fn absent(s: &str) -> bool {
    s.is_empty() || s.eq_ignore_ascii_case("n/a") || (s.starts_with('[') && s.ends_with(']'))
}

/// A finite number, or `None` for an absent or unreadable one.
fn number(s: &str) -> Option<f64> {
    let s = s.trim();
    if absent(s) {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// A text field, clipped; `None` when absent.
fn text_field(s: &str) -> Option<String> {
    let s = s.trim();
    (!absent(s)).then(|| clip(s, MAX_TEXT))
}

/// A UUID field: present, short, printable ASCII without spaces.
fn uuid_text(s: &str) -> Option<String> {
    let s = s.trim();
    let ok = !absent(s) && s.len() <= MAX_TEXT && s.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| s.to_string())
}

/// `name` in the directories of `search` (default `$PATH`), if it is an
/// executable file there.
fn find_program(name: &str, search: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let from_env;
    let search = match search {
        Some(s) => s,
        None => {
            from_env = std::env::var_os("PATH")?;
            from_env.as_os_str()
        }
    };
    std::env::split_paths(search)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The exporter's `/metrics` URL from `dcgm_url`: plain HTTP only (this
/// build has no TLS), `/metrics` added when the URL has no path.
fn dcgm_metrics_url(url: &str) -> Result<reqwest::Url, String> {
    let mut parsed =
        reqwest::Url::parse(url).map_err(|e| format!("dcgm_url `{url}` is not a URL: {e}"))?;
    if parsed.scheme() != "http" {
        return Err(format!(
            "dcgm_url `{url}`: use http:// (dcgm-exporter serves plain HTTP; this build has no TLS)"
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("dcgm_url `{url}` has no host"));
    }
    if parsed.path().is_empty() || parsed.path() == "/" {
        parsed.set_path("/metrics");
    }
    Ok(parsed)
}

fn dcgm_client(url: &str, timeout: Duration) -> Result<Dcgm, String> {
    let url = dcgm_metrics_url(url)?;
    // The whole fetch is bounded by `fetch_dcgm`'s own timeout.
    let http = reqwest::Client::builder()
        .connect_timeout(timeout)
        // A local or LAN exporter: an HTTP_PROXY from the environment must
        // not apply.
        .no_proxy()
        .build()
        .map_err(|e| format!("dcgm-exporter {url}: HTTP client: {}", error_chain(&e)))?;
    Ok(Dcgm { url, http })
}

/// `GET` the exporter page, within `timeout`, at most [`MAX_DCGM_BODY`].
async fn fetch_dcgm(d: &Dcgm, timeout: Duration) -> Result<String, String> {
    let who = format!("dcgm-exporter {}", d.url);
    let fetch = async {
        let mut resp = d.http.get(d.url.clone()).send().await.map_err(|e| {
            let what = if e.is_connect() || e.is_timeout() {
                "no reply"
            } else {
                "not an HTTP reply"
            };
            format!("{who}: {what}: {}", error_chain(&e))
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("{who}: HTTP {status}"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("{who}: reply cut short: {}", error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_DCGM_BODY {
                return Err(format!("{who}: page larger than {MAX_DCGM_BODY} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "{who}: no full reply within {} ms",
                timeout.as_millis()
            ))
        })
}

/// Kills a process group when dropped, unless disarmed: an nvidia-smi
/// abandoned mid-run (timeout, or the collection cancelled) leaves nothing
/// behind.
struct GroupKill(Option<i32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: kill(2) with a negative pid signals the process group
            // `pgid`, which nvidia-smi leads (spawned with
            // `process_group(0)`); no memory is shared with the call.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// Starts `program` with the query arguments; retries a few times while
/// the file is busy (being replaced, as in a driver upgrade).
async fn spawn_smi(program: &Path) -> std::io::Result<Child> {
    let mut command = Command::new(program);
    command
        .arg(format!("--query-gpu={SMI_QUERY}"))
        .arg("--format=csv,noheader,nounits")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// Runs nvidia-smi: its stdout, or what went wrong.
async fn run_smi(program: &Path, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut child = spawn_smi(program)
        .await
        .map_err(|e| format!("cannot start: {e}"))?;
    let mut group = GroupKill(child.id().map(|id| id as i32));
    let mut stdout = child.stdout.take().ok_or("has no stdout pipe")?;
    let mut stderr = child.stderr.take().ok_or("has no stderr pipe")?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut out_buf, mut err_buf) = (vec![0u8; 8192], vec![0u8; 2048]);
    let (mut out_open, mut err_open) = (true, true);
    let mut status = None;
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    while status.is_none() || out_open || err_open {
        tokio::select! {
            read = stdout.read(&mut out_buf), if out_open => match read {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => {
                    if out.len() + n > MAX_SMI_OUTPUT {
                        // `group` kills it on return.
                        return Err(format!("printed more than {MAX_SMI_OUTPUT} bytes"));
                    }
                    out.extend_from_slice(&out_buf[..n]);
                }
            },
            read = stderr.read(&mut err_buf), if err_open => match read {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => {
                    let keep = n.min(MAX_STDERR.saturating_sub(err.len()));
                    err.extend_from_slice(&err_buf[..keep]);
                }
            },
            exit = child.wait(), if status.is_none() => {
                status = Some(exit.map_err(|e| format!("cannot wait for it: {e}"))?);
                // It exited: leave any children of its own alone, and wait
                // a moment only for the rest of its output.
                group.0 = None;
                let drain = (Instant::now() + DRAIN).min(deadline);
                sleep.as_mut().reset(drain);
            },
            _ = &mut sleep => {
                if status.is_some() {
                    break;
                }
                return Err(format!(
                    "timed out after {} ms and was killed",
                    timeout.as_millis()
                ));
            }
        }
    }
    let status = status.expect("the loop ends only after the exit");
    if !status.success() {
        let said = String::from_utf8_lossy(if err.iter().any(|b| !b.is_ascii_whitespace()) {
            &err
        } else {
            &out
        })
        .trim()
        .lines()
        .next()
        .map(|l| format!(": {}", clip(l, 300)))
        .unwrap_or_default();
        return Err(format!("{status}{said}"));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPU0: &str = "GPU-11111111-2222-3333-4444-555555555555";
    const GPU1: &str = "GPU-66666666-7777-8888-9999-000000000000";

    fn smi_line(index: u32, uuid: &str, temp: &str) -> String {
        format!(
            "{index}, {uuid}, NVIDIA GeForce RTX 3090, 00000000:0{index}:00.0, 550.54.15, P2, \
             {temp}, 65, 301.52, 350.00, 1695, 9501, 100, 78, 24576, 5120"
        )
    }

    fn dcgm_page(uuid: &str, xid: u32) -> String {
        let labels = format!(
            r#"gpu="0",UUID="{uuid}",device="nvidia0",modelName="NVIDIA GeForce RTX 3090",Hostname="rig1""#
        );
        format!(
            "# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).\n\
             # TYPE DCGM_FI_DEV_GPU_TEMP gauge\n\
             DCGM_FI_DEV_GPU_TEMP{{{labels}}} 70\n\
             DCGM_FI_DEV_POWER_USAGE{{{labels}}} 290.5\n\
             DCGM_FI_DEV_FB_USED{{{labels}}} 1024\n\
             DCGM_FI_DEV_FB_FREE{{{labels}}} 3072\n\
             # TYPE DCGM_FI_DEV_XID_ERRORS gauge\n\
             DCGM_FI_DEV_XID_ERRORS{{{labels}}} {xid}\n\
             # TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n\
             DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{labels}}} 123456789\n"
        )
    }

    #[test]
    fn smi_line_becomes_a_gpu_in_base_units() {
        let r = parse_smi(&smi_line(0, GPU0, "64"));
        assert!(r.unreadable.is_empty(), "{:?}", r.unreadable);
        let d = &r.gpus[0];
        assert_eq!((d.id.as_str(), d.kind.as_str()), (GPU0, "gpu"));
        assert_eq!(d.model, "NVIDIA GeForce RTX 3090");
        assert_eq!(d.firmware, "550.54.15");
        assert_eq!(d.metrics["mem_total_bytes"], 24576.0 * MIB);
        assert_eq!(d.metrics["mem_used_bytes"], 5120.0 * MIB);
        assert_eq!(d.metrics["power_w"], 301.52);
        assert_eq!(d.metrics["gpu_index"], 0.0);
        assert_eq!(d.labels["pci_bus_id"], "00000000:00:00.0");
        assert_eq!(d.labels["pstate"], "P2");
        assert_eq!(d.metrics.len(), 11);
    }

    #[test]
    fn absent_readings_are_left_out() {
        let line = format!(
            "1, {GPU1}, Tesla T4, 00000000:3B:00.0, [N/A], [Unknown Error], [N/A], N/A, \
             [Not Supported], , abc, inf, NaN, 5, [N/A], 0"
        );
        let r = parse_smi(&line);
        let d = &r.gpus[0];
        assert_eq!(d.firmware, "");
        assert!(!d.labels.contains_key("pstate"));
        let keys: Vec<&str> = d.metrics.keys().map(String::as_str).collect();
        assert_eq!(keys, ["gpu_index", "mem_used_bytes", "mem_util_pct"]);
    }

    #[test]
    fn unreadable_lines_say_which_and_name_the_gpu_when_they_can() {
        let text = format!(
            "{}\n\ngarbage\n2, {GPU1}, A, B, C\n3, [N/A], {}\n",
            smi_line(0, GPU0, "50"),
            ["1"; 14].join(",")
        );
        let r = parse_smi(&text);
        assert_eq!(r.gpus.len(), 1);
        assert_eq!(r.unreadable.len(), 3, "{:?}", r.unreadable);
        assert_eq!(r.unreadable[0].uuid, None);
        assert!(
            r.unreadable[0].message.contains("line 3"),
            "{:?}",
            r.unreadable
        );
        assert_eq!(r.unreadable[1].uuid.as_deref(), Some(GPU1));
        assert!(r.unreadable[2].message.contains("no GPU UUID"));
    }

    #[test]
    fn parsers_never_panic_on_odd_input() {
        for text in [
            "",
            ",",
            ",,,,,,,,,,,,,,,",
            "\u{feff}é,\u{0}",
            "1,2\r\n",
            "[",
            "]]]",
        ] {
            let _ = parse_smi(text);
            let _ = parse_dcgm(text);
        }
        let many: String = (0..100)
            .map(|i| smi_line(0, &format!("GPU-{i}"), "1") + "\n")
            .collect();
        let r = parse_smi(&many);
        assert_eq!(
            (r.gpus.len(), r.unreadable.len()),
            (MAX_GPUS, 100 - MAX_GPUS)
        );
    }

    #[test]
    fn dcgm_page_becomes_a_gpu() {
        let gpus = parse_dcgm(&dcgm_page(GPU0, 0)).unwrap();
        assert_eq!(gpus.len(), 1);
        let d = &gpus[0];
        assert_eq!(d.model, "NVIDIA GeForce RTX 3090");
        assert_eq!(d.metrics["temp_c"], 70.0);
        assert_eq!(d.metrics["mem_total_bytes"], 4096.0 * MIB);
        assert_eq!(d.metrics["energy_j"], 123456.789);
        assert_eq!(d.metrics["xid_errors"], 0.0);
        assert_eq!(d.labels["device"], "nvidia0");
        assert_eq!(d.labels["source"], "dcgm");
    }

    #[test]
    fn dcgm_without_gpu_samples_is_an_error() {
        let e = parse_dcgm("# HELP x y\nup 1\nDCGM_FI_DEV_GPU_TEMP 5\n").unwrap_err();
        assert!(e.contains("no DCGM_FI_DEV_*"), "{e}");
        assert!(parse_dcgm("<html>nope</html>").is_err());
    }

    #[test]
    fn merge_keeps_smi_values_and_adds_dcgm_ones() {
        let smi = parse_smi(&smi_line(0, GPU0, "64")).gpus;
        let dcgm = parse_dcgm(&dcgm_page(GPU0, 79)).unwrap();
        let round = assemble(
            Some(Ok(SmiReading {
                gpus: smi,
                unreadable: vec![],
            })),
            Some(Ok(dcgm)),
            &BTreeMap::new(),
        );
        assert_eq!(round.state, "ok");
        let d = &round.devices[0];
        assert_eq!(d.metrics["temp_c"], 64.0);
        assert_eq!(d.metrics["mem_total_bytes"], 24576.0 * MIB);
        assert_eq!(d.metrics["xid_errors"], 79.0);
        assert_eq!(d.labels["source"], "nvidia-smi+dcgm");
        assert_eq!(d.alerts.len(), 1);
        assert_eq!(
            (d.alerts[0].code.as_str(), d.alerts[0].severity),
            ("xid_error", Severity::High)
        );
        let raw: serde_json::Value = serde_json::from_str(&d.raw).unwrap();
        assert!(
            raw["nvidia_smi"].is_string() && raw["dcgm"].is_object(),
            "{raw}"
        );
    }

    #[test]
    fn temperature_alerts_at_85_and_95() {
        for (t, want) in [
            ("84", None),
            ("85", Some(("gpu_temp_high", Severity::High))),
            ("94.9", Some(("gpu_temp_high", Severity::High))),
            ("95", Some(("gpu_temp_critical", Severity::Critical))),
        ] {
            let mut d = parse_smi(&smi_line(0, GPU0, t)).gpus.remove(0);
            reading_alerts(&mut d);
            let got: Vec<_> = d
                .alerts
                .iter()
                .map(|a| (a.code.as_str(), a.severity))
                .collect();
            assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "{t} °C");
        }
    }

    #[test]
    fn total_failure_reports_gpus_seen_before_without_old_readings() {
        let seen: BTreeMap<_, _> = parse_smi(&smi_line(0, GPU0, "64"))
            .gpus
            .into_iter()
            .map(|d| (d.id.clone(), d))
            .collect();
        let round = assemble(Some(Err("nvidia-smi: boom".into())), None, &seen);
        assert_eq!(round.state, "error: nvidia-smi: boom");
        assert!(round.fresh.is_empty() && !round.complete);
        let d = &round.devices[0];
        assert_eq!(d.id, GPU0);
        assert_eq!(d.labels["state"], "error");
        assert_eq!(d.labels["pci_bus_id"], "00000000:00:00.0");
        assert_eq!(d.metrics.keys().collect::<Vec<_>>(), ["gpu_index"]);
        assert_eq!(d.alerts[0].code, "gpu_collector_error");

        let round = assemble(Some(Err("nvidia-smi: boom".into())), None, &BTreeMap::new());
        assert_eq!(round.devices.len(), 1);
        assert_eq!(round.devices[0].id, COLLECTOR_DEVICE_ID);
    }

    #[test]
    fn dcgm_urls_get_metrics_and_refuse_https() {
        assert_eq!(
            dcgm_metrics_url("http://10.0.0.5:9400").unwrap().as_str(),
            "http://10.0.0.5:9400/metrics"
        );
        assert_eq!(
            dcgm_metrics_url("http://h:9400/custom").unwrap().path(),
            "/custom"
        );
        assert!(dcgm_metrics_url("https://h:9400/metrics").is_err());
        assert!(dcgm_metrics_url("h:9400").is_err());
        let bad = GpuConfig {
            timeout_ms: 5,
            ..GpuConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("timeout_ms"));
        let cfg: GpuConfig = serde_json::from_str(r#"{"dcgm_url": "http://x:9400"}"#).unwrap();
        assert_eq!(cfg.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert!(cfg.validate().is_ok());
        assert!(serde_json::from_str::<GpuConfig>(r#"{"dcgm": "x"}"#).is_err());
    }

    #[test]
    fn collect_is_send() {
        fn send<T: Send>(_: T) {}
        let mut c = GpuCollector::new(None, None);
        send(c.collect());
    }
}
