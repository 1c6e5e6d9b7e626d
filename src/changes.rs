//! Change notification: every committed write, whichever protocol made it, reaches the
//! Socket.IO subscribers of the blob (`changed`) and the HTTP change streams (SSE); new content
//! (`blob-available`) and Blob Service uploads (`blob-metadata`, the metadata streams) reach
//! the sockets and streams of their bucket.
//!
//! Socket.IO subscribers of one blob share a room, and every socket of a bucket is in the
//! bucket's room (for `blob-available`). Events are sent one socket at a time, so a subscriber whose send buffer is full can be told apart and dropped rather than
//! holding memory. HTTP streams read one broadcast channel and keep the changes of their ref.

use std::sync::OnceLock;
use std::time::Duration;

use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError, SocketIo};
use tokio::sync::{broadcast, watch};

use crate::names::{Bucket, ContentHash, Ref};
use crate::service::Record;

/// Changes an HTTP stream may fall behind by before it skips to the current version.
const STREAM_BACKLOG: usize = 1024;

/// How often a stalled socket is asked again to disconnect.
const STALLED_RETRY: Duration = Duration::from_millis(100);

/// An event with no argument: serialises as `["changed"]`.
const NO_ARGS: [(); 0] = [];

/// One committed write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub bucket: Bucket,
    pub r: Ref,
    pub version: u64,
    pub deleted: bool,
}

/// Where changes go.
pub struct Changes {
    /// The Socket.IO server, set once when it is built (it needs the state that holds this).
    io: OnceLock<SocketIo>,
    /// Every change, for the HTTP streams; bounded (see [`STREAM_BACKLOG`]): a stream that
    /// falls further behind is told the current version instead.
    streams: broadcast::Sender<Change>,
    /// Becomes `true` at shutdown: HTTP streams end so they do not hold the server up.
    closing: watch::Sender<bool>,
}

impl Default for Changes {
    fn default() -> Self {
        Self {
            io: OnceLock::new(),
            streams: broadcast::channel(STREAM_BACKLOG).0,
            closing: watch::channel(false).0,
        }
    }
}

impl Changes {
    pub fn attach(&self, io: SocketIo) {
        self.io.set(io).ok();
    }

    /// Announces a committed write. `writer` is the Socket.IO socket that made it, which does
    /// not hear its own change.
    pub fn publish(&self, change: Change, writer: Option<&SocketRef>) {
        self.emit(room(&change.bucket, &change.r), writer, "changed", &NO_ARGS);
        // No HTTP stream listening is not an error.
        self.streams.send(change).ok();
    }

    /// Announces content newly stored in `bucket` (`blob-available { hash }`) to every socket
    /// of the bucket but `uploader`.
    pub fn announce_content(
        &self,
        bucket: &Bucket,
        hash: &ContentHash,
        uploader: Option<&SocketRef>,
    ) {
        let payload = serde_json::json!({ "hash": hash.as_str() });
        self.emit(bucket_room(bucket), uploader, "blob-available", &payload);
    }

    /// Announces a stored Blob Service upload to every socket of the bucket: `blob-metadata`
    /// with its record. (The service itself feeds the HTTP metadata streams.)
    pub fn announce_metadata(&self, bucket: &Bucket, record: &Record) {
        self.emit(bucket_room(bucket), None, "blob-metadata", &record.event());
    }

    /// Sends `event` to every socket of `room` but `except`, dropping those that stopped
    /// reading.
    fn emit<T: serde::Serialize + ?Sized>(
        &self,
        room: String,
        except: Option<&SocketRef>,
        event: &str,
        payload: &T,
    ) {
        let targets = match (except, self.io.get()) {
            (Some(except), _) => except.to(room).sockets(),
            (None, Some(io)) => io.to(room).sockets(),
            (None, None) => Vec::new(),
        };
        for target in targets {
            match target.emit(event, payload) {
                Ok(()) => {}
                Err(SendError::Socket(SocketError::InternalChannelFull)) => drop_stalled(&target),
                Err(e) => tracing::debug!(sid = %target.id, event, "not delivered: {e}"),
            }
        }
    }

    /// All changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.streams.subscribe()
    }

    /// Resolves once the server is shutting down.
    pub fn closing(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.subscribe();
        async move {
            closing.wait_for(|closing| *closing).await.ok();
        }
    }

    /// Ends the HTTP streams (at shutdown).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

/// The Socket.IO room of one blob: its subscribers.
pub fn room(bucket: &Bucket, r: &Ref) -> String {
    format!("{bucket}/{r}")
}

/// The Socket.IO room of every socket of a bucket (no `/`, so never a blob's room).
pub fn bucket_room(bucket: &Bucket) -> String {
    bucket.to_string()
}

/// Takes a socket whose send buffer is full out of every room and disconnects it.
pub fn drop_stalled(socket: &SocketRef) {
    tracing::info!(sid = %socket.id, "client stopped reading: dropping it");
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
