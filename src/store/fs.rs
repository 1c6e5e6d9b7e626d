//! The embedded store: one JSON file per blob under the storage root, in the original's layout
//! `<root>/<bucket>/<ref[0..2]>/<ref>.json`.
//!
//! Writes go through [`durable::replace`] under a per-blob async lock, so compare-and-swap on one
//! blob is serial while writes to different blobs overlap their fsyncs. Small blobs are kept in
//! memory after first use; the files stay the source of truth, and the cache of a blob is only
//! updated after its file is durable.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::durable;
use crate::locks::KeyedLocks;
use crate::names::{Bucket, Ref};

use super::{Blob, Error, Listed, Result, SetOutcome, SetRequest, Store, apply};

/// Blobs whose `data` is longer than this many characters are not kept in memory, which bounds
/// the cache to about 4,096 idle slots (see [`KeyedLocks`]) of 16 KiB: 64 MiB.
const CACHED_DATA_LIMIT: usize = 16 * 1024;

/// Suffix of the backup files the original wrote before replacing a blob file.
const BACKUP_SUFFIX: &str = ".backup";

/// What is known in memory about one blob.
#[derive(Default)]
enum Cached {
    /// Not read yet, too large to keep, or in doubt after a failed write: read the file.
    #[default]
    Unknown,
    Missing,
    Present(Arc<Blob>),
}

pub struct FsStore {
    root: PathBuf,
    /// One lock per recently used blob, held across the file read and the durable write: that
    /// is what makes compare-and-swap on one blob atomic.
    slots: KeyedLocks<(Bucket, Ref), Cached>,
}

impl FsStore {
    /// Opens (creating) the storage root, then repairs what a crash may have left: temp files
    /// are removed and the original's `.backup` files are resolved (see `recover_backup`).
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        sweep(&root)?;
        Ok(Self {
            root,
            slots: KeyedLocks::default(),
        })
    }

    fn path(&self, bucket: &Bucket, r: &Ref) -> PathBuf {
        self.root
            .join(bucket.as_str())
            .join(r.shard())
            .join(format!("{r}.json"))
    }

    /// The current blob, from memory or from its file.
    async fn load(&self, cached: &mut Cached, path: &Path) -> Result<Option<Arc<Blob>>> {
        match cached {
            Cached::Present(blob) => return Ok(Some(blob.clone())),
            Cached::Missing => return Ok(None),
            Cached::Unknown => {}
        }
        let owned = path.to_owned();
        let blob = tokio::task::spawn_blocking(move || read_blob(&owned)).await??;
        let blob = blob.map(Arc::new);
        *cached = cache_entry(blob.as_ref());
        Ok(blob)
    }
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
        let slot = self.slots.get(&(bucket.clone(), r.clone()));
        let mut cached = slot.lock().await;
        self.load(&mut cached, &self.path(bucket, r)).await
    }

    async fn set(&self, bucket: &Bucket, r: &Ref, request: SetRequest) -> Result<SetOutcome> {
        let path = self.path(bucket, r);
        let slot = self.slots.get(&(bucket.clone(), r.clone()));
        let mut cached = slot.lock().await;
        let current = self.load(&mut cached, &path).await?;
        let blob = match apply(current.as_ref(), request)? {
            Ok(blob) => Arc::new(blob),
            Err(conflict) => return Ok(conflict),
        };
        let bytes = serde_json::to_vec(&*blob).expect("a blob always serialises");
        // Until the write is known to be durable the file is in doubt.
        *cached = Cached::Unknown;
        let write_path = path.clone();
        tokio::task::spawn_blocking(move || durable::replace(&write_path, &bytes))
            .await?
            .map_err(|source| io_error(&path, source))?;
        *cached = cache_entry(Some(&blob));
        Ok(SetOutcome::Committed {
            version: blob.version,
        })
    }

    async fn list(
        &self,
        bucket: &Bucket,
        after: Option<&Ref>,
        limit: usize,
    ) -> Result<Vec<(Ref, Listed)>> {
        let dir = self.root.join(bucket.as_str());
        let after = after.cloned();
        tokio::task::spawn_blocking(move || list_dir(&dir, after.as_ref(), limit)).await?
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

/// Live blobs under one bucket directory, in ref order, after `after`, at most `limit`.
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
            if let Some(blob) = read_blob(&path)?.filter(|b| !b.deleted) {
                found.push((r, Listed::from(&blob)));
                if found.len() == limit {
                    return Ok(found);
                }
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

/// Reads one blob file; a missing file is `None`.
fn read_blob(path: &Path) -> Result<Option<Blob>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io_error(path, source)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| Error::Corrupt {
            path: path.display().to_string(),
            source,
        })
}

/// Walks `<root>/<bucket>/<shard>/` once at start-up: removes temp files and resolves backups.
fn sweep(root: &Path) -> io::Result<()> {
    // The readiness probe writes its temp file in the root itself.
    durable::remove_temp_files(root)?;
    for bucket in durable::subdirs(root)? {
        // Other directories of a bucket (`cas`) belong to other stores, which sweep them.
        for shard in durable::subdirs(&bucket)?
            .into_iter()
            .filter(|d| is_shard_dir(d))
        {
            durable::remove_temp_files(&shard)?;
            for entry in fs::read_dir(&shard)? {
                let entry = entry?;
                if entry.file_name().to_string_lossy().ends_with(BACKUP_SUFFIX) {
                    recover_backup(&entry.path())?;
                }
            }
        }
    }
    Ok(())
}

fn is_shard_dir(dir: &Path) -> bool {
    dir.file_name().is_some_and(|name| name.len() == 2)
}

/// Resolves a `<ref>.json.backup` left by the original, which wrote the backup before replacing
/// the blob file and deleted it afterwards. When the blob file is complete (it parses) the
/// replacement finished and the backup is stale, so it is removed; when the blob file is
/// missing or torn, the backup is the last complete version and is renamed back into place.
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
