//! The emulated fleet: which device lives at which loopback address, and
//! how often each address was contacted.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::devices::container::Container;
use crate::devices::modbus::{Meter, Relay};
use crate::model::{Fault, Miner, Model};

/// What the fleet looks like.
#[derive(Debug, Clone)]
pub struct Layout {
    pub miners: usize,
    pub base_ip: Ipv4Addr,
    /// Models assigned round-robin.
    pub models: Vec<Model>,
    pub containers: usize,
    pub meters: usize,
    pub relays: usize,
    /// Channels per relay controller.
    pub relay_channels: usize,
    /// How long a reboot or a power-on keeps a miner unreachable.
    pub boot_time: Duration,
}

/// Most devices one sim serves (of every kind together).
pub const MAX_DEVICES: usize = 65_000;

/// One device, by kind.
#[derive(Debug, Clone)]
pub enum Device {
    Miner(Arc<Miner>),
    Container(Arc<Container>),
    Meter(Arc<Meter>),
    Relay(Arc<Relay>),
}

impl Device {
    pub fn kind(&self) -> &'static str {
        match self {
            Device::Miner(_) => "miner",
            Device::Container(_) => "container",
            Device::Meter(_) => "powermeter",
            Device::Relay(_) => "relay",
        }
    }

    /// TCP ports this device listens on.
    pub fn ports(&self) -> &'static [u16] {
        match self {
            Device::Miner(m) => m.model.ports(),
            Device::Container(_) => &[80],
            Device::Meter(_) | Device::Relay(_) => &[502],
        }
    }
}

/// Every device, addressed.
#[derive(Debug)]
pub struct Fleet {
    pub layout: Layout,
    pub miners: Vec<Arc<Miner>>,
    pub containers: Vec<Arc<Container>>,
    pub meters: Vec<Arc<Meter>>,
    pub relays: Vec<Arc<Relay>>,
    by_addr: HashMap<Ipv4Addr, Device>,
    contacts: Mutex<HashMap<Ipv4Addr, u64>>,
}

fn offset(base: Ipv4Addr, n: usize) -> Option<Ipv4Addr> {
    let v = u32::from(base).checked_add(u32::try_from(n).ok()?)?;
    let ip = Ipv4Addr::from(v);
    ip.is_loopback().then_some(ip)
}

