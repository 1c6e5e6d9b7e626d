//! The Blobs server: reads the configuration, binds, and serves until SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use blobs::config::Config;

/// The placeholder secret of `.env.example`, accepted so the README's first command works, but
/// never silently.
const EXAMPLE_SECRET: &str = "change-me-to-a-long-random-secret";

#[tokio::main]
async fn main() -> ExitCode {
    dotenvy::dotenv().ok();
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_ansi(std::io::stdout().is_terminal())
        .init();

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
    let listener = match TcpListener::bind((config.host, config.port)).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {}:{}: {e}", config.host, config.port);
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

/// Libraries that log what clients send at their trace level: a WebSocket message, the
/// Socket.IO CONNECT packet with its token. Capped whatever `RUST_LOG` says, so no level ever
/// writes a token.
const QUIET: [&str; 5] = [
    "tungstenite=info",
    "tokio_tungstenite=info",
    "engineioxide=info",
    "socketioxide=info",
    "hyper=info",
];

/// `RUST_LOG` (default `info`), with the libraries of [`QUIET`] capped.
fn log_filter() -> EnvFilter {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    QUIET.into_iter().fold(filter, |filter, directive| {
        filter.add_directive(directive.parse().expect("a valid directive"))
    })
}

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
