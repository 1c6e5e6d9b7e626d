//! The integration tests, in one binary with a module per area (as s3s does with
//! `tests/aws/main.rs`): the dependencies are linked once, and every module shares the one
//! helper in [`fixture`], which starts the real server on `127.0.0.1:0` with a temp storage
//! directory.
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
