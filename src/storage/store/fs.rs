//! The embedded store: one JSON file per blob under the storage root, in the original's layout
//! `<root>/<bucket>/<ref[0..2]>/<ref>.json`.
//!
//! A write runs under a per-blob async lock, so compare-and-swap on one blob is serial while
//! writes to different blobs overlap. It is made durable by the [`Journal`] (one sync covers
//! every write waiting for it), then its file is replaced without a sync of its own. A
//! checkpoint ([`FsStore::checkpoint`]) makes every file written so far durable with one
//! `syncfs` and drops the journal segments that held them; at start-up what the journal still
//! holds is written to the files again. After a clean shutdown or a checkpoint the files are the
//! complete truth, and the journal is empty.
//!
//! Small blobs are kept in memory after first use; the cache of a blob is only updated once
//! its write is durable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures_util::StreamExt;
use std::sync::{Arc, Mutex};

use crate::names::{Bucket, Ref};
use crate::storage::durable;
use crate::storage::journal::Journal;
use crate::storage::locks::KeyedLocks;

use super::format::{self, Summary};
use super::{Blob, Error, Listed, Result, SetOutcome, SetRequest, Store, apply};

/// Blobs whose `data` is longer than this many characters are not kept in memory, which bounds
/// the cache to about 4,096 idle slots (see [`KeyedLocks`]) of 16 KiB: 64 MiB.
const CACHED_DATA_LIMIT: usize = 16 * 1024;

/// Bytes of blobs whose files are not written yet that a store keeps by default (see
/// `UNWRITTEN_BYTES`).
pub const DEFAULT_UNWRITTEN_BYTES: u64 = 64 * 1024 * 1024;

/// Bytes appended to the journal since the last checkpoint began past which a checkpoint is
/// wanted before its time: a few blobs written over and over keep little unwritten but grow
/// the journal, which a checkpoint trims. Past twice this, writers wait for the next
/// checkpoint to start a new segment: with the segments the running checkpoint still holds,
/// the journal stays under about four times this on disk, however slow a checkpoint is.
const JOURNAL_CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;

/// Blob files a checkpoint writes at once.
const CHECKPOINT_WRITERS: usize = 8;

/// Suffix of the backup files the original wrote before replacing a blob file.
const BACKUP_SUFFIX: &str = ".backup";

/// Infix of the name a blob file is moved aside to, `<ref>.json.case-conflict-<n>`, when the
/// original left another spelling of its ref with a newer version: nothing reads it, and
/// `blobs check` reports it for a person to compare and remove.
pub const CASE_CONFLICT: &str = ".case-conflict-";

/// The journal's directory under the storage root (a dot: never a bucket name, and the
/// original never looks there).
pub const JOURNAL_DIR: &str = ".journal";

/// The lock file a server holds on its storage root while it runs: one writer per journal.
/// Admin commands that must not run beside a server take it too.
pub const LOCK_FILE: &str = ".lock";

/// What is known in memory about one blob.
#[derive(Default)]
enum Cached {
    /// Not read yet, too large to keep, or in doubt after a failed write: read the file.
    #[default]
    Unknown,
    Missing,
    Present(Arc<Blob>),
}

type Key = (Bucket, Ref);

pub struct FsStore {
    root: PathBuf,
    /// One lock per recently used blob, held across the file read, the journal append and the
    /// file write: that is what makes compare-and-swap on one blob atomic.
    slots: KeyedLocks<Key, Cached>,
    journal: Journal,
    /// Held shared by each write from its journal append until its file is written, and alone
    /// by a checkpoint while it starts a new journal segment: so every record in the older
    /// segments has its file written (or is in `unwritten`) when the checkpoint syncs.
    appending: tokio::sync::RwLock<()>,
    /// Committed blobs whose file is not written yet: every write since the checkpoint that
    /// last wrote its blob (and any whose file failed, a full disk). Readers get them from
    /// here; the journal holds them durably; a checkpoint writes each file once, with its
    /// latest version.
    unwritten: Mutex<HashMap<Key, Arc<Blob>>>,
    /// The bytes of `unwritten`, as files ([`Blob::stored_len`]).
    unwritten_bytes: AtomicU64,
    /// Past half of this many bytes unwritten a checkpoint is wanted; past all of it writers
    /// wait for one. 0: each write replaces its file before it is acknowledged.
    unwritten_limit: u64,
    /// Bytes appended to the journal's current segment.
    journaled_bytes: AtomicU64,
    /// Past this many `journaled_bytes` a checkpoint is wanted; past twice, writers wait
    /// ([`JOURNAL_CHECKPOINT_BYTES`]).
    journal_checkpoint_bytes: u64,
    /// Woken when a checkpoint is wanted early.
    pressure: tokio::sync::Notify,
    /// Whether the running or last checkpoint failed: writers at a bound then get an error
    /// instead of waiting for a checkpoint that cannot relieve them.
    files_failing: AtomicBool,
    /// Woken when a checkpoint has started a new journal segment, written files, or failed.
    relieved: tokio::sync::Notify,
    /// Whether a write was committed since the last checkpoint began: an idle store does not
    /// checkpoint.
    written: AtomicBool,
}

