//! The object-store content store: the same names as the files,
//! `<prefix><bucket>/cas/<hash[0..2]>/<hash>` for the bytes and `<hash>.service` for the Blob
//! Service's marker, in an S3-compatible store shared by every node.
//!
//! A body is received into an anonymous local temp file while it is hashed, and uploaded under
//! its name only once its hash is known and accepted (as a multipart upload when large). A
//! read downloads into a temp file while hashing and serves that file only if it matches, so
//! every byte handed out is verified, as with the files.
//!
//! Several nodes may store, claim and remove one content at once, and no node-local lock can
//! order them. The marker object does, through conditional writes (`If-Match` on its ETag,
//! `If-None-Match: *` to create it), and every store or claim writes the marker *before* it
//! looks at the content:
//! - `{"claimed": t}`: the Blob Service brought the content in (or was handed it) at `t`; the
//!   sweep removes it once no record refers to it and `t` is past the grace.
//! - `{"kept": t}`: a Blob Service upload at `t` found the bytes already there (shared content):
//!   a shared `DELETE` leaves them alone for the grace, the sweep never removes them.
//! - `{"shared": t}`: a shared flow stored the bytes over a claim: they are no longer the
//!   service's. Stays in place (deleting it could erase another node's newer marker). A
//!   shared store looks at the marker again once its bytes are up, so a service upload that
//!   ran alongside cannot leave them claimed.
//! - `{"doomed": t}`: a node is removing the content. It got there by a conditional write over
//!   the marker it had checked, so nobody claimed or kept the content in between; whoever wants
//!   the content from now on waits until the marker is gone (the content is gone by then) and
//!   uploads again. A doomed marker older than [`DOOM_LEASE`] was left by a node that died
//!   mid-removal and is taken over.
//!
//! The grace is the time an upload on another node has to make its record seen by every node
//! (moments, normally); the claim is written again once the bytes are up, so it runs from
//! then.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, UpdateVersion};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::clock::now_ms;
use crate::names::{Bucket, ContentHash};
use crate::storage::locks::KeyedLocks;

mod upload;

use super::{
    ByteStream, CONTENT_DIR, Content, ContentLock, ContentStore, Error, Incoming, MARKER_SUFFIX,
    Owner, Result, STAGING_DIR,
};
use super::{content_path, staging_path};
use upload::ObjectIncoming;

/// How long a doomed marker protects a removal in progress; older, its node is taken to have
/// died mid-way and the marker is taken over.
pub const DOOM_LEASE: Duration = Duration::from_secs(60);

/// How long after its last claim service content stays safe from the sweep, whatever the
/// records say: the time an upload on another node has to make its record seen.
pub const CLAIM_GRACE: Duration = Duration::from_secs(600);

/// First wait, and the longest, between looks at a doomed marker.
const DOOM_POLL: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(250));

/// Whose content is, as its marker says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Marker {
    Claimed(u64),
    Kept(u64),
    Doomed(u64),
    Shared(u64),
}

/// Whether a marker object says its content is the Blob Service's, as a marker file does: claimed,
/// doomed, or unreadable (read as a claim long past). Kept and shared content is not.
pub fn marker_owns(bytes: &[u8]) -> bool {
    !matches!(
        serde_json::from_slice(bytes),
        Ok(Marker::Kept(_) | Marker::Shared(_))
    )
}

/// Content in an object store.
pub struct ObjectContent {
    objects: Arc<Shared>,
    /// One lock per hash in use on this node: batches this node's work on one content (the
    /// markers decide between nodes).
    locks: KeyedLocks<(Bucket, ContentHash), ()>,
}

/// The objects and the grace, shared with bodies waiting for their commit.
struct Shared {
    layer: crate::storage::objects::Objects,
    /// See [`CLAIM_GRACE`]; shorter in tests.
    grace: Duration,
}

impl ObjectContent {
    pub fn new(objects: &crate::storage::objects::Objects, grace: Duration) -> Self {
        Self {
            objects: Arc::new(Shared {
                layer: objects.clone(),
                grace,
            }),
            locks: KeyedLocks::default(),
        }
    }
}

