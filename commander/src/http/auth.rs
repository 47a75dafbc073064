//! Bearer-token authentication for `/api/v1` and `/metrics`, and the
//! per-route permission guard.
//!
//! [`require_token`] resolves `Authorization: Bearer TOKEN` to a
//! [`Principal`] in the request's extensions: the bootstrap admin token
//! (`DATA_DIR/admin.token`) is the principal `admin` with every permission;
//! any other token is looked up by its SHA-256 in the `api_tokens` tree
//! (not revoked, not expired, its user present and enabled). Anything else
//! is 401. [`guard`] then checks the route's [`Need`] (see the map in
//! `http/mod.rs`); handlers check what depends on the data (device types).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hashfleet_shared::enroll::token_hash;
use hashfleet_shared::now_ms;
use subtle::ConstantTimeEq;
use tracing::warn;

use super::error::ApiError;
use crate::accounts::BOOTSTRAP_ADMIN;
use crate::app::App;
use crate::permissions::{Level, Permissions, DEVICE_TYPES};

/// Who is calling, with roles expanded.
#[derive(Debug, Clone)]
pub struct Principal {
    pub username: String,
    pub permissions: Permissions,
    pub admin: bool,
    /// The bootstrap admin token (no stored user behind it).
    pub bootstrap: bool,
    /// The id of the API token used (none for the bootstrap token).
    pub token_id: Option<String>,
}

impl Principal {
    fn bootstrap_admin() -> Self {
        Principal {
            username: BOOTSTRAP_ADMIN.to_string(),
            permissions: Permissions::all(),
            admin: true,
            bootstrap: true,
            token_id: None,
        }
    }

    /// Whether `kind` may be read or written (admins may do anything).
    pub fn can(&self, kind: &str, level: Level) -> bool {
        self.admin || self.permissions.allows(kind, level)
    }

    /// 403 unless `kind:level` is held: `ERR_ACTION_DENIED` for reads,
    /// `ERR_MISSING_WRITE_PERMISSIONS` for writes.
    pub fn require(&self, kind: &str, level: Level) -> Result<(), ApiError> {
        if self.can(kind, level) {
            return Ok(());
        }
        let kind = kind.chars().take(64).collect::<String>();
        Err(match level {
            Level::Read => ApiError::new(
                StatusCode::FORBIDDEN,
                "ERR_ACTION_DENIED",
                format!(
                    "user `{}` may not read this: it needs {kind}:r (an admin can grant it)",
                    self.username
                ),
            ),
            Level::Write => ApiError::new(
                StatusCode::FORBIDDEN,
                "ERR_MISSING_WRITE_PERMISSIONS",
                format!(
                    "user `{}` may not change this: it needs {kind}:w (an admin can grant it)",
                    self.username
                ),
            ),
        })
    }

    /// 403 unless an admin.
    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.admin {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "ERR_ACTION_DENIED",
            format!(
                "only an admin may {what}; user `{}` is not one",
                self.username
            ),
        ))
    }

    /// The device types this principal may read; `None`: all of them,
    /// including types outside the known list (admins).
    pub fn readable_device_types(&self) -> Option<Vec<&'static str>> {
        if self.admin || self.permissions.is_all() {
            None
        } else {
            Some(self.permissions.readable_device_types())
        }
    }
}

/// What a route needs beyond a valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any authenticated principal.
    Authenticated,
    /// `type:r` or `type:w`.
    Permission(&'static str, Level),
    /// `:r` on at least one device type (results are filtered by type).
    AnyDeviceRead,
    /// Admins only; says what (e.g. "manage users").
    Admin(&'static str),
}

fn unauthorized() -> Response {
    let mut response = ApiError::unauthorized().into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// Resolves a user token; `None` for anything that may not be used.
fn resolve(app: &App, hash: &[u8; 32], now: u64) -> Result<Option<Principal>, ApiError> {
    let Some(token) = app.store.api_token(hash)? else {
        return Ok(None);
    };
    if !token.is_live(now) {
        return Ok(None);
    }
    let Some(user) = app.store.user(&token.username)? else {
        return Ok(None);
    };
    if user.disabled {
        return Ok(None);
    }
    let (permissions, errors) = Permissions::resolve_lenient(&user.permissions, &app.config.roles);
    for e in errors {
        // E.g. a role removed from the config: the entry grants nothing.
        warn!(username = %user.username, "ignoring a permission entry: {e}");
    }
    Ok(Some(Principal {
        username: user.username,
        permissions,
        admin: user.admin,
        bootstrap: false,
        token_id: Some(token.id),
    }))
}

pub async fn require_token(
    State(app): State<Arc<App>>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = presented.filter(|t| !t.is_empty()) else {
        return unauthorized();
    };
    let hash = token_hash(token);
    let principal = if bool::from(hash.ct_eq(&app.admin_token_hash)) {
        Principal::bootstrap_admin()
    } else {
        let app2 = app.clone();
        match tokio::task::spawn_blocking(move || resolve(&app2, &hash, now_ms())).await {
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) => return unauthorized(),
            Ok(Err(e)) => return e.into_response(),
            Err(e) => return ApiError::from(e).into_response(),
        }
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Checks a route's [`Need`] against the request's [`Principal`].
pub async fn guard(State(need): State<Need>, request: Request, next: Next) -> Response {
    let Some(principal) = request.extensions().get::<Principal>() else {
        return unauthorized();
    };
    let verdict = match need {
        Need::Authenticated => Ok(()),
        Need::Permission(kind, level) => principal.require(kind, level),
        Need::Admin(what) => principal.require_admin(what),
        Need::AnyDeviceRead => {
            if principal
                .readable_device_types()
                .is_none_or(|t| !t.is_empty())
            {
                Ok(())
            } else {
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "ERR_ACTION_DENIED",
                    format!(
                        "user `{}` may not read devices: it needs :r on a device type ({})",
                        principal.username,
                        DEVICE_TYPES.map(|t| format!("{t}:r")).join(", ")
                    ),
                ))
            }
        }
    };
    match verdict {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}
