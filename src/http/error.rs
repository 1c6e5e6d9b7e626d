//! What an HTTP client sees when a request fails: one type for every route, one status per
//! variant, and one body, `{ "error": "<message>" }` (a 401 adds `WWW-Authenticate: Bearer`, a
//! 416 `Content-Range`). The messages the content-addressed flow documents for `/blobs/{hash}`
//! (`non-canonical hash`, `unauthorized`, `not found`, `hash mismatch`, `range not
//! satisfiable`) are the messages of every route.

use std::borrow::Cow;

use axum::http::StatusCode;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::signed_url::Denied;
use crate::blob_service;
use crate::edge::admission::SessionRefused;
use crate::edge::reply::error_response;
use crate::serve::state::SetBlobError;
use crate::storage::quota::{AdmitError, Refusal};
use crate::storage::{content, store};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400.
    #[error("{0}")]
    BadRequest(Cow<'static, str>),
    /// 400: a `{hash}` that is not exactly 64 lower-case hex characters.
    #[error("non-canonical hash")]
    NonCanonical,
    /// 400: the body broke off, or paused past `BODY_TIMEOUT`; nothing was written.
    #[error("The request body did not arrive in full")]
    Body,
    /// 401, with `WWW-Authenticate: Bearer`.
    #[error("unauthorized")]
    Unauthorized,
    /// 403: a read-only token tried to write.
    #[error("Read-only token")]
    ReadOnly,
    /// 403: a direct URL that was tampered with, has expired, or names another method.
    #[error("forbidden: {0}")]
    Denied(#[from] Denied),
    /// 404.
    #[error("not found")]
    NotFound,
    /// 405.
    #[error("Method not allowed on this path")]
    MethodNotAllowed,
    /// 412: a delete or `If-Match` write of a blob that does not exist (a blob that does
    /// answers 412 with its bytes, which is not an error body).
    #[error("Precondition failed: the blob does not exist")]
    Absent,
    /// 413.
    #[error("The body is larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// 415: a `Content-Encoding` on a content upload (the bytes must arrive as they hash).
    #[error("unsupported content encoding: send the raw bytes")]
    Encoded,
    /// 416, with `Content-Range: bytes */<size>`.
    #[error("range not satisfiable")]
    Range(u64),
    /// 422: the body's hash is not `{hash}`; nothing was stored.
    #[error("hash mismatch")]
    Mismatch,
    /// 428: a write of an existing blob that does not say which version it replaces.
    #[error("The blob exists: say which version this write replaces with If-Match")]
    PreconditionRequired,
    /// 503 (the server is at `MAX_CONNECTIONS`) or 429 (the client's address is at
    /// `MAX_CONNECTIONS_PER_IP`): a long-lived stream refused.
    #[error(transparent)]
    Connections(#[from] SessionRefused),
    /// 507: the write would pass the bucket's quota, or the server is low on disk space (the
    /// message says which); nothing was written.
    #[error(transparent)]
    InsufficientStorage(#[from] Refusal),
    /// 503: `/readyz` while the storage takes no writes.
    #[error("Storage is not writable")]
    NotReady,
    /// 500: the cause is logged, never sent.
    #[error("Storage error: the operation could not be completed")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn bad(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::BadRequest(message.into())
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::NonCanonical | ApiError::Body => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::ReadOnly | ApiError::Denied(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Absent => StatusCode::PRECONDITION_FAILED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Encoded => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Range(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Mismatch => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
            ApiError::NotReady | ApiError::Connections(SessionRefused::ServerFull) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Connections(SessionRefused::AddressFull) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Storage(cause) = &self {
            tracing::error!("storage failure: {cause}");
        }
        let mut response = error_response(self.status(), self.to_string());
        if let ApiError::Range(size) = self {
            let range = super::header_value(format!("bytes */{size}"));
            response.headers_mut().insert(header::CONTENT_RANGE, range);
        }
        response
    }
}

impl From<store::Error> for ApiError {
    fn from(error: store::Error) -> Self {
        ApiError::Storage(Box::new(error))
    }
}

impl From<SetBlobError> for ApiError {
    fn from(error: SetBlobError) -> Self {
        match error {
            SetBlobError::Refused(refusal) => ApiError::InsufficientStorage(refusal),
            SetBlobError::Store(error) => error.into(),
        }
    }
}

impl From<AdmitError> for ApiError {
    fn from(error: AdmitError) -> Self {
        match error {
            AdmitError::Refused(refusal) => ApiError::InsufficientStorage(refusal),
            measure @ AdmitError::Measure(_) => ApiError::Storage(Box::new(measure)),
        }
    }
}

impl From<content::Error> for ApiError {
    fn from(error: content::Error) -> Self {
        match error {
            content::Error::Mismatch => ApiError::Mismatch,
            content::Error::TooLarge(limit) => ApiError::TooLarge(limit),
            content::Error::Body(_) => ApiError::Body,
            content::Error::Refused(refusal) => ApiError::InsufficientStorage(refusal),
            other => ApiError::Storage(Box::new(other)),
        }
    }
}

impl From<blob_service::Error> for ApiError {
    fn from(error: blob_service::Error) -> Self {
        match error {
            blob_service::Error::Content(error) => error.into(),
            other => ApiError::Storage(Box::new(other)),
        }
    }
}

/// The body of every error response.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: String,
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;
