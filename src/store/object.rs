//! The object-store backend of the versioned store (AWS S3, MinIO, R2, Ceph RGW, …): one
//! object per blob at `<prefix><bucket>/<ref[0..2]>/<ref>.json`, holding the same JSON as the
//! file layout.
//!
//! The object store is the compare-and-swap: a write is a conditional PUT against the ETag of
//! the object it read (`If-Match`), or `If-None-Match: *` to create. A 412 (or 409) means
//! another writer, on this node or another, got there first; the write is then decided again
//! against what that writer left, so the outcome is the one a serial order of the two writes
//! gives. Nothing on this node is relied on for correctness.
//!
//! Every read asks the store, so a read returns the latest write acknowledged before it began,
//! on whichever node (linearizable, as on one node). What a node keeps is the blobs it read or
//! wrote last, with their ETags, bounded in bytes (`OBJECT_CACHE_BYTES`): a read then asks with
//! `If-None-Match`, and a `304` (no body) says the kept blob is still the current one. A version
//! heard from the other nodes over Redis is never trusted instead: Redis delivers at most once
//! and later than the write, so a node cannot prove it heard of every write before a read.

use std::sync::Arc;

use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutPayload,
    UpdateVersion,
};

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::names::{Bucket, Ref};

use super::format::{self, Summary};
use super::{Blob, Error, Listed, Result, SetOutcome, SetRequest, Store, apply};

/// Rounds of read, decide and conditional write one `set` may take while other writers keep
/// winning; past this the caller gets a conflict with the latest data, as for any lost race.
const MAX_ATTEMPTS: usize = 16;

/// Versioned blobs in an object store.
pub struct ObjectBlobs {
    store: Arc<dyn ObjectStore>,
    /// Prepended to every object name (`S3_PREFIX`), e.g. `blobs/`.
    prefix: String,
    /// The blobs last read or written, by object name, with their ETags.
    kept: Cache<Path, Kept, ByBytes>,
}

/// A blob as the store last showed it, and the version to ask it with.
#[derive(Clone)]
struct Kept {
    blob: Arc<Blob>,
    e_tag: String,
    version: Option<String>,
}

/// A kept blob weighs its size, plus its name and bookkeeping.
#[derive(Clone)]
struct ByBytes;

impl Weighter<Path, Kept> for ByBytes {
    fn weight(&self, path: &Path, kept: &Kept) -> u64 {
        (kept.blob.size() + path.as_ref().len() + kept.e_tag.len() + 128) as u64
    }
}

