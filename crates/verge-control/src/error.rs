//! The one error type of the control API and its JSON shape,
//! `{"error": {"code": "...", "message": "..."}}`.
//!
//! **Invariant**: a response carries a stable code and a message meant for
//! the caller; internal details (store errors, paths) go to the log only.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered by the control API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing, malformed, unknown, expired or revoked token (401).
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The token lacks the scope (403).
    #[error("this token lacks the `{0}` scope")]
    Forbidden(String),
    /// Not found, or not visible to this tenant (404).
    #[error("{0}")]
    NotFound(String),
    /// The request is invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// A precondition or a claim conflicts (409).
    #[error("{0}")]
    Conflict(String),
    /// The upload is too large (413).
    #[error("{0}")]
    TooLarge(String),
    /// Too many failed attempts from this source (429).
    #[error("too many failed authentication attempts; retry in {0} s")]
    RateLimited(u64),
    /// The server is at a limit for this kind of request (503).
    #[error("{0}")]
    Unavailable(String),
    /// Something failed inside the server (500); details are logged.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge(_) => "too_large",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// An internal failure: logged here, answered as a bare 500.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        let detail = e.to_string();
        tracing::error!("control API: {detail}");
        ApiError::Internal(detail)
    }
}

impl From<verge_store::StoreError> for ApiError {
    fn from(e: verge_store::StoreError) -> Self {
        match e {
            // A node cut off from its cluster: its own words, a 503.
            verge_store::StoreError::Unavailable(message) => ApiError::Unavailable(message),
            e => ApiError::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        let mut response = (self.status(), Json(body)).into_response();
        match &self {
            ApiError::RateLimited(secs) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            ApiError::Unauthenticated(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
