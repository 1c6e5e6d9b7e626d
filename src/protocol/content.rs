//! The content-addressed blob flow over Socket.IO, as NodalMerge clients speak it.
//!
//! | client sends | reply (as the ack, or else as these events) |
//! |---|---|
//! | `blob-upload { blobs: [{ hash, data_b64 }] }` | `blob-upload-result { accepted: [hash], rejected: [{ hash, reason }] }` |
//! | `blob-request { hashes, redirect? }` | `blob-pack { blobs: [{ hash, data_b64 }], unavailable, deferred }`, and with `redirect`, `blob-redirect { redirects: [{ hash, url, expires_at_unix }] }` |
//! | `request-upload { hash, size, content_type? }` | `upload-granted { hash, url, expires_at_unix }` or `upload-denied { hash, reason }` |
//! | `blob-uploaded { hash }` | `blob-available { hash }` or `upload-rejected { hash, reason }` |
//!
//! With an ack, a reply made of several events comes as one object with all their fields. An
//! event refused as a whole (a malformed argument, the rate limit, a read-only `blob-upload`)
//! is answered `{ error, reason }` in the same way.
//! Every newly stored content is announced to the bucket's other sockets as
//! `blob-available { hash }`.
//!
//! A message must fit the transport's message limit: inline blobs are at most the data limit
//! (`MAX_DATA_BYTES`), a pack holds what fits and lists the rest as `deferred` (present, to
//! be asked for again or through a redirect), and larger content takes the direct path
//! (`request-upload`, or `blob-request` with `redirect`).

use axum::http::Method;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;

use super::events::{Reply, object};
use super::max_message_len;
use super::session::Session;
use crate::clock::now_unix;
use crate::names::ContentHash;
use crate::protocol::ack::AckError;
use crate::serve::state::Adopted;
use crate::storage::content;

/// Most entries (blobs or hashes) one message may carry.
const MAX_ENTRIES: usize = 1024;

/// Room left in a message for its framing and the JSON around each entry.
const FRAMING: usize = 64 * 1024;
const ENTRY_OVERHEAD: usize = 128;

/// The reason an inline blob is refused for its size.
const USE_DIRECT_PATH: &str =
    "too large for the inline path: send request-upload and PUT the bytes to the granted URL";

/// `blob-upload`: verifies and stores each inline blob.
pub(super) async fn upload<A: Adapter>(
    session: &Session<A>,
    socket: &SocketRef<A>,
    arg: Option<&Value>,
) -> Result<Reply, AckError> {
    if session.read_only {
        return Err(AckError::ReadOnly);
    }
    let entries = list(
        object(arg)?,
        "blobs",
        "expected { blobs: [{ hash, data_b64 }] }",
    )?;
    let max_chars = session.state.max_data_chars();
    // What the entries would add: refused as a whole when the bucket (or the disk) has no
    // room for it all; each entry is still held to the quota as it is stored.
    let adding = entries
        .iter()
        .filter_map(|e| e.get("data_b64").and_then(Value::as_str))
        .map(|data| (data.len() / 4 * 3) as u64)
        .sum::<u64>();
    drop(
        session
            .state
            .quota()
            .admit(&session.bucket, adding, 0)
            .await?,
    );
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    let mut created = Vec::new();
    for entry in entries {
        let named = entry.get("hash").cloned().unwrap_or(Value::Null);
        match store_inline(session, entry, max_chars).await {
            Ok(stored) => {
                accepted.push(json!(stored.hash.as_str()));
                if stored.created {
                    tracing::debug!(bucket = %session.bucket, hash = %stored.hash, "content stored inline");
                    created.push(stored.hash);
                }
            }
            Err(reason) => rejected.push(json!({ "hash": named, "reason": reason })),
        }
    }
    session
        .state
        .changes()
        .announce_content(&session.bucket, &created, Some(socket.id));
    let reply = json!({ "accepted": accepted, "rejected": rejected });
    Ok(Reply::Events(vec![("blob-upload-result", reply)]))
}

