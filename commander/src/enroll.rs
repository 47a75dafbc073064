//! Admitting a sentry whose hello and proof verified: look up its key,
//! check or use its enrollment token, and create or update its record.
//! The decision itself is the pure [`hashfleet_shared::enroll::decide`].

use hashfleet_shared::enroll::{decide, token_hash, Decision, Known, TokenCheck};
use hashfleet_shared::wire::{Hello, Reject, RejectCode, SentryStatus};

use crate::store::{SentryRecord, SentryState, Store, StoreError, TokenUse};

/// A sentry that may proceed, with its status.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub record: SentryRecord,
    pub status: SentryStatus,
    /// The session's key was rotated away and is inside its grace window.
    pub retired_key: bool,
    /// The hello named another wallet than the bound one (which stays
    /// bound: a wallet changes only through a `BindWallet`).
    pub unbound_wallet: bool,
}

fn status_of(state: SentryState) -> Known {
    match state {
        SentryState::Approved => Known::Approved,
        SentryState::Pending => Known::Pending,
        SentryState::Revoked => Known::Revoked,
    }
}

fn state_of(status: SentryStatus) -> SentryState {
    match status {
        SentryStatus::Approved => SentryState::Approved,
        SentryStatus::Pending => SentryState::Pending,
    }
}

/// Decides on a verified hello, writing what changes. Blocking.
pub fn admit(
    store: &dyn Store,
    hello: &Hello,
    now_ms: u64,
    grace: std::time::Duration,
) -> Result<Result<Admitted, Reject>, StoreError> {
    let existing = match store.sentry_id_for_node(&hello.node_id)? {
        Some(id) => store.sentry(id)?,
        None => None,
    };
    let key = *hello.node_id.public_key();
    // An earlier key of an enrolled sentry works only inside its grace
    // window after the rotation that retired it (a revoked one never).
    let retired = existing
        .as_ref()
        .filter(|r| r.node_key != key && r.state != SentryState::Revoked)
        .map(|r| (r.retired(&key).cloned(), r.node_key));
    let retired_key = match retired {
        None => false,
        Some((Some(rotation), _))
            if now_ms <= rotation.at_ms.saturating_add(grace.as_millis() as u64) =>
        {
            true
        }
        Some((rotation, current)) => {
            let when = rotation
                .map(|r| format!(" at {} ms", r.at_ms))
                .unwrap_or_default();
            return Ok(Err(Reject {
                code: RejectCode::KeyRotated,
                message: format!(
                    "node key {} was rotated away{when} and its grace window of {} s is over; this sentry is now {}. A sentry that holds the new key (identity.next.json) switches to it by itself; otherwise an operator revokes the sentry and it re-enrolls with a new identity and token",
                    hello.node_id,
                    grace.as_secs(),
                    hashfleet_shared::NodeId::from_public_key(current)
                ),
            }));
        }
    };
    let known = existing.as_ref().map(|r| status_of(r.state));
    // Only a new or pending sentry spends a token.
    let token = match (&known, &hello.enroll_token) {
        (None | Some(Known::Pending), Some(token)) => {
            match store.use_token(&token_hash(token), now_ms)? {
                TokenUse::Used => TokenCheck::Valid,
                TokenUse::Unknown | TokenUse::Expired | TokenUse::UsedUp => TokenCheck::Invalid,
            }
        }
        _ => TokenCheck::Absent,
    };
    let status = match decide(known, token) {
        Decision::Reject(r) => return Ok(Err(r)),
        Decision::Create { status, .. } | Decision::Welcome { status, .. } => status,
    };
    let mut record = existing.unwrap_or_else(|| SentryRecord {
        sentry_id: new_sentry_id(store),
        node_key: *hello.node_id.public_key(),
        previous_node_keys: Vec::new(),
        wallet_address: hello.wallet_address.0,
        kind: hello.kind.as_str().to_string(),
        agent_version: hello.agent_version.clone(),
        labels: hello.labels.clone(),
        state: state_of(status),
        created_ms: now_ms,
        state_changed_ms: now_ms,
        rotations: Vec::new(),
        rotate_requested_ms: None,
        wallet_changes: Vec::new(),
    });
    let before = record.clone();
    if record.state != state_of(status) {
        record.state = state_of(status);
        record.state_changed_ms = now_ms;
    }
    // The hello's wallet proof binds a wallet at enrollment only; later a
    // wallet changes through `BindWallet` (signed over a commander nonce).
    let unbound_wallet = record.wallet_address != hello.wallet_address.0;
    record.kind = hello.kind.as_str().to_string();
    record.agent_version = hello.agent_version.clone();
    record.labels = hello.labels.clone();
    if record != before || store.sentry(record.sentry_id)?.is_none() {
        store.put_sentry(&record)?;
    }
    Ok(Ok(Admitted {
        record,
        status,
        retired_key,
        unbound_wallet,
    }))
}

fn new_sentry_id(store: &dyn Store) -> u64 {
    loop {
        let id = u64::from_le_bytes(hashfleet_shared::random_bytes::<8>());
        if id != 0 && !matches!(store.sentry(id), Ok(Some(_))) {
            return id;
        }
    }
}
