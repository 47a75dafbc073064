//! Personal API tokens: `POST /api/v1/tokens` (shown once), `GET
//! /api/v1/tokens`, `DELETE /api/v1/tokens/{id}`.
//!
//! A token is 32 random bytes (`hfp_…`, base58), stored only as its
//! SHA-256 in the `api_tokens` tree. Anyone signed in may make tokens for
//! themselves and revoke their own; an admin sees and may revoke any.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use hashfleet_shared::enroll::{generate_token, token_hash};
use hashfleet_shared::now_ms;
use tracing::info;

use super::auth::Principal;
use super::dto::{rfc3339_ms, ApiTokenDto, NewApiTokenDto};
use super::error::ApiError;
use crate::accounts::new_token_id;
use crate::app::App;
use crate::store::{ApiTokenKind, ApiTokenRecord};

/// Unrevoked personal tokens one user may hold.
const MAX_PERSONAL_TOKENS: usize = 100;

pub async fn create(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
) -> Result<(StatusCode, Json<NewApiTokenDto>), ApiError> {
    if principal.bootstrap {
        return Err(ApiError::params(
            "the bootstrap admin token belongs to no user: create a user (POST /api/v1/users, \"admin\": true for an admin), log in as it and make tokens for it",
        ));
    }
    let token = generate_token("hfp_");
    let record = ApiTokenRecord {
        id: new_token_id(),
        username: principal.username.clone(),
        kind: ApiTokenKind::Personal,
        created_ms: now_ms(),
        expires_ms: 0,
        revoked: false,
    };
    let hash = token_hash(&token);
    let store = app.store.clone();
    let stored = record.clone();
    tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
        let held = store
            .api_tokens()?
            .iter()
            .filter(|(_, r)| {
                r.kind == ApiTokenKind::Personal && !r.revoked && r.username == stored.username
            })
            .count();
        if held >= MAX_PERSONAL_TOKENS {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "ERR_TOO_MANY_TOKENS",
                format!("a user holds at most {MAX_PERSONAL_TOKENS} personal tokens: revoke unused ones (DELETE /api/v1/tokens/{{id}})"),
            ));
        }
        Ok(store.put_api_token(&hash, &stored)?)
    })
    .await??;
    info!(username = %record.username, token_id = %record.id, "personal token created");
    Ok((
        StatusCode::CREATED,
        Json(NewApiTokenDto {
            id: record.id,
            token,
            created_at: rfc3339_ms(record.created_ms),
        }),
    ))
}

/// The caller's tokens (an admin's: everyone's), leaving out expired logins.
pub async fn list(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Vec<ApiTokenDto>>, ApiError> {
    let now = now_ms();
    let mut tokens: Vec<ApiTokenRecord> =
        tokio::task::spawn_blocking(move || app.store.api_tokens())
            .await??
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| principal.admin || r.username == principal.username)
            .filter(|r| r.kind == ApiTokenKind::Personal || r.is_live(now))
            .collect();
    tokens.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    Ok(Json(tokens.iter().map(ApiTokenDto::new).collect()))
}

/// Revokes a token of the caller's (an admin: anyone's); takes effect on
/// the next request that presents it.
pub async fn revoke(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<ApiTokenDto>, ApiError> {
    let record = tokio::task::spawn_blocking(move || -> Result<ApiTokenRecord, ApiError> {
        let found = app
            .store
            .api_tokens()?
            .into_iter()
            .find(|(_, r)| r.id == id && (principal.admin || r.username == principal.username));
        let Some((hash, mut record)) = found else {
            return Err(ApiError::not_found(format!(
                "no token `{}` of yours (GET /api/v1/tokens lists them)",
                id.chars().take(32).collect::<String>()
            )));
        };
        if !app.store.revoke_api_token(&hash)? {
            return Err(ApiError::not_found("that token expired and is gone"));
        }
        record.revoked = true;
        info!(username = %record.username, token_id = %record.id, by = %principal.username, "token revoked");
        Ok(record)
    })
    .await??;
    Ok(Json(ApiTokenDto::new(&record)))
}
