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

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::durable::{self, Staged};
use crate::locks::KeyedLocks;
use crate::names::{Bucket, ContentHash};

use super::{ByteStream, Content, ContentLock, ContentStore, Error, Incoming, Owner, Result};

/// Bytes gathered from the network before each write to the staged file.
const WRITE_BUFFER: usize = 256 * 1024;

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

/// Streams `body` into a file staged in `dir`; its hash and size.
async fn receive(
    staged: &mut Staged,
    dir: &Path,
    mut body: ByteStream<'_>,
    limit: u64,
) -> Result<(ContentHash, u64)> {
    let io_error = |source| io_error(dir, source);
    let file = tokio::fs::File::from_std(staged.file().try_clone().map_err(io_error)?);
    // Network chunks are small; each file write is a trip to the blocking pool.
    let mut file = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(Error::Body)?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(Error::TooLarge(limit));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(io_error)?;
    }
    // A tokio file finishes its last write in the background until flushed.
    file.flush().await.map_err(io_error)?;
    Ok((ContentHash::from_blake3(&hasher.finalize()), size))
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

    async fn commit(self: Box<Self>, _held: &ContentLock, owner: Owner) -> Result<bool> {
        let FsIncoming {
            staged, hash, path, ..
        } = *self;
        let commit_path = path.clone();
        tokio::task::spawn_blocking(move || -> io::Result<bool> {
            let marker = service_marker(&commit_path);
            // Present and intact: keep it (the staged copy is removed on drop). Present and
            // corrupt: the verified upload replaces it.
            let created = if verified_file(&commit_path, &hash)?.is_some() {
                false
            } else {
                staged.commit(&commit_path)?;
                true
            };
            match owner {
                Owner::Service if created => durable::replace(&marker, b"")?,
                // Stored again by a shared flow: no longer the service's to remove.
                Owner::Shared if !created => remove_durably(&marker).map(drop)?,
                _ => {}
            }
            Ok(created)
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
        let (hash, size) = receive(&mut staged, &dir, body, limit).await?;
        let path = self.path(bucket, &hash);
        Ok(Box::new(FsIncoming {
            staged,
            hash,
            size,
            path,
        }))
    }

    async fn lock(&self, bucket: &Bucket, hash: &ContentHash) -> ContentLock {
        self.locks
            .get(&(bucket.clone(), hash.clone()))
            .lock_owned()
            .await
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

    async fn remove(
        &self,
        bucket: &Bucket,
        hash: &ContentHash,
        _held: &ContentLock,
    ) -> Result<bool> {
        let path = self.path(bucket, hash);
        let remove_path = path.clone();
        tokio::task::spawn_blocking(move || -> io::Result<bool> {
            let removed = remove_durably(&remove_path)?;
            remove_durably(&service_marker(&remove_path))?;
            Ok(removed)
        })
        .await?
        .map_err(|source| io_error(&path, source))
    }

    async fn service_owned(
        &self,
        bucket: &Bucket,
        hash: &ContentHash,
        _held: &ContentLock,
    ) -> Result<bool> {
        let marker = service_marker(&self.path(bucket, hash));
        Ok(tokio::fs::try_exists(&marker)
            .await
            .map_err(|source| io_error(&marker, source))?)
    }
}

/// The file that marks content as the Blob Service's alone: `<hash>.service` beside it.
fn service_marker(content: &Path) -> PathBuf {
    content.with_extension("service")
}

/// Removes a file and syncs its directory; `false` when there was none.
fn remove_durably(path: &Path) -> io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        durable::sync_dir(dir)?;
    }
    Ok(true)
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
