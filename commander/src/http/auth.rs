//! Bearer-token authentication for `/api/v1` and `/metrics`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hashfleet_shared::enroll::token_hash;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::app::App;

pub async fn require_token(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok =
        presented.is_some_and(|token| bool::from(token_hash(token).ct_eq(&app.admin_token_hash)));
    if ok {
        next.run(request).await
    } else {
        let mut response = ApiError::unauthorized().into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        response
    }
}