/// Takes the lock on the storage root ([`LOCK_FILE`], created with the root if missing) that
/// one server, or one admin command, holds while it uses the store; `None` while another
/// process holds it. It is released when the file returned is dropped, or the process ends.
pub fn lock(root: &Path) -> io::Result<Option<fs::File>> {
    fs::create_dir_all(root)?;
    durable::try_lock_exclusive(&root.join(LOCK_FILE))
}

impl FsStore {
    /// Opens (creating) the storage root, then repairs what a crash may have left: temp files
    /// are removed, the original's `.backup` files are resolved (see `recover_backup`), the
    /// writes the journal holds are written to their files again, and then blob files the
    /// original stored under upper- or mixed-case refs are moved to their lower-case names
    /// (see `resolve_case`).
    ///
    /// The case check runs at every start rather than once behind a marker: it costs only the
    /// walk the start-up repair makes anyway (one listing of each shard directory, no file
    /// read), and a start after someone copied more of the original's files in still finds
    /// them.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        Self::with_unwritten_limit(root, DEFAULT_UNWRITTEN_BYTES)
    }

    /// [`FsStore::open`], keeping at most `limit` bytes of blobs whose files are not written.
    pub fn with_unwritten_limit(root: impl Into<PathBuf>, limit: u64) -> io::Result<Self> {
        Self::with_bounds(root, limit, JOURNAL_CHECKPOINT_BYTES)
    }

    /// [`FsStore::with_unwritten_limit`], wanting a checkpoint once `journal` bytes are
    /// appended since the last (and waiting at twice that).
    fn with_bounds(root: impl Into<PathBuf>, limit: u64, journal: u64) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        let misspelled = sweep(&root)?;
        let journal_checkpoint_bytes = journal;
        let (journal, replay) = Journal::open(&root.join(JOURNAL_DIR))?;
        let store = Self {
            root,
            slots: KeyedLocks::default(),
            journal,
            appending: tokio::sync::RwLock::new(()),
            unwritten: Mutex::new(HashMap::new()),
            unwritten_bytes: AtomicU64::new(0),
            unwritten_limit: limit,
            journaled_bytes: AtomicU64::new(0),
            journal_checkpoint_bytes,
            files_failing: AtomicBool::new(false),
            pressure: tokio::sync::Notify::new(),
            relieved: tokio::sync::Notify::new(),
            written: AtomicBool::new(false),
        };
        // The last record of each blob is its latest committed write.
        let mut latest = HashMap::new();
        for record in &replay.records {
            let (key, file) = parse_record(record)?;
            latest.insert(key, file);
        }
        if !latest.is_empty() {
            tracing::info!(
                records = replay.records.len(),
                blobs = latest.len(),
                torn_bytes = replay.torn_bytes,
                "replaying the journal"
            );
            for ((bucket, r), file) in &latest {
                durable::replace_unsynced(&store.path(bucket, r), file)?;
            }
            durable::sync_fs(&store.root)?;
        }
        store.journal.remove_before(replay.next)?;
        misspelled.resolve()?;
        Ok(store)
    }

    fn path(&self, bucket: &Bucket, r: &Ref) -> PathBuf {
        self.root
            .join(bucket.as_str())
            .join(r.shard())
            .join(format!("{r}.json"))
    }

    fn unwritten(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Blob>>> {
        self.unwritten.lock().expect("unwritten blobs poisoned")
    }

    /// The current blob, from memory or from its file.
    async fn load(&self, key: &Key, cached: &mut Cached) -> Result<Option<Arc<Blob>>> {
        match cached {
            Cached::Present(blob) => return Ok(Some(blob.clone())),
            Cached::Missing => return Ok(None),
            Cached::Unknown => {}
        }
        if let Some(blob) = self.unwritten().get(key) {
            return Ok(Some(blob.clone()));
        }
        let path = self.path(&key.0, &key.1);
        let blob = tokio::task::spawn_blocking(move || read_blob(&path)).await??;
        let blob = blob.map(Arc::new);
        *cached = cache_entry(blob.as_ref());
        Ok(blob)
    }

    /// Keeps a committed blob in `unwritten` until a checkpoint writes its file. Called under
    /// the blob's lock.
    fn keep_unwritten(&self, key: &Key, blob: &Arc<Blob>) {
        let mut unwritten = self.unwritten();
        let replaced = unwritten.insert(key.clone(), blob.clone());
        let bytes = self.unwritten_bytes.load(Ordering::Acquire) + blob.stored_len()
            - replaced.map_or(0, |b| b.stored_len());
        self.unwritten_bytes.store(bytes, Ordering::Release);
        drop(unwritten);
        crate::metrics::unwritten(bytes);
        if self.unwritten_limit > 0 && bytes >= self.unwritten_limit / 2 {
            self.pressure.notify_one();
        }
    }

    /// Forgets a blob whose file now holds it. Called under the blob's lock.
    fn forget_unwritten(&self, key: &Key) {
        let mut unwritten = self.unwritten();
        if let Some(blob) = unwritten.remove(key) {
            let before = self
                .unwritten_bytes
                .fetch_sub(blob.stored_len(), Ordering::AcqRel);
            crate::metrics::unwritten(before - blob.stored_len());
        }
    }

    /// Whether a writer must wait for a checkpoint: the blobs not written yet reach their
    /// limit, or the journal since the last checkpoint began reaches twice the size that wants
    /// one.
    fn full(&self) -> bool {
        (self.unwritten_limit > 0
            && self.unwritten_bytes.load(Ordering::Acquire) >= self.unwritten_limit)
            || self.journaled_bytes.load(Ordering::Acquire) >= 2 * self.journal_checkpoint_bytes
    }

    /// Waits while the store is [`full`](Self::full), asking for a checkpoint: memory and the
    /// journal never grow past their bounds, and a writer waits instead of failing, unless the
    /// checkpoint it waited for failed (a full disk, no inodes left): then it is refused as any
    /// write the disk cannot take, instead of waiting for good.
    async fn room(&self) -> Result<()> {
        let mut waited = false;
        loop {
            let relieved = self.relieved.notified();
            tokio::pin!(relieved);
            relieved.as_mut().enable();
            if !self.full() {
                return Ok(());
            }
            if waited && self.files_failing.load(Ordering::Acquire) {
                return Err(io_error(
                    &self.root,
                    io::Error::other("a checkpoint failed and the store is at its bounds"),
                ));
            }
            self.pressure.notify_one();
            relieved.await;
            waited = true;
        }
    }

    /// Writes the file of a committed blob (no sync: the journal holds it); the blob stays in
    /// `unwritten` when that fails. Called under the blob's lock.
    async fn write_file(&self, key: &Key, blob: &Arc<Blob>, file: Vec<u8>) -> Cached {
        let path = self.path(&key.0, &key.1);
        let written = tokio::task::spawn_blocking(move || {
            durable::replace_unsynced(&path, &file).map_err(|e| (path, e))
        })
        .await;
        match written {
            Ok(Ok(())) => {
                self.forget_unwritten(key);
                cache_entry(Some(blob))
            }
            failed => {
                match failed {
                    Ok(Err((path, e))) => tracing::error!(
                        path = %path.display(),
                        "committed write kept in the journal and memory, its file failed: {e}"
                    ),
                    _ => tracing::error!("committed write kept in the journal and memory"),
                }
                Cached::Unknown
            }
        }
    }

    /// Makes every committed write durable in its file, then drops the journal segments that
    /// held them: starts a new segment (waiting for the writes in flight to write their files),
    /// writes the files that failed before, syncs the file system once, and removes the older
    /// segments. Writes go on into the new segment meanwhile.
    pub async fn checkpoint(&self) -> Result<()> {
        if !self.written.swap(false, Ordering::AcqRel) && self.unwritten().is_empty() {
            return Ok(());
        }
        let began = std::time::Instant::now();
        let done = self.sync_files().await;
        crate::metrics::checkpoint(began.elapsed());
        if done.is_err() {
            // What this checkpoint should have made durable waits for the next one; writers
            // waiting for room hear that it made none.
            self.written.store(true, Ordering::Release);
            self.files_failing.store(true, Ordering::Release);
            self.relieved.notify_waiters();
        }
        done
    }

    async fn sync_files(&self) -> Result<()> {
        let journal_error = |source| io_error(&self.root.join(JOURNAL_DIR), source);
        let next = {
            let _alone = self.appending.write().await;
            let next = self.journal.rotate().await.map_err(journal_error)?;
            self.journaled_bytes.store(0, Ordering::Release);
            next
        };
        // Writers waiting for journal room go on; those waiting for memory wait for this
        // checkpoint's files.
        self.files_failing.store(false, Ordering::Release);
        self.relieved.notify_waiters();
        // Each blob's file once, with its latest version, several at a time (the file system
        // overlaps creates and renames in different directories).
        let pending: Vec<Key> = self.unwritten().keys().cloned().collect();
        let failed = AtomicBool::new(false);
        futures_util::stream::iter(pending)
            .for_each_concurrent(CHECKPOINT_WRITERS, |key| {
                let failed = &failed;
                async move {
                    let slot = self.slots.get(&key);
                    let mut cached = slot.lock().await;
                    let blob = self.unwritten().get(&key).cloned();
                    if let Some(blob) = blob {
                        let file = serde_json::to_vec(&*blob).expect("a blob always serialises");
                        *cached = self.write_file(&key, &blob, file).await;
                        if matches!(*cached, Cached::Unknown) && self.unwritten().contains_key(&key)
                        {
                            failed.store(true, Ordering::Relaxed);
                        }
                    }
                }
            })
            .await;
        self.files_failing
            .store(failed.load(Ordering::Relaxed), Ordering::Release);
        self.relieved.notify_waiters();
        if failed.load(Ordering::Relaxed) {
            return Err(journal_error(io::Error::other(
                "blob files still cannot be written; the journal keeps their writes",
            )));
        }
        // Both block (a sync of the file system, unlinks and a directory sync): off the runtime.
        let (root, journal) = (self.root.clone(), self.journal.clone());
        tokio::task::spawn_blocking(move || {
            durable::sync_fs(&root).map_err(|source| io_error(&root, source))?;
            journal
                .remove_before(next)
                .map_err(|source| io_error(&root.join(JOURNAL_DIR), source))
        })
        .await?
    }
}