impl Shared {
    fn store(&self) -> &Arc<dyn ObjectStore> {
        self.layer.store()
    }

    fn prefix(&self) -> &str {
        self.layer.prefix()
    }

    /// The layer's key of a name of this store.
    fn key<'a>(&self, path: &'a Path) -> &'a str {
        self.layer
            .key(path)
            .expect("every name here is under the prefix")
    }

    fn dir(&self, bucket: &Bucket) -> String {
        format!("{}{bucket}/{CONTENT_DIR}/", self.prefix())
    }

    fn path(&self, bucket: &Bucket, hash: &ContentHash) -> Path {
        content_path(self.prefix(), bucket, hash)
    }

    /// The buckets that have objects under the prefix.
    async fn buckets(&self) -> Result<Vec<Bucket>> {
        let names = self.layer.dirs("").await.map_err(layer_error)?;
        Ok(names
            .iter()
            .filter_map(|name| Bucket::parse(name))
            .collect())
    }

    /// Downloads `path` into a local temp file while hashing it; the file, rewound, and its
    /// size when it hashes to `hash`. A missing object is `None`; so is one that does not
    /// match, which is logged.
    async fn download(
        &self,
        path: &Path,
        hash: &ContentHash,
    ) -> Result<Option<(tokio::fs::File, u64)>> {
        let found = match self.store().get(path).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_error(path, e)),
        };
        let what = path.to_string();
        let body = found.into_stream().map_err(std::io::Error::other).boxed();
        let mut file = temp_file(&what).await?;
        let (actual, size) = match super::hash_into(&mut file, body, u64::MAX, &what).await {
            Ok(read) => read,
            Err(Error::Body(source)) => return Err(Error::Io { path: what, source }),
            Err(e) => return Err(e),
        };
        if actual != *hash {
            tracing::error!(path = %what, %actual, "content does not match its hash: treated as missing");
            return Ok(None);
        }
        file.rewind()
            .await
            .map_err(|source| Error::Io { path: what, source })?;
        Ok(Some((file, size)))
    }

    fn marker_path(&self, bucket: &Bucket, hash: &ContentHash) -> Path {
        Path::from(format!(
            "{}{}/{hash}{MARKER_SUFFIX}",
            self.dir(bucket),
            hash.shard()
        ))
    }

    /// The size of the object at `path`; `None` when there is none.
    async fn head(&self, path: &Path) -> Result<Option<u64>> {
        match self.store().head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(path, e)),
        }
    }

    async fn delete(&self, path: &Path) -> Result<()> {
        self.layer.delete(self.key(path)).await.map_err(layer_error)
    }

    /// The marker at `path` and the version to replace it with.
    async fn read_marker(&self, path: &Path) -> Result<Option<(Marker, UpdateVersion)>> {
        let Some(found) = self.layer.get(self.key(path)).await.map_err(layer_error)? else {
            return Ok(None);
        };
        // A marker that cannot be read (an empty file copied from the file layout) is a claim
        // made long ago.
        let marker = serde_json::from_slice(&found.bytes).unwrap_or(Marker::Claimed(0));
        Ok(Some((marker, found.version)))
    }

    /// The marker at `path` once no removal is in progress (waiting out a fresh doomed one).
    async fn settled_marker(&self, path: &Path) -> Result<Option<(Marker, UpdateVersion)>> {
        let mut pause = DOOM_POLL.0;
        loop {
            match self.read_marker(path).await? {
                Some((Marker::Doomed(at), _)) if !older_than(at, DOOM_LEASE) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(DOOM_POLL.1);
                }
                found => return Ok(found),
            }
        }
    }

    /// Writes `marker` over the version read (`None`: only if there is none); its new version,
    /// or `None` when another node changed it first.
    async fn write_marker(
        &self,
        path: &Path,
        marker: Marker,
        over: Option<UpdateVersion>,
    ) -> Result<Option<UpdateVersion>> {
        let body = serde_json::to_vec(&marker).expect("a marker always serialises");
        self.layer
            .put_if(self.key(path), body, over)
            .await
            .map_err(layer_error)
    }

    /// Removes the content if its marker, read now, passes `removable`: the marker is doomed
    /// first by a conditional write, so nobody claims the content in between. `None` when it
    /// was not removable (or another node changed the marker first); else the removed size.
    async fn doom_and_remove(
        &self,
        bucket: &Bucket,
        hash: &ContentHash,
        removable: impl Fn(Option<Marker>) -> bool,
    ) -> Result<Option<Option<u64>>> {
        let marker_path = self.marker_path(bucket, hash);
        let current = self.settled_marker(&marker_path).await?;
        let (marker, version) = match current {
            Some((marker, version)) => (Some(marker), Some(version)),
            None => (None, None),
        };
        if !removable(marker) {
            return Ok(None);
        }
        let doomed = self.write_marker(&marker_path, Marker::Doomed(now_ms()), version);
        if doomed.await?.is_none() {
            return Ok(None);
        }
        let path = self.path(bucket, hash);
        let size = self.head(&path).await?;
        // The content first: while the doomed marker is there, nobody relies on it.
        self.delete(&path).await?;
        self.delete(&marker_path).await?;
        Ok(Some(size))
    }

    /// Makes sure bytes a shared flow stored are not the service's. A Blob Service upload of
    /// the same bytes running alongside may have claimed them, or be about to (it kept them,
    /// found them missing, and will claim its `kept` marker): a claim becomes `shared`, and a
    /// `kept` marker is written again, so that upload's next conditional write fails and it
    /// finds the bytes shared.
    async fn unclaim(&self, marker_path: &Path) -> Result<()> {
        let mut retry = Backoff::default();
        loop {
            let next = match self.settled_marker(marker_path).await? {
                Some((Marker::Claimed(_), version)) => (Marker::Shared(now_ms()), version),
                Some((Marker::Kept(_), version)) => (Marker::Kept(now_ms()), version),
                _ => return Ok(()),
            };
            if self
                .write_marker(marker_path, next.0, Some(next.1))
                .await?
                .is_some()
            {
                return Ok(());
            }
            retry.wait(marker_path).await?;
        }
    }

    /// Uploads the temp file `file` to `path` (multipart when large).
    async fn upload(&self, file: &mut tokio::fs::File, path: &Path) -> Result<()> {
        let io_error = |source| Error::Io {
            path: path.to_string(),
            source,
        };
        file.rewind().await.map_err(io_error)?;
        let mut upload = BufWriter::new(self.store().clone(), path.clone());
        if let Err(e) = tokio::io::copy(file, &mut upload).await {
            upload.abort().await.ok();
            return Err(io_error(e));
        }
        upload.shutdown().await.map_err(io_error)
    }
}

