//! The one clock: wall time since the Unix epoch, as stored in blobs (`updated`, in
//! milliseconds) and in tokens and signed URLs (seconds). A clock before 1970 reads as 0.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    now_ms() / 1000
}
