//! The host collector: this machine as one `host` device, from sysinfo.
//!
//! Numbers are in base units (bytes, seconds, percent). A reading that
//! fails is left out and reported as a device alert; the heartbeat still
//! goes out.

use std::collections::BTreeMap;

use hashfleet_shared::wire::{DeviceAlert, DeviceSnapshot, Severity};
use serde::Serialize;
use sysinfo::{Disks, System};

/// Most disks reported in the raw reply.
const MAX_DISKS: usize = 64;

pub struct HostCollector {
    system: Option<System>,
    disks: Option<Disks>,
}

#[derive(Serialize)]
struct DiskRaw {
    name: String,
    mount: String,
    fs: String,
    total_bytes: u64,
    available_bytes: u64,
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
        let mut raw_disks = Vec::new();
        if let Some(disks) = self.disks.as_mut() {
            disks.refresh(true);
            let (mut used, mut total) = (0u64, 0u64);
            for d in disks.iter().take(MAX_DISKS) {
                total += d.total_space();
                used += d.total_space().saturating_sub(d.available_space());
                raw_disks.push(DiskRaw {
                    name: d.name().to_string_lossy().into_owned(),
                    mount: d.mount_point().to_string_lossy().into_owned(),
                    fs: d.file_system().to_string_lossy().into_owned(),
                    total_bytes: d.total_space(),
                    available_bytes: d.available_space(),
                });
            }
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
        ] {
            assert!(s.metrics.contains_key(m), "missing {m}: {:?}", s.metrics);
        }
        assert!(s.metrics["mem_total_bytes"] > 0.0);
        assert!(s.metrics["mem_used_bytes"] <= s.metrics["mem_total_bytes"]);
        assert!(s.labels.contains_key("hostname"));
        let raw: serde_json::Value = serde_json::from_str(&s.raw).unwrap();
        assert!(raw["disks"].is_array());
    }
}
