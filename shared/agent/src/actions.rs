//! Approved actions on the sentry: verify, execute at most once, answer
//! with a signed result.
//!
//! - [`Executor`] is what a sentry binary supplies (beside its `Collector`)
//!   to run one method on one of its devices; [`NoActions`] refuses all.
//! - [`Journal`] is the exactly-once record in `home/actions/`: one file per
//!   action id, `<sha256(action_id) hex>.json`, written atomically (0600)
//!   as `started` **before** anything runs and as `done` with the outcome
//!   after. A `started` entry found at open was cut short by a restart: it
//!   becomes `done` with every target "interrupted" and is never retried.
//! - [`ActionHandler::handle`] is the whole flow for one `SignedAction`:
//!   `open_action` against the session's pins; a refusal is answered (and
//!   counted) but never journaled; a journaled id is answered from the
//!   journal (`replayed = true`), also after it expired; a new one is
//!   journaled, executed target by target and answered.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hashfleet_shared::action::{
    distinct_targets, open_action, refusal_result, seal_result, shrink_details, ActionRefusal,
    MAX_LIFETIME_MS,
};
use hashfleet_shared::secure_file::{self, SecureFileError};
use hashfleet_shared::wire::{
    ActionRequest, ActionResultBody, SignedAction, SignedActionResult, TargetOutcome,
};
use hashfleet_shared::{codec, NodeId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Semaphore};
use tracing::{error, info, warn};

use crate::status::StatusHandle;

/// Runs one method on one device of this sentry. Implemented by each
/// sentry binary; [`NoActions`] refuses everything.
pub trait Executor: Send + Sync + 'static {
    /// `Ok` is the result (JSON) for the target; `Err` says, for people,
    /// why it failed. A method the sentry does not support is an `Err`
    /// naming it (for example "sentry-host does not support `pauseMiner`"),
    /// never a silent success.
    fn execute(
        &self,
        method: &str,
        params: &serde_json::Value,
        target: &str,
    ) -> impl Future<Output = Result<serde_json::Value, String>> + Send;
}

/// An executor with no actions: every method fails on every target.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoActions;

impl Executor for NoActions {
    async fn execute(
        &self,
        method: &str,
        _params: &serde_json::Value,
        _target: &str,
    ) -> Result<serde_json::Value, String> {
        Err(format!(
            "this sentry supports no actions yet: `{method}` is not supported"
        ))
    }
}

/// Most entries the journal keeps (oldest expired entries go first).
pub const JOURNAL_MAX_ENTRIES: usize = 10_000;
/// Expired entries older than this are pruned (30 days).
pub const JOURNAL_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// The detail of one target is kept to this many bytes (64 KiB)…
const MAX_DETAIL_BYTES: usize = 64 * 1024;
/// …and all details of one action to about this many (8 MiB).
const MAX_DETAILS_TOTAL: usize = 8 * 1024 * 1024;
/// A journal file larger than this is not ours.
const MAX_ENTRY_BYTES: u64 = 64 * 1024 * 1024;
/// Actions executing at once; more wait their turn.
const CONCURRENT_ACTIONS: usize = 4;

/// The detail of a target whose execution a restart cut short.
pub const INTERRUPTED: &str = "interrupted: the sentry restarted during execution; not retried";

/// Why the journal could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("action journal {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("action journal: {0}")]
    Private(#[from] SecureFileError),
    #[error("action journal {path} holds {count} entries of actions that have not expired (at most {max}): refusing new actions until the oldest expire")]
    Full {
        path: PathBuf,
        count: usize,
        max: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum EntryState {
    Started,
    Done,
}

/// One journal file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EntryFile {
    action_id: String,
    method: String,
    /// The distinct targets, in request order.
    targets: Vec<String>,
    expires_at_ms: u64,
    state: EntryState,
    /// When execution started.
    executed_at_ms: u64,
    /// One per target once `done`.
    #[serde(default)]
    results: Vec<OutcomeFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OutcomeFile {
    target: String,
    ok: bool,
    detail: String,
}

/// What the journal knows about one action id.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// Execution started and has not finished (in this process), or was cut
    /// short (after a restart this becomes `Done` with "interrupted").
    Started,
    /// The outcome, one per distinct target, and when execution started.
    Done {
        results: Vec<TargetOutcome>,
        executed_at_ms: u64,
    },
    /// The entry exists but cannot be read: the action was at least started,
    /// so it is never run again.
    Unreadable(String),
}

#[derive(Debug, Clone)]
struct Meta {
    recorded: Recorded,
    expires_at_ms: u64,
    executed_at_ms: u64,
}

/// The exactly-once record of executed action ids, in `home/actions/`.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    max_entries: usize,
    max_age_ms: u64,
    /// By file stem (`sha256(action_id)` in hex).
    entries: BTreeMap<String, Meta>,
}

