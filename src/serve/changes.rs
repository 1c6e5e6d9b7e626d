//! Change notification: every committed write, whichever protocol made it, reaches the
//! Socket.IO subscribers of the blob (`changed`) and the HTTP change streams (SSE); new content
//! (`blob-available`) and Blob Service uploads (`blob-metadata`, the metadata streams) reach
//! the sockets and streams of their bucket.
//!
//! Socket.IO subscribers of one blob share a room, and every socket of a bucket is in the
//! bucket's room (for `blob-available`). Events are sent one socket at a time, so a subscriber whose send buffer is full can be told apart and dropped rather than
//! holding memory. HTTP streams read one broadcast channel and keep the changes of their ref.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;
use socketioxide::adapter::{Adapter, LocalAdapter};
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError, SocketIo};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::blob_service::Record;
use crate::cluster::{Redis, relay};
use crate::edge::admission::backpressure::Backlog;
use crate::names::{Bucket, ContentHash, Ref};

mod watches;

pub use watches::{RefKey, ServerFull, Watches, ref_key};

/// Changes an HTTP stream may fall behind by before it skips to the current version.
const CHANGE_STREAM_BACKLOG: usize = 1024;

/// How often a stalled socket is asked again to disconnect.
const STALLED_RETRY: Duration = Duration::from_millis(100);

/// An event with no argument: serialises as `["changed"]`.
const NO_ARGS: [(); 0] = [];

/// One committed write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub bucket: Bucket,
    pub blob_ref: Ref,
    pub version: u64,
    pub deleted: bool,
}

/// Where changes go.
pub struct Changes {
    /// The Socket.IO rooms, set once when the server is built (it needs the state that holds
    /// this).
    rooms: OnceLock<Box<dyn Rooms>>,
    /// This node's watchers, told of every change: this node's and, with several nodes, the
    /// others' (from the relay).
    watching: Arc<Watching>,
    /// Every change, for the HTTP streams; bounded (see [`CHANGE_STREAM_BACKLOG`]): a stream that
    /// falls further behind is told the current version instead. `None`: changes of other
    /// nodes may have been missed (Redis was away); every stream says where its blob is now.
    streams: broadcast::Sender<Option<Change>>,
    /// With several nodes: this node's changes, on their way to the other nodes' HTTP streams
    /// over Redis pub/sub (unbounded, but drained at once by one publishing task).
    relay: OnceLock<mpsc::UnboundedSender<Change>>,
    /// The server's one shutdown signal: HTTP streams and the relay end with it, so they do not
    /// hold the server up.
    shutdown: CancellationToken,
}

/// The Redis channel that carries changes between nodes.
const RELAY_CHANNEL: &str = "blobs:changes";

impl Changes {
    /// Where changes go, for a server that holds at most `max_watches` watches and stops when
    /// `shutdown` is cancelled.
    pub fn new(max_watches: usize, shutdown: CancellationToken) -> Self {
        Self {
            rooms: OnceLock::new(),
            watching: Arc::new(Watching {
                watches: Watches::new(max_watches),
                sockets: OnceLock::new(),
            }),
            streams: broadcast::channel(CHANGE_STREAM_BACKLOG).0,
            relay: OnceLock::new(),
            shutdown,
        }
    }

    /// Who watches which blob on this node.
    pub fn watches(&self) -> &Watches {
        &self.watching.watches
    }

    /// Sends room events through `io`: to this node's sockets one at a time (dropping those
    /// that stopped reading).
    pub fn attach(&self, io: SocketIo<LocalAdapter>) {
        self.watching.sockets.set(Box::new(io.clone())).ok();
        self.rooms.set(Box::new(LocalRooms(io))).ok();
    }

    /// Sends room events through `io`'s adapter, which carries them to every node: one task
    /// sends them all, in order (it ends when this `Changes` is dropped).
    pub fn attach_cluster<A: Adapter>(&self, io: SocketIo<A>) {
        self.watching.sockets.set(Box::new(io.clone())).ok();
        let (events, queued) = mpsc::unbounded_channel();
        tokio::spawn(broadcast_through_adapter(io, queued));
        self.rooms.set(Box::new(ClusterRooms(events))).ok();
    }

