//! Content-addressed blobs: immutable bytes per bucket, named by the BLAKE3 hash of their
//! bytes ([`ContentHash`]).
//!
//! Identity is the hash, so a store verifies every byte it accepts (a body whose hash is not
//! the name it was sent under is refused and nothing is kept) and every byte it hands out (a
//! stored file that no longer matches its name is treated as missing and logged). Bodies are
//! streamed: memory stays flat whatever their size.
//!
//! The trait is what an object-store backend implements as well as the file backend.

mod fs;
mod object;
mod verify;

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek, AsyncWrite, AsyncWriteExt};

use crate::names::{Bucket, ContentHash};
use crate::storage::quota::{Hold, Refusal};

pub use fs::FsContent;

pub use crate::storage::layout::{
    CONTENT_DIR, MARKER_SUFFIX, STAGING_DIR, content_path, staging_path,
};
pub use object::{CLAIM_GRACE, DOOM_LEASE, ObjectContent, marker_owns};

/// A body arriving in chunks (an HTTP request body, a multipart part, or one buffer).
pub type ByteStream<'a> = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'a>>;

/// What storing a body did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub hash: ContentHash,
    pub size: u64,
    /// `true` when this call stored it; `false` when the same bytes were already there.
    pub created: bool,
}

/// Verified bytes, ready to read (and seek, for ranges).
pub struct Content {
    pub size: u64,
    pub reader: Box<dyn Reader>,
}

/// What a scrub found: files checked (hashed now), and how many of them did not match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scrubbed {
    pub checked: usize,
    pub corrupt: usize,
}

/// A seekable async reader of stored bytes.
pub trait Reader: AsyncRead + AsyncSeek + Send + Unpin {}

impl<T: AsyncRead + AsyncSeek + Send + Unpin> Reader for T {}

/// Why storing or reading content failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body's hash is not the name it was sent under: nothing was stored.
    #[error("hash mismatch")]
    Mismatch,
    /// The body grew past the limit while arriving: nothing was stored.
    #[error("the body is over the limit of {0} bytes")]
    TooLarge(u64),
    /// The body could not be read from the client (it went away, or its transport failed).
    #[error("the body could not be received: {0}")]
    Body(#[source] io::Error),
    /// The body would pass the bucket's quota, or the server's free-space reserve, while it
    /// arrives (see [`crate::storage::quota`]): nothing was stored. HTTP 507, or the Socket.IO
    /// `{ error }`.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The storage failed; logged, and masked toward clients (500, or a Socket.IO
    /// `storage error`).
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// A storage task panicked or was cancelled; seen like [`Error::Io`].
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::storage::quota::AdmitError> for Error {
    fn from(error: crate::storage::quota::AdmitError) -> Self {
        match error {
            crate::storage::quota::AdmitError::Refused(refusal) => Error::Refused(refusal),
            crate::storage::quota::AdmitError::Measure(cause) => Error::Io {
                path: "the bucket's listing".to_owned(),
                source: io::Error::other(cause),
            },
        }
    }
}

/// Holds one content's lock: while it is held, nobody else commits or removes that content.
/// The store's operations take it by value and keep it until their file work is done, so a
/// caller that goes away mid-way (a client disconnecting) cannot release it early.
pub type ContentLock = tokio::sync::OwnedMutexGuard<()>;

/// Who brings content into the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The content-addressed flows (HTTP `/blobs`, Socket.IO): content stays until deleted.
    Shared,
    /// The Blob Service: content it brings in is marked as its own, and its sweep removes it
    /// once no record refers to it, unless a shared flow stores the same bytes since.
    Service,
}

/// A body received and hashed but not yet visible: dropped, it leaves nothing behind.
#[async_trait::async_trait]
pub trait Incoming: Send {
    fn hash(&self) -> &ContentHash;
    fn size(&self) -> u64;
    /// Makes the content visible under its name, durably, under its lock `held` (handed
    /// back); `false` when intact content was already there (a corrupt file is replaced).
    async fn commit(
        self: Box<Self>,
        held: ContentLock,
        owner: Owner,
    ) -> Result<(bool, ContentLock)>;
}

