//! The HTTP API (v1, JSON, bearer tokens) and `/metrics`.
//!
//! `/healthz` and `/readyz` are open; everything under `/api/v1` and
//! `/metrics` needs `Authorization: Bearer TOKEN`. Handlers speak DTOs
//! ([`dto`]) and convert from store records; they never serialize records.

mod auth;
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
        .fallback(|| async { ApiError::not_found("no such API route") });
    let protected = Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .merge(protected)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let store = app.store.clone();
    let (bytes, sentries) = tokio::task::spawn_blocking(move || {
        (
            store.size_on_disk().unwrap_or(0),
            store.sentry_count().unwrap_or(0),
        )
    })
    .await
    .unwrap_or((0, 0));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(bytes, sentries),
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