    /// Whether a new socket must join a room named after its own id, so that the writer of a
    /// change is skipped (several nodes; one node skips it by id and needs no such room).
    pub fn needs_own_room(&self) -> bool {
        self.rooms
            .get()
            .is_some_and(|rooms| rooms.except_is_a_room())
    }

    /// Announces a committed write. `writer` is the Socket.IO socket that made it, which does
    /// not hear its own change.
    pub fn publish(&self, change: Change, writer: Option<Sid>) {
        self.emit(
            room(&change.bucket, &change.blob_ref),
            writer,
            "changed",
            Value::Array(Vec::new()),
        );
        // Watchers hear every commit, the writer's own included, with what changed.
        self.watching.tell(&change);
        if let Some(relay) = self.relay.get() {
            relay.send(change.clone()).ok();
        }
        // No HTTP stream listening is not an error.
        self.streams.send(Some(change)).ok();
    }

    /// Carries changes between this node's HTTP streams and the other nodes' over Redis
    /// pub/sub (the Socket.IO rooms already span the nodes through the adapter).
    pub async fn relay(&self, redis: &Redis) -> redis::RedisResult<()> {
        let subscription = relay::subscribe(redis, RELAY_CHANNEL).await?;
        let node = uuid::Uuid::new_v4().simple().to_string();
        let (relay, mut outgoing) = mpsc::unbounded_channel::<Change>();
        let ours = node.clone();
        let mut publisher = redis.connection();
        tokio::spawn(async move {
            use redis::AsyncCommands as _;
            while let Some(change) = outgoing.recv().await {
                let message = serde_json::json!({
                    "node": ours,
                    "bucket": change.bucket.as_str(),
                    "ref": change.blob_ref.as_str(),
                    "version": change.version,
                    "deleted": change.deleted,
                });
                let sent: redis::RedisResult<()> =
                    publisher.publish(RELAY_CHANNEL, message.to_string()).await;
                if let Err(e) = sent {
                    crate::metrics::redis_error();
                    tracing::warn!("change not relayed to the other nodes: {e}");
                }
            }
        });
        let relayed = RelayedChanges {
            streams: self.streams.clone(),
            watching: self.watching.clone(),
            node,
        };
        // Ends with the server (the publishing task ends when this `Changes` is dropped).
        relay::listen(subscription, self.shutdown(), relayed);
        self.relay.set(relay).ok();
        Ok(())
    }

    /// Announces content newly stored in `bucket` to every socket of the bucket but
    /// `uploader`: one `blob-available { hash }` per upload, with `hashes` naming them all when
    /// one upload stored several (so an upload of many never costs a packet per content per
    /// socket).
    pub fn announce_content(&self, bucket: &Bucket, hashes: &[ContentHash], uploader: Option<Sid>) {
        let Some(first) = hashes.first() else {
            return;
        };
        let mut payload = serde_json::json!({ "hash": first.as_str() });
        if hashes.len() > 1 {
            payload["hashes"] = hashes.iter().map(|h| Value::from(h.as_str())).collect();
        }
        self.emit(bucket_room(bucket), uploader, "blob-available", payload);
    }

    /// Announces a stored Blob Service upload to every socket of the bucket: `blob-metadata`
    /// with its record. (The service itself feeds the HTTP metadata streams.)
    pub fn announce_metadata(&self, bucket: &Bucket, record: &Record) {
        self.emit(bucket_room(bucket), None, "blob-metadata", record.event());
    }

    fn emit(&self, room: String, except: Option<Sid>, event: &'static str, payload: Value) {
        if let Some(rooms) = self.rooms.get() {
            rooms.emit(room, except, event, payload);
        }
    }

    /// All changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Option<Change>> {
        self.streams.subscribe()
    }

    /// Resolves once the server is shutting down.
    pub fn shutdown(&self) -> WaitForCancellationFutureOwned {
        self.shutdown.clone().cancelled_owned()
    }
}

/// This node's watchers, and how to reach their sockets.
struct Watching {
    watches: Watches,
    /// This node's sockets by id; set once with the rooms.
    sockets: OnceLock<Box<dyn SocketsById>>,
}

