//! Prometheus metrics, built on the Prometheus project's `prometheus-client`, served in the
//! text format at `GET /metrics` to a caller with `Authorization: Bearer <METRICS_TOKEN>`.
//!
//! One set of metrics per process, enabled by `METRICS_TOKEN`: without it nothing is recorded
//! (every call here is one branch on an unset cell) and `/metrics` answers 404. Recording is a
//! few atomic additions, on label sets that are fixed strings (event names, outcomes, route
//! templates), so the number of series is bounded whatever clients send.
//!
//! Gauges of what exists now (sockets, connections, records) are read when scraped; the bytes
//! of the content store come from a listing of it every [`CONTENT_MEASURE_INTERVAL`].

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// How often the content store is listed to measure it (metadata only: no byte is read).
pub const CONTENT_MEASURE_INTERVAL: Duration = Duration::from_secs(300);

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// What a Socket.IO event came to.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are lower case
pub enum Outcome {
    /// A write was committed.
    committed,
    /// A write named a stale version.
    conflict,
    /// The store failed.
    error,
    /// Refused before it ran: bad arguments, read-only token, rate limit, expired token.
    refused,
    /// Any other answer (reads).
    ok,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SweptLabels {
    removed: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreRequestLabels {
    request: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 0.1 ms to about 13 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// What exists now, counted when scraped.
pub struct Census {
    /// Socket.IO sockets on this node by their transport now: (polling, websocket).
    pub sockets: (usize, usize),
    /// TCP connections open (HTTP and Socket.IO).
    pub connections: usize,
    /// Blob Service records in the index.
    pub records: usize,
}

struct Metrics {
    registry: Registry,
    sockets: Family<TransportLabels, Gauge>,
    connections: Gauge,
    events: Family<EventLabels, Counter>,
    commit_seconds: Histogram,
    changed: Counter,
    dropped: Counter,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Histograms<RouteLabels>,
    content_bytes: Gauge,
    content_objects: Gauge,
    records: Gauge,
    swept: Family<SweptLabels, Counter>,
    backend_errors: Family<BackendLabels, Counter>,
    object_store_requests: Family<StoreRequestLabels, Counter>,
    redis_reconnections: Counter,
    unwritten_bytes: Gauge,
    checkpoint_seconds: Histogram,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("blobs");
        let metrics = Self {
            registry: Registry::default(),
            sockets: Family::default(),
            connections: Gauge::default(),
            events: Family::default(),
            commit_seconds: latency(),
            changed: Counter::default(),
            dropped: Counter::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency),
            content_bytes: Gauge::default(),
            content_objects: Gauge::default(),
            records: Gauge::default(),
            swept: Family::default(),
            backend_errors: Family::default(),
            object_store_requests: Family::default(),
            redis_reconnections: Counter::default(),
            unwritten_bytes: Gauge::default(),
            checkpoint_seconds: latency(),
        };
        registry.register(
            "build",
            "The version of this server",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register(
            "sockets",
            "Socket.IO connections on this node, by their transport now",
            metrics.sockets.clone(),
        );
        registry.register(
            "connections",
            "TCP connections open (HTTP and Socket.IO)",
            metrics.connections.clone(),
        );
        registry.register(
            "socketio_events",
            "Socket.IO events answered, by event and outcome",
            metrics.events.clone(),
        );
        registry.register(
            "commit_seconds",
            "Time a write takes to commit (decided, durable and acknowledged), both protocols",
            metrics.commit_seconds.clone(),
        );
        registry.register(
            "changed_deliveries",
            "`changed` events handed to sockets of this node",
            metrics.changed.clone(),
        );
        registry.register(
            "clients_dropped",
            "Sockets disconnected because their client stopped reading",
            metrics.dropped.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_seconds",
            "Time to the response head of HTTP requests, by route template",
            metrics.request_seconds.clone(),
        );
        registry.register(
            "content_bytes",
            "Bytes in the content store, as last listed",
            metrics.content_bytes.clone(),
        );
        registry.register(
            "content_objects",
            "Contents in the content store, as last listed",
            metrics.content_objects.clone(),
        );
        registry.register(
            "blob_service_records",
            "Blob Service records in the index",
            metrics.records.clone(),
        );
        registry.register(
            "retention_swept",
            "What the Blob Service's retention sweep removed: records, contents, bytes",
            metrics.swept.clone(),
        );
        registry.register(
            "backend_errors",
            "Failed calls to Redis and to the object store",
            metrics.backend_errors.clone(),
        );
        registry.register(
            "object_store_requests",
            "Requests sent to the object store, by kind (get, not_modified: a get answered 304, put, list, delete, copy, upload)",
            metrics.object_store_requests.clone(),
        );
        registry.register(
            "redis_reconnections",
            "Times the connection to Redis was lost and made again",
            metrics.redis_reconnections.clone(),
        );
        registry.register(
            "unwritten_bytes",
            "Bytes of committed blobs whose files wait for the next checkpoint (file store)",
            metrics.unwritten_bytes.clone(),
        );
        registry.register(
            "checkpoint_seconds",
            "Time a checkpoint takes: files written, the file system synced, the journal trimmed",
            metrics.checkpoint_seconds.clone(),
        );
        // Series a rate is taken of exist from the start, at 0.
        for backend in ["redis", "object_store"] {
            drop(
                metrics
                    .backend_errors
                    .get_or_create(&BackendLabels { backend }),
            );
        }
        Self {
            registry,
            ..metrics
        }
    }
}

/// Starts recording (once per process; later calls do nothing).
pub fn enable() {
    METRICS.get_or_init(Metrics::new);
}

fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

/// The metrics in the Prometheus text format, with `census` as the current gauges; `None`
/// when recording is off.
pub fn render(census: Census) -> Option<String> {
    let metrics = get()?;
    let (polling, websocket) = census.sockets;
    for (transport, count) in [("polling", polling), ("websocket", websocket)] {
        metrics
            .sockets
            .get_or_create(&TransportLabels { transport })
            .set(count as i64);
    }
    metrics.connections.set(census.connections as i64);
    metrics.records.set(census.records as i64);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics.registry)
        .expect("writing to a String cannot fail");
    Some(text)
}

/// A Socket.IO event was answered.
pub fn event(event: &'static str, outcome: Outcome) {
    if let Some(m) = get() {
        m.events
            .get_or_create(&EventLabels { event, outcome })
            .inc();
    }
}

/// A write was decided and, when committed, made durable, in `took`.
pub fn blob_set(took: Duration) {
    if let Some(m) = get() {
        m.commit_seconds.observe(took.as_secs_f64());
    }
}

/// `changed` was handed to `sockets` sockets.
pub fn changed_delivered(sockets: usize) {
    if let Some(m) = get() {
        m.changed.inc_by(sockets as u64);
    }
}

/// A socket was dropped for not reading.
pub fn client_dropped() {
    if let Some(m) = get() {
        m.dropped.inc();
    }
}

/// An HTTP request on `route` (its template, e.g. `/v1/blobs/{ref}`) was answered.
pub fn request(route: &str, method: &str, status: u16, took: Duration) {
    if let Some(m) = get() {
        m.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        m.request_seconds
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }
}

/// The bytes of blobs whose files are not written yet.
pub fn unwritten(bytes: u64) {
    if let Some(m) = get() {
        m.unwritten_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// A checkpoint that wrote and synced files took `took`.
pub fn checkpoint(took: Duration) {
    if let Some(m) = get() {
        m.checkpoint_seconds.observe(took.as_secs_f64());
    }
}

/// The content store as last listed.
pub fn content_measured(objects: u64, bytes: u64) {
    if let Some(m) = get() {
        m.content_objects.set(objects as i64);
        m.content_bytes.set(bytes as i64);
    }
}

/// A retention sweep removed these.
pub fn swept(records: u64, contents: u64, bytes: u64) {
    if let Some(m) = get() {
        for (removed, count) in [
            ("records", records),
            ("contents", contents),
            ("bytes", bytes),
        ] {
            m.swept
                .get_or_create(&SweptLabels { removed })
                .inc_by(count);
        }
    }
}

/// A call to Redis failed.
pub fn redis_error() {
    backend_error("redis");
}

/// A call to the object store failed.
pub fn object_store_error() {
    backend_error("object_store");
}

fn backend_error(backend: &'static str) {
    if let Some(m) = get() {
        m.backend_errors
            .get_or_create(&BackendLabels { backend })
            .inc();
    }
}

/// A request was sent to the object store (`request`: its kind).
pub fn object_store_request(request: &'static str) {
    if let Some(m) = get() {
        m.object_store_requests
            .get_or_create(&StoreRequestLabels { request })
            .inc();
    }
}

/// The connection to Redis was lost and is being made again.
pub fn redis_reconnecting() {
    if let Some(m) = get() {
        m.redis_reconnections.inc();
    }
}

/// Whether metrics are recorded in this process.
pub fn enabled() -> bool {
    get().is_some()
}
