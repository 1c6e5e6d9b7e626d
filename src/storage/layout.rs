//! The storage layout as names: every file of a store by its name relative to the storage
//! root (`<bucket>/<ref[0..2]>/<ref>.json`, `<bucket>/cas/...`), under a directory or under
//! the object store's prefix. The two backends use the same names, so copying between
//! them is copying names. The admin commands work on stores this way, and the metrics measure
//! the content store by its listing.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;

use crate::config::{Config, StoreKind};
use crate::names::{Bucket, ContentHash, Handle, Ref};
use crate::storage::durable;
use crate::storage::objects::{Objects, OpenError};
use crate::storage::store::CASE_CONFLICT;

/// Directory of a bucket's content store, beside its versioned blobs' shard directories (`cas`
/// in both backends, as stores written by earlier versions have it).
pub const CONTENT_DIR: &str = "cas";

/// Suffix of the marker beside a content that the Blob Service brought in.
pub const MARKER_SUFFIX: &str = ".service";

/// Directory, beside the shards of an object store's content, of what clients put to
/// presigned upload URLs.
pub const STAGING_DIR: &str = "incoming";

/// The object of a content: `<prefix><bucket>/cas/<hash[0..2]>/<hash>`.
pub fn content_path(prefix: &str, bucket: &Bucket, hash: &ContentHash) -> object_store::path::Path {
    object_store::path::Path::from(format!(
        "{prefix}{bucket}/{CONTENT_DIR}/{}/{hash}",
        hash.shard()
    ))
}

/// Where a presigned upload of a content lands, until `blob-uploaded` verifies it.
pub fn staging_path(prefix: &str, bucket: &Bucket, hash: &ContentHash) -> object_store::path::Path {
    object_store::path::Path::from(format!(
        "{prefix}{bucket}/{CONTENT_DIR}/{STAGING_DIR}/{hash}"
    ))
}

/// Directory of a bucket's records, beside its versioned blobs and its content store.
pub const HANDLES_DIR: &str = "handles";

/// The name of a record below the storage root or the object prefix.
pub fn record_name(bucket: &Bucket, handle: &Handle) -> String {
    format!("{bucket}/{HANDLES_DIR}/{}/{handle}.json", handle.shard())
}

/// The revocation list, at the top of the storage.
pub const REVOCATIONS_FILE: &str = ".revoked.json";

/// A store's names, in the object layer: the file store's root directory, or the object
/// store under its prefix.
#[derive(Clone)]
pub struct Tree {
    objects: Objects,
    /// The file store's journal as it was when the tree was opened: blobs whose files a
    /// running server has not written yet, by name (empty elsewhere).
    journaled: Arc<HashMap<String, Bytes>>,
}

/// A failure reading or writing one name.
pub type TreeError = crate::storage::objects::Error;

/// One stored name and its size.
#[derive(Clone, Debug)]
pub struct Entry {
    pub key: String,
    pub size: u64,
}

/// What a name is in the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Blob(Bucket, Ref),
    Content(Bucket, ContentHash),
    /// The Blob Service's marker beside a content.
    Marker(Bucket, ContentHash),
    Record(Bucket, Handle),
    Revocations,
    /// A temp file an interrupted write left (`.tmp-…`).
    Temp,
    /// A `<ref>.json.backup` the original left.
    Backup,
    /// A blob file the original stored under its ref as the client sent it, in upper or mixed
    /// case (`AB/AB….json`): the blob `<ref>` once moved to its lower-case name, which opening
    /// the file store does, and copies do on the way.
    CasedBlob(Bucket, Ref),
    /// A blob file moved aside, `<ref>.json.case-conflict-<n>`, because another spelling of
    /// its ref had a newer version: nothing reads it.
    CaseConflict,
    /// The server's own bookkeeping: the journal, lock files, the readiness probe, direct
    /// uploads not yet confirmed. Never copied.
    Internal,
    /// Not a name of the layout.
    Unknown,
}