/// Whether the time `at` (milliseconds) is more than `age` ago.
fn older_than(at: u64, age: Duration) -> bool {
    now_ms().saturating_sub(at) >= age.as_millis() as u64
}

/// An anonymous local temp file (gone when closed, whatever happens).
async fn temp_file(what: &str) -> Result<tokio::fs::File> {
    let file = tokio::task::spawn_blocking(tempfile::tempfile)
        .await?
        .map_err(|source| Error::Io {
            path: what.to_owned(),
            source,
        })?;
    Ok(tokio::fs::File::from_std(file))
}

/// A failure the object layer reported (and counted).
fn layer_error(e: crate::storage::objects::Error) -> Error {
    Error::Io {
        path: e.key,
        source: std::io::Error::other(e.source),
    }
}

fn store_error(path: &Path, e: object_store::Error) -> Error {
    crate::metrics::object_store_error();
    Error::Io {
        path: path.to_string(),
        source: std::io::Error::other(e),
    }
}

/// The marker read, split into its state and the version to replace it with.
fn split(read: Option<(Marker, UpdateVersion)>) -> (Option<Marker>, Option<UpdateVersion>) {
    match read {
        Some((marker, version)) => (Some(marker), Some(version)),
        None => (None, None),
    }
}

/// A growing pause between attempts that lost a conditional write, for at most
/// [`MAX_ROUNDS`] attempts: writers that keep winning over one marker cost this one a bounded
/// wait, then an error.
#[derive(Default)]
struct Backoff(u32);

/// About 20 s of attempts.
const MAX_ROUNDS: u32 = 64;

