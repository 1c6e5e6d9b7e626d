//! Helpers the integration tests and the benchmark share; nothing here ships with the server.
//!
//! - [`client`]: a raw Socket.IO client for exact packets and many cheap connections.
//! - [`process`]: the `blobs` binary as a child process on a loopback socket it is handed.
//! - [`helpers`]: Redis and an S3-compatible server (moto or Ceph RGW) on free loopback ports.

pub mod client;
pub mod helpers;
pub mod process;

use std::time::Duration;

pub use client::{ClientError, RawClient};
pub use helpers::{RedisServer, S3Server};
pub use process::ServerProcess;

/// The WebSocket library of [`RawClient`], for tests that send raw frames.
pub use tokio_tungstenite;

/// How long a test waits for anything it expects (an answer, a close, a server or helper
/// starting, a child process's whole scenario) before it fails, saying what it waited for.
/// Generous on purpose: a shared two-core machine running other builds can be many times slower
/// than an idle one, and no test may fail for that; the bound only turns a hang into a failure.
pub const PATIENCE: Duration = Duration::from_secs(300);