/// The latest file of every blob the journal under `root` holds, by its name in the layout,
/// read beside a running server: what may be newer than its file (see [`crate::storage::journal::read_all`]).
pub fn journaled(root: &Path) -> io::Result<HashMap<String, Vec<u8>>> {
    let mut latest = HashMap::new();
    for record in crate::storage::journal::read_all(&root.join(JOURNAL_DIR))? {
        let ((bucket, r), file) = parse_record(&record)?;
        let key = crate::storage::layout::key_of(&crate::storage::layout::Kind::Blob(bucket, r))
            .expect("a blob has a name");
        latest.insert(key, file.to_vec());
    }
    Ok(latest)
}

/// A journal record: `<bucket>/<ref>\n` and the blob's file, byte for byte.
fn record(bucket: &Bucket, r: &Ref, file: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(bucket.as_str().len() + 66 + file.len());
    record.extend_from_slice(format!("{bucket}/{r}\n").as_bytes());
    record.extend_from_slice(file);
    record
}

/// The blob a journal record names and its file. A record that passed its checksum but does
/// not parse is refused: it was never written by this store.
fn parse_record(record: &[u8]) -> io::Result<(Key, &[u8])> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, "malformed journal record");
    let newline = record
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(invalid)?;
    let name = std::str::from_utf8(&record[..newline]).map_err(|_| invalid())?;
    let (bucket, r) = name.split_once('/').ok_or_else(invalid)?;
    let key = (
        Bucket::parse(bucket).ok_or_else(invalid)?,
        Ref::parse(r).ok_or_else(invalid)?,
    );
    let file = &record[newline + 1..];
    format::decode(file).map_err(|_| invalid())?;
    Ok((key, file))
}