impl Backoff {
    async fn wait(&mut self, marker: &Path) -> Result<()> {
        self.0 += 1;
        if self.0 >= MAX_ROUNDS {
            return Err(Error::Io {
                path: marker.to_string(),
                source: std::io::Error::other(format!(
                    "lost {MAX_ROUNDS} conditional writes in a row"
                )),
            });
        }
        tokio::time::sleep(DOOM_POLL.0 * (1 << self.0.min(5))).await;
        Ok(())
    }
}

#[async_trait::async_trait]
impl ContentStore for ObjectContent {
    async fn receive(
        &self,
        bucket: &Bucket,
        body: ByteStream<'_>,
        limit: u64,
    ) -> Result<Box<dyn Incoming>> {
        let what = "a local temp file";
        let mut file = temp_file(what).await?;
        let (hash, size) = super::hash_into(&mut file, body, limit, what).await?;
        Ok(Box::new(ObjectIncoming {
            file,
            hash,
            size,
            bucket: bucket.clone(),
            objects: self.objects.clone(),
            copy_from: None,
        }))
    }

    async fn lock(&self, bucket: &Bucket, hash: &ContentHash) -> ContentLock {
        self.locks.lock(&(bucket.clone(), hash.clone())).await
    }

    async fn open(&self, bucket: &Bucket, hash: &ContentHash) -> Result<Option<Content>> {
        let path = self.objects.path(bucket, hash);
        let found = self.objects.download(&path, hash).await?;
        Ok(found.map(|(file, size)| Content {
            size,
            reader: Box::new(file),
        }))
    }

    async fn size(&self, bucket: &Bucket, hash: &ContentHash) -> Result<Option<u64>> {
        self.objects.head(&self.objects.path(bucket, hash)).await
    }

    async fn list(
        &self,
        bucket: &Bucket,
        after: Option<&ContentHash>,
        limit: usize,
    ) -> Result<Vec<(ContentHash, u64)>> {
        let dir = self.objects.dir(bucket);
        let prefix = Path::from(dir.as_str());
        let offset = Path::from(match after {
            Some(hash) => format!("{dir}{}/{hash}", hash.shard()),
            None => dir.clone(),
        });
        let mut listed = self
            .objects
            .store()
            .list_with_offset(Some(&prefix), &offset);
        let mut found = Vec::new();
        while found.len() < limit {
            let Some(meta) = listed.next().await else {
                break;
            };
            let meta = meta.map_err(|e| store_error(&prefix, e))?;
            // `<shard>/<hash>` only: not markers, not unconfirmed uploads.
            let name = meta
                .location
                .as_ref()
                .strip_prefix(dir.as_str())
                .unwrap_or_default();
            if let Some((shard, hash)) = name.split_once('/')
                && let Some(hash) = ContentHash::parse(hash)
                && hash.shard() == shard
            {
                found.push((hash, meta.size));
            }
        }
        Ok(found)
    }

    async fn remove(&self, bucket: &Bucket, hash: &ContentHash, held: ContentLock) -> Result<bool> {
        let _held = held;
        // Content the Blob Service claims is its sweep's to remove, once no record refers to
        // it; content an upload kept is safe for the grace: the records another node just
        // wrote may not be in this node's view yet.
        let grace = self.objects.grace;
        let removed = self
            .objects
            .doom_and_remove(bucket, hash, |marker| match marker {
                None | Some(Marker::Shared(_) | Marker::Doomed(_)) => true,
                Some(Marker::Kept(at)) => older_than(at, grace),
                Some(Marker::Claimed(_)) => false,
            })
            .await?;
        match removed {
            Some(size) => Ok(size.is_some()),
            None => Ok(self.size(bucket, hash).await?.is_some()),
        }
    }

    async fn claim(&self, bucket: &Bucket, hash: &ContentHash, held: ContentLock) -> Result<bool> {
        let _held = held;
        let objects = &self.objects;
        let path = objects.marker_path(bucket, hash);
        let mut retry = Backoff::default();
        loop {
            let (_, version) = split(objects.settled_marker(&path).await?);
            let claim = objects.write_marker(&path, Marker::Claimed(now_ms()), version);
            if claim.await?.is_some() {
                // Looked at after the claim: a removal either failed to doom it or is over.
                // A claim without content is cleared by the sweep.
                return Ok(self.size(bucket, hash).await?.is_some());
            }
            retry.wait(&path).await?;
        }
    }

