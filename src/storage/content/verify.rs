//! Every byte of stored content handed out is checked against its hash: a file is hashed once
//! per identity (size, modification time, inode) and remembered ([`Verified`]); a full read of
//! a file not known good is hashed as it streams ([`Verifying`]), holding back its last bytes
//! until the hash matched; the scrub hashes every file again.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{self, Seek};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::names::ContentHash;
use crate::storage::durable;

use super::{CONTENT_DIR, Scrubbed};

/// Content up to this size is hashed before a full read starts rather than as it streams.
pub(super) const VERIFY_FIRST: u64 = 1024 * 1024;

/// What hashing found of files, by path, with the identity they had then: good, or corrupt
/// (then treated as missing, `HEAD` included). A file replaced or changed in place gets
/// another identity and is hashed again; the scrub hashes every file again, which also catches
/// a change that kept size, modification time and inode.
#[derive(Default)]
pub(super) struct Verified {
    /// A std mutex: held for a lookup or an insert. Bounded by [`MAX_VERIFIED`]: when full it
    /// is emptied, which costs a rehash of each file on its next read, never a wrong answer.
    known: Mutex<HashMap<PathBuf, (Identity, bool)>>,
}

pub(super) const MAX_VERIFIED: usize = 100_000;

/// What tells one version of a file from another without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Identity {
    len: u64,
    modified: Option<SystemTime>,
    dev: u64,
    ino: u64,
}

impl Identity {
    pub(super) fn of(meta: &Metadata) -> Self {
        Identity {
            len: meta.len(),
            modified: meta.modified().ok(),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

impl Verified {
    /// `Some(true)`: this version of the file was found good; `Some(false)`: corrupt.
    pub(super) fn verdict(&self, path: &Path, identity: Identity) -> Option<bool> {
        let known = self.known.lock().expect("verified lock poisoned");
        known
            .get(path)
            .filter(|(seen, _)| *seen == identity)
            .map(|(_, good)| *good)
    }

    pub(super) fn is_known(&self, path: &Path, identity: Identity) -> bool {
        self.verdict(path, identity) == Some(true)
    }

    pub(super) fn is_corrupt(&self, path: &Path, identity: Identity) -> bool {
        self.verdict(path, identity) == Some(false)
    }

    pub(super) fn remember(&self, path: &Path, identity: Identity, good: bool) {
        let mut known = self.known.lock().expect("verified lock poisoned");
        if known.len() >= MAX_VERIFIED {
            known.clear();
        }
        known.insert(path.to_owned(), (identity, good));
    }

    pub(super) fn forget(&self, path: &Path) {
        self.known
            .lock()
            .expect("verified lock poisoned")
            .remove(path);
    }
}

/// Every bucket directory under `root` that has content, with its content directory.
pub(super) fn content_dirs(root: &Path) -> io::Result<Vec<(PathBuf, PathBuf)>> {
    let mut dirs = Vec::new();
    for bucket in durable::subdirs(root)? {
        let dir = bucket.join(CONTENT_DIR);
        if dir.is_dir() {
            dirs.push((bucket, dir));
        }
    }
    Ok(dirs)
}

/// Hashes every content file under `root` again (see [`ContentStore::scrub`](super::ContentStore::scrub)), until `stop`.
pub(super) fn scrub(
    root: &Path,
    verified: &Verified,
    stop: &CancellationToken,
) -> io::Result<Scrubbed> {
    let mut scrubbed = Scrubbed::default();
    for (_, dir) in content_dirs(root)? {
        for shard in durable::subdirs(&dir)? {
            for entry in std::fs::read_dir(&shard)? {
                let path = entry?.path();
                let name = path.file_name().and_then(|n| n.to_str());
                let Some(hash) = name.and_then(ContentHash::parse) else {
                    continue;
                };
                if stop.is_cancelled() {
                    return Ok(scrubbed);
                }
                match hashed_file(&path, &hash, verified, true) {
                    Ok(Some(_)) => scrubbed.checked += 1,
                    Ok(None) if path.exists() => {
                        scrubbed.checked += 1;
                        scrubbed.corrupt += 1;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(path = %path.display(), "scrub cannot read: {e}"),
                }
            }
        }
    }
    Ok(scrubbed)
}

/// Opens `path` and checks that its bytes hash to `hash`; the file, rewound, and its size.
/// A missing file is `None`; so is a file that does not match, which is logged.
pub(super) fn verified_file(
    path: &Path,
    hash: &ContentHash,
    verified: &Verified,
) -> io::Result<Option<(File, u64)>> {
    hashed_file(path, hash, verified, false)
}

/// [`verified_file`], hashing even a file known good when `again` (the scrub).
pub(super) fn hashed_file(
    path: &Path,
    hash: &ContentHash,
    verified: &Verified,
    again: bool,
) -> io::Result<Option<(File, u64)>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let identity = Identity::of(&meta);
    match verified.verdict(path, identity) {
        Some(true) if !again => return Ok(Some((file, meta.len()))),
        Some(false) if !again => return Ok(None),
        _ => {}
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(&mut file)?;
    let actual = ContentHash::from_blake3(&hasher.finalize());
    if actual != *hash {
        verified.remember(path, identity, false);
        tracing::error!(path = %path.display(), %actual, "stored content does not match its hash: treated as missing");
        return Ok(None);
    }
    verified.remember(path, identity, true);
    let size = file.stream_position()?;
    file.rewind()?;
    Ok(Some((file, size)))
}

/// A full read of a file not known good: hashes what it reads and, with the last bytes, fails
/// the read if they do not match (and remembers the file as good if they do). The last bytes
/// are held back until the check passed, so a client never receives the whole of wrong
/// content. A seek ends the check: only a read from start to end proves anything.
pub(super) struct Verifying {
    file: tokio::fs::File,
    /// `None` once seeked or finished.
    hasher: Option<blake3::Hasher>,
    /// Bytes not read yet.
    remaining: u64,
    expected: ContentHash,
    path: PathBuf,
    identity: Identity,
    verified: Arc<Verified>,
}

impl Verifying {
    /// A reader of `file` (of `size` bytes, with `identity`, at `path`) that fails at its end
    /// unless its bytes hash to `expected`, and records what it found in `verified`.
    pub(super) fn new(
        file: tokio::fs::File,
        size: u64,
        expected: ContentHash,
        path: PathBuf,
        identity: Identity,
        verified: Arc<Verified>,
    ) -> Self {
        Self {
            file,
            hasher: Some(blake3::Hasher::new()),
            remaining: size,
            expected,
            path,
            identity,
            verified,
        }
    }
}

impl AsyncRead for Verifying {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.file).poll_read(cx, buf);
        if !matches!(polled, Poll::Ready(Ok(()))) {
            return polled;
        }
        let read = &buf.filled()[before..];
        let Some(hasher) = &mut this.hasher else {
            return polled;
        };
        hasher.update(read);
        this.remaining = this.remaining.saturating_sub(read.len() as u64);
        if this.remaining > 0 && !read.is_empty() {
            return polled;
        }
        let actual = ContentHash::from_blake3(&hasher.finalize());
        this.hasher = None;
        if actual == this.expected {
            this.verified.remember(&this.path, this.identity, true);
            return polled;
        }
        this.verified.remember(&this.path, this.identity, false);
        buf.set_filled(before);
        tracing::error!(path = %this.path.display(), %actual, "stored content does not match its hash: read aborted");
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "stored content does not match its hash",
        )))
    }
}

impl AsyncSeek for Verifying {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        this.hasher = None;
        Pin::new(&mut this.file).start_seek(position)
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.get_mut().file).poll_complete(cx)
    }
}
