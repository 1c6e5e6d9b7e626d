//! Overload limits: Engine.IO sessions that have not connected yet, Socket.IO connection slots
//! (per server and per client address) and the event rate of one socket. Each limit refuses
//! work early and cheaply, before it costs memory or disk.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Body as _;
use tokio::sync::Notify;

use crate::edge::accept::{ReadCap, Written};
use crate::http::error_response;
use crate::serve::state::AppState;

/// A count with a ceiling, without a lock: each place taken is held by a [`Place`] and given
/// back when that is dropped. The edge's open connections and the Engine.IO sessions waiting
/// to authenticate are counted with it.
pub struct Cap {
    max: usize,
    taken: AtomicUsize,
}

impl Cap {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            taken: AtomicUsize::new(0),
        })
    }

    /// A place, or `None` when all `max` are taken.
    pub fn take(self: &Arc<Self>) -> Option<Place> {
        let before = self
            .taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(Place {
            cap: self.clone(),
            rank: before + 1,
        })
    }

    /// Places taken now.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }
}

/// One place under a [`Cap`]; given back when dropped.
pub struct Place {
    cap: Arc<Cap>,
    rank: usize,
}

impl Place {
    /// How many places were taken with this one (1 for the first).
    pub fn rank(&self) -> usize {
        self.rank
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.cap.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An Engine.IO session's place among those waiting to authenticate (no Socket.IO CONNECT with
/// a valid token yet; `MAX_PENDING_HANDSHAKES`). Such a session costs memory (it keeps its
/// handshake request) and no token vouches for it; each lasts at most `CONNECT_TIMEOUT`. The
/// place rides in the handshake request's extensions, which the session keeps for its whole
/// life: it is freed when the session connects ([`PendingHandshake::connected`]) or ends,
/// whichever comes first. A WebSocket handshake also carries its connection's [`ReadCap`],
/// lifted at the same moment.
#[derive(Clone)]
pub struct PendingHandshake(Arc<Mutex<Option<Place>>>, Option<ReadCap>);

impl PendingHandshake {
    fn new(place: Place, read_cap: Option<ReadCap>) -> Self {
        Self(Arc::new(Mutex::new(Some(place))), read_cap)
    }

    pub fn connected(&self) {
        self.0.lock().expect("handshake slot lock poisoned").take();
        if let Some(cap) = &self.1 {
            cap.lift();
        }
    }
}

/// Middleware in front of Socket.IO.
/// - A request that opens a new Engine.IO session (under `/socket.io/`, without `sid`) takes a
///   place among the sessions waiting to authenticate ([`PendingHandshake`]), or gets 503.
/// - Until its CONNECT is accepted, a session may send at most `MAX_CONNECT_BYTES`: on its
///   WebSocket connection ([`ReadCap`]) and in each long-polling `POST`. Otherwise the
///   unfinished message of a client without a token would be held, up to the largest message,
///   for as long as the client trickles it.
/// - A request of a live session tells its [`Backlog`] what reached the client: a WebSocket
///   upgrade names the connection its packets go out on from then; a long-polling `GET` carries
///   the packets it takes out of the session's queue.
pub async fn socket_io(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if !request.uri().path().starts_with("/socket.io") {
        return next.run(request).await;
    }
    let query = request.uri().query().unwrap_or_default();
    let sid = query_param(query, "sid").map(str::to_owned);
    let websocket = query_param(query, "transport") == Some("websocket");
    let Some(sid) = sid else {
        let Some(place) = state.handshakes().take() else {
            tracing::debug!("handshake refused: too many sessions waiting to connect");
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many connections waiting to authenticate".to_owned(),
            );
        };
        let read_cap = request
            .extensions()
            .get::<ReadCap>()
            .filter(|_| websocket)
            .cloned();
        if let Some(cap) = &read_cap {
            cap.cap_from_now(state.backlogs().pre_connect_bytes);
        }
        request
            .extensions_mut()
            .insert(PendingHandshake::new(place, read_cap));
        let response = next.run(request).await;
        if websocket || response.status() != StatusCode::OK {
            return response;
        }
        // A long-polling session may upgrade before its CONNECT is checked: its id, from the
        // open packet (`0{"sid":"…",…}`), is what an early upgrade must name.
        let (parts, body) = response.into_parts();
        let Ok(open) = axum::body::to_bytes(body, OPEN_PACKET_LIMIT).await else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        if let Some(sid) = opened_sid(&open) {
            state.backlogs().opened(sid);
        }
        return Response::from_parts(parts, axum::body::Body::from(open));
    };
    if websocket {
        // Engine.IO answers 101 before it looks the session up: only a session this server
        // opened, upgraded once, counts (see `Backlogs::upgraded`).
        let written = request.extensions().get::<Written>().cloned();
        if let Some(cap) = request.extensions().get::<ReadCap>() {
            state.backlogs().upgrading(&sid, cap);
        }
        let response = next.run(request).await;
        if let Some(written) =
            written.filter(|_| response.status() == StatusCode::SWITCHING_PROTOCOLS)
        {
            state.backlogs().upgraded(&sid, written);
        }
        return response;
    }
    let backlog = state.backlogs().get(&sid);
    let polls = request.method() == Method::GET;
    if !polls && state.backlogs().is_early(&sid) {
        let budget = state.backlogs().pre_connect_bytes;
        let length = crate::http::declared_length(request.headers());
        if length.is_some_and(|length| length > budget) {
            return error_response(StatusCode::PAYLOAD_TOO_LARGE, PRE_CONNECT.to_owned());
        }
        // A body without a length is cut off at the budget (Engine.IO answers 400).
        request = request
            .map(|body| axum::body::Body::new(http_body_util::Limited::new(body, budget as usize)));
    }
    let response = next.run(request).await;
    if let Some(backlog) = backlog.filter(|_| polls) {
        backlog.polled(response.body().size_hint().lower());
    }
    response
}

/// Why a session that has not connected may send no more.
pub const PRE_CONNECT: &str = "More data than a Socket.IO CONNECT before connecting";

/// The first value of a query parameter, as Engine.IO reads it.
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
}

