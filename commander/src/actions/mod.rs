//! Approved actions, as a pure state machine with MiningOS semantics.
//!
//! `voting → ready → executing → done`, or `cancelled`:
//! - [`push`]: the targets decide the permissions needed (`<type>:w`); the
//!   submitter must hold them, and their push is the first yes vote, so an
//!   action needing one vote is `ready` at once. No targets: no action.
//! - [`vote`]: each voter once, holding every required permission; one no
//!   cancels; reaching the threshold makes the action `ready`.
//! - [`cancel`]: the creator (or an admin) while `voting` or `ready`.
//! - [`start`], [`record_result`], [`expire`]: execution, one result per
//!   target, and what happens when time runs out.
//!
//! No I/O and no clock: time is passed in, so every rule is tested here.

use std::collections::{BTreeMap, BTreeSet};

pub mod executor;
pub mod service;

/// Where an action stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Voting,
    Ready,
    Executing,
    Done,
    Cancelled,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Voting => "voting",
            State::Ready => "ready",
            State::Executing => "executing",
            State::Done => "done",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        [
            State::Voting,
            State::Ready,
            State::Executing,
            State::Done,
            State::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// One device an action acts on, and the sentry that reaches it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub sentry_id: u64,
    pub device_id: String,
    pub device_type: String,
}

impl Target {
    /// `sentry/device`: the key of this target's result.
    pub fn key(&self) -> String {
        format!("{:016x}/{}", self.sentry_id, self.device_id)
    }
}

/// What happened on one target.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetResult {
    pub ok: bool,
    /// The result value (JSON text) when ok, the error otherwise.
    pub detail: String,
    pub at_ms: u64,
}

/// An action and everything that happened to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub id: String,
    pub batch_uid: Option<String>,
    pub method: String,
    /// JSON array text.
    pub params: String,
    pub creator: String,
    pub targets: Vec<Target>,
    /// `<type>:w` for every target type, sorted.
    pub required_perms: Vec<String>,
    pub votes: BTreeMap<String, bool>,
    pub req_votes_pos: u32,
    pub req_votes_neg: u32,
    pub state: State,
    /// Why it was cancelled (a no vote, the creator, expiry).
    pub reason: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub expires_ms: u64,
    pub results: BTreeMap<String, TargetResult>,
}

/// Why an action request was refused. `code()` gives the MiningOS code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("no device matches the query: nothing to act on, and no action was created")]
    NoTargets,
    #[error("this action needs {missing}; you hold only what your permissions list")]
    MissingWrite { missing: String },
    #[error("voting on this action needs {missing}")]
    Denied { missing: String },
    #[error("{voter} has already voted on this action")]
    VoterExists { voter: String },
    #[error("the action is {state}, not voting: it can no longer be voted on")]
    NotVoting { state: &'static str },
    #[error("only the creator ({creator}) or an admin may cancel this action")]
    NotCreator { creator: String },
    #[error("the action is {state}: only voting or ready actions can be cancelled")]
    NotCancellable { state: &'static str },
    #[error("the action is {state}, not {expected}")]
    WrongState {
        state: &'static str,
        expected: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
}

impl ActionError {
    pub fn code(&self) -> &'static str {
        match self {
            ActionError::NoTargets => "ERR_ORK_ACTION_CALLS_EMPTY",
            ActionError::MissingWrite { .. } => "ERR_MISSING_WRITE_PERMISSIONS",
            ActionError::Denied { .. } => "ERR_ACTION_DENIED",
            ActionError::VoterExists { .. } => "ERR_VOTER_EXISTS",
            ActionError::NotVoting { .. } => "ERR_ACTION_NOT_VOTING",
            ActionError::NotCreator { .. } => "ERR_CALLER_NOT_CREATOR",
            ActionError::NotCancellable { .. } | ActionError::WrongState { .. } => {
                "ERR_ACTION_STATE"
            }
            ActionError::Invalid(_) => "ERR_ACTION_INVALID",
        }
    }
}

/// What a push asks for.
#[derive(Debug, Clone)]
pub struct PushRequest {
    pub id: String,
    pub batch_uid: Option<String>,
    pub method: String,
    pub params: String,
    pub creator: String,
    pub targets: Vec<Target>,
    /// Yes votes needed (from `[actions.votes]`, default 1).
    pub req_votes_pos: u32,
    /// Automation types are approved without votes.
    pub automation: bool,
    pub now_ms: u64,
    pub ttl_ms: u64,
}

fn required(targets: &[Target]) -> Vec<String> {
    let types: BTreeSet<&str> = targets.iter().map(|t| t.device_type.as_str()).collect();
    types.into_iter().map(|t| format!("{t}:w")).collect()
}

fn missing(required: &[String], can_write: &dyn Fn(&str) -> bool) -> Option<String> {
    let lacking: Vec<&str> = required
        .iter()
        .filter(|p| !can_write(p.trim_end_matches(":w")))
        .map(String::as_str)
        .collect();
    (!lacking.is_empty()).then(|| lacking.join(", "))
}

/// Creates an action. `can_write(type)` says whether the creator may write
/// devices of that type.
pub fn push(req: PushRequest, can_write: &dyn Fn(&str) -> bool) -> Result<Action, ActionError> {
    if req.method.is_empty()
        || req.method.len() > 64
        || !req
            .method
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(ActionError::Invalid(format!(
            "`{}` is not an action name",
            req.method.chars().take(64).collect::<String>()
        )));
    }
    if req.targets.is_empty() {
        return Err(ActionError::NoTargets);
    }
    let required_perms = required(&req.targets);
    if let Some(missing) = missing(&required_perms, can_write) {
        return Err(ActionError::MissingWrite { missing });
    }
    let mut targets = req.targets;
    targets.sort();
    targets.dedup();
    let mut votes = BTreeMap::new();
    votes.insert(req.creator.clone(), true);
    let req_votes_pos = req.req_votes_pos.max(1);
    let state = if req.automation || req_votes_pos <= 1 {
        State::Ready
    } else {
        State::Voting
    };
    Ok(Action {
        id: req.id,
        batch_uid: req.batch_uid,
        method: req.method,
        params: req.params,
        creator: req.creator,
        targets,
        required_perms,
        votes,
        req_votes_pos,
        req_votes_neg: 1,
        state,
        reason: None,
        created_ms: req.now_ms,
        updated_ms: req.now_ms,
        expires_ms: req.now_ms.saturating_add(req.ttl_ms),
        results: BTreeMap::new(),
    })
}