/// Classifies a name relative to the storage root.
pub fn classify(key: &str) -> Kind {
    let parts: Vec<&str> = key.split('/').collect();
    let file = parts.last().copied().unwrap_or_default();
    if durable::is_temp_name(file) {
        return Kind::Temp;
    }
    if key == REVOCATIONS_FILE {
        return Kind::Revocations;
    }
    if key.starts_with('.') {
        return Kind::Internal;
    }
    let Some(bucket) = parts.first().and_then(|b| Bucket::parse(b)) else {
        return Kind::Unknown;
    };
    match parts[1..] {
        [shard, name] if shard.len() == 2 => {
            if let Some(stem) = name.strip_suffix(".json.backup")
                && Ref::parse(stem).is_some()
            {
                return Kind::Backup;
            }
            if let Some((stem, n)) = name.split_once(CASE_CONFLICT)
                && stem.strip_suffix(".json").and_then(Ref::parse).is_some()
                && n.parse::<u32>().is_ok()
            {
                return Kind::CaseConflict;
            }
            let stem = name.strip_suffix(".json").unwrap_or_default();
            match Ref::parse(stem) {
                Some(r) if r.shard() == shard && r.as_str() == stem => Kind::Blob(bucket, r),
                Some(r) if r.shard().eq_ignore_ascii_case(shard) => Kind::CasedBlob(bucket, r),
                _ => Kind::Unknown,
            }
        }
        [CONTENT_DIR, STAGING_DIR, _] => Kind::Internal,
        [CONTENT_DIR, shard, name] => {
            let (stem, marker) = match name.strip_suffix(MARKER_SUFFIX) {
                Some(stem) => (stem, true),
                None => (name, false),
            };
            match ContentHash::parse(stem) {
                Some(hash) if hash.shard() == shard && hash.as_str() == stem => {
                    if marker {
                        Kind::Marker(bucket, hash)
                    } else {
                        Kind::Content(bucket, hash)
                    }
                }
                _ => Kind::Unknown,
            }
        }
        [HANDLES_DIR, shard, name] => match name.strip_suffix(".json").and_then(Handle::parse) {
            Some(handle) if handle.shard() == shard => Kind::Record(bucket, handle),
            _ => Kind::Unknown,
        },
        _ => Kind::Unknown,
    }
}

/// The name of a kind of entry (inverse of [`classify`] for the data kinds).
pub fn key_of(kind: &Kind) -> Option<String> {
    Some(match kind {
        Kind::Blob(bucket, r) => format!("{bucket}/{}/{r}.json", r.shard()),
        // The object store's names, which are the files' too, with no prefix.
        Kind::Content(bucket, hash) => content_path("", bucket, hash).to_string(),
        Kind::Marker(bucket, hash) => format!("{}{MARKER_SUFFIX}", content_path("", bucket, hash)),
        Kind::Record(bucket, handle) => record_name(bucket, handle),
        Kind::Revocations => REVOCATIONS_FILE.to_owned(),
        _ => return None,
    })
}

impl Tree {
    /// The names of `objects`.
    pub fn new(objects: Objects) -> Self {
        Self {
            objects,
            journaled: Arc::default(),
        }
    }

    /// The file store's names under `root`. Writes are durable once [`Tree::sync`] returns.
    pub fn files(root: &Path) -> Self {
        Self::new(Objects::batched_directory(root))
    }

    /// The store of `kind`, with the settings of `config`; an object store must pass the
    /// compare-and-swap probe.
    pub async fn configured(config: &Config, kind: StoreKind) -> Result<Self, OpenError> {
        let tree = Self::new(Objects::configured(config, kind, true).await?);
        Ok(match kind {
            StoreKind::Fs => tree.with_journal(&config.storage)?,
            StoreKind::S3 => tree,
        })
    }

    /// This tree with the writes the file store's journal under `root` holds over its files:
    /// a running server writes a blob's file only at its next checkpoint, and a copy must see
    /// every write acknowledged before it began.
    fn with_journal(mut self, root: &Path) -> Result<Self, OpenError> {
        let journaled = crate::storage::store::journaled(root).map_err(OpenError::Journal)?;
        let journaled = journaled.into_iter().map(|(k, v)| (k, Bytes::from(v)));
        self.journaled = Arc::new(journaled.collect());
        Ok(self)
    }

    /// The names under `<name>/`, as names relative to it.
    pub fn within(&self, name: &str) -> Self {
        let inside = format!("{name}/");
        let journaled = self.journaled.iter().filter_map(|(key, bytes)| {
            Some((key.strip_prefix(&inside)?.to_owned(), bytes.clone()))
        });
        Self {
            objects: self.objects.within(name),
            journaled: Arc::new(journaled.collect()),
        }
    }

    /// Contents and their bytes, from a listing (no byte is read).
    pub async fn measure_content(&self) -> Result<(u64, u64), TreeError> {
        let mut found = (0, 0);
        for entry in self.list().await? {
            if let Kind::Content(..) = classify(&entry.key) {
                found.0 += 1;
                found.1 += entry.size;
            }
        }
        Ok(found)
    }

