//! Persistence of approved actions and of the audit log, as its own trait
//! so each domain of the store stays small.
//!
//! Trees: `actions` (id → [`ActionRecord`]), `actions_by_time`
//! (`created_ms` BE ‖ id → nothing, for time-range queries), `actions_open`
//! (id → nothing, for every action not yet done or cancelled: what the
//! executor resumes after a restart), and `audit` (`ts_ms` BE ‖ counter BE
//! → [`AuditRecord`]).

use std::collections::BTreeMap;

use bincode::{Decode, Encode};

use super::StoreError;

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct ActionTargetRecord {
    pub sentry_id: u64,
    pub device_id: String,
    pub device_type: String,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct ActionResultRecord {
    pub ok: bool,
    pub detail: String,
    pub at_ms: u64,
}

/// An action as stored: the whole state machine, so a restart resumes it.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct ActionRecord {
    pub id: String,
    pub batch_uid: Option<String>,
    pub method: String,
    pub params: String,
    pub creator: String,
    pub targets: Vec<ActionTargetRecord>,
    pub required_perms: Vec<String>,
    pub votes: BTreeMap<String, bool>,
    pub req_votes_pos: u32,
    pub req_votes_neg: u32,
    /// `voting`, `ready`, `executing`, `done`, `cancelled`.
    pub state: String,
    pub reason: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub expires_ms: u64,
    /// Target key (`sentry/device`) → result.
    pub results: BTreeMap<String, ActionResultRecord>,
}

/// One write through the API: who, what, when, from where, with what result.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct AuditRecord {
    pub ts_ms: u64,
    pub actor: String,
    /// Method and route, e.g. `POST /api/v1/actions`.
    pub operation: String,
    /// What it was about (an action id, a sentry id, a username).
    pub subject: String,
    /// The client address.
    pub from: String,
    /// HTTP status, and the error code when it failed.
    pub status: u16,
    pub outcome: String,
}

pub trait ActionStore: Send + Sync + 'static {
    /// Creates or updates an action; durable on return.
    fn put_action(&self, action: &ActionRecord) -> Result<(), StoreError>;
    fn action(&self, id: &str) -> Result<Option<ActionRecord>, StoreError>;
    /// Actions created in `[gte_ms, lte_ms]`, oldest first, at most `limit`.
    fn actions_between(
        &self,
        gte_ms: u64,
        lte_ms: u64,
        limit: usize,
    ) -> Result<Vec<ActionRecord>, StoreError>;
    /// Every action not yet done or cancelled.
    fn open_actions(&self) -> Result<Vec<ActionRecord>, StoreError>;
    /// Appends to the audit log; durable on return.
    fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError>;
    /// The newest `limit` audit entries, newest first.
    fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;
}
