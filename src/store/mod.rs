//! Versioned blobs and the storage trait behind them.
//!
//! The trait is small on purpose: reading the current blob and a compare-and-swap write are
//! all the protocol needs, and both map onto an object store with conditional writes as well
//! as onto files. Implementations must acknowledge a write only once it is durable.

mod fs;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::names::{Bucket, Ref};

pub use fs::FsStore;

/// Largest version a client may name: JavaScript's `Number.MAX_SAFE_INTEGER`, so every version
/// (and the next one) stays exact in a browser.
pub const MAX_VERSION: u64 = (1 << 53) - 1;

/// One blob, exactly as stored in `<bucket>/<ref[0..2]>/<ref>.json` (the original's format).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Blob {
    /// Base64 text as the client sent it; absent when the blob has a version and no data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    pub version: u64,
    /// Milliseconds since the epoch.
    pub created: u64,
    /// Milliseconds since the epoch; absent until the first update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<u64>,
    /// Address of the last writer (`X-Real-IP`, or `"unknown"`).
    #[serde(default = "unknown_ip")]
    pub ip: String,
}

fn unknown_ip() -> String {
    "unknown".to_owned()
}

/// A compare-and-swap write.
#[derive(Clone, Debug)]
pub struct SetRequest {
    pub data: Option<String>,
    /// The version the writer believes is current; `None` only matches a blob that does not exist.
    pub version: Option<u64>,
    pub ip: String,
    /// Time of the write, milliseconds since the epoch.
    pub now: u64,
}

/// What a compare-and-swap did.
#[derive(Clone, Debug, PartialEq)]
pub enum SetOutcome {
    /// The write is durable; the blob now has this version.
    Committed { version: u64 },
    /// The named version was stale: nothing was written; this is the current blob.
    Conflict(Arc<Blob>),
}

/// A storage failure. Its detail is logged; the client only learns that the operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("blob file {path} does not parse: {source}")]
    Corrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the next version would exceed {MAX_VERSION}")]
    VersionOverflow,
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Storage for versioned blobs, shared by every connection.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current blob, or `None` when it does not exist.
    async fn get(&self, bucket: &Bucket, r: &Ref) -> Result<Option<Arc<Blob>>>;

    /// Compare-and-swap: writes when the blob does not exist (version 1) or when its version
    /// equals `request.version` (version + 1); otherwise returns the current blob untouched.
    async fn set(&self, bucket: &Bucket, r: &Ref, request: SetRequest) -> Result<SetOutcome>;
}

/// The blob a compare-and-swap produces from the current one, or the conflict it reports.
///
/// Pure, so the version rules are tested once for every backend.
pub fn apply(current: Option<&Arc<Blob>>, request: SetRequest) -> Result<Result<Blob, SetOutcome>> {
    let Some(current) = current else {
        return Ok(Ok(Blob {
            data: request.data,
            version: 1,
            created: request.now,
            updated: None,
            ip: request.ip,
        }));
    };
    if request.version != Some(current.version) {
        return Ok(Err(SetOutcome::Conflict(current.clone())));
    }
    if current.version >= MAX_VERSION {
        return Err(Error::VersionOverflow);
    }
    Ok(Ok(Blob {
        data: request.data,
        version: current.version + 1,
        created: current.created,
        updated: Some(request.now),
        ip: request.ip,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Option<u64>) -> SetRequest {
        SetRequest {
            data: Some("AA==".into()),
            version,
            ip: "ip".into(),
            now: 7,
        }
    }

    #[test]
    fn a_missing_blob_is_created_at_version_one_whatever_the_request_says() {
        for version in [None, Some(1), Some(42)] {
            let blob = apply(None, request(version)).unwrap().unwrap();
            assert_eq!((blob.version, blob.created, blob.updated), (1, 7, None));
        }
    }

    #[test]
    fn a_matching_version_increments_and_a_stale_one_conflicts() {
        let current = Arc::new(apply(None, request(None)).unwrap().unwrap());
        let next = apply(Some(&current), request(Some(1))).unwrap().unwrap();
        assert_eq!((next.version, next.created, next.updated), (2, 7, Some(7)));
        for stale in [None, Some(2), Some(0)] {
            assert_eq!(
                apply(Some(&current), request(stale)).unwrap(),
                Err(SetOutcome::Conflict(current.clone()))
            );
        }
    }

    #[test]
    fn the_original_file_format_round_trips() {
        let text = r#"{"data":"aGk=","version":3,"created":1763780000000,"updated":1763780100000,"ip":"203.0.113.7"}"#;
        let blob: Blob = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&blob).unwrap(), text);
        let bare: Blob =
            serde_json::from_str(r#"{"version":1,"created":5,"ip":"unknown"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&bare).unwrap(),
            r#"{"version":1,"created":5,"ip":"unknown"}"#
        );
    }
}
