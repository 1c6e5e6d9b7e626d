//! [`Directory`]: the object layer on a directory, so everything above it is written once for
//! both backends. An object is one file at its name under the root (`a/b/c.json` is
//! `<root>/a/b/c.json`), written through [`durable`]: a reader sees the old file or the new
//! one, never a mix.
//!
//! Compare-and-swap means what it means on S3:
//! - an object's ETag is a hash of its bytes (up to [`HASHED_BYTES`]; a larger file, which
//!   nothing updates conditionally, is tagged by its inode, size and modification time), so a
//!   version survives restarts and is the same in every process;
//! - a create-if-absent is a rename that never replaces (`RENAME_NOREPLACE`);
//! - an update-if-unchanged compares and renames under an exclusive `flock` of the object's
//!   directory, which serialises it with every other replacement in that directory by any
//!   process on the machine (`blobs revoke` beside a server), and leaves no lock file behind.
//!
//! Metadata (`Attributes`) is not kept: a directory never answers ambiguously, so nothing here
//! needs it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyMode, CopyOptions, Error, GetOptions, GetResult, GetResultPayload, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, Result, UploadPart,
};

use super::same_e_tag;
use crate::storage::durable;

/// Files up to this size are tagged by a hash of their bytes, read whole; larger ones by
/// their identity on disk and streamed.
pub const HASHED_BYTES: u64 = 1 << 20;

/// Name of this store in errors.
const STORE: &str = "Directory";

/// The object layer on a directory.
#[derive(Clone, Debug)]
pub struct Directory {
    root: PathBuf,
    /// Whether each write is synced before it returns; when not, [`durable::sync_fs`] of the
    /// root makes every write so far durable at once.
    synced: bool,
}

impl Directory {
    /// Objects under `root`, each write durable when it returns.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            synced: true,
        }
    }

    /// Objects under `root` whose plain writes (not creates or updates) are not synced: for
    /// copying many files, made durable together by one `syncfs` of the root.
    pub fn batched(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            synced: false,
        }
    }

    pub fn root(&self) -> &FsPath {
        &self.root
    }

    fn file(&self, location: &Path) -> PathBuf {
        self.root.join(location.as_ref())
    }

    /// Runs blocking file work off the runtime's threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(Directory) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || work(this))
            .await
            .map_err(|source| Error::JoinError { source })?
    }

    /// The object at `location` as it is now.
    fn read(&self, location: &Path) -> Result<Stored> {
        let path = self.file(location);
        let mut file = File::open(&path).map_err(|e| error(location, e))?;
        let metadata = file.metadata().map_err(|e| error(location, e))?;
        if !metadata.is_file() {
            return Err(not_found(location));
        }
        let (bytes, e_tag) = if metadata.len() <= HASHED_BYTES {
            let mut bytes = Vec::with_capacity(metadata.len() as usize);
            file.read_to_end(&mut bytes)
                .map_err(|e| error(location, e))?;
            let e_tag = e_tag([bytes.as_slice()]);
            (Some(Bytes::from(bytes)), e_tag)
        } else {
            (None, identity_tag(&metadata))
        };
        let size = bytes.as_ref().map_or(metadata.len(), |b| b.len() as u64);
        Ok(Stored {
            meta: meta(location, &metadata, size, Some(e_tag)),
            bytes,
            file,
        })
    }

    /// Writes `payload` at `location` as `mode` says.
    fn write(&self, location: &Path, payload: &PutPayload, mode: &PutMode) -> Result<PutResult> {
        let path = self.file(location);
        let dir = path.parent().ok_or_else(|| not_found(location))?;
        let failed = |e| error(location, e);
        let mut staged = durable::Staged::new_in(dir).map_err(failed)?;
        for chunk in payload.iter() {
            staged.file().write_all(chunk).map_err(failed)?;
        }
        match mode {
            PutMode::Create => staged
                .commit_new(&path)
                .map_err(|e| created_error(location, e))?,
            PutMode::Overwrite | PutMode::Update(_) => {
                let _turn = lock(dir).map_err(failed)?;
                if let PutMode::Update(expected) = mode {
                    let current = match self.read(location) {
                        Ok(stored) => stored.meta.e_tag,
                        Err(Error::NotFound { .. }) => None,
                        Err(e) => return Err(e),
                    };
                    let unchanged = current
                        .as_deref()
                        .zip(expected.e_tag.as_deref())
                        .is_some_and(|(now, then)| same_e_tag(now, then));
                    if !unchanged {
                        return Err(Error::Precondition {
                            path: location.to_string(),
                            source: format!("{location} is not at ETag {:?}", expected.e_tag)
                                .into(),
                        });
                    }
                }
                if self.synced || !matches!(mode, PutMode::Overwrite) {
                    staged.commit(&path).map_err(failed)?;
                } else {
                    staged.commit_unsynced(&path).map_err(failed)?;
                }
            }
        }
        let e_tag = if payload.content_length() as u64 <= HASHED_BYTES {
            e_tag(payload.iter().map(|c| c.as_ref()))
        } else {
            identity_tag(&std::fs::metadata(&path).map_err(failed)?)
        };
        Ok(PutResult {
            e_tag: Some(e_tag),
            version: None,
            extensions: Default::default(),
        })
    }

    /// Every file under `prefix`, in name order (byte order of the names, as S3 lists).
    fn walk(&self, prefix: Option<&Path>) -> Result<Vec<ObjectMeta>> {
        let top = prefix.map_or_else(|| self.root.clone(), |p| self.file(p));
        let mut found = Vec::new();
        let mut dirs = vec![top];
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(generic(e)),
            };
            for entry in entries {
                let entry = entry.map_err(generic)?;
                let kind = entry.file_type().map_err(generic)?;
                if kind.is_dir() {
                    dirs.push(entry.path());
                } else if kind.is_file() {
                    let path = entry.path();
                    let Some(location) = self.location(&path) else {
                        continue;
                    };
                    let metadata = entry.metadata().map_err(generic)?;
                    found.push(meta(&location, &metadata, metadata.len(), None));
                }
            }
        }
        found.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
        Ok(found)
    }

    /// The object name of a file under the root (`None` for a name no object can have).
    fn location(&self, path: &FsPath) -> Option<Path> {
        let relative = path.strip_prefix(&self.root).ok()?;
        let parts: Option<Vec<&str>> = relative.iter().map(|part| part.to_str()).collect();
        Path::parse(parts?.join("/")).ok()
    }
}

