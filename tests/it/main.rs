//! The integration tests, in one binary with a module per area (as s3s does with
//! `tests/aws/main.rs`): the dependencies are linked once, and every module shares the one
//! helper in [`fixture`], which starts the real server on `127.0.0.1:0` with a temp storage
//! directory.
//!
//! Plain `cargo test` runs what needs only Rust and this crate's binaries. A test that needs
//! more (Node, Chromium, Python, Redis, Ceph RGW, nginx, systemd, root) is `#[ignore]`d with
//! what it needs, and `scripts/test` installs that and runs them:
//! `cargo test --test it -- --ignored`. The storage suites run each case on the files, and,
//! ignored, on an object store ([`fixture::on_every_store!`]).
//!
//! One module: `cargo test --test it torture::`; one test: `cargo test --test it --
//! --exact torture::sigkill_loses_no_acknowledged_write`.

mod fixture;

mod adversary;
mod binaries;
mod client_js;
mod cluster;
mod content_backends;
mod content_http;
mod content_socket;
mod deploy;
mod docs;
mod faults;
mod history;
mod hostile;
mod http;
mod interop;
mod journal;
mod layers;
mod limits;
mod nginx;
mod operate;
mod protocol;
mod quota;
mod service;
mod soak;
mod store;
mod torture;
mod transport;
