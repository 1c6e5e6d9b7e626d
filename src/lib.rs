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
//! # Modules
//! Serving:
//! - [`server`]: assembling and running a server, and its graceful shutdown; `tasks` its
//!   background sweeps and scrubs.
//! - `edge`: accepting connections and serving HTTP/1.1 on them (the connection cap, request
//!   heads, idle and slow clients); `limits`: every other bound on what a client may cost;
//!   `proxy`: which client address to believe.
//! - `protocol`: the Socket.IO events (the original's, and the content-addressed flow).
//! - `http`: the HTTP API: blobs with ETags, content, the Blob Service, OpenAPI.
//! - `changes`: every committed change to the sockets and streams watching it.
//! - `state`: the one state handle every connection shares.
//!
//! Storage:
//! - [`store`]: versioned blobs with compare-and-swap, on files or an object store.
//! - [`content`]: content-addressed blobs, named by their BLAKE3 hash.
//! - [`blob_service`]: the ActyxOS Blob Service: uploads with retention, named by handles.
//! - `backend`: the storage a node runs on, chosen by `STORE`; [`s3`] the shared object
//!   store client; [`objects`] the layer every object-store backend sits on, which makes
//!   conditional writes mean the same on every S3 implementation and proves them at start.
//! - [`quota`]: what each bucket may store and stores now, and the reserve of free disk
//!   space, checked before every write.
//! - [`journal`]: the file store's write-ahead journal, one sync for many writes; [`durable`]:
//!   the one way a file is replaced; `locks`: per-key async locks.
//!
//! Operating: [`admin`]: the `check`, `backup`, `restore`, `migrate`, `revoke` and `usage`
//! commands; [`layout`]: a store seen as the names of its files; `metrics`: Prometheus
//! metrics.
//!
//! Across nodes: `cluster`: one Redis connection for the Socket.IO adapter, the relay of
//! changes and records, and the Blob Service's order lock.
//!
//! Shared: [`config`], [`auth`] (bucket tokens), [`revocation`] (revoked tokens, kept in the
//! store), [`names`] (validated names, the only inputs
//! of a storage path), [`direct`] (signed direct transfer URLs), [`clock`].

pub mod admin;
pub mod auth;
pub mod blob_service;
pub mod clock;
pub mod config;
pub mod content;
pub mod direct;
pub mod durable;
pub mod journal;
pub mod layout;
pub mod names;
pub mod objects;
pub mod quota;
pub mod revocation;
pub mod s3;
pub mod server;
pub mod store;

pub(crate) mod backend;
pub(crate) mod changes;
pub(crate) mod cluster;
pub(crate) mod edge;
pub(crate) mod http;
pub(crate) mod limits;
pub(crate) mod locks;
pub(crate) mod metrics;
pub(crate) mod protocol;
pub(crate) mod proxy;
pub(crate) mod state;
pub(crate) mod tasks;

pub use server::{StartError, run};
