//! Backpressure: what was sent to a socket and has not reached its client yet, bounded in bytes
//! and in packets; a client that stops reading is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use std::sync::atomic::{AtomicU64, Ordering};

use super::ReadCap;

/// The live sessions' backlogs, by session id, for [`super::socket_io`].
pub struct Backlogs {
    /// A std mutex: held for a map update or lookup only.
    sessions: Mutex<Tracked>,
    /// `MAX_CONNECT_BYTES`: what a session may send before it connects.
    pub(crate) pre_connect_bytes: u64,
}

#[derive(Default)]
struct Tracked {
    by_sid: HashMap<String, Weak<Backlog>>,
    /// Long-polling sessions this server opened that have not connected yet, with their
    /// WebSocket connection once they upgrade (a client may upgrade while its CONNECT is being
    /// checked); taken when the session connects. Only ids from this server's own open packets
    /// get in, so their number follows `MAX_PENDING_HANDSHAKES`: entries older than
    /// [`EARLY_AGE`] (sessions that never connected) are forgotten as new ones come.
    early: HashMap<String, Early>,
}

/// A long-polling session of this server's that has not connected yet.
struct Early {
    opened: Instant,
    /// Its WebSocket connection, once it upgraded.
    upgraded: Option<Written>,
    /// The cap of the first connection that asked to upgrade it, lifted when it connects.
    read_cap: Option<ReadCap>,
}

/// Longer than any `CONNECT_TIMEOUT` in use.
const EARLY_AGE: Duration = Duration::from_secs(120);

impl Backlogs {
    pub fn new(pre_connect_bytes: u64) -> Self {
        Self {
            sessions: Mutex::default(),
            pre_connect_bytes,
        }
    }

    /// Registers a connected session's backlog; `direct`: the connection its handshake came
    /// on, when that was a WebSocket.
    pub fn insert(&self, sid: String, backlog: &Arc<Backlog>, direct: Option<&Written>) {
        let mut sessions = self.sessions.lock().expect("backlogs lock poisoned");
        let early = sessions.early.remove(&sid);
        if let Some(cap) = early.as_ref().and_then(|e| e.read_cap.as_ref()) {
            cap.lift();
        }
        let upgraded = early.and_then(|e| e.upgraded);
        if let Some(written) = upgraded.as_ref().or(direct) {
            backlog.attach(written.clone());
        }
        sessions.by_sid.insert(sid, Arc::downgrade(backlog));
    }

    pub fn remove(&self, sid: &str) {
        let mut sessions = self.sessions.lock().expect("backlogs lock poisoned");
        sessions.by_sid.remove(sid);
        sessions.early.remove(sid);
    }

    /// This server opened long-polling session `sid`.
    pub(super) fn opened(&self, sid: String) {
        let mut sessions = self.sessions.lock().expect("backlogs lock poisoned");
        sessions.early.retain(|_, e| e.opened.elapsed() < EARLY_AGE);
        let early = Early {
            opened: Instant::now(),
            upgraded: None,
            read_cap: None,
        };
        sessions.early.insert(sid, early);
    }

    /// A connection asks to upgrade session `sid`: while the session has not connected, the
    /// connection's reads are capped. Under the lock, so a CONNECT accepted meanwhile lifts
    /// the cap. Engine.IO takes one upgrade per session: a later request's cap stays.
    pub(super) fn upgrading(&self, sid: &str, cap: &ReadCap) {
        let mut sessions = self.sessions.lock().expect("backlogs lock poisoned");
        if let Some(early) = sessions.early.get_mut(sid) {
            cap.cap_from_now(self.pre_connect_bytes);
            early.read_cap.get_or_insert_with(|| cap.clone());
        }
    }

    /// Session `sid` is one of this server's that has not connected yet.
    pub(super) fn is_early(&self, sid: &str) -> bool {
        let sessions = self.sessions.lock().expect("backlogs lock poisoned");
        sessions.early.contains_key(sid)
    }

    /// Session `sid` upgrades to a WebSocket on the connection `written` counts. Only a
    /// session of this server's, upgraded once: a later upgrade request changes nothing.
    pub(super) fn upgraded(&self, sid: &str, written: Written) {
        let mut sessions = self.sessions.lock().expect("backlogs lock poisoned");
        if let Some(backlog) = sessions.by_sid.get(sid).and_then(Weak::upgrade) {
            backlog.attach(written);
        } else if let Some(early) = sessions.early.get_mut(sid) {
            early.upgraded.get_or_insert(written);
        }
    }

