//! The host collector: this machine as one `host` device, from sysinfo.
//!
//! Numbers are in base units (bytes, seconds, percent). A reading that
//! fails is left out and reported as a device alert; the heartbeat still
//! goes out.

use std::collections::BTreeMap;

use hashfleet_shared::wire::{DeviceAlert, DeviceSnapshot, Severity};
use serde::Serialize;
use sysinfo::{Components, Disks, Networks, System};

/// Most disks reported in the raw reply.
const MAX_DISKS: usize = 64;

pub struct HostCollector {
    system: Option<System>,
    disks: Option<Disks>,
    networks: Option<Networks>,
    components: Option<Components>,
}

/// Most hwmon sensors reported one by one.
const MAX_SENSORS: usize = 32;

#[derive(Serialize)]
struct DiskRaw {
    name: String,
    mount: String,
    fs: String,
    total_bytes: u64,
    available_bytes: u64,
}

/// Used and total bytes over the file systems, each counted once: a
/// bind mount (systemd's `ProtectSystem=`, `StateDirectory=`, containers)
/// lists the same file system again under another mount point.
fn disk_totals(disks: &[DiskRaw]) -> (u64, u64) {
    let mut seen = std::collections::HashSet::new();
    let (mut used, mut total) = (0u64, 0u64);
    for d in disks {
        if seen.insert((d.name.as_str(), d.fs.as_str(), d.total_bytes)) {
            total = total.saturating_add(d.total_bytes);
            used = used.saturating_add(d.total_bytes.saturating_sub(d.available_bytes));
        }
    }
    (used, total)
}

impl Default for HostCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl HostCollector {
    pub fn new() -> Self {
        let mut system = System::new().ok();
        if let Some(s) = system.as_mut() {
            // A first CPU sample, so the first heartbeat has a usage delta.
            s.refresh_cpu_usage();
        }
        HostCollector {
            system,
            disks: Disks::new_with_refreshed_list().ok(),
            networks: Networks::new_with_refreshed_list().ok(),
            components: Components::new_with_refreshed_list().ok(),
        }
    }