fn cache_entry(blob: Option<&Arc<Blob>>) -> Cached {
    match blob {
        None => Cached::Missing,
        Some(b) if b.data.as_ref().map_or(0, String::len) <= CACHED_DATA_LIMIT => {
            Cached::Present(b.clone())
        }
        Some(_) => Cached::Unknown,
    }
}

#[async_trait::async_trait]
impl Store for FsStore {
    async fn get(&self, bucket: &Bucket, r: &Ref) -> Result<Option<Arc<Blob>>> {
        let key = (bucket.clone(), r.clone());
        let slot = self.slots.get(&key);
        let mut cached = slot.lock().await;
        self.load(&key, &mut cached).await
    }

    async fn set(&self, bucket: &Bucket, r: &Ref, request: SetRequest) -> Result<SetOutcome> {
        // Before the blob's lock: a checkpoint needs it to write this blob's file.
        self.room().await?;
        let key = (bucket.clone(), r.clone());
        let slot = self.slots.get(&key);
        let mut cached = slot.lock().await;
        let current = self.load(&key, &mut cached).await?;
        let blob = match apply(current.as_ref(), request)? {
            Ok(blob) => Arc::new(blob),
            Err(conflict) => return Ok(conflict),
        };
        let file = serde_json::to_vec(&*blob).expect("a blob always serialises");
        let record = record(bucket, r, &file);
        let appended = record.len() as u64;
        let _appending = self.appending.read().await;
        self.journal
            .append(record)
            .await
            .map_err(|source| io_error(&self.root.join(JOURNAL_DIR), source))?;
        if self.journaled_bytes.fetch_add(appended, Ordering::AcqRel) + appended
            >= self.journal_checkpoint_bytes
        {
            self.pressure.notify_one();
        }
        // Committed: durable in the journal. Its file waits for the checkpoint, unless every
        // write replaces its file.
        self.written.store(true, Ordering::Release);
        self.keep_unwritten(&key, &blob);
        *cached = if self.unwritten_limit == 0 {
            self.write_file(&key, &blob, file).await
        } else {
            cache_entry(Some(&blob))
        };
        Ok(SetOutcome::Committed {
            version: blob.version,
            grown: super::grown(current.as_deref(), &blob),
        })
    }

