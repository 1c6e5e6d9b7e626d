//! Assembling and running a server: storage, the Blob Service, the nodes on Redis, the
//! Socket.IO and HTTP stack on one listener; and the graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderValue, Method, Uri, header};
use socketioxide::adapter::Adapter;
use socketioxide::layer::SocketIoLayer;
use socketioxide::{ParserConfig, SocketIo, SocketIoBuilder};
use socketioxide_redis::RedisAdapterCtr;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::ServiceBuilder;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::map_response_body::MapResponseBodyLayer;
use tower_http::timeout::TimeoutBody;

use super::error::StartError;
use super::tasks;
use crate::auth::Keys;
use crate::auth::revocation::Revocations;
use crate::blob_service::{self, BlobService};
use crate::cluster::NodesAdapter;
use crate::cluster::{Redis, redacted, relay};
use crate::config::{Config, ConfigError, StoreKind};
use crate::edge::accept::{self, EdgeLimits};
use crate::edge::admission::{self, Admission};
use crate::serve::backend::Backend;
use crate::serve::state::{AppState, SocketCensus};
use crate::{http, protocol};

/// Serves Blobs on `listener` until `shutdown` resolves, then shuts down gracefully: new events
/// are refused, every event already accepted (writes included) is finished and acknowledged,
/// and only then are the sockets closed.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    config.validate()?;
    let secret = config.secret()?;
    // One server per storage directory: two would each replay and cut the other's journal.
    // Held until this function returns, after the final checkpoint.
    let _lock = match config.store {
        StoreKind::Fs => Some(
            crate::storage::store::lock(&config.storage)
                .and_then(|held| {
                    held.ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::WouldBlock,
                            "another server (or an admin command) is using it",
                        )
                    })
                })
                .map_err(|source| StartError::Storage {
                    path: config.storage.display().to_string(),
                    source,
                })?,
        ),
        StoreKind::S3 => None,
    };
    let backend = Backend::open(&config).await?;
    // With other nodes, the records' channel is subscribed before the records are read: a
    // record another node writes meanwhile is then in storage, or on the channel, or both.
    // `REDIS_URL=` (set, but blank) means no Redis, as unset does.
    let nodes = match config
        .redis_url
        .as_deref()
        .filter(|url| !url.trim().is_empty())
    {
        None => None,
        Some(url) => {
            let redis_error = |source| StartError::Redis {
                url: redacted(url),
                source,
            };
            let redis = Redis::connect(url).await.map_err(redis_error)?;
            let records_feed = relay::subscribe(&redis, blob_service::order_lock::CHANNEL)
                .await
                .map_err(redis_error)?;
            Some((redis, records_feed, redis_error))
        }
    };
    let service = BlobService::open(backend.records.clone(), backend.content.clone())
        .await
        .map_err(StartError::Records)?;
    service.count_in(backend.quota.clone());
    let keys = Keys::rotated(secret, &config.previous_secrets()?);
    let revocations = Revocations::load(backend.revocations.clone())
        .await
        .map_err(StartError::Revocations)?;
    let edge = EdgeLimits::new(&config);
    let admission = Admission::new(&config, config.max_sessions.unwrap_or(edge.max_connections));
    let state = AppState::new(
        Arc::new(config.clone()),
        admission,
        keys,
        revocations,
        backend,
        service,
        secret,
    );
    // Before the background tasks: the content measure runs only when recording.
    if state.metrics_token().is_some() {
        crate::metrics::enable();
    }
    let background = tasks::spawn(&state, &config);
    let builder = sockets(&config, &state);
    match nodes {
        None => {
            let (layer, io) = builder.build_layer();
            protocol::register(&io);
            state.changes().attach(io.clone());
            serve(listener, edge, state, layer, io, shutdown, background).await
        }
        Some((redis, records_feed, redis_error)) => {
            let adapter = RedisAdapterCtr::new_with_driver(redis.clone(), Default::default());
            let (layer, io) = builder.with_adapter::<NodesAdapter>(adapter).build_layer();
            protocol::register_cluster(&io)
                .await
                .map_err(|e| StartError::Adapter(e.to_string()))?;
            state.changes().attach_cluster(io.clone());
            state.changes().relay(&redis).await.map_err(redis_error)?;
            state
                .service()
                .join(&redis, records_feed, state.changes().shutdown());
            serve(listener, edge, state, layer, io, shutdown, background).await
        }
    }
}

