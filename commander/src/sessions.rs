//! Live sessions by node key, and the set of revoked keys.
//!
//! A new session of a node replaces its old one (the old connection is
//! closed). HTTP handlers reach a live session through here to tell it of
//! an approval, or to close it on revocation.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use hashfleet_shared::tls::ClientKeyPolicy;
use hashfleet_shared::NodeId;
use tokio::sync::mpsc;

/// What the rest of the commander can tell a live session.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    Approved,
    Revoked,
    /// Send this signed action request to the sentry.
    Action(Box<hashfleet_shared::wire::SignedAction>),
    /// An operator asked the sentry to rotate its node key.
    Rotate,
    /// Announce the commander's next key.
    Announce(Box<hashfleet_shared::wire::SignedKeyAnnouncement>),
}

/// Application close codes on QUIC connections.
pub mod close {
    pub const NORMAL: u32 = 0;
    pub const REPLACED: u32 = 1;
    pub const REVOKED: u32 = 2;
    pub const REJECTED: u32 = 3;
    pub const PROTOCOL: u32 = 4;
    pub const SHUTDOWN: u32 = 5;
    pub const STORE_ERROR: u32 = 6;
    pub const KEY_ROTATED: u32 = 7;
}

struct Entry {
    id: u64,
    conn: quinn::Connection,
    control: mpsc::Sender<Control>,
}

/// The registry of live sessions.
#[derive(Default)]
pub struct Sessions {
    next_id: AtomicU64,
    live: Mutex<HashMap<NodeId, Entry>>,
}

impl Sessions {
    /// Registers a session, closing any older one of the same node.
    /// Returns the registration id to pass to [`Sessions::remove`].
    pub fn register(
        &self,
        node: NodeId,
        conn: quinn::Connection,
        control: mpsc::Sender<Control>,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let old = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, Entry { id, conn, control });
        if let Some(old) = old {
            old.conn.close(
                close::REPLACED.into(),
                b"replaced by a newer session of this node",
            );
        }
        id
    }

    pub fn remove(&self, node: &NodeId, id: u64) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.get(node).is_some_and(|e| e.id == id) {
            live.remove(node);
        }
    }

    /// The registration id of a node's live session, if it has one.
    pub fn registration(&self, node: &NodeId) -> Option<u64> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .map(|e| e.id)
    }

    pub fn is_connected(&self, node: &NodeId) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(node)
    }

    /// Tells a live session something; false when the node is not connected.
    pub fn tell(&self, node: &NodeId, control: Control) -> bool {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match live.get(node) {
            Some(e) => e.control.try_send(control).is_ok(),
            None => false,
        }
    }

    /// Tells every live session something (dropped for a session whose
    /// queue is full); returns how many were told.
    pub fn tell_all(&self, control: &Control) -> usize {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.values()
            .filter(|e| e.control.try_send(control.clone()).is_ok())
            .count()
    }

    /// Closes every live session.
    pub fn close_all(&self, code: u32, reason: &str) {
        let live = std::mem::take(&mut *self.live.lock().unwrap_or_else(|p| p.into_inner()));
        for e in live.into_values() {
            e.conn.close(code.into(), reason.as_bytes());
        }
    }

    /// Closes a node's live session at once.
    pub fn close(&self, node: &NodeId, code: u32, reason: &str) {
        if let Some(e) = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node)
        {
            e.conn.close(code.into(), reason.as_bytes());
        }
    }

    pub fn count(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Revoked node keys, refused at TLS. Loaded from the store at start.
#[derive(Debug, Default, Clone)]
pub struct RevokedKeys(Arc<RwLock<HashSet<NodeId>>>);

impl RevokedKeys {
    pub fn insert(&self, node: NodeId) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node);
    }

    pub fn contains(&self, node: &NodeId) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(node)
    }
}

impl ClientKeyPolicy for RevokedKeys {
    fn allow(&self, node: &NodeId) -> bool {
        !self.contains(node)
    }
}
