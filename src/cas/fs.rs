//! The embedded content store: raw bytes at `<root>/<bucket>/cas/<hash[0..2]>/<hash>`.
//!
//! A body streams into a temp file in `<bucket>/cas/` while it is hashed, and is renamed to its
//! name only once it is complete, verified and fsynced ([`durable::Staged`]). Storing and
//! removing one hash are serialised by a per-hash lock, so a removal never takes bytes an
//! upload of the same content has just confirmed as present. Content the Blob Service brought
//! in carries a `<hash>.service` marker until a shared flow stores the same bytes.

use std::fs::File;
use std::io::{self, Seek};
use std::path::{Path, PathBuf};

use crate::durable::{self, Staged};
use crate::locks::KeyedLocks;
use crate::names::{Bucket, ContentHash};

use super::{ByteStream, Content, ContentLock, ContentStore, Error, Incoming, Owner, Result};

/// Directory of a bucket's content store, beside its versioned blobs' shard directories.
const CAS_DIR: &str = "cas";

pub struct FsContent {
    root: PathBuf,
    /// One lock per hash in use, held while content is committed or deleted.
    locks: KeyedLocks<(Bucket, ContentHash), ()>,
}

impl FsContent {
    /// Opens the content stores under `root` and removes the temp files a crash left in them.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        for bucket in durable::subdirs(&root)? {
            let cas = bucket.join(CAS_DIR);
            if !cas.is_dir() {
                continue;
            }
            durable::remove_temp_files(&cas)?;
            for shard in durable::subdirs(&cas)? {
                durable::remove_temp_files(&shard)?;
            }
        }
        Ok(Self {
            root,
            locks: KeyedLocks::default(),
        })
    }

    fn dir(&self, bucket: &Bucket) -> PathBuf {
        self.root.join(bucket.as_str()).join(CAS_DIR)
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
            staged, hash, path, ..
        } = *self;
        let commit_path = path.clone();
        // The lock goes with the file work, so it is held until that is done.
        tokio::task::spawn_blocking(move || -> io::Result<(bool, ContentLock)> {
            let marker = service_marker(&commit_path);
            if verified_file(&commit_path, &hash)?.is_some() {
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
        }))
    }

    async fn lock(&self, bucket: &Bucket, hash: &ContentHash) -> ContentLock {
        self.locks.lock(&(bucket.clone(), hash.clone())).await
    }

    async fn open(&self, bucket: &Bucket, hash: &ContentHash) -> Result<Option<Content>> {
        let path = self.path(bucket, hash);
        let read_path = path.clone();
        let hash = hash.clone();
        let found = tokio::task::spawn_blocking(move || verified_file(&read_path, &hash))
            .await?
            .map_err(|source| io_error(&path, source))?;
        Ok(found.map(|(file, size)| Content {
            size,
            reader: Box::new(tokio::fs::File::from_std(file)),
        }))
    }

    async fn size(&self, bucket: &Bucket, hash: &ContentHash) -> Result<Option<u64>> {
        let path = self.path(bucket, hash);
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io_error(&path, source)),
        }
    }

    async fn remove(&self, bucket: &Bucket, hash: &ContentHash, held: ContentLock) -> Result<bool> {
        let path = self.path(bucket, hash);
        let remove_path = path.clone();
        tokio::task::spawn_blocking(move || -> io::Result<bool> {
            let _held = held;
            // The content first: a crash in between leaves a marker without content, which
            // the sweep clears (and any later store fixes the marker up either way).
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
        tokio::task::spawn_blocking(move || -> io::Result<Option<u64>> {
            let _held = held;
            let marker = service_marker(&release_path);
            if !marker.exists() {
                return Ok(None);
            }
            let size = std::fs::metadata(&release_path).map(|m| m.len()).ok();
            // The content first: until it is gone, the marker says whose it is.
            durable::remove(&release_path)?;
            durable::remove(&marker)?;
            Ok(Some(size.unwrap_or(0)))
        })
        .await?
        .map_err(|source| io_error(&path, source))
    }

    async fn service_owned(&self) -> Result<Vec<(Bucket, ContentHash)>> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || -> io::Result<Vec<(Bucket, ContentHash)>> {
            let mut owned = Vec::new();
            for bucket_dir in durable::subdirs(&root)? {
                let cas = bucket_dir.join(CAS_DIR);
                let name = bucket_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned());
                let Some(bucket) = name.as_deref().and_then(Bucket::parse) else {
                    continue;
                };
                if !cas.is_dir() {
                    continue;
                }
                for shard in durable::subdirs(&cas)? {
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

/// Suffix of the file that marks content as the Blob Service's alone.
const MARKER_SUFFIX: &str = ".service";

/// The marker of a content file: `<hash>.service` beside it.
fn service_marker(content: &Path) -> PathBuf {
    let mut name = content.as_os_str().to_owned();
    name.push(MARKER_SUFFIX);
    PathBuf::from(name)
}

/// Opens `path` and checks that its bytes hash to `hash`; the file, rewound, and its size.
/// A missing file is `None`; so is a file that does not match, which is logged.
fn verified_file(path: &Path, hash: &ContentHash) -> io::Result<Option<(File, u64)>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(&mut file)?;
    let actual = ContentHash::from_blake3(&hasher.finalize());
    if actual != *hash {
        tracing::error!(path = %path.display(), %actual, "stored content does not match its hash: treated as missing");
        return Ok(None);
    }
    let size = file.stream_position()?;
    file.rewind()?;
    Ok(Some((file, size)))
}

fn io_error(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}
