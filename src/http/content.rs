//! The content-addressed blob HTTP surface, as NodalMerge clients speak it: `/blobs/{hash}`.
//!
//! The bucket is the token's (see [`super::auth`]: on GET and HEAD also `access_token`), or,
//! on a direct transfer URL, the one the URL was signed for. Error bodies are `{ "error": "<reason>" }` with the short lower-case reasons of that
//! contract (`"not found"`, `"hash mismatch"`, `"non-canonical hash"`, `"unauthorized"`).
//! Bodies stream both ways; nothing here holds a whole blob in memory.

use std::io;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::TryStreamExt;
use http_range_header::RangeUnsatisfiableError;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;
use utoipa::ToSchema;

use axum::Json;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;

use super::auth::{AccessToken, Caller, SignedQuery, Token};
use super::error::{ApiError, ErrorBody, Result};
use super::header_value;
use super::paging::{self, Page};

use crate::clock::now_unix;
use crate::names::{Bucket, ContentHash};
use crate::serve::state::AppState;
use crate::storage::content;

/// Bytes read from storage per body chunk: large enough that a big download is a few dozen
/// reads per MiB rather than hundreds, small enough to keep a download's memory flat.
const READ_CHUNK: usize = 256 * 1024;

/// The routes; the caller adds the state.
pub fn router() -> Router<AppState> {
    Router::new()
        // With its slash, so a proxy that passes `/blobs/` on passes the listing too.
        .route("/blobs/", get(list_content))
        .route(
            "/blobs/{hash}",
            get(get_content).put(put_content).delete(delete_content),
        )
}

/// One content of the listing.
#[derive(Serialize, ToSchema)]
pub(super) struct ContentEntry {
    hash: String,
    /// Bytes.
    size: u64,
}

/// Lists the bucket's content in hash order.
#[utoipa::path(
    get,
    path = "/blobs/",
    operation_id = "list_content",
    params(paging::After, AccessToken),
    responses((status = 200, body = Page<ContentEntry>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn list_content(
    State(state): State<AppState>,
    token: Token,
    query: std::result::Result<Query<paging::After>, QueryRejection>,
) -> Result<Json<Page<ContentEntry>>> {
    let Query(query) = query
        .map_err(|_| ApiError::bad("Invalid query: expected after=<hash> and limit=<1 to 1000>"))?;
    let limit = paging::limit(query.limit)?;
    let after = match query.after.as_deref() {
        None => None,
        Some(text) => Some(ContentHash::parse(text).ok_or(ApiError::bad("non-canonical hash"))?),
    };
    let found = state
        .content()
        .list(&token.0.bucket, after.as_ref(), limit + 1)
        .await?;
    let entry = |(hash, size): (ContentHash, u64)| ContentEntry {
        hash: hash.to_string(),
        size,
    };
    Ok(Json(paging::page(found, limit, entry, |e| e.hash.clone())))
}

/// What a PUT stored.
#[derive(Serialize, ToSchema)]
pub(super) struct StoredBody {
    hash: String,
    size: u64,
}

/// Who may do what on this request.
pub(super) struct Access {
    bucket: Bucket,
    may_write: bool,
    /// Through a direct URL (the Socket.IO flow announces what arrives this way).
    direct: bool,
}

/// The content a request names, and what the request may do with it: the checks every route
/// makes first (a canonical hash, then a token or a signed URL).
pub(super) struct Target {
    hash: ContentHash,
    access: Access,
}

impl FromRequestParts<AppState> for Target {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let Path(hash) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NonCanonical)?;
        let hash = ContentHash::parse(&hash).ok_or(ApiError::NonCanonical)?;
        let access = match Caller::from_request_parts(parts, state).await? {
            Caller::Token(grant) => Access {
                bucket: grant.bucket,
                may_write: !grant.read_only,
                direct: false,
            },
            Caller::Signed(signature) => {
                // HEAD is a GET without the body.
                let method = if parts.method == Method::HEAD {
                    &Method::GET
                } else {
                    &parts.method
                };
                state.signed().verify(
                    method,
                    &signature.bucket,
                    &hash,
                    signature.exp,
                    &signature.sig,
                    now_unix(),
                )?;
                Access {
                    bucket: signature.bucket,
                    may_write: true,
                    direct: true,
                }
            }
        };
        Ok(Self { hash, access })
    }
}

