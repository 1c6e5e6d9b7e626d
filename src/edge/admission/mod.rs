//! Admission: what a client may hold and send, refused early and cheaply, before it costs
//! memory or disk. This module owns every such bound on a connection:
//! - counted places ([`Cap`]): the edge's open TCP connections (`MAX_CONNECTIONS`) and the
//!   Engine.IO sessions waiting to authenticate (`MAX_PENDING_HANDSHAKES`, [`socket_io`]);
//! - live Socket.IO sessions and HTTP event streams, per server and per client address
//!   ([`Sessions`], `MAX_SESSIONS` and `MAX_CONNECTIONS_PER_IP`);
//! - what a socket's client has not read yet ([`backpressure`], `SEND_BUFFER_BYTES`);
//! - the events a socket may send ([`rate`], `EVENTS_PER_SECOND`).
//!
//! It answers in bytes ([`super::reply`]) and imports no route and no state: the routes and the
//! protocol hold an [`Admission`] and ask it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Body as _;

use super::reply::{declared_length, error_response};
use crate::config::Config;

pub mod backpressure;
pub mod rate;

use backpressure::{Backlog, Backlogs, Written};
use rate::EventLimits;

/// The answer past `MAX_CONNECTIONS` or `MAX_SESSIONS`, over HTTP and as a `connect_error`.
pub const SERVER_FULL: &str = "Server is at its connection limit";

/// Every bound of this module that a server's connections share, built once from the
/// configuration. Cloning is cheap: the counters are shared.
#[derive(Clone)]
pub struct Admission {
    /// Live Socket.IO sessions and HTTP event streams (`MAX_SESSIONS`,
    /// `MAX_CONNECTIONS_PER_IP`).
    pub sessions: Arc<Sessions>,
    /// Engine.IO sessions waiting to authenticate (`MAX_PENDING_HANDSHAKES`).
    pub handshakes: Arc<Cap>,
    /// The live sessions' backlogs, for [`socket_io`].
    pub backlogs: Arc<Backlogs>,
    /// What a socket's client may leave unread (`SEND_BUFFER_BYTES`, `SEND_BUFFER_PACKETS`).
    pub send_buffer: backpressure::SendBuffer,
    /// What one socket may send (`EVENTS_PER_SECOND`, `EVENT_BURST`, `MAX_PENDING_BYTES`).
    pub events: EventLimits,
}

impl Admission {
    /// The bounds `config` sets; `max_sessions` is `MAX_SESSIONS` as resolved at start (by
    /// default the connection cap).
    pub fn new(config: &Config, max_sessions: usize) -> Self {
        Self {
            sessions: Sessions::new(max_sessions, config.max_connections_per_ip),
            handshakes: Cap::new(config.max_pending_handshakes),
            backlogs: Arc::new(Backlogs::new(config.max_connect_bytes)),
            send_buffer: backpressure::SendBuffer {
                bytes: config.send_buffer_bytes,
                packets: config.send_buffer_packets as usize,
                stall_timeout: config.ping_timeout,
            },
            events: EventLimits {
                per_second: config.events_per_second,
                burst: config.event_burst,
                pending_bytes: config.max_pending_bytes,
            },
        }
    }

