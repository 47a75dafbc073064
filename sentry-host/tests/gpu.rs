//! The GPU collector against a fake `nvidia-smi` (a shell script in a temp
//! dir, found through the collector's search path) and a fake dcgm-exporter
//! (a TCP listener on 127.0.0.1:0 serving a fixed HTTP reply).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hashfleet_sentry_host::gpu::{GpuCollector, COLLECTOR_DEVICE_ID, SMI_QUERY};
use hashfleet_shared::wire::{DeviceSnapshot, Severity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const GPU0: &str = "GPU-5fd4b1c3-0b3a-4d9e-8c1a-1a2b3c4d5e60";
const GPU1: &str = "GPU-9e8d7c6b-5a49-4382-a1b0-c9d8e7f6a5b1";
const GPU2: &str = "GPU-00000000-1111-2222-3333-444444444444";
const MIB: f64 = 1024.0 * 1024.0;

const TWO_GPUS: &str = "\
0, GPU-5fd4b1c3-0b3a-4d9e-8c1a-1a2b3c4d5e60, NVIDIA GeForce RTX 3090, 00000000:01:00.0, 550.54.15, P2, 63, 70, 301.52, 350.00, 1695, 9501, 100, 78, 24576, 5120
1, GPU-9e8d7c6b-5a49-4382-a1b0-c9d8e7f6a5b1, NVIDIA GeForce RTX 3090, 00000000:02:00.0, 550.54.15, P2, 88, 100, 345.10, 350.00, 1650, 9501, 99, 80, 24576, 6144
";

/// A fake nvidia-smi in a temp dir of its own.
struct FakeSmi {
    dir: tempfile::TempDir,
}

impl FakeSmi {
    /// A script that checks its arguments, then runs `body` (sh).
    fn new(body: &str) -> FakeSmi {
        let smi = FakeSmi {
            dir: tempfile::tempdir().unwrap(),
        };
        smi.set(body);
        smi
    }

    /// A script that prints `out` and exits 0.
    fn printing(out: &str) -> FakeSmi {
        FakeSmi::new(&format!("cat <<'EOF'\n{out}EOF\n"))
    }

    /// Replaces the script (through a rename: never a half-written file).
    fn set(&self, body: &str) {
        let script = format!(
            "#!/bin/sh\n\
             if [ \"$1\" != \"--query-gpu={SMI_QUERY}\" ] || [ \"$2\" != \"--format=csv,noheader,nounits\" ]; then\n\
             echo \"unexpected arguments: $*\" >&2; exit 2\n\
             fi\n\
             {body}\n"
        );
        let tmp = self.dir.path().join(".nvidia-smi.new");
        std::fs::write(&tmp, script).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, self.path()).unwrap();
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("nvidia-smi")
    }

    /// A collector that finds this script as `nvidia-smi` on its search path.
    fn collector(&self, dcgm_url: Option<String>) -> GpuCollector {
        GpuCollector::new(None, dcgm_url).search_path(self.dir.path())
    }
}

/// A search path with no nvidia-smi in it.
fn no_smi() -> (tempfile::TempDir, GpuCollector) {
    let dir = tempfile::tempdir().unwrap();
    let c = GpuCollector::new(None, None).search_path(dir.path());
    (dir, c)
}

fn dcgm_labels(index: u32, uuid: &str) -> String {
    format!(
        r#"gpu="{index}",UUID="{uuid}",device="nvidia{index}",modelName="NVIDIA GeForce RTX 3090",Hostname="rig-07""#
    )
}