/// Content-addressed storage, shared by every connection.
#[async_trait::async_trait]
pub trait ContentStore: Send + Sync + 'static {
    /// Streams `body` into staging while hashing it; a body over `limit` bytes is
    /// [`Error::TooLarge`] as soon as it passes the limit.
    async fn receive(
        &self,
        bucket: &Bucket,
        body: ByteStream<'_>,
        limit: u64,
    ) -> Result<Box<dyn Incoming>>;

    /// Waits for the lock of one content.
    async fn lock(&self, bucket: &Bucket, hash: &ContentHash) -> ContentLock;

    /// The verified content, or `None` when it is missing or no longer matches its hash.
    async fn open(&self, bucket: &Bucket, hash: &ContentHash) -> Result<Option<Content>>;

    /// The content for one read from start to end: its bytes are checked against the hash
    /// as they are read where the store can, and the read fails at its end if they do not
    /// match. By default, [`ContentStore::open`] (verified before the first byte).
    async fn stream(&self, bucket: &Bucket, hash: &ContentHash) -> Result<Option<Content>> {
        self.open(bucket, hash).await
    }

    /// Reads all stored content back and checks it against its hash, until `stop`; corrupt
    /// content is logged and from then on treated as missing. Nothing by default: the object
    /// store verifies every read in full.
    async fn scrub(&self, stop: tokio_util::sync::CancellationToken) -> Result<Scrubbed> {
        let _ = stop;
        Ok(Scrubbed::default())
    }

    /// The size of the stored content, unverified (cheap: no read); `None` when missing.
    async fn size(&self, bucket: &Bucket, hash: &ContentHash) -> Result<Option<u64>>;

    /// The bucket's content in hash order, after `after`, at most `limit` of them, with
    /// their sizes (from the listing: nothing is read).
    async fn list(
        &self,
        bucket: &Bucket,
        after: Option<&ContentHash>,
        limit: usize,
    ) -> Result<Vec<(ContentHash, u64)>>;

    /// Removes the content (`held` is its lock); `false` when there was none.
    async fn remove(&self, bucket: &Bucket, hash: &ContentHash, held: ContentLock) -> Result<bool>;

    /// Marks present content as the Blob Service's (`held` is its lock); `false` when there
    /// is none.
    async fn claim(&self, bucket: &Bucket, hash: &ContentHash, held: ContentLock) -> Result<bool>;

    /// Removes the content if it is the Blob Service's (`held` is its lock); its size when it
    /// was removed.
    async fn release(
        &self,
        bucket: &Bucket,
        hash: &ContentHash,
        held: ContentLock,
    ) -> Result<Option<u64>>;

    /// Every content the Blob Service owns, for its sweep.
    async fn service_owned(&self) -> Result<Vec<(Bucket, ContentHash)>>;

    /// Takes in content a client sent to a direct upload URL (`held` is its lock); `false`
    /// when no intact content of this hash, of at most `limit` bytes, arrived. This server's
    /// own URLs store through [`put`], which verifies and limits, so by default there is only
    /// the stored content to check.
    async fn adopt(
        &self,
        bucket: &Bucket,
        hash: &ContentHash,
        limit: u64,
        held: ContentLock,
    ) -> Result<bool> {
        let _ = (held, limit);
        Ok(self.open(bucket, hash).await?.is_some())
    }

    /// Removes direct uploads older than `age` that nobody confirmed; how many. None by
    /// default: this server's own URLs stage nothing.
    async fn sweep_staging(&self, _age: std::time::Duration) -> Result<usize> {
        Ok(0)
    }
}

/// `blob-uploaded`: takes in what arrived at the direct upload URL of `hash`, verified.
pub async fn adopt(
    store: &dyn ContentStore,
    bucket: &Bucket,
    hash: &ContentHash,
    limit: u64,
) -> Result<bool> {
    let held = store.lock(bucket, hash).await;
    store.adopt(bucket, hash, limit, held).await
}

/// Bytes gathered from the network before each write to a staged file.
const WRITE_BUFFER: usize = 256 * 1024;

/// Writes `body` to `file` while hashing it; its hash and size. A body over `limit` bytes is
/// [`Error::TooLarge`] as soon as it passes the limit. `file` (named `what` in errors) is
/// flushed before this returns.
async fn hash_into(
    file: impl AsyncWrite + Unpin,
    mut body: ByteStream<'_>,
    limit: u64,
    what: &str,
) -> Result<(ContentHash, u64)> {
    let io_error = |source| Error::Io {
        path: what.to_owned(),
        source,
    };
    // Network chunks are small; each file write is a trip to the blocking pool.
    let mut file = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| match Refusal::carried_by(&e) {
            Some(refusal) => Error::Refused(refusal),
            None => Error::Body(e),
        })?;
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

/// Streams `body` into the bucket's store for the content-addressed flows. With `expected`, a
/// body of another hash is [`Error::Mismatch`] and nothing is kept.
pub async fn put(
    store: &dyn ContentStore,
    bucket: &Bucket,
    expected: Option<&ContentHash>,
    body: ByteStream<'_>,
    limit: u64,
) -> Result<Stored> {
    let incoming = store.receive(bucket, body, limit).await?;
    if expected.is_some_and(|e| e != incoming.hash()) {
        return Err(Error::Mismatch);
    }
    let (hash, size) = (incoming.hash().clone(), incoming.size());
    let held = store.lock(bucket, &hash).await;
    let (created, _held) = incoming.commit(held, Owner::Shared).await?;
    Ok(Stored {
        hash,
        size,
        created,
    })
}

/// `body`, each chunk reserved in `hold` as it arrives: the first chunk past the quota (or
/// the reserve) ends the body with the [`Refusal`], which the store reports as
/// [`Error::Refused`].
pub fn metered<'a>(body: ByteStream<'a>, hold: &Arc<Hold>) -> ByteStream<'a> {
    let hold = hold.clone();
    Box::pin(body.map(move |chunk| {
        let chunk = chunk?;
        hold.grow(chunk.len() as u64).map_err(io::Error::other)?;
        Ok(chunk)
    }))
}

/// Stores bytes already in memory (a Socket.IO upload).
pub async fn put_bytes(
    store: &dyn ContentStore,
    bucket: &Bucket,
    expected: &ContentHash,
    bytes: Bytes,
    limit: u64,
) -> Result<Stored> {
    let body = futures_util::stream::iter([Ok(bytes)]);
    put(store, bucket, Some(expected), Box::pin(body), limit).await
}
/// Reads verified content into memory, when it is at most `limit` bytes; `Ok(Err(size))` when
/// it is larger (known from its size alone: nothing is read).
pub async fn read_small(
    store: &dyn ContentStore,
    bucket: &Bucket,
    hash: &ContentHash,
    limit: u64,
) -> Result<Option<Result<Vec<u8>, u64>>> {
    match store.size(bucket, hash).await? {
        None => return Ok(None),
        Some(size) if size > limit => return Ok(Some(Err(size))),
        Some(_) => {}
    }
    let Some(mut content) = store.open(bucket, hash).await? else {
        return Ok(None);
    };
    if content.size > limit {
        return Ok(Some(Err(content.size)));
    }
    let mut bytes = Vec::with_capacity(content.size as usize);
    content
        .reader
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| Error::Io {
            path: hash.to_string(),
            source,
        })?;
    Ok(Some(Ok(bytes)))
}
