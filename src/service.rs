//! The Blob Service (the ActyxOS Blob Service API): uploads with a meaning (`semantics`) and
//! a lifetime (`retentionPolicy`), named by a handle, stored once in the bucket's content
//! store, and announced on the bucket's metadata stream.
//!
//! Each upload is a record, one JSON file per handle at
//! `<root>/<bucket>/handles/<handle[0..2]>/<handle>.json`, written through
//! [`durable::replace`]; every record is also kept in memory (loaded at start) for listing and
//! for the reference checks of the retention sweep. An expired record is gone for readers at
//! once; the sweep deletes expired records, then the content no live record refers to any
//! more, if the service brought it in (content a shared flow also stored stays).
//!
//! Storing an upload's content and its record, and removing content the sweep found
//! unreferenced, happen under the content's lock, so a sweep never removes bytes an upload of
//! the same content is committing.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::cas::{self, ContentStore, Incoming, Owner};
use crate::durable;
use crate::names::{Bucket, ContentHash, Handle};

/// Name of the metadata stream, as in ActyxOS.
pub const STREAM_NAME: &str = "ActyxOS-BlobService-Metadata";
/// Semantics of the metadata stream, as in ActyxOS.
pub const STREAM_SEMANTICS: &str = "com.actyx.os.blobs.metadata";
/// Longest `semantics`, in characters.
pub const MAX_SEMANTICS: usize = 256;

/// Directory of a bucket's records, beside its versioned blobs and its content store.
const HANDLES_DIR: &str = "handles";

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
    /// Address of the uploader (`X-Real-IP` from a trusted proxy, or the peer).
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

    fn content_hash(&self) -> Option<ContentHash> {
        ContentHash::parse(&self.hash)
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

/// A storage failure; its detail is logged, the client sees a 500.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Content(#[from] cas::Error),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What one retention sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub records: usize,
    pub contents: usize,
    pub bytes: u64,
}

/// A bucket's records in memory.
#[derive(Default)]
struct Index {
    by_handle: HashMap<Handle, Arc<Record>>,
    /// Newest first when iterated in reverse: `(created, handle)`.
    by_time: BTreeSet<(u64, Handle)>,
}

impl Index {
    fn insert(&mut self, handle: Handle, record: Arc<Record>) {
        self.by_time.insert((record.created, handle.clone()));
        self.by_handle.insert(handle, record);
    }

    fn remove(&mut self, handle: &Handle) -> Option<Arc<Record>> {
        let record = self.by_handle.remove(handle)?;
        self.by_time.remove(&(record.created, handle.clone()));
        Some(record)
    }
}

/// The Blob Service's records, over the bucket's content store.
pub struct BlobService {
    root: PathBuf,
    content: Arc<dyn ContentStore>,
    /// Every bucket's records. A std mutex: held only to read or change the maps, never across
    /// an await.
    index: Mutex<HashMap<Bucket, Index>>,
}

impl BlobService {
    /// Loads every record under `root` (removing temp files a crash left among them).
    pub fn open(root: impl Into<PathBuf>, content: Arc<dyn ContentStore>) -> io::Result<Self> {
        let root = root.into();
        let mut index: HashMap<Bucket, Index> = HashMap::new();
        for bucket_dir in durable::subdirs(&root)? {
            let handles = bucket_dir.join(HANDLES_DIR);
            let bucket = bucket_dir
                .file_name()
                .and_then(|n| Bucket::parse(&n.to_string_lossy()));
            let Some(bucket) = bucket.filter(|_| handles.is_dir()) else {
                continue;
            };
            for shard in durable::subdirs(&handles)? {
                durable::remove_temp_files(&shard)?;
                for entry in std::fs::read_dir(&shard)? {
                    let path = entry?.path();
                    match read_record(&path) {
                        Ok((handle, record)) => {
                            index
                                .entry(bucket.clone())
                                .or_default()
                                .insert(handle, record);
                        }
                        Err(e) => tracing::error!(path = %path.display(), "record left out: {e}"),
                    }
                }
            }
        }
        Ok(Self {
            root,
            content,
            index: Mutex::new(index),
        })
    }

    fn path(&self, bucket: &Bucket, handle: &Handle) -> PathBuf {
        self.root
            .join(bucket.as_str())
            .join(HANDLES_DIR)
            .join(handle.shard())
            .join(format!("{handle}.json"))
    }

    /// Runs `f` on the bucket's records (none yet: an empty index, not kept).
    fn with_index<T>(&self, bucket: &Bucket, f: impl FnOnce(&Index) -> T) -> T {
        let index = self.index.lock().expect("record index lock poisoned");
        f(index.get(bucket).unwrap_or(&Index::default()))
    }

