//! The HTTP API: versioned blobs with ETags and their change stream (`/v1`), content named by
//! its hash (`/blobs/{hash}`), the Blob Service (`/api/v1`), health, and the OpenAPI document
//! of them all. Every route shares one error type ([`error`]), one way to authenticate
//! ([`auth`]) and one way to page ([`paging`]). This module never touches files, and never
//! imports `protocol` or the server's assembly.

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use utoipa::OpenApi;

pub mod auth;
pub mod blob_service;
pub mod blobs;
pub mod change_stream;
pub mod content;
pub mod error;
pub mod inspect;
pub mod paging;

pub use error::ApiError;

use crate::serve::state::AppState;
use error::ErrorBody;

/// A header value the server writes itself (digits, quoted versions and hashes, HTTP dates,
/// byte ranges), which is always a valid one.
fn header_value(text: String) -> axum::http::HeaderValue {
    axum::http::HeaderValue::from_str(&text).expect("the server's own header text is ASCII")
}

/// Marks a response whose bytes a client uploaded as inert: no type sniffing, and a sandbox
/// for anything a browser opens, so stored bytes never run as a page of this origin (where
/// tokens live).
fn inert(headers: &mut HeaderMap) {
    use axum::http::HeaderValue;
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
}

/// The API's routes; the caller adds the state. `max_data_bytes` bounds versioned blobs,
/// `content_max_bytes` content (and Blob Service uploads).
pub fn router(max_data_bytes: usize, content_max_bytes: u64) -> Router<AppState> {
    Router::new()
        .route("/v1/blobs", get(blobs::list))
        .route(
            "/v1/blobs/{ref}",
            get(blobs::get).put(blobs::put).delete(blobs::delete),
        )
        .route("/v1/blobs/{ref}/events", get(change_stream::follow))
        .route("/v1/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_data_bytes))
        // The content routes stream their bodies under their own limits.
        .merge(content::router())
        .merge(blob_service::router(content_max_bytes))
        .merge(inspect::router())
        .method_not_allowed_fallback(async || ApiError::MethodNotAllowed)
        .fallback(async || ApiError::NotFound)
        .layer(axum::middleware::from_fn(measure))
}

/// Counts and times each request by its route template, for the metrics. Labels come from a
/// fixed set (templates, known methods, statuses), whatever the request says.
async fn measure(request: Request, next: Next) -> Response {
    if !crate::metrics::enabled() {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = match *request.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    crate::metrics::request(&route, method, status, started.elapsed());
    response
}

/// The OpenAPI document of this API, generated from the handlers below.
#[derive(OpenApi)]
#[openapi(
    info(title = "Blobs HTTP API", description = "Versioned blobs with ETags, conditional requests and a change stream; content-addressed blobs named by their BLAKE3 hash; the Blob Service (uploads with semantics and retention, metadata stream)."),
    paths(
        blobs::list, blobs::get, blobs::put, blobs::delete, change_stream::follow, openapi, healthz, readyz,
        content::list_content, content::get_content, content::put_content, content::delete_content,
        blob_service::upload, blob_service::list, blob_service::read, blob_service::metadata, blob_service::remove,
        blob_service::subscribe
    ),
    components(schemas(
        ErrorBody, blobs::BlobEntry, paging::Page<blobs::BlobEntry>, content::StoredBody,
        content::ContentEntry, paging::Page<content::ContentEntry>,
        crate::blob_service::Record, crate::blob_service::RetentionPolicy,
        paging::Page<crate::blob_service::Record>, blob_service::UploadForm,
        blob_service::SubscribeRequest, blob_service::Subscription
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/v1/openapi.json", responses((status = 200, description = "This document")))]
async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "Up")))]
async fn healthz() -> Response {
    crate::edge::reply::healthy()
}

/// Prometheus metrics, to the bearer of `METRICS_TOKEN` (404 without one: metrics are off).
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    use sha2::Digest as _;
    let Some(expected) = state.metrics_token() else {
        return ApiError::NotFound.into_response();
    };
    // Compared as digests: the time taken says nothing of how much of the token matched.
    let digest = |t: &str| sha2::Sha256::digest(t.as_bytes());
    if auth::bearer(&headers).map(digest) != Some(digest(expected)) {
        return ApiError::Unauthorized.into_response();
    }
    let text = crate::metrics::render(state.census()).unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The storage takes writes.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "Ready"), (status = 503, body = ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Response {
    if state.store().writable().await {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        ApiError::NotReady.into_response()
    }
}