impl Target {
    /// The bucket, when the request may change it.
    fn writable_bucket(&self) -> Result<&Bucket> {
        if self.access.may_write {
            Ok(&self.access.bucket)
        } else {
            Err(ApiError::ReadOnly)
        }
    }
}

fn etag(hash: &ContentHash) -> HeaderValue {
    header_value(format!("\"{hash}\""))
}

/// Whether a precondition header (`If-None-Match`, `If-Range`) names this content.
fn names_content(headers: &HeaderMap, name: header::HeaderName, hash: &ContentHash) -> bool {
    let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let tag = format!("\"{hash}\"");
    value
        .split(',')
        .any(|t| t.trim() == "*" || t.trim() == tag || t.trim() == format!("W/{tag}"))
}

/// The one byte range to serve, `None` for the whole content. Several ranges, or a range the
/// header does not state clearly, are answered with the whole content, as RFC 9110 allows.
fn byte_range(headers: &HeaderMap, hash: &ContentHash, size: u64) -> Result<Option<(u64, u64)>> {
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if headers.contains_key(header::IF_RANGE) && !names_content(headers, header::IF_RANGE, hash) {
        return Ok(None);
    }
    let ranges = match http_range_header::parse_range_header(range).map(|r| r.validate(size)) {
        Ok(Ok(ranges)) => ranges,
        Err(RangeUnsatisfiableError::Invalid(_)) | Ok(Err(RangeUnsatisfiableError::Invalid(_))) => {
            return Ok(None);
        }
        Err(_) | Ok(Err(_)) => return Err(ApiError::Range(size)),
    };
    Ok(match ranges.as_slice() {
        [one] => Some((*one.start(), *one.end())),
        _ => None,
    })
}

/// Whether a browser may show content of this type in place: media and plain formats that
/// cannot carry script (not HTML, SVG or XML).
fn shown_inline(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let (kind, subtype) = essence.split_once('/').unwrap_or((&essence, ""));
    match kind {
        "image" => subtype != "svg+xml",
        "audio" | "video" => true,
        _ => matches!(
            essence.as_str(),
            "application/octet-stream" | "application/pdf" | "application/json" | "text/plain"
        ),
    }
}