/// An exporter page for `(index, uuid, temp, xid)`.
fn dcgm_page(gpus: &[(u32, &str, f64, u32)]) -> String {
    let mut page = String::new();
    let metric = |page: &mut String, name: &str, kind: &str, value: &dyn Fn(usize) -> String| {
        page.push_str(&format!(
            "# HELP {name} {name} help.\n# TYPE {name} {kind}\n"
        ));
        for (i, (index, uuid, _, _)) in gpus.iter().enumerate() {
            page.push_str(&format!(
                "{name}{{{}}} {}\n",
                dcgm_labels(*index, uuid),
                value(i)
            ));
        }
    };
    metric(&mut page, "DCGM_FI_DEV_SM_CLOCK", "gauge", &|_| {
        "1410".into()
    });
    metric(&mut page, "DCGM_FI_DEV_MEM_CLOCK", "gauge", &|_| {
        "9501".into()
    });
    metric(&mut page, "DCGM_FI_DEV_GPU_TEMP", "gauge", &|i| {
        gpus[i].2.to_string()
    });
    metric(&mut page, "DCGM_FI_DEV_POWER_USAGE", "gauge", &|_| {
        "280.25".into()
    });
    metric(&mut page, "DCGM_FI_DEV_GPU_UTIL", "gauge", &|_| "97".into());
    metric(&mut page, "DCGM_FI_DEV_FB_USED", "gauge", &|_| {
        "2048".into()
    });
    metric(&mut page, "DCGM_FI_DEV_FB_FREE", "gauge", &|_| {
        "22000".into()
    });
    metric(&mut page, "DCGM_FI_DEV_XID_ERRORS", "gauge", &|i| {
        gpus[i].3.to_string()
    });
    metric(
        &mut page,
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "counter",
        &|_| "5000000".into(),
    );
    page
}

fn http_ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A fake exporter: every connection gets `reply` (`None`: no reply at
/// all, the connection is held open). Returns its URL (no path) and the
/// request lines it saw.
async fn exporter(reply: Option<Vec<u8>>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let first = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            log.lock().unwrap().push(first);
            match &reply {
                Some(r) => {
                    let _ = sock.write_all(r).await;
                    let _ = sock.shutdown().await;
                }
                None => held.push(sock),
            }
        }
    });
    (format!("http://{addr}"), seen)
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn device<'a>(devices: &'a [DeviceSnapshot], id: &str) -> &'a DeviceSnapshot {
    devices
        .iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("no device {id} in {devices:#?}"))
}

fn codes(d: &DeviceSnapshot) -> Vec<(&str, Severity)> {
    d.alerts
        .iter()
        .map(|a| (a.code.as_str(), a.severity))
        .collect()
}

#[tokio::test]
async fn two_gpus_from_nvidia_smi_on_the_search_path() {
    let smi = FakeSmi::printing(TWO_GPUS);
    let mut c = smi.collector(None);
    let devices = c.collect().await;
    assert_eq!(c.state(), "ok");
    assert_eq!(devices.len(), 2, "{devices:#?}");
    assert_eq!(devices[0].id, GPU0);
    let d = &devices[0];
    assert_eq!(
        (d.kind.as_str(), d.make.as_str(), d.model.as_str()),
        ("gpu", "NVIDIA", "NVIDIA GeForce RTX 3090")
    );
    assert_eq!(d.firmware, "550.54.15");
    let want = [
        ("gpu_index", 0.0),
        ("temp_c", 63.0),
        ("fan_pct", 70.0),
        ("power_w", 301.52),
        ("power_limit_w", 350.0),
        ("sm_clock_mhz", 1695.0),
        ("mem_clock_mhz", 9501.0),
        ("util_pct", 100.0),
        ("mem_util_pct", 78.0),
        ("mem_total_bytes", 24576.0 * MIB),
        ("mem_used_bytes", 5120.0 * MIB),
    ];
    for (k, v) in want {
        assert_eq!(d.metrics.get(k), Some(&v), "{k}: {:?}", d.metrics);
    }
    assert_eq!(d.labels["pci_bus_id"], "00000000:01:00.0");
    assert_eq!(d.labels["pstate"], "P2");
    assert_eq!(d.labels["state"], "online");
    assert!(d.alerts.is_empty(), "{:?}", d.alerts);
    assert!(d.raw.contains("RTX 3090") && d.raw.len() <= 4096);
    // 88 °C: high.
    assert_eq!(codes(&devices[1]), [("gpu_temp_high", Severity::High)]);
}

#[tokio::test]
async fn na_and_not_supported_fields_are_left_out() {
    let smi = FakeSmi::printing(&format!(
        "2, {GPU2}, Tesla T4, 00000000:3B:00.0, 535.104.05, P8, 96, [N/A], [Not Supported], \
         [N/A], 300, N/A, 0, 0, 15360, \n"
    ));
    let mut c = smi.collector(None);
    let devices = c.collect().await;
    assert_eq!(c.state(), "ok");
    let d = device(&devices, GPU2);
    for gone in [
        "fan_pct",
        "power_w",
        "power_limit_w",
        "mem_clock_mhz",
        "mem_used_bytes",
    ] {
        assert!(!d.metrics.contains_key(gone), "{gone}: {:?}", d.metrics);
    }
    assert_eq!(d.metrics["sm_clock_mhz"], 300.0);
    assert_eq!(d.metrics["mem_total_bytes"], 15360.0 * MIB);
    assert_eq!(codes(d), [("gpu_temp_critical", Severity::Critical)]);
}

