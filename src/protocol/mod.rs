//! The Socket.IO protocol of the original: authentication, and the `now`, `ref`, `get` and
//! `set` events with their acknowledgements, plus `changed` to the other subscribers of a blob.
//! The content-addressed blob flow ([`cas`]) shares the connection, its token and its queue.
//!
//! Two properties shape this module:
//! - **Events take effect in the order a socket sent them.** socketioxide runs every async
//!   handler in its own task, so `ref` followed at once by `get` could run out of order. Our
//!   [`Handler`] therefore implements `MessageHandler` directly: socketioxide calls it
//!   synchronously, in arrival order, and it only appends the event to the socket's queue. One
//!   task per socket (started when the queue becomes non-empty, ended when it is empty, so idle
//!   sockets cost no task) runs the events one by one.
//! - **No event is ever missed.** Handlers are registered in the connect middleware, which
//!   socketioxide awaits before it sends CONNECT, so an event emitted on `connect` always finds
//!   its handler.
//!
//! This module never touches files: it validates, calls the store, and answers.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::ConnectInfo;
use base64::Engine as _;
use ipnet::IpNet;
use serde_json::{Map, Value as Json, json};
use socketioxide::adapter::{Adapter, LocalAdapter};
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts, MessageHandler, Value};
use socketioxide::socket::{DisconnectReason, Sid, Socket};
use socketioxide::{SendError, SocketError, SocketIo};
use tokio_util::sync::CancellationToken;

use crate::changes::{self, Change};
use crate::clock::now_ms;
use crate::edge::Written;
use crate::limits::{
    self, Backlog, ConnectionRefused, ConnectionSlot, PendingHandshake, RateLimiter, Verdict,
};
use crate::names::{Bucket, Ref};
use crate::protocol::ack::AckError;
use crate::proxy;
use crate::server::NodesAdapter;
use crate::state::AppState;
use crate::store::{Edit, Expect, MAX_VERSION, SetOutcome, SetRequest, live};

/// Smallest transport limit: room for a `set` of the documented maximum (1,048,576 base64
/// characters) with its framing. A larger frame disconnects only the client that sent it.
const MIN_MESSAGE_LEN: usize = 2 * 1024 * 1024;

/// Largest Socket.IO message accepted on either transport, for a `data` limit in characters.
pub fn max_message_len(max_data_chars: usize) -> usize {
    MIN_MESSAGE_LEN.max(max_data_chars + 64 * 1024)
}

/// Events a socket may have waiting to run. Past this, new events are answered
/// `{ error }` at once instead of queued, which bounds a socket's memory.
const MAX_PENDING: usize = 64;

/// The message of the connect error every refused handshake gets.
const ACCESS_DENIED: &str = "Access denied";

/// An acknowledgement with no argument: serialises as `[]`, so the callback gets `undefined`.
const NO_ARGS: [(); 0] = [];

/// Replies from this size on count against the socket's [`Backlog`] (smaller ones, like every
/// `changed`, are bounded by `SEND_BUFFER_PACKETS`).
const LARGE_REPLY: u64 = 16 * 1024;

pub mod ack;
pub mod content;

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
    Limit(#[from] ConnectionRefused),
}

