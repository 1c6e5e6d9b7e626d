//! Blobs: a self-hosted blob server with optimistic concurrency and real-time change
//! notifications, wire-compatible with the Node.js original (Socket.IO v4, one JSON file per
//! blob). Every blob has a version that grows by one per write; a write names the version it
//! replaces and a stale write is refused with the current data; every committed write is
//! pushed as `changed` to the other clients watching that blob.
//!
//! # Layout
//! - [`config`]: flags, environment and `.env`.
//! - [`auth`]: bucket tokens (JWT), verification and minting.
//! - [`names`]: validated bucket and ref names, the only inputs of a storage path.
//! - [`store`]: versioned blobs, the storage trait, the JSON-file store and the object-store
//!   backend (S3 conditional writes as the compare-and-swap).
//! - [`cas`]: content-addressed blobs (named by their BLAKE3 hash), their trait and file store.
//! - [`locks`]: per-key async locks the stores serialise each blob's writes with.
//! - [`direct`]: signed, expiring direct transfer URLs for content.
//! - [`service`]: the Blob Service: uploads with semantics and retention, named by handles,
//!   over the content store; the retention sweep.
//! - [`changes`]: change notification to Socket.IO rooms and HTTP streams.
//! - [`relay`]: messages between nodes over Redis pub/sub, subscribed again after a loss.
//! - [`durable`]: the one function that replaces a file (temp file, fsync, rename, fsync dir).
//! - [`protocol`]: the Socket.IO events and their acknowledgements; [`protocol::cas`] the
//!   content-addressed blob flow.
//! - [`http`]: the HTTP API (ETags, conditional requests, change stream, OpenAPI);
//!   [`http::cas`] the content-addressed `/blobs/{hash}` routes; [`http::service`] the Blob
//!   Service API (`/api/v1/blobs`, `/api/v1/events/subscribe`).
//! - [`edge`]: accepting connections and serving HTTP/1.1 on them: the connection cap, the
//!   request head's size and deadline, idle keep-alive, and clients that stop reading.
//! - [`proxy`]: which client address to believe (trusted proxies).
//! - [`limits`]: overload limits: handshakes waiting to authenticate, Socket.IO connection
//!   slots, per-socket event rate and the bytes a socket may have waiting for its client.
//! - [`state`]: the shared state handle.
//! - [`error`]: what clients and operators see when something fails.
//!
//! [`run`] serves on a listener until a shutdown future resolves; the binaries are thin
//! wrappers around it.

pub mod auth;
pub mod blob_service;
pub mod changes;
pub mod config;
pub mod content;
pub mod direct;
pub mod durable;
pub mod edge;
pub mod error;
pub mod http;
pub mod limits;
pub mod locks;
pub mod names;
pub mod protocol;
pub mod proxy;
pub mod relay;
pub mod state;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use socketioxide::adapter::{Adapter, Emitter};
use socketioxide::layer::SocketIoLayer;
use socketioxide::{ParserConfig, SocketIo, SocketIoBuilder};
use socketioxide_redis::{FredAdapter, RedisAdapterCtr};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::map_response_body::MapResponseBodyLayer;
use tower_http::timeout::TimeoutBody;

use crate::auth::Keys;
use crate::blob_service::{BlobService, RecordFiles, RecordObjects, RecordStore};
use crate::config::{Config, ConfigError, StoreKind};
use crate::content::{CLAIM_GRACE, ContentStore, FsContent, ObjectContent};
use crate::direct::{DirectUrls, PresignedUrls};
use crate::edge::EdgeLimits;
use crate::error::StartError;
use crate::state::AppState;
use crate::store::{FsStore, ObjectBlobs, Store};