/// Largest Engine.IO open packet read back for its session id.
const OPEN_PACKET_LIMIT: usize = 4096;

/// The session id of an Engine.IO open packet.
fn opened_sid(packet: &[u8]) -> Option<String> {
    let open: serde_json::Value = serde_json::from_slice(packet.strip_prefix(b"0")?).ok()?;
    Some(open.get("sid")?.as_str()?.to_owned())
}

/// The live sessions' backlogs, by session id, for [`socket_io`].
pub struct Backlogs {
    /// A std mutex: held for a map update or lookup only.
    sessions: Mutex<Sessions>,
    /// `MAX_CONNECT_BYTES`: what a session may send before it connects.
    pre_connect_bytes: u64,
}

#[derive(Default)]
struct Sessions {
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
    fn opened(&self, sid: String) {
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
    fn upgrading(&self, sid: &str, cap: &ReadCap) {
        let mut sessions = self.sessions.lock().expect("backlogs lock poisoned");
        if let Some(early) = sessions.early.get_mut(sid) {
            cap.cap_from_now(self.pre_connect_bytes);
            early.read_cap.get_or_insert_with(|| cap.clone());
        }
    }

    /// Session `sid` is one of this server's that has not connected yet.
    fn is_early(&self, sid: &str) -> bool {
        let sessions = self.sessions.lock().expect("backlogs lock poisoned");
        sessions.early.contains_key(sid)
    }

    /// Session `sid` upgrades to a WebSocket on the connection `written` counts. Only a
    /// session of this server's, upgraded once: a later upgrade request changes nothing.
    fn upgraded(&self, sid: &str, written: Written) {
        let mut sessions = self.sessions.lock().expect("backlogs lock poisoned");
        if let Some(backlog) = sessions.by_sid.get(sid).and_then(Weak::upgrade) {
            backlog.attach(written);
        } else if let Some(early) = sessions.early.get_mut(sid) {
            early.upgraded.get_or_insert(written);
        }
    }

    fn get(&self, sid: &str) -> Option<Arc<Backlog>> {
        let sessions = self.sessions.lock().expect("backlogs lock poisoned");
        sessions.by_sid.get(sid)?.upgrade()
    }
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

    fn polled(&self, bytes: u64) {
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

/// Why a connection was refused; the message is the client's `connect_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionRefused {
    #[error("Server is at its connection limit")]
    ServerFull,
    #[error("Too many connections from this address")]
    AddressFull,
}

/// Counts live connections, in total and per client address.
pub struct Connections {
    max_total: usize,
    max_per_address: usize,
    /// Live connections per address, and their sum. A std mutex: held for a map update only.
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl Connections {
    pub fn new(max_total: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_address,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Takes a slot for a connection from `address`, released when the slot is dropped.
    pub fn acquire(self: &Arc<Self>, address: IpAddr) -> Result<ConnectionSlot, ConnectionRefused> {
        let mut counts = self.counts.lock().expect("connection counts lock poisoned");
        if counts.total >= self.max_total {
            return Err(ConnectionRefused::ServerFull);
        }
        let per_address = counts.per_address.entry(address).or_insert(0);
        // 0: no per-address limit.
        if self.max_per_address > 0 && *per_address >= self.max_per_address {
            return Err(ConnectionRefused::AddressFull);
        }
        *per_address += 1;
        counts.total += 1;
        Ok(ConnectionSlot {
            connections: self.clone(),
            address,
        })
    }

    #[cfg(test)]
    /// Live connections in total.
    pub fn total(&self) -> usize {
        self.counts
            .lock()
            .expect("connection counts lock poisoned")
            .total
    }
}

/// One counted connection; dropping it frees the slot.
pub struct ConnectionSlot {
    connections: Arc<Connections>,
    address: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self
            .connections
            .counts
            .lock()
            .expect("connection counts lock poisoned");
        counts.total -= 1;
        if let Some(n) = counts.per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                counts.per_address.remove(&self.address);
            }
        }
    }
}

/// What the rate limiter says of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Over the rate: answer `{ error }`.
    Refuse,
    /// Still sending at over twice the rate after its grace ran out: disconnect.
    Disconnect,
}

