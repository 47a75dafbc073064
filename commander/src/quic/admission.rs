//! Admission control for QUIC connections, before any authentication: a
//! cap on connections (handshaking or established) and a cap on
//! handshakes in progress from one source address. A flood of handshakes
//! from one address cannot crowd out the rest, and the whole commander
//! cannot be driven past its connection budget. Refused connections get
//! QUIC's CONNECTION_REFUSED at once, costing no handshake work.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The limits, from `[quic]` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections at once, handshaking or established.
    pub max_connections: usize,
    /// Handshakes in progress from one source address.
    pub max_handshakes_per_source: usize,
}

impl Default for Limits {
    /// Room for the load generator's 100,000 sentries (spread over many
    /// loopback source addresses) with headroom; a rig's sentry needs one.
    fn default() -> Self {
        Limits {
            max_connections: 250_000,
            max_handshakes_per_source: 64,
        }
    }
}

/// Why a connection was refused (also its metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Capacity,
    Source,
}

impl Refusal {
    pub fn metric(&self) -> &'static str {
        match self {
            Refusal::Capacity => "refused_capacity",
            Refusal::Source => "refused_source",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    connections: AtomicUsize,
    handshaking: Mutex<HashMap<IpAddr, usize>>,
}

/// Shared by the accept loop and the sessions.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    limits: Limits,
    counts: Arc<Counts>,
}

/// One admitted connection. Drop it when the connection ends; call
/// [`Ticket::handshake_done`] when the handshake ends (either way).
#[derive(Debug)]
pub struct Ticket {
    counts: Arc<Counts>,
    source: IpAddr,
    handshaking: bool,
}

impl Admission {
    pub fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            counts: Arc::default(),
        }
    }

    /// Admits a connection from `source`, or says why not.
    pub fn admit(&self, source: IpAddr) -> Result<Ticket, Refusal> {
        let mut handshaking = self
            .counts
            .handshaking
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.counts.connections.load(Ordering::Acquire) >= self.limits.max_connections {
            return Err(Refusal::Capacity);
        }
        let n = handshaking.entry(source).or_default();
        if *n >= self.limits.max_handshakes_per_source {
            if *n == 0 {
                handshaking.remove(&source);
            }
            return Err(Refusal::Source);
        }
        *n += 1;
        self.counts.connections.fetch_add(1, Ordering::AcqRel);
        Ok(Ticket {
            counts: self.counts.clone(),
            source,
            handshaking: true,
        })
    }

    /// Connections admitted and not yet ended.
    pub fn connections(&self) -> usize {
        self.counts.connections.load(Ordering::Acquire)
    }

    /// Handshakes in progress from `source`.
    pub fn handshaking(&self, source: IpAddr) -> usize {
        let h = self
            .counts
            .handshaking
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        h.get(&source).copied().unwrap_or(0)
    }
}

impl Ticket {
    /// The handshake ended (established or failed): the source may start
    /// another one.
    pub fn handshake_done(&mut self) {
        if !self.handshaking {
            return;
        }
        self.handshaking = false;
        let mut h = self
            .counts
            .handshaking
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = h.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // Keeps the map as small as the handshakes in flight.
                h.remove(&self.source);
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.handshake_done();
        self.counts.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn per_source_handshakes_are_capped_and_released() {
        let a = Admission::new(Limits {
            max_connections: 100,
            max_handshakes_per_source: 2,
        });
        let mut t1 = a.admit(ip(1)).unwrap();
        let _t2 = a.admit(ip(1)).unwrap();
        assert_eq!(a.admit(ip(1)).unwrap_err(), Refusal::Source);
        // Another source is not affected.
        let _t3 = a.admit(ip(2)).unwrap();
        // A finished handshake frees a slot, the connection still counts.
        t1.handshake_done();
        t1.handshake_done();
        assert_eq!(a.handshaking(ip(1)), 1);
        let _t4 = a.admit(ip(1)).unwrap();
        assert_eq!(a.connections(), 4);
        drop(t1);
        assert_eq!(a.connections(), 3);
    }

    #[test]
    fn total_connections_are_capped() {
        let a = Admission::new(Limits {
            max_connections: 2,
            max_handshakes_per_source: 10,
        });
        let mut t1 = a.admit(ip(1)).unwrap();
        t1.handshake_done();
        let t2 = a.admit(ip(2)).unwrap();
        assert_eq!(a.admit(ip(3)).unwrap_err(), Refusal::Capacity);
        drop(t2);
        assert!(a.admit(ip(3)).is_ok());
        assert_eq!(a.handshaking(ip(2)), 0);
    }

    #[test]
    fn the_source_map_holds_only_handshakes_in_flight() {
        let a = Admission::new(Limits::default());
        let tickets: Vec<Ticket> = (1..=200).map(|i| a.admit(ip(i)).unwrap()).collect();
        drop(tickets);
        assert!(a.counts.handshaking.lock().unwrap().is_empty());
        assert_eq!(a.connections(), 0);
    }
}
