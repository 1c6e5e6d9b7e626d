//! `/v1/blobs/{ref}/events`: one blob's committed changes as Server-Sent Events.

use std::convert::Infallible;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::header::HeaderMap;
use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::auth::{AccessToken, Token};
use super::blobs::parse_ref;
use super::error::{ApiError, ErrorBody, Result};
use crate::edge::admission::SessionSlot;
use crate::edge::client_addr;
use crate::serve::state::AppState;

/// A long-lived stream's place among the server's connections: it counts against
/// `MAX_CONNECTIONS` and `MAX_CONNECTIONS_PER_IP` like a Socket.IO session, for as long as the
/// stream is open (move it into the stream). Refused: 503 when the server is full, 429 when
/// the client's address is.
///
/// Streams have no cap of their own per token or bucket: every visitor of an app holds its
/// bucket's token, so such a cap would let one visitor shut the others out.
pub(super) struct StreamSlot {
    _slot: SessionSlot,
}

impl FromRequestParts<AppState> for StreamSlot {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip())
            .ok_or(ApiError::NotFound)?;
        let address =
            client_addr::client_address(peer, &parts.headers, &state.config().trusted_proxies);
        let slot = state
            .admission()
            .sessions
            .acquire(address)
            .inspect_err(|e| {
                tracing::info!(%address, "stream refused: {e}");
            })?;
        Ok(Self { _slot: slot })
    }
}

/// A Server-Sent Events stream of one blob's committed changes.
#[utoipa::path(
    get,
    path = "/v1/blobs/{ref}/events",
    operation_id = "blob_events",
    params(
        ("ref" = String, Path, description = "64 hexadecimal characters (case-insensitive)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume: the last version seen"),
        AccessToken
    ),
    responses(
        (status = 200, description = "`event: changed`, `id: <version>`, `data: {\"version\":v}` (with `\"deleted\":true` for a delete)", content_type = "text/event-stream"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 429, description = "The client's address holds `MAX_CONNECTIONS_PER_IP` connections", body = ErrorBody),
        (status = 503, description = "The server holds `MAX_CONNECTIONS` connections", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn follow(
    State(state): State<AppState>,
    token: Token,
    Path(r): Path<String>,
    headers: HeaderMap,
    slot: StreamSlot,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    let r = parse_ref(&r)?;
    // The stream ends when the token expires.
    let expiry = state.grant_ends(&token.0);
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
    let keep_alive = KeepAlive::new().interval(state.config().stream_keep_alive);
    // Polled only as the client reads: a client that stops reading holds this one stream.
    let stream = async_stream::stream! {
        let _slot = slot;
        if let Some(event) = first {
            yield Ok(event);
        }
        let closing = state.changes().shutdown();
        tokio::pin!(closing, expiry);
        loop {
            let received = tokio::select! {
                received = changes.recv() => received,
                () = &mut closing => break,
                () = &mut expiry => break,
            };
            let event = match received {
                Ok(Some(change)) if change.bucket == bucket && change.blob_ref == r => {
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
                Err(RecvError::Closed) => break,
            };
            yield Ok::<_, Infallible>(event);
        }
    };
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
