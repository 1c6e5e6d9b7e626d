//! The Blobs server: reads the configuration, binds, and serves until SIGTERM or SIGINT. With a
//! command (`blobs check`, `backup`, `restore`, `migrate`, `revoke`, `usage`) it runs that on the
//! configured store instead, and exits.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use listenfd::ListenFd;
use tokio::net::TcpListener;
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;

use blobs::admin::Command;
use blobs::config::Config;

/// The server (no command), or one of the operator's commands on the store it is configured
/// with.
#[derive(Parser)]
#[command(
    name = "blobs",
    version,
    about = "Blob server with optimistic concurrency over Socket.IO",
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The placeholder secret of `.env.example`, accepted so the README's first command works, but
/// never silently.
const EXAMPLE_SECRET: &str = "change-me-to-a-long-random-secret";

fn main() -> ExitCode {
    // The environment is read and changed (`.env` loaded, the socket activation variables
    // taken) here, before any other thread exists.
    dotenvy::dotenv().ok();
    let passed = ListenFd::from_env().take_tcp_listener(0);
    let Cli { config, command } = Cli::parse();
    let log = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stdout().is_terminal())
        .with_filter(filter_fn(|meta| {
            *meta.level() <= Level::INFO || !QUIET.iter().any(|t| meta.target().starts_with(t))
        }));
    // The level filter for the whole subscriber, not one layer: its level is then the maximum
    // the `log` records of dependencies are forwarded at, so a WebSocket frame's trace record
    // costs a comparison, not a dispatch.
    let level = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::registry().with(level).with(log).init();
    if let Some(command) = command {
        return admin(command, &config);
    }

    // Refuse what cannot start before binding, with exit code 2 like any other usage error.
    if let Err(e) = config.validate() {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    if config.secret().is_ok_and(|secret| secret == EXAMPLE_SECRET) {
        tracing::warn!(
            "TOKEN_SECRET is the example value from .env.example: set a long random secret before exposing this server"
        );
    }
    // Every connection takes a descriptor: take all the hard limit allows (the server lowers
    // MAX_CONNECTIONS to fit what it gets).
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!("cannot raise the open file limit: {e}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match listen(&config, passed).await {
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
    })
}

/// Runs an operator's command: exit 0 when it found nothing wrong, 1 when it did, 2 when it
/// could not run.
fn admin(command: Command, config: &Config) -> ExitCode {
    let outcome = tokio::runtime::Runtime::new()
        .map_err(|e| format!("cannot start the runtime: {e}"))
        .and_then(|runtime| {
            runtime
                .block_on(blobs::admin::run(command, config))
                .map_err(|e| e.to_string())
        });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// The socket a service manager handed over (`passed`: systemd socket activation, the first
/// of `LISTEN_FDS`; `HOST` and `PORT` are then unused), or else a new one on `HOST`:`PORT`.
async fn listen(
    config: &Config,
    passed: std::io::Result<Option<std::net::TcpListener>>,
) -> Result<TcpListener, String> {
    let passed_error = |e| format!("cannot use the socket passed in LISTEN_FDS: {e}");
    match passed.map_err(passed_error)? {
        Some(listener) => listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(listener))
            .map_err(passed_error),
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
