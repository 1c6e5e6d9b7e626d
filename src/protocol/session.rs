//! One socket's session: its events queued in arrival order and run one at a time, its
//! token's expiry, and the answers (acks, or the reply events), which wait for a client that
//! reads slowly only up to the socket's send buffer.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value as JsonValue, json};
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, SocketRef};
use socketioxide::handler::{FromMessageParts, MessageHandler, Value};
use socketioxide::socket::{Sid, Socket};
use socketioxide::{SendError, SocketError};
use tokio_util::sync::CancellationToken;

use crate::auth::Grant;
use crate::clock::now_ms;
use crate::edge::admission::SessionSlot;
use crate::edge::admission::backpressure::Backlog;
use crate::edge::admission::rate::{RateLimiter, Verdict};
use crate::metrics::Outcome;
use crate::names::{Bucket, Ref};
use crate::protocol::ack::AckError;
use crate::serve::changes::RefKey;
use crate::serve::changes::{self};
use crate::serve::state::AppState;

use super::events::{Reply, merged};
use super::{Event, NO_ARGS, content};

/// One connection's protocol state.
pub(super) struct Session<A: Adapter> {
    pub(super) sid: Sid,
    pub(super) state: AppState,
    pub(super) bucket: Bucket,
    pub(super) read_only: bool,
    /// What the token grants: events after it expires or is revoked are refused.
    pub(super) grant: Grant,
    /// Large replies not yet read by the client.
    pub(super) backlog: Arc<Backlog>,
    /// Cancelled on disconnect, or when the session is dropped: ends the expiry timer.
    pub(super) ended: CancellationToken,
    /// The client address recorded with each write.
    pub(super) ip: String,
    /// This server's origin in the direct URLs this client is given.
    pub(super) origin: String,
    /// This connection's slot in the connection limits; freed on disconnect (or, at the
    /// latest, when the session is dropped).
    pub(super) slot: Mutex<Option<SessionSlot>>,
    /// Set on disconnect, or when the client stopped reading: nothing more is queued or run.
    /// (Not `SocketRef::connected`, which socketioxide sets only after sending CONNECT, so a
    /// client's first events can arrive before it.)
    pub(super) closed: AtomicBool,
    /// Events waiting to run, the subscription and the rate limiter. A std mutex: held only
    /// to push, pop or read, never across an await.
    pub(super) queue: Mutex<Queue<A>>,
}

/// A session socketioxide drops without a disconnect (its CONNECT could not be sent) still
/// frees what it holds: the slot goes with the session, the rest is released here.
impl<A: Adapter> Drop for Session<A> {
    fn drop(&mut self) {
        self.release();
    }
}

pub(super) struct Queue<A: Adapter> {
    pub(super) jobs: VecDeque<Job<A>>,
    /// Bytes of arguments the jobs hold.
    pub(super) bytes: u64,
    /// Whether a task is running this queue; at most one is, which is what keeps the order.
    pub(super) running: bool,
    /// The ref `get` and `set` act on.
    pub(super) subscribed: Option<Ref>,
    /// The refs `watch` named, as their bytes: `changed { ref, version }` comes for each.
    pub(super) watched: HashSet<RefKey>,
    pub(super) limiter: RateLimiter,
}

pub(super) struct Job<A: Adapter> {
    pub(super) socket: SocketRef<A>,
    pub(super) work: Work<A>,
    /// Bytes of arguments it holds.
    pub(super) size: u64,
}

pub(super) enum Work<A: Adapter> {
    Call(Call<A>),
    /// Disconnect the socket, for this reason (logged).
    Disconnect(&'static str),
}

pub(super) struct Call<A: Adapter> {
    pub(super) event: Event,
    pub(super) args: Result<Vec<JsonValue>, AckError>,
    /// `None`: the reply goes out as an event (content-addressed events only).
    pub(super) ack: Option<AckSender<A>>,
}

/// Marker for [`Handler`]'s `MessageHandler` implementation.
pub(super) struct Ordered;

/// The synchronous handler socketioxide calls in arrival order; see the module doc.
pub(super) struct Handler<A: Adapter> {
    pub(super) event: Event,
    pub(super) session: Arc<Session<A>>,
}

impl<A: Adapter> MessageHandler<A, Ordered> for Handler<A> {
    fn call(&self, socket: Arc<Socket<A>>, mut value: Value, ack_id: Option<i64>) {
        let size = match &value {
            Value::Str(text, _) => text.len() as u64,
            Value::Bytes(bytes) => bytes.len() as u64,
        };
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
            size,
        });
    }
}

