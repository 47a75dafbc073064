//! The HTTP API (v1, JSON, bearer tokens) and `/metrics`.
//!
//! `/healthz` and `/readyz` are open; everything under `/api/v1` and
//! `/metrics` needs `Authorization: Bearer TOKEN`. Handlers speak DTOs
//! ([`dto`]) and convert from store records; they never serialize records.

mod aggregates;
mod auth;
mod backup;
mod csv;
mod devices;
pub mod dto;
mod error;
mod sentries;
mod tokens;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::watch;
use tracing::error;

use crate::app::App;

pub use error::ApiError;

/// Request bodies are small JSON documents.
const BODY_LIMIT: usize = 64 * 1024;

pub fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/enrollment-tokens", post(tokens::create))
        .route("/sentries", get(sentries::list))
        .route("/sentries/{id}", get(sentries::get_one))
        .route("/sentries/{id}/approve", post(sentries::approve))
        .route("/sentries/{id}/revoke", post(sentries::revoke))
        .route("/sentries/{id}/heartbeats", get(sentries::heartbeats))
        .route("/devices/query", post(devices::query))
        .route("/devices/export.csv", get(devices::export_csv))
        .route("/devices/{id}", get(devices::get_one))
        .route("/devices/{id}/history", get(devices::history))
        .route("/devices/{id}/history.csv", get(devices::history_csv))
        .route("/aggregates/tail", post(aggregates::tail))
        .route("/aggregates/multi", post(aggregates::multi))
        .route("/aggregates/daily", post(aggregates::daily))
        .route("/backup", post(backup::backup))
        .fallback(|| async { ApiError::not_found("no such API route") });
    let mut protected = Router::new().nest("/api/v1", api);
    let mut open = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }));
    // `[metrics] public = true` lets a Prometheus scrape without a token.
    if app.config.metrics_public {
        open = open.route("/metrics", get(metrics));
    } else {
        protected = protected.route("/metrics", get(metrics));
    }
    let protected = protected.layer(axum::middleware::from_fn_with_state(
        app.clone(),
        auth::require_token,
    ));
    open.merge(protected)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let body = tokio::task::spawn_blocking(move || {
        let bytes = app.store.size_on_disk().unwrap_or(0);
        let sentries = app.store.sentry_count().unwrap_or(0);
        let mut out = app.metrics.render(bytes, sentries);
        app.fleet.prometheus(hashfleet_shared::now_ms(), &mut out);
        out
    })
    .await
    .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// Serves HTTP until `stop` turns true.
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let result = axum::serve(listener, router(app))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        error!("HTTP server failed: {e}");
    }
}