/// Verifies the token of the handshake (`auth: { token }`), takes a connection slot and
/// prepares the socket. Runs before CONNECT is sent, which is why the event handlers are
/// registered here.
async fn authenticate<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    TryData(auth): TryData<Json>,
    State(state): State<AppState>,
) -> Result<(), Refused> {
    let token = auth
        .ok()
        .and_then(|a| a.get("token")?.as_str().map(str::to_owned));
    let Some(grant) = token.and_then(|t| state.keys().verify(&t)) else {
        tracing::debug!(sid = %socket.id, "handshake refused");
        return Err(Refused::AccessDenied);
    };
    let address = client_address(&socket, state.trusted_proxies());
    let slot = state.connections().acquire(address).inspect_err(|e| {
        tracing::info!(sid = %socket.id, %address, "connection refused: {e}");
    })?;
    let parts = socket.req_parts();
    if let Some(pending) = parts.extensions.get::<PendingHandshake>() {
        pending.connected();
    }
    tracing::debug!(sid = %socket.id, bucket = %grant.bucket, read_only = grant.read_only, %address, "connected");
    let (per_second, burst) = state.event_rate();
    socket.join(changes::bucket_room(&grant.bucket));
    if state.changes().needs_own_room() {
        socket.join(socket.id.to_string());
    }
    let backlog = state.backlog();
    // A WebSocket handshake's connection carries the session; a long-polling one's does not.
    let direct = parts
        .uri
        .query()
        .and_then(|q| limits::query_param(q, "transport"))
        == Some("websocket");
    let written = parts.extensions.get::<Written>().filter(|_| direct);
    state
        .backlogs()
        .insert(socket.id.to_string(), &backlog, written);
    let expiry = grant.expires.map(|_| grant.expiry());
    let session = Arc::new(Session {
        sid: socket.id,
        state: state.clone(),
        bucket: grant.bucket,
        read_only: grant.read_only,
        expires: grant.expires,
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
            limiter: RateLimiter::new(per_second, burst),
        }),
    });
    if let Some(expiry) = expiry {
        // The token's `exp` ends the connection, not only the handshake. The timer holds
        // neither the socket nor the session, so a connection that never completes is freed
        // at once; it ends with the session.
        let ended = session.ended.clone();
        let weak = Arc::downgrade(&session);
        let sid = socket.id;
        tokio::spawn(async move {
            tokio::select! {
                () = expiry => {}
                () = ended.cancelled() => return,
            }
            if let (Some(session), Some(socket)) = (weak.upgrade(), io.get_socket(sid)) {
                session.expire(socket);
            }
        });
    }
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
    if let Some(url) = &state.content_limits().public_url {
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

/// The client's address (see [`proxy::client_address`]).
fn client_address<A: Adapter>(socket: &SocketRef<A>, trusted_proxies: &[IpNet]) -> IpAddr {
    let parts = socket.req_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |info| info.0.ip());
    proxy::client_address(peer, &parts.headers, trusted_proxies)
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
}

impl Event {
    const ALL: [Event; 8] = [
        Event::Now,
        Event::Ref,
        Event::Get,
        Event::Set,
        Event::BlobUpload,
        Event::BlobRequest,
        Event::RequestUpload,
        Event::BlobUploaded,
    ];

    fn name(self) -> &'static str {
        match self {
            Event::Now => "now",
            Event::Ref => "ref",
            Event::Get => "get",
            Event::Set => "set",
            Event::BlobUpload => "blob-upload",
            Event::BlobRequest => "blob-request",
            Event::RequestUpload => "request-upload",
            Event::BlobUploaded => "blob-uploaded",
        }
    }

    /// The event that carries the reply when the client sent no ack: `None` for the events of
    /// the original, which must be sent with an ack (an event without one disconnects).
    fn reply_name(self) -> Option<&'static str> {
        match self {
            Event::Now | Event::Ref | Event::Get | Event::Set => None,
            Event::BlobUpload => Some("blob-upload-result"),
            Event::BlobRequest => Some("blob-pack"),
            Event::RequestUpload => Some("upload-denied"),
            Event::BlobUploaded => Some("upload-rejected"),
        }
    }
}

/// One connection's protocol state.
struct Session<A: Adapter> {
    sid: Sid,
    state: AppState,
    bucket: Bucket,
    read_only: bool,
    /// When the token expires (seconds since the epoch): events after it are refused.
    expires: Option<u64>,
    /// Large replies not yet read by the client.
    backlog: Arc<Backlog>,
    /// Cancelled on disconnect, or when the session is dropped: ends the expiry timer.
    ended: CancellationToken,
    /// The client address recorded with each write.
    ip: String,
    /// This server's origin in the direct URLs this client is given.
    origin: String,
    /// This connection's slot in the connection limits; freed on disconnect (or, at the
    /// latest, when the session is dropped).
    slot: Mutex<Option<ConnectionSlot>>,
    /// Set on disconnect, or when the client stopped reading: nothing more is queued or run.
    /// (Not `SocketRef::connected`, which socketioxide sets only after sending CONNECT, so a
    /// client's first events can arrive before it.)
    closed: AtomicBool,
    /// Events waiting to run, the subscription and the rate limiter. A std mutex: held only
    /// to push, pop or read, never across an await.
    queue: Mutex<Queue<A>>,
}

