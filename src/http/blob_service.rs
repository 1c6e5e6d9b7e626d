//! The Blob Service HTTP API, as in ActyxOS: `POST /api/v1/blobs` (multipart upload with
//! `semantics` and `retentionPolicy`), reads by handle, listing by semantics, and the metadata
//! event stream `POST /api/v1/events/subscribe`.
//!
//! The bucket is the token's (see [`super::auth`]); a refused upload stores nothing.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};

use super::auth::{AccessToken, Token};
use super::change_stream::StreamSlot;
use super::content::{Read, serve};
use super::error::{ApiError, ErrorBody, Result};
use super::paging::{self, Page};
use crate::blob_service::{Metadata, Record, STREAM_NAME, STREAM_SEMANTICS, Shown, Upload};
use crate::clock::now_ms;
use crate::edge::client_addr;
use crate::names::Handle;
use crate::serve::state::AppState;
use crate::storage::content::{self, Incoming};

/// Largest `metadata` part, in bytes.
const MAX_METADATA: usize = 64 * 1024;
/// Room in an upload's body for its parts' headers and its metadata.
const MULTIPART_OVERHEAD: u64 = 1024 * 1024;
/// Longest stored content type and file name, in bytes.
const MAX_CONTENT_TYPE: usize = 255;
const MAX_FILE_NAME: usize = 1024;

/// The routes; the caller adds the state. `max_bytes` is the largest upload.
pub fn router(max_bytes: u64) -> Router<AppState> {
    let body_limit =
        usize::try_from(max_bytes.saturating_add(MULTIPART_OVERHEAD)).unwrap_or(usize::MAX);
    // Each route its own body limit: the upload's is the content limit, a subscription's a
    // few kilobytes of JSON.
    Router::new()
        .route(
            "/api/v1/blobs",
            get(list)
                .post(upload)
                .layer(DefaultBodyLimit::max(body_limit)),
        )
        .route("/api/v1/blobs/{handle}", get(read).delete(remove))
        .route("/api/v1/blobs/{handle}/metadata", get(metadata))
        .route(
            "/api/v1/events/subscribe",
            post(subscribe).layer(DefaultBodyLimit::max(SUBSCRIBE_BODY_LIMIT)),
        )
}

/// Largest subscribe request body, in bytes.
const SUBSCRIBE_BODY_LIMIT: usize = 64 * 1024;

/// Most subscriptions in one subscribe request.
const MAX_SUBSCRIPTIONS: usize = 100;

fn parse_handle(text: &str) -> Result<Handle> {
    Handle::parse(text)
        .ok_or_else(|| ApiError::bad("Invalid handle: expected 32 lower-case hex characters"))
}

/// A multipart error as the client should see it (413 when the body is over the limit).
fn multipart_error(error: MultipartError, limit: u64) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(limit)
    } else {
        ApiError::bad(format!("Malformed multipart body: {}", error.body_text()))
    }
}