/// The arguments of an event packet `["name", ...args]`, without the name.
fn event_args(value: &Value) -> Result<Vec<JsonValue>, AckError> {
    let Value::Str(text, binaries) = value else {
        return Err(AckError::Binary);
    };
    if binaries.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(AckError::Binary);
    }
    let mut items: Vec<JsonValue> =
        serde_json::from_str(text.as_str()).map_err(|_| AckError::NotAnObject)?;
    if !items.is_empty() {
        items.remove(0);
    }
    Ok(items)
}

impl<A: Adapter> Session<A> {
    /// Queues an event in arrival order. An event refused for the socket's rate or its
    /// waiting events is queued too, as its refusal: every answer then goes out in order, and
    /// waits for room like any other instead of overflowing the socket's send queue.
    pub(super) fn enqueue(self: &Arc<Self>, mut job: Job<A>) {
        self.state.event_received();
        let limits = self.state.admission().events;
        let refused = {
            let mut queue = self.queue.lock().expect("queue lock poisoned");
            let shutting_down = self.state.shutdown().is_cancelled();
            let refused = match queue.limiter.check(Instant::now()) {
                _ if self.closed.load(Ordering::Acquire) => return,
                // At shutdown every event is refused, in order behind the answers still due,
                // and within the same bound on what may wait.
                _ if shutting_down && queue.jobs.len() >= 2 * limits.pending() => {
                    job.work = Work::Disconnect("too many events waiting to be answered");
                    None
                }
                _ if shutting_down => Some(AckError::Closing),
                _ if crate::auth::has_passed(self.grant.expires) => Some(AckError::TokenExpired),
                _ if self.state.revocations().revokes(&self.grant) => Some(AckError::TokenRevoked),
                // Refusals wait too; so many of them is a client that does not read.
                _ if queue.jobs.len() >= 2 * limits.pending() => {
                    job.work = Work::Disconnect("too many events waiting to be answered");
                    None
                }
                Verdict::Disconnect => {
                    job.work = Work::Disconnect("sustained event rate over twice the limit");
                    None
                }
                Verdict::Refuse => Some(AckError::RateLimited),
                Verdict::Accept
                    if queue.jobs.len() >= limits.pending()
                        || queue.bytes + job.size > limits.pending_bytes =>
                {
                    Some(AckError::Busy)
                }
                Verdict::Accept => None,
            };
            match (refused, job.work) {
                (None, work) => {
                    job.work = work;
                    queue.bytes += job.size;
                    self.push(&mut queue, job);
                    return;
                }
                (
                    Some(error @ (AckError::RateLimited | AckError::Busy | AckError::Closing)),
                    Work::Call(call),
                ) => {
                    let refusal = Call {
                        args: Err(error),
                        ..call
                    };
                    let job = Job {
                        socket: job.socket,
                        work: Work::Call(refusal),
                        size: 0,
                    };
                    self.push(&mut queue, job);
                    return;
                }
                (Some(error), work) => (error, job.socket, work),
            }
        };
        let (error, socket, work) = refused;
        let expired = matches!(error, AckError::TokenExpired | AckError::TokenRevoked);
        if let Work::Call(call) = work {
            self.answer(&socket, call.event, call.ack, Err(error));
        }
        if expired {
            // The answer is queued before DISCONNECT, so the client reads why.
            self.closed.store(true, Ordering::Release);
            changes::evict(&socket);
        }
    }

    /// The token expired or was revoked: events from now on are refused, and the socket is disconnected once
    /// the events already accepted are answered (their writes may have committed: the client
    /// must learn so).
    pub(super) fn expire(self: &Arc<Self>, socket: SocketRef<A>) {
        tracing::debug!(sid = %socket.id, "token expired or revoked: disconnecting");
        let mut queue = self.queue.lock().expect("queue lock poisoned");
        let job = Job {
            socket,
            work: Work::Disconnect("token expired or revoked"),
            size: 0,
        };
        self.push(&mut queue, job);
    }

    /// Appends a job to the queue (held by the caller), and starts the task that runs the
    /// queue unless one is running.
    pub(super) fn push(self: &Arc<Self>, queue: &mut Queue<A>, job: Job<A>) {
        queue.jobs.push_back(job);
        if !queue.running {
            queue.running = true;
            let session = self.clone();
            self.state
                .tasks()
                .spawn(async move { session.run_queue().await });
        }
    }

