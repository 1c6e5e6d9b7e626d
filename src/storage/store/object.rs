//! The object-store backend of the versioned store (tested on Ceph RGW; see
//! `docs/SCALING.md`): one object per blob at `<prefix><bucket>/<ref[0..2]>/<ref>.json`,
//! holding the same JSON as the file layout.
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
//! `If-None-Match`, and a `304` (no body) says the kept blob is still the current one. A write
//! is first decided on the kept blob and sent conditional on its ETag, without a read: it lands
//! only if the kept blob is still the current one (one request for the common case, a node
//! writing what it last wrote), and a refusal, by the store or on the kept blob, is decided
//! again on a fresh read. A version
//! heard from the other nodes over Redis is never trusted instead: Redis delivers at most once
//! and later than the write, so a node cannot prove it heard of every write before a read.

use std::sync::Arc;

use futures_util::StreamExt;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStoreExt, UpdateVersion};

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::names::{Bucket, Ref};
use crate::storage::layout::{Kind, key_of};
use crate::storage::objects::{Objects, Reread};

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

impl ObjectBlobs {
    pub fn new(objects: Objects) -> Self {
        Self::with_cache(objects, crate::config::DEFAULT_OBJECT_CACHE_BYTES)
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
        for attempt in 0..MAX_ATTEMPTS {
            // First against the blob kept from the last read or write, without asking the store:
            // the write is conditional on its version, so it lands only if that is still the
            // current one, and a write on the object a node last wrote costs one request.
            let kept = (attempt == 0).then(|| self.kept.get(&key)).flatten();
            let trusted = kept.is_none();
            let read = match kept {
                Some(kept) => Some((kept.blob, kept.version)),
                None => self.read(&key).await?,
            };
            current = read.as_ref().map(|(blob, _)| blob.clone());
            let blob = match apply(current.as_ref(), request.clone())? {
                Ok(blob) => blob,
                Err(outcome) if trusted => return Ok(outcome),
                // Refused on what this node kept, which may be stale: asked again of the store.
                Err(_) => continue,
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

#[cfg(test)]
mod tests {
    use std::ops::Range;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use futures_util::stream::BoxStream;
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{
        CopyOptions, GetResult, ListResult, MultipartUpload, ObjectStore, PutMultipartOptions,
        PutOptions, PutPayload, PutResult,
    };

    use super::*;
    use crate::storage::store::{Edit, Expect};

    /// An in-memory store that counts the requests it is sent.
    #[derive(Debug, Default)]
    struct Counted {
        inner: InMemory,
        requests: AtomicUsize,
    }

    impl Counted {
        fn count(&self) {
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl std::fmt::Display for Counted {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Counted")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Counted {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            self.count();
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.count();
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &Path,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.count();
            self.inner.get_opts(location, options).await
        }

        async fn get_ranges(
            &self,
            location: &Path,
            ranges: &[Range<u64>],
        ) -> object_store::Result<Vec<Bytes>> {
            self.count();
            self.inner.get_ranges(location, ranges).await
        }

        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.count();
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<ListResult> {
            self.count();
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.count();
            self.inner.copy_opts(from, to, options).await
        }
    }

    fn write(expect: Expect, data: &str) -> SetRequest {
        SetRequest {
            edit: Edit::Put(Some(data.to_owned())),
            expect,
            ip: "203.0.113.7".to_owned(),
            now: 1,
            id: None,
        }
    }

    /// Requests to the store since the last call.
    fn sent(store: &Counted) -> usize {
        store.requests.swap(0, Ordering::Relaxed)
    }

    #[tokio::test]
    async fn writes_on_what_a_node_kept_cost_one_request_and_stay_compare_and_swap() {
        let store = Arc::new(Counted::default());
        let objects = Objects::over(store.clone(), "p/");
        let (a, b) = (ObjectBlobs::new(objects.clone()), ObjectBlobs::new(objects));
        let (bucket, r) = (
            Bucket::parse("b").unwrap(),
            Ref::parse(&"ab".repeat(32)).unwrap(),
        );
        let version = |outcome: &SetOutcome| match outcome {
            SetOutcome::Committed { version, .. } => *version,
            other => panic!("not committed: {other:?}"),
        };

        let first = a
            .set(&bucket, &r, write(Expect::Absent, "AA=="))
            .await
            .unwrap();
        assert_eq!(version(&first), 1);
        sent(&store);
        let second = a
            .set(&bucket, &r, write(Expect::Version(1), "AQ=="))
            .await
            .unwrap();
        assert_eq!(version(&second), 2);
        assert_eq!(sent(&store), 1, "a write on the kept version is one PUT");

        // Another node writes: what `a` kept is stale.
        b.set(&bucket, &r, write(Expect::Version(2), "Ag=="))
            .await
            .unwrap();
        // A client that learned version 3 from `b` is not refused on the stale version `a`
        // kept: `a` asks the store before it answers.
        let ahead = a
            .set(&bucket, &r, write(Expect::Version(3), "Aw=="))
            .await
            .unwrap();
        assert_eq!(version(&ahead), 4);
        // `b` kept version 3, now stale: a write expecting it does not land on it.
        let stale = b
            .set(&bucket, &r, write(Expect::Version(3), "BA=="))
            .await
            .unwrap();
        match stale {
            SetOutcome::Conflict(Some(current)) => assert_eq!(current.version, 4),
            other => panic!("a stale write landed: {other:?}"),
        }
        let read = b.get(&bucket, &r).await.unwrap().unwrap();
        assert_eq!((read.version, read.data.as_deref()), (4, Some("Aw==")));
    }
}
