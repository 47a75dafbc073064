//! `/api/v1/actions…`: push, batch, vote, cancel, get, query. The voter is
//! always the authenticated principal, never a field of the body.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use hashfleet_shared::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::Principal;
use super::error::ApiError;
use crate::actions::service::{new_action_id, Actor, NewAction, ServiceError};
use crate::actions::{Action, ActionError, State as ActionState};
use crate::app::App;
use crate::permissions::Level;

const MAX_BATCH: usize = 1_000;

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Action(a) => {
                let status = match &a {
                    ActionError::NoTargets | ActionError::Invalid(_) => StatusCode::BAD_REQUEST,
                    ActionError::MissingWrite { .. }
                    | ActionError::Denied { .. }
                    | ActionError::NotCreator { .. } => StatusCode::FORBIDDEN,
                    ActionError::VoterExists { .. }
                    | ActionError::NotVoting { .. }
                    | ActionError::NotCancellable { .. }
                    | ActionError::WrongState { .. } => StatusCode::CONFLICT,
                };
                ApiError::new(status, a.code(), a.to_string())
            }
            ServiceError::Query(q) => q.into(),
            ServiceError::Store(s) => s.into(),
            ServiceError::NotFound(id) => ApiError::new(
                StatusCode::NOT_FOUND,
                "ERR_NOT_FOUND",
                format!("no action {id}"),
            ),
            e @ ServiceError::TooManyTargets(_) => ApiError::params(e.to_string()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TargetDto {
    pub sentry_id: String,
    pub device_id: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Serialize)]
