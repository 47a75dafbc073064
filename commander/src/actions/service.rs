//! The commander's actions: targets resolved from a device query, the state
//! machine applied under one lock, every change stored before it is
//! answered. The caller (HTTP) says who is acting and what they may write.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use hashfleet_shared::random_bytes;

use super::{
    cancel, push, record_result, start, vote, Action, ActionError, PushRequest, State, Target,
    TargetResult,
};
use crate::fleet::Fleet;
use crate::query::{Projection, Query, QueryError, Sort};
use crate::store::actions::{ActionRecord, ActionResultRecord, ActionStore, ActionTargetRecord};
use crate::store::StoreError;

/// Most targets one action may have.
pub const MAX_TARGETS: usize = 10_000;

/// Who is acting.
pub struct Actor<'a> {
    pub name: &'a str,
    pub admin: bool,
    /// Whether the actor may write devices of a type.
    pub can_write: &'a dyn Fn(&str) -> bool,
}

/// Why an action request failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Action(#[from] ActionError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no action {0}")]
    NotFound(String),
    #[error("the query matches {0} devices; one action may have at most {MAX_TARGETS} targets: narrow the query or use a batch")]
    TooManyTargets(usize),
}

/// What a push names: the new action's id, batch, method and params.
pub struct NewAction<'a> {
    pub id: String,
    pub batch_uid: Option<String>,
    pub method: &'a str,
    pub params: &'a serde_json::Value,
}

/// Vote thresholds and automation, from `[actions]`.
#[derive(Debug, Clone, Default)]
pub struct ActionPolicy {
    /// Yes votes per action name; 1 when absent.
    pub votes: BTreeMap<String, u32>,
    /// Action names approved without votes.
    pub automation: HashSet<String>,
    pub ttl_ms: u64,
}

pub struct ActionService {
    store: Arc<dyn ActionStore>,
    fleet: Arc<Fleet>,
    policy: ActionPolicy,
    /// Changes to actions happen one at a time.
    lock: Mutex<()>,
}

pub fn new_action_id() -> String {
    hex::encode(random_bytes::<8>())
}