#[tokio::test]
async fn off_without_nvidia_smi_or_dcgm() {
    let (_dir, mut c) = no_smi();
    assert!(c.collect().await.is_empty());
    assert!(c.state().starts_with("off: no nvidia-smi"), "{}", c.state());
    assert!(c.collect().await.is_empty());
}

#[tokio::test]
async fn dcgm_is_the_fallback_without_nvidia_smi() {
    let page = dcgm_page(&[(0, GPU0, 61.0, 0), (1, GPU1, 66.0, 79)]);
    let (url, requests) = exporter(Some(http_ok(&page))).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = GpuCollector::new(None, Some(url)).search_path(dir.path());
    let devices = c.collect().await;
    assert_eq!(c.state(), "ok");
    assert_eq!(requests.lock().unwrap()[0], "GET /metrics HTTP/1.1");
    assert_eq!(devices.len(), 2, "{devices:#?}");
    let d = &devices[0];
    assert_eq!((d.id.as_str(), d.kind.as_str()), (GPU0, "gpu"));
    assert_eq!(d.model, "NVIDIA GeForce RTX 3090");
    assert_eq!(d.labels["source"], "dcgm");
    assert_eq!(d.labels["device"], "nvidia0");
    let want = [
        ("gpu_index", 0.0),
        ("temp_c", 61.0),
        ("power_w", 280.25),
        ("util_pct", 97.0),
        ("sm_clock_mhz", 1410.0),
        ("mem_clock_mhz", 9501.0),
        ("mem_used_bytes", 2048.0 * MIB),
        ("mem_free_bytes", 22000.0 * MIB),
        ("mem_total_bytes", 24048.0 * MIB),
        ("xid_errors", 0.0),
        ("energy_j", 5000.0),
    ];
    for (k, v) in want {
        assert_eq!(d.metrics.get(k), Some(&v), "{k}: {:?}", d.metrics);
    }
    assert!(d.alerts.is_empty());
    assert_eq!(devices[1].metrics["xid_errors"], 79.0);
    assert_eq!(codes(&devices[1]), [("xid_error", Severity::High)]);
}

#[tokio::test]
async fn dcgm_is_merged_into_the_nvidia_smi_gpus() {
    let page = dcgm_page(&[(0, GPU0, 40.0, 13), (1, GPU1, 41.0, 0), (2, GPU2, 42.0, 0)]);
    let (url, _) = exporter(Some(http_ok(&page))).await;
    let smi = FakeSmi::printing(TWO_GPUS);
    let mut c = smi.collector(Some(format!("{url}/metrics")));
    let devices = c.collect().await;
    assert_eq!(c.state(), "ok");
    assert_eq!(devices.len(), 3, "{devices:#?}");
    let d = device(&devices, GPU0);
    assert_eq!(d.labels["source"], "nvidia-smi+dcgm");
    // nvidia-smi wins where both have a reading; DCGM adds its own.
    assert_eq!(d.metrics["temp_c"], 63.0);
    assert_eq!(d.metrics["mem_total_bytes"], 24576.0 * MIB);
    assert_eq!(d.metrics["energy_j"], 5000.0);
    assert_eq!(d.metrics["xid_errors"], 13.0);
    assert_eq!(codes(d), [("xid_error", Severity::High)]);
    assert_eq!(d.labels["pstate"], "P2");
    assert_eq!(d.labels["device"], "nvidia0");
    let raw: serde_json::Value = serde_json::from_str(&d.raw).unwrap();
    assert!(
        raw["nvidia_smi"].is_string() && raw["dcgm"].is_object(),
        "{raw}"
    );
    let d1 = device(&devices, GPU1);
    assert_eq!(codes(d1), [("gpu_temp_high", Severity::High)]);
    // Only DCGM knows this one.
    assert_eq!(device(&devices, GPU2).labels["source"], "dcgm");
}