    /// Changes the bucket's records.
    fn change_index<T>(&self, bucket: &Bucket, f: impl FnOnce(&mut Index) -> T) -> T {
        let mut index = self.index.lock().expect("record index lock poisoned");
        f(index.entry(bucket.clone()).or_default())
    }

    /// Commits received content and its new record, durably; the record.
    pub async fn upload(
        &self,
        bucket: &Bucket,
        incoming: Box<dyn Incoming>,
        upload: Upload,
    ) -> Result<Arc<Record>> {
        let hash = incoming.hash().clone();
        let handle = Handle::new();
        let record = Arc::new(Record {
            handle: handle.to_string(),
            hash: hash.to_string(),
            size: incoming.size(),
            content_type: upload.content_type,
            file_name: upload.file_name,
            semantics: upload.semantics,
            retention_policy: upload.retention_policy,
            created: upload.now,
            uploader: upload.uploader,
        });
        let held = self.content.lock(bucket, &hash).await;
        let created = incoming.commit(&held, Owner::Service).await?;
        let path = self.path(bucket, &handle);
        let bytes = serde_json::to_vec(&*record).expect("a record always serialises");
        let write_path = path.clone();
        let written = tokio::task::spawn_blocking(move || durable::replace(&write_path, &bytes))
            .await?
            .map_err(|source| io_error(&path, source));
        if let Err(e) = written {
            // Nothing refers to content this upload brought in: take it out again.
            if created {
                self.content.remove(bucket, &hash, &held).await?;
            }
            return Err(e);
        }
        self.change_index(bucket, |index| index.insert(handle, record.clone()));
        Ok(record)
    }

    /// The live record of `handle`.
    pub fn get(&self, bucket: &Bucket, handle: &Handle, now: u64) -> Option<Arc<Record>> {
        self.with_index(bucket, |index| index.by_handle.get(handle).cloned())
            .filter(|r| r.live(now))
    }

    /// Live records, newest first, with this semantics (any when `None`), starting after the
    /// cursor `after` (`(created, handle)` of the last record of the previous page); at most
    /// `limit`, plus whether there are more.
    pub fn list(
        &self,
        bucket: &Bucket,
        semantics: Option<&str>,
        after: Option<&(u64, Handle)>,
        limit: usize,
        now: u64,
    ) -> (Vec<Arc<Record>>, bool) {
        self.with_index(bucket, |index| {
            let keys = index.by_time.iter().rev();
            let mut matching = keys
                .skip_while(|key| after.is_some_and(|a| *key >= a))
                .filter_map(|(_, handle)| index.by_handle.get(handle))
                .filter(|r| r.live(now) && semantics.is_none_or(|s| r.semantics == s));
            let page: Vec<_> = matching.by_ref().take(limit).cloned().collect();
            let more = matching.next().is_some();
            (page, more)
        })
    }

    /// Live records created after `since`, oldest first (the replay of a subscription).
    pub fn created_after(&self, bucket: &Bucket, since: u64, now: u64) -> Vec<Arc<Record>> {
        self.with_index(bucket, |index| {
            index
                .by_time
                .iter()
                .skip_while(|(created, _)| *created <= since)
                .filter_map(|(_, handle)| index.by_handle.get(handle))
                .filter(|r| r.live(now))
                .cloned()
                .collect()
        })
    }

    /// Deletes a live record, then its content if nothing else refers to it; `false` when
    /// there is no such live record.
    pub async fn delete(&self, bucket: &Bucket, handle: &Handle, now: u64) -> Result<bool> {
        let Some(record) = self.get(bucket, handle, now) else {
            return Ok(false);
        };
        self.remove_record(bucket, handle, &record, now, &mut Swept::default())
            .await?;
        Ok(true)
    }

    /// Deletes every expired record, then the content no live record refers to.
    pub async fn sweep(&self, now: u64) -> Result<Swept> {
        let expired: Vec<(Bucket, Handle, Arc<Record>)> = {
            let index = self.index.lock().expect("record index lock poisoned");
            index
                .iter()
                .flat_map(|(bucket, records)| {
                    records
                        .by_handle
                        .iter()
                        .filter(|(_, r)| !r.live(now))
                        .map(|(h, r)| (bucket.clone(), h.clone(), r.clone()))
                })
                .collect()
        };
        let mut swept = Swept::default();
        for (bucket, handle, record) in expired {
            self.remove_record(&bucket, &handle, &record, now, &mut swept)
                .await?;
        }
        Ok(swept)
    }