    pub(super) fn get(&self, sid: &str) -> Option<Arc<Backlog>> {
        let sessions = self.sessions.lock().expect("backlogs lock poisoned");
        sessions.by_sid.get(sid)?.upgrade()
    }
}

/// Bytes this server has written to one connection so far, in every request's extensions:
/// how a Socket.IO session tells whether its client reads what it is sent.
#[derive(Clone, Debug, Default)]
pub struct Written(Arc<WrittenInner>);

#[derive(Debug, Default)]
struct WrittenInner {
    bytes: AtomicU64,
    /// Woken on every write.
    progress: Notify,
}

impl Written {
    pub fn get(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }

    /// Resolves at the next write after it was created (whether polled yet or not).
    pub fn progress(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.progress.notified()
    }

    pub(crate) fn add(&self, n: usize) {
        self.0.bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.0.progress.notify_waiters();
    }
}

/// What a socket's client may leave unread before replies wait and pushes drop it.
#[derive(Clone, Copy, Debug)]
pub struct SendBuffer {
    /// Bytes of replies and pushes (`SEND_BUFFER_BYTES`).
    pub bytes: u64,
    /// Packets in the socket's queue (`SEND_BUFFER_PACKETS`).
    pub packets: usize,
    /// How long a client may read nothing while replies wait before it is dropped
    /// (`PING_TIMEOUT`).
    pub stall_timeout: Duration,
}

/// What was sent to one socket and has not reached its client yet, in bytes and in packets.
///
/// socketioxide bounds a socket's queue in packets, and one packet may hold a megabyte, so the
/// bytes are bounded here: what was handed to the socket, against what left this server for
/// the client (bytes written to its WebSocket connection, or taken by its long-polling
/// requests). The packets are counted too, each delivered once the bytes up to its end are,
/// and kept under half the socket's queue, so the queue is never what overflows.
///
/// The socket's own replies ([`Backlog::reserve`]) take at most half of either bound and wait
/// for the client to read when it is taken, however fast the client asked: an honest burst is
/// answered at the pace the client reads, never dropped. Pushes (`changed`, `blob-available`)
/// cannot wait ([`Backlog::try_charge`]): they may fill the rest, so a burst of replies never
/// crowds them out; a client behind by all of it has stopped reading and is dropped.
pub struct Backlog {
    budget: u64,
    /// Packets that may be on their way at once: half the socket's queue.
    packets: usize,
    /// A std mutex: held to add up, never across an await.
    counts: Mutex<Counted>,
    /// Woken when a long-polling request takes packets.
    polled: Notify,
}

#[derive(Default)]
struct Counted {
    /// Bytes handed to the socket (never below `delivered`: what left beyond our replies,
    /// heartbeats and small events, is no credit for later ones).
    sent: u64,
    /// Bytes taken by long-polling requests.
    polled: u64,
    /// The WebSocket connection, and its bytes written before it carried this session.
    websocket: Option<(Written, u64)>,
    /// Where each packet not yet delivered ends, as a count of bytes sent, oldest first.
    in_flight: VecDeque<u64>,
}

impl Counted {
    /// Bytes and packets sent and not yet delivered.
    fn queued(&mut self) -> (u64, usize) {
        let delivered = self.delivered();
        self.sent = self.sent.max(delivered);
        while self.in_flight.front().is_some_and(|end| *end <= delivered) {
            self.in_flight.pop_front();
        }
        (self.sent - delivered, self.in_flight.len())
    }

    fn delivered(&self) -> u64 {
        let websocket = self
            .websocket
            .as_ref()
            .map_or(0, |(written, base)| written.get().saturating_sub(*base));
        self.polled + websocket
    }
}

/// How long [`Backlog::reserve`] waits between looks at the counts, in case a wake-up fell
/// between two of them (a WebSocket attached meanwhile).
const BACKLOG_RECHECK: Duration = Duration::from_secs(1);

impl Backlog {
    /// `budget` bytes, for a socket whose queue holds `packets` packets.
    pub fn new(budget: u64, packets: usize) -> Arc<Self> {
        Arc::new(Self {
            budget,
            packets: (packets / 2).max(2),
            counts: Mutex::new(Counted::default()),
            polled: Notify::new(),
        })
    }

