//! The HTTP API (v1, JSON, bearer tokens) and `/metrics`.
//!
//! `/healthz`, `/readyz` and `POST /api/v1/auth/login` are open; everything
//! else under `/api/v1`, and `/metrics` (unless `[metrics] public = true`),
//! needs `Authorization: Bearer TOKEN`: the bootstrap admin token, a login's
//! session token or a personal token ([`auth`]). Handlers speak DTOs
//! ([`dto`]) and convert from store records; they never serialize records.
//!
//! Route permission map (admins, including the bootstrap token, pass every
//! check; `rw` grants both `r` and `w`). A missing read gives 403
//! `ERR_ACTION_DENIED`, a missing write 403 `ERR_MISSING_WRITE_PERMISSIONS`:
//!
//! | route | needs |
//! |---|---|
//! | `POST /auth/login` | nothing (throttled per username and per address) |
//! | `GET /auth/me`, `POST/GET /tokens`, `DELETE /tokens/{id}` | a valid token (own tokens; admins: any) |
//! | `POST/GET /users`, `DELETE /users/{name}` | admin |
//! | `GET /sentries`, `GET /sentries/{id}`, `GET /sentries/{id}/heartbeats` | `sentry:r` |
//! | `POST /sentries/{id}/approve`, `POST /sentries/{id}/revoke`, `POST /sentries/{id}/rotate` | `sentry:w` |
//! | `POST /enrollment-tokens` | `token:w` |
//! | `POST /devices/query`, `GET /devices/export.csv` | `:r` on a device type; results hold only readable types |
//! | `GET /devices/{id}`, `…/history`, `…/history.csv` | `:r` on the device's type |
//! | `POST /aggregates/{tail,multi,daily}` | `:r` on each requested `type` |
//! | `POST /backup` | `backup:r` (the backup holds every tree, password hashes included) |
//! | `GET /metrics` | a valid token (or nothing with `[metrics] public = true`) |
//!
//! Routes declare their need with `need!` ([`auth::guard`]); the device and
//! aggregate handlers check types themselves.

mod actions;
mod aggregates;
mod api_tokens;
mod audit;
pub mod auth;
mod backup;
mod csv;
mod devices;
pub mod dto;
mod error;
pub mod https;
mod sentries;
mod tokens;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::Router;
use tokio::sync::watch;
use tracing::error;

use crate::app::App;
use crate::permissions::Level::{Read, Write};

pub use auth::{Need, Principal};
pub use error::ApiError;

/// Request bodies are small JSON documents.
const BODY_LIMIT: usize = 64 * 1024;

/// The guard layer for a route's [`Need`].
macro_rules! need {
    ($need:expr) => {
        axum::middleware::from_fn_with_state($need, auth::guard)
    };
}

pub fn router(app: Arc<App>) -> Router {
    use Need::{AnyDeviceRead, Authenticated, Permission};
    let admin = Need::Admin("manage users");
    let api = Router::new()
        .route(
            "/enrollment-tokens",
            post(tokens::create).route_layer(need!(Permission("token", Write))),
        )
        .route(
            "/sentries",
            get(sentries::list).route_layer(need!(Permission("sentry", Read))),
        )
        .route(
            "/sentries/{id}",
            get(sentries::get_one).route_layer(need!(Permission("sentry", Read))),
        )
        .route(
            "/sentries/{id}/approve",
            post(sentries::approve).route_layer(need!(Permission("sentry", Write))),
        )
        .route(
            "/sentries/{id}/revoke",
            post(sentries::revoke).route_layer(need!(Permission("sentry", Write))),
        )
        .route(
            "/sentries/{id}/rotate",
            post(sentries::rotate).route_layer(need!(Permission("sentry", Write))),
        )
        .route(
            "/sentries/{id}/heartbeats",
            get(sentries::heartbeats).route_layer(need!(Permission("sentry", Read))),
        )
        .route(
            "/devices/query",
            post(devices::query).route_layer(need!(AnyDeviceRead)),
        )
        .route(
            "/devices/export.csv",
            get(devices::export_csv).route_layer(need!(AnyDeviceRead)),
        )
        .route(
            "/devices/{id}",
            get(devices::get_one).route_layer(need!(AnyDeviceRead)),
        )
        .route(
            "/devices/{id}/history",
            get(devices::history).route_layer(need!(AnyDeviceRead)),
        )
        .route(
            "/devices/{id}/history.csv",
            get(devices::history_csv).route_layer(need!(AnyDeviceRead)),
        )
        .route(
            "/aggregates/tail",
            post(aggregates::tail).route_layer(need!(AnyDeviceRead)),
        )
        .route(
            "/aggregates/multi",
            post(aggregates::multi).route_layer(need!(AnyDeviceRead)),
        )
        .route(
            "/aggregates/daily",
            post(aggregates::daily).route_layer(need!(AnyDeviceRead)),
        )
        .route(
            "/backup",
            post(backup::backup).route_layer(need!(Permission("backup", Read))),
        )
        .route(
            "/users",
            post(users::create)
                .get(users::list)
                .route_layer(need!(admin)),
        )
        .route(
            "/users/{username}",
            delete(users::disable).route_layer(need!(admin)),
        )
        .route("/auth/me", get(users::me).route_layer(need!(Authenticated)))
        .route(
            "/tokens",
            post(api_tokens::create)
                .get(api_tokens::list)
                .route_layer(need!(Authenticated)),
        )
        .route(
            "/tokens/{id}",
            delete(api_tokens::revoke).route_layer(need!(Authenticated)),
        )
        .route(
            "/actions",
            post(actions::push).route_layer(need!(Authenticated)),
        )
        .route(
            "/actions/batch",
            post(actions::batch).route_layer(need!(Authenticated)),
        )
        .route(
            "/actions/cancel",
            post(actions::cancel).route_layer(need!(Authenticated)),
        )
        .route(
            "/actions/query",
            post(actions::query).route_layer(need!(Authenticated)),
        )
        .route(
            "/actions/{id}",
            get(actions::get_one).route_layer(need!(Authenticated)),
        )
        .route(
            "/actions/{id}/vote",
            post(actions::vote).route_layer(need!(Authenticated)),
        )
        .route(
            "/audit",
            get(audit::list).route_layer(need!(Permission("audit", Read))),
        )
        .fallback(|| async { ApiError::not_found("no such API route") });
    let mut protected = Router::new().nest("/api/v1", api);
    let mut open = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        // The one API route without a bearer token.
        .route("/api/v1/auth/login", post(users::login));
    // `[metrics] public = true` lets a Prometheus scrape without a token.
    if app.config.metrics_public {
        open = open.route("/metrics", get(metrics));
    } else {
        protected = protected.route("/metrics", get(metrics));
    }
    // Audit runs inside authentication, so it knows the principal.
    let protected = protected
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            audit::record,
        ))
        .layer(axum::middleware::from_fn_with_state(
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
    // The login throttle counts per client address.
    let service = router(app).into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, service)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        error!("HTTP server failed: {e}");
    }
}