    async fn checkpoint(&self) -> Result<()> {
        FsStore::checkpoint(self).await
    }

    async fn checkpoint_wanted(&self) {
        self.pressure.notified().await;
    }

    async fn list(
        &self,
        bucket: &Bucket,
        after: Option<&Ref>,
        limit: usize,
    ) -> Result<Vec<(Ref, Listed)>> {
        // The files, and over them the blobs whose files are not written yet: enough files
        // that the unwritten tombstones leave `limit`.
        let unwritten: BTreeMap<Ref, Arc<Blob>> = self
            .unwritten()
            .iter()
            .filter(|((b, r), _)| b == bucket && after.is_none_or(|a| r > a))
            .map(|((_, r), blob)| (r.clone(), blob.clone()))
            .collect();
        let dir = self.root.join(bucket.as_str());
        let (from, wanted) = (after.cloned(), limit + unwritten.len());
        let files =
            tokio::task::spawn_blocking(move || list_dir(&dir, from.as_ref(), wanted)).await??;
        let mut listed: BTreeMap<Ref, Listed> = files.into_iter().collect();
        for (r, blob) in unwritten {
            if blob.deleted {
                listed.remove(&r);
            } else {
                let shown = Listed {
                    version: blob.version,
                    size: blob.size(),
                    updated: blob.modified(),
                };
                listed.insert(r, shown);
            }
        }
        Ok(listed.into_iter().take(limit).collect())
    }

    async fn writable(&self) -> bool {
        let root = self.root.clone();
        let probe = move || -> io::Result<()> {
            let mut file = tempfile::Builder::new()
                .prefix(durable::TEMP_PREFIX)
                .tempfile_in(&root)?;
            std::io::Write::write_all(&mut file, b"probe")
        };
        matches!(tokio::task::spawn_blocking(probe).await, Ok(Ok(())))
    }
}

/// Live blobs under one bucket directory, in ref order, after `after`, at most `limit`. A
/// damaged blob file is logged and left out.
fn list_dir(dir: &Path, after: Option<&Ref>, limit: usize) -> Result<Vec<(Ref, Listed)>> {
    let mut found = Vec::new();
    let mut shards = match sorted_names(dir) {
        Ok(names) => names,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(source) => return Err(io_error(dir, source)),
    };
    shards.retain(|s| s.len() == 2 && after.is_none_or(|a| s.as_str() >= a.shard()));
    for shard in shards {
        let shard_dir = dir.join(&shard);
        let names = sorted_names(&shard_dir).map_err(|source| io_error(&shard_dir, source))?;
        let refs = names
            .iter()
            .filter_map(|name| Ref::parse(name.strip_suffix(".json")?))
            .filter(|r| r.shard() == shard && after.is_none_or(|a| r > a));
        for r in refs {
            let path = shard_dir.join(format!("{r}.json"));
            match summarize_file(&path) {
                Ok(Some(Some(listed))) => found.push((r, listed)),
                // Gone since the directory was listed, or a tombstone.
                Ok(_) => continue,
                Err(e @ Error::Corrupt { .. }) => {
                    tracing::warn!(path = %path.display(), "left out of a listing: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            }
            if found.len() == limit {
                return Ok(found);
            }
        }
    }
    Ok(found)
}

fn sorted_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort_unstable();
    Ok(names)
}

fn io_error(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads one blob file; a missing file is `None`, a damaged one an error.
fn read_blob(path: &Path) -> Result<Option<Blob>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io_error(path, source)),
    };
    format::decode(&bytes)
        .map(Some)
        .map_err(|reason| damaged(path, reason))
}