/// Serves Blobs on `listener` until `shutdown` resolves, then shuts down gracefully: new events
/// are refused, every event already accepted (writes included) is finished and acknowledged,
/// and only then are the sockets closed.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let secret = config.secret()?;
    let keys = Keys::new(secret);
    let storage_error = |source| StartError::Storage {
        path: config.storage.display().to_string(),
        source,
    };
    let (store, content, records, direct): Backend = match config.store {
        StoreKind::Fs => (
            Arc::new(FsStore::open(&config.storage).map_err(storage_error)?),
            Arc::new(FsContent::open(&config.storage).map_err(storage_error)?),
            Arc::new(RecordFiles::new(&config.storage)),
            None,
        ),
        StoreKind::S3 => {
            let s3 = config.s3()?;
            let prefix = &config.s3_prefix;
            let shared: Arc<dyn object_store::ObjectStore> = Arc::new(s3.clone());
            (
                Arc::new(ObjectBlobs::new(shared.clone(), prefix)),
                Arc::new(ObjectContent::new(shared.clone(), prefix, CLAIM_GRACE)),
                Arc::new(RecordObjects::new(shared, prefix)),
                Some(Arc::new(PresignedUrls::new(s3, prefix, config.direct_url_ttl)) as _),
            )
        }
    };
    let redis_error = |url: &str, source| StartError::Redis {
        url: redacted(url),
        source,
    };
    // With other nodes, the records' channel is subscribed before the records are read: a
    // record another node writes meanwhile is then in storage, or on the channel, or both.
    let cluster = match &config.redis_url {
        None => None,
        Some(url) => {
            let client = redis::Client::open(resp3(url)?).map_err(|e| redis_error(url, e))?;
            let records_feed = relay::subscribe(&client, blob_service::cluster::CHANNEL)
                .await
                .map_err(|e| redis_error(url, e))?;
            Some((url, client, records_feed))
        }
    };
    let service = BlobService::open(records, content.clone())
        .await
        .map_err(StartError::Records)?;
    let state = AppState::new(&config, keys, store, content, service, direct, secret);
    tokio::spawn(retention_sweeps(
        state.clone(),
        config.retention_sweep_interval,
        // A direct upload nobody confirmed within twice its URL's lifetime never will be.
        config.direct_url_ttl * 2,
    ));
    if config.store == StoreKind::Fs {
        tokio::spawn(scrubs(state.clone(), config.scrub_interval));
    }
    let builder = sockets(&config, &state);
    match cluster {
        None => {
            let (layer, io) = builder.build_layer();
            protocol::register(&io);
            state.changes().attach(io.clone());
            serve(listener, &config, state, layer, io, shutdown).await
        }
        Some((url, client, records_feed)) => {
            let adapter = RedisAdapterCtr::new_with_fred(adapter_client(&resp3(url)?)?)
                .await
                .map_err(|e| StartError::Adapter(e.to_string()))?;
            let (layer, io) = builder
                .with_adapter::<FredAdapter<Emitter>>(adapter)
                .build_layer();
            protocol::register_cluster(&io)
                .await
                .map_err(|e| StartError::Adapter(e.to_string()))?;
            state.changes().attach_cluster(io.clone());
            state
                .changes()
                .relay(&client)
                .await
                .map_err(|e| redis_error(url, e))?;
            state
                .service()
                .join(&client, records_feed, state.changes().closing())
                .await
                .map_err(StartError::Records)?;
            serve(listener, &config, state, layer, io, shutdown).await
        }
    }
}

/// The storage a node runs on: versioned blobs, content, the Blob Service's records, and the
/// direct URLs of the storage itself (`None`: this server's signed URLs).
type Backend = (
    Arc<dyn Store>,
    Arc<dyn ContentStore>,
    Arc<dyn RecordStore>,
    Option<Arc<dyn DirectUrls>>,
);

/// The Socket.IO server's settings, before its adapter is chosen.
fn sockets(config: &Config, state: &AppState) -> SocketIoBuilder {
    let max_message = protocol::max_message_len(state.max_data_chars());
    // No event of the protocol carries binary attachments: a packet that announces more than
    // one, or leaves one incomplete, closes that connection instead of holding memory.
    let parser = ParserConfig::common()
        .max_incoming_binaries(1)
        .max_incoming_binary_buf_size(max_message)
        .packet_completion_timeout(Duration::from_secs(10));
    SocketIo::builder()
        .with_parser(parser)
        .with_state(state.clone())
        .max_buffer_size(config.send_buffer_packets)
        .connect_timeout(config.connect_timeout)
        .ping_interval(config.ping_interval)
        .ping_timeout(config.ping_timeout)
        .max_payload(max_message as u64)
        .ws_max_message_size(max_message)
        .ws_max_frame_size(max_message)
        // Idle sockets dominate memory; 1 KiB read chunks save 3 KiB per connection over the
        // default, at the cost of more reads for the rare large message.
        .ws_read_buffer_size(1024)
}

