//! The Socket.IO protocol of the original: authentication, and the `now`, `ref`, `get` and
//! `set` events with their acknowledgements, plus `changed` to the other subscribers of a blob.
//! The content-addressed blob flow ([`content`]) shares the connection, its token and its queue.
//! It uses the state and the change hub (`serve::state`, `serve::changes`), the edge's
//! admission, `auth` and storage; it never imports `http` or the server's assembly.
//!
//! Two properties shape this module:
//! - **Events take effect in the order a socket sent them.** socketioxide runs every async
//!   handler in its own task, so `ref` followed at once by `get` could run out of order. Our
//!   [`session::Handler`] therefore implements `MessageHandler` directly: socketioxide calls it
//!   synchronously, in arrival order, and it only appends the event to the socket's queue. One
//!   task per socket (started when the queue becomes non-empty, ended when it is empty, so idle
//!   sockets cost no task) runs the events one by one.
//! - **No event is ever missed.** Handlers are registered in the connect middleware, which
//!   socketioxide awaits before it sends CONNECT, so an event emitted on `connect` always finds
//!   its handler.
//!
//! This module never touches files: it validates, calls the store, and answers.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use axum::extract::ConnectInfo;
use ipnet::IpNet;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::adapter::{Adapter, LocalAdapter};
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;
use tokio_util::sync::CancellationToken;

use crate::cluster::NodesAdapter;
use crate::edge::admission::backpressure::Written;
use crate::edge::admission::rate::RateLimiter;
use crate::edge::admission::{self, PendingHandshake, SessionRefused};
use crate::edge::client_addr;
use crate::serve::changes::{self};
use crate::serve::state::AppState;

/// Smallest transport limit: room for a `set` of the documented maximum (1,048,576 base64
/// characters) with its framing. A larger frame disconnects only the client that sent it.
const MIN_MESSAGE_LEN: usize = 2 * 1024 * 1024;

/// Largest Socket.IO message accepted on either transport, for a `data` limit in characters.
pub fn max_message_len(max_data_chars: usize) -> usize {
    MIN_MESSAGE_LEN.max(max_data_chars + 64 * 1024)
}

/// The message of the connect error every refused handshake gets.
const ACCESS_DENIED: &str = "Access denied";

/// An acknowledgement with no argument: serialises as `[]`, so the callback gets `undefined`.
const NO_ARGS: [(); 0] = [];

pub mod ack;
pub mod content;
mod events;
mod session;

use session::{Handler, Queue, Session};

/// Mounts the protocol on the default namespace.
pub fn register(io: &SocketIo) {
    io.ns("/", on_connect.with(authenticate::<LocalAdapter>));
}

/// Mounts the protocol on the default namespace of a server whose rooms span several nodes
/// (the Redis adapter).
pub async fn register_cluster(
    io: &SocketIo<NodesAdapter>,
) -> Result<(), impl std::error::Error + use<>> {
    io.ns("/", on_connect.with(authenticate::<NodesAdapter>))
        .await
}

/// A refused handshake; the client's `connect_error` carries the message.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("{ACCESS_DENIED}")]
    AccessDenied,
    #[error(transparent)]
    Limit(#[from] SessionRefused),
}

