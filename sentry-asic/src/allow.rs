//! The allow-list: the only addresses this sentry ever contacts. It is
//! the `[[scan]]` ranges and subnets plus the address of each configured
//! container, meter and relay; every device call checks it first, so a
//! wrong config cannot make the sentry probe someone else's network.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// Most hosts all `[[scan]]` entries together may cover.
pub const MAX_SCAN_HOSTS: usize = 65_536;

/// An inclusive range of IPv4 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl Range {
    pub fn len(&self) -> usize {
        (u32::from(self.end) - u32::from(self.start)) as usize + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip >= self.start && ip <= self.end
    }

    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        (u32::from(self.start)..=u32::from(self.end)).map(Ipv4Addr::from)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

fn ip(text: &str, whole: &str) -> Result<Ipv4Addr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("`{whole}`: `{}` is not an IPv4 address", text.trim()))
}

/// `10.0.1.1-10.0.1.254`, or `10.0.1.1-254` (the end as a last octet), or
/// one address.
pub fn parse_range(text: &str) -> Result<Range, String> {
    let (start, end) = match text.split_once('-') {
        None => {
            let a = ip(text, text)?;
            (a, a)
        }
        Some((a, b)) => {
            let start = ip(a, text)?;
            let end = if b.contains('.') {
                ip(b, text)?
            } else {
                let last: u8 = b.trim().parse().map_err(|_| {
                    format!("`{text}`: the end is an address or a last octet 0-255")
                })?;
                let o = start.octets();
                Ipv4Addr::new(o[0], o[1], o[2], last)
            };
            (start, end)
        }
    };
    if end < start {
        return Err(format!("`{text}`: the range ends before it starts"));
    }
    Ok(Range { start, end })
}

/// `10.0.1.0/24`: its hosts (without the network and broadcast addresses
/// for prefixes up to /30).
pub fn parse_subnet(text: &str) -> Result<Range, String> {
    let (net, prefix) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}`: a subnet is ADDRESS/PREFIX, e.g. 10.0.1.0/24"))?;
    let net = ip(net, text)?;
    let prefix: u32 = prefix
        .trim()
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("`{text}`: the prefix is 0-32"))?;
    if prefix < 16 {
        return Err(format!(
            "`{text}`: a /{prefix} is more than 65,536 hosts; split it into /16s or smaller"
        ));
    }
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    let base = u32::from(net) & mask;
    if base != u32::from(net) {
        return Err(format!(
            "`{text}`: {net} has host bits set for a /{prefix}; the network is {}/{prefix}",
            Ipv4Addr::from(base)
        ));
    }
    let last = base | !mask;
    let (start, end) = if prefix <= 30 {
        (base + 1, last - 1)
    } else {
        (base, last)
    };
    Ok(Range {
        start: Ipv4Addr::from(start),
        end: Ipv4Addr::from(end),
    })
}

/// What the sentry may contact.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AllowList {
    /// Scanned for miners.
    pub scan: Vec<Range>,
    /// Configured devices (containers, meters, relays), with what they are.
    pub devices: Vec<(Ipv4Addr, String)>,
}

impl AllowList {
    /// Checks the total size.
    pub fn new(scan: Vec<Range>, devices: Vec<(Ipv4Addr, String)>) -> Result<AllowList, String> {
        let total: usize = scan.iter().map(Range::len).sum();
        if total > MAX_SCAN_HOSTS {
            return Err(format!(
                "the [[scan]] entries cover {total} addresses; one sentry scans at most {MAX_SCAN_HOSTS}: split the segment between sentries"
            ));
        }
        Ok(AllowList { scan, devices })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        let IpAddr::V4(v4) = addr else {
            return false;
        };
        self.scan.iter().any(|r| r.contains(v4)) || self.devices.iter().any(|(a, _)| *a == v4)
    }

    /// Every address to scan for miners, without duplicates, in order.
    pub fn scan_hosts(&self) -> Vec<IpAddr> {
        let set: BTreeSet<Ipv4Addr> = self.scan.iter().flat_map(Range::hosts).collect();
        set.into_iter().map(IpAddr::V4).collect()
    }

    /// For the start-up log line.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.scan.iter().map(|r| r.to_string()).collect();
        parts.extend(self.devices.iter().map(|(a, what)| format!("{a} ({what})")));
        if parts.is_empty() {
            "nothing".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Refuses a call to an address outside `allow`; every device client calls
/// this before it connects.
pub fn check(allow: &AllowList, addr: IpAddr) -> Result<(), String> {
    if allow.contains(addr) {
        Ok(())
    } else {
        Err(format!(
            "{addr} is outside this sentry's allow-list ({}); add it to a [[scan]] range or a device entry",
            allow.describe()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_in_both_forms() {
        let r = parse_range("10.0.1.1-10.0.1.254").unwrap();
        assert_eq!(r.len(), 254);
        assert_eq!(parse_range("10.0.1.1-254").unwrap(), r);
        assert_eq!(parse_range("10.0.1.7").unwrap().len(), 1);
        assert!(parse_range("10.0.1.9-3")
            .unwrap_err()
            .contains("ends before"));
        assert!(parse_range("10.0.1.x-3")
            .unwrap_err()
            .contains("not an IPv4"));
        assert!(parse_range("10.0.1.1-300").is_err());
    }

    #[test]
    fn subnets_exclude_network_and_broadcast() {
        let r = parse_subnet("10.0.1.0/24").unwrap();
        assert_eq!(
            (r.start, r.end),
            (Ipv4Addr::new(10, 0, 1, 1), Ipv4Addr::new(10, 0, 1, 254))
        );
        assert_eq!(parse_subnet("10.0.1.7/32").unwrap().len(), 1);
        assert!(parse_subnet("10.0.1.5/24")
            .unwrap_err()
            .contains("host bits"));
        assert!(parse_subnet("10.0.0.0/8").unwrap_err().contains("65,536"));
        assert!(parse_subnet("10.0.0.0").is_err());
        assert!(parse_subnet("10.0.0.0/33").is_err());
    }

    #[test]
    fn only_listed_addresses_are_allowed() {
        let allow = AllowList::new(
            vec![parse_range("127.1.0.1-127.1.0.10").unwrap()],
            vec![(Ipv4Addr::new(127, 1, 0, 50), "container c1".into())],
        )
        .unwrap();
        assert!(allow.contains("127.1.0.10".parse().unwrap()));
        assert!(allow.contains("127.1.0.50".parse().unwrap()));
        assert!(!allow.contains("127.1.0.11".parse().unwrap()));
        assert!(!allow.contains("::1".parse().unwrap()));
        assert!(check(&allow, "127.1.0.11".parse().unwrap())
            .unwrap_err()
            .contains("outside"));
        assert_eq!(allow.scan_hosts().len(), 10);
        assert!(allow.describe().contains("127.1.0.50 (container c1)"));
        let too_big = vec![
            parse_subnet("10.0.0.0/16").unwrap(),
            parse_subnet("10.1.0.0/16").unwrap(),
        ];
        assert!(AllowList::new(too_big, vec![]).is_err());
    }
}