/// The Redis client of the Socket.IO adapter (fred's): it connects again after Redis went away
/// and subscribes to its channels again, so rooms span the nodes again by themselves.
fn adapter_client(url: &str) -> Result<fred::clients::SubscriberClient, StartError> {
    let adapter_error =
        |e: fred::error::Error| StartError::Adapter(format!("{}: {e}", redacted(url)));
    let mut config = fred::prelude::Config::from_url(url).map_err(adapter_error)?;
    // The adapter needs RESP3; fred does not read it from the URL.
    config.version = fred::types::RespVersion::RESP3;
    let client = fred::prelude::Builder::from_config(config)
        .set_policy(fred::prelude::ReconnectPolicy::new_exponential(
            0, 100, 5_000, 2,
        ))
        .build_subscriber_client()
        .map_err(adapter_error)?;
    // fred's own `manage_subscriptions` also sends a SUBSCRIBE with no channel, which Redis
    // refuses before the shard channels the adapter uses are subscribed again: do just those.
    let resubscriber = client.clone();
    tokio::spawn(async move {
        use fred::interfaces::{EventInterface as _, PubsubInterface as _};
        let mut reconnects = resubscriber.reconnect_rx();
        while reconnects.recv().await.is_ok() {
            let channels: Vec<fred::types::Key> = resubscriber
                .tracked_shard_channels()
                .into_iter()
                .map(Into::into)
                .collect();
            if channels.is_empty() {
                continue;
            }
            match resubscriber.ssubscribe(channels).await {
                Ok(()) => tracing::info!("Socket.IO adapter subscribed to Redis again"),
                Err(e) => tracing::warn!("Socket.IO adapter cannot subscribe again: {e}"),
            }
        }
    });
    Ok(client)
}

/// A Redis URL asking for RESP3, which the Socket.IO adapter needs. A `protocol` the URL
/// already names is kept when it is RESP3 in any spelling (`RESP3`, `resp3`, `3`), written the
/// way the Redis client reads it; RESP2 is refused with what to write instead.
fn resp3(url: &str) -> Result<String, StartError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<String> = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        match param.split_once('=') {
            Some((key, value)) if key.eq_ignore_ascii_case("protocol") => {
                if !(value.eq_ignore_ascii_case("resp3") || value == "3") {
                    return Err(StartError::Adapter(format!(
                        "{}: the Socket.IO adapter needs RESP3: write protocol=resp3 or leave protocol out",
                        redacted(url)
                    )));
                }
            }
            _ => params.push(param.to_owned()),
        }
    }
    params.push("protocol=resp3".to_owned());
    Ok(format!("{base}?{}", params.join("&")))
}

/// `url` without its password, for messages (`redis://user:secret@host` → `redis://user:***@host`).
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        None => url.to_owned(),
    }
}

/// Serves HTTP and Socket.IO (through `layer`, whichever adapter it has) until `shutdown`.
async fn serve<A: Adapter>(
    listener: TcpListener,
    config: &Config,
    state: AppState,
    layer: SocketIoLayer<A>,
    io: SocketIo<A>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    // Socket.IO wraps the router as one service: `Router::layer` would build one Engine.IO
    // engine per route and fallback, and a long-polling session must always meet the engine
    // that opened it.
    let body_timeout = config.body_timeout;
    let app = ServiceBuilder::new()
        .layer(cors(config)?)
        .map_request(detach_head)
        // A body that pauses longer than this fails, which frees its handler and connection.
        .map_request(move |request: Request| {
            request.map(|body| axum::body::Body::new(TimeoutBody::new(body_timeout, body)))
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::socket_io,
        ))
        .layer(MapResponseBodyLayer::new(axum::body::Body::new))
        .layer(layer)
        .service(
            http::router(state.max_data_bytes(), state.content_limits().max_bytes)
                .fallback(not_found)
                .with_state(state.clone()),
        );

    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, storage = %config.storage.display(), "listening");
    }
    let limits = EdgeLimits {
        max_connections: edge::connection_cap(config.max_connections),
        max_head_bytes: config.max_head_bytes as usize,
        header_timeout: config.header_timeout,
        send_timeout: config.send_timeout,
    };
    let connections = edge::serve(listener, app, limits, shutdown).await;
    tracing::info!("shutting down: finishing accepted events");
    state.drain().await;
    state.changes().close();
    // Every accepted event is answered by now; a transport that does not close in time must
    // not hold the process up.
    if tokio::time::timeout(SHUTDOWN_GRACE, io.close())
        .await
        .is_err()
    {
        tracing::warn!("some transports did not close within the grace period");
    }
    // A connection that lingers after that (a half-open socket, an idle HTTP client) gets a
    // short grace period, so it can never hold a restart up.
    if !connections.close(SHUTDOWN_GRACE).await {
        tracing::warn!("connections still open after the grace period were closed");
    }
    Ok(())
}

