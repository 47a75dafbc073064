//! The audit log: every write through the API (any method but GET/HEAD)
//! is recorded, durably, before its response leaves: who, what, when, from
//! where, and the status it got. `GET /api/v1/audit` reads it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use hashfleet_shared::now_ms;
use serde::{Deserialize, Serialize};
use tracing::error;

use super::auth::Principal;
use super::error::ApiError;
use crate::app::App;
use crate::store::actions::AuditRecord;

pub async fn record(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    if method == Method::GET || method == Method::HEAD {
        return next.run(request).await;
    }
    let path = request.uri().path().to_string();
    let from = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let actor = request
        .extensions()
        .get::<Principal>()
        .map(|p| p.username.clone())
        .unwrap_or_else(|| "-".into());
    let response = next.run(request).await;
    let status = response.status();
    let subject = path.rsplit('/').next().unwrap_or_default().to_string();
    let record = AuditRecord {
        ts_ms: now_ms(),
        actor,
        operation: format!("{method} {path}"),
        subject,
        from,
        status: status.as_u16(),
        outcome: if status.is_success() {
            "ok".into()
        } else {
            "refused".into()
        },
    };
    let store = app.action_store.clone();
    match tokio::task::spawn_blocking(move || store.append_audit(&record)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!("writing the audit log failed: {e}"),
        Err(e) => error!("audit task failed: {e}"),
    }
    response
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct AuditDto {
    pub ts_ms: u64,
    pub actor: String,
    pub operation: String,
    pub subject: String,
    pub from: String,
    pub status: u16,
    pub outcome: String,
}

pub async fn list(
    State(app): State<Arc<App>>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditDto>>, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(ApiError::params("limit must be between 1 and 10000"));
    }
    let records = tokio::task::spawn_blocking(move || app.action_store.audit(limit)).await??;
    Ok(Json(
        records
            .into_iter()
            .map(|r| AuditDto {
                ts_ms: r.ts_ms,
                actor: r.actor,
                operation: r.operation,
                subject: r.subject,
                from: r.from,
                status: r.status,
                outcome: r.outcome,
            })
            .collect(),
    ))
}