/// Stores an upload: 201 `{ "handle": … }`.
#[utoipa::path(
    post,
    path = "/api/v1/blobs",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored: `{ \"handle\": … }`"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 507, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn upload(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    token: Token,
    headers: HeaderMap,
    multipart: std::result::Result<Multipart, MultipartRejection>,
) -> Result<Response> {
    let bucket = token.writer()?;
    let limit = state.config().content_max_bytes;
    // A place for the record first: a bucket at its record quota refuses before the body.
    let hold = state.quota().admit(bucket, 0, 1).await?;
    let mut multipart = multipart.map_err(|_| {
        ApiError::bad("Expected a multipart/form-data body with the parts blob and metadata")
    })?;
    let now = now_ms();
    let mut metadata = None;
    let mut blob: Option<(Box<dyn Incoming>, String, Option<String>)> = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, limit))?
    {
        match field.name() {
            Some("metadata") if metadata.is_none() => {
                let text = read_small(field, limit).await?;
                let parsed: Metadata = serde_json::from_slice(&text).map_err(|e| {
                    ApiError::bad(format!("The metadata part is not valid metadata JSON: {e}"))
                })?;
                metadata = Some(
                    parsed
                        .validate(now)
                        .map_err(|e| ApiError::bad(e.to_string()))?,
                );
            }
            Some("blob") if blob.is_none() => {
                let content_type = field
                    .content_type()
                    .unwrap_or("application/octet-stream")
                    .to_owned();
                if content_type.len() > MAX_CONTENT_TYPE
                    || HeaderValue::from_str(&content_type).is_err()
                {
                    return Err(ApiError::bad(
                        "The blob part's Content-Type is not a valid media type",
                    ));
                }
                let file_name = field
                    .file_name()
                    .map(|name| name.chars().take(MAX_FILE_NAME).collect::<String>());
                let body = field.map_err(io::Error::other);
                let body = content::metered(Box::pin(body), &hold);
                let incoming = state
                    .content()
                    .receive(bucket, body, limit)
                    .await
                    .map_err(|e| match e {
                        content::Error::TooLarge(limit) => ApiError::TooLarge(limit),
                        content::Error::Refused(refusal) => ApiError::InsufficientStorage(refusal),
                        content::Error::Body(cause) => {
                            ApiError::bad(format!("The blob part broke off: {cause}"))
                        }
                        other => other.into(),
                    })?;
                blob = Some((incoming, content_type, file_name));
            }
            Some(name @ ("metadata" | "blob")) => {
                return Err(ApiError::bad(format!(
                    "The part {name} appears more than once"
                )));
            }
            _ => {
                return Err(ApiError::bad(
                    "Unexpected part: an upload has the parts blob and metadata",
                ));
            }
        }
    }
    let (Some((incoming, content_type, file_name)), Some((semantics, retention_policy))) =
        (blob, metadata)
    else {
        return Err(ApiError::bad(
            "An upload needs both parts: blob (the file) and metadata (JSON)",
        ));
    };
    let upload = Upload {
        semantics,
        retention_policy,
        content_type,
        file_name,
        uploader: client_addr::client_address(peer.ip(), &headers, &state.config().trusted_proxies)
            .to_string(),
        now,
    };
    let announcer = state.clone();
    let announced = bucket.clone();
    let announce = move |record: &std::sync::Arc<Record>| {
        announcer.changes().announce_metadata(&announced, record);
    };
    let record = state
        .service()
        .upload(bucket, incoming, upload, announce)
        .await?;
    // Counted by the service by now: the reservation goes.
    drop(hold);
    tracing::debug!(%bucket, handle = %record.handle, size = record.size, "blob service upload stored");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "handle": record.handle })),
    )
        .into_response())
}

/// The bytes of a small part (the metadata), refused past [`MAX_METADATA`].
async fn read_small(mut field: Field<'_>, limit: u64) -> Result<Vec<u8>> {
    let mut text = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
        if text.len() + chunk.len() > MAX_METADATA {
            return Err(ApiError::bad(format!(
                "The metadata part is larger than {MAX_METADATA} bytes"
            )));
        }
        text.extend_from_slice(&chunk);
    }
    Ok(text)
}

/// The live record of a handle in the token's bucket.
async fn live_record(
    state: &AppState,
    token: &Token,
    handle: &str,
) -> Result<std::sync::Arc<Record>> {
    let handle = parse_handle(handle)?;
    state
        .service()
        .get(&token.0.bucket, &handle, now_ms())
        .await?
        .ok_or(ApiError::NotFound)
}