/// The Socket.IO server's settings, before its adapter is chosen.
fn sockets(config: &Config, state: &AppState) -> SocketIoBuilder {
    let max_message = protocol::max_message_len(state.max_data_chars());
    // No event of the protocol carries binary attachments. A packet announcing even one would
    // be held, whole, until its attachment came: it closes that connection at once instead,
    // before the parser keeps anything, authenticated or not.
    let parser = ParserConfig::common().max_incoming_binaries(0);
    SocketIo::builder()
        .with_parser(parser)
        .with_state(state.clone())
        .max_buffer_size(config.send_buffer_packets as usize)
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

/// Serves HTTP and Socket.IO (through `layer`, whichever adapter it has) until `shutdown`.
async fn serve<A: Adapter>(
    listener: TcpListener,
    limits: EdgeLimits,
    state: AppState,
    layer: SocketIoLayer<A>,
    io: SocketIo<A>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    background: JoinSet<()>,
) -> Result<(), StartError> {
    // Socket.IO wraps the router as one service: `Router::layer` would build one Engine.IO
    // engine per route and fallback, and a long-polling session must always meet the engine
    // that opened it.
    let config = state.config().clone();
    let body_timeout = config.body_timeout;
    let app = ServiceBuilder::new()
        .layer(cors(&config)?)
        .map_request(detach_head)
        // A body that pauses longer than this fails, which frees its handler and connection.
        .map_request(move |request: Request| {
            request.map(|body| axum::body::Body::new(TimeoutBody::new(body_timeout, body)))
        })
        .layer(axum::middleware::from_fn_with_state(
            state.admission().clone(),
            admission::socket_io,
        ))
        .layer(MapResponseBodyLayer::new(axum::body::Body::new))
        .layer(layer)
        .service(
            http::router(
                state.config().max_data_bytes,
                state.config().content_max_bytes,
            )
            .with_state(state.clone()),
        );

    if let Ok(addr) = listener.local_addr() {
        // `scripts/adversary.py` reads `addr=` here (it also drives builds without LISTEN_FDS).
        let storage = match config.store {
            StoreKind::Fs => config.storage.display().to_string(),
            StoreKind::S3 => format!("s3 prefix {:?}", config.s3_prefix),
        };
        tracing::info!(%addr, %storage, "listening");
    }
    let open = accept::connection_slots(&limits);
    let sockets = io.clone();
    let connections = open.clone();
    // Counted when scraped: this node's sockets by the transport each uses now.
    state.set_census(move || {
        let (mut polling, mut websocket) = (0, 0);
        for socket in sockets.sockets() {
            match socket.transport_type() {
                socketioxide::TransportType::Websocket => websocket += 1,
                socketioxide::TransportType::Polling => polling += 1,
            }
        }
        SocketCensus {
            polling,
            websocket,
            connections: connections.taken(),
        }
    });
    let connections = accept::serve(listener, app, limits, open, shutdown).await;
    tracing::info!("shutting down: finishing accepted events");
    state.drain(SHUTDOWN_GRACE).await;
    // The background tasks end with the drain and the change hub; none checkpoints after the
    // final checkpoint, and none holds the store once the server has stopped.
    background.join_all().await;
    // The last writes are in; after this the files alone are the whole truth.
    if let Err(e) = state.store().checkpoint().await {
        tracing::error!("final checkpoint failed; the journal is replayed at the next start: {e}");
    }
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