    /// A new socket's [`Backlog`].
    pub fn backlog(&self) -> Arc<Backlog> {
        Backlog::new(self.send_buffer.bytes, self.send_buffer.packets)
    }
}

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
    State(admission): State<Admission>,
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
        let Some(place) = admission.handshakes.take() else {
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
            cap.cap_from_now(admission.backlogs.pre_connect_bytes);
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
            admission.backlogs.opened(sid);
        }
        return Response::from_parts(parts, axum::body::Body::from(open));
    };
    if websocket {
        // Engine.IO answers 101 before it looks the session up: only a session this server
        // opened, upgraded once, counts (see `Backlogs::upgraded`).
        let written = request.extensions().get::<Written>().cloned();
        if let Some(cap) = request.extensions().get::<ReadCap>() {
            admission.backlogs.upgrading(&sid, cap);
        }
        let response = next.run(request).await;
        if let Some(written) =
            written.filter(|_| response.status() == StatusCode::SWITCHING_PROTOCOLS)
        {
            admission.backlogs.upgraded(&sid, written);
        }
        return response;
    }
    let backlog = admission.backlogs.get(&sid);
    let polls = request.method() == Method::GET;
    if !polls && admission.backlogs.is_early(&sid) {
        let budget = admission.backlogs.pre_connect_bytes;
        let length = declared_length(request.headers());
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

/// Bytes one connection may still send, in every request's extensions. Unlimited, but for a
/// WebSocket whose Engine.IO session has not connected yet: such a client has no business
/// sending more than its Socket.IO CONNECT, so a cap ([`ReadCap::cap_from_now`]) closes the
/// connection at the first read past it, before a large message is buffered whole, and the
/// CONNECT lifts it ([`ReadCap::lift`]).
#[derive(Clone, Debug, Default)]
pub struct ReadCap(Arc<ReadCapInner>);

#[derive(Debug)]
struct ReadCapInner {
    read: AtomicU64,
    limit: AtomicU64,
}

impl Default for ReadCapInner {
    fn default() -> Self {
        Self {
            read: AtomicU64::new(0),
            limit: AtomicU64::new(u64::MAX),
        }
    }
}

impl ReadCap {
    /// From now on, the connection may send at most `bytes` more.
    pub fn cap_from_now(&self, bytes: u64) {
        let read = self.0.read.load(Ordering::Relaxed);
        self.0
            .limit
            .store(read.saturating_add(bytes), Ordering::Relaxed);
    }

    pub fn lift(&self) {
        self.0.limit.store(u64::MAX, Ordering::Relaxed);
    }

    /// Counts `n` bytes read; false once they go past the cap.
    pub(crate) fn read(&self, n: usize) -> bool {
        let read = self.0.read.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        read <= self.0.limit.load(Ordering::Relaxed)
    }
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

/// Why a connection was refused; the message is the client's `connect_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionRefused {
    #[error("{SERVER_FULL}")]
    ServerFull,
    #[error("Too many connections from this address")]
    AddressFull,
}

/// Counts live Socket.IO sessions and HTTP event streams, in total and per client address.
pub struct Sessions {
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

impl Sessions {
    pub fn new(max_total: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_address,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Takes a slot for a connection from `address`, released when the slot is dropped.
    pub fn acquire(self: &Arc<Self>, address: IpAddr) -> Result<SessionSlot, SessionRefused> {
        let mut counts = self.counts.lock().expect("connection counts lock poisoned");
        if counts.total >= self.max_total {
            return Err(SessionRefused::ServerFull);
        }
        let per_address = counts.per_address.entry(address).or_insert(0);
        // 0: no per-address limit.
        if self.max_per_address > 0 && *per_address >= self.max_per_address {
            return Err(SessionRefused::AddressFull);
        }
        *per_address += 1;
        counts.total += 1;
        Ok(SessionSlot {
            sessions: self.clone(),
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
pub struct SessionSlot {
    sessions: Arc<Sessions>,
    address: IpAddr,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut counts = self
            .sessions
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
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_address_and_freed_on_drop() {
        let connections = Sessions::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = connections.acquire(a).unwrap();
        let _second = connections.acquire(a).unwrap();
        assert_eq!(
            connections.acquire(a).err(),
            Some(SessionRefused::AddressFull)
        );
        let _third = connections.acquire(b).unwrap();
        assert_eq!(
            connections.acquire(b).err(),
            Some(SessionRefused::ServerFull)
        );
        drop(first);
        assert_eq!(connections.total(), 2);
        assert!(connections.acquire(a).is_ok());

        // 0: any number from one address, up to the total.
        let unlimited = Sessions::new(2_000, 0);
        let slots: Vec<_> = (0..2_000).map(|_| unlimited.acquire(a).unwrap()).collect();
        assert_eq!(unlimited.acquire(a).err(), Some(SessionRefused::ServerFull));
        drop(slots);
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
}