/// A session socketioxide drops without a disconnect (its CONNECT could not be sent) still
/// frees what it holds: the slot goes with the session, the rest is released here.
impl<A: Adapter> Drop for Session<A> {
    fn drop(&mut self) {
        self.release();
    }
}

struct Queue<A: Adapter> {
    jobs: VecDeque<Job<A>>,
    /// Whether a task is running this queue; at most one is, which is what keeps the order.
    running: bool,
    /// The ref `get` and `set` act on.
    subscribed: Option<Ref>,
    limiter: RateLimiter,
}

struct Job<A: Adapter> {
    socket: SocketRef<A>,
    work: Work<A>,
}

enum Work<A: Adapter> {
    Call(Call<A>),
    /// Disconnect the socket, for this reason (logged).
    Disconnect(&'static str),
}

struct Call<A: Adapter> {
    event: Event,
    args: Result<Vec<Json>, AckError>,
    /// `None`: the reply goes out as an event (content-addressed events only).
    ack: Option<AckSender<A>>,
}

/// Marker for [`Handler`]'s `MessageHandler` implementation.
struct Ordered;

/// The synchronous handler socketioxide calls in arrival order; see the module doc.
struct Handler<A: Adapter> {
    event: Event,
    session: Arc<Session<A>>,
}

impl<A: Adapter> MessageHandler<A, Ordered> for Handler<A> {
    fn call(&self, socket: Arc<Socket<A>>, mut value: Value, ack_id: Option<i64>) {
        let work = if ack_id.is_some() || self.event.reply_name().is_some() {
            let ack =
                ack_id.map(
                    |_| match AckSender::from_message_parts(&socket, &mut value, &ack_id) {
                        Ok(ack) => ack,
                        Err(never) => match never {},
                    },
                );
            Work::Call(Call {
                event: self.event,
                args: event_args(&value),
                ack,
            })
        } else {
            Work::Disconnect("event without ack callback")
        };
        self.session.enqueue(Job {
            socket: SocketRef::from(socket),
            work,
        });
    }
}

/// The arguments of an event packet `["name", ...args]`, without the name.
fn event_args(value: &Value) -> Result<Vec<Json>, AckError> {
    let Value::Str(text, binaries) = value else {
        return Err(AckError::Binary);
    };
    if binaries.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(AckError::Binary);
    }
    let mut items: Vec<Json> =
        serde_json::from_str(text.as_str()).map_err(|_| AckError::NotAnObject)?;
    if !items.is_empty() {
        items.remove(0);
    }
    Ok(items)
}

impl<A: Adapter> Session<A> {
    /// Queues an event in arrival order, or answers it at once when it is refused.
    fn enqueue(self: &Arc<Self>, mut job: Job<A>) {
        let refused = {
            let mut queue = self.queue.lock().expect("queue lock poisoned");
            let refused = match queue.limiter.check(Instant::now()) {
                _ if self.state.is_closing() => Some(AckError::Closing),
                _ if self.closed.load(Ordering::Acquire) => return,
                _ if self.expired() => Some(AckError::TokenExpired),
                Verdict::Disconnect => {
                    job.work = Work::Disconnect("sustained event rate over twice the limit");
                    None
                }
                Verdict::Refuse => Some(AckError::RateLimited),
                Verdict::Accept if queue.jobs.len() >= MAX_PENDING => Some(AckError::Busy),
                Verdict::Accept => None,
            };
            if refused.is_none() {
                self.push(&mut queue, job);
                return;
            }
            refused
        };
        let expired = matches!(refused, Some(AckError::TokenExpired));
        if let (Some(error), Work::Call(call)) = (refused, job.work) {
            self.answer(&job.socket, call.event, call.ack, Err(error));
        }
        if expired {
            // The answer is queued before DISCONNECT, so the client reads why.
            self.closed.store(true, Ordering::Release);
            changes::evict(&job.socket);
        }
    }