/// Records a vote.
pub fn vote(
    action: &mut Action,
    voter: &str,
    approve: bool,
    can_write: &dyn Fn(&str) -> bool,
    now_ms: u64,
) -> Result<(), ActionError> {
    if action.state != State::Voting {
        return Err(ActionError::NotVoting {
            state: action.state.as_str(),
        });
    }
    if let Some(missing) = missing(&action.required_perms, can_write) {
        return Err(ActionError::Denied { missing });
    }
    if action.votes.contains_key(voter) {
        return Err(ActionError::VoterExists {
            voter: voter.to_string(),
        });
    }
    action.votes.insert(voter.to_string(), approve);
    action.updated_ms = now_ms;
    let yes = action.votes.values().filter(|v| **v).count() as u32;
    let no = action.votes.values().filter(|v| !**v).count() as u32;
    if no >= action.req_votes_neg {
        action.state = State::Cancelled;
        action.reason = Some(format!("{voter} voted no"));
    } else if yes >= action.req_votes_pos {
        action.state = State::Ready;
    }
    Ok(())
}

/// Cancels a voting or ready action.
pub fn cancel(
    action: &mut Action,
    caller: &str,
    admin: bool,
    now_ms: u64,
) -> Result<(), ActionError> {
    if caller != action.creator && !admin {
        return Err(ActionError::NotCreator {
            creator: action.creator.clone(),
        });
    }
    if !matches!(action.state, State::Voting | State::Ready) {
        return Err(ActionError::NotCancellable {
            state: action.state.as_str(),
        });
    }
    action.state = State::Cancelled;
    action.reason = Some(format!("cancelled by {caller}"));
    action.updated_ms = now_ms;
    Ok(())
}

/// The executor takes a ready action.
pub fn start(action: &mut Action, now_ms: u64) -> Result<(), ActionError> {
    if action.state != State::Ready {
        return Err(ActionError::WrongState {
            state: action.state.as_str(),
            expected: "ready",
        });
    }
    action.state = State::Executing;
    action.updated_ms = now_ms;
    Ok(())
}

/// Records what happened on one target; the action is `done` once every
/// target has a result. A second result for a target is ignored (the
/// sentry executes an action at most once, and may answer twice).
pub fn record_result(
    action: &mut Action,
    target_key: &str,
    result: TargetResult,
) -> Result<bool, ActionError> {
    if action.state != State::Executing {
        return Err(ActionError::WrongState {
            state: action.state.as_str(),
            expected: "executing",
        });
    }
    if !action.targets.iter().any(|t| t.key() == target_key) {
        return Err(ActionError::Invalid(format!(
            "`{target_key}` is not a target of this action"
        )));
    }
    if action.results.contains_key(target_key) {
        return Ok(false);
    }
    action.updated_ms = action.updated_ms.max(result.at_ms);
    action.results.insert(target_key.to_string(), result);
    if action.results.len() == action.targets.len() {
        action.state = State::Done;
    }
    Ok(true)
}

/// Time is up: a voting or ready action is cancelled; an executing one
/// gets an expiry error for every target still without a result. Returns
/// whether anything changed.
pub fn expire(action: &mut Action, now_ms: u64) -> bool {
    if now_ms < action.expires_ms {
        return false;
    }
    match action.state {
        State::Voting | State::Ready => {
            action.state = State::Cancelled;
            action.reason = Some("expired before it was executed".into());
            action.updated_ms = now_ms;
            true
        }
        State::Executing => {
            let pending: Vec<String> = action
                .targets
                .iter()
                .map(Target::key)
                .filter(|k| !action.results.contains_key(k))
                .collect();
            for key in pending {
                action.results.insert(
                    key,
                    TargetResult {
                        ok: false,
                        detail: "expired: the sentry did not answer before the action's deadline"
                            .into(),
                        at_ms: now_ms,
                    },
                );
            }
            action.state = State::Done;
            action.updated_ms = now_ms;
            true
        }
        State::Done | State::Cancelled => false,
    }
}

#[cfg(test)]
mod tests;
