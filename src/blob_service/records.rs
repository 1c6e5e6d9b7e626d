//! Where the Blob Service keeps its records: one JSON document per handle at
//! `<bucket>/handles/<handle[0..2]>/<handle>.json`, as a file under the storage root or as an
//! object (same name, same JSON) in the object store the nodes share.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::durable;
use crate::names::{Bucket, Handle};

use super::{Error, Record, Result};

/// Directory of a bucket's records, beside its versioned blobs and its content store.
pub const HANDLES_DIR: &str = "handles";

/// One record as found in storage.
pub type Found = (Bucket, Handle, Arc<Record>);

/// Durable records.
#[async_trait::async_trait]
pub trait RecordStore: Send + Sync + 'static {
    /// Every record (one that cannot be read is logged and left out).
    async fn load(&self) -> Result<Vec<Found>>;
    /// One record; `None` when there is none.
    async fn read(&self, bucket: &Bucket, handle: &Handle) -> Result<Option<Arc<Record>>>;
    /// Writes a record, durably.
    async fn write(&self, bucket: &Bucket, handle: &Handle, record: &Record) -> Result<()>;
    /// Removes a record (none is not an error).
    async fn remove(&self, bucket: &Bucket, handle: &Handle) -> Result<()>;
    /// Whether other nodes write here too: memory is then only a view, which a lookup that
    /// misses and every sweep check against storage.
    fn shared(&self) -> bool;
}

/// The name of a record below the storage root or the object prefix.
pub fn name(bucket: &Bucket, handle: &Handle) -> String {
    format!("{bucket}/{HANDLES_DIR}/{}/{handle}.json", handle.shard())
}

/// Parses a record stored under `file_name`, which must be its handle's.
fn parse(bytes: &[u8], file_name: Option<&str>) -> Result<(Handle, Arc<Record>), String> {
    let named = file_name
        .and_then(|name| name.strip_suffix(".json"))
        .unwrap_or_default();
    decode(bytes, named).map(|(handle, record)| (handle, Arc::new(record)))
}

/// Decodes a record stored under the handle `named`, refusing one that is damaged: it does
/// not parse, its handle is not canonical or not `named`, or its hash is not a content hash
/// (a name nothing could be read by).
pub fn decode(bytes: &[u8], named: &str) -> Result<(Handle, Record), String> {
    let record: Record =
        serde_json::from_slice(bytes).map_err(|e| format!("does not parse: {e}"))?;
    let handle = Handle::parse(&record.handle).ok_or("its handle is not canonical")?;
    if handle.as_str() != named {
        return Err("its name is not its handle".to_owned());
    }
    if record.content_hash().is_none() {
        return Err("its hash is not 64 lower-case hexadecimal characters".to_owned());
    }
    Ok((handle, record))
}

/// Records as files under the storage root, each replaced through [`durable::replace`].
pub struct RecordFiles {
    root: PathBuf,
}

impl RecordFiles {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, bucket: &Bucket, handle: &Handle) -> PathBuf {
        self.root.join(name(bucket, handle))
    }

    /// Reads every record, removing the temp files a crash left among them.
    fn load_blocking(root: &Path) -> io::Result<Vec<Found>> {
        let mut found = Vec::new();
        for bucket_dir in durable::subdirs(root)? {
            let handles = bucket_dir.join(HANDLES_DIR);
            let bucket = bucket_dir
                .file_name()
                .and_then(|n| Bucket::parse(&n.to_string_lossy()));
            let Some(bucket) = bucket.filter(|_| handles.is_dir()) else {
                continue;
            };
            for shard in durable::subdirs(&handles)? {
                durable::remove_temp_files(&shard)?;
                for entry in std::fs::read_dir(&shard)? {
                    let path = entry?.path();
                    let file_name = path.file_name().and_then(|n| n.to_str());
                    let parsed = std::fs::read(&path)
                        .map_err(|e| e.to_string())
                        .and_then(|bytes| parse(&bytes, file_name));
                    match parsed {
                        Ok((handle, record)) => found.push((bucket.clone(), handle, record)),
                        Err(e) => tracing::warn!(path = %path.display(), "record left out: {e}"),
                    }
                }
            }
        }
        Ok(found)
    }
}

fn io_error(path: impl std::fmt::Display, source: io::Error) -> Error {
    Error::Io {
        path: path.to_string(),
        source,
    }
}

