//! The network edge: accepts TCP connections and serves HTTP/1.1 on them, with a bound on what
//! each costs before any handler runs.
//!
//! - **A cap on open connections** (`MAX_CONNECTIONS`), whatever they carry: plain HTTP,
//!   long-polling or an upgraded WebSocket. The slot is held by the connection's I/O object, so
//!   it is freed exactly when the socket is closed. Past the cap a small overflow of connections
//!   is still served, for one request each, by an answer that only knows `/healthz`: a monitor
//!   can tell "full" from "down". Past the overflow a connection is closed at once.
//! - **A bound on the request head** (`MAX_HEAD_BYTES`, answered 431 by hyper).
//! - **A deadline for the head and for idle keep-alive connections** (`HEADER_TIMEOUT`): hyper
//!   starts the head timer as soon as it waits for a request, so a connection that sends
//!   nothing, half a head, or nothing after its last response is closed.
//! - **A deadline for the client to take what it is sent** (`SEND_TIMEOUT`): a connection
//!   whose client reads nothing for that long is closed, with everything queued for it; the
//!   kernel's send buffer is bounded (`SOCKET_SEND_BUFFER`) so that it cannot hide megabytes
//!   a client never read.
//!
//! This module never looks into requests beyond what the overflow answer needs; the request
//! body's pace is bounded by the router's layers (`BODY_TIMEOUT`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{StatusCode, header};
use axum::response::Response;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::{Service, ServiceExt as _};

use super::admission::SERVER_FULL;
use super::admission::backpressure::Written;
use super::admission::{Cap, PRE_CONNECT, Place, ReadCap};
use super::reply::{error_response, healthy};
use crate::config::Config;

/// Connections past `MAX_CONNECTIONS` still served with the overflow answer.
const OVERFLOW: usize = 64;

/// How long the overflow answer waits for its one request head.
const OVERFLOW_HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause after an accept error (descriptors exhausted, say) before accepting again, so the
/// loop does not spin while nothing can be accepted.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Descriptors kept for everything but client connections (the listener, Redis, the object
/// store, and the files requests read and write, up to one per request in flight): a quarter
/// of the limit, at least this many.
const RESERVED_DESCRIPTORS: u64 = 256;

/// The places of TCP connections for [`serve`]: the cap, and the overflow answered with 503.
pub fn connection_slots(limits: &EdgeLimits) -> Arc<Cap> {
    Cap::new(limits.max_connections + OVERFLOW)
}

/// `wanted`, lowered to what the process's descriptor limit leaves for connections (with the
/// overflow and the reserve), so the cap is reached before `accept` fails for want of a
/// descriptor. Logged when lowered.
fn connection_cap(wanted: usize) -> usize {
    let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else {
        return wanted;
    };
    let reserved = RESERVED_DESCRIPTORS.max(soft / 4);
    let fits = soft.saturating_sub(reserved + OVERFLOW as u64);
    let fits = usize::try_from(fits).unwrap_or(usize::MAX).max(1);
    if wanted > fits {
        tracing::warn!(
            wanted,
            cap = fits,
            descriptors = soft,
            "MAX_CONNECTIONS lowered to fit the descriptor limit (raise `ulimit -n` for more)"
        );
        return fits;
    }
    wanted
}

/// The bounds of the edge.
#[derive(Clone, Copy, Debug)]
pub struct EdgeLimits {
    pub max_connections: usize,
    /// `SO_SNDBUF` of each connection; 0: the kernel's tuning.
    pub send_buffer: usize,
    pub max_head_bytes: usize,
    pub header_timeout: Duration,
    pub send_timeout: Duration,
}

impl EdgeLimits {
    /// The bounds `config` sets, `MAX_CONNECTIONS` lowered to fit the descriptor limit.
    pub fn new(config: &Config) -> Self {
        Self {
            max_connections: connection_cap(config.max_connections),
            send_buffer: config.socket_send_buffer,
            max_head_bytes: config.max_head_bytes as usize,
            header_timeout: config.header_timeout,
            send_timeout: config.send_timeout,
        }
    }
}

/// The connections still open once the server stopped accepting.
pub struct Open {
    /// Becomes `true` when they are asked to close.
    close: watch::Sender<bool>,
    /// One task per connection; finished ones are reaped as new ones are accepted.
    tasks: JoinSet<()>,
}

