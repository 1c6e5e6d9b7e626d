//! The embedded content store: raw bytes at `<root>/<bucket>/cas/<hash[0..2]>/<hash>`.
//!
//! A body streams into a temp file in `<bucket>/cas/` while it is hashed, and is renamed to its
//! name only once it is complete, verified and fsynced ([`durable::Staged`]). Storing and
//! removing one hash are serialised by a per-hash lock, so a removal never takes bytes an
//! upload of the same content has just confirmed as present. Content the Blob Service brought
//! in carries a `<hash>.service` marker until a shared flow stores the same bytes.
//!
//! **Integrity.** Every byte handed out was checked against its hash, without hashing 64 MiB
//! for a `HEAD` or a one-byte range: a file is hashed once per identity (size, modification
//! time, inode) and remembered as good ([`Verified`]); a full read of a file not known good is
//! checked as it streams, and fails at its end if the bytes do not match, so the client sees an
//! incomplete response rather than wrong bytes; a range of a file not known good hashes it
//! first. `HEAD` and `304` answers read nothing. A background scrub rereads files not known
//! good, so corruption at rest is found even in content nobody reads.

use std::fs;
use std::io::{self};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::names::{Bucket, ContentHash};
use crate::storage::durable::{self, Staged};
use crate::storage::locks::KeyedLocks;

use super::verify::{
    Identity, VERIFY_FIRST, Verified, Verifying, content_dirs, scrub, verified_file,
};
use super::{
    ByteStream, CONTENT_DIR, Content, ContentLock, ContentStore, Error, Incoming, MARKER_SUFFIX,
    Owner, Result, Scrubbed,
};

pub struct FsContent {
    root: PathBuf,
    /// One lock per hash in use, held while content is committed or deleted.
    locks: KeyedLocks<(Bucket, ContentHash), ()>,
    verified: Arc<Verified>,
    /// One lock per file being opened, so a file not known good is hashed once however many
    /// reads of it arrive together (not the content locks: their holders open files too).
    hashing: KeyedLocks<PathBuf, ()>,
}

impl FsContent {
    /// Opens the content stores under `root` and removes the temp files a crash left in them.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        for (_, dir) in content_dirs(&root)? {
            durable::remove_temp_files(&dir)?;
            for shard in durable::subdirs(&dir)? {
                durable::remove_temp_files(&shard)?;
            }
        }
        Ok(Self {
            root,
            locks: KeyedLocks::default(),
            verified: Arc::default(),
            hashing: KeyedLocks::default(),
        })
    }

    fn dir(&self, bucket: &Bucket) -> PathBuf {
        self.root.join(bucket.as_str()).join(CONTENT_DIR)
    }

    fn path(&self, bucket: &Bucket, hash: &ContentHash) -> PathBuf {
        self.dir(bucket).join(hash.shard()).join(hash.as_str())
    }
}

/// Content received into a staged file, waiting for its commit.
struct FsIncoming {
    staged: Staged,
    hash: ContentHash,
    size: u64,
    path: PathBuf,
    verified: Arc<Verified>,
}

#[async_trait::async_trait]
impl Incoming for FsIncoming {
    fn hash(&self) -> &ContentHash {
        &self.hash
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn commit(
        self: Box<Self>,
        held: ContentLock,
        owner: Owner,
    ) -> Result<(bool, ContentLock)> {
        let FsIncoming {
            staged,
            hash,
            path,
            verified,
            ..
        } = *self;
        let commit_path = path.clone();
        // The lock goes with the file work, so it is held until that is done.
        tokio::task::spawn_blocking(move || -> io::Result<(bool, ContentLock)> {
            let marker = service_marker(&commit_path);
            if verified_file(&commit_path, &hash, &verified)?.is_some() {
                // Present and intact: keep it (the staged copy is removed on drop). Stored
                // again by a shared flow, it is no longer the service's to remove.
                if owner == Owner::Shared {
                    durable::remove(&marker)?;
                }
                return Ok((false, held));
            }
            match owner {
                // Marked before it appears: a crash in between leaves a marker without content,
                // which the sweep clears, never service content without its marker.
                Owner::Service => durable::replace(&marker, b"")?,
                // Repairing a corrupt file: the bytes are the shared flow's from now on.
                Owner::Shared => drop(durable::remove(&marker)?),
            }
            staged.commit(&commit_path)?;
            Ok((true, held))
        })
        .await?
        .map_err(|source| io_error(&path, source))
    }
}

#[async_trait::async_trait]
impl ContentStore for FsContent {
    async fn receive(
        &self,
        bucket: &Bucket,
        body: ByteStream<'_>,
        limit: u64,
    ) -> Result<Box<dyn Incoming>> {
        let dir = self.dir(bucket);
        let staging = dir.clone();
        let mut staged = tokio::task::spawn_blocking(move || Staged::new_in(&staging))
            .await?
            .map_err(|source| io_error(&dir, source))?;
        let file = staged
            .file()
            .try_clone()
            .map_err(|source| io_error(&dir, source))?;
        let file = tokio::fs::File::from_std(file);
        let (hash, size) = super::hash_into(file, body, limit, &dir.display().to_string()).await?;
        let path = self.path(bucket, &hash);
        Ok(Box::new(FsIncoming {
            staged,
            hash,
            size,
            path,
            verified: self.verified.clone(),
        }))
    }

