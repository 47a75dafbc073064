//! `--write-sentry-config`: a sentry-asic TOML config covering exactly the
//! fleet this sim serves, written atomically once every socket is bound.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::fleet::Fleet;

/// Consecutive runs of addresses, as `[[scan]] range = "A-B"` entries.
fn runs(addrs: &[Ipv4Addr]) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let mut out: Vec<(Ipv4Addr, Ipv4Addr)> = Vec::new();
    for &a in addrs {
        match out.last_mut() {
            Some((_, end)) if u32::from(*end).checked_add(1) == Some(u32::from(a)) => *end = a,
            _ => out.push((a, a)),
        }
    }
    out
}

/// The config text.
pub fn render(fleet: &Fleet, interval_secs: u64) -> String {
    let mut out = String::new();
    out.push_str("# Written by hashfleet-sim: covers exactly the fleet it serves.\n");
    out.push_str(&format!("interval_secs = {}\n", interval_secs.clamp(1, 10)));
    out.push_str("site = \"sim\"\n");
    out.push_str(&format!(
        "rack = \"sim-{}\"\n",
        fleet.layout.base_ip.to_string().replace('.', "-")
    ));
    out.push_str(&format!(
        "concurrency = {}\n",
        fleet.miners.len().clamp(1, 512)
    ));
    let mut addrs: Vec<Ipv4Addr> = fleet.miners.iter().map(|m| m.addr).collect();
    addrs.sort();
    for (a, b) in runs(&addrs) {
        out.push_str(&format!("\n[[scan]]\nrange = \"{a}-{b}\"\n"));
    }
    for c in &fleet.containers {
        out.push('\n');
        out.push_str(&crate::devices::container::container_config_toml(c));
    }
    for m in &fleet.meters {
        out.push('\n');
        out.push_str(&crate::devices::modbus::meter_config_toml(m));
    }
    for r in &fleet.relays {
        out.push('\n');
        out.push_str(&crate::devices::modbus::relay_config_toml(r));
    }
    out
}

/// Writes [`render`] to `path`: temp file, fsync, rename.
pub fn write(path: &Path, fleet: &Fleet, interval_secs: u64) -> std::io::Result<()> {
    let text = render(fleet, interval_secs);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sentry-asic.toml".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_addresses_make_one_range() {
        let a = |d| Ipv4Addr::new(127, 1, 0, d);
        assert_eq!(
            runs(&[a(1), a(2), a(3), a(7), a(8)]),
            vec![(a(1), a(3)), (a(7), a(8))]
        );
        assert!(runs(&[]).is_empty());
    }
}