fn stem(action_id: &str) -> String {
    hex::encode(Sha256::digest(action_id.as_bytes()))
}

fn to_outcomes(files: &[OutcomeFile]) -> Vec<TargetOutcome> {
    files
        .iter()
        .map(|o| TargetOutcome {
            target: o.target.clone(),
            ok: o.ok,
            detail: o.detail.clone(),
        })
        .collect()
}

fn interrupted(targets: &[String]) -> Vec<OutcomeFile> {
    targets
        .iter()
        .map(|t| OutcomeFile {
            target: t.clone(),
            ok: false,
            detail: INTERRUPTED.into(),
        })
        .collect()
}

impl Journal {
    /// Opens (or creates) the journal under `home`. Entries left `started`
    /// by an earlier process become `done`, every target "interrupted".
    pub fn open(home: &Path, max_entries: usize, max_age: Duration) -> Result<Self, JournalError> {
        let dir = home.join("actions");
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| JournalError::Io { path, source }
        };
        secure_file::ensure_private_dir(&dir).map_err(io_err(&dir))?;
        let mut journal = Journal {
            dir: dir.clone(),
            max_entries: max_entries.max(1),
            max_age_ms: max_age.as_millis() as u64,
            entries: BTreeMap::new(),
        };
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(stem) = name.strip_suffix(".json") else {
                if name.starts_with('.') {
                    // A temp file from an interrupted write.
                    let _ = fs::remove_file(entry.path());
                }
                continue;
            };
            let path = entry.path();
            let bytes = secure_file::read_private(&path, MAX_ENTRY_BYTES)?;
            match serde_json::from_slice::<EntryFile>(&bytes) {
                Ok(mut file) if stem == self::stem(&file.action_id) => {
                    if file.state == EntryState::Started {
                        warn!(action_id = %file.action_id, method = %file.method, "an action was cut short by a restart: reporting it as interrupted, not running it again");
                        file.state = EntryState::Done;
                        file.results = interrupted(&file.targets);
                        journal.write(&file)?;
                    }
                    journal.entries.insert(
                        stem.to_string(),
                        Meta {
                            recorded: Recorded::Done {
                                results: to_outcomes(&file.results),
                                executed_at_ms: file.executed_at_ms,
                            },
                            expires_at_ms: file.expires_at_ms,
                            executed_at_ms: file.executed_at_ms,
                        },
                    );
                }
                other => {
                    let reason = match other {
                        Ok(_) => "its action id does not match its file name".to_string(),
                        Err(e) => e.to_string(),
                    };
                    error!(path = %path.display(), "unreadable action journal entry ({reason}): that action will not run again");
                    // Keep it for as long as any action started then could live.
                    let modified = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(hashfleet_shared::now_ms(), |d| d.as_millis() as u64);
                    journal.entries.insert(
                        stem.to_string(),
                        Meta {
                            recorded: Recorded::Unreadable(format!(
                                "the journal entry {} cannot be read ({reason})",
                                path.display()
                            )),
                            expires_at_ms: modified.saturating_add(MAX_LIFETIME_MS),
                            executed_at_ms: modified,
                        },
                    );
                }
            }
        }
        Ok(journal)
    }

    fn path(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.json"))
    }

    fn write(&self, file: &EntryFile) -> Result<(), JournalError> {
        let path = self.path(&stem(&file.action_id));
        let bytes = serde_json::to_vec(file).map_err(|e| JournalError::Io {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        secure_file::write_atomic(&path, &bytes, 0o600)
            .map_err(|source| JournalError::Io { path, source })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What is recorded for `action_id`, if anything.
    pub fn get(&self, action_id: &str) -> Option<Recorded> {
        self.entries
            .get(&stem(action_id))
            .map(|m| m.recorded.clone())
    }

    /// Records that `request` starts executing now. Call only for an id
    /// with no entry; prunes first, and refuses when the journal is full of
    /// unexpired actions.
    pub fn start(&mut self, request: &ActionRequest, now_ms: u64) -> Result<(), JournalError> {
        // Room for one more.
        self.prune_to(now_ms, self.max_entries - 1)?;
        if self.entries.len() >= self.max_entries {
            return Err(JournalError::Full {
                path: self.dir.clone(),
                count: self.entries.len(),
                max: self.max_entries,
            });
        }
        let file = EntryFile {
            action_id: request.action_id.clone(),
            method: request.method.clone(),
            targets: distinct_targets(&request.targets)
                .into_iter()
                .map(str::to_string)
                .collect(),
            expires_at_ms: request.expires_at_ms,
            state: EntryState::Started,
            executed_at_ms: now_ms,
            results: Vec::new(),
        };
        self.write(&file)?;
        self.entries.insert(
            stem(&request.action_id),
            Meta {
                recorded: Recorded::Started,
                expires_at_ms: request.expires_at_ms,
                executed_at_ms: now_ms,
            },
        );
        Ok(())
    }

    /// Records the outcome of a started action. The entry in memory is
    /// updated even if the write fails (then a restart reports the action
    /// as interrupted, which is still never a second run).
    pub fn finish(
        &mut self,
        request: &ActionRequest,
        results: &[TargetOutcome],
    ) -> Result<(), JournalError> {
        let key = stem(&request.action_id);
        let Some(meta) = self.entries.get_mut(&key) else {
            return Ok(());
        };
        meta.recorded = Recorded::Done {
            results: results.to_vec(),
            executed_at_ms: meta.executed_at_ms,
        };
        let file = EntryFile {
            action_id: request.action_id.clone(),
            method: request.method.clone(),
            targets: results.iter().map(|o| o.target.clone()).collect(),
            expires_at_ms: meta.expires_at_ms,
            state: EntryState::Done,
            executed_at_ms: meta.executed_at_ms,
            results: results
                .iter()
                .map(|o| OutcomeFile {
                    target: o.target.clone(),
                    ok: o.ok,
                    detail: o.detail.clone(),
                })
                .collect(),
        };
        self.write(&file)
    }

    /// Marks a started action whose execution was abandoned (its task was
    /// cancelled) as interrupted; returns the outcome and when it started.
    fn interrupt(&mut self, request: &ActionRequest) -> (Vec<TargetOutcome>, u64) {
        let targets: Vec<String> = distinct_targets(&request.targets)
            .into_iter()
            .map(str::to_string)
            .collect();
        let results = to_outcomes(&interrupted(&targets));
        if let Err(e) = self.finish(request, &results) {
            error!(action_id = %request.action_id, "cannot record an interrupted action: {e}");
        }
        let started = self
            .entries
            .get(&stem(&request.action_id))
            .map_or(0, |m| m.executed_at_ms);
        (results, started)
    }

    /// Drops entries that can never be needed again: only expired ones
    /// (an expired request is refused, so its id cannot run again), first
    /// those executed more than the maximum age ago, then the oldest while
    /// there are more than the bound. Returns how many it dropped.
    pub fn prune(&mut self, now_ms: u64) -> Result<usize, JournalError> {
        self.prune_to(now_ms, self.max_entries)
    }

    fn prune_to(&mut self, now_ms: u64, limit: usize) -> Result<usize, JournalError> {
        let mut expired: Vec<(u64, String)> = self
            .entries
            .iter()
            .filter(|(_, m)| now_ms >= m.expires_at_ms && m.recorded != Recorded::Started)
            .map(|(k, m)| (m.executed_at_ms, k.clone()))
            .collect();
        expired.sort();
        let over = self.entries.len().saturating_sub(limit);
        let mut removed = 0;
        for (i, (executed_at_ms, key)) in expired.into_iter().enumerate() {
            let too_old = now_ms.saturating_sub(executed_at_ms) > self.max_age_ms;
            if !too_old && i >= over {
                break;
            }
            let path = self.path(&key);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(JournalError::Io { path, source }),
            }
            self.entries.remove(&key);
            removed += 1;
        }
        Ok(removed)
    }
}

struct HandlerState {
    journal: Journal,
    /// Actions executing now: the receiver turns true when they finish.
    running: HashMap<String, watch::Receiver<bool>>,
}

/// Verifies, executes at most once and answers actions. Cheap to clone;
/// every clone shares the journal.
pub struct ActionHandler<E> {
    identity: crate::rotation::IdentityCell,
    executor: Arc<E>,
    state: Arc<Mutex<HandlerState>>,
    status: StatusHandle,
    slots: Arc<Semaphore>,
}

impl<E> Clone for ActionHandler<E> {
    fn clone(&self) -> Self {
        ActionHandler {
            identity: self.identity.clone(),
            executor: self.executor.clone(),
            state: self.state.clone(),
            status: self.status.clone(),
            slots: self.slots.clone(),
        }
    }
}

/// What to do with an action after looking it up.
enum Next {
    Answer(Option<SignedActionResult>),
    /// It is running: wait for it, then look again.
    Wait(watch::Receiver<bool>),
    /// It would run: take an execution slot first, then look again.
    NeedSlot,
    /// Journaled as started: run it.
    Execute(watch::Sender<bool>),
}

impl<E: Executor> ActionHandler<E> {
    /// Opens the journal in `home` (reporting actions a restart cut short).
    pub fn open(
        home: &Path,
        identity: impl Into<crate::rotation::IdentityCell>,
        executor: Arc<E>,
        status: StatusHandle,
    ) -> Result<Self, JournalError> {
        let journal = Journal::open(home, JOURNAL_MAX_ENTRIES, JOURNAL_MAX_AGE)?;
        Ok(ActionHandler {
            identity: identity.into(),
            executor,
            state: Arc::new(Mutex::new(HandlerState {
                journal,
                running: HashMap::new(),
            })),
            status,
            slots: Arc::new(Semaphore::new(CONCURRENT_ACTIONS)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HandlerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles one action from a commander whose pinned keys are `pins`,
    /// received at `now_ms` (expiry is checked then, and it is the
    /// result's `executed_at_ms`). Returns the signed result to send: at once for a refusal or a
    /// journaled id, after execution for a new one (and, for a resend of an
    /// action still executing, once it finishes). `None` when there is
    /// nothing to answer (an unreadable payload, logged and counted).
    pub async fn handle(
        &self,
        pins: &[NodeId],
        signed: &SignedAction,
        now_ms: u64,
    ) -> Option<SignedActionResult> {
        let me = self.identity.current().node_id();
        let (request, late) = match open_action(pins, &me, signed, now_ms) {
            Ok(request) => (request, None),
            // Authentic and for this sentry, only too late to start: the
            // stored result of an earlier execution is still owed.
            Err(refusal @ ActionRefusal::Expired { .. }) => {
                match codec::decode::<ActionRequest>(&signed.payload) {
                    Ok(request) => (request, Some(refusal)),
                    Err(_) => return self.refuse(signed, &refusal, now_ms),
                }
            }
            Err(refusal) => return self.refuse(signed, &refusal, now_ms),
        };
        // Journaled only once a slot is free, so an action waiting for one
        // is not reported as interrupted if the sentry stops meanwhile.
        let mut slot = None;
        let done = loop {
            let next = self.next_step(signed, &request, late.as_ref(), now_ms, slot.is_some());
            match next {
                Next::Answer(answer) => return answer,
                Next::Execute(done) => break done,
                Next::NeedSlot => match self.slots.clone().acquire_owned().await {
                    Ok(permit) => slot = Some(permit),
                    // Never closed; nothing sensible to do if it were.
                    Err(_) => return None,
                },
                Next::Wait(mut rx) => {
                    // Finished, or its task is gone: look again.
                    let _ = rx.wait_for(|finished| *finished).await;
                }
            }
        };
        let result = self.execute(&request, now_ms, done).await;
        drop(slot);
        result
    }

    fn next_step(
        &self,
        signed: &SignedAction,
        request: &ActionRequest,
        late: Option<&ActionRefusal>,
        now_ms: u64,
        have_slot: bool,
    ) -> Next {
        let mut state = self.lock();
        let id = &request.action_id;
        match state.journal.get(id) {
            Some(Recorded::Done {
                results,
                executed_at_ms,
            }) => {
                drop(state);
                info!(action_id = %id, "action resent: answering with the stored result");
                Next::Answer(self.seal(ActionResultBody {
                    action_id: id.clone(),
                    node_id: self.identity.current().node_id(),
                    results,
                    executed_at_ms,
                    replayed: true,
                }))
            }
            Some(Recorded::Unreadable(reason)) => {
                drop(state);
                Next::Answer(self.refuse_with(
                    request,
                    &format!("{reason}; the action was at least started before, so it does not run again"),
                    now_ms,
                ))
            }
            Some(Recorded::Started) => {
                let alive = state
                    .running
                    .get(id)
                    .filter(|rx| rx.has_changed().is_ok())
                    .cloned();
                match alive {
                    Some(rx) => Next::Wait(rx),
                    None => {
                        // Its task was cancelled mid-execution.
                        state.running.remove(id);
                        let (results, executed_at_ms) = state.journal.interrupt(request);
                        drop(state);
                        Next::Answer(self.seal(ActionResultBody {
                            action_id: id.clone(),
                            node_id: self.identity.current().node_id(),
                            results,
                            executed_at_ms,
                            replayed: true,
                        }))
                    }
                }
            }
            None => {
                if let Some(refusal) = late {
                    drop(state);
                    return Next::Answer(self.refuse(signed, refusal, now_ms));
                }
                if !have_slot {
                    return Next::NeedSlot;
                }
                if let Err(e) = state.journal.start(request, now_ms) {
                    drop(state);
                    error!(action_id = %id, "cannot journal the action, so it does not run: {e}");
                    return Next::Answer(self.refuse_with(
                        request,
                        &format!("cannot record the action before running it ({e})"),
                        now_ms,
                    ));
                }
                let (tx, rx) = watch::channel(false);
                state.running.insert(id.clone(), rx);
                Next::Execute(tx)
            }
        }
    }

    async fn execute(
        &self,
        request: &ActionRequest,
        now_ms: u64,
        done: watch::Sender<bool>,
    ) -> Option<SignedActionResult> {
        info!(
            action_id = %request.action_id,
            method = %request.method,
            targets = request.targets.len(),
            voters = ?request.voters,
            "executing an approved action"
        );
        // `open_action` checked that params are a JSON array.
        let params =
            serde_json::from_str(&request.params).unwrap_or(serde_json::Value::Array(Vec::new()));
        let targets = distinct_targets(&request.targets);
        let mut body = ActionResultBody {
            action_id: request.action_id.clone(),
            node_id: self.identity.current().node_id(),
            results: Vec::with_capacity(targets.len()),
            executed_at_ms: now_ms,
            replayed: false,
        };
        for target in &targets {
            let outcome = match self
                .executor
                .execute(&request.method, &params, target)
                .await
            {
                Ok(value) => TargetOutcome {
                    target: target.to_string(),
                    ok: true,
                    detail: value.to_string(),
                },
                Err(message) => TargetOutcome {
                    target: target.to_string(),
                    ok: false,
                    detail: message,
                },
            };
            if !outcome.ok {
                warn!(action_id = %request.action_id, target, "action failed: {}", outcome.detail);
            }
            body.results.push(outcome);
        }
        let budget = (MAX_DETAILS_TOTAL / targets.len().max(1)).clamp(64, MAX_DETAIL_BYTES);
        shrink_details(&mut body, budget);
        {
            let mut state = self.lock();
            if let Err(e) = state.journal.finish(request, &body.results) {
                error!(action_id = %request.action_id, "cannot record the action's outcome (a restart will report it as interrupted): {e}");
            }
            state.running.remove(&request.action_id);
        }
        let _ = done.send(true);
        self.status.update(|s| s.actions_executed += 1);
        let ok = body.results.iter().filter(|o| o.ok).count();
        info!(action_id = %request.action_id, ok, failed = body.results.len() - ok, "action executed");
        self.seal(body)
    }

    fn seal(&self, body: ActionResultBody) -> Option<SignedActionResult> {
        match seal_result(&self.identity.current().node, &body) {
            Ok(signed) => Some(signed),
            Err(e) => {
                error!(action_id = %body.action_id, "cannot encode the action result: {e}");
                None
            }
        }
    }

    fn refuse(
        &self,
        signed: &SignedAction,
        refusal: &ActionRefusal,
        now_ms: u64,
    ) -> Option<SignedActionResult> {
        self.status.update(|s| s.actions_refused += 1);
        match refusal_result(&self.identity.current().node_id(), signed, refusal, now_ms) {
            Some(body) => {
                warn!(action_id = %body.action_id, reason = refusal.as_str(), "refused an action: {refusal}");
                self.seal(body)
            }
            None => {
                warn!(
                    reason = refusal.as_str(),
                    "refused an unreadable action, with nothing to answer: {refusal}"
                );
                None
            }
        }
    }

    fn refuse_with(
        &self,
        request: &ActionRequest,
        reason: &str,
        now_ms: u64,
    ) -> Option<SignedActionResult> {
        self.status.update(|s| s.actions_refused += 1);
        warn!(action_id = %request.action_id, "refused an action: {reason}");
        let detail = format!("refused: {reason}");
        self.seal(ActionResultBody {
            action_id: request.action_id.clone(),
            node_id: self.identity.current().node_id(),
            results: distinct_targets(&request.targets)
                .into_iter()
                .map(|target| TargetOutcome {
                    target: target.to_string(),
                    ok: false,
                    detail: detail.clone(),
                })
                .collect(),
            executed_at_ms: now_ms,
            replayed: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hashfleet_shared::NodeKey;

    const NOW: u64 = 1_767_225_600_000;
    const HOUR: u64 = 3_600_000;

    fn request(id: &str, expires_at_ms: u64) -> ActionRequest {
        ActionRequest {
            action_id: id.into(),
            node_id: NodeKey::from_seed(&[1u8; 32]).node_id(),
            method: "runHook".into(),
            params: r#"["x"]"#.into(),
            targets: vec!["host".into(), "gpu-0".into(), "host".into()],
            voters: vec![],
            issued_at_ms: expires_at_ms.saturating_sub(HOUR),
            expires_at_ms,
        }
    }

    fn ok(target: &str) -> TargetOutcome {
        TargetOutcome {
            target: target.into(),
            ok: true,
            detail: "{}".into(),
        }
    }

    #[test]
    fn an_outcome_survives_reopen_and_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let mut j = Journal::open(home.path(), 10, JOURNAL_MAX_AGE).unwrap();
        let req = request("a-1", NOW + HOUR);
        assert_eq!(j.get("a-1"), None);
        j.start(&req, NOW).unwrap();
        assert_eq!(j.get("a-1"), Some(Recorded::Started));
        j.finish(&req, &[ok("host"), ok("gpu-0")]).unwrap();
        drop(j);

        let j = Journal::open(home.path(), 10, JOURNAL_MAX_AGE).unwrap();
        assert_eq!(
            j.get("a-1"),
            Some(Recorded::Done {
                results: vec![ok("host"), ok("gpu-0")],
                executed_at_ms: NOW
            })
        );
        assert_eq!(j.get("a-2"), None);
        let path = home
            .path()
            .join("actions")
            .join(format!("{}.json", stem("a-1")));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(home.path().join("actions"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"action_id\":\"a-1\""), "{text}");
    }

    #[test]
    fn a_started_entry_is_interrupted_after_reopen_and_never_rerun() {
        let home = tempfile::tempdir().unwrap();
        let mut j = Journal::open(home.path(), 10, JOURNAL_MAX_AGE).unwrap();
        j.start(&request("a-1", NOW + HOUR), NOW).unwrap();
        drop(j); // the process dies mid-execution

        let j = Journal::open(home.path(), 10, JOURNAL_MAX_AGE).unwrap();
        let Some(Recorded::Done {
            results,
            executed_at_ms,
        }) = j.get("a-1")
        else {
            panic!("{:?}", j.get("a-1"))
        };
        assert_eq!(executed_at_ms, NOW);
        let targets: Vec<_> = results.iter().map(|o| o.target.as_str()).collect();
        assert_eq!(targets, ["host", "gpu-0"]);
        assert!(results.iter().all(|o| !o.ok && o.detail == INTERRUPTED));
        drop(j);
        // And it stays so.
        let j = Journal::open(home.path(), 10, JOURNAL_MAX_AGE).unwrap();
        assert!(matches!(j.get("a-1"), Some(Recorded::Done { .. })));
    }

    #[test]
    fn pruning_drops_only_expired_entries_oldest_first() {
        let home = tempfile::tempdir().unwrap();
        let mut j = Journal::open(home.path(), 3, Duration::from_secs(24 * 3600)).unwrap();
        // Three actions, executed an hour apart, each expiring an hour later.
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            let at = NOW + i as u64 * HOUR;
            let req = request(id, at + HOUR);
            j.start(&req, at).unwrap();
            j.finish(&req, &[ok("host")]).unwrap();
        }
        // Full, and nothing has expired at NOW + 1.5 h but `a`.
        let d = request("d", NOW + 10 * HOUR);
        j.start(&d, NOW + 3 * HOUR / 2).unwrap();
        assert_eq!(j.get("a"), None, "the oldest expired entry made room");
        assert!(j.get("b").is_some() && j.get("c").is_some());
        // Full of unexpired actions: refused rather than forgetting one.
        let e = request("e", NOW + 10 * HOUR);
        let err = j.start(&e, NOW + 3 * HOUR / 2).unwrap_err();
        assert!(
            matches!(
                err,
                JournalError::Full {
                    count: 3,
                    max: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(j.get("e"), None);
        // A started (unfinished) entry is never pruned, even when expired.
        j.finish(&d, &[ok("host")]).unwrap();
        // At 5 h `b` and `c` have expired: the older one, `b`, makes room.
        let f = request("f", NOW + 6 * HOUR);
        assert!(j.start(&f, NOW + 5 * HOUR).is_ok());
        assert_eq!(j.get("b"), None);
        assert!(j.get("c").is_some() && j.get("d").is_some());
        assert_eq!(j.get("f"), Some(Recorded::Started));
        // Later every finished expired entry is past the maximum age (a
        // day): `c` and `d` go, `f` stays.
        assert_eq!(j.prune(NOW + 40 * HOUR).unwrap(), 2);
        assert_eq!(j.get("f"), Some(Recorded::Started));
        assert_eq!(j.len(), 1);
        drop(j);
        let files = fs::read_dir(home.path().join("actions")).unwrap().count();
        assert_eq!(files, 1);
    }

    #[test]
    fn an_unreadable_entry_blocks_its_id() {
        let home = tempfile::tempdir().unwrap();
        drop(Journal::open(home.path(), 10, JOURNAL_MAX_AGE).unwrap());
        let path = home
            .path()
            .join("actions")
            .join(format!("{}.json", stem("a-1")));
        secure_file::write_atomic(&path, b"{not json", 0o600).unwrap();
        let j = Journal::open(home.path(), 10, JOURNAL_MAX_AGE).unwrap();
        assert!(matches!(j.get("a-1"), Some(Recorded::Unreadable(_))));
    }
}