    /// One snapshot of the host.
    pub fn snapshot(&mut self) -> DeviceSnapshot {
        let mut metrics = BTreeMap::new();
        let mut labels = BTreeMap::new();
        let mut alerts = Vec::new();
        let mut fail = |code: &str, message: String| {
            alerts.push(DeviceAlert {
                code: code.to_string(),
                severity: Severity::Medium,
                message,
            })
        };
        let mut model = String::new();
        match self.system.as_mut() {
            Some(sys) => {
                sys.refresh_cpu_usage();
                sys.refresh_memory();
                metrics.insert("cpu_pct".into(), f64::from(sys.global_cpu_usage()));
                metrics.insert("cpu_count".into(), sys.cpus().len() as f64);
                if let Some(cpu) = sys.cpus().first() {
                    model = cpu.brand().trim().to_string();
                }
                metrics.insert("mem_used_bytes".into(), sys.used_memory() as f64);
                metrics.insert("mem_total_bytes".into(), sys.total_memory() as f64);
                metrics.insert("swap_used_bytes".into(), sys.used_swap() as f64);
                metrics.insert("swap_total_bytes".into(), sys.total_swap() as f64);
            }
            None => fail(
                "collector_error",
                "sysinfo cannot read CPU and memory on this system".into(),
            ),
        }
        match System::load_average() {
            Ok(load) => {
                metrics.insert("load_1".into(), load.one);
                metrics.insert("load_5".into(), load.five);
                metrics.insert("load_15".into(), load.fifteen);
            }
            Err(e) => fail("collector_error", format!("load average: {e}")),
        }
        match System::uptime() {
            Ok(up) => {
                metrics.insert("uptime_s".into(), up as f64);
            }
            Err(e) => fail("collector_error", format!("uptime: {e}")),
        }
        if let Ok(name) = System::host_name() {
            labels.insert("hostname".into(), name);
        }
        if let Ok(os) = System::long_os_version() {
            labels.insert("os".into(), os);
        }
        let kernel = System::kernel_version().unwrap_or_default();
        // Network totals since boot, over every interface but loopback.
        if let Some(nets) = self.networks.as_mut() {
            nets.refresh(true);
            let (mut rx, mut tx) = (0u64, 0u64);
            for (name, data) in nets.iter() {
                if name.to_string_lossy() == "lo" {
                    continue;
                }
                rx = rx.saturating_add(data.total_received());
                tx = tx.saturating_add(data.total_transmitted());
            }
            metrics.insert("net_rx_bytes".into(), rx as f64);
            metrics.insert("net_tx_bytes".into(), tx as f64);
        }
        // hwmon temperatures: the hottest as `temp_c`, each as `temp_<label>_c`.
        if let Some(components) = self.components.as_mut() {
            components.refresh(true);
            let mut hottest: Option<f32> = None;
            for c in components.iter() {
                let Some(t) = c.temperature().filter(|t| t.is_finite()) else {
                    continue;
                };
                hottest = Some(hottest.map_or(t, |h| h.max(t)));
                if metrics.len() < 64 + MAX_SENSORS {
                    let label: String = c
                        .label()
                        .chars()
                        .map(|ch| {
                            if ch.is_ascii_alphanumeric() {
                                ch.to_ascii_lowercase()
                            } else {
                                '_'
                            }
                        })
                        .take(48)
                        .collect();
                    metrics.insert(format!("temp_{label}_c"), f64::from(t));
                }
            }
            if let Some(t) = hottest {
                metrics.insert("temp_c".into(), f64::from(t));
            }
        }
        let mut raw_disks = Vec::new();
        if let Some(disks) = self.disks.as_mut() {
            disks.refresh(true);
            for d in disks.iter().take(MAX_DISKS) {
                raw_disks.push(DiskRaw {
                    name: d.name().to_string_lossy().into_owned(),
                    mount: d.mount_point().to_string_lossy().into_owned(),
                    fs: d.file_system().to_string_lossy().into_owned(),
                    total_bytes: d.total_space(),
                    available_bytes: d.available_space(),
                });
            }
            let (used, total) = disk_totals(&raw_disks);
            metrics.insert("disk_used_bytes".into(), used as f64);
            metrics.insert("disk_total_bytes".into(), total as f64);
        } else {
            fail(
                "collector_error",
                "sysinfo cannot list disks on this system".into(),
            );
        }
        let raw = serde_json::json!({ "disks": raw_disks }).to_string();
        DeviceSnapshot {
            // The commander keys a host by its sentry id.
            id: String::new(),
            kind: "host".into(),
            make: String::new(),
            model,
            firmware: kernel,
            metrics,
            labels,
            alerts,
            raw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_has_the_host_basics() {
        let mut c = HostCollector::new();
        let s = c.snapshot();
        assert_eq!(s.kind, "host");
        for m in [
            "cpu_pct",
            "mem_total_bytes",
            "mem_used_bytes",
            "uptime_s",
            "load_1",
            "net_rx_bytes",
            "net_tx_bytes",
        ] {
            assert!(s.metrics.contains_key(m), "missing {m}: {:?}", s.metrics);
        }
        assert!(s.metrics["mem_total_bytes"] > 0.0);
        assert!(s.metrics["mem_used_bytes"] <= s.metrics["mem_total_bytes"]);
        assert!(s.labels.contains_key("hostname"));
        let raw: serde_json::Value = serde_json::from_str(&s.raw).unwrap();
        assert!(raw["disks"].is_array());
    }

    #[test]
    fn a_file_system_bind_mounted_again_counts_once() {
        let disk = |name: &str, mount: &str, total, available| DiskRaw {
            name: name.into(),
            mount: mount.into(),
            fs: "ext4".into(),
            total_bytes: total,
            available_bytes: available,
        };
        let disks = [
            disk("/dev/sda1", "/", 100, 40),
            disk("/dev/sda1", "/var/lib/hashfleet", 100, 40),
            disk("/dev/sda1", "/etc/hashfleet", 100, 40),
            disk("/dev/sdb1", "/data", 50, 50),
        ];
        assert_eq!(disk_totals(&disks), (60, 150));
        assert_eq!(disk_totals(&[]), (0, 0));
    }
}