    /// The token expired: events from now on are refused, and the socket is disconnected once
    /// the events already accepted are answered (their writes may have committed: the client
    /// must learn so).
    fn expire(self: &Arc<Self>, socket: SocketRef<A>) {
        tracing::debug!(sid = %socket.id, "token expired: disconnecting");
        let mut queue = self.queue.lock().expect("queue lock poisoned");
        let job = Job {
            socket,
            work: Work::Disconnect("token expired"),
        };
        self.push(&mut queue, job);
    }

    /// Appends a job to the queue (held by the caller), and starts the task that runs the
    /// queue unless one is running.
    fn push(self: &Arc<Self>, queue: &mut Queue<A>, job: Job<A>) {
        queue.jobs.push_back(job);
        if !queue.running {
            queue.running = true;
            let session = self.clone();
            self.state
                .tasks()
                .spawn(async move { session.run_queue().await });
        }
    }

    fn expired(&self) -> bool {
        crate::auth::has_passed(self.expires)
    }

    async fn run_queue(self: Arc<Self>) {
        loop {
            let job = {
                let mut queue = self.queue.lock().expect("queue lock poisoned");
                match queue.jobs.pop_front() {
                    // A socket that is gone (or was disconnected) runs nothing more.
                    Some(job) if !self.closed.load(Ordering::Acquire) => job,
                    _ => {
                        queue.jobs.clear();
                        queue.running = false;
                        return;
                    }
                }
            };
            match job.work {
                Work::Call(call) => self.run(&job.socket, call).await,
                Work::Disconnect(reason) => {
                    tracing::debug!(sid = %job.socket.id, reason, "disconnecting");
                    self.closed.store(true, Ordering::Release);
                    changes::evict(&job.socket);
                }
            }
        }
    }

    /// Marks the session closed and frees its connection slot (on disconnect).
    fn release(&self) {
        self.closed.store(true, Ordering::Release);
        self.ended.cancel();
        self.state.backlogs().remove(&self.sid.to_string());
        self.slot.lock().expect("slot lock poisoned").take();
    }

    /// The client stopped reading: its send buffer is full. It leaves every room so nothing
    /// more is queued for it, its pending events are discarded, and its transport is closed
    /// now if a DISCONNECT still fits, else by the next heartbeat (within `PING_INTERVAL`).
    fn drop_stalled(&self, socket: &SocketRef<A>) {
        self.closed.store(true, Ordering::Release);
        changes::drop_stalled(socket);
    }

    async fn run(&self, socket: &SocketRef<A>, call: Call<A>) {
        let Call { event, args, ack } = call;
        let args = match args {
            Ok(args) => args,
            Err(error) => return self.answer(socket, event, ack, Err(error)),
        };
        let arg = args.first();
        let reply = match event {
            Event::Now => Ok(Reply::Json(json!({ "timestamp": now_ms() }))),
            Event::Ref => self.subscribe(socket, arg),
            Event::Get => self.get(arg).await,
            Event::Set => self.set(socket, arg).await,
            Event::BlobUpload => content::upload(self, socket, arg).await,
            Event::BlobRequest => content::request(self, arg).await,
            Event::RequestUpload => content::request_upload(self, arg).await,
            Event::BlobUploaded => content::uploaded(self, socket, arg).await,
        };
        // A large reply waits until the client has read enough of the earlier ones; one that
        // reads nothing is dropped instead of piling megabytes up.
        // With an ack, the named replies go out merged: measure what is sent.
        let reply = match (&ack, reply) {
            (Some(_), Ok(Reply::Events(events))) => Ok(Reply::Json(merged(events))),
            (_, reply) => reply,
        };
        let len = reply.as_ref().map_or(0, Reply::min_len);
        if len >= LARGE_REPLY {
            let room = tokio::select! {
                biased;
                room = self.backlog.reserve(len, self.state.stall_timeout()) => room,
                // Gone: nobody to answer.
                () = self.ended.cancelled() => return,
                // Shutting down: every accepted event is answered, without waiting.
                () = self.state.closing() => true,
            };
            if !room {
                return self.drop_stalled(socket);
            }
        }
        self.answer(socket, event, ack, reply);
    }