impl Open {
    /// Asks every connection to close once its request in progress is answered, and waits
    /// until they have, for `grace` at most: then the rest are dropped. `false` when some had
    /// to be.
    pub async fn close(mut self, grace: Duration) -> bool {
        self.close.send_replace(true);
        let closed = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        });
        if closed.await.is_ok() {
            return true;
        }
        self.tasks.shutdown().await;
        false
    }
}

/// Accepts connections on `listener` and serves `app` on them until `stop` resolves; then stops
/// accepting and hands back the live connections, to be closed gracefully by the caller.
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    limits: EdgeLimits,
    open: Arc<Cap>,
    stop: impl Future<Output = ()>,
) -> Open
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut graceful = Open {
        close: watch::channel(false).0,
        tasks: JoinSet::new(),
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_head_bytes);
    let mut overflow = hyper::server::conn::http1::Builder::new();
    overflow
        .timer(TokioTimer::new())
        .header_read_timeout(OVERFLOW_HEAD_TIMEOUT)
        .max_header_size(limits.max_head_bytes)
        .keep_alive(false);
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("accept error: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut stop => return graceful,
        };
        while graceful.tasks.try_join_next().is_some() {}
        let Some(slot) = open.take() else {
            tracing::debug!(%peer, "connection closed at once: over the connection limit");
            continue;
        };
        let full = slot.rank() > limits.max_connections;
        // Small frames (acks, `changed`) go out at once rather than waiting on Nagle's
        // algorithm.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        // A client that does not read fills the kernel's send queue first; bounded, it fills
        // at once, so `SEND_TIMEOUT` counts from when the client stopped reading rather than
        // from when megabytes of kernel buffer ran out.
        if limits.send_buffer > 0
            && let Err(e) = socket2::SockRef::from(&tcp).set_send_buffer_size(limits.send_buffer)
        {
            tracing::debug!("cannot set SO_SNDBUF: {e}");
        }
        let written = Written::default();
        let read_cap = ReadCap::default();
        let io = TokioIo::new(Metered {
            tcp,
            written: written.clone(),
            read_cap: read_cap.clone(),
            send_timeout: limits.send_timeout,
            stalled: None,
            _slot: slot,
        });
        if full {
            let conn = overflow.serve_connection(io, hyper::service::service_fn(over_limit));
            graceful.tasks.spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
            });
            continue;
        }
        let app = app.clone();
        let service = tower::service_fn(move |mut request: hyper::Request<_>| {
            let extensions = request.extensions_mut();
            extensions.insert(ConnectInfo(peer));
            extensions.insert(written.clone());
            extensions.insert(read_cap.clone());
            app.clone().oneshot(request.map(Body::new))
        });
        let conn = http
            .serve_connection(io, TowerToHyperService::new(service))
            .with_upgrades();
        let mut closing = graceful.close.subscribe();
        graceful.tasks.spawn(async move {
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = async { closing.wait_for(|close| *close).await.ok(); } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
}

/// The answer on connections past the limit: `/healthz` says the process is up, anything
/// else is 503.
async fn over_limit<B>(request: hyper::Request<B>) -> Result<Response, Infallible> {
    let mut response = if request.uri().path() == "/healthz" {
        healthy()
    } else {
        error_response(StatusCode::SERVICE_UNAVAILABLE, SERVER_FULL.to_owned())
    };
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    Ok(response)
}

/// A TCP connection that holds its slot under the cap for as long as it lives (upgraded to a
/// WebSocket included), counts the bytes written to it, fails a read past its [`ReadCap`], and
/// fails a write that the client takes no byte of for `send_timeout`. Without that last bound,
/// a client that stops reading would keep its connection, and everything queued for it, open
/// forever: the kernel never gives up on a peer that advertises a zero window.
struct Metered {
    tcp: TcpStream,
    written: Written,
    read_cap: ReadCap,
    send_timeout: Duration,
    /// Running while a write waits for the client to make room.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    _slot: Place,
}

impl Metered {
    /// Passes a write's outcome on, counting what was written, or fails it once the client
    /// has taken nothing for `send_timeout`.
    fn progress(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Pending => {
                let timeout = self.send_timeout;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if stalled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client took no data for SEND_TIMEOUT",
                    )));
                }
                Poll::Pending
            }
            Poll::Ready(outcome) => {
                self.stalled = None;
                if let Ok(n) = &outcome {
                    self.written.add(*n);
                }
                Poll::Ready(outcome)
            }
        }
    }
}

impl AsyncRead for Metered {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && !this.read_cap.read(buf.filled().len() - before)
        {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, PRE_CONNECT)));
        }
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.progress(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.progress(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
