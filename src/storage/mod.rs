//! Storage: every byte Blobs keeps, on a directory or an object store.
//!
//! - [`store`]: versioned blobs with compare-and-swap, on files (with the write-ahead
//!   [`journal`]) or on objects.
//! - [`content`]: content-addressed blobs, named by their BLAKE3 hash.
//! - [`objects`]: the one layer every object-store backend sits on, which makes conditional
//!   writes mean the same on every S3 implementation and proves them at start; [`s3`] its
//!   client.
//! - [`layout`]: a store seen as the names of its files; [`quota`]: what each bucket may store
//!   and stores now; [`durable`]: the one way a file is replaced; `locks`: per-key async
//!   locks.
//!
//! Storage knows no transport (no Socket.IO, no HTTP), no assembly and no service: it imports
//! only the shared modules (`config`, `names`, `clock`, `metrics`).

pub mod content;
pub mod durable;
pub mod journal;
pub mod layout;
pub(crate) mod locks;
pub mod objects;
pub mod quota;
pub mod s3;
pub mod store;