#[tokio::test]
async fn failing_nvidia_smi_reports_the_last_gpus_in_error() {
    let smi = FakeSmi::printing(TWO_GPUS);
    let mut c = smi.collector(None);
    assert_eq!(c.collect().await.len(), 2);

    smi.set("echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'; exit 9");
    let devices = c.collect().await;
    assert!(c.state().starts_with("error: nvidia-smi"), "{}", c.state());
    assert_eq!(devices.len(), 2, "{devices:#?}");
    for d in &devices {
        assert_eq!(d.labels["state"], "error");
        assert!(
            d.labels["error"].contains("could not communicate"),
            "{:?}",
            d.labels
        );
        assert_eq!(codes(d), [("gpu_collector_error", Severity::Medium)]);
        // No stale readings passed off as new.
        assert_eq!(d.metrics.keys().collect::<Vec<_>>(), ["gpu_index"]);
    }
    assert_eq!(devices[1].id, GPU1);
    assert_eq!(devices[1].labels["pci_bus_id"], "00000000:02:00.0");

    // It recovers.
    smi.set(&format!("cat <<'EOF'\n{TWO_GPUS}EOF"));
    let devices = c.collect().await;
    assert_eq!(c.state(), "ok");
    assert_eq!(devices[0].labels["state"], "online");
}

#[tokio::test]
async fn failing_nvidia_smi_never_seen_working_is_one_collector_device() {
    let smi = FakeSmi::new("echo 'no driver' >&2; exit 1");
    let mut c = smi.collector(None);
    let devices = c.collect().await;
    assert_eq!(devices.len(), 1, "{devices:#?}");
    let d = &devices[0];
    assert_eq!(
        (d.id.as_str(), d.kind.as_str()),
        (COLLECTOR_DEVICE_ID, "gpu")
    );
    assert_eq!(d.labels["state"], "error");
    assert!(
        d.labels["error"].contains("exit status: 1: no driver"),
        "{:?}",
        d.labels
    );
    assert_eq!(codes(d), [("gpu_collector_error", Severity::Medium)]);
    assert!(c.state().starts_with("error: "), "{}", c.state());
}

#[tokio::test]
async fn a_configured_nvidia_smi_that_is_missing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = GpuCollector::new(Some(dir.path().join("nope")), None);
    let devices = c.collect().await;
    assert_eq!(devices[0].id, COLLECTOR_DEVICE_ID);
    assert!(
        devices[0].labels["error"].contains("cannot start"),
        "{:?}",
        devices[0].labels
    );
}

/// Whether `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn hanging_nvidia_smi_and_exporter_cost_one_timeout_and_are_killed() {
    let smi = FakeSmi::new("");
    let pid_file = smi.dir.path().join("sleep.pid");
    smi.set(&format!(
        "sleep 30 &\necho $! > '{}'\nwait",
        pid_file.display()
    ));
    let (url, _) = exporter(None).await;
    let mut c = smi.collector(Some(url)).timeout(Duration::from_millis(500));
    let started = Instant::now();
    let devices = c.collect().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let state = c.state();
    assert!(
        state.contains("timed out after 500 ms and was killed"),
        "{state}"
    );
    assert!(state.contains("no full reply within 500 ms"), "{state}");
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].id, COLLECTOR_DEVICE_ID);
    // The script's own child went with it (its process group was killed).
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone(pid), "sleep {pid} still runs");
}

#[tokio::test]
async fn garbage_from_nvidia_smi_is_an_error_not_a_panic() {
    let smi = FakeSmi::printing("Segmentation fault\n\u{1}\u{2}, ,\n");
    let mut c = smi.collector(None);
    let devices = c.collect().await;
    assert_eq!(devices.len(), 1, "{devices:#?}");
    assert_eq!(devices[0].id, COLLECTOR_DEVICE_ID);
    assert!(
        devices[0].labels["error"].contains("nvidia-smi output unreadable (2 lines)"),
        "{:?}",
        devices[0].labels
    );

    // Too much output is cut off and refused.
    smi.set("head -c 2000000 /dev/zero");
    c.collect().await;
    assert!(
        c.state().contains("printed more than 1048576 bytes"),
        "{}",
        c.state()
    );
}