impl ActionService {
    pub fn new(store: Arc<dyn ActionStore>, fleet: Arc<Fleet>, policy: ActionPolicy) -> Self {
        ActionService {
            store,
            fleet,
            policy,
            lock: Mutex::new(()),
        }
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The devices a query selects, as targets. Blocking.
    pub fn resolve(
        &self,
        query: &serde_json::Value,
        now_ms: u64,
    ) -> Result<Vec<Target>, ServiceError> {
        let query = if query.is_null() {
            Query::default()
        } else {
            Query::parse(query)?
        };
        let projection =
            Projection::parse(&serde_json::json!({"id": 1, "type": 1, "sentry_id": 1}))?;
        let (total, docs) = self.fleet.query(
            &query,
            &Sort::default(),
            &projection,
            0,
            MAX_TARGETS + 1,
            now_ms,
        );
        if total > MAX_TARGETS {
            return Err(ServiceError::TooManyTargets(total));
        }
        Ok(docs
            .iter()
            .filter_map(|d| {
                Some(Target {
                    sentry_id: u64::from_str_radix(d["sentry_id"].as_str()?, 16).ok()?,
                    device_id: d["id"].as_str()?.to_string(),
                    device_type: d["type"].as_str()?.to_string(),
                })
            })
            .collect())
    }

    /// Creates an action. Blocking.
    pub fn push(
        &self,
        actor: &Actor<'_>,
        new: NewAction<'_>,
        targets: Vec<Target>,
        now_ms: u64,
    ) -> Result<Action, ServiceError> {
        let NewAction {
            id,
            batch_uid,
            method,
            params,
        } = new;
        if !params.is_array() {
            return Err(ActionError::Invalid(
                "params must be a JSON array, e.g. [\"NAME\"]".into(),
            )
            .into());
        }
        let params = params.to_string();
        if params.len() > 64 * 1024 {
            return Err(ActionError::Invalid("params are larger than 64 KiB".into()).into());
        }
        let action = push(
            PushRequest {
                id,
                batch_uid,
                method: method.to_string(),
                params,
                creator: actor.name.to_string(),
                targets,
                req_votes_pos: self.policy.votes.get(method).copied().unwrap_or(1),
                automation: self.policy.automation.contains(method),
                now_ms,
                ttl_ms: self.policy.ttl_ms,
            },
            actor.can_write,
        )?;
        let _g = self.guard();
        if self.store.action(&action.id)?.is_some() {
            return Err(ActionError::Invalid(format!(
                "an action with id {} exists already",
                action.id
            ))
            .into());
        }
        self.store.put_action(&to_record(&action))?;
        Ok(action)
    }

    pub fn get(&self, id: &str) -> Result<Action, ServiceError> {
        self.store
            .action(id)?
            .map(|r| from_record(&r))
            .ok_or_else(|| ServiceError::NotFound(id.chars().take(64).collect()))
    }

    fn update(
        &self,
        id: &str,
        f: impl FnOnce(&mut Action) -> Result<(), ActionError>,
    ) -> Result<Action, ServiceError> {
        let _g = self.guard();
        let mut action = self.get(id)?;
        f(&mut action)?;
        self.store.put_action(&to_record(&action))?;
        Ok(action)
    }

    pub fn vote(
        &self,
        actor: &Actor<'_>,
        id: &str,
        approve: bool,
        now_ms: u64,
    ) -> Result<Action, ServiceError> {
        self.update(id, |a| {
            vote(a, actor.name, approve, actor.can_write, now_ms)
        })
    }

    pub fn cancel(&self, actor: &Actor<'_>, id: &str, now_ms: u64) -> Result<Action, ServiceError> {
        self.update(id, |a| cancel(a, actor.name, actor.admin, now_ms))
    }

    /// Ready → executing (the executor takes it).
    pub fn start(&self, id: &str, now_ms: u64) -> Result<Action, ServiceError> {
        self.update(id, |a| start(a, now_ms))
    }

    /// A target's outcome; the action is done with its last target.
    pub fn result(
        &self,
        id: &str,
        target_key: &str,
        result: TargetResult,
    ) -> Result<Action, ServiceError> {
        self.update(id, |a| record_result(a, target_key, result).map(|_| ()))
    }

    /// Time is up for whatever is still waiting; returns the changed ones.
    pub fn expire_due(&self, now_ms: u64) -> Result<Vec<Action>, ServiceError> {
        let _g = self.guard();
        let mut changed = Vec::new();
        for r in self.store.open_actions()? {
            let mut a = from_record(&r);
            if super::expire(&mut a, now_ms) {
                self.store.put_action(&to_record(&a))?;
                changed.push(a);
            }
        }
        Ok(changed)
    }

    /// Every action not done or cancelled.
    pub fn open(&self) -> Result<Vec<Action>, ServiceError> {
        Ok(self.store.open_actions()?.iter().map(from_record).collect())
    }

    /// Actions in a time range, optionally in one state.
    pub fn query(
        &self,
        state: Option<State>,
        gte_ms: u64,
        lte_ms: u64,
        limit: usize,
    ) -> Result<Vec<Action>, ServiceError> {
        let mut out = Vec::new();
        // Read past filtered-out ones, but never more than 100 000.
        for r in self.store.actions_between(gte_ms, lte_ms, 100_000)? {
            let a = from_record(&r);
            if state.is_none_or(|s| s == a.state) {
                out.push(a);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

pub fn to_record(a: &Action) -> ActionRecord {
    ActionRecord {
        id: a.id.clone(),
        batch_uid: a.batch_uid.clone(),
        method: a.method.clone(),
        params: a.params.clone(),
        creator: a.creator.clone(),
        targets: a
            .targets
            .iter()
            .map(|t| ActionTargetRecord {
                sentry_id: t.sentry_id,
                device_id: t.device_id.clone(),
                device_type: t.device_type.clone(),
            })
            .collect(),
        required_perms: a.required_perms.clone(),
        votes: a.votes.clone(),
        req_votes_pos: a.req_votes_pos,
        req_votes_neg: a.req_votes_neg,
        state: a.state.as_str().to_string(),
        reason: a.reason.clone(),
        created_ms: a.created_ms,
        updated_ms: a.updated_ms,
        expires_ms: a.expires_ms,
        results: a
            .results
            .iter()
            .map(|(k, r)| {
                (
                    k.clone(),
                    ActionResultRecord {
                        ok: r.ok,
                        detail: r.detail.clone(),
                        at_ms: r.at_ms,
                    },
                )
            })
            .collect(),
    }
}

pub fn from_record(r: &ActionRecord) -> Action {
    Action {
        id: r.id.clone(),
        batch_uid: r.batch_uid.clone(),
        method: r.method.clone(),
        params: r.params.clone(),
        creator: r.creator.clone(),
        targets: r
            .targets
            .iter()
            .map(|t| Target {
                sentry_id: t.sentry_id,
                device_id: t.device_id.clone(),
                device_type: t.device_type.clone(),
            })
            .collect(),
        required_perms: r.required_perms.clone(),
        votes: r.votes.clone(),
        req_votes_pos: r.req_votes_pos,
        req_votes_neg: r.req_votes_neg,
        // An unknown state from a newer release is treated as cancelled.
        state: State::parse(&r.state).unwrap_or(State::Cancelled),
        reason: r.reason.clone(),
        created_ms: r.created_ms,
        updated_ms: r.updated_ms,
        expires_ms: r.expires_ms,
        results: r
            .results
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    TargetResult {
                        ok: v.ok,
                        detail: v.detail.clone(),
                        at_ms: v.at_ms,
                    },
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::FleetConfig;
    use crate::store::{DeviceRecord, HeartbeatRecord, SledStore};

    fn setup() -> (tempfile::TempDir, ActionService) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let fleet = Arc::new(
            Fleet::load(
                store.as_ref(),
                FleetConfig::new(vec![0], vec![], Default::default()),
            )
            .unwrap(),
        );
        let device = |id: &str, kind: &str| DeviceRecord {
            id: id.into(),
            kind: kind.into(),
            make: "x".into(),
            model: "y".into(),
            firmware: String::new(),
            metrics: Default::default(),
            labels: Default::default(),
            alerts: vec![],
            raw: String::new(),
        };
        let hb = HeartbeatRecord {
            seq: 1,
            ts_ms: 1,
            received_ms: 1,
            devices: vec![device("h1", "host"), device("m1", "miner")],
        };
        fleet.apply(store.as_ref(), 5, &hb).unwrap();
        let policy = ActionPolicy {
            votes: [("reboot".to_string(), 2)].into(),
            automation: ["autoSleep".to_string()].into(),
            ttl_ms: 60_000,
        };
        (dir, ActionService::new(store, fleet, policy))
    }

    #[test]
    fn push_resolves_targets_and_applies_thresholds_durably() {
        let (_dir, svc) = setup();
        let all = |_: &str| true;
        let alice = Actor {
            name: "alice",
            admin: false,
            can_write: &all,
        };
        let targets = svc
            .resolve(&serde_json::json!({"type": "host"}), 1)
            .unwrap();
        assert_eq!(
            targets,
            vec![Target {
                sentry_id: 5,
                device_id: "h1".into(),
                device_type: "host".into()
            }]
        );
        let a = svc
            .push(
                &alice,
                NewAction {
                    id: "a1".into(),
                    batch_uid: None,
                    method: "runHook",
                    params: &serde_json::json!(["x"]),
                },
                targets.clone(),
                1,
            )
            .unwrap();
        assert_eq!(a.state, State::Ready);
        let b = svc
            .push(
                &alice,
                NewAction {
                    id: "a2".into(),
                    batch_uid: None,
                    method: "reboot",
                    params: &serde_json::json!([]),
                },
                targets.clone(),
                1,
            )
            .unwrap();
        assert_eq!(b.state, State::Voting);
        let bob = Actor {
            name: "bob",
            admin: false,
            can_write: &all,
        };
        assert_eq!(svc.vote(&bob, "a2", true, 2).unwrap().state, State::Ready);
        assert_eq!(svc.get("a2").unwrap().votes.len(), 2, "stored");
        assert!(matches!(
            svc.vote(&bob, "a2", true, 3),
            Err(ServiceError::Action(ActionError::NotVoting { .. }))
        ));
        assert!(matches!(
            svc.push(
                &alice,
                NewAction {
                    id: "a1".into(),
                    batch_uid: None,
                    method: "runHook",
                    params: &serde_json::json!(["x"])
                },
                targets.clone(),
                1
            ),
            Err(ServiceError::Action(ActionError::Invalid(_)))
        ));
        assert!(matches!(
            svc.push(
                &alice,
                NewAction {
                    id: "a3".into(),
                    batch_uid: None,
                    method: "runHook",
                    params: &serde_json::json!("x")
                },
                targets.clone(),
                1
            ),
            Err(ServiceError::Action(ActionError::Invalid(_)))
        ));
        assert_eq!(
            svc.push(
                &alice,
                NewAction {
                    id: "a4".into(),
                    batch_uid: None,
                    method: "autoSleep",
                    params: &serde_json::json!([])
                },
                targets,
                1
            )
            .unwrap()
            .state,
            State::Ready
        );
        assert!(svc
            .resolve(&serde_json::json!({"type": "gpu"}), 1)
            .unwrap()
            .is_empty());
        assert_eq!(svc.query(Some(State::Ready), 0, 10, 10).unwrap().len(), 3);
    }

    #[test]
    fn execution_results_and_expiry_persist() {
        let (_dir, svc) = setup();
        let all = |_: &str| true;
        let alice = Actor {
            name: "alice",
            admin: false,
            can_write: &all,
        };
        let targets = svc.resolve(&serde_json::json!({}), 1).unwrap();
        assert_eq!(targets.len(), 2);
        svc.push(
            &alice,
            NewAction {
                id: "a1".into(),
                batch_uid: None,
                method: "runHook",
                params: &serde_json::json!(["x"]),
            },
            targets.clone(),
            1,
        )
        .unwrap();
        svc.start("a1", 2).unwrap();
        let key = targets[0].key();
        svc.result(
            "a1",
            &key,
            TargetResult {
                ok: true,
                detail: "{}".into(),
                at_ms: 3,
            },
        )
        .unwrap();
        assert_eq!(svc.get("a1").unwrap().state, State::Executing);
        assert_eq!(svc.open().unwrap().len(), 1);
        let changed = svc.expire_due(60_001).unwrap();
        assert_eq!(changed.len(), 1);
        let done = svc.get("a1").unwrap();
        assert_eq!(done.state, State::Done);
        assert!(done.results[&key].ok);
        assert!(svc.open().unwrap().is_empty());
    }
}
