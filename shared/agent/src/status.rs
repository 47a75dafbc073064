//! The sentry's view of itself, for logs, tests and the local status API.

use std::sync::{Arc, Mutex};

use serde::Serialize;

/// A snapshot of the runtime's state.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AgentStatus {
    pub node_id: String,
    pub wallet_address: String,
    /// Address of the commander of the current or last session.
    pub commander: Option<String>,
    pub connected: bool,
    pub approved: bool,
    pub sentry_id: Option<String>,
    /// Unix ms of the last heartbeat produced.
    pub last_heartbeat_at: Option<u64>,
    /// Unix ms of the last acknowledgement.
    pub last_ack_at: Option<u64>,
    pub last_ack_seq: u64,
    pub last_seq: u64,
    pub outbox_len: usize,
    pub outbox_dropped: u64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    /// Actions executed since start (a resent action answered from the
    /// journal is not counted again).
    pub actions_executed: u64,
    /// Actions refused since start: unsigned, mis-signed, expired, for
    /// another sentry, malformed or unreadable.
    pub actions_refused: u64,
}

/// Shared, cheaply cloned handle on the status.
#[derive(Debug, Clone, Default)]
pub struct StatusHandle(Arc<Mutex<AgentStatus>>);

impl StatusHandle {
    pub fn get(&self) -> AgentStatus {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn update(&self, f: impl FnOnce(&mut AgentStatus)) {
        if let Ok(mut s) = self.0.lock() {
            f(&mut s);
        }
    }
}
