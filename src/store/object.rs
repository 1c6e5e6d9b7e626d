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
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStoreExt, UpdateVersion};

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::layout::{Kind, key_of};
use crate::names::{Bucket, Ref};
use crate::objects::{Objects, Reread};

use super::format::{self, Summary};
use super::{Blob, Error, Listed, Result, SetOutcome, SetRequest, Store, apply};

/// Rounds of read, decide and conditional write one `set` may take while other writers keep
/// winning; past this the caller gets a conflict with the latest data, as for any lost race.
const MAX_ATTEMPTS: usize = 16;

/// Versioned blobs as objects of the object layer (on an object store, or a directory in
/// tests).
pub struct ObjectBlobs {
    objects: Objects,
    /// The blobs last read or written, by key, with their versions.
    kept: Cache<String, Kept, ByBytes>,
}

/// A blob as the store last showed it, and the version to ask it with.
#[derive(Clone)]
struct Kept {
    blob: Arc<Blob>,
    version: UpdateVersion,
}

/// A kept blob weighs its size, plus its name and bookkeeping.
#[derive(Clone)]
struct ByBytes;

impl Weighter<String, Kept> for ByBytes {
    fn weight(&self, key: &String, kept: &Kept) -> u64 {
        let e_tag = kept.version.e_tag.as_ref().map_or(0, String::len);
        (kept.blob.size() + key.len() + e_tag + 128) as u64
    }
}

/// `OBJECT_CACHE_BYTES` by default.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl ObjectBlobs {
    pub fn new(objects: Objects) -> Self {
        Self::with_cache(objects, DEFAULT_CACHE_BYTES)
    }

    /// Keeps at most `bytes` of blobs to answer reads the store confirms current.
    pub fn with_cache(objects: Objects, bytes: u64) -> Self {
        Self {
            objects,
            // An estimate of the entries, for sizing only: 4 KiB blobs.
            kept: Cache::with_weighter((bytes / 4096).max(16) as usize, bytes, ByBytes),
        }
    }

    fn keep(&self, key: &str, blob: Arc<Blob>, version: UpdateVersion) {
        match version.e_tag {
            Some(_) => self.kept.insert(key.to_owned(), Kept { blob, version }),
            None => drop(self.kept.remove(key)),
        }
    }

    fn key(bucket: &Bucket, r: &Ref) -> String {
        key_of(&Kind::Blob(bucket.clone(), r.clone())).expect("a blob has a name")
    }

    /// The blob at `key` and the version to update it with; `None` when there is none. One
    /// request to the store, answered without a body when the kept blob is current.
    async fn read(&self, key: &str) -> Result<Option<(Arc<Blob>, UpdateVersion)>> {
        let kept = self.kept.get(key);
        let known = kept.as_ref().map(|k| &k.version);
        match self.objects.reread(key, known).await? {
            Reread::Unchanged => {
                let kept = kept.expect("only a kept version is asked with");
                Ok(Some((kept.blob, kept.version)))
            }
            Reread::Missing => {
                self.kept.remove(key);
                Ok(None)
            }
            Reread::Changed(found) => {
                let blob = format::decode(&found.bytes).map_err(|reason| damaged(key, reason))?;
                let blob = Arc::new(blob);
                self.keep(key, blob.clone(), found.version.clone());
                Ok(Some((blob, found.version)))
            }
        }
    }

    /// What a listing shows of the blob object `meta` names, `None` when it is gone: a large
    /// one is judged by its head and tail (two ranged reads, of the version listed), a small
    /// one, or one of an unusual layout, by all of it; the data is never copied out.
    async fn summarize(&self, meta: &ObjectMeta) -> Result<Option<Summary>> {
        let path = &meta.location;
        let store = self.objects.store();
        if meta.size >= (format::HEAD.len() + format::TAIL) as u64 {
            let range = |range| GetOptions {
                range: Some(range),
                if_match: meta.e_tag.clone(),
                ..GetOptions::default()
            };
            let head = range(GetRange::Bounded(0..format::HEAD.len() as u64));
            let tail = range(GetRange::Suffix(format::TAIL as u64));
            let (head, tail) =
                futures_util::join!(store.get_opts(path, head), store.get_opts(path, tail));
            // Replaced or removed since the listing, or ranges refused: the whole object says.
            if let (Ok(head), Ok(tail)) = (head, tail)
                && tail.meta.size == meta.size
                && let (Ok(head), Ok(tail)) = (head.bytes().await, tail.bytes().await)
                && let Some(summary) = format::summarize_ends(&head, &tail, meta.size)
            {
                return summary
                    .map(Some)
                    .map_err(|reason| damaged(path.as_ref(), reason));
            }
        }
        let bytes = match store.get(path).await {
            Ok(found) => found.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        format::summarize(&bytes)
            .map(Some)
            .map_err(|reason| damaged(path.as_ref(), reason))
    }
}

fn damaged(key: &str, reason: String) -> Error {
    Error::Corrupt {
        path: key.to_owned(),
        reason,
    }
}

#[async_trait::async_trait]
impl Store for ObjectBlobs {
    async fn get(&self, bucket: &Bucket, r: &Ref) -> Result<Option<Arc<Blob>>> {
        Ok(self
            .read(&Self::key(bucket, r))
            .await?
            .map(|(blob, _)| blob))
    }

    async fn set(&self, bucket: &Bucket, r: &Ref, request: SetRequest) -> Result<SetOutcome> {
        let key = Self::key(bucket, r);
        let mut current = None;
        for _ in 0..MAX_ATTEMPTS {
            let read = self.read(&key).await?;
            current = read.as_ref().map(|(blob, _)| blob.clone());
            let blob = match apply(current.as_ref(), request.clone())? {
                Ok(blob) => blob,
                Err(outcome) => return Ok(outcome),
            };
            let expected = read.map(|(_, version)| version);
            let bytes = serde_json::to_vec(&blob).expect("a blob always serialises");
            // `None`: another writer won; decide again against what it left.
            if let Some(written) = self.objects.put_if(&key, bytes, expected).await? {
                let committed = SetOutcome::Committed {
                    version: blob.version,
                    grown: super::grown(current.as_deref(), &blob),
                };
                self.keep(&key, Arc::new(blob), written);
                return Ok(committed);
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
        let prefix = self.objects.path(bucket.as_str());
        let path = |r: &Ref| self.objects.path(&Self::key(bucket, r));
        let store = self.objects.store();
        // Object names sort like refs: the shard is the ref's first two characters.
        let mut names = match after {
            Some(after) => store.list_with_offset(Some(&prefix), &path(after)),
            None => store.list(Some(&prefix)),
        };
        let mut found = Vec::new();
        while let Some(meta) = names.next().await {
            let meta = meta?;
            let name = meta.location.filename().unwrap_or_default();
            let Some(r) = name.strip_suffix(".json").and_then(Ref::parse) else {
                continue;
            };
            if meta.location != path(&r) || after.is_some_and(|a| r <= *a) {
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
        let probe: &'static [u8] = b"probe";
        self.objects.put(".readiness-probe", probe).await.is_ok()
    }
}
