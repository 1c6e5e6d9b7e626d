//! The HTTP API: the same versioned blobs as the Socket.IO protocol, with ETags as versions.
//!
//! A write through HTTP goes through the same store and locks as a Socket.IO `set`, and is
//! announced the same way (`changed` to the Socket.IO room, an event to the HTTP streams). Every
//! error is JSON `{ "error": "<sentence>" }` with its status. This module never touches files.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, OpenApi, ToSchema};

pub mod blob_service;
pub mod content;

use crate::auth::Grant;
use crate::changes::Change;
use crate::clock::now_ms;
use crate::names::{Bucket, Ref};
use crate::proxy;
use crate::state::AppState;
use crate::store::{self, Blob, Edit, Expect, SetOutcome, SetRequest, live};

/// Page size of the listing, by default and at most.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// The API's routes; the caller adds the state. `max_data_bytes` bounds versioned blobs,
/// `content_max_bytes` content (and Blob Service uploads).
pub fn router(max_data_bytes: usize, content_max_bytes: u64) -> Router<AppState> {
    Router::new()
        .route("/v1/blobs", get(list_blobs))
        .route(
            "/v1/blobs/{ref}",
            get(get_blob).put(put_blob).delete(delete_blob),
        )
        .route("/v1/blobs/{ref}/events", get(blob_events))
        .route("/v1/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(max_data_bytes))
        // The content routes stream their bodies under their own limits.
        .merge(content::router())
        .merge(blob_service::router(content_max_bytes))
        .method_not_allowed_fallback(method_not_allowed)
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed on this path".to_owned(),
    )
}