/// The bytes of an upload, with its `Content-Type`; ranges as for content.
#[utoipa::path(
    get,
    path = "/api/v1/blobs/{handle}",
    params(("handle" = String, Path, description = "32 lower-case hex characters"), AccessToken),
    responses(
        (status = 200, description = "The bytes, with the upload's `Content-Type`; `ETag` is the quoted content hash"),
        (status = 206, description = "One byte range"),
        (status = 304, description = "`If-None-Match` names this content"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 416, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn read(
    State(state): State<AppState>,
    token: Token,
    Path(handle): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response> {
    let record = live_record(&state, &token, &handle).await?;
    let hash = record.content_hash().ok_or(ApiError::NotFound)?;
    let read = Read {
        store: state.content(),
        bucket: &token.0.bucket,
        hash: &hash,
        method: &method,
        headers: &headers,
    };
    match serve(read, &record.content_type).await {
        Err(ApiError::NotFound) => {
            tracing::error!(bucket = %token.0.bucket, handle = %record.handle, %hash, "the content of a live record is missing");
            Err(ApiError::NotFound)
        }
        served => Ok(served?),
    }
}

/// The record of an upload (`uploader` only with `EXPOSE_UPLOADER_IP`).
#[utoipa::path(
    get,
    path = "/api/v1/blobs/{handle}/metadata",
    params(("handle" = String, Path, description = "32 lower-case hex characters"), AccessToken),
    responses(
        (status = 200, body = Record),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn metadata(
    State(state): State<AppState>,
    token: Token,
    Path(handle): Path<String>,
) -> Result<Json<Shown>> {
    Ok(Json(Shown {
        record: live_record(&state, &token, &handle).await?,
        uploader: state.config().expose_uploader_ip,
    }))
}

/// Deletes an upload: 204.
#[utoipa::path(
    delete,
    path = "/api/v1/blobs/{handle}",
    params(("handle" = String, Path, description = "32 lower-case hex characters")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn remove(
    State(state): State<AppState>,
    token: Token,
    Path(handle): Path<String>,
) -> Result<Response> {
    let bucket = token.writer()?;
    let handle = parse_handle(&handle)?;
    if state.service().delete(bucket, &handle, now_ms()).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound)
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only uploads with this semantics.
    semantics: Option<String>,
    /// Page size, 1 to 1000 (100 by default).
    limit: Option<usize>,
    /// The `next` of the previous page.
    cursor: Option<String>,
}

/// A page cursor: `<created>-<handle>` of the page's last record.
fn parse_cursor(text: &str) -> Option<(u64, Handle)> {
    let (created, handle) = text.split_once('-')?;
    Some((created.parse().ok()?, Handle::parse(handle)?))
}

/// The bucket's live uploads, newest first: `{ "blobs": [record], "next"? }` (`uploader` only
/// with `EXPOSE_UPLOADER_IP`).
#[utoipa::path(
    get,
    path = "/api/v1/blobs",
    params(ListQuery, AccessToken),
    responses(
        (status = 200, body = Page<Record>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn list(
    State(state): State<AppState>,
    token: Token,
    query: std::result::Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page<Shown>>> {
    let Query(query) =
        query.map_err(|_| ApiError::bad("Invalid query: expected semantics, limit and cursor"))?;
    let limit = paging::limit(query.limit)?;
    let cursor = match query.cursor.as_deref() {
        Some(text) => Some(parse_cursor(text).ok_or_else(|| ApiError::bad("Invalid cursor"))?),
        None => None,
    };
    let (page, more) = state.service().list(
        &token.0.bucket,
        query.semantics.as_deref(),
        cursor.as_ref(),
        limit,
        now_ms(),
    );
    let uploader = state.config().expose_uploader_ip;
    let records = page
        .into_iter()
        .map(|record| Shown { record, uploader })
        .collect();
    Ok(Json(Page::new(records, more, |r: &Shown| {
        format!("{}-{}", r.record.created, r.record.handle)
    })))
}

/// One subscription of a subscribe request; the metadata stream matches a subscription that
/// names it or leaves the field out.
#[derive(Deserialize, ToSchema)]
pub(super) struct Subscription {
    name: Option<String>,
    semantics: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub(super) struct SubscribeRequest {
    subscriptions: Vec<Subscription>,
    /// Replay the live records created after this time (ms since the epoch) first.
    since: Option<u64>,
}

/// An upload's parts.
#[derive(ToSchema)]
#[allow(dead_code)] // the shape of the multipart body, for the OpenAPI document
pub(super) struct UploadForm {
    /// The file; its part's Content-Type and file name are kept.
    #[schema(value_type = String, format = Binary)]
    blob: Vec<u8>,
    /// JSON: `{ "semantics": "…", "retentionPolicy"?: { "policy": "keepForever" | "keepUntilTime" (with "until", ms) | "keepForDuration" (with "durationMs") } }`.
    metadata: String,
}

/// The metadata stream: one JSON record per line, one write per event, keep-alive newlines.
#[utoipa::path(
    post,
    path = "/api/v1/events/subscribe",
    request_body = SubscribeRequest,
    responses(
        (status = 200, description = "One metadata record (`handle`, `semantics`, `size`, `contentType`, `retentionPolicy`, `created`) per line; empty keep-alive lines while idle", content_type = "application/x-ndjson"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 429, description = "The client's address holds `MAX_CONNECTIONS_PER_IP` connections", body = ErrorBody),
        (status = 503, description = "The server holds `MAX_CONNECTIONS` connections", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn subscribe(
    State(state): State<AppState>,
    token: Token,
    slot: StreamSlot,
    request: std::result::Result<Json<SubscribeRequest>, JsonRejection>,
) -> Result<Response> {
    let Json(request) = request.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::TooLarge(SUBSCRIBE_BODY_LIMIT as u64);
        }
        ApiError::bad(format!(
            "Expected {{ \"subscriptions\": [{{ \"name\", \"semantics\" }}], \"since\"? }}: {}",
            e.body_text()
        ))
    })?;
    if request.subscriptions.len() > MAX_SUBSCRIPTIONS {
        return Err(ApiError::bad(format!(
            "At most {MAX_SUBSCRIPTIONS} subscriptions per request"
        )));
    }
    let wanted = request.subscriptions.iter().any(|s| {
        s.name.as_deref().is_none_or(|n| n == STREAM_NAME)
            && s.semantics.as_deref().is_none_or(|n| n == STREAM_SEMANTICS)
    });
    // The stream ends when the token expires.
    let expiry = state.grant_ends(&token.0);
    let bucket = token.0.bucket;
    let since = request.since.filter(|_| wanted);
    let (replay, mut live) = state.service().follow(&bucket, since, now_ms());
    // Polled only as the client reads: a client that stops reading holds this one stream.
    let stream = async_stream::stream! {
        let _slot = slot;
        let line = |record: &Record| Bytes::from(format!("{}\n", record.event()));
        // Records come in `created` order; this is the newest one sent.
        let mut last_sent = request.since.unwrap_or(0);
        for record in &replay {
            yield Ok::<_, Infallible>(line(record));
            last_sent = record.created;
        }
        let closing = state.changes().shutdown();
        tokio::pin!(closing, expiry);
        // A newline on an idle stream, so proxies and clients keep it open.
        let mut keep_alive = tokio::time::interval(state.config().stream_keep_alive);
        keep_alive.reset();
        loop {
            let received = tokio::select! {
                received = live.recv() => Some(received),
                _ = keep_alive.tick() => None,
                () = &mut closing => return,
                () = &mut expiry => return,
            };
            let Some(received) = received else {
                yield Ok::<_, Infallible>(Bytes::from_static(b"\n"));
                continue;
            };
            let records = match received {
                Ok((b, record)) if wanted && b == bucket => vec![record],
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) if !wanted => continue,
                // Fell behind the live records: the missed ones come from the records.
                Err(RecvError::Lagged(_)) => {
                    state.service().created_after(&bucket, last_sent, now_ms())
                }
                Err(RecvError::Closed) => return,
            };
            for record in records {
                if record.created <= last_sent {
                    continue;
                }
                yield Ok::<_, Infallible>(line(&record));
                last_sent = record.created;
                keep_alive.reset();
            }
        }
    };
    let mut response = Body::from_stream(stream).into_response();
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx: pass each event on at once.
    out.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