/// Stores one `{ hash, data_b64 }`, or says why not.
async fn store_inline<A: Adapter>(
    session: &Session<A>,
    entry: &Value,
    max_chars: usize,
) -> Result<content::Stored, String> {
    let hash = entry
        .get("hash")
        .and_then(Value::as_str)
        .and_then(ContentHash::parse)
        .ok_or("non-canonical hash")?;
    let data = entry
        .get("data_b64")
        .and_then(Value::as_str)
        .ok_or("data_b64 must be a base64 string")?;
    if data.len() > max_chars {
        return Err(USE_DIRECT_PATH.to_owned());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| "data_b64 is not valid base64")?;
    let body = futures_util::stream::iter([Ok(Bytes::from(bytes))]);
    let put = session
        .state
        .put_content(&session.bucket, Some(&hash), Box::pin(body));
    match put.await {
        Ok(stored) => Ok(stored),
        Err(content::Error::Mismatch) => Err("hash mismatch".to_owned()),
        Err(content::Error::TooLarge(limit)) => {
            Err(format!("over the size limit of {limit} bytes"))
        }
        Err(content::Error::Refused(refusal)) => Err(refusal.to_string()),
        Err(cause) => {
            tracing::error!(bucket = %session.bucket, %hash, "content storage failure: {cause}");
            Err("storage error".to_owned())
        }
    }
}

/// `blob-request`: the requested content inline, as far as it fits one message; with
/// `redirect`, large content as direct download URLs.
pub(super) async fn request<A: Adapter>(
    session: &Session<A>,
    arg: Option<&Value>,
) -> Result<Reply, AckError> {
    let params = object(arg)?;
    let hashes = list(params, "hashes", "expected { hashes: [hash], redirect? }")?;
    let redirect = match params.get("redirect") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(redirect)) => *redirect,
        Some(_) => return Err(AckError::InvalidArgument("redirect must be true or false")),
    };
    let state = &session.state;
    let threshold = state.config().content_redirect_bytes;
    // Room for the pack in one message, in base64 characters.
    let mut room = max_message_len(state.max_data_chars()) - FRAMING;
    let (mut blobs, mut unavailable, mut deferred, mut redirects) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for named in hashes {
        let Some(hash) = named.as_str().and_then(ContentHash::parse) else {
            unavailable.push(named.clone());
            continue;
        };
        // Largest content that still fits the pack (and, with redirects, the threshold).
        let mut inline_limit = (room.saturating_sub(ENTRY_OVERHEAD) / 4 * 3) as u64;
        if redirect {
            inline_limit = inline_limit.min(threshold);
        }
        match content::read_small(state.content(), &session.bucket, &hash, inline_limit).await? {
            None => unavailable.push(json!(hash.as_str())),
            Some(Ok(bytes)) => {
                let data = base64::engine::general_purpose::STANDARD.encode(&bytes);
                room = room.saturating_sub(data.len() + ENTRY_OVERHEAD);
                blobs.push(json!({ "hash": hash.as_str(), "data_b64": data }));
            }
            Some(Err(_size)) if redirect => {
                let url = state
                    .direct()
                    .grant(
                        &session.origin,
                        &Method::GET,
                        &session.bucket,
                        &hash,
                        now_unix(),
                    )
                    .await?;
                redirects.push(json!({
                    "hash": hash.as_str(),
                    "url": url.url,
                    "expires_at_unix": url.expires_at_unix,
                }));
            }
            Some(Err(_size)) => deferred.push(json!(hash.as_str())),
        }
    }
    let pack = json!({ "blobs": blobs, "unavailable": unavailable, "deferred": deferred });
    let mut events = vec![("blob-pack", pack)];
    if redirect {
        events.push(("blob-redirect", json!({ "redirects": redirects })));
    }
    Ok(Reply::Events(events))
}