/// Reads content: 200 with the bytes, 206 for a range, 304 when `If-None-Match` names it.
/// `HEAD` answers the same without the body.
#[utoipa::path(
    get,
    path = "/blobs/{hash}",
    params(
        ("hash" = String, Path, description = "BLAKE3 hash of the content: 64 lower-case hex characters"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-1023`"),
        SignedQuery, AccessToken
    ),
    responses(
        (status = 200, description = "The bytes; `ETag` is the quoted hash", content_type = "application/octet-stream"),
        (status = 206, description = "The requested range, with `Content-Range`", content_type = "application/octet-stream"),
        (status = 304, description = "`If-None-Match` names this content"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 416, body = ErrorBody)
    ),
    security(("bearer" = []), ())
)]
pub(super) async fn get_content(
    State(state): State<AppState>,
    Target { hash, access }: Target,
    method: Method,
    headers: HeaderMap,
) -> Result<Response> {
    let read = Read {
        store: state.content(),
        bucket: &access.bucket,
        hash: &hash,
        method: &method,
        headers: &headers,
    };
    serve(read, "application/octet-stream").await
}

/// A read of stored content, as a request asks for it.
pub(crate) struct Read<'a> {
    pub store: &'a dyn content::ContentStore,
    pub bucket: &'a Bucket,
    pub hash: &'a ContentHash,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

/// The response to a read of content: 200 with the bytes, 206 for one range, 304 when
/// `If-None-Match` names it, 416 for a range outside it; `ETag` is the quoted hash.
///
/// What it costs follows what is asked: `HEAD` and 304 read nothing (the size is the file's);
/// a full read is checked against the hash as it streams; a range reads content checked
/// beforehand (once per file, see the content store).
pub(crate) async fn serve(read: Read<'_>, content_type: &str) -> Result<Response> {
    let Read {
        store,
        bucket,
        hash,
        method,
        headers,
    } = read;
    let size = store.size(bucket, hash).await?.ok_or(ApiError::NotFound)?;
    if names_content(headers, header::IF_NONE_MATCH, hash) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response.headers_mut().insert(header::ETAG, etag(hash));
        return Ok(response);
    }
    let range = byte_range(headers, hash, size)?;
    let (status, start, len) = match range {
        Some((first, last)) => (StatusCode::PARTIAL_CONTENT, first, last - first + 1),
        None => (StatusCode::OK, 0, size),
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        let opened = match range {
            Some(_) => store.open(bucket, hash).await?,
            None => store.stream(bucket, hash).await?,
        };
        let mut content = opened.ok_or(ApiError::NotFound)?;
        if content.size != size {
            // Replaced between the two looks (a repair): the size said is no longer true.
            return Err(ApiError::NotFound);
        }
        if start > 0 {
            content
                .reader
                .seek(io::SeekFrom::Start(start))
                .await
                .map_err(|e| ApiError::Storage(Box::new(e)))?;
        }
        Body::from_stream(ReaderStream::with_capacity(
            content.reader.take(len),
            READ_CHUNK,
        ))
    };
    let mut response = (status, body).into_response();
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    out.insert(header::ETAG, etag(hash));
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Uploaded bytes must never run as a page of this origin: inert, and a download for any
    // type that could carry script.
    super::inert(out);
    if !shown_inline(content_type) {
        out.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment"),
        );
    }
    // The bytes behind a name never change; they are private to the bucket.
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    if let Some((first, last)) = range {
        out.insert(
            header::CONTENT_RANGE,
            header_value(format!("bytes {first}-{last}/{}", size)),
        );
    }
    Ok(response)
}

/// Stores content: 201 when new, 200 when it was already there; 422 when the bytes do not
/// hash to `{hash}`, 413 over the limit, 507 past the bucket's quota or the server's disk
/// reserve (both checked while the body arrives).
#[utoipa::path(
    put,
    path = "/blobs/{hash}",
    params(
        ("hash" = String, Path, description = "BLAKE3 hash of the body: 64 lower-case hex characters"),
        SignedQuery
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Already present", body = StoredBody),
        (status = 201, description = "Stored", body = StoredBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 507, body = ErrorBody)
    ),
    security(("bearer" = []), ())
)]
pub(super) async fn put_content(
    State(state): State<AppState>,
    target: Target,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let bucket = target.writable_bucket()?;
    let hash = &target.hash;
    let encoded = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(ApiError::Encoded);
    }
    let limit = state.config().content_max_bytes;
    let declared = crate::edge::reply::declared_length(&headers);
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::TooLarge(limit));
    }
    let stream = body.into_data_stream().map_err(io::Error::other);
    let stored = state
        .put_content(bucket, Some(hash), Box::pin(stream))
        .await?;
    if stored.created {
        tracing::debug!(%bucket, %hash, size = stored.size, "content stored over HTTP");
        // Content sent to a direct URL is announced by the `blob-uploaded` that follows it.
        if !target.access.direct {
            state
                .changes()
                .announce_content(bucket, std::slice::from_ref(hash), None);
        }
    }
    let status = if stored.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = StoredBody {
        hash: stored.hash.to_string(),
        size: stored.size,
    };
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(header::ETAG, etag(hash));
    Ok(response)
}

/// Removes content: 204, or 404 when there is none. Needs a write token.
#[utoipa::path(
    delete,
    path = "/blobs/{hash}",
    params(("hash" = String, Path, description = "BLAKE3 hash of the content: 64 lower-case hex characters")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn delete_content(
    State(state): State<AppState>,
    target: Target,
) -> Result<Response> {
    let bucket = target.writable_bucket()?;
    let hash = &target.hash;
    // Bytes that Blob Service uploads also refer to go to that service instead.
    if state.service().delete_shared(bucket, hash).await? {
        tracing::debug!(%bucket, %hash, "content deleted");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound)
    }
}