    pub(super) async fn run_queue(self: Arc<Self>) {
        loop {
            let job = {
                let mut queue = self.queue.lock().expect("queue lock poisoned");
                match queue.jobs.pop_front() {
                    // A socket that is gone (or was disconnected) runs nothing more.
                    Some(job) if !self.closed.load(Ordering::Acquire) => {
                        queue.bytes -= job.size;
                        job
                    }
                    _ => {
                        queue.jobs.clear();
                        queue.bytes = 0;
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

    /// Marks the session closed and frees its connection slot and its watches (on
    /// disconnect).
    pub(super) fn release(&self) {
        self.closed.store(true, Ordering::Release);
        let watched = std::mem::take(&mut self.queue.lock().expect("queue lock poisoned").watched);
        self.state
            .changes()
            .watches()
            .remove(self.bucket.as_str(), &watched, self.sid);
        self.ended.cancel();
        self.state
            .admission()
            .backlogs
            .remove(&self.sid.to_string());
        self.slot.lock().expect("slot lock poisoned").take();
    }

    /// The client stopped reading: its send buffer is full. It leaves every room so nothing
    /// more is queued for it, its pending events are discarded, and its transport is closed
    /// now if a DISCONNECT still fits, else by the next heartbeat (within `PING_INTERVAL`).
    pub(super) fn drop_stalled(&self, socket: &SocketRef<A>) {
        self.closed.store(true, Ordering::Release);
        changes::drop_stalled(socket);
    }

    pub(super) async fn run(&self, socket: &SocketRef<A>, call: Call<A>) {
        let Call { event, args, ack } = call;
        let args = match args {
            Ok(args) => args,
            Err(error) => return self.answer(socket, event, ack, Err(error)),
        };
        // An event that had not started when shutdown began is refused, not run: shutdown
        // finishes the events in progress, and the rest cost one small answer each.
        if self.state.shutdown().is_cancelled() {
            return self.answer(socket, event, ack, Err(AckError::Closing));
        }
        let arg = args.first();
        let reply = match event {
            Event::Now => Ok(Reply::Value(json!({ "timestamp": now_ms() }))),
            Event::Ref => self.subscribe(socket, arg),
            Event::Get => self.get(arg).await,
            Event::Set => self.set(socket, arg).await,
            Event::Watch => self.watch(arg),
            Event::Unwatch => self.unwatch(arg),
            Event::BlobUpload => content::upload(self, socket, arg).await,
            Event::BlobRequest => content::request(self, arg).await,
            Event::RequestUpload => content::request_upload(self, arg).await,
            Event::BlobUploaded => content::uploaded(self, socket, arg).await,
        };
        // A reply waits until the client has read enough of the earlier ones; one that reads
        // nothing is dropped instead of piling megabytes up.
        // With an ack, the named replies go out merged: measure what is sent.
        let reply = match (&ack, reply) {
            (Some(_), Ok(Reply::Events(events))) => Ok(Reply::Value(merged(events))),
            (_, reply) => reply,
        };
        let len = reply.as_ref().map_or(0, Reply::min_len);
        let room = tokio::select! {
            biased;
            room = self.backlog.reserve(len, self.state.admission().send_buffer.stall_timeout) => room,
            // Gone: nobody to answer.
            () = self.ended.cancelled() => return,
            // Shutting down: every accepted event is answered, without waiting.
            () = self.state.shutdown().clone().cancelled_owned() => true,
        };
        if !room {
            return self.drop_stalled(socket);
        }
        self.answer(socket, event, ack, reply);
    }
    /// Sends the reply: as the ack when there is one, else as the reply's events.
    pub(super) fn answer(
        &self,
        socket: &SocketRef<A>,
        event: Event,
        ack: Option<AckSender<A>>,
        reply: Result<Reply, AckError>,
    ) {
        crate::metrics::event(event.name(), outcome(&reply));
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
                None => Reply::Value(json!({ "error": message })),
            }
        });
        let sent = match (ack, reply) {
            (Some(ack), Reply::Empty) => ack.send(&NO_ARGS),
            (Some(ack), Reply::Value(value)) => ack.send(&value),
            (Some(ack), Reply::Stale(stale)) => ack.send(&stale),
            (Some(ack), Reply::Events(events)) => ack.send(&merged(events)),
            (None, Reply::Events(events)) => events
                .into_iter()
                .try_for_each(|(name, payload)| socket.emit(name, &payload)),
            // Only events with a reply name run without an ack, and they reply with events.
            (None, Reply::Empty | Reply::Value(_) | Reply::Stale(_)) => Ok(()),
        };
        match sent {
            Ok(()) => {}
            Err(SendError::Socket(SocketError::InternalChannelFull)) => self.drop_stalled(socket),
            Err(e) => tracing::debug!(sid = %socket.id, "acknowledgement not delivered: {e}"),
        }
    }
}

/// What an answer says of its event, for the metrics.
fn outcome(reply: &Result<Reply, AckError>) -> Outcome {
    match reply {
        Err(AckError::Store(_) | AckError::Content(_)) => Outcome::error,
        Err(_) => Outcome::refused,
        Ok(Reply::Stale(_)) => Outcome::conflict,
        Ok(Reply::Value(json)) => match json.get("success").and_then(JsonValue::as_bool) {
            Some(true) => Outcome::committed,
            Some(false) => Outcome::conflict,
            None => Outcome::ok,
        },
        Ok(Reply::Empty | Reply::Events(_)) => Outcome::ok,
    }
}
