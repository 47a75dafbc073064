//! The action executor: takes ready actions, sends each target sentry its
//! signed request, and lets results (recorded by the sessions) finish them.
//!
//! A request goes to a sentry over its live session; a sentry that is
//! offline gets it when it reconnects, until the action expires (then its
//! targets fail with an expiry error). A request is sent at most once per
//! session, and again on a new session: the sentry executes an action id at
//! most once and answers a resend with its stored result, so a restart of
//! either side neither loses nor repeats an execution.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use hashfleet_shared::action::seal_action;
use hashfleet_shared::wire::ActionRequest;
use hashfleet_shared::{now_ms, NodeId};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::{Action, State};
use crate::app::App;
use crate::sessions::Control;

/// How often the executor looks again without being woken.
const TICK: Duration = Duration::from_secs(1);

/// Runs until `stop`.
pub async fn run(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    // (action id, sentry id) → the session registration it was sent on.
    let mut sent: HashMap<(String, u64), u64> = HashMap::new();
    loop {
        tokio::select! {
            _ = app.action_wakeup.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
            _ = hashfleet_agent::runtime::until_stopped(&mut stop) => return,
        }
        let app2 = app.clone();
        let round = tokio::task::spawn_blocking(move || collect(&app2)).await;
        let work = match round {
            Ok(Ok(work)) => work,
            Ok(Err(e)) => {
                error!("action executor: {e}");
                continue;
            }
            Err(e) => {
                error!("action executor task failed: {e}");
                continue;
            }
        };
        sent.retain(|(id, _), _| work.iter().any(|w| &w.action.id == id));
        let mut in_flight = 0usize;
        for item in work {
            for (sentry_id, targets) in &item.by_sentry {
                if in_flight >= app.config.actions.parallel {
                    break;
                }
                let Some(node) = item.nodes.get(sentry_id) else {
                    continue;
                };
                let Some(registration) = app.sessions.registration(node) else {
                    continue; // offline: sent when it reconnects
                };
                let key = (item.action.id.clone(), *sentry_id);
                if sent.get(&key) == Some(&registration) {
                    in_flight += 1;
                    continue; // waiting for its answer on this session
                }
                let request = ActionRequest {
                    action_id: item.action.id.clone(),
                    node_id: *node,
                    method: item.action.method.clone(),
                    params: item.action.params.clone(),
                    targets: targets.clone(),
                    voters: item
                        .action
                        .votes
                        .iter()
                        .filter(|(_, yes)| **yes)
                        .map(|(v, _)| v.clone())
                        .collect(),
                    issued_at_ms: now_ms(),
                    expires_at_ms: item.action.expires_ms,
                };
                let signed = match seal_action(&app.identity.current().node, &request) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(action = %item.action.id, "cannot seal the request: {e}");
                        continue;
                    }
                };
                if app.sessions.tell(node, Control::Action(Box::new(signed))) {
                    debug!(action = %item.action.id, sentry = format!("{sentry_id:016x}"), "action sent");
                    sent.insert(key, registration);
                    in_flight += 1;
                }
            }
        }
    }
}

/// An executing action and where its unanswered targets are.
struct Work {
    action: Action,
    /// Sentry → device ids still without a result.
    by_sentry: BTreeMap<u64, Vec<String>>,
    nodes: HashMap<u64, NodeId>,
}

/// Expires what is due, starts what is ready, and lists what is executing.
fn collect(app: &App) -> Result<Vec<Work>, crate::actions::service::ServiceError> {
    let now = now_ms();
    for a in app.actions.expire_due(now)? {
        info!(action = %a.id, state = a.state.as_str(), "action expired");
    }
    let mut work = Vec::new();
    for mut action in app.actions.open()? {
        if action.state == State::Ready {
            action = app.actions.start(&action.id, now)?;
            info!(action = %action.id, method = %action.method, targets = action.targets.len(), "executing action");
        }
        if action.state != State::Executing {
            continue;
        }
        let mut by_sentry: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for t in &action.targets {
            if !action.results.contains_key(&t.key()) {
                by_sentry
                    .entry(t.sentry_id)
                    .or_default()
                    .push(t.device_id.clone());
            }
        }
        let mut nodes = HashMap::new();
        for sentry_id in by_sentry.keys() {
            if let Some(r) = app.store.sentry(*sentry_id)? {
                nodes.insert(*sentry_id, NodeId::from_public_key(r.node_key));
            }
        }
        work.push(Work {
            action,
            by_sentry,
            nodes,
        });
    }
    Ok(work)
}