fn damaged(path: &Path, reason: String) -> Error {
    Error::Corrupt {
        path: path.display().to_string(),
        reason,
    }
}

/// What a listing shows of one blob file, `None` when it is gone: a large file is judged by
/// its head and tail (two reads of a few KiB), a small one, or one of an unusual layout, by
/// all of it; the data is never copied out.
fn summarize_file(path: &Path) -> Result<Option<Summary>> {
    let io = |source| io_error(path, source);
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io(source)),
    };
    let total = file.metadata().map_err(io)?.len();
    if total >= (format::HEAD.len() + format::TAIL) as u64 {
        let mut head = [0; format::HEAD.len()];
        file.read_exact_at(&mut head, 0).map_err(io)?;
        let mut tail = vec![0; format::TAIL];
        file.read_exact_at(&mut tail, total - format::TAIL as u64)
            .map_err(io)?;
        if let Some(summary) = format::summarize_ends(&head, &tail, total) {
            return summary.map(Some).map_err(|reason| damaged(path, reason));
        }
    }
    let mut bytes = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    file.read_to_end(&mut bytes).map_err(io)?;
    format::summarize(&bytes)
        .map(Some)
        .map_err(|reason| damaged(path, reason))
}

/// Walks `<root>/<bucket>/<shard>/` once at start-up, listing each shard directory once:
/// removes temp files, resolves backups, and finds the blob files stored under a name not in
/// lower case, for [`Misspelled::resolve`]. Only a name that needs moving costs more than its
/// directory entry.
fn sweep(root: &Path) -> io::Result<Misspelled> {
    // The readiness probe writes its temp file in the root itself.
    durable::remove_temp_files(root)?;
    let mut misspelled = Misspelled::default();
    for bucket in durable::subdirs(root)? {
        let is_bucket = bucket
            .file_name()
            .and_then(|name| Bucket::parse(&name.to_string_lossy()))
            .is_some();
        if !is_bucket {
            continue;
        }
        let mut cased: BTreeMap<Ref, Vec<PathBuf>> = BTreeMap::new();
        // Other directories of a bucket (`cas`) belong to other stores, which sweep them.
        for shard in durable::subdirs(&bucket)?
            .into_iter()
            .filter(|d| is_shard_dir(d))
        {
            let shard_name = shard
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut files = BTreeSet::new();
            for entry in fs::read_dir(&shard)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if durable::is_temp_name(&name) {
                    tracing::info!(path = %entry.path().display(), "removing temp file left by a crash");
                    fs::remove_file(entry.path())?;
                } else if let Some(target) = name.strip_suffix(BACKUP_SUFFIX) {
                    // Resolved first, as the original would, whatever the case of its name.
                    recover_backup(&entry.path())?;
                    files.insert(target.to_owned());
                } else if entry.file_type()?.is_file() {
                    files.insert(name);
                }
            }
            for name in files {
                if let Some(r) = misspelled_ref(&shard_name, &name)
                    && fs::symlink_metadata(shard.join(&name)).is_ok_and(|m| m.is_file())
                {
                    cased.entry(r).or_default().push(shard.join(name));
                }
            }
            if shard_name != shard_name.to_ascii_lowercase() {
                misspelled.shards.push(shard);
            }
        }
        misspelled.blobs.extend(
            cased
                .into_iter()
                .map(|(r, files)| (bucket.clone(), r, files)),
        );
    }
    Ok(misspelled)
}

/// Blob files of the original under refs not in lower case, found by [`sweep`].
#[derive(Default)]
struct Misspelled {
    /// Bucket directory, ref, and the files of its other spellings, in name order.
    blobs: Vec<(PathBuf, Ref, Vec<PathBuf>)>,
    /// Shard directories not in lower case, removed once the moves emptied them.
    shards: Vec<PathBuf>,
}

impl Misspelled {
    /// Moves each blob to its lower-case name ([`resolve_case`]). Runs after the journal
    /// replay, so a blob Blobs wrote under the lower-case name before this check existed is
    /// weighed as it was last acknowledged, and whichever loses is kept aside, not overwritten.
    fn resolve(self) -> io::Result<()> {
        for (bucket, r, files) in self.blobs {
            resolve_case(&bucket, &r, files)?;
        }
        for shard in self.shards {
            // Emptied by the moves (anything else left in it keeps it).
            if fs::remove_dir(&shard).is_ok()
                && let Some(bucket) = shard.parent()
            {
                durable::sync_dir(bucket)?;
            }
        }
        Ok(())
    }
}