impl Fleet {
    /// Lays the fleet out from `base_ip`: miners first, then containers,
    /// meters and relays, one address each.
    pub fn new(layout: Layout) -> Result<Fleet, String> {
        let total = layout.miners + layout.containers + layout.meters + layout.relays;
        if total == 0 {
            return Err(
                "the fleet is empty: give --miners, --containers, --meters or --relays".into(),
            );
        }
        if total > MAX_DEVICES {
            return Err(format!(
                "{total} devices asked for; one sim serves at most {MAX_DEVICES}"
            ));
        }
        if !layout.base_ip.is_loopback() || layout.base_ip.octets()[1..3] == [0, 0] {
            return Err(format!(
                "--base-ip {}: the sim serves only 127.0.0.0/8 outside 127.0.0.0/16 (leave that to other services), e.g. 127.1.0.1",
                layout.base_ip
            ));
        }
        if offset(layout.base_ip, total - 1).is_none() {
            return Err(format!(
                "{total} devices from {} run past 127.255.255.255: pick a lower --base-ip",
                layout.base_ip
            ));
        }
        if layout.models.is_empty() && layout.miners > 0 {
            return Err("--models is empty".into());
        }
        if layout.relay_channels == 0 || layout.relay_channels > 64 {
            return Err("relay channels must be 1..=64".into());
        }
        let addr = |n: usize| offset(layout.base_ip, n).expect("checked above");
        let miners: Vec<Arc<Miner>> = (0..layout.miners)
            .map(|i| {
                let model = layout.models[i % layout.models.len()];
                Arc::new(Miner::new(i, addr(i), model, layout.boot_time))
            })
            .collect();
        let mut next = layout.miners;
        let containers: Vec<Arc<Container>> = (0..layout.containers)
            .map(|i| Arc::new(Container::new(i, addr(next + i))))
            .collect();
        next += layout.containers;
        // Containers cool the miners, split between them evenly.
        if !containers.is_empty() {
            let per = miners.len().div_ceil(containers.len());
            for (i, c) in containers.iter().enumerate() {
                c.attach_miners(miners.iter().skip(i * per).take(per).cloned().collect());
            }
        }
        // Meters split the miners between them evenly.
        let per_meter = if layout.meters == 0 {
            0
        } else {
            miners.len().div_ceil(layout.meters)
        };
        let meters: Vec<Arc<Meter>> = (0..layout.meters)
            .map(|i| {
                let fed = miners
                    .iter()
                    .skip(i * per_meter)
                    .take(per_meter)
                    .cloned()
                    .collect();
                Arc::new(Meter::new(i, addr(next + i), fed))
            })
            .collect();
        next += layout.meters;
        // Relay r channel c powers miner r * channels + c.
        let relays: Vec<Arc<Relay>> = (0..layout.relays)
            .map(|r| {
                let channels = (0..layout.relay_channels)
                    .map(|c| miners.get(r * layout.relay_channels + c).cloned())
                    .collect();
                Arc::new(Relay::new(r, addr(next + r), channels))
            })
            .collect();
        let mut by_addr = HashMap::with_capacity(total);
        for m in &miners {
            by_addr.insert(m.addr, Device::Miner(m.clone()));
        }
        for c in &containers {
            by_addr.insert(c.addr, Device::Container(c.clone()));
        }
        for m in &meters {
            by_addr.insert(m.addr, Device::Meter(m.clone()));
        }
        for r in &relays {
            by_addr.insert(r.addr, Device::Relay(r.clone()));
        }
        Ok(Fleet {
            layout,
            miners,
            containers,
            meters,
            relays,
            by_addr,
            contacts: Mutex::new(HashMap::new()),
        })
    }

    pub fn device(&self, addr: Ipv4Addr) -> Option<&Device> {
        self.by_addr.get(&addr)
    }

    pub fn devices(&self) -> impl Iterator<Item = (&Ipv4Addr, &Device)> {
        self.by_addr.iter()
    }

    /// Every address served, in order.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        let mut out: Vec<Ipv4Addr> = self.by_addr.keys().copied().collect();
        out.sort();
        out
    }

    /// Every port some device listens on.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .by_addr
            .values()
            .flat_map(|d| d.ports().iter().copied())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Counts one connection to `addr` (served or not).
    pub fn contacted(&self, addr: Ipv4Addr) {
        let mut c = self.contacts.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: only loopback addresses reach here, and an unserved one
        // is counted under one key per address that was actually dialled;
        // cap the table so a scan of all of 127/8 cannot grow it forever.
        if c.len() < 1_000_000 || c.contains_key(&addr) {
            *c.entry(addr).or_default() += 1;
        }
    }

    /// Connections per address so far.
    pub fn contacts(&self) -> BTreeMap<Ipv4Addr, u64> {
        let c = self.contacts.lock().unwrap_or_else(|p| p.into_inner());
        c.iter().map(|(a, n)| (*a, *n)).collect()
    }

    /// The address range of each kind, for printing.
    pub fn ranges(&self) -> Vec<(&'static str, usize, Option<RangeInclusive<Ipv4Addr>>)> {
        fn span<T>(
            items: &[Arc<T>],
            addr: impl Fn(&T) -> Ipv4Addr,
        ) -> Option<RangeInclusive<Ipv4Addr>> {
            Some(addr(items.first()?)..=addr(items.last()?))
        }
        vec![
            ("miners", self.miners.len(), span(&self.miners, |m| m.addr)),
            (
                "containers",
                self.containers.len(),
                span(&self.containers, |c| c.addr),
            ),
            ("meters", self.meters.len(), span(&self.meters, |m| m.addr)),
            ("relays", self.relays.len(), span(&self.relays, |r| r.addr)),
        ]
    }

    /// Miners selected by `target`: `all`, one address, or `A-B`.
    pub fn select_miners(&self, target: &str) -> Result<Vec<Arc<Miner>>, String> {
        let target = target.trim();
        if target.is_empty() || target == "all" {
            return Ok(self.miners.clone());
        }
        let parse = |s: &str| -> Result<Ipv4Addr, String> {
            s.trim().parse().map_err(|_| {
                format!("`{s}` is not an IPv4 address (targets: all, ADDR or ADDR-ADDR)")
            })
        };
        let (lo, hi) = match target.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => {
                let a = parse(target)?;
                (a, a)
            }
        };
        let picked: Vec<Arc<Miner>> = self
            .miners
            .iter()
            .filter(|m| m.addr >= lo && m.addr <= hi)
            .cloned()
            .collect();
        if picked.is_empty() {
            return Err(format!("no emulated miner at {target}"));
        }
        Ok(picked)
    }

    /// Sets or clears `fault` on the miners `target` selects; returns how many.
    pub fn set_fault(&self, target: &str, fault: Fault, on: bool) -> Result<usize, String> {
        let miners = self.select_miners(target)?;
        for m in &miners {
            m.set_fault(fault, on);
        }
        Ok(miners.len())
    }
}