/// An object read: its metadata, its bytes when small enough to be read whole, and the open
/// file to stream a larger one from.
struct Stored {
    meta: ObjectMeta,
    bytes: Option<Bytes>,
    file: File,
}

/// An exclusive `flock` of a directory, held until dropped.
fn lock(dir: &FsPath) -> io::Result<File> {
    let handle = File::open(dir)?;
    handle.lock()?;
    Ok(handle)
}

/// The ETag of bytes (given in chunks): a hash of them, quoted as S3 quotes ETags.
fn e_tag<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hasher = blake3::Hasher::new();
    for chunk in chunks {
        hasher.update(chunk);
    }
    format!("\"{}\"", &hasher.finalize().to_hex()[..32])
}

/// The ETag of a file too large to hash on every read: its identity on disk. Every write is a
/// new file renamed into place, so the inode changes with each write.
fn identity_tag(metadata: &std::fs::Metadata) -> String {
    format!(
        "\"i{:x}-{:x}-{:x}.{:x}\"",
        metadata.ino(),
        metadata.len(),
        metadata.mtime(),
        metadata.mtime_nsec()
    )
}

fn meta(
    location: &Path,
    metadata: &std::fs::Metadata,
    size: u64,
    e_tag: Option<String>,
) -> ObjectMeta {
    let modified = metadata.modified().unwrap_or(std::time::UNIX_EPOCH);
    ObjectMeta {
        location: location.clone(),
        last_modified: chrono::DateTime::<chrono::Utc>::from(modified),
        size,
        e_tag,
        version: None,
    }
}

fn not_found(location: &Path) -> Error {
    Error::NotFound {
        path: location.to_string(),
        source: format!("{location} is not a file").into(),
    }
}

fn error(location: &Path, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::NotFound => Error::NotFound {
            path: location.to_string(),
            source: Box::new(e),
        },
        _ => generic(e),
    }
}

/// A create-if-absent that failed: `AlreadyExists` when something is there.
fn created_error(location: &Path, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::AlreadyExists => Error::AlreadyExists {
            path: location.to_string(),
            source: Box::new(e),
        },
        _ => error(location, e),
    }
}

pub(super) fn generic(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Generic {
        store: STORE,
        source: Box::new(e),
    }
}

impl std::fmt::Display for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Directory({})", self.root.display())
    }
}