    async fn release(
        &self,
        bucket: &Bucket,
        hash: &ContentHash,
        held: ContentLock,
    ) -> Result<Option<u64>> {
        let _held = held;
        let grace = self.objects.grace;
        let removed = self
            .objects
            .doom_and_remove(bucket, hash, |marker| match marker {
                Some(Marker::Claimed(at)) => older_than(at, grace),
                // Left by a node that died mid-removal (fresh ones were waited out).
                Some(Marker::Doomed(_)) => true,
                None | Some(Marker::Shared(_) | Marker::Kept(_)) => false,
            })
            .await?;
        Ok(removed.map(|size| size.unwrap_or(0)))
    }

    async fn service_owned(&self) -> Result<Vec<(Bucket, ContentHash)>> {
        let objects = &self.objects;
        let mut owned = Vec::new();
        for bucket in objects.buckets().await? {
            let dir = Path::from(objects.dir(&bucket));
            let mut names = objects.store().list(Some(&dir));
            while let Some(meta) = names.next().await {
                let meta = meta.map_err(|e| store_error(&dir, e))?;
                let hash = meta
                    .location
                    .filename()
                    .and_then(|name| name.strip_suffix(MARKER_SUFFIX))
                    .and_then(ContentHash::parse);
                if let Some(hash) = hash
                    && meta.location == objects.marker_path(&bucket, &hash)
                {
                    owned.push((bucket.clone(), hash));
                }
            }
        }
        Ok(owned)
    }

    async fn adopt(
        &self,
        bucket: &Bucket,
        hash: &ContentHash,
        limit: u64,
        held: ContentLock,
    ) -> Result<bool> {
        let objects = &self.objects;
        let staging = staging_path(objects.prefix(), bucket, hash);
        // A copy of its own: the client may still PUT to the URL while this checks it.
        let checked = Path::from(format!("{staging}.{}", uuid::Uuid::new_v4().simple()));
        match objects.store().copy(&staging, &checked).await {
            Ok(()) => {}
            // Nothing staged: taken in already, or never sent.
            Err(object_store::Error::NotFound { .. }) => {
                return Ok(self.open(bucket, hash).await?.is_some());
            }
            Err(e) => return Err(store_error(&staging, e)),
        }
        objects.delete(&staging).await?;
        // A presigned URL cannot bound the body: the limit is checked here.
        let within = objects
            .head(&checked)
            .await?
            .is_some_and(|size| size <= limit);
        let found = if within {
            objects.download(&checked, hash).await
        } else {
            Ok(None)
        };
        let adopted = match found {
            Ok(Some((file, size))) => {
                let incoming = Box::new(ObjectIncoming {
                    file,
                    hash: hash.clone(),
                    size,
                    bucket: bucket.clone(),
                    objects: objects.clone(),
                    copy_from: Some(checked.clone()),
                });
                incoming.commit(held, Owner::Shared).await.map(|_| true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(e),
        };
        objects.delete(&checked).await?;
        adopted
    }

    async fn sweep_staging(&self, age: Duration) -> Result<usize> {
        let objects = &self.objects;
        let cutoff = cutoff_ms(age);
        let mut removed = 0;
        for bucket in objects.buckets().await? {
            let staging = Path::from(format!("{}{STAGING_DIR}/", objects.dir(&bucket)));
            let stale: Vec<Path> = objects
                .store()
                .list(Some(&staging))
                .try_filter(|meta| {
                    std::future::ready(meta.last_modified.timestamp_millis() < cutoff)
                })
                .map_ok(|meta| meta.location)
                .try_collect()
                .await
                .map_err(|e| store_error(&staging, e))?;
            for path in stale {
                objects.delete(&path).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Milliseconds since the epoch, `age` ago.
fn cutoff_ms(age: Duration) -> i64 {
    now_ms().saturating_sub(age.as_millis() as u64) as i64
}