fn is_shard_dir(dir: &Path) -> bool {
    dir.file_name().is_some_and(|name| name.len() == 2)
}

/// The ref of a blob file the original stored under the ref as its client sent it: a name
/// `<ref>.json` in the ref's shard directory, either of them not in lower case.
fn misspelled_ref(shard: &str, name: &str) -> Option<Ref> {
    let stem = name.strip_suffix(".json")?;
    let r = Ref::parse(stem)?;
    let misspelled = stem != r.as_str() || shard != r.shard();
    (misspelled && shard.eq_ignore_ascii_case(r.shard())).then_some(r)
}

/// Gives the blob `r` of `bucket` its one lower-case file, from `files` (its other spellings,
/// in name order, found at start-up) and the lower-case file, if any. The original treated
/// each spelling as a blob of its own; the one kept is the newest intact one
/// ([`format::preferred`]), moved to the lower-case name; each other is moved beside it as
/// `<ref>.json.case-conflict-<n>` (a name nothing reads, which `blobs check` reports), never
/// removed. Every move is durable and never replaces a file, so a crash half-way leaves every
/// file under some name, and the next start finishes the work.
fn resolve_case(bucket: &Path, r: &Ref, files: Vec<PathBuf>) -> io::Result<()> {
    let dir = bucket.join(r.shard());
    let target = dir.join(format!("{r}.json"));
    let mut candidates = Vec::new();
    let present = fs::symlink_metadata(&target).ok();
    if present.is_some() {
        candidates.push(target.clone());
    }
    for file in files {
        // On a case-insensitive file system both names are one file: only its spelling moves.
        if let Some(present) = &present
            && fs::symlink_metadata(&file).is_ok_and(|m| same_file(&m, present))
        {
            durable::rename(&file, &target)?;
            continue;
        }
        candidates.push(file);
    }
    if candidates.first().is_none_or(|first| *first == target) && candidates.len() <= 1 {
        return Ok(());
    }
    let blobs = candidates
        .iter()
        .map(|path| match read_blob(path) {
            Ok(blob) => Ok(blob),
            Err(Error::Corrupt { .. }) => Ok(None),
            Err(e) => Err(io::Error::other(e.to_string())),
        })
        .collect::<io::Result<Vec<_>>>()?;
    let keep = format::preferred(&blobs);
    for (i, path) in candidates.iter().enumerate() {
        if i == keep {
            continue;
        }
        let aside = (1..)
            .map(|n| dir.join(format!("{r}.json{CASE_CONFLICT}{n}")))
            .find(|p| fs::symlink_metadata(p).is_err())
            .expect("some number is free");
        tracing::warn!(
            path = %path.display(),
            kept = %candidates[keep].display(),
            aside = %aside.display(),
            "two spellings of one ref: the newer is kept, the other moved aside"
        );
        durable::move_new(path, &aside)?;
    }
    if candidates[keep] != target {
        tracing::info!(from = %candidates[keep].display(), to = %target.display(), "moving a blob file to its lower-case name");
        durable::move_new(&candidates[keep], &target)?;
    }
    Ok(())
}

fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