/// The OpenAPI document of this API, generated from the handlers below.
#[derive(OpenApi)]
#[openapi(
    info(title = "Blobs HTTP API", description = "Versioned blobs with ETags, conditional requests and a change stream; content-addressed blobs named by their BLAKE3 hash; the Blob Service (uploads with semantics and retention, metadata stream)."),
    paths(
        list_blobs, get_blob, put_blob, delete_blob, blob_events, openapi, healthz, readyz,
        content::get_content, content::put_content, content::delete_content,
        blob_service::upload, blob_service::list, blob_service::read, blob_service::metadata, blob_service::remove,
        blob_service::subscribe
    ),
    components(schemas(
        ErrorBody, BlobEntry, BlobPage, content::StoredBody, crate::blob_service::Record,
        crate::blob_service::RetentionPolicy, blob_service::RecordPage, blob_service::UploadForm,
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

/// What an HTTP client sees when a request fails.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// 401 with `WWW-Authenticate: Bearer`.
    #[error("A valid bucket token is required: send Authorization: Bearer <token>")]
    Unauthorized,
    /// 403: a read-only token tried to write.
    #[error("Read-only token")]
    ReadOnly,
    /// 400.
    #[error("Invalid reference: expected 64 hexadecimal characters")]
    InvalidRef,
    /// 400.
    #[error("{0}")]
    BadRequest(&'static str),
    /// 404.
    #[error("No such blob")]
    NotFound,
    /// 413.
    #[error("The body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    /// 428.
    #[error("The blob exists: say which version this write replaces with If-Match")]
    PreconditionRequired,
    /// 500: the cause is logged.
    #[error("Storage error: the operation could not be completed")]
    Store(#[from] store::Error),
}

/// An error response body.
#[derive(Serialize, ToSchema)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = match &self {
            HttpError::Unauthorized => StatusCode::UNAUTHORIZED,
            HttpError::ReadOnly => StatusCode::FORBIDDEN,
            HttpError::InvalidRef | HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HttpError::NotFound => StatusCode::NOT_FOUND,
            HttpError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
            HttpError::Store(cause) => {
                tracing::error!("storage failure: {cause}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        error_response(status, self.to_string())
    }
}

/// A JSON error body `{ "error": message }` with its status, for every HTTP API; a 401 carries
/// the Bearer challenge.
pub(crate) fn error_response(status: StatusCode, message: String) -> Response {
    let mut response = (status, Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

type Result<T, E = HttpError> = std::result::Result<T, E>;

/// The grant of the request's bearer token.
struct Token(Grant);

impl FromRequestParts<AppState> for Token {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        bearer_grant(&parts.headers, state)
            .map(Token)
            .ok_or(HttpError::Unauthorized)
    }
}

/// What the request's `Authorization: Bearer <token>` grants, if it is valid.
pub(crate) fn bearer_grant(headers: &HeaderMap, state: &AppState) -> Option<Grant> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| state.keys().verify(token.trim()))
}

impl Token {
    fn writer(&self) -> Result<&Bucket> {
        self.0.writable_bucket().ok_or(HttpError::ReadOnly)
    }
}

fn parse_ref(text: &str) -> Result<Ref> {
    Ref::parse(text).ok_or(HttpError::InvalidRef)
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits in quotes are a header value")
}

/// The versions an `If-Match` / `If-None-Match` header names: `*`, or strong ETags.
enum Condition {
    Any,
    Versions(Vec<u64>),
}

fn condition(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<Condition>> {
    let Some(value) = headers.get(&name) else {
        return Ok(None);
    };
    let bad =
        || HttpError::BadRequest("Malformed precondition: expected \"*\" or a quoted version");
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text == "*" {
        return Ok(Some(Condition::Any));
    }
    let versions = text
        .split(',')
        .map(|tag| {
            tag.trim()
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .and_then(|t| t.parse::<u64>().ok())
        })
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(bad)?;
    Ok(Some(Condition::Versions(versions)))
}

fn http_date(millis: u64) -> HeaderValue {
    let time = UNIX_EPOCH + Duration::from_millis(millis);
    HeaderValue::from_str(&httpdate::fmt_http_date(time)).expect("an HTTP date is a header value")
}

/// 200 with the bytes (204 without data), `ETag` and `Last-Modified`.
fn blob_response(status: StatusCode, blob: &Blob) -> Result<Response> {
    let mut response = match &blob.data {
        Some(data) => {
            let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(data.trim_end_matches('='))
                .map_err(|_| HttpError::BadRequest("The stored data is not valid base64"))?;
            let mut response = (status, bytes).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        None => StatusCode::NO_CONTENT.into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag(blob.version));
    headers.insert(header::LAST_MODIFIED, http_date(blob.modified()));
    Ok(response)
}

/// 412 with the current `ETag` and bytes, so the client can rebase without another request.
fn precondition_failed(current: Option<&Blob>) -> Result<Response> {
    match current.filter(|b| !b.deleted) {
        Some(blob) => {
            let mut response = blob_response(StatusCode::PRECONDITION_FAILED, blob)?;
            *response.status_mut() = StatusCode::PRECONDITION_FAILED;
            Ok(response)
        }
        None => Ok((
            StatusCode::PRECONDITION_FAILED,
            Json(json!({ "error": "Precondition failed: the blob does not exist" })),
        )
            .into_response()),
    }
}

/// Reads a blob.
#[utoipa::path(
    get,
    path = "/v1/blobs/{ref}",
    params(("ref" = String, Path, description = "64 hexadecimal characters (case-insensitive)")),
    responses(
        (status = 200, description = "The blob's bytes; `ETag` is its version", content_type = "application/octet-stream"),
        (status = 204, description = "The blob has a version and no data"),
        (status = 304, description = "`If-None-Match` names the current version"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn get_blob(
    State(state): State<AppState>,
    token: Token,
    Path(r): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let r = parse_ref(&r)?;
    let blob = live(state.store().get(&token.0.bucket, &r).await?).ok_or(HttpError::NotFound)?;
    let not_modified = match condition(&headers, header::IF_NONE_MATCH)? {
        Some(Condition::Any) => true,
        Some(Condition::Versions(versions)) => versions.contains(&blob.version),
        None => false,
    };
    if not_modified {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response
            .headers_mut()
            .insert(header::ETAG, etag(blob.version));
        return Ok(response);
    }
    blob_response(StatusCode::OK, &blob)
}

/// Writes a blob: compare-and-swap with `If-Match`, create-only with `If-None-Match: *`.
#[utoipa::path(
    put,
    path = "/v1/blobs/{ref}",
    params(("ref" = String, Path, description = "64 hexadecimal characters (case-insensitive)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Updated; `ETag` is the new version"),
        (status = 201, description = "Created; `ETag` is the new version"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 412, description = "The precondition failed: the current `ETag` and bytes"),
        (status = 413, body = ErrorBody), (status = 428, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn put_blob(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    token: Token,
    Path(r): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let bucket = token.writer()?.clone();
    let r = parse_ref(&r)?;
    let limit = state.max_data_bytes();
    // The body limit layer refuses larger bodies while they arrive (chunked ones included).
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => HttpError::TooLarge(limit),
        // The client stopped sending (`BODY_TIMEOUT`) or went away: nothing is written.
        _ => HttpError::BadRequest("The request body did not arrive in full"),
    })?;
    let expect = match (
        condition(&headers, header::IF_MATCH)?,
        condition(&headers, header::IF_NONE_MATCH)?,
    ) {
        (Some(Condition::Versions(v)), None) if v.len() == 1 => Expect::Version(v[0]),
        (None, Some(Condition::Any)) => Expect::Absent,
        (None, None) => Expect::Unconditional,
        _ => {
            return Err(HttpError::BadRequest(
                "Use one precondition: If-Match with one version, or If-None-Match: *",
            ));
        }
    };
    let request = SetRequest {
        edit: Edit::Put(Some(STANDARD.encode(&body))),
        expect,
        ip: proxy::client_address(peer.ip(), &headers, state.trusted_proxies()).to_string(),
        now: now_ms(),
    };
    write(&state, bucket, r, request).await
}

/// Deletes a blob (leaving a tombstone that keeps its version); needs `If-Match`.
#[utoipa::path(
    delete,
    path = "/v1/blobs/{ref}",
    params(("ref" = String, Path, description = "64 hexadecimal characters (case-insensitive)")),
    responses(
        (status = 204, description = "Deleted; `ETag` is the tombstone's version"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 412, description = "The precondition failed: the current `ETag` and bytes"),
        (status = 428, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn delete_blob(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    token: Token,
    Path(r): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let bucket = token.writer()?.clone();
    let r = parse_ref(&r)?;
    let expect = match condition(&headers, header::IF_MATCH)? {
        Some(Condition::Versions(v)) if v.len() == 1 => Expect::Version(v[0]),
        Some(_) => return Err(HttpError::BadRequest("If-Match must name one version")),
        None => return Err(HttpError::PreconditionRequired),
    };
    let request = SetRequest {
        edit: Edit::Delete,
        expect,
        ip: proxy::client_address(peer.ip(), &headers, state.trusted_proxies()).to_string(),
        now: now_ms(),
    };
    write(&state, bucket, r, request).await
}

/// Runs a write and answers it; committed writes are announced to every protocol.
async fn write(state: &AppState, bucket: Bucket, r: Ref, request: SetRequest) -> Result<Response> {
    let deleted = request.edit == Edit::Delete;
    let updating = matches!(request.expect, Expect::Version(_));
    match state.store().set(&bucket, &r, request).await? {
        SetOutcome::Committed { version } => {
            tracing::debug!(%bucket, r#ref = %r, version, deleted, "committed over HTTP");
            state.changes().publish(
                Change {
                    bucket,
                    r,
                    version,
                    deleted,
                },
                None,
            );
            let status = match (deleted, updating) {
                (true, _) => StatusCode::NO_CONTENT,
                (false, true) => StatusCode::OK,
                (false, false) => StatusCode::CREATED,
            };
            let mut response = status.into_response();
            response.headers_mut().insert(header::ETAG, etag(version));
            Ok(response)
        }
        SetOutcome::Conflict(current) => precondition_failed(current.as_deref()),
        SetOutcome::PreconditionRequired(current) => {
            let mut response = HttpError::PreconditionRequired.into_response();
            response
                .headers_mut()
                .insert(header::ETAG, etag(current.version));
            Ok(response)
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Start after this ref (the `next` of the previous page).
    after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<usize>,
}

/// One entry of the listing.
#[derive(Serialize, ToSchema)]
struct BlobEntry {
    r#ref: String,
    version: u64,
    /// Bytes of data.
    size: usize,
    /// Last change, milliseconds since the epoch.
    updated: u64,
}

/// A page of the listing.
#[derive(Serialize, ToSchema)]
struct BlobPage {
    blobs: Vec<BlobEntry>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// Lists the bucket's blobs in ref order.
#[utoipa::path(
    get,
    path = "/v1/blobs",
    params(ListQuery),
    responses((status = 200, body = BlobPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
async fn list_blobs(
    State(state): State<AppState>,
    token: Token,
    query: std::result::Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<BlobPage>> {
    let Query(query) = query.map_err(|_| {
        HttpError::BadRequest("Invalid query: expected after=<ref> and limit=<1 to 1000>")
    })?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(HttpError::BadRequest("limit must be from 1 to 1000"));
    }
    let after = query.after.as_deref().map(parse_ref).transpose()?;
    let mut found = state
        .store()
        .list(&token.0.bucket, after.as_ref(), limit + 1)
        .await?;
    let more = found.len() > limit;
    found.truncate(limit);
    let next = more
        .then(|| found.last().map(|(r, _)| r.to_string()))
        .flatten();
    let blobs = found
        .into_iter()
        .map(|(r, listed)| BlobEntry {
            r#ref: r.to_string(),
            version: listed.version,
            size: listed.size,
            updated: listed.updated,
        })
        .collect();
    Ok(Json(BlobPage { blobs, next }))
}

/// A Server-Sent Events stream of one blob's committed changes.
#[utoipa::path(
    get,
    path = "/v1/blobs/{ref}/events",
    params(
        ("ref" = String, Path, description = "64 hexadecimal characters (case-insensitive)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume: the last version seen")
    ),
    responses(
        (status = 200, description = "`event: changed`, `id: <version>`, `data: {\"version\":v}` (with `\"deleted\":true` for a delete)", content_type = "text/event-stream"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn blob_events(
    State(state): State<AppState>,
    token: Token,
    Path(r): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    let r = parse_ref(&r)?;
    // The stream ends when the token expires.
    let expiry = token.0.expiry();
    let bucket = token.0.bucket;
    // Subscribe before reading, so no change falls between the two.
    let mut changes = state.changes().subscribe();
    let last_seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut first = None;
    if let Some(seen) = last_seen {
        let current = state.store().get(&bucket, &r).await?;
        if let Some(blob) = current.filter(|b| b.version > seen) {
            first = Some(changed_event(blob.version, blob.deleted));
        }
    }
    let keep_alive = KeepAlive::new().interval(state.stream_keep_alive());
    let stream = async_stream(move |tx| async move {
        if let Some(event) = first
            && tx.send(event).await.is_err()
        {
            return;
        }
        let closing = state.changes().closing();
        tokio::pin!(closing, expiry);
        loop {
            let received = tokio::select! {
                received = changes.recv() => received,
                () = &mut closing => return,
                () = &mut expiry => return,
            };
            let event = match received {
                Ok(Some(change)) if change.bucket == bucket && change.r == r => {
                    changed_event(change.version, change.deleted)
                }
                Ok(Some(_)) => continue,
                // Fell behind, or changes of other nodes may have been missed: say where the
                // blob is now.
                Ok(None) | Err(RecvError::Lagged(_)) => {
                    match state.store().get(&bucket, &r).await {
                        Ok(Some(blob)) => changed_event(blob.version, blob.deleted),
                        _ => continue,
                    }
                }
                Err(RecvError::Closed) => return,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(keep_alive))
}

fn changed_event(version: u64, deleted: bool) -> Event {
    let data = if deleted {
        json!({ "version": version, "deleted": true })
    } else {
        json!({ "version": version })
    };
    Event::default()
        .event("changed")
        .id(version.to_string())
        .data(data.to_string())
}

/// Items a response stream holds for a client that reads slowly. The feeding task waits when
/// it is full (so a stalled client holds bounded memory); the broadcasts it reads from are
/// bounded too, and a feeder that falls behind them recovers from the store.
const STREAM_QUEUE: usize = 64;

/// A stream fed by a task through a bounded channel: `body` gets the sender, and ends when a
/// send fails (the client left).
fn async_stream<T, F, Fut>(body: F) -> impl Stream<Item = std::result::Result<T, Infallible>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<T>(STREAM_QUEUE);
    let task = tokio::spawn(body(tx));
    futures_util::stream::unfold((rx, AbortOnDrop(task)), |(mut rx, task)| async move {
        rx.recv().await.map(|event| (Ok(event), (rx, task)))
    })
}

/// Stops the feeding task when the client goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/v1/openapi.json", responses((status = 200, description = "This document")))]
async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "Up")))]
pub(crate) async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// The storage takes writes.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "Ready"), (status = 503, body = ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Response {
    if state.store().writable().await {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "Storage is not writable" })),
        )
            .into_response()
    }
}