/// A `--fault` flag: `KIND[@TARGET]`, e.g. `overheat@127.1.0.5` or
/// `slow=1500@127.1.0.1-127.1.0.9`; no target means every miner.
pub fn parse_fault_flag(text: &str) -> Result<(Fault, String), String> {
    let (fault, target) = match text.split_once('@') {
        Some((f, t)) => (f, t.to_string()),
        None => (text, "all".to_string()),
    };
    Ok((Fault::parse(fault)?, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(miners: usize) -> Layout {
        Layout {
            miners,
            base_ip: Ipv4Addr::new(127, 99, 0, 1),
            models: Model::ALL.to_vec(),
            containers: 2,
            meters: 2,
            relays: 1,
            relay_channels: 4,
            boot_time: Duration::from_secs(1),
        }
    }

    #[test]
    fn addresses_are_consecutive_and_kinds_follow_miners() {
        let f = Fleet::new(layout(5)).unwrap();
        assert_eq!(f.miners[4].addr, Ipv4Addr::new(127, 99, 0, 5));
        assert_eq!(f.containers[0].addr, Ipv4Addr::new(127, 99, 0, 6));
        assert_eq!(f.meters[1].addr, Ipv4Addr::new(127, 99, 0, 9));
        assert_eq!(f.relays[0].addr, Ipv4Addr::new(127, 99, 0, 10));
        assert_eq!(f.addresses().len(), 10);
        assert_eq!(f.miners[1].model, Model::WhatsminerM56S);
        assert_eq!(f.meters[0].miners.len(), 3);
        assert_eq!(f.meters[1].miners.len(), 2);
        assert_eq!(f.relays[0].channels.iter().flatten().count(), 4);
        assert_eq!(f.ports(), vec![80, 502, 4028, 4433]);
    }

    #[test]
    fn bad_layouts_are_named() {
        let mut l = layout(1);
        l.base_ip = Ipv4Addr::new(10, 0, 0, 1);
        assert!(Fleet::new(l).unwrap_err().contains("127.0.0.0/8"));
        let mut l = layout(1);
        l.base_ip = Ipv4Addr::new(127, 255, 255, 253);
        assert!(Fleet::new(l).unwrap_err().contains("run past"));
        let mut l = layout(0);
        (l.containers, l.meters, l.relays) = (0, 0, 0);
        assert!(Fleet::new(l).unwrap_err().contains("empty"));
    }

    #[test]
    fn fault_targets_select_miners() {
        let f = Fleet::new(layout(5)).unwrap();
        assert_eq!(f.select_miners("all").unwrap().len(), 5);
        assert_eq!(f.select_miners("127.99.0.2-127.99.0.3").unwrap().len(), 2);
        assert!(f.select_miners("127.99.0.9").is_err());
        assert!(f.select_miners("x").is_err());
        let (fault, target) = parse_fault_flag("overheat@127.99.0.2").unwrap();
        assert_eq!(f.set_fault(&target, fault, true).unwrap(), 1);
        assert!(f.miners[1].faults().overheat);
        assert!(!f.miners[0].faults().overheat);
    }
}