/// Resolves a `<ref>.json.backup` left by the original, which wrote the backup before replacing
/// the blob file and deleted it afterwards. When the blob file is complete (it decodes) the
/// replacement finished and the backup is stale, so it is removed; when the blob file is
/// missing or damaged, the backup is the last complete version and is renamed back into place.
fn recover_backup(backup: &Path) -> io::Result<()> {
    let name = backup.to_string_lossy();
    let target = PathBuf::from(&name[..name.len() - BACKUP_SUFFIX.len()]);
    if matches!(read_blob(&target), Ok(Some(_))) {
        tracing::info!(path = %backup.display(), "removing stale backup of a complete blob file");
        durable::remove(backup)?;
    } else if matches!(read_blob(backup), Ok(Some(_))) {
        tracing::warn!(path = %target.display(), "restoring blob file from its backup");
        durable::rename(backup, &target)?;
    } else {
        tracing::error!(path = %backup.display(), "backup and blob file are both unreadable; left as they are");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::store::{Edit, Expect};

    fn put(data: &str) -> SetRequest {
        SetRequest {
            edit: Edit::Put(Some(data.to_owned())),
            expect: Expect::Protocol(None),
            ip: "203.0.113.7".to_owned(),
            now: 1,
            id: None,
        }
    }

    /// Writes wait for a checkpoint at the limit of unwritten bytes, which never grows past
    /// it by more than one write; reads and listings see every write before its file exists,
    /// and a checkpoint writes each file once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unwritten_blobs_are_bounded_and_read_from_memory() {
        const LIMIT: u64 = 64 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FsStore::with_unwritten_limit(dir.path(), LIMIT).unwrap());
        let checkpoints = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut done = 0;
                loop {
                    store.checkpoint_wanted().await;
                    store.checkpoint().await.unwrap();
                    done += 1;
                    if done == 1_000 {
                        return;
                    }
                }
            })
        };
        let bucket = Bucket::parse("b").unwrap();
        let data = "A".repeat(4096);
        let one = Blob::stored_len(&Blob {
            version: 1,
            created: 1,
            updated: None,
            ip: "203.0.113.7".into(),
            data: Some(data.clone()),
            deleted: false,
            writers: Vec::new(),
        });
        let mut peak = 0;
        for i in 0..200u32 {
            let r = Ref::parse(&format!("{:064x}", i)).unwrap();
            store.set(&bucket, &r, put(&data)).await.unwrap();
            peak = peak.max(store.unwritten_bytes.load(Ordering::Acquire));
            let read = store.get(&bucket, &r).await.unwrap().unwrap();
            assert_eq!(read.data.as_deref(), Some(data.as_str()));
        }
        assert!(peak <= LIMIT + one, "{peak} unwritten bytes");
        let listed = store.list(&bucket, None, 1_000).await.unwrap();
        assert_eq!(listed.len(), 200);
        store.checkpoint().await.unwrap();
        assert_eq!(store.unwritten_bytes.load(Ordering::Acquire), 0);
        let files = fs::read_dir(dir.path().join("b")).unwrap().count();
        assert!(files > 0);
        checkpoints.abort();
    }

    /// One blob written over and over keeps little unwritten but grows the journal: past twice
    /// the size that wants a checkpoint, a writer waits for one to start a new segment.
    #[tokio::test]
    async fn the_journal_is_bounded_when_one_blob_is_written_over_and_over() {
        use futures_util::FutureExt;

        const JOURNAL: u64 = 64 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::with_bounds(dir.path(), DEFAULT_UNWRITTEN_BYTES, JOURNAL).unwrap();
        let (bucket, r) = (
            Bucket::parse("b").unwrap(),
            Ref::parse(&"ab".repeat(32)).unwrap(),
        );
        let data = "A".repeat(16 * 1024);
        let write = |version: u64| SetRequest {
            expect: Expect::Protocol((version > 0).then_some(version)),
            ..put(&data)
        };
        let mut writes = 0;
        while !store.full() {
            let done = store.set(&bucket, &r, write(writes)).await.unwrap();
            assert!(matches!(done, SetOutcome::Committed { .. }), "{done:?}");
            writes += 1;
            assert!(writes < 100, "writers never wait");
        }
        assert!(store.journaled_bytes.load(Ordering::Acquire) >= 2 * JOURNAL);
        assert!(
            store.checkpoint_wanted().now_or_never().is_some(),
            "a checkpoint is wanted"
        );
        // Without a checkpoint the next write never goes on, however long it is given.
        let mut waiting = Box::pin(store.set(&bucket, &r, write(writes)));
        let given = std::time::Duration::from_millis(200);
        assert!(
            tokio::time::timeout(given, &mut waiting).await.is_err(),
            "it waits"
        );
        let (waited, checkpointed) = tokio::join!(waiting, store.checkpoint());
        waited.unwrap();
        checkpointed.unwrap();
        println!("{writes} writes of 16 KiB before one waited for a checkpoint");
    }

    #[test]
    fn names_of_the_original_not_in_lower_case_are_found() {
        let (lower, upper) = ("ab".repeat(32), "AB".repeat(32));
        let mixed = "aB".repeat(32);
        let r = Ref::parse(&lower);
        assert_eq!(misspelled_ref("AB", &format!("{upper}.json")), r);
        assert_eq!(misspelled_ref("aB", &format!("{mixed}.json")), r);
        assert_eq!(misspelled_ref("ab", &format!("{upper}.json")), r);
        assert_eq!(misspelled_ref("AB", &format!("{lower}.json")), r);
        // Already its name, another shard, or not a blob file.
        assert_eq!(misspelled_ref("ab", &format!("{lower}.json")), None);
        assert_eq!(misspelled_ref("CD", &format!("{upper}.json")), None);
        assert_eq!(misspelled_ref("AB", &format!("{upper}.json.backup")), None);
        assert_eq!(
            misspelled_ref("AB", &format!("{upper}.json{CASE_CONFLICT}1")),
            None
        );
    }
}
