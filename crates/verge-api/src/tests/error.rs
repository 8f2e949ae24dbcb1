//! The error body, as `IntoResponse for ApiError` writes it.

use serde_json::json;

use super::{check_wire, refused, written};
use crate::*;

/// `ApiError::code()` and `ApiError::status()` of `verge-control`, copied.
const SERVER: [(&str, u16); 9] = [
    ("unauthenticated", 401),
    ("forbidden", 403),
    ("not_found", 404),
    ("bad_request", 400),
    ("conflict", 409),
    ("too_large", 413),
    ("rate_limited", 429),
    ("unavailable", 503),
    ("internal", 500),
];

#[test]
fn codes_are_the_servers() {
    assert_eq!(ErrorCode::ALL.len(), SERVER.len());
    for (code, (text, status)) in ErrorCode::ALL.into_iter().zip(SERVER) {
        assert_eq!((code.as_str(), code.status()), (text, status));
        assert_eq!(code.to_string(), text);
        assert_eq!(written(&code), json!(text));
    }
}

#[test]
fn error_bodies_keep_their_shape() {
    for (code, _) in SERVER {
        let body: ErrorBody =
            check_wire(json!({"error": {"code": code, "message": "no such endpoint"}}));
        assert_eq!(body.error.code.as_str(), code);
    }
    let body = ErrorBody::new(ErrorCode::Forbidden, "this token lacks the `kv:read` scope");
    assert_eq!(
        written(&body),
        json!({"error": {"code": "forbidden", "message": "this token lacks the `kv:read` scope"}})
    );
    refused::<ErrorBody>(json!({"error": {"code": "teapot", "message": "?"}}));
}