/// Two token buckets refilled at the sustained rate: `allowance` (capacity: the burst) pays for
/// accepted events; `grace` (same capacity) pays for refused ones. A client at up to the rate is
/// never refused; one at up to twice the rate is refused for the excess; one above that drains
/// its grace and is disconnected.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    allowance: f64,
    grace: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(per_second.max(1)),
            burst,
            allowance: burst,
            grace: burst,
            last: Instant::now(),
        }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.last = now;
        self.allowance = (self.allowance + refill).min(self.burst);
        self.grace = (self.grace + refill).min(self.burst);
        if self.allowance >= 1.0 {
            self.allowance -= 1.0;
            Verdict::Accept
        } else if self.grace >= 1.0 {
            self.grace -= 1.0;
            Verdict::Refuse
        } else {
            Verdict::Disconnect
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slots_are_counted_per_address_and_freed_on_drop() {
        let connections = Connections::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = connections.acquire(a).unwrap();
        let _second = connections.acquire(a).unwrap();
        assert_eq!(
            connections.acquire(a).err(),
            Some(ConnectionRefused::AddressFull)
        );
        let _third = connections.acquire(b).unwrap();
        assert_eq!(
            connections.acquire(b).err(),
            Some(ConnectionRefused::ServerFull)
        );
        drop(first);
        assert_eq!(connections.total(), 2);
        assert!(connections.acquire(a).is_ok());

        // 0: any number from one address, up to the total.
        let unlimited = Connections::new(2_000, 0);
        let slots: Vec<_> = (0..2_000).map(|_| unlimited.acquire(a).unwrap()).collect();
        assert_eq!(
            unlimited.acquire(a).err(),
            Some(ConnectionRefused::ServerFull)
        );
        drop(slots);
    }

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

    #[test]
    fn places_are_ranked_capped_and_freed() {
        let open = Cap::new(2);
        let first = open.take().unwrap();
        let second = open.take().unwrap();
        assert_eq!((first.rank(), second.rank()), (1, 2));
        assert!(open.take().is_none());
        drop(first);
        assert_eq!(open.take().unwrap().rank(), 2);
    }

    #[test]
    fn pending_handshakes_are_capped_and_freed_on_connect_or_drop() {
        let handshakes = Cap::new(2);
        let first = PendingHandshake::new(handshakes.take().unwrap(), None);
        let second = PendingHandshake::new(handshakes.take().unwrap(), None);
        assert!(handshakes.take().is_none());
        first.connected();
        assert_eq!(handshakes.taken(), 1);
        // A clone kept by the session does not hold the place twice.
        let kept = second.clone();
        drop(second);
        assert_eq!(handshakes.taken(), 1);
        drop(kept);
        assert_eq!(handshakes.taken(), 0);
    }

    #[test]
    fn the_rate_limiter_accepts_the_rate_refuses_the_excess_and_drops_abuse() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(10, 5);
        // The burst is accepted at once, the next five are refused, then the client is dropped.
        let verdicts: Vec<Verdict> = (0..11).map(|_| limiter.check(start)).collect();
        assert_eq!(&verdicts[..5], &[Verdict::Accept; 5]);
        assert_eq!(&verdicts[5..10], &[Verdict::Refuse; 5]);
        assert_eq!(verdicts[10], Verdict::Disconnect);

        // A client at the sustained rate is never refused.
        let mut steady = RateLimiter::new(10, 5);
        for i in 0..100 {
            let at = start + Duration::from_millis(100 * i);
            assert_eq!(steady.check(at), Verdict::Accept);
        }
    }
}
