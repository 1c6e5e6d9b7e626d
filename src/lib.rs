//! Blobs: a self-hosted blob server with optimistic concurrency and real-time change
//! notifications, wire-compatible with the Node.js original (Socket.IO v4, one JSON file per
//! blob). Every blob has a version that grows by one per write; a write names the version it
//! replaces and a stale write is refused with the current data; every committed write is
//! pushed as `changed` to the other clients watching that blob.
//!
//! The binaries are thin: `blobs` reads the configuration and calls [`run`]; `token` mints
//! bucket tokens. `docs/ARCHITECTURE.md` walks through the modules and follows one write from
//! the socket to the disk to `changed`.
//!
//! # Layout
//! Each folder is one layer; arrows run one way, down this list.
//! - `serve`: assembling and running a node and its graceful shutdown ([`run`]), the one
//!   state handle, the hub of committed changes, background tasks.
//! - `edge`: accepting connections and what each may cost (connection caps, handshakes,
//!   backpressure, event rate, the client's address), answered in bytes below the routes.
//! - `protocol`: the Socket.IO events (the original's, and the content-addressed flow).
//! - `http`: the HTTP API: blobs with ETags, content, the Blob Service, OpenAPI, the inspector.
//! - [`blob_service`]: the ActyxOS Blob Service: uploads with retention, named by handles.
//! - `cluster`: one Redis connection for the Socket.IO adapter and the relay of changes and
//!   records across nodes.
//! - [`admin`]: the `check`, `backup`, `restore`, `migrate`, `revoke` and `usage` commands.
//! - [`auth`]: bucket tokens, their revocation, signed direct-transfer URLs.
//! - [`storage`]: versioned blobs, content, the object layer, the journal, quotas; it knows no
//!   transport and no service.
//! - Shared by all: [`config`], [`names`] (validated names, the only inputs of a storage
//!   path), [`clock`], `metrics`.

pub mod admin;
pub mod auth;
pub mod blob_service;
pub mod clock;
pub mod config;
pub mod names;
pub(crate) mod serve;
pub mod storage;

pub(crate) mod cluster;
pub(crate) mod edge;
pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod protocol;

pub use serve::StartError;
pub use serve::server::run;
