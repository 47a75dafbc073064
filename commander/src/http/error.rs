//! API errors: a status, a machine-readable `code` and a message that says
//! what was wrong and what to do.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "ERR_UNAUTHORIZED",
            "missing or invalid bearer token: send `Authorization: Bearer TOKEN` (the admin token is in DATA_DIR/admin.token)",
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "ERR_NOT_FOUND", message)
    }

    pub fn params(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ERR_PARAMS_INVALID", message)
    }

    pub fn payload(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ERR_PAYLOAD_INVALID", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "ERR_INTERNAL", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(e.to_string())
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::internal(format!("internal task failed: {e}"))
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "ERR_PAYLOAD_TOO_LARGE",
                "request body is larger than 64 KiB",
            )
        } else {
            ApiError::payload(e.body_text())
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::params(e.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(Body {
            code: self.code,
            message: &self.message,
        });
        (self.status, body).into_response()
    }
}
