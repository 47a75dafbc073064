//! `/api/v1/sentries…`: list, get, approve, revoke, heartbeats.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::Json;
use hashfleet_shared::{now_ms, NodeId};
use serde::Deserialize;
use tracing::info;

use super::dto::{HeartbeatDto, SentryDto};
use super::error::ApiError;
use crate::app::App;
use crate::sessions::{close, Control};
use crate::store::{SentryRecord, SentryState};

const DEFAULT_LIST_LIMIT: usize = 1000;
const MAX_LIST_LIMIT: usize = 10_000;
const DEFAULT_HEARTBEATS: usize = 100;
const MAX_HEARTBEATS: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    offset: Option<usize>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    limit: Option<usize>,
}

fn parse_id(text: &str) -> Result<u64, ApiError> {
    u64::from_str_radix(text, 16)
        .ok()
        .filter(|_| text.len() == 16)
        .ok_or_else(|| {
            ApiError::params(format!(
                "`{}` is not a sentry id (16 hex digits, as GET /api/v1/sentries lists)",
                text.chars().take(40).collect::<String>()
            ))
        })
}

fn dto(app: &App, record: &SentryRecord) -> Result<SentryDto, ApiError> {
    let progress = app.store.progress(record.sentry_id)?;
    let connected = app
        .sessions
        .is_connected(&NodeId::from_public_key(record.node_key));
    Ok(SentryDto::new(record, &progress, connected))
}

fn load(app: &App, id: u64) -> Result<SentryRecord, ApiError> {
    app.store
        .sentry(id)?
        .ok_or_else(|| ApiError::not_found(format!("no sentry {id:016x} on this commander")))
}

pub async fn list(
    State(app): State<Arc<App>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<(HeaderMap, Json<Vec<SentryDto>>), ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(ApiError::params(format!(
            "limit must be between 1 and {MAX_LIST_LIMIT}"
        )));
    }
    let offset = q.offset.unwrap_or(0);
    let app2 = app.clone();
    let (total, dtos) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let records = app2.store.sentries(offset, limit)?;
        let dtos = records
            .iter()
            .map(|r| dto(&app2, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((app2.store.sentry_count()?, dtos))
    })
    .await??;
    let mut headers = HeaderMap::new();
    headers.insert("x-total-count", HeaderValue::from(total as u64));
    Ok((headers, Json(dtos)))
}

pub async fn get_one(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<SentryDto>, ApiError> {
    let id = parse_id(&id)?;
    tokio::task::spawn_blocking(move || dto(&app, &load(&app, id)?).map(Json)).await?
}

pub async fn approve(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<SentryDto>, ApiError> {
    let id = parse_id(&id)?;
    tokio::task::spawn_blocking(move || {
        let mut record = load(&app, id)?;
        match record.state {
            SentryState::Revoked => {
                return Err(ApiError::new(
                    axum::http::StatusCode::CONFLICT,
                    "ERR_SENTRY_REVOKED",
                    "a revoked sentry cannot be approved: it must re-enroll with a new identity",
                ))
            }
            SentryState::Approved => {}
            SentryState::Pending => {
                record.state = SentryState::Approved;
                record.state_changed_ms = now_ms();
                app.store.put_sentry(&record)?;
                info!(sentry_id = format!("{id:016x}"), "sentry approved");
            }
        }
        app.sessions
            .tell(&NodeId::from_public_key(record.node_key), Control::Approved);
        dto(&app, &record).map(Json)
    })
    .await?
}

pub async fn revoke(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<SentryDto>, ApiError> {
    let id = parse_id(&id)?;
    tokio::task::spawn_blocking(move || {
        let mut record = load(&app, id)?;
        if record.state != SentryState::Revoked {
            record.state = SentryState::Revoked;
            record.state_changed_ms = now_ms();
            app.store.put_sentry(&record)?;
            info!(sentry_id = format!("{id:016x}"), "sentry revoked");
        }
        for key in std::iter::once(record.node_key).chain(record.previous_node_keys.iter().copied())
        {
            let node = NodeId::from_public_key(key);
            app.revoked.insert(node);
            if !app.sessions.tell(&node, Control::Revoked) {
                app.sessions.close(
                    &node,
                    close::REVOKED,
                    "this sentry was revoked by an operator",
                );
            }
        }
        dto(&app, &record).map(Json)
    })
    .await?
}

/// Marks a sentry to rotate its node key at its next contact (at once when
/// it is connected). A revoked sentry cannot rotate.
pub async fn rotate(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<SentryDto>, ApiError> {
    let id = parse_id(&id)?;
    tokio::task::spawn_blocking(move || {
        let mut record = load(&app, id)?;
        if record.state == SentryState::Revoked {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "ERR_SENTRY_REVOKED",
                "a revoked sentry cannot rotate: revocation is final; it re-enrolls with a new identity and token",
            ));
        }
        if record.rotate_requested_ms.is_none() {
            record.rotate_requested_ms = Some(now_ms());
            app.store.put_sentry(&record)?;
        }
        let told = app
            .sessions
            .tell(&NodeId::from_public_key(record.node_key), Control::Rotate);
        info!(sentry_id = format!("{id:016x}"), connected = told, "node key rotation requested");
        dto(&app, &record).map(Json)
    })
    .await?
}

pub async fn heartbeats(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    query: Result<Query<LimitQuery>, QueryRejection>,
) -> Result<Json<Vec<HeartbeatDto>>, ApiError> {
    let id = parse_id(&id)?;
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(DEFAULT_HEARTBEATS);
    if limit == 0 || limit > MAX_HEARTBEATS {
        return Err(ApiError::params(format!(
            "limit must be between 1 and {MAX_HEARTBEATS}"
        )));
    }
    tokio::task::spawn_blocking(move || {
        load(&app, id)?;
        let records = app.store.recent_heartbeats(id, limit)?;
        Ok(Json(records.into_iter().map(HeartbeatDto::new).collect()))
    })
    .await?
}