    /// The session's packets go out on this WebSocket connection from now on; the first
    /// connection named stays (a session upgrades once).
    pub fn attach(&self, written: Written) {
        let mut counts = self.counts.lock().expect("backlog lock poisoned");
        if counts.websocket.is_none() {
            let base = written.get();
            counts.websocket = Some((written, base));
        }
    }

    pub(super) fn polled(&self, bytes: u64) {
        self.counts.lock().expect("backlog lock poisoned").polled += bytes;
        self.polled.notify_waiters();
    }

    #[cfg(test)]
    /// Bytes and packets sent and not yet delivered.
    pub fn queued(&self) -> (u64, usize) {
        self.counts.lock().expect("backlog lock poisoned").queued()
    }

    /// Counts a packet of `len` bytes pushed to the socket if the budget has room for it (an
    /// empty backlog takes any one); `false`: the client is behind by all of it.
    pub fn try_charge(&self, len: u64) -> bool {
        self.charge(len, self.budget, self.packets)
    }

    /// Counts a packet of `len` bytes if it fits under `bytes` and `packets` (or nothing is
    /// on its way).
    fn charge(&self, len: u64, bytes: u64, packets: usize) -> bool {
        let mut counts = self.counts.lock().expect("backlog lock poisoned");
        let (queued, in_flight) = counts.queued();
        if in_flight == 0 || (queued + len <= bytes && in_flight < packets) {
            counts.sent += len;
            let end = counts.sent;
            counts.in_flight.push_back(end);
            return true;
        }
        false
    }

    /// Waits until a reply of `len` bytes fits half the budget, in bytes and in packets (an
    /// empty backlog takes any one reply), and counts it as sent. `false`: the client read nothing for `stall` and
    /// must be dropped.
    pub async fn reserve(&self, len: u64, stall: Duration) -> bool {
        let mut progress_at = Instant::now();
        let mut last = None;
        loop {
            let written = {
                let counts = self.counts.lock().expect("backlog lock poisoned");
                counts.websocket.as_ref().map(|(w, _)| w.clone())
            };
            // Both wake-ups are armed before the counts are read, so none falls in between.
            let polled = self.polled.notified();
            let wrote = written.as_ref().map(Written::progress);
            let wrote = async {
                match wrote {
                    Some(wrote) => wrote.await,
                    None => std::future::pending().await,
                }
            };
            if self.charge(len, self.budget / 2, self.packets / 2) {
                return true;
            }
            let delivered = self
                .counts
                .lock()
                .expect("backlog lock poisoned")
                .delivered();
            if last != Some(delivered) {
                last = Some(delivered);
                progress_at = Instant::now();
            }
            let left = stall.saturating_sub(progress_at.elapsed());
            if left.is_zero() {
                return false;
            }
            tokio::select! {
                () = polled => {}
                () = wrote => {}
                () = tokio::time::sleep(left.min(BACKLOG_RECHECK)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_backlog_takes_replies_up_to_half_its_bounds_and_pushes_up_to_all_of_them() {
        // 200 bytes, and 4 packets on their way (a queue of 8).
        let backlog = Backlog::new(200, 8);
        let stall = Duration::from_millis(50);
        // An empty backlog takes any one reply, even one over the budget.
        assert!(backlog.reserve(250, stall).await);
        assert_eq!(backlog.queued(), (250, 1));
        // Nothing read: the next reply waits, then gives up; a push is refused.
        assert!(!backlog.reserve(10, stall).await);
        assert!(!backlog.try_charge(10));
        // A poll took it all: room again; bytes beyond what was sent are no credit.
        backlog.polled(400);
        assert_eq!(backlog.queued(), (0, 0));
        // Replies: half the bytes...
        assert!(backlog.reserve(60, stall).await);
        assert!(!backlog.reserve(50, stall).await);
        assert!(backlog.reserve(40, stall).await);
        // ...and half the packets.
        assert!(!backlog.reserve(0, stall).await);
        // Pushes use the rest.
        assert!(backlog.try_charge(90));
        assert!(backlog.try_charge(0));
        assert_eq!(backlog.queued(), (190, 4));
        assert!(!backlog.try_charge(0));
        // Delivering the first packet's bytes frees its place.
        backlog.polled(60);
        assert_eq!(backlog.queued(), (130, 3));
        assert!(backlog.try_charge(10));
    }
}