pub struct ResultDto {
    pub ok: bool,
    /// The target's result (JSON) when ok, the error text otherwise.
    pub detail: Value,
    pub at_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct ActionDto {
    pub id: String,
    pub batch_uid: Option<String>,
    pub action: String,
    pub params: Value,
    pub state: &'static str,
    pub reason: Option<String>,
    pub creator: String,
    pub targets: Vec<TargetDto>,
    pub required_perms: Vec<String>,
    pub votes: BTreeMap<String, bool>,
    pub req_votes_pos: u32,
    pub req_votes_neg: u32,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub expires_ms: u64,
    pub results: BTreeMap<String, ResultDto>,
}

impl ActionDto {
    pub fn new(a: &Action) -> Self {
        ActionDto {
            id: a.id.clone(),
            batch_uid: a.batch_uid.clone(),
            action: a.method.clone(),
            params: serde_json::from_str(&a.params).unwrap_or(Value::Null),
            state: a.state.as_str(),
            reason: a.reason.clone(),
            creator: a.creator.clone(),
            targets: a
                .targets
                .iter()
                .map(|t| TargetDto {
                    sentry_id: format!("{:016x}", t.sentry_id),
                    device_id: t.device_id.clone(),
                    kind: t.device_type.clone(),
                })
                .collect(),
            required_perms: a.required_perms.clone(),
            votes: a.votes.clone(),
            req_votes_pos: a.req_votes_pos,
            req_votes_neg: a.req_votes_neg,
            created_ms: a.created_ms,
            updated_ms: a.updated_ms,
            expires_ms: a.expires_ms,
            results: a
                .results
                .iter()
                .map(|(k, r)| {
                    let detail = if r.ok {
                        serde_json::from_str(&r.detail)
                            .unwrap_or_else(|_| Value::String(r.detail.clone()))
                    } else {
                        Value::String(r.detail.clone())
                    };
                    (
                        k.clone(),
                        ResultDto {
                            ok: r.ok,
                            detail,
                            at_ms: r.at_ms,
                        },
                    )
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushBody {
    #[serde(default)]
    query: Value,
    action: String,
    #[serde(default = "empty_params")]
    params: Value,
}

fn empty_params() -> Value {
    Value::Array(Vec::new())
}

fn push_one(
    app: &App,
    p: &Principal,
    body: &PushBody,
    id: String,
    batch_uid: Option<String>,
) -> Result<Action, ApiError> {
    let can_write = |t: &str| p.can(t, Level::Write);
    let actor = Actor {
        name: &p.username,
        admin: p.admin,
        can_write: &can_write,
    };
    let now = now_ms();
    let targets = app.actions.resolve(&body.query, now)?;
    let new = NewAction {
        id,
        batch_uid,
        method: &body.action,
        params: &body.params,
    };
    Ok(app.actions.push(&actor, new, targets, now)?)
}

pub async fn push(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    body: Result<Json<PushBody>, JsonRejection>,
) -> Result<(StatusCode, Json<ActionDto>), ApiError> {
    let Json(body) = body?;
    let app2 = app.clone();
    let action = tokio::task::spawn_blocking(move || {
        push_one(&app2, &principal, &body, new_action_id(), None)
    })
    .await??;
    app.action_wakeup.notify_one();
    Ok((StatusCode::CREATED, Json(ActionDto::new(&action))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    actions: Vec<PushBody>,
    batch_uid: String,
}

/// One item of a batch: the action, or why it was not created.
#[derive(Debug, Serialize)]
pub struct BatchItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<ActionDto>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
}

pub async fn batch(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    body: Result<Json<BatchBody>, JsonRejection>,
) -> Result<Json<Vec<BatchItem>>, ApiError> {
    let Json(body) = body?;
    let uid = body.batch_uid.trim().to_string();
    if uid.is_empty()
        || uid.len() > 64
        || !uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::params(
            "batch_uid must be 1 to 64 letters, digits, - or _",
        ));
    }
    if body.actions.is_empty() || body.actions.len() > MAX_BATCH {
        return Err(ApiError::params(format!(
            "a batch holds 1 to {MAX_BATCH} actions"
        )));
    }
    let app2 = app.clone();
    let items = tokio::task::spawn_blocking(move || {
        let ts = now_ms();
        body.actions
            .iter()
            .enumerate()
            .map(|(i, item)| {
                match push_one(
                    &app2,
                    &principal,
                    item,
                    format!("{ts}-{uid}-{i}"),
                    Some(uid.clone()),
                ) {
                    Ok(a) => BatchItem {
                        action: Some(ActionDto::new(&a)),
                        error: None,
                    },
                    Err(e) => BatchItem {
                        action: None,
                        error: Some(serde_json::json!({"code": e.code, "message": e.message})),
                    },
                }
            })
            .collect::<Vec<_>>()
    })
    .await?;
    app.action_wakeup.notify_one();
    Ok(Json(items))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteBody {
    approve: bool,
}

pub async fn vote(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Json<VoteBody>, JsonRejection>,
) -> Result<Json<ActionDto>, ApiError> {
    let Json(body) = body?;
    let app2 = app.clone();
    let action = tokio::task::spawn_blocking(move || {
        let can_write = |t: &str| principal.can(t, Level::Write);
        let actor = Actor {
            name: &principal.username,
            admin: principal.admin,
            can_write: &can_write,
        };
        app2.actions.vote(&actor, &id, body.approve, now_ms())
    })
    .await??;
    if action.state == ActionState::Ready {
        app.action_wakeup.notify_one();
    }
    Ok(Json(ActionDto::new(&action)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    ids: Vec<String>,
}

pub async fn cancel(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    body: Result<Json<CancelBody>, JsonRejection>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let Json(body) = body?;
    if body.ids.is_empty() || body.ids.len() > MAX_BATCH {
        return Err(ApiError::params(format!(
            "ids must hold 1 to {MAX_BATCH} action ids"
        )));
    }
    let out = tokio::task::spawn_blocking(move || {
        let can_write = |t: &str| principal.can(t, Level::Write);
        let actor = Actor {
            name: &principal.username,
            admin: principal.admin,
            can_write: &can_write,
        };
        body.ids
            .iter()
            .map(|id| match app.actions.cancel(&actor, id, now_ms()) {
                Ok(a) => serde_json::json!({"id": a.id, "state": a.state.as_str()}),
                Err(e) => {
                    let e = ApiError::from(e);
                    serde_json::json!({"id": id, "error": {"code": e.code, "message": e.message}})
                }
            })
            .collect::<Vec<_>>()
    })
    .await?;
    Ok(Json(out))
}

pub async fn get_one(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<ActionDto>, ApiError> {
    let action = tokio::task::spawn_blocking(move || app.actions.get(&id)).await??;
    Ok(Json(ActionDto::new(&action)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    state: Option<String>,
    gte: Option<u64>,
    lte: Option<u64>,
    #[serde(default)]
    group_batch: bool,
    limit: Option<usize>,
}

pub async fn query(
    State(app): State<Arc<App>>,
    body: Result<Json<QueryBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(q) = body?;
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(ActionState::parse(s).ok_or_else(|| {
            ApiError::params(format!(
                "state `{s}` is not voting, ready, executing, done or cancelled"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(ApiError::params("limit must be between 1 and 10000"));
    }
    let actions = tokio::task::spawn_blocking(move || {
        app.actions.query(
            state,
            q.gte.unwrap_or(0),
            q.lte.unwrap_or(u64::MAX - 1),
            limit,
        )
    })
    .await??;
    let dtos: Vec<ActionDto> = actions.iter().map(ActionDto::new).collect();
    if q.group_batch {
        let mut groups: BTreeMap<String, Vec<ActionDto>> = BTreeMap::new();
        for d in dtos {
            groups
                .entry(d.batch_uid.clone().unwrap_or_default())
                .or_default()
                .push(d);
        }
        Ok(Json(serde_json::to_value(groups).unwrap_or(Value::Null)))
    } else {
        Ok(Json(serde_json::to_value(dtos).unwrap_or(Value::Null)))
    }
}