    fn subscribe(&self, socket: &SocketRef<A>, arg: Option<&Json>) -> Result<Reply, AckError> {
        let new = match arg {
            Some(Json::Null) => None,
            Some(Json::String(text)) => Some(Ref::parse(text).ok_or(AckError::InvalidRef)?),
            _ => return Err(AckError::InvalidRef),
        };
        let mut queue = self.queue.lock().expect("queue lock poisoned");
        if let Some(old) = queue.subscribed.take() {
            socket.leave(changes::room(&self.bucket, &old));
        }
        if let Some(r) = &new {
            socket.join(changes::room(&self.bucket, r));
        }
        queue.subscribed = new;
        Ok(Reply::Empty)
    }

    fn subscribed(&self) -> Result<Ref, AckError> {
        let queue = self.queue.lock().expect("queue lock poisoned");
        queue.subscribed.clone().ok_or(AckError::NoRef)
    }

    async fn get(&self, arg: Option<&Json>) -> Result<Reply, AckError> {
        let known = optional_version(object(arg)?, "known")?;
        let r = self.subscribed()?;
        let Some(blob) = live(self.state.store().get(&self.bucket, &r).await?) else {
            return Ok(Reply::Json(Json::Null));
        };
        Ok(Reply::Json(if known == Some(blob.version) {
            json!({ "version": blob.version })
        } else {
            with_data(json!({ "version": blob.version }), blob.data.as_deref())
        }))
    }