/// `request-upload`: a direct upload URL, or why not.
pub(super) async fn request_upload<A: Adapter>(
    session: &Session<A>,
    arg: Option<&Value>,
) -> Result<Reply, AckError> {
    let params = object(arg)?;
    let named = params.get("hash").cloned().unwrap_or(Value::Null);
    let denied = |reason: String| {
        Ok(Reply::Events(vec![(
            "upload-denied",
            json!({ "hash": named, "reason": reason }),
        )]))
    };
    let Some(hash) = named.as_str().and_then(ContentHash::parse) else {
        return denied("non-canonical hash".to_owned());
    };
    if session.read_only {
        return denied("read-only token".to_owned());
    }
    let Some(size) = params.get("size").and_then(Value::as_u64) else {
        return denied("size must be the content's length in bytes".to_owned());
    };
    let limit = session.state.config().content_max_bytes;
    if size > limit {
        return denied(format!("over the size limit of {limit} bytes"));
    }
    if !matches!(
        params.get("content_type"),
        None | Some(Value::Null | Value::String(_))
    ) {
        return denied("content_type must be a string".to_owned());
    }
    if let Err(refused) = session.state.quota().admit(&session.bucket, size, 0).await {
        return match AckError::from(refused) {
            AckError::Refused(refusal) => denied(refusal.to_string()),
            other => Err(other),
        };
    }
    // Intact content is verified by reading it all: only when something is there at all.
    let content = session.state.content();
    if content.size(&session.bucket, &hash).await?.is_some()
        && content.open(&session.bucket, &hash).await?.is_some()
    {
        return denied("already present".to_owned());
    }
    let url = session
        .state
        .direct()
        .grant(
            &session.origin,
            &Method::PUT,
            &session.bucket,
            &hash,
            now_unix(),
        )
        .await?;
    Ok(Reply::Events(vec![(
        "upload-granted",
        json!({ "hash": hash.as_str(), "url": url.url, "expires_at_unix": url.expires_at_unix }),
    )]))
}

/// `blob-uploaded`: checks the content a client sent to its direct URL and announces it.
pub(super) async fn uploaded<A: Adapter>(
    session: &Session<A>,
    socket: &SocketRef<A>,
    arg: Option<&Value>,
) -> Result<Reply, AckError> {
    let params = object(arg)?;
    let named = params.get("hash").cloned().unwrap_or(Value::Null);
    let rejected = |reason: &str| {
        Ok(Reply::Events(vec![(
            "upload-rejected",
            json!({ "hash": named, "reason": reason }),
        )]))
    };
    let Some(hash) = named.as_str().and_then(ContentHash::parse) else {
        return rejected("non-canonical hash");
    };
    if session.read_only {
        return rejected("read-only token");
    }
    match session.state.adopt_content(&session.bucket, &hash).await? {
        Adopted::Yes => {}
        Adopted::No(None) => {
            return rejected(
                "no content with this hash arrived: PUT the exact bytes to the granted URL",
            );
        }
        Adopted::No(Some(room)) => {
            return rejected(&format!(
                "no content with this hash arrived, or it is larger than the {room} bytes \
                 left under the bucket's quota: PUT the exact bytes to the granted URL"
            ));
        }
    }
    tracing::debug!(bucket = %session.bucket, %hash, "direct upload confirmed");
    session.state.changes().announce_content(
        &session.bucket,
        std::slice::from_ref(&hash),
        Some(socket.id),
    );
    Ok(Reply::Events(vec![(
        "blob-available",
        json!({ "hash": hash.as_str() }),
    )]))
}

/// The array `params[key]`, of at most [`MAX_ENTRIES`] entries.
fn list<'a>(
    params: &'a Map<String, Value>,
    key: &str,
    shape: &'static str,
) -> Result<&'a Vec<Value>, AckError> {
    let entries = params
        .get(key)
        .and_then(Value::as_array)
        .ok_or(AckError::InvalidArgument(shape))?;
    if entries.len() > MAX_ENTRIES {
        return Err(AckError::InvalidArgument(
            "at most 1024 entries per message",
        ));
    }
    Ok(entries)
}