    async fn lock(&self, bucket: &Bucket, hash: &ContentHash) -> ContentLock {
        self.locks.lock(&(bucket.clone(), hash.clone())).await
    }

    async fn open(&self, bucket: &Bucket, hash: &ContentHash) -> Result<Option<Content>> {
        let path = self.path(bucket, hash);
        let read_path = path.clone();
        let hash = hash.clone();
        let verified = self.verified.clone();
        // One hash of a file at a time: requests that arrive meanwhile wait for its verdict
        // instead of reading the whole file again each.
        let hashing = self.hashing.lock(&path).await;
        let found = tokio::task::spawn_blocking(move || {
            let _hashing = hashing;
            verified_file(&read_path, &hash, &verified)
        })
        .await?
        .map_err(|source| io_error(&path, source))?;
        Ok(found.map(|(file, size)| Content {
            size,
            reader: Box::new(tokio::fs::File::from_std(file)),
        }))
    }

    async fn stream(&self, bucket: &Bucket, hash: &ContentHash) -> Result<Option<Content>> {
        let path = self.path(bucket, hash);
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io_error(&path, source)),
        };
        let meta = file
            .metadata()
            .await
            .map_err(|source| io_error(&path, source))?;
        let identity = Identity::of(&meta);
        if self.verified.is_corrupt(&path, identity) {
            return Ok(None);
        }
        if meta.len() <= VERIFY_FIRST {
            // Cheap to hash before the first byte, and then a mismatch is a plain 404.
            drop(file);
            return self.open(bucket, hash).await;
        }
        if self.verified.is_known(&path, identity) {
            return Ok(Some(Content {
                size: meta.len(),
                reader: Box::new(file),
            }));
        }
        Ok(Some(Content {
            size: meta.len(),
            reader: Box::new(Verifying::new(
                file,
                meta.len(),
                hash.clone(),
                path,
                identity,
                self.verified.clone(),
            )),
        }))
    }

    async fn size(&self, bucket: &Bucket, hash: &ContentHash) -> Result<Option<u64>> {
        let path = self.path(bucket, hash);
        match tokio::fs::metadata(&path).await {
            // Found corrupt: missing, as for every read.
            Ok(meta) if self.verified.is_corrupt(&path, Identity::of(&meta)) => Ok(None),
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io_error(&path, source)),
        }
    }

    async fn list(
        &self,
        bucket: &Bucket,
        after: Option<&ContentHash>,
        limit: usize,
    ) -> Result<Vec<(ContentHash, u64)>> {
        let dir = self.dir(bucket);
        let after = after.cloned();
        let listed = tokio::task::spawn_blocking(move || list_dir(&dir, after.as_ref(), limit))
            .await
            .map_err(|e| io_error(&self.dir(bucket), io::Error::other(e)))?;
        listed.map_err(|source| io_error(&self.dir(bucket), source))
    }

    async fn remove(&self, bucket: &Bucket, hash: &ContentHash, held: ContentLock) -> Result<bool> {
        let path = self.path(bucket, hash);
        let remove_path = path.clone();
        let verified = self.verified.clone();
        tokio::task::spawn_blocking(move || -> io::Result<bool> {
            let _held = held;
            // The content first: a crash in between leaves a marker without content, which
            // the sweep clears (and any later store fixes the marker up either way).
            verified.forget(&remove_path);
            let removed = durable::remove(&remove_path)?;
            durable::remove(&service_marker(&remove_path))?;
            Ok(removed)
        })
        .await?
        .map_err(|source| io_error(&path, source))
    }

    async fn claim(&self, bucket: &Bucket, hash: &ContentHash, held: ContentLock) -> Result<bool> {
        let path = self.path(bucket, hash);
        let claim_path = path.clone();
        tokio::task::spawn_blocking(move || -> io::Result<bool> {
            let _held = held;
            if !claim_path.exists() {
                return Ok(false);
            }
            durable::replace(&service_marker(&claim_path), b"")?;
            Ok(true)
        })
        .await?
        .map_err(|source| io_error(&path, source))
    }

    async fn release(
        &self,
        bucket: &Bucket,
        hash: &ContentHash,
        held: ContentLock,
    ) -> Result<Option<u64>> {
        let path = self.path(bucket, hash);
        let release_path = path.clone();
        let verified = self.verified.clone();
        tokio::task::spawn_blocking(move || -> io::Result<Option<u64>> {
            let _held = held;
            let marker = service_marker(&release_path);
            if !marker.exists() {
                return Ok(None);
            }
            let size = std::fs::metadata(&release_path).map(|m| m.len()).ok();
            // The content first: until it is gone, the marker says whose it is.
            verified.forget(&release_path);
            durable::remove(&release_path)?;
            durable::remove(&marker)?;
            Ok(Some(size.unwrap_or(0)))
        })
        .await?
        .map_err(|source| io_error(&path, source))
    }

    async fn scrub(&self, stop: CancellationToken) -> Result<Scrubbed> {
        let root = self.root.clone();
        let verified = self.verified.clone();
        tokio::task::spawn_blocking(move || scrub(&root, &verified, &stop))
            .await?
            .map_err(|source| io_error(&self.root, source))
    }

    async fn service_owned(&self) -> Result<Vec<(Bucket, ContentHash)>> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || -> io::Result<Vec<(Bucket, ContentHash)>> {
            let mut owned = Vec::new();
            for (bucket_dir, dir) in content_dirs(&root)? {
                let name = bucket_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned());
                let Some(bucket) = name.as_deref().and_then(Bucket::parse) else {
                    continue;
                };
                for shard in durable::subdirs(&dir)? {
                    for entry in std::fs::read_dir(&shard)? {
                        let name = entry?.file_name().to_string_lossy().into_owned();
                        let hash = name
                            .strip_suffix(MARKER_SUFFIX)
                            .and_then(ContentHash::parse);
                        if let Some(hash) = hash {
                            owned.push((bucket.clone(), hash));
                        }
                    }
                }
            }
            Ok(owned)
        })
        .await?
        .map_err(|source| io_error(&self.root, source))
    }
}