    async fn set(&self, socket: &SocketRef<A>, arg: Option<&Json>) -> Result<Reply, AckError> {
        if self.read_only {
            return Err(AckError::ReadOnly);
        }
        let params = object(arg)?;
        let version = optional_version(params, "version")?;
        let data = optional_data(params, self.state.max_data_chars())?;
        let r = self.subscribed()?;
        let request = SetRequest {
            edit: Edit::Put(data),
            expect: Expect::Protocol(version),
            ip: self.ip.clone(),
            now: now_ms(),
        };
        let outcome = self.state.store().set(&self.bucket, &r, request).await;
        match outcome? {
            SetOutcome::Committed { version } => {
                tracing::debug!(bucket = %self.bucket, r#ref = %r, version, "committed");
                let change = Change {
                    bucket: self.bucket.clone(),
                    r,
                    version,
                    deleted: false,
                };
                self.state.changes().publish(change, Some(socket.id));
                Ok(Reply::Json(json!({ "success": true, "version": version })))
            }
            // A protocol write always finds something to conflict with (a missing blob is
            // created), so `current` is the live blob or its tombstone (which has no data).
            SetOutcome::Conflict(Some(current)) | SetOutcome::PreconditionRequired(current) => {
                Ok(Reply::Stale(Stale {
                    success: false,
                    data: current.data.clone(),
                    version: current.version,
                }))
            }
            SetOutcome::Conflict(None) => Ok(Reply::Json(json!({ "success": false }))),
        }
    }

    /// Sends the reply: as the ack when there is one, else as the reply's events.
    fn answer(
        &self,
        socket: &SocketRef<A>,
        event: Event,
        ack: Option<AckSender<A>>,
        reply: Result<Reply, AckError>,
    ) {
        let reply = reply.unwrap_or_else(|error| {
            match &error {
                AckError::Store(cause) => {
                    tracing::error!(bucket = %self.bucket, "storage failure: {cause}")
                }
                AckError::Content(cause) => {
                    tracing::error!(bucket = %self.bucket, "content storage failure: {cause}")
                }
                _ => {}
            }
            let message = error.to_string();
            match event.reply_name() {
                // The content events' replies give their reasons as `reason`.
                Some(name) => {
                    Reply::Events(vec![(name, json!({ "error": message, "reason": message }))])
                }
                None => Reply::Json(json!({ "error": message })),
            }
        });
        let sent = match (ack, reply) {
            (Some(ack), Reply::Empty) => ack.send(&NO_ARGS),
            (Some(ack), Reply::Json(value)) => ack.send(&value),
            (Some(ack), Reply::Stale(stale)) => ack.send(&stale),
            (Some(ack), Reply::Events(events)) => ack.send(&merged(events)),
            (None, Reply::Events(events)) => events
                .into_iter()
                .try_for_each(|(name, payload)| socket.emit(name, &payload)),
            // Only events with a reply name run without an ack, and they reply with events.
            (None, Reply::Empty | Reply::Json(_) | Reply::Stale(_)) => Ok(()),
        };
        match sent {
            Ok(()) => {}
            Err(SendError::Socket(SocketError::InternalChannelFull)) => self.drop_stalled(socket),
            Err(e) => tracing::debug!(sid = %socket.id, "acknowledgement not delivered: {e}"),
        }
    }
}

/// A reply.
enum Reply {
    /// No argument (`ref`).
    Empty,
    Json(Json),
    /// Named replies of the content-addressed events: each is an event when the client sent
    /// no ack; with an ack, their fields are merged into one object.
    Events(Vec<(&'static str, Json)>),
    /// A refused `set`, with its keys in the original's order (a JSON map would sort them).
    Stale(Stale),
}

/// The bytes `value` serialises to, at least (escapes left out).
fn json_min_len(value: &Json) -> u64 {
    let separators = |n: usize| n.saturating_sub(1) as u64;
    match value {
        Json::Null | Json::Bool(true) => 4,
        Json::Bool(false) => 5,
        Json::Number(_) => 1,
        Json::String(text) => text.len() as u64 + 2,
        Json::Array(items) => {
            2 + separators(items.len()) + items.iter().map(json_min_len).sum::<u64>()
        }
        Json::Object(fields) => {
            2 + separators(fields.len())
                + fields
                    .iter()
                    .map(|(key, value)| key.len() as u64 + 3 + json_min_len(value))
                    .sum::<u64>()
        }
    }
}

/// `{ success: false, data?, version }`.
#[derive(serde::Serialize)]
struct Stale {
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    version: u64,
}

impl Reply {
    /// A lower bound of the bytes this reply takes on the wire: its JSON without escapes or
    /// framing. Never more than the truth, so bytes the client read always cover it (an
    /// estimate over the truth would pile up as a backlog that is not there).
    fn min_len(&self) -> u64 {
        match self {
            Reply::Empty => 2,
            Reply::Json(value) => json_min_len(value),
            Reply::Events(events) => events.iter().map(|(_, value)| json_min_len(value)).sum(),
            Reply::Stale(stale) => 29 + stale.data.as_ref().map_or(0, |d| d.len() as u64 + 10),
        }
    }
}

/// The fields of several reply objects in one.
fn merged(events: Vec<(&'static str, Json)>) -> Json {
    let mut all = Map::new();
    for (_, payload) in events {
        if let Json::Object(fields) = payload {
            all.extend(fields);
        }
    }
    Json::Object(all)
}

fn with_data(mut reply: Json, data: Option<&str>) -> Json {
    if let (Some(data), Some(map)) = (data, reply.as_object_mut()) {
        map.insert("data".to_owned(), Json::String(data.to_owned()));
    }
    reply
}

fn object(arg: Option<&Json>) -> Result<&Map<String, Json>, AckError> {
    arg.and_then(Json::as_object).ok_or(AckError::NotAnObject)
}

/// `known` or `version`: absent or `null` is `None`; otherwise an integer in `1..=MAX_VERSION`.
fn optional_version(
    params: &Map<String, Json>,
    key: &'static str,
) -> Result<Option<u64>, AckError> {
    match params.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .filter(|v| (1..=MAX_VERSION).contains(v))
            .map(Some)
            .ok_or(AckError::InvalidVersion(key)),
    }
}

/// `data`: absent or `null` is `None`; otherwise standard base64 (padding optional, no
/// whitespace) of at most `max_chars` characters, kept exactly as sent.
fn optional_data(params: &Map<String, Json>, max_chars: usize) -> Result<Option<String>, AckError> {
    match params.get("data") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(text)) if text.len() <= max_chars && is_base64(text) => {
            Ok(Some(text.clone()))
        }
        Some(_) => Err(AckError::InvalidData(max_chars)),
    }
}

fn is_base64(text: &str) -> bool {
    const ENGINE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    ENGINE.decode(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(value: Json) -> Map<String, Json> {
        value.as_object().unwrap().clone()
    }

    /// The backlog's measure of a reply never exceeds its JSON, or the backlog would grow
    /// while the client reads everything.
    #[test]
    fn reply_lengths_are_lower_bounds() {
        let values = [
            json!(null),
            json!({}),
            json!([]),
            json!({ "version": 12345, "data": "aGk=" }),
            json!({ "blobs": [{ "hash": "ab", "data_b64": "x\ny\"" }], "unavailable": ["\u{1}"] }),
            json!([true, false, 1.5, -3, "", { "a": [null] }]),
        ];
        for value in values {
            let text = serde_json::to_string(&value).unwrap();
            assert!(json_min_len(&value) <= text.len() as u64, "{text}");
        }
        for data in [None, Some(String::new()), Some("aGk=".to_owned())] {
            let stale = Stale {
                success: false,
                data: data.clone(),
                version: 1,
            };
            let text = serde_json::to_string(&stale).unwrap();
            assert_eq!(Reply::Stale(stale).min_len(), text.len() as u64, "{text}");
        }
    }

    #[test]
    fn versions_are_integers_in_the_safe_range() {
        for ok in [json!({}), json!({"known": null})] {
            assert_eq!(optional_version(&params(ok), "known").unwrap(), None);
        }
        assert_eq!(
            optional_version(&params(json!({"known": MAX_VERSION})), "known").unwrap(),
            Some(MAX_VERSION)
        );
        for bad in [
            json!({"known": 0}),
            json!({"known": -1}),
            json!({"known": 1.5}),
            json!({"known": "1"}),
            json!({"known": MAX_VERSION + 1}),
            json!({"known": 1e300}),
            json!({"known": [1]}),
        ] {
            assert!(optional_version(&params(bad), "known").is_err());
        }
    }

    #[test]
    fn data_is_bounded_base64() {
        const MAX_DATA_LEN: usize = 1_048_576;
        assert_eq!(
            optional_data(&params(json!({})), MAX_DATA_LEN).unwrap(),
            None
        );
        for ok in ["", "aGk=", "aGk", "+/+/"] {
            assert_eq!(
                optional_data(&params(json!({ "data": ok })), MAX_DATA_LEN)
                    .unwrap()
                    .as_deref(),
                Some(ok)
            );
        }
        let max = "A".repeat(MAX_DATA_LEN);
        assert!(optional_data(&params(json!({ "data": max })), MAX_DATA_LEN).is_ok());
        let over = "A".repeat(MAX_DATA_LEN + 4);
        for bad in [
            json!("aG k="),
            json!("aGk=\n"),
            json!("a-_b"),
            json!("@@@@"),
            json!(7),
            json!({}),
            json!(over),
        ] {
            assert!(optional_data(&params(json!({ "data": bad })), MAX_DATA_LEN).is_err());
        }
    }
}