#[tokio::test]
async fn one_unreadable_line_fails_that_gpu_only() {
    let smi = FakeSmi::printing(TWO_GPUS);
    let mut c = smi.collector(None);
    c.collect().await;
    let first = TWO_GPUS.lines().next().unwrap();
    // GPU1's line gains a field (say a name with a comma).
    smi.set(&format!(
        "cat <<'EOF'\n{first}\n1, {GPU1}, NVIDIA, Inc. GPU, 00000000:02:00.0, 550.54.15, P2, 88, 100, 345.10, 350.00, 1650, 9501, 99, 80, 24576, 6144\nEOF"
    ));
    let devices = c.collect().await;
    assert!(
        c.state()
            .starts_with("degraded: nvidia-smi line 2: 17 fields"),
        "{}",
        c.state()
    );
    assert_eq!(device(&devices, GPU0).labels["state"], "online");
    let d1 = device(&devices, GPU1);
    assert_eq!(d1.labels["state"], "error");
    assert_eq!(d1.model, "NVIDIA GeForce RTX 3090");
    assert_eq!(codes(d1), [("gpu_collector_error", Severity::Medium)]);
}

#[tokio::test]
async fn failing_nvidia_smi_falls_back_to_dcgm_with_an_alert() {
    let page = dcgm_page(&[(0, GPU0, 50.0, 0)]);
    let (url, _) = exporter(Some(http_ok(&page))).await;
    let smi = FakeSmi::new("exit 1");
    let mut c = smi.collector(Some(url));
    let devices = c.collect().await;
    assert!(
        c.state().starts_with("degraded: nvidia-smi"),
        "{}",
        c.state()
    );
    assert_eq!(devices.len(), 1, "{devices:#?}");
    let d = &devices[0];
    assert_eq!(
        (d.id.as_str(), d.labels["state"].as_str()),
        (GPU0, "online")
    );
    assert_eq!(d.metrics["temp_c"], 50.0);
    assert_eq!(codes(d), [("gpu_collector_error", Severity::Medium)]);
}

#[tokio::test]
async fn unreachable_or_garbage_dcgm_is_soft() {
    // nvidia-smi works, the exporter is down: GPUs with an alert.
    let smi = FakeSmi::printing(TWO_GPUS);
    let mut c = smi.collector(Some(format!("http://{}/metrics", closed_port().await)));
    let devices = c.collect().await;
    let state = c.state();
    assert!(
        state.starts_with("degraded: dcgm-exporter http://127.0.0.1:"),
        "{state}"
    );
    assert!(state.contains("no reply"), "{state}");
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0].labels["state"], "online");
    assert!(devices[0]
        .alerts
        .iter()
        .any(|a| a.code == "gpu_collector_error" && a.message.contains("dcgm-exporter")));

    // The exporter alone, serving something else.
    let (empty, _) = no_smi();
    for (reply, why) in [
        (
            http_ok("<html><body>It works!</body></html>"),
            "no DCGM_FI_DEV_* sample with a UUID label",
        ),
        (
            http_ok("# HELP up whether\nup 1\n"),
            "no DCGM_FI_DEV_* sample with a UUID label",
        ),
        (
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            "HTTP 404 Not Found",
        ),
        (b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(), "not an HTTP reply"),
        (
            http_ok(&"x".repeat(5 * 1024 * 1024)),
            "page larger than 4194304 bytes",
        ),
    ] {
        let (url, _) = exporter(Some(reply)).await;
        let mut c = GpuCollector::new(None, Some(url))
            .search_path(empty.path())
            .timeout(Duration::from_secs(3));
        let devices = c.collect().await;
        assert_eq!(devices.len(), 1, "{devices:#?}");
        assert_eq!(devices[0].id, COLLECTOR_DEVICE_ID);
        let state = c.state();
        assert!(state.starts_with("error: dcgm-exporter"), "{state}");
        assert!(state.contains(why), "{why}: {state}");
        assert!(devices[0].labels["error"].contains(why));
    }
}

#[test]
fn a_bad_dcgm_url_is_reported_not_panicked() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut c = GpuCollector::new(None, Some("https://gpu:9400".into())).search_path(dir.path());
    let devices = rt.block_on(c.collect());
    assert_eq!(devices[0].id, COLLECTOR_DEVICE_ID);
    assert!(c.state().contains("use http://"), "{}", c.state());
}
