//! `POST /api/v1/enrollment-tokens`.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use hashfleet_shared::enroll::{generate_token, token_hash};
use hashfleet_shared::now_ms;

use super::dto::{rfc3339_ms, CreateTokenRequest, TokenDto};
use super::error::ApiError;
use crate::app::App;
use crate::store::TokenRecord;

/// Longest a token may live: 30 days.
const MAX_TTL_SECS: u64 = 30 * 24 * 3600;
const MAX_USES: u32 = 100_000;

pub async fn create(
    State(app): State<Arc<App>>,
    body: Result<Json<CreateTokenRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<TokenDto>), ApiError> {
    let Json(req) = body?;
    if req.uses == 0 || req.uses > MAX_USES {
        return Err(ApiError::params(format!(
            "uses must be between 1 and {MAX_USES}"
        )));
    }
    if req.ttl_secs == 0 || req.ttl_secs > MAX_TTL_SECS {
        return Err(ApiError::params(format!(
            "ttl_secs must be between 1 and {MAX_TTL_SECS} (30 days)"
        )));
    }
    let token = generate_token("hfe_");
    let now = now_ms();
    let record = TokenRecord {
        uses_left: req.uses,
        expires_ms: now + req.ttl_secs * 1000,
        created_ms: now,
    };
    let hash = token_hash(&token);
    let store = app.store.clone();
    let stored = record.clone();
    tokio::task::spawn_blocking(move || store.put_token(&hash, &stored)).await??;
    Ok((
        StatusCode::CREATED,
        Json(TokenDto {
            token,
            uses: req.uses,
            expires_at: rfc3339_ms(record.expires_ms),
        }),
    ))
}