/// Up to `limit` contents of one bucket's content directory after `after`, in hash order: the
/// shards in order, each read whole (at most 1/256 of the bucket).
fn list_dir(
    dir: &Path,
    after: Option<&ContentHash>,
    limit: usize,
) -> io::Result<Vec<(ContentHash, u64)>> {
    let mut found = Vec::new();
    let mut shards = match durable::subdirs(dir) {
        Ok(shards) => shards,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    shards.sort();
    for shard in shards {
        let name = shard.file_name().map(|n| n.to_string_lossy().into_owned());
        if after.is_some_and(|a| name.as_deref().is_some_and(|n| n < a.shard())) {
            continue;
        }
        let mut here = Vec::new();
        for entry in fs::read_dir(&shard)? {
            let entry = entry?;
            let Some(hash) = entry.file_name().to_str().and_then(ContentHash::parse) else {
                continue; // markers, temp files
            };
            if after.is_none_or(|a| hash.as_str() > a.as_str()) {
                here.push((hash, entry.metadata()?.len()));
            }
        }
        here.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        found.extend(here.into_iter().take(limit - found.len()));
        if found.len() == limit {
            break;
        }
    }
    Ok(found)
}

/// The marker of a content file: `<hash>.service` beside it.
fn service_marker(content: &Path) -> PathBuf {
    let mut name = content.as_os_str().to_owned();
    name.push(MARKER_SUFFIX);
    PathBuf::from(name)
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

    /// The scrub hashes every file, finds content that no longer matches (from then on
    /// missing), and stops when asked.
    #[tokio::test]
    async fn the_scrub_finds_corrupt_content() {
        let root = tempfile::tempdir().unwrap();
        let store = FsContent::open(root.path()).unwrap();
        let bucket = Bucket::parse("b").unwrap();
        let mut paths = Vec::new();
        for bytes in [&b"first"[..], b"second"] {
            let hash = ContentHash::from_blake3(&blake3::hash(bytes));
            let path = store.path(&bucket, &hash);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
            paths.push(path);
        }
        let scrub = || store.scrub(CancellationToken::new());
        let clean = scrub().await.unwrap();
        assert_eq!((clean.checked, clean.corrupt), (2, 0));
        std::fs::write(&paths[1], b"secOnd").unwrap();
        let found = scrub().await.unwrap();
        assert_eq!((found.checked, found.corrupt), (2, 1));
        // Found corrupt: missing, even for a look at its size.
        let hash = ContentHash::from_blake3(&blake3::hash(b"second"));
        assert_eq!(store.size(&bucket, &hash).await.unwrap(), None);
        let stopped = CancellationToken::new();
        stopped.cancel();
        assert_eq!(store.scrub(stopped).await.unwrap().checked, 0);
        assert!(
            store
                .open(&bucket, &ContentHash::from_blake3(&blake3::hash(b"second")))
                .await
                .unwrap()
                .is_none()
        );
    }
}