#[async_trait::async_trait]
impl RecordStore for RecordFiles {
    async fn load(&self) -> Result<Vec<Found>> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || Self::load_blocking(&root))
            .await?
            .map_err(|source| io_error(self.root.display(), source))
    }

    async fn read(&self, bucket: &Bucket, handle: &Handle) -> Result<Option<Arc<Record>>> {
        let path = self.path(bucket, handle);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io_error(path.display(), source)),
        };
        let file_name = path.file_name().and_then(|n| n.to_str());
        Ok(parse(&bytes, file_name).ok().map(|(_, record)| record))
    }

    async fn write(&self, bucket: &Bucket, handle: &Handle, record: &Record) -> Result<()> {
        let path = self.path(bucket, handle);
        let bytes = serde_json::to_vec(record).expect("a record always serialises");
        let write_path = path.clone();
        tokio::task::spawn_blocking(move || durable::replace(&write_path, &bytes))
            .await?
            .map_err(|source| io_error(path.display(), source))
    }

    async fn remove(&self, bucket: &Bucket, handle: &Handle) -> Result<()> {
        let path = self.path(bucket, handle);
        let remove_path = path.clone();
        tokio::task::spawn_blocking(move || durable::remove(&remove_path))
            .await?
            .map(drop)
            .map_err(|source| io_error(path.display(), source))
    }

    fn shared(&self) -> bool {
        false
    }
}

/// Records as objects in the store the nodes share.
pub struct RecordObjects {
    store: Arc<dyn ObjectStore>,
    /// Prepended to every object name (`S3_PREFIX`).
    prefix: String,
}

impl RecordObjects {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self {
            store,
            prefix: prefix.to_owned(),
        }
    }

    fn path(&self, bucket: &Bucket, handle: &Handle) -> ObjectPath {
        ObjectPath::from(format!("{}{}", self.prefix, name(bucket, handle)))
    }

    async fn get(&self, path: &ObjectPath) -> Result<Option<Vec<u8>>> {
        let found = match self.store.get(path).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(object_error(path, e)),
        };
        let bytes = found.bytes().await.map_err(|e| object_error(path, e))?;
        Ok(Some(bytes.to_vec()))
    }
}

fn object_error(path: &ObjectPath, e: object_store::Error) -> Error {
    crate::metrics::object_store_error();
    io_error(path, io::Error::other(e))
}

#[async_trait::async_trait]
impl RecordStore for RecordObjects {
    async fn load(&self) -> Result<Vec<Found>> {
        let buckets = crate::s3::buckets(&*self.store, &self.prefix)
            .await
            .map_err(|e| object_error(&ObjectPath::from(self.prefix.as_str()), e))?;
        let mut found = Vec::new();
        for bucket in buckets {
            let handles = ObjectPath::from(format!("{}{bucket}/{HANDLES_DIR}/", self.prefix));
            let mut names = self.store.list(Some(&handles));
            while let Some(meta) = names.next().await {
                let location = meta.map_err(|e| object_error(&handles, e))?.location;
                let Some(bytes) = self.get(&location).await? else {
                    continue;
                };
                match parse(&bytes, location.filename()) {
                    Ok((handle, record)) => found.push((bucket.clone(), handle, record)),
                    Err(e) => tracing::warn!(path = %location, "record left out: {e}"),
                }
            }
        }
        Ok(found)
    }

    async fn read(&self, bucket: &Bucket, handle: &Handle) -> Result<Option<Arc<Record>>> {
        let path = self.path(bucket, handle);
        let Some(bytes) = self.get(&path).await? else {
            return Ok(None);
        };
        Ok(parse(&bytes, path.filename())
            .ok()
            .map(|(_, record)| record))
    }

    async fn write(&self, bucket: &Bucket, handle: &Handle, record: &Record) -> Result<()> {
        let path = self.path(bucket, handle);
        let bytes = serde_json::to_vec(record).expect("a record always serialises");
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map(drop)
            .map_err(|e| object_error(&path, e))
    }

    async fn remove(&self, bucket: &Bucket, handle: &Handle) -> Result<()> {
        let path = self.path(bucket, handle);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(object_error(&path, e)),
        }
    }

    fn shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(handle: &str, hash: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "handle": handle, "hash": hash, "size": 1, "contentType": "text/plain",
            "semantics": "s", "retentionPolicy": {"policy": "keepForever"},
            "created": 1, "uploader": "203.0.113.7"
        }))
        .unwrap()
    }

    #[test]
    fn records_naming_no_content_or_another_handle_are_damaged() {
        let (handle, hash) = ("ab".repeat(16), "cd".repeat(32));
        assert!(decode(&record(&handle, &hash), &handle).is_ok());
        for bad_hash in ["../../../outside/secret.bin", &"CD".repeat(32), "cd"] {
            let refused = decode(&record(&handle, bad_hash), &handle).unwrap_err();
            assert!(refused.contains("its hash"), "{bad_hash}: {refused}");
        }
        let other = "ef".repeat(16);
        assert!(decode(&record(&handle, &hash), &other).is_err());
        assert!(decode(&record(&"AB".repeat(16), &hash), &"AB".repeat(16)).is_err());
        assert!(decode(b"{", &handle).is_err());
    }
}