    /// Whether this is the file store (markers are empty files there, JSON objects in an
    /// object store).
    pub fn is_files(&self) -> bool {
        self.objects.is_directory()
    }

    /// Where this tree is, for messages.
    pub fn describe(&self) -> String {
        self.objects.describe()
    }

    /// Every name stored, in name order.
    pub async fn list(&self) -> Result<Vec<Entry>, TreeError> {
        let mut entries: BTreeMap<String, u64> = self
            .objects
            .list("")
            .map_ok(|(key, meta)| (key, meta.size))
            .try_collect()
            .await?;
        for (key, bytes) in self.journaled.iter() {
            entries.entry(key.clone()).or_insert(bytes.len() as u64);
        }
        Ok(entries
            .into_iter()
            .map(|(key, size)| Entry { key, size })
            .collect())
    }

    /// The bytes stored under `key`, or `None`; for a blob the journal holds, the newer of its
    /// file and its journal record.
    pub async fn read(&self, key: &str) -> Result<Option<Bytes>, TreeError> {
        let stored = self.objects.get(key).await?.map(|found| found.bytes);
        let Some(journaled) = self.journaled.get(key) else {
            return Ok(stored);
        };
        let version = |bytes: &Bytes| crate::storage::store::decode(bytes).map(|b| b.version).ok();
        Ok(match stored {
            Some(file) if version(&file) >= version(journaled) => Some(file),
            _ => Some(journaled.clone()),
        })
    }

    /// Replaces `key` with `bytes` atomically. In a directory the file is not synced: call
    /// [`Tree::sync`] once every file is written.
    pub async fn write(&self, key: &str, bytes: Bytes) -> Result<(), TreeError> {
        self.objects.put(key, bytes).await
    }

    /// Removes `key`; no error when it is not there.
    pub async fn remove(&self, key: &str) -> Result<(), TreeError> {
        self.objects.delete(key).await
    }

    /// Makes every write so far durable (one `syncfs` for a directory; an object store's
    /// writes already are).
    pub async fn sync(&self) -> Result<(), TreeError> {
        self.objects.sync().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_the_layout_are_classified() {
        let r = "ab".repeat(32);
        let hash = "cd".repeat(32);
        let handle = "ef".repeat(16);
        let bucket = Bucket::parse("photos").unwrap();
        let cases = [
            (
                format!("photos/ab/{r}.json"),
                Kind::Blob(bucket.clone(), Ref::parse(&r).unwrap()),
            ),
            (
                format!("photos/cas/cd/{hash}"),
                Kind::Content(bucket.clone(), ContentHash::parse(&hash).unwrap()),
            ),
            (
                format!("photos/cas/cd/{hash}.service"),
                Kind::Marker(bucket.clone(), ContentHash::parse(&hash).unwrap()),
            ),
            (
                format!("photos/handles/ef/{handle}.json"),
                Kind::Record(bucket.clone(), Handle::parse(&handle).unwrap()),
            ),
            (format!("photos/ab/{r}.json.backup"), Kind::Backup),
            ("photos/ab/.tmp-x1".to_owned(), Kind::Temp),
            (".journal/1.wal".to_owned(), Kind::Internal),
            (".lock".to_owned(), Kind::Internal),
            (".revoked.json".to_owned(), Kind::Revocations),
            (format!("photos/cas/incoming/{hash}"), Kind::Internal),
            (format!("photos/xy/{r}.json"), Kind::Unknown),
            (
                format!("photos/AB/{}.json", r.to_uppercase()),
                Kind::CasedBlob(bucket.clone(), Ref::parse(&r).unwrap()),
            ),
            (
                format!("photos/ab/{}.json", r.to_uppercase()),
                Kind::CasedBlob(bucket.clone(), Ref::parse(&r).unwrap()),
            ),
            (
                format!("photos/aB/{}.json.backup", r.to_uppercase()),
                Kind::Backup,
            ),
            (
                format!("photos/ab/{r}.json.case-conflict-2"),
                Kind::CaseConflict,
            ),
            (format!("photos/ab/{r}.json.case-conflict-x"), Kind::Unknown),
            (
                format!("photos/cd/{}.json", r.to_uppercase()),
                Kind::Unknown,
            ),
            ("photos/notes.txt".to_owned(), Kind::Unknown),
        ];
        for (key, kind) in cases {
            assert_eq!(classify(&key), kind, "{key}");
            if let Some(back) = key_of(&kind) {
                assert_eq!(back, key);
            }
        }
    }
}
