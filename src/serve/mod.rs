//! Serving: the assembly of a node ([`server`]: storage, the Blob Service, the nodes on Redis,
//! the Socket.IO and HTTP stack on one listener, the graceful shutdown), the one state handle
//! every connection shares ([`state`]), the hub that carries each committed change to whoever
//! watches it ([`changes`]), the storage a node runs on ([`backend`]) and the background sweeps
//! ([`tasks`]), and why a node could not start ([`StartError`]).
//!
//! Everything above storage may import `state` and `changes`; nothing imports [`server`], which
//! only the binaries and the tests call, through [`crate::run`].

pub(crate) mod backend;
pub(crate) mod changes;
mod error;
pub(crate) mod server;
pub(crate) mod state;
pub(crate) mod tasks;

pub use error::StartError;