    /// Removes a record's file and entry, then its content when the service owns it and no
    /// live record refers to it any more (checked under the content's lock).
    async fn remove_record(
        &self,
        bucket: &Bucket,
        handle: &Handle,
        record: &Record,
        now: u64,
        swept: &mut Swept,
    ) -> Result<()> {
        let path = self.path(bucket, handle);
        let remove_path = path.clone();
        tokio::task::spawn_blocking(move || remove_file(&remove_path))
            .await?
            .map_err(|source| io_error(&path, source))?;
        self.change_index(bucket, |index| index.remove(handle));
        swept.records += 1;
        let Some(hash) = record.content_hash() else {
            return Ok(());
        };
        let held = self.content.lock(bucket, &hash).await;
        let referenced = self.with_index(bucket, |index| {
            index
                .by_handle
                .values()
                .any(|r| r.hash == record.hash && r.live(now))
        });
        if !referenced
            && self.content.service_owned(bucket, &hash, &held).await?
            && self.content.remove(bucket, &hash, &held).await?
        {
            swept.contents += 1;
            swept.bytes += record.size;
        }
        Ok(())
    }
}

/// Reads one record file.
fn read_record(path: &Path) -> Result<(Handle, Arc<Record>), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let record: Record = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let handle = Handle::parse(&record.handle).ok_or("the handle is not canonical")?;
    let expected = format!("{handle}.json");
    if path
        .file_name()
        .is_none_or(|name| name != expected.as_str())
    {
        return Err("the file name is not its handle".to_owned());
    }
    Ok((handle, Arc::new(record)))
}

/// Removes a file and syncs its directory; a missing file is not an error.
fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match path.parent() {
        Some(dir) => durable::sync_dir(dir),
        None => Ok(()),
    }
}

fn io_error(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(json: &str) -> Result<(String, RetentionPolicy), String> {
        let parsed: Metadata = serde_json::from_str(json).map_err(|e| e.to_string())?;
        parsed.validate(1_000).map_err(|e| e.to_string())
    }

    #[test]
    fn metadata_is_checked() {
        assert_eq!(
            metadata(r#"{"semantics":"photos"}"#).unwrap(),
            ("photos".to_owned(), RetentionPolicy::KeepForever)
        );
        assert_eq!(
            metadata(
                r#"{"semantics":"p","retentionPolicy":{"policy":"keepUntilTime","until":2000}}"#
            )
            .unwrap()
            .1,
            RetentionPolicy::KeepUntilTime { until: 2000 }
        );
        assert_eq!(
            metadata(
                r#"{"semantics":"p","retentionPolicy":{"policy":"keepForDuration","durationMs":5}}"#
            )
            .unwrap()
            .1
            .expires_at(1_000),
            Some(1_005)
        );
        for bad in [
            r#"{}"#,
            r#"{"semantics":""}"#,
            r#"{"semantics":7}"#,
            r#"{"semantics":"p","retentionPolicy":{"policy":"keepSomeTime"}}"#,
            r#"{"semantics":"p","retentionPolicy":{"policy":"keepUntilTime","until":999}}"#,
            r#"{"semantics":"p","retentionPolicy":{"policy":"keepUntilTime"}}"#,
            r#"{"semantics":"p","retentionPolicy":{"policy":"keepForDuration","durationMs":0}}"#,
            r#"{"semantics":"p","retentionPolicy":{"policy":"keepForDuration","durationMs":-1}}"#,
        ] {
            assert!(metadata(bad).is_err(), "{bad} should be refused");
        }
        let long = format!(r#"{{"semantics":"{}"}}"#, "é".repeat(MAX_SEMANTICS));
        assert!(
            metadata(&long).is_ok(),
            "256 characters, whatever their bytes"
        );
        let longer = format!(r#"{{"semantics":"{}"}}"#, "a".repeat(MAX_SEMANTICS + 1));
        assert!(metadata(&longer).is_err());
    }

    #[test]
    fn records_round_trip_and_expire() {
        let record = Record {
            handle: Handle::new().to_string(),
            hash: ContentHash::of(b"x").to_string(),
            size: 1,
            content_type: "image/png".into(),
            file_name: Some("a.png".into()),
            semantics: "photos".into(),
            retention_policy: RetentionPolicy::KeepForDuration { duration_ms: 10 },
            created: 100,
            uploader: "127.0.0.1".into(),
        };
        let text = serde_json::to_string(&record).unwrap();
        assert!(text.contains(r#""retentionPolicy":{"policy":"keepForDuration","durationMs":10}"#));
        assert!(text.contains(r#""contentType":"image/png""#));
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), record);
        assert!(record.live(109) && !record.live(110));
        assert_eq!(record.event()["semantics"], "photos");
    }
}
