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

use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek};

use crate::names::{Bucket, ContentHash};

pub use fs::FsContent;

/// A body arriving in chunks (an HTTP request body, or one buffer).
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

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
    /// The storage failed; logged, and masked toward clients.
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

/// Content-addressed storage, shared by every connection.
#[async_trait::async_trait]
pub trait ContentStore: Send + Sync + 'static {
    /// Streams `body` into the bucket's store while hashing it, durably. With `expected`, a
    /// body of another hash is [`Error::Mismatch`]; a body over `limit` bytes is
    /// [`Error::TooLarge`] as soon as it passes the limit. Either way nothing is kept.
    async fn put(
        &self,
        bucket: &Bucket,
        expected: Option<&ContentHash>,
        body: ByteStream,
        limit: u64,
    ) -> Result<Stored>;

    /// The verified content, or `None` when it is missing or no longer matches its hash.
    async fn open(&self, bucket: &Bucket, hash: &ContentHash) -> Result<Option<Content>>;

    /// Removes the content; `false` when there was none.
    async fn delete(&self, bucket: &Bucket, hash: &ContentHash) -> Result<bool>;
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
    store
        .put(bucket, Some(expected), Box::pin(body), limit)
        .await
}

/// Reads verified content into memory, when it is at most `limit` bytes; `Ok(Err(size))` when
/// it is larger.
pub async fn read_small(
    store: &dyn ContentStore,
    bucket: &Bucket,
    hash: &ContentHash,
    limit: u64,
) -> Result<Option<Result<Vec<u8>, u64>>> {
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