/// `OBJECT_CACHE_BYTES` by default.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl ObjectBlobs {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self::with_cache(store, prefix, DEFAULT_CACHE_BYTES)
    }

    /// Keeps at most `bytes` of blobs to answer reads the store confirms current.
    pub fn with_cache(store: Arc<dyn ObjectStore>, prefix: &str, bytes: u64) -> Self {
        Self {
            store,
            prefix: prefix.to_owned(),
            // An estimate of the entries, for sizing only: 4 KiB blobs.
            kept: Cache::with_weighter((bytes / 4096).max(16) as usize, bytes, ByBytes),
        }
    }

    fn keep(&self, path: &Path, blob: Arc<Blob>, e_tag: Option<String>, version: Option<String>) {
        match e_tag {
            Some(e_tag) => self.kept.insert(
                path.clone(),
                Kept {
                    blob,
                    e_tag,
                    version,
                },
            ),
            None => drop(self.kept.remove(path)),
        }
    }

    fn bucket_prefix(&self, bucket: &Bucket) -> String {
        format!("{}{bucket}/", self.prefix)
    }

    fn path(&self, bucket: &Bucket, r: &Ref) -> Path {
        Path::from(format!(
            "{}{}/{r}.json",
            self.bucket_prefix(bucket),
            r.shard()
        ))
    }

    /// The blob at `path` and the version to update it with; `None` when there is none. One
    /// request to the store, answered without a body when the kept blob is current.
    async fn read(&self, path: &Path) -> Result<Option<(Arc<Blob>, UpdateVersion)>> {
        let kept = self.kept.get(path);
        let options = GetOptions {
            if_none_match: kept.as_ref().map(|k| k.e_tag.clone()),
            ..GetOptions::default()
        };
        let found = match self.store.get_opts(path, options).await {
            Ok(found) => found,
            Err(object_store::Error::NotModified { .. }) if kept.is_some() => {
                let kept = kept.expect("checked above");
                let version = UpdateVersion {
                    e_tag: Some(kept.e_tag),
                    version: kept.version,
                };
                return Ok(Some((kept.blob, version)));
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.kept.remove(path);
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let version = UpdateVersion {
            e_tag: found.meta.e_tag.clone(),
            version: found.meta.version.clone(),
        };
        let bytes = found.bytes().await?;
        let blob = Arc::new(format::decode(&bytes).map_err(|reason| damaged(path, reason))?);
        self.keep(
            path,
            blob.clone(),
            version.e_tag.clone(),
            version.version.clone(),
        );
        Ok(Some((blob, version)))
    }

    /// What a listing shows of the blob object `meta` names, `None` when it is gone: a large
    /// one is judged by its head and tail (two ranged reads, of the version listed), a small
    /// one, or one of an unusual layout, by all of it; the data is never copied out.
    async fn summarize(&self, meta: &ObjectMeta) -> Result<Option<Summary>> {
        let path = &meta.location;
        if meta.size >= (format::HEAD.len() + format::TAIL) as u64 {
            let range = |range| GetOptions {
                range: Some(range),
                if_match: meta.e_tag.clone(),
                ..GetOptions::default()
            };
            let head = range(GetRange::Bounded(0..format::HEAD.len() as u64));
            let tail = range(GetRange::Suffix(format::TAIL as u64));
            let (head, tail) = futures_util::join!(
                self.store.get_opts(path, head),
                self.store.get_opts(path, tail)
            );
            // Replaced or removed since the listing, or ranges refused: the whole object says.
            if let (Ok(head), Ok(tail)) = (head, tail)
                && tail.meta.size == meta.size
                && let (Ok(head), Ok(tail)) = (head.bytes().await, tail.bytes().await)
                && let Some(summary) = format::summarize_ends(&head, &tail, meta.size)
            {
                return summary.map(Some).map_err(|reason| damaged(path, reason));
            }
        }
        let bytes = match self.store.get(path).await {
            Ok(found) => found.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        format::summarize(&bytes)
            .map(Some)
            .map_err(|reason| damaged(path, reason))
    }
}

fn damaged(path: &Path, reason: String) -> Error {
    Error::Corrupt {
        path: path.to_string(),
        reason,
    }
}

#[async_trait::async_trait]
impl Store for ObjectBlobs {
    async fn get(&self, bucket: &Bucket, r: &Ref) -> Result<Option<Arc<Blob>>> {
        Ok(self
            .read(&self.path(bucket, r))
            .await?
            .map(|(blob, _)| blob))
    }

    async fn set(&self, bucket: &Bucket, r: &Ref, request: SetRequest) -> Result<SetOutcome> {
        let path = self.path(bucket, r);
        let mut current = None;
        for _ in 0..MAX_ATTEMPTS {
            let read = self.read(&path).await?;
            current = read.as_ref().map(|(blob, _)| blob.clone());
            let blob = match apply(current.as_ref(), request.clone())? {
                Ok(blob) => blob,
                Err(outcome) => return Ok(outcome),
            };
            let mode = match read {
                Some((_, version)) => PutMode::Update(version),
                None => PutMode::Create,
            };
            let bytes = serde_json::to_vec(&blob).expect("a blob always serialises");
            match self
                .store
                .put_opts(&path, PutPayload::from(bytes), mode.into())
                .await
            {
                Ok(written) => {
                    let committed = SetOutcome::Committed {
                        version: blob.version,
                        grown: super::grown(current.as_deref(), &blob),
                    };
                    self.keep(&path, Arc::new(blob), written.e_tag, written.version);
                    return Ok(committed);
                }
                // Another writer won: decide again against what it left.
                Err(object_store::Error::Precondition { .. })
                | Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(SetOutcome::Conflict(current))
    }

    async fn list(
        &self,
        bucket: &Bucket,
        after: Option<&Ref>,
        limit: usize,
    ) -> Result<Vec<(Ref, Listed)>> {
        let prefix = Path::from(self.bucket_prefix(bucket));
        // Object names sort like refs: the shard is the ref's first two characters.
        let mut names = match after {
            Some(after) => self
                .store
                .list_with_offset(Some(&prefix), &self.path(bucket, after)),
            None => self.store.list(Some(&prefix)),
        };
        let mut found = Vec::new();
        while let Some(meta) = names.next().await {
            let meta = meta?;
            let name = meta.location.filename().unwrap_or_default();
            let Some(r) = name.strip_suffix(".json").and_then(Ref::parse) else {
                continue;
            };
            if meta.location != self.path(bucket, &r) || after.is_some_and(|a| r <= *a) {
                continue;
            }
            match self.summarize(&meta).await {
                Ok(Some(Some(listed))) => found.push((r, listed)),
                // Gone since the listing, or a tombstone.
                Ok(_) => continue,
                Err(e @ Error::Corrupt { .. }) => {
                    tracing::warn!(path = %meta.location, "left out of a listing: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            }
            if found.len() == limit {
                break;
            }
        }
        Ok(found)
    }

    async fn writable(&self) -> bool {
        let probe = Path::from(format!("{}.readiness-probe", self.prefix));
        self.store
            .put(&probe, PutPayload::from_static(b"probe"))
            .await
            .is_ok()
    }
}
