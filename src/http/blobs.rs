//! `/v1/blobs`: the same versioned blobs as the Socket.IO protocol, with ETags as versions.
//!
//! A write here goes through the same store and locks as a Socket.IO `set`, and is announced
//! the same way (`changed` to the Socket.IO room, an event to the HTTP streams).

use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{AccessToken, Token};
use super::error::{ApiError, ErrorBody, Result};
use super::header_value;
use super::paging::{self, Page};
use crate::clock::now_ms;
use crate::edge::client_addr;
use crate::names::{Bucket, Ref};
use crate::serve::changes::Change;
use crate::serve::state::AppState;
use crate::storage::store::{Blob, Edit, Expect, SetOutcome, SetRequest, live};

pub(super) fn parse_ref(text: &str) -> Result<Ref> {
    Ref::parse(text).ok_or(ApiError::bad(
        "Invalid reference: expected 64 hexadecimal characters",
    ))
}

fn etag(version: u64) -> HeaderValue {
    header_value(format!("\"{version}\""))
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
    let bad = || ApiError::bad("Malformed precondition: expected \"*\" or a quoted version");
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
    header_value(httpdate::fmt_http_date(time))
}

/// 200 with the bytes (204 without data), `ETag` and `Last-Modified`. A blob's bytes are
/// whatever a token holder wrote, so they never run as a page of this origin (where tokens
/// live): no type sniffing, and a sandbox for anything a browser opens.
fn blob_response(status: StatusCode, blob: &Blob) -> Result<Response> {
    let mut response = match &blob.data {
        Some(data) => {
            let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(data.trim_end_matches('='))
                .map_err(|_| ApiError::bad("The stored data is not valid base64"))?;
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
    super::inert(headers);
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
        None => Err(ApiError::Absent),
    }
}

/// Reads a blob.
#[utoipa::path(
    get,
    path = "/v1/blobs/{ref}",
    operation_id = "get_blob",
    params(("ref" = String, Path, description = "64 hexadecimal characters (case-insensitive)"), AccessToken),
    responses(
        (status = 200, description = "The blob's bytes; `ETag` is its version", content_type = "application/octet-stream"),
        (status = 204, description = "The blob has a version and no data"),
        (status = 304, description = "`If-None-Match` names the current version"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn get(
    State(state): State<AppState>,
    token: Token,
    Path(r): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let r = parse_ref(&r)?;
    let blob = live(state.store().get(&token.0.bucket, &r).await?).ok_or(ApiError::NotFound)?;
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
    operation_id = "put_blob",
    params(("ref" = String, Path, description = "64 hexadecimal characters (case-insensitive)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Updated; `ETag` is the new version"),
        (status = 201, description = "Created; `ETag` is the new version"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 412, description = "The precondition failed: the current `ETag` and bytes"),
        (status = 413, body = ErrorBody), (status = 428, body = ErrorBody),
        (status = 507, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn put(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    token: Token,
    Path(r): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let bucket = token.writer()?.clone();
    let r = parse_ref(&r)?;
    let limit = state.config().max_data_bytes;
    // The body limit layer refuses larger bodies while they arrive (chunked ones included).
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(limit as u64),
        // The client stopped sending (`BODY_TIMEOUT`) or went away: nothing is written.
        _ => ApiError::Body,
    })?;
    let expect = match (
        condition(&headers, header::IF_MATCH)?,
        condition(&headers, header::IF_NONE_MATCH)?,
    ) {
        (Some(Condition::Versions(v)), None) if v.len() == 1 => Expect::Version(v[0]),
        (None, Some(Condition::Any)) => Expect::Absent,
        (None, None) => Expect::Unconditional,
        _ => {
            return Err(ApiError::bad(
                "Use one precondition: If-Match with one version, or If-None-Match: *",
            ));
        }
    };
    let edit = Edit::Put(Some(STANDARD.encode(&body)));
    write(&state, &peer, &headers, (bucket, r), edit, expect).await
}

/// Deletes a blob (leaving a tombstone that keeps its version); needs `If-Match`.
#[utoipa::path(
    delete,
    path = "/v1/blobs/{ref}",
    operation_id = "delete_blob",
    params(("ref" = String, Path, description = "64 hexadecimal characters (case-insensitive)")),
    responses(
        (status = 204, description = "Deleted; `ETag` is the tombstone's version"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 412, description = "The precondition failed: the current `ETag` and bytes"),
        (status = 428, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn delete(
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
        Some(_) => return Err(ApiError::bad("If-Match must name one version")),
        None => return Err(ApiError::PreconditionRequired),
    };
    write(&state, &peer, &headers, (bucket, r), Edit::Delete, expect).await
}

/// Runs a write of the blob `(bucket, r)` and answers it; committed writes are announced to
/// every protocol.
async fn write(
    state: &AppState,
    peer: &SocketAddr,
    headers: &HeaderMap,
    (bucket, r): (Bucket, Ref),
    edit: Edit,
    expect: Expect,
) -> Result<Response> {
    let deleted = edit == Edit::Delete;
    let updating = matches!(expect, Expect::Version(_));
    let request = SetRequest {
        edit,
        expect,
        ip: client_addr::client_address(peer.ip(), headers, &state.config().trusted_proxies)
            .to_string(),
        now: now_ms(),
        id: None,
    };
    match state.set_blob(&bucket, &r, request).await? {
        SetOutcome::Committed { version, .. } => {
            tracing::debug!(%bucket, r#ref = %r, version, deleted, "committed over HTTP");
            state.changes().publish(
                Change {
                    bucket,
                    blob_ref: r,
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
        // Only a write with an id is ever repeated, and HTTP writes carry none.
        SetOutcome::Repeated { version } => {
            let mut response = StatusCode::OK.into_response();
            response.headers_mut().insert(header::ETAG, etag(version));
            Ok(response)
        }
        SetOutcome::PreconditionRequired(current) => {
            let mut response = ApiError::PreconditionRequired.into_response();
            response
                .headers_mut()
                .insert(header::ETAG, etag(current.version));
            Ok(response)
        }
    }
}

/// One entry of the listing.
#[derive(Serialize, ToSchema)]
pub(super) struct BlobEntry {
    r#ref: String,
    version: u64,
    /// Bytes of data.
    size: usize,
    /// Last change, milliseconds since the epoch.
    updated: u64,
}

/// Lists the bucket's blobs in ref order.
#[utoipa::path(
    get,
    path = "/v1/blobs",
    operation_id = "list_blobs",
    params(paging::After, AccessToken),
    responses((status = 200, body = Page<BlobEntry>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn list(
    State(state): State<AppState>,
    token: Token,
    query: std::result::Result<Query<paging::After>, QueryRejection>,
) -> Result<Json<Page<BlobEntry>>> {
    let Query(query) = query
        .map_err(|_| ApiError::bad("Invalid query: expected after=<ref> and limit=<1 to 1000>"))?;
    let limit = paging::limit(query.limit)?;
    let after = query.after.as_deref().map(parse_ref).transpose()?;
    let found = state
        .store()
        .list(&token.0.bucket, after.as_ref(), limit + 1)
        .await?;
    let entry = |(r, listed): (Ref, crate::storage::store::Listed)| BlobEntry {
        r#ref: r.to_string(),
        version: listed.version,
        size: listed.size,
        updated: listed.updated,
    };
    Ok(Json(paging::page(found, limit, entry, |e| e.r#ref.clone())))
}