#[async_trait::async_trait]
impl ObjectStore for Directory {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let location = location.clone();
        self.blocking(move |dir| dir.write(&location, &payload, &opts.mode))
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let path = self.file(location);
        let dir = path.parent().ok_or_else(|| not_found(location))?.to_owned();
        let staged = self
            .blocking(move |_| durable::Staged::new_in(&dir).map_err(generic))
            .await?;
        Ok(Box::new(Upload {
            location: location.clone(),
            path,
            staged: Arc::new(Mutex::new(Some(staged))),
            written: 0,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let at = location.clone();
        let stored = self.blocking(move |dir| dir.read(&at)).await?;
        options.check_preconditions(&stored.meta)?;
        let range = match &options.range {
            Some(range) => range.as_range(stored.meta.size).map_err(generic)?,
            None => 0..stored.meta.size,
        };
        let payload = if options.head || range.is_empty() {
            stream::empty().boxed()
        } else {
            match &stored.bytes {
                Some(bytes) => {
                    let part = bytes.slice(range.start as usize..range.end as usize);
                    stream::once(async move { Ok(part) }).boxed()
                }
                None => stream_file(stored.file, range.clone()),
            }
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload),
            meta: stored.meta,
            range,
            attributes: Default::default(),
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let this = self.clone();
        locations
            .and_then(move |location| {
                let dir = this.clone();
                async move {
                    dir.blocking(move |dir| {
                        let path = dir.file(&location);
                        let removed = if dir.synced {
                            durable::remove(&path).map(drop)
                        } else {
                            std::fs::remove_file(&path)
                        };
                        match removed {
                            Ok(()) => Ok(location),
                            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(location),
                            Err(e) => Err(error(&location, e)),
                        }
                    })
                    .await
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let dir = self.clone();
        let prefix = prefix.cloned();
        stream::once(async move { dir.blocking(move |dir| dir.walk(prefix.as_ref())).await })
            .map_ok(|found| stream::iter(found.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let prefix = prefix.cloned();
        self.blocking(move |dir| {
            let top = prefix
                .as_ref()
                .map_or_else(|| dir.root.clone(), |p| dir.file(p));
            let mut listed = ListResult {
                common_prefixes: Vec::new(),
                objects: Vec::new(),
                extensions: Default::default(),
            };
            let entries = match std::fs::read_dir(&top) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(listed),
                Err(e) => return Err(generic(e)),
            };
            for entry in entries {
                let entry = entry.map_err(generic)?;
                let Some(location) = dir.location(&entry.path()) else {
                    continue;
                };
                let metadata = entry.metadata().map_err(generic)?;
                if metadata.is_dir() {
                    listed.common_prefixes.push(location);
                } else if metadata.is_file() {
                    listed
                        .objects
                        .push(meta(&location, &metadata, metadata.len(), None));
                }
            }
            listed.common_prefixes.sort();
            listed
                .objects
                .sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
            Ok(listed)
        })
        .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let (from, to) = (from.clone(), to.clone());
        self.blocking(move |dir| {
            let target = dir.file(&to);
            let parent = target.parent().ok_or_else(|| not_found(&to))?;
            let mut source = File::open(dir.file(&from)).map_err(|e| error(&from, e))?;
            let failed = |e| error(&to, e);
            let mut staged = durable::Staged::new_in(parent).map_err(failed)?;
            io::copy(&mut source, staged.file()).map_err(failed)?;
            match options.mode {
                CopyMode::Overwrite => staged.commit(&target).map_err(failed),
                CopyMode::Create => staged
                    .commit_new(&target)
                    .map_err(|e| created_error(&to, e)),
            }
        })
        .await
    }
}

/// `range` of a file larger than [`HASHED_BYTES`], read as it is sent.
fn stream_file(file: File, range: Range<u64>) -> BoxStream<'static, Result<Bytes>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let open = async move {
        let mut file = tokio::fs::File::from_std(file);
        file.seek(io::SeekFrom::Start(range.start)).await?;
        let body = file.take(range.end - range.start);
        Ok::<_, io::Error>(tokio_util::io::ReaderStream::new(body))
    };
    stream::once(open).try_flatten().map_err(generic).boxed()
}

/// A multipart upload into a directory: the parts are written at their offsets in one temp
/// file beside the target, renamed into place (synced) on completion.
#[derive(Debug)]
struct Upload {
    location: Path,
    path: PathBuf,
    staged: Arc<Mutex<Option<durable::Staged>>>,
    /// Bytes of the parts handed over so far: the next part's offset.
    written: u64,
}

#[async_trait::async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let offset = self.written;
        self.written += data.content_length() as u64;
        let staged = self.staged.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut staged = staged.lock().expect("an upload's lock is never poisoned");
                let Some(staged) = staged.as_mut() else {
                    return Err(generic(io::Error::other("the upload has ended")));
                };
                let mut at = offset;
                for chunk in data.iter() {
                    staged.file().write_all_at(chunk, at).map_err(generic)?;
                    at += chunk.len() as u64;
                }
                Ok(())
            })
            .await
            .map_err(|source| Error::JoinError { source })?
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let staged = self.staged.clone();
        let (location, path) = (self.location.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let staged = staged
                .lock()
                .expect("an upload's lock is never poisoned")
                .take();
            let staged = staged.ok_or_else(|| generic(io::Error::other("the upload has ended")))?;
            staged.commit(&path).map_err(|e| error(&location, e))?;
            let metadata = std::fs::metadata(&path).map_err(|e| error(&location, e))?;
            let e_tag = if metadata.len() <= HASHED_BYTES {
                e_tag([std::fs::read(&path)
                    .map_err(|e| error(&location, e))?
                    .as_slice()])
            } else {
                identity_tag(&metadata)
            };
            Ok(PutResult {
                e_tag: Some(e_tag),
                version: None,
                extensions: Default::default(),
            })
        })
        .await
        .map_err(|source| Error::JoinError { source })?
    }

    async fn abort(&mut self) -> Result<()> {
        // Dropping the temp file removes it.
        self.staged
            .lock()
            .expect("an upload's lock is never poisoned")
            .take();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use object_store::{GetRange, ObjectStoreExt, UpdateVersion};

    use super::*;
    use crate::storage::objects::Objects;

    fn version(done: &PutResult) -> UpdateVersion {
        UpdateVersion {
            e_tag: done.e_tag.clone(),
            version: None,
        }
    }

    /// What every implementation of the layer must do, as S3 does it.
    async fn contract(store: &dyn ObjectStore) {
        let path = Path::from("b/ab/one.json");
        let put = |body: &'static str, mode: PutMode| {
            store.put_opts(&path, PutPayload::from_static(body.as_bytes()), mode.into())
        };
        let first = put("one", PutMode::Create).await.unwrap();
        let again = put("uno", PutMode::Create).await;
        assert!(
            matches!(again, Err(Error::AlreadyExists { .. })),
            "{again:?}"
        );
        let second = put("two", PutMode::Update(version(&first))).await.unwrap();
        assert_ne!(first.e_tag, second.e_tag);
        let stale = put("three", PutMode::Update(version(&first))).await;
        assert!(
            matches!(stale, Err(Error::Precondition { .. })),
            "{stale:?}"
        );
        let missing = store
            .put_opts(
                &Path::from("b/ab/none.json"),
                PutPayload::from_static(b"x"),
                PutMode::Update(version(&first)).into(),
            )
            .await;
        assert!(missing.is_err(), "an update of nothing is refused");

        let found = store.get(&path).await.unwrap();
        assert_eq!(found.meta.e_tag, second.e_tag);
        assert_eq!(found.bytes().await.unwrap(), "two");
        let unchanged = GetOptions {
            if_none_match: second.e_tag.clone(),
            ..GetOptions::default()
        };
        let unchanged = store.get_opts(&path, unchanged).await;
        assert!(matches!(unchanged, Err(Error::NotModified { .. })));
        let tail = GetOptions {
            range: Some(GetRange::Suffix(2)),
            ..GetOptions::default()
        };
        let tail = store.get_opts(&path, tail).await.unwrap();
        assert_eq!(tail.bytes().await.unwrap(), "wo");

        store
            .put(&Path::from("b/ab/two.json"), PutPayload::from_static(b"2"))
            .await
            .unwrap();
        store
            .put(&Path::from("c/x.json"), PutPayload::from_static(b"3"))
            .await
            .unwrap();
        let listed: Vec<String> = store
            .list(Some(&Path::from("b")))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed, ["b/ab/one.json", "b/ab/two.json"]);
        let top = store.list_with_delimiter(None).await.unwrap();
        let dirs: Vec<&str> = top.common_prefixes.iter().map(|p| p.as_ref()).collect();
        assert_eq!(dirs, ["b", "c"]);

        let copy = CopyOptions {
            mode: CopyMode::Create,
            ..CopyOptions::default()
        };
        let over = store
            .copy_opts(&Path::from("c/x.json"), &path, copy.clone())
            .await;
        assert!(matches!(over, Err(Error::AlreadyExists { .. })), "{over:?}");
        let copied = Path::from("c/y.json");
        store
            .copy_opts(&Path::from("c/x.json"), &copied, copy)
            .await
            .unwrap();
        assert_eq!(
            store.get(&copied).await.unwrap().bytes().await.unwrap(),
            "3"
        );

        store.delete(&path).await.unwrap();
        store.delete(&path).await.unwrap();
        assert!(matches!(
            store.get(&path).await,
            Err(Error::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn a_directory_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        contract(&Directory::new(dir.path())).await;
        // Nothing but the objects is left: no temp file, no lock file.
        let mut names: Vec<String> = walkdir(dir.path());
        names.sort();
        assert_eq!(names, ["b/ab/two.json", "c/x.json", "c/y.json"]);
    }

    #[tokio::test]
    async fn the_in_memory_store_keeps_the_same_contract() {
        contract(&object_store::memory::InMemory::new()).await;
    }

    fn walkdir(root: &FsPath) -> Vec<String> {
        Directory::new(root)
            .walk(None)
            .unwrap()
            .into_iter()
            .map(|meta| meta.location.to_string())
            .collect()
    }

    #[tokio::test]
    async fn a_large_object_streams_and_is_tagged_by_its_identity() {
        let dir = tempfile::tempdir().unwrap();
        let store = Directory::new(dir.path());
        let path = Path::from("cas/big");
        let mut upload = store.put_multipart(&path).await.unwrap();
        let part = vec![7u8; HASHED_BYTES as usize];
        for _ in 0..2 {
            upload.put_part(part.clone().into()).await.unwrap();
        }
        let done = upload.complete().await.unwrap();
        let found = store.get(&path).await.unwrap();
        assert_eq!(found.meta.size, 2 * HASHED_BYTES);
        assert_eq!(found.meta.e_tag, done.e_tag);
        let bytes = found.bytes().await.unwrap();
        assert!(bytes.len() == 2 * HASHED_BYTES as usize && bytes.iter().all(|&b| b == 7));
        let middle = GetOptions {
            range: Some(GetRange::Bounded(HASHED_BYTES - 1..HASHED_BYTES + 1)),
            ..GetOptions::default()
        };
        let middle = store.get_opts(&path, middle).await.unwrap();
        assert_eq!(middle.bytes().await.unwrap().as_ref(), [7, 7]);
        // Replaced: a new identity, so the old version no longer matches.
        let replaced = store
            .put_opts(
                &path,
                PutPayload::from(part.clone()),
                PutMode::Update(version(&done)).into(),
            )
            .await
            .unwrap();
        let stale = store
            .put_opts(
                &path,
                PutPayload::from(part),
                PutMode::Update(version(&done)).into(),
            )
            .await;
        assert!(matches!(stale, Err(Error::Precondition { .. })));
        assert_ne!(replaced.e_tag, done.e_tag);
    }

    /// Compare-and-swap loops from many handles (as from many processes) lose no increment.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn increments_from_many_handles_all_land() {
        const WRITERS: usize = 8;
        const EACH: usize = 20;
        let dir = tempfile::tempdir().unwrap();
        let writers = (0..WRITERS).map(|_| {
            let objects = Objects::directory(dir.path());
            tokio::spawn(async move {
                let mut done = 0;
                while done < EACH {
                    let found = objects.get("counter").await.unwrap();
                    let (n, version) = match found {
                        Some(f) => (
                            String::from_utf8(f.bytes.to_vec())
                                .unwrap()
                                .parse()
                                .unwrap(),
                            Some(f.version),
                        ),
                        None => (0u64, None),
                    };
                    let next = (n + 1).to_string().into_bytes();
                    if objects
                        .put_if("counter", next, version)
                        .await
                        .unwrap()
                        .is_some()
                    {
                        done += 1;
                    }
                }
            })
        });
        for writer in writers.collect::<Vec<_>>() {
            writer.await.unwrap();
        }
        let found = Objects::directory(dir.path()).get("counter").await.unwrap();
        assert_eq!(found.unwrap().bytes, (WRITERS * EACH).to_string());
    }
}