impl Watching {
    /// Tells this node's watchers of `change`: `changed { ref, version, deleted? }`.
    fn tell(&self, change: &Change) {
        let watchers = self
            .watches
            .watchers(change.bucket.as_str(), &change.blob_ref);
        let Some(sockets) = self.sockets.get().filter(|_| !watchers.is_empty()) else {
            return;
        };
        let mut payload =
            serde_json::json!({ "ref": change.blob_ref.as_str(), "version": change.version });
        if change.deleted {
            payload["deleted"] = Value::Bool(true);
        }
        for sid in watchers {
            sockets.emit_to(sid, "changed", &payload);
        }
    }
}

/// This node's sockets, by id.
trait SocketsById: Send + Sync {
    fn emit_to(&self, sid: Sid, event: &'static str, payload: &Value);
}

impl<A: Adapter> SocketsById for SocketIo<A> {
    fn emit_to(&self, sid: Sid, event: &'static str, payload: &Value) {
        if let Some(socket) = self.get_socket(sid) {
            deliver(&socket, event, payload);
        }
    }
}

/// The other nodes' changes, on their way to this node's HTTP streams and watchers.
struct RelayedChanges {
    streams: broadcast::Sender<Option<Change>>,
    watching: Arc<Watching>,
    /// This node's name in the messages it publishes (its own are skipped).
    node: String,
}

#[async_trait::async_trait]
impl relay::Listener for RelayedChanges {
    async fn message(&mut self, text: &str) {
        match relayed_change(text, &self.node) {
            Some(change) => {
                self.watching.tell(&change);
                self.streams.send(Some(change)).ok();
            }
            None => tracing::trace!("relayed message skipped"),
        }
    }

    async fn resubscribed(&mut self) {
        self.streams.send(None).ok();
    }
}

/// A change another node relayed (`None` for this node's own, or anything malformed).
fn relayed_change(text: &str, this_node: &str) -> Option<Change> {
    let message: Value = serde_json::from_str(text).ok()?;
    if message["node"].as_str()? == this_node {
        return None;
    }
    Some(Change {
        bucket: Bucket::parse(message["bucket"].as_str()?)?,
        blob_ref: Ref::parse(message["ref"].as_str()?)?,
        version: message["version"].as_u64()?,
        deleted: message["deleted"].as_bool()?,
    })
}

/// The Socket.IO room of one blob: its subscribers.
pub fn room(bucket: &Bucket, r: &Ref) -> String {
    format!("{bucket}/{r}")
}

/// The Socket.IO room of every socket of a bucket (no `/`, so never a blob's room).
pub fn bucket_room(bucket: &Bucket) -> String {
    bucket.to_string()
}

/// Sends events to the sockets of a room.
trait Rooms: Send + Sync {
    /// `event` with `payload` (an array is the argument list; anything else one argument) to
    /// every socket of `room` but `except`.
    fn emit(&self, room: String, except: Option<Sid>, event: &'static str, payload: Value);

    /// Whether `except` names a room (the socket's own), rather than the socket itself.
    fn except_is_a_room(&self) -> bool {
        false
    }
}

/// One node: each socket of the room in turn, so one that stopped reading is told apart and
/// dropped rather than holding memory.
struct LocalRooms(SocketIo<LocalAdapter>);

impl Rooms for LocalRooms {
    fn emit(&self, room: String, except: Option<Sid>, event: &'static str, payload: Value) {
        for target in self.0.to(room).sockets() {
            if Some(target.id) != except {
                deliver(&target, event, &payload);
            }
        }
    }
}

/// Sends one event to one socket of this node, counted against its [`Backlog`]; a socket
/// whose client is behind by the whole backlog, or whose queue is full, is dropped.
fn deliver<A: Adapter>(socket: &SocketRef<A>, event: &'static str, payload: &Value) {
    if let Some(backlog) = socket.extensions.get::<Arc<Backlog>>()
        && !backlog.try_charge(packet_len(event, payload))
    {
        return drop_stalled(socket);
    }
    match emit_value(socket, event, payload) {
        Ok(()) if event == "changed" => crate::metrics::changed_delivered(1),
        Ok(()) => {}
        Err(SendError::Socket(SocketError::InternalChannelFull)) => drop_stalled(socket),
        Err(e) => tracing::debug!(sid = %socket.id, event, "not delivered: {e}"),
    }
}

/// The bytes an event's arguments take on the wire, at least (see `Backlog`: never over the
/// truth).
fn packet_len(event: &str, payload: &Value) -> u64 {
    let args = match payload {
        Value::Array(args) if args.is_empty() => 0,
        _ => serde_json::to_vec(payload).map_or(0, |bytes| bytes.len() as u64),
    };
    event.len() as u64 + args
}

/// One room event on its way through the adapter.
struct RoomEvent {
    room: String,
    except: Option<Sid>,
    event: &'static str,
    payload: Value,
}

/// Several nodes: the adapter carries the event to every node, which delivers it to its
/// own sockets of the room. Events queue for one task (see [`broadcast_through_adapter`]), so
/// they leave in the order they were committed and no task is spawned per event. The queue is
/// unbounded, but drained as fast as Redis takes a PUBLISH; what fills it is bounded by the
/// write rate.
struct ClusterRooms(mpsc::UnboundedSender<RoomEvent>);

impl Rooms for ClusterRooms {
    /// The adapter's `except(sid)` skips the sockets of the room named `sid`: nothing puts a
    /// socket in it but [`Changes::needs_own_room`].
    fn except_is_a_room(&self) -> bool {
        true
    }

