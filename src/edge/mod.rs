//! The connection edge: what a client may cost before and around the routes. [`accept`] takes
//! TCP connections and serves HTTP/1.1 on them (the connection cap, request heads, idle and slow
//! clients); [`admission`] holds every other bound (pending handshakes, sessions per server and
//! per address, the send backlog, the event rate); [`client_addr`] decides which client
//! address to believe.
//!
//! The edge answers in bytes, below the routes ([`reply`]): it imports no route module
//! (`http`, `protocol`), no state and no storage.

pub(crate) mod accept;
pub(crate) mod admission;
pub(crate) mod client_addr;
pub(crate) mod reply;