/// Cross-origin access. By default, as the original: any origin (reflected, `null` included),
/// never with credentials, since the bucket token travels in the request itself. With
/// `CORS_ORIGINS`, only those origins, and credentials only when `CORS_CREDENTIALS` says so.
fn cors(config: &Config) -> Result<CorsLayer, StartError> {
    let origins = if config.cors_origins.is_empty() {
        if config.cors_credentials {
            return Err(ConfigError::CredentialsWithoutOrigins.into());
        }
        AllowOrigin::mirror_request()
    } else {
        AllowOrigin::list(
            config
                .cors_origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    Ok(CorsLayer::new()
        .allow_origin(origins)
        .allow_credentials(config.cors_credentials)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers(AllowHeaders::mirror_request())
        // Browser apps of the HTTP API read versions from these.
        .expose_headers([header::ETAG, header::LAST_MODIFIED, header::CONTENT_RANGE]))
}

/// Runs the Blob Service's retention sweep, and the sweep of direct uploads nobody confirmed
/// within `staging_age`, now and every `interval`, until shutdown.
async fn retention_sweeps(state: AppState, interval: Duration, staging_age: Duration) {
    let closing = state.changes().closing();
    tokio::pin!(closing);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut closing => return,
        }
        let swept = state.service().sweep(store::now_ms()).await;
        if swept.records > 0 || swept.contents > 0 {
            tracing::info!(
                records = swept.records,
                contents = swept.contents,
                bytes = swept.bytes,
                "retention sweep removed expired blobs"
            );
        } else {
            tracing::debug!("retention sweep: nothing expired");
        }
        match state.content().sweep_staging(staging_age).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "unconfirmed direct uploads removed"),
            Err(e) => tracing::error!("cannot sweep unconfirmed direct uploads: {e}"),
        }
    }
}

/// Reads stored content back against its hash every `interval` (the first time one interval
/// after start, so a restart does not reread everything), until shutdown.
async fn scrubs(state: AppState, interval: Duration) {
    let closing = state.closing();
    tokio::pin!(closing);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut closing => return,
        }
        match state.content().scrub(state.closing_token()).await {
            Ok(found) if found.corrupt > 0 => tracing::error!(
                checked = found.checked,
                corrupt = found.corrupt,
                "content scrub found content that no longer matches its hash"
            ),
            Ok(found) => tracing::info!(checked = found.checked, "content scrub: all intact"),
            Err(e) => tracing::error!("content scrub failed: {e}"),
        }
    }
}

/// How long transports may take to close, and connections to linger afterwards, at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Copies the request's URI and header values into allocations of their own.
///
/// hyper parses them as slices of its connection read buffer (16 KiB), and an Engine.IO session
/// keeps its handshake request for its whole life, so without this copy every idle connection
/// would pin that whole buffer.
fn detach_head(mut request: Request) -> Request {
    for value in request.headers_mut().values_mut() {
        if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(value.is_sensitive());
            *value = copy;
        }
    }
    if let Ok(uri) = Uri::try_from(request.uri().to_string()) {
        *request.uri_mut() = uri;
    }
    request
}

async fn not_found() -> axum::response::Response {
    http::error_response(StatusCode::NOT_FOUND, "Not found".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_ask_for_resp3_whatever_the_spelling() {
        for (url, expected) in [
            ("redis://h:6379", "redis://h:6379?protocol=resp3"),
            (
                "redis://h:6379/?protocol=RESP3",
                "redis://h:6379/?protocol=resp3",
            ),
            (
                "redis://h/0?protocol=3&x=1",
                "redis://h/0?x=1&protocol=resp3",
            ),
            ("redis://h/?Protocol=Resp3", "redis://h/?protocol=resp3"),
        ] {
            assert_eq!(resp3(url).unwrap(), expected);
        }
        let refused = resp3("redis://h/?protocol=resp2").unwrap_err().to_string();
        assert!(refused.contains("write protocol=resp3"), "{refused}");
        let refused = resp3("redis://u:secret@h/?protocol=2")
            .unwrap_err()
            .to_string();
        assert!(!refused.contains("secret"), "{refused}");
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redacted("redis://u:pw@h:6379/0"), "redis://u:***@h:6379/0");
        assert_eq!(redacted("redis://:pw@h"), "redis://:***@h");
        assert_eq!(redacted("redis://h:6379"), "redis://h:6379");
    }
}
