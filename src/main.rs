//! The Blobs server: reads the configuration, binds, and serves until SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use listenfd::ListenFd;
use tokio::net::TcpListener;
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;

use blobs::config::Config;

/// The placeholder secret of `.env.example`, accepted so the README's first command works, but
/// never silently.
const EXAMPLE_SECRET: &str = "change-me-to-a-long-random-secret";

#[tokio::main]
async fn main() -> ExitCode {
    dotenvy::dotenv().ok();
    let config = Config::parse();
    let log = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stdout().is_terminal())
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_filter(filter_fn(|meta| {
            *meta.level() <= Level::INFO || !QUIET.iter().any(|t| meta.target().starts_with(t))
        }));
    tracing_subscriber::registry().with(log).init();

    // Refuse a missing secret before binding, with exit code 2 like any other usage error.
    match config.secret() {
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
        Ok(secret) if secret == EXAMPLE_SECRET => {
            tracing::warn!(
                "TOKEN_SECRET is the example value from .env.example: set a long random secret before exposing this server"
            );
        }
        Ok(_) => {}
    }
    // Every connection takes a descriptor: take all the hard limit allows (the server lowers
    // MAX_CONNECTIONS to fit what it gets).
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!("cannot raise the open file limit: {e}");
    }
    let listener = match listen(&config).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match blobs::run(listener, config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The socket a service manager handed over (systemd socket activation: `LISTEN_FDS`, the
/// first one, `HOST` and `PORT` then unused), or else a new one on `HOST`:`PORT`.
async fn listen(config: &Config) -> Result<TcpListener, String> {
    let passed = ListenFd::from_env()
        .take_tcp_listener(0)
        .map_err(|e| format!("cannot use the socket passed in LISTEN_FDS: {e}"))?;
    match passed {
        Some(listener) => listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(listener))
            .map_err(|e| format!("cannot use the socket passed in LISTEN_FDS: {e}")),
        None => TcpListener::bind((config.host, config.port))
            .await
            .map_err(|e| format!("cannot listen on {}:{}: {e}", config.host, config.port)),
    }
}

/// Libraries that log what clients send at their debug and trace levels: a WebSocket message,
/// the Socket.IO CONNECT packet with its token. Capped at info whatever `RUST_LOG` says (a
/// filter of its own, which no directive can widen), so no level ever writes a token.
const QUIET: [&str; 5] = [
    "tungstenite",
    "tokio_tungstenite",
    "engineioxide",
    "socketioxide",
    "hyper",
];

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on unix");
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    interrupt.await.ok();
}
