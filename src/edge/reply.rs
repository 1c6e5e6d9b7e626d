//! The few answers the edge gives itself, in the same shape as every route's: a JSON error body
//! `{ "error": "<message>" }` (a 401 adds `WWW-Authenticate: Bearer`) and the health answer.

use axum::Json;
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// `{ "error": message }` with `status`.
pub fn error_response(status: StatusCode, message: String) -> Response {
    let mut response = (status, Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// The process is up: `{ "status": "ok" }`.
pub fn healthy() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// The request's `Content-Length`, when it declares one.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