    fn emit(&self, room: String, except: Option<Sid>, event: &'static str, payload: Value) {
        let queued = self.0.send(RoomEvent {
            room,
            except,
            event,
            payload,
        });
        if queued.is_err() {
            tracing::warn!(event, "room event not sent: the server is stopping");
        }
    }
}

/// Sends the queued room events through the adapter, one after the other.
async fn broadcast_through_adapter<A: Adapter>(
    io: SocketIo<A>,
    mut queued: mpsc::UnboundedReceiver<RoomEvent>,
) {
    while let Some(RoomEvent {
        room,
        except,
        event,
        payload,
    }) = queued.recv().await
    {
        let mut operators = io.to(room);
        if let Some(sid) = except {
            operators = operators.except(sid);
        }
        if event == "changed" && crate::metrics::enabled() {
            // The sockets of this node it reaches; the other nodes count their own.
            crate::metrics::changed_delivered(operators.clone().sockets().len());
        }
        let sent = match &payload {
            Value::Array(args) if args.is_empty() => operators.emit(event, &NO_ARGS).await,
            _ => operators.emit(event, &payload).await,
        };
        if let Err(e) = sent {
            tracing::warn!(event, "broadcast through the adapter failed: {e}");
        }
    }
}

/// Emits `payload` to one socket (an empty array: no argument).
fn emit_value<A: Adapter>(
    socket: &SocketRef<A>,
    event: &'static str,
    payload: &Value,
) -> Result<(), SendError> {
    match payload {
        Value::Array(args) if args.is_empty() => socket.emit(event, &NO_ARGS),
        _ => socket.emit(event, payload),
    }
}

/// Takes a socket whose send buffer is full out of every room and disconnects it.
pub fn drop_stalled<A: Adapter>(socket: &SocketRef<A>) {
    tracing::info!(sid = %socket.id, "client stopped reading: dropping it");
    crate::metrics::client_dropped();
    evict(socket);
}

/// Takes a socket out of every room at once, so nothing more is sent to it, and disconnects it
/// as soon as its send buffer has room for the DISCONNECT.
pub fn evict<A: Adapter>(socket: &SocketRef<A>) {
    socket.leave_all();
    // DISCONNECT needs room in the full send buffer: retry until it fits or the transport is
    // gone (the heartbeat closes a client that never reads again).
    let socket = socket.clone();
    tokio::spawn(async move {
        let mut retry = tokio::time::interval(STALLED_RETRY);
        while socket.connected() {
            if socket.clone().disconnect().is_ok() {
                break;
            }
            retry.tick().await;
        }
    });
}
