//! One upload of the Blob Service: what its client says about it ([`Metadata`], checked) and
//! the record kept for it ([`Record`]), in the ActyxOS Blob Service's JSON shape.

use std::sync::Arc;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::names::ContentHash;

/// Name of the metadata stream, as in ActyxOS.
pub const STREAM_NAME: &str = "ActyxOS-BlobService-Metadata";
/// Semantics of the metadata stream, as in ActyxOS.
pub const STREAM_SEMANTICS: &str = "com.actyx.os.blobs.metadata";
/// Longest `semantics`, in characters.
pub const MAX_SEMANTICS: usize = 256;

/// How long an upload is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "policy", rename_all = "camelCase")]
pub enum RetentionPolicy {
    #[default]
    KeepForever,
    /// Until this time, milliseconds since the epoch.
    KeepUntilTime { until: u64 },
    /// For this long after the upload, in milliseconds.
    KeepForDuration {
        #[serde(rename = "durationMs")]
        duration_ms: u64,
    },
}

impl RetentionPolicy {
    /// When an upload made at `created` expires; `None`: never.
    pub fn expires_at(&self, created: u64) -> Option<u64> {
        match self {
            RetentionPolicy::KeepForever => None,
            RetentionPolicy::KeepUntilTime { until } => Some(*until),
            RetentionPolicy::KeepForDuration { duration_ms } => {
                Some(created.saturating_add(*duration_ms))
            }
        }
    }
}

/// The `metadata` part of an upload.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub semantics: Option<String>,
    #[serde(default)]
    pub retention_policy: Option<RetentionPolicy>,
}

/// Why an upload's metadata is refused; the message is what the client reads.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("metadata.semantics is required: a non-empty string of at most 256 characters")]
    Semantics,
    #[error("metadata.retentionPolicy.until is in the past")]
    Past,
    #[error("metadata.retentionPolicy.durationMs must be greater than zero")]
    Duration,
}

impl Metadata {
    /// The checked semantics and policy of an upload made at `now`.
    pub fn validate(self, now: u64) -> Result<(String, RetentionPolicy), Invalid> {
        let semantics = self
            .semantics
            .filter(|s| !s.is_empty() && s.chars().count() <= MAX_SEMANTICS)
            .ok_or(Invalid::Semantics)?;
        let policy = self.retention_policy.unwrap_or_default();
        match policy {
            RetentionPolicy::KeepUntilTime { until } if until <= now => return Err(Invalid::Past),
            RetentionPolicy::KeepForDuration { duration_ms: 0 } => return Err(Invalid::Duration),
            _ => {}
        }
        Ok((semantics, policy))
    }
}

/// One upload, exactly as stored in its file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub handle: String,
    /// BLAKE3 hash of the bytes: their name in the content store.
    pub hash: String,
    pub size: u64,
    pub content_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    pub semantics: String,
    pub retention_policy: RetentionPolicy,
    /// Milliseconds since the epoch.
    pub created: u64,
    /// Address of the uploader (`X-Real-IP` from a trusted proxy, or the peer). Always stored,
    /// for the operator; token holders see it only with `EXPOSE_UPLOADER_IP`.
    #[schema(required = false)]
    pub uploader: String,
}

impl Record {
    /// Whether readers still see it at `now`.
    pub fn live(&self, now: u64) -> bool {
        self.retention_policy
            .expires_at(self.created)
            .is_none_or(|expires| now < expires)
    }

    /// The record as the metadata stream and `blob-metadata` carry it.
    pub fn event(&self) -> serde_json::Value {
        serde_json::json!({
            "handle": self.handle,
            "semantics": self.semantics,
            "size": self.size,
            "contentType": self.content_type,
            "retentionPolicy": self.retention_policy,
            "created": self.created,
        })
    }

    /// The name of the record's content (`None` for a record edited into nonsense).
    pub fn content_hash(&self) -> Option<ContentHash> {
        ContentHash::parse(&self.hash)
    }
}

/// A record as a token holder reads it (`GET /api/v1/blobs`, `/metadata`): the fields of the
/// stored [`Record`] in its JSON shape, but `uploader` only when `uploader` is true
/// (`EXPOSE_UPLOADER_IP`). The fields are named one by one, so a field added to the stored
/// record is never shown to every visitor by accident.
#[derive(Clone, Debug)]
pub struct Shown {
    pub record: Arc<Record>,
    /// Whether the uploader's address is shown.
    pub uploader: bool,
}

impl Serialize for Shown {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Record {
            handle,
            hash,
            size,
            content_type,
            file_name,
            semantics,
            retention_policy,
            created,
            uploader,
        } = &*self.record;
        let mut out = serializer.serialize_struct("Record", 9)?;
        out.serialize_field("handle", handle)?;
        out.serialize_field("hash", hash)?;
        out.serialize_field("size", size)?;
        out.serialize_field("contentType", content_type)?;
        match file_name {
            Some(name) => out.serialize_field("fileName", name)?,
            None => out.skip_field("fileName")?,
        }
        out.serialize_field("semantics", semantics)?;
        out.serialize_field("retentionPolicy", retention_policy)?;
        out.serialize_field("created", created)?;
        if self.uploader {
            out.serialize_field("uploader", uploader)?;
        } else {
            out.skip_field("uploader")?;
        }
        out.end()
    }
}

/// What an upload says about itself besides its bytes.
#[derive(Clone, Debug)]
pub struct Upload {
    pub semantics: String,
    pub retention_policy: RetentionPolicy,
    pub content_type: String,
    pub file_name: Option<String>,
    pub uploader: String,
    pub now: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(file_name: Option<&str>) -> Record {
        Record {
            handle: "0123456789abcdef0123456789abcdef".into(),
            hash: "ab".repeat(32),
            size: 3,
            content_type: "image/png".into(),
            file_name: file_name.map(str::to_owned),
            semantics: "photos".into(),
            retention_policy: RetentionPolicy::KeepForever,
            created: 100,
            uploader: "203.0.113.7".into(),
        }
    }

    #[test]
    fn shown_records_hide_the_uploader_unless_exposed() {
        let stored = record(Some("a.png"));
        let full = serde_json::to_value(&stored).unwrap();
        let hidden = Shown {
            record: Arc::new(stored.clone()),
            uploader: false,
        };
        let hidden = serde_json::to_value(&hidden).unwrap();
        // Every stored field but the address, in the stored shape.
        let mut expected = full.clone();
        expected.as_object_mut().unwrap().remove("uploader");
        assert_eq!(hidden, expected);
        assert!(!hidden.to_string().contains("203.0.113.7"));
        let exposed = Shown {
            record: Arc::new(stored),
            uploader: true,
        };
        assert_eq!(serde_json::to_value(&exposed).unwrap(), full);
        // No file name: no `fileName`, as in the stored record.
        let unnamed = Shown {
            record: Arc::new(record(None)),
            uploader: false,
        };
        let unnamed = serde_json::to_value(&unnamed).unwrap();
        assert!(unnamed.get("fileName").is_none());
        assert!(unnamed.get("uploader").is_none());
        assert!(record(None).event().get("uploader").is_none());
    }
}
