//! Users and logins: `POST/GET /api/v1/users`, `DELETE /api/v1/users/{name}`
//! (admins), `POST /api/v1/auth/login` (no bearer token), `GET /api/v1/auth/me`.
//!
//! Passwords are hashed and verified on blocking threads, at most a few at
//! once; neither passwords nor tokens are logged.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use hashfleet_shared::enroll::{generate_token, token_hash};
use hashfleet_shared::now_ms;
use tracing::{info, warn};

use super::auth::Principal;
use super::dto::{rfc3339_ms, CreateUserRequest, LoginRequest, LoginResponse, MeDto, UserDto};
use super::error::ApiError;
use crate::accounts::{
    check_password, check_username, decoy_hash, hash_password, new_token_id, verify_password,
    ThrottleKey, MAX_USERNAME,
};
use crate::app::App;
use crate::permissions::{parse_entry, Entry, ROLE_PREFIX};
use crate::store::{ApiTokenKind, ApiTokenRecord, UserRecord};

/// Most permission entries a user may hold.
const MAX_PERMISSIONS: usize = 64;

/// Canonical, deduplicated entries; 400 on the first bad one.
fn check_permissions(app: &App, entries: &[String]) -> Result<Vec<String>, ApiError> {
    if entries.len() > MAX_PERMISSIONS {
        return Err(ApiError::params(format!(
            "at most {MAX_PERMISSIONS} permission entries"
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(entries.len());
    for text in entries {
        let canonical = match parse_entry(text, &app.config.roles) {
            Ok(Entry::Grant(g)) => g.text(),
            Ok(Entry::Role(name)) => format!("{ROLE_PREFIX}{name}"),
            Err(e) => return Err(ApiError::params(e.to_string())),
        };
        if !out.contains(&canonical) {
            out.push(canonical);
        }
    }
    Ok(out)
}

pub async fn create(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    body: Result<Json<CreateUserRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<UserDto>), ApiError> {
    let Json(req) = body?;
    check_username(&req.username).map_err(ApiError::params)?;
    check_password(&req.password).map_err(ApiError::params)?;
    let permissions = check_permissions(&app, &req.permissions)?;
    let exists = |name: &str| {
        ApiError::new(
            StatusCode::CONFLICT,
            "ERR_USER_EXISTS",
            format!("user `{name}` exists already"),
        )
    };
    let store = app.store.clone();
    let name = req.username.clone();
    if tokio::task::spawn_blocking(move || store.user(&name))
        .await??
        .is_some()
    {
        return Err(exists(&req.username));
    }
    let _slot = app
        .accounts
        .hashing
        .acquire()
        .await
        .map_err(|_| ApiError::internal("shutting down"))?;
    let password = req.password;
    let password_hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await?
        .map_err(ApiError::internal)?;
    let record = UserRecord {
        username: req.username,
        password_hash,
        permissions,
        admin: req.admin,
        created_ms: now_ms(),
        disabled: false,
    };
    let store = app.store.clone();
    let stored = record.clone();
    if !tokio::task::spawn_blocking(move || store.create_user(&stored)).await?? {
        return Err(exists(&record.username));
    }
    info!(
        username = %record.username,
        permissions = ?record.permissions,
        admin = record.admin,
        by = %principal.username,
        "user created"
    );
    Ok((StatusCode::CREATED, Json(UserDto::new(&record))))
}

pub async fn list(State(app): State<Arc<App>>) -> Result<Json<Vec<UserDto>>, ApiError> {
    let users = tokio::task::spawn_blocking(move || app.store.users()).await??;
    Ok(Json(users.iter().map(UserDto::new).collect()))
}

/// Disables a user: it can no longer log in, and its tokens stop working
/// at once. The name stays taken.
pub async fn disable(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Path(username): Path<String>,
) -> Result<Json<UserDto>, ApiError> {
    let record = tokio::task::spawn_blocking(move || -> Result<UserRecord, ApiError> {
        let mut record = app.store.user(&username)?.ok_or_else(|| {
            ApiError::not_found(format!(
                "no user `{}`",
                username.chars().take(MAX_USERNAME).collect::<String>()
            ))
        })?;
        if !record.disabled {
            record.disabled = true;
            app.store.put_user(&record)?;
        }
        Ok(record)
    })
    .await??;
    info!(username = %record.username, by = %principal.username, "user disabled");
    Ok(Json(UserDto::new(&record)))
}

pub async fn me(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<MeDto>, ApiError> {
    let permissions = if principal.bootstrap {
        Vec::new()
    } else {
        let name = principal.username.clone();
        tokio::task::spawn_blocking(move || app.store.user(&name))
            .await??
            .map(|u| u.permissions)
            .unwrap_or_default()
    };
    Ok(Json(MeDto {
        username: principal.username.clone(),
        permissions,
        effective: principal.permissions.texts(),
        admin: principal.admin,
    }))
}

fn throttled(retry_at_ms: u64, now: u64) -> Response {
    let secs = retry_at_ms.saturating_sub(now).div_ceil(1000).max(1);
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "ERR_LOGIN_THROTTLED",
        format!(
            "too many failed logins for this username or from this address: try again after {} (in {secs} s)",
            rfc3339_ms(retry_at_ms)
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// `POST /api/v1/auth/login`: a session token for a username and password.
pub async fn login(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let keys = [ThrottleKey::user(&req.username), ThrottleKey::ip(peer.ip())];
    let shown: String = req.username.chars().take(MAX_USERNAME).collect();
    let started = now_ms();
    let begun = app
        .accounts
        .throttle
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .begin(&keys, started);
    if let Err(retry_at) = begun {
        warn!(username = ?shown, ip = %peer.ip(), "login refused: throttled");
        return throttled(retry_at, started);
    }
    let Ok(slot) = app.accounts.hashing.acquire().await else {
        return ApiError::internal("shutting down").into_response();
    };
    let app2 = app.clone();
    let checked = tokio::task::spawn_blocking(move || -> Result<Option<UserRecord>, ApiError> {
        let user = if req.username.len() <= MAX_USERNAME {
            app2.store.user(&req.username)?
        } else {
            None
        };
        // An unknown user costs one verification too.
        let ok = match &user {
            Some(u) => verify_password(&req.password, &u.password_hash),
            None => verify_password(&req.password, decoy_hash()),
        };
        Ok(user.filter(|u| ok && !u.disabled))
    })
    .await;
    drop(slot);
    let user = match checked {
        Ok(Ok(Some(user))) => user,
        Ok(Ok(None)) => {
            warn!(username = ?shown, ip = %peer.ip(), "login failed");
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "ERR_LOGIN_FAILED",
                "wrong username or password (or the user is disabled)",
            )
            .into_response();
        }
        Ok(Err(e)) => return e.into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    app.accounts
        .throttle
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .succeeded(&keys, started);
    let token = generate_token("hfs_");
    let now = now_ms();
    let record = ApiTokenRecord {
        id: new_token_id(),
        username: user.username.clone(),
        kind: ApiTokenKind::Session,
        created_ms: now,
        expires_ms: now + app.config.auth.session_ttl.as_millis() as u64,
        revoked: false,
    };
    let hash = token_hash(&token);
    let store = app.store.clone();
    let stored = record.clone();
    match tokio::task::spawn_blocking(move || store.put_api_token(&hash, &stored)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return ApiError::from(e).into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    }
    info!(username = %user.username, token_id = %record.id, ip = %peer.ip(), "login");
    Json(LoginResponse {
        token,
        id: record.id,
        username: user.username,
        expires_at: rfc3339_ms(record.expires_ms),
    })
    .into_response()
}