/// Verifies the token of the handshake (`auth: { token }`), takes a connection slot and
/// prepares the socket. Runs before CONNECT is sent, which is why the event handlers are
/// registered here.
async fn authenticate<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    TryData(auth): TryData<Value>,
    State(state): State<AppState>,
) -> Result<(), Refused> {
    let token = auth
        .ok()
        .and_then(|a| a.get("token")?.as_str().map(str::to_owned));
    let Some(grant) = token.and_then(|t| state.authorize(&t)) else {
        tracing::debug!(sid = %socket.id, "handshake refused");
        return Err(Refused::AccessDenied);
    };
    let address = client_address(&socket, &state.config().trusted_proxies);
    let slot = state
        .admission()
        .sessions
        .acquire(address)
        .inspect_err(|e| {
            tracing::info!(sid = %socket.id, %address, "connection refused: {e}");
        })?;
    let parts = socket.req_parts();
    if let Some(pending) = parts.extensions.get::<PendingHandshake>() {
        pending.connected();
    }
    tracing::debug!(sid = %socket.id, bucket = %grant.bucket, read_only = grant.read_only, %address, "connected");
    let limits = state.admission().events;
    socket.join(changes::bucket_room(&grant.bucket));
    if state.changes().needs_own_room() {
        socket.join(socket.id.to_string());
    }
    let backlog = state.admission().backlog();
    // A WebSocket handshake's connection carries the session; a long-polling one's does not.
    let direct = parts
        .uri
        .query()
        .and_then(|q| admission::query_param(q, "transport"))
        == Some("websocket");
    let written = parts.extensions.get::<Written>().filter(|_| direct);
    state
        .admission()
        .backlogs
        .insert(socket.id.to_string(), &backlog, written);
    // Pushes to this socket (`changed`, `blob-available`) count against it too.
    socket.extensions.insert(backlog.clone());
    let ends = state.grant_ends(&grant);
    let session = Arc::new(Session {
        sid: socket.id,
        state: state.clone(),
        bucket: grant.bucket.clone(),
        read_only: grant.read_only,
        grant,
        backlog,
        ended: CancellationToken::new(),
        ip: address.to_string(),
        origin: origin(&socket, &state),
        slot: Mutex::new(Some(slot)),
        closed: AtomicBool::new(false),
        queue: Mutex::new(Queue {
            jobs: VecDeque::new(),
            running: false,
            subscribed: None,
            bytes: 0,
            watched: HashSet::new(),
            limiter: RateLimiter::new(limits.per_second, limits.burst),
        }),
    });
    // The token's `exp`, or its revocation, ends the connection, not only the handshake. The
    // timer holds neither the socket nor the session, so a connection that never completes is
    // freed at once; it ends with the session.
    let ended = session.ended.clone();
    let weak = Arc::downgrade(&session);
    let sid = socket.id;
    tokio::spawn(async move {
        tokio::select! {
            () = ends => {}
            () = ended.cancelled() => return,
        }
        if let (Some(session), Some(socket)) = (weak.upgrade(), io.get_socket(sid)) {
            session.expire(socket);
        }
    });
    for event in Event::ALL {
        let handler = Handler {
            event,
            session: session.clone(),
        };
        socket.on(event.name(), handler);
    }
    // Registered here rather than after CONNECT, so the slot is freed whatever happens next.
    socket.on_disconnect(
        async move |socket: SocketRef<A>, reason: DisconnectReason| {
            tracing::debug!(sid = %socket.id, ?reason, "disconnected");
            session.release();
        },
    );
    Ok(())
}

async fn on_connect() {}

/// This server's origin as the client reached it, for the direct URLs it is given:
/// `PUBLIC_URL`, else `http://` and the handshake's `Host`.
fn origin<A: Adapter>(socket: &SocketRef<A>, state: &AppState) -> String {
    if let Some(url) = &state.config().public_url {
        return url.clone();
    }
    let host = socket
        .req_parts()
        .headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// The client's address (see [`client_addr::client_address`]).
fn client_address<A: Adapter>(socket: &SocketRef<A>, trusted_proxies: &[IpNet]) -> IpAddr {
    let parts = socket.req_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |info| info.0.ip());
    client_addr::client_address(peer, &parts.headers, trusted_proxies)
}

#[derive(Clone, Copy, Debug)]
enum Event {
    Now,
    Ref,
    Get,
    Set,
    BlobUpload,
    BlobRequest,
    RequestUpload,
    BlobUploaded,
    Watch,
    Unwatch,
}

impl Event {
    const ALL: [Event; 10] = [
        Event::Now,
        Event::Ref,
        Event::Get,
        Event::Set,
        Event::BlobUpload,
        Event::BlobRequest,
        Event::RequestUpload,
        Event::BlobUploaded,
        Event::Watch,
        Event::Unwatch,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Event::Now => "now",
            Event::Ref => "ref",
            Event::Get => "get",
            Event::Set => "set",
            Event::BlobUpload => "blob-upload",
            Event::BlobRequest => "blob-request",
            Event::RequestUpload => "request-upload",
            Event::BlobUploaded => "blob-uploaded",
            Event::Watch => "watch",
            Event::Unwatch => "unwatch",
        }
    }

    /// The event that carries the reply when the client sent no ack: `None` for the events of
    /// the original, which must be sent with an ack (an event without one disconnects).
    fn reply_name(self) -> Option<&'static str> {
        match self {
            Event::Now | Event::Ref | Event::Get | Event::Set | Event::Watch | Event::Unwatch => {
                None
            }
            Event::BlobUpload => Some("blob-upload-result"),
            Event::BlobRequest => Some("blob-pack"),
            Event::RequestUpload => Some("upload-denied"),
            Event::BlobUploaded => Some("upload-rejected"),
        }
    }
}
