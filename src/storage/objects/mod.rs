//! The object layer: one interface for storage by name, with two implementations, so the
//! stores above it are written once for files and for an object store.
//!
//! The interface is `object_store`'s [`ObjectStore`] trait, addressed through [`Objects`] by
//! the layout's names (see [`crate::storage::layout`]):
//! - [`Directory`]: files under a root, with compare-and-swap of its own (hash ETags,
//!   `RENAME_NOREPLACE`, a directory `flock`);
//! - [`Normalized`]: the S3 client, wrapped so that a conditional write means the same on every
//!   S3 implementation, after [`probe()`] proved at start that the store can compare-and-swap.
//!
//! The records, the revocations, every [`crate::storage::layout::Tree`] and the object-store blobs and
//! content sit on it. The file store's blobs and content stay beside it (their journal and
//! verified reads are the files' own), under the same names.
//!
//! What S3 implementations are seen to do with a conditional `PUT` (`docs/SCALING.md` lists
//! them by store):
//! - **ETag quoting.** S3 returns ETags quoted (`"…"`) and compares `If-Match` either way. Ceph's
//!   RADOS Gateway before 17 compares `If-Match` with the stored ETag *without* its quotes, so a
//!   quoted current ETag is refused (412) every time. The probe finds out which form the store
//!   takes, and [`Normalized`] sends that one.
//! - **An ambiguous answer to the loser of a race.** RGW answers the loser of two racing
//!   conditional `PUT`s 500 in most races (nothing written); AWS documents 409
//!   `ConditionalRequestConflict`; and the client retries a 5xx, so a write that was applied but
//!   answered 5xx comes back from its retry as 412. None of these tells whether *this* write
//!   landed. [`Normalized`] settles each by a fresh read (a `HEAD`): the object carries this
//!   write's id (the write landed), or another's (it lost: 412), or still the ETag the write
//!   expected (nothing happened: the write is sent again). A caller sees success or a lost race,
//!   never an error a retry would have settled. The id is a random `x-amz-meta-blobs-write` per
//!   conditional write, not the bytes: two clients writing the same data on the same version in
//!   the same millisecond store the same bytes, and only one of them won.
//! - **`If-None-Match: *` on create** is honoured by every store the probe lets start.

mod dir;
mod normalized;
mod probe;

pub use dir::Directory;
pub use normalized::Normalized;
pub use probe::{ProbeError, probe};

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutPayload, UpdateVersion,
};

/// The object layer as the stores above it use it: one [`ObjectStore`] (a [`Directory`], or
/// the S3 client [`Normalized`]) and the prefix of every name, addressed by the layout's names
/// (`<bucket>/<ref[0..2]>/<ref>.json`, see [`crate::storage::layout`]). "Not there" and "lost the race"
/// are answers here, not errors.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    /// Prepended to every name (`S3_PREFIX`; empty in a directory).
    prefix: String,
    /// The root, when the objects are files under it.
    root: Option<PathBuf>,
}

/// Why the configured objects could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("cannot read the file store's journal: {0}")]
    Journal(#[source] std::io::Error),
}

/// An object read whole, with the version a conditional write names to replace it.
#[derive(Clone, Debug)]
pub struct Found {
    pub bytes: Bytes,
    pub version: UpdateVersion,
}

/// An object read again, given the version read last.
#[derive(Debug)]
pub enum Reread {
    Missing,
    /// Still the version read last: no byte was sent.
    Unchanged,
    Changed(Found),
}

/// A failure of the store on one name.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {source}")]
pub struct Error {
    pub key: String,
    #[source]
    pub source: object_store::Error,
}

impl Objects {
    /// Objects as files under `root`, each write durable when it returns.
    pub fn directory(root: impl Into<PathBuf>) -> Self {
        Self::files(Directory::new(root))
    }

    /// Objects as files under `root`, whose plain writes are durable only once [`Objects::sync`]
    /// returns: for copying many.
    pub fn batched_directory(root: impl Into<PathBuf>) -> Self {
        Self::files(Directory::batched(root))
    }

    fn files(directory: Directory) -> Self {
        let root = directory.root().to_owned();
        Self {
            store: Arc::new(directory),
            prefix: String::new(),
            root: Some(root),
        }
    }

    /// The objects of the store of `kind` with the settings of `config`: the one place where
    /// files and an object store part ways. A directory's plain writes are `batched` when
    /// asked (see [`Objects::batched_directory`]).
    pub async fn configured(
        config: &crate::config::Config,
        kind: crate::config::StoreKind,
        batched: bool,
    ) -> Result<Self, OpenError> {
        Ok(match kind {
            crate::config::StoreKind::Fs if batched => Self::batched_directory(&config.storage),
            crate::config::StoreKind::Fs => Self::directory(&config.storage),
            crate::config::StoreKind::S3 => {
                Self::remote(
                    Arc::new(crate::storage::s3::from_config(config)?),
                    &config.s3_prefix,
                )
                .await?
            }
        })
    }

    /// The S3 client of `STORE=s3`, proved able to compare-and-swap (the probe writes and
    /// removes one object under `<prefix>.probe/`), wrapped so conditional writes mean the same
    /// on every store.
    pub async fn remote(raw: Arc<dyn ObjectStore>, prefix: &str) -> Result<Self, ProbeError> {
        let quirks = probe(raw.as_ref(), prefix).await?;
        Ok(Self::over(Arc::new(Normalized::new(raw, quirks)), prefix))
    }

    /// Objects of `store` under `prefix`, taken as they are (no probe).
    pub fn over(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self {
            store,
            prefix: prefix.to_owned(),
            root: None,
        }
    }

    /// The same objects, under `<prefix><name>/` (a directory: `<root>/<name>`).
    pub fn within(&self, name: &str) -> Self {
        match &self.root {
            Some(root) => Self::directory(root.join(name)),
            None => Self::over(self.store.clone(), &format!("{}{name}/", self.prefix)),
        }
    }

    /// The store itself, for what this handle does not wrap (streams, multipart uploads).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The store's name of `key`.
    pub fn path(&self, key: &str) -> Path {
        Path::from(format!("{}{key}", self.prefix))
    }

    /// The key of a name the store listed (`None` outside the prefix).
    pub fn key<'a>(&self, location: &'a Path) -> Option<&'a str> {
        location.as_ref().strip_prefix(self.prefix.as_str())
    }

    /// Whether these are files under a directory (only this machine's processes write them)
    /// rather than objects other nodes write too.
    pub fn is_directory(&self) -> bool {
        self.root.is_some()
    }

    /// Where the objects are, for messages.
    pub fn describe(&self) -> String {
        match &self.root {
            Some(root) => root.display().to_string(),
            None => format!("the object store (prefix {:?})", self.prefix),
        }
    }

    /// The error of a failure on `key`, counted when the store is remote.
    fn failed(&self, key: &str) -> impl Fn(object_store::Error) -> Error + Send + use<> {
        let (remote, key) = (!self.is_directory(), key.to_owned());
        move |source| {
            if remote {
                crate::metrics::object_store_error();
            }
            Error {
                key: key.clone(),
                source,
            }
        }
    }

    /// The store's name of the "directory" `under` (a key ending in `/`, or `""`: the top).
    fn listing_root(&self, under: &str) -> Option<Path> {
        let top = format!("{}{under}", self.prefix);
        let top = top.trim_end_matches('/');
        (!top.is_empty()).then(|| Path::from(top))
    }

    /// The object at `key`, or `None`.
    pub async fn get(&self, key: &str) -> Result<Option<Found>, Error> {
        match self.reread(key, None).await? {
            Reread::Changed(found) => Ok(Some(found)),
            Reread::Missing | Reread::Unchanged => Ok(None),
        }
    }

    /// The object at `key` unless it is still at `known` (a conditional `GET`: an unchanged
    /// object costs no body).
    pub async fn reread(&self, key: &str, known: Option<&UpdateVersion>) -> Result<Reread, Error> {
        let options = GetOptions {
            if_none_match: known.and_then(|v| v.e_tag.clone()),
            ..GetOptions::default()
        };
        let got = match self.store.get_opts(&self.path(key), options).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(Reread::Missing),
            Err(object_store::Error::NotModified { .. }) => return Ok(Reread::Unchanged),
            Err(e) => return Err(self.failed(key)(e)),
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        match got.bytes().await {
            Ok(bytes) => Ok(Reread::Changed(Found { bytes, version })),
            Err(object_store::Error::NotFound { .. }) => Ok(Reread::Missing),
            Err(e) => Err(self.failed(key)(e)),
        }
    }

    /// Stores `bytes` at `key`, whatever is there.
    pub async fn put(&self, key: &str, bytes: impl Into<PutPayload>) -> Result<(), Error> {
        self.store
            .put(&self.path(key), bytes.into())
            .await
            .map(drop)
            .map_err(self.failed(key))
    }

    /// Stores `bytes` at `key` only if it is still at `expected` (`None`: only if there is
    /// nothing there). The new version, or `None` when another write got there first.
    pub async fn put_if(
        &self,
        key: &str,
        bytes: impl Into<PutPayload>,
        expected: Option<UpdateVersion>,
    ) -> Result<Option<UpdateVersion>, Error> {
        let mode = match expected {
            Some(version) => PutMode::Update(version),
            None => PutMode::Create,
        };
        match self
            .store
            .put_opts(&self.path(key), bytes.into(), mode.into())
            .await
        {
            Ok(done) => Ok(Some(UpdateVersion {
                e_tag: done.e_tag,
                version: done.version,
            })),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Ok(None),
            Err(e) => Err(self.failed(key)(e)),
        }
    }

    /// Removes `key`; nothing there is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed(key)(e)),
        }
    }

    /// Every object under `under` (a key ending in `/`, or `""` for all), with its key, in
    /// name order.
    pub fn list(&self, under: &str) -> BoxStream<'static, Result<(String, ObjectMeta), Error>> {
        let prefix = self.prefix.clone();
        self.store
            .list(self.listing_root(under).as_ref())
            .map_err(self.failed(under))
            .try_filter_map(move |meta| {
                let key = meta.location.as_ref().strip_prefix(prefix.as_str());
                let found = key.map(str::to_owned).map(|key| (key, meta));
                std::future::ready(Ok(found))
            })
            .boxed()
    }

    /// The names directly under `under` that have objects below them (the buckets, at the
    /// top).
    pub async fn dirs(&self, under: &str) -> Result<Vec<String>, Error> {
        let listed = self
            .store
            .list_with_delimiter(self.listing_root(under).as_ref())
            .await
            .map_err(self.failed(under))?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect())
    }

    /// Makes every write so far durable: one `syncfs` for a directory (whose batched writes
    /// are not synced one by one); an object store's writes already are.
    pub async fn sync(&self) -> Result<(), Error> {
        let Some(root) = self.root.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || crate::storage::durable::sync_fs(&root))
            .await
            .map_err(|source| object_store::Error::JoinError { source })
            .and_then(|synced| synced.map_err(dir::generic))
            .map_err(self.failed(""))
    }
}

/// How a store departs from S3 in conditional requests, as the probe found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quirks {
    /// `If-Match` must carry the ETag without its quotes (Ceph RGW before 17).
    pub unquoted_if_match: bool,
}

/// The metadata (`x-amz-meta-blobs-write`) naming the conditional write that stored an object:
/// a random id per write, so a fresh read tells this write from another that stored the same
/// bytes (two clients writing the same data on the same version in the same millisecond).
pub(crate) fn write_id() -> object_store::Attribute {
    object_store::Attribute::Metadata("blobs-write".into())
}

/// An ETag without the quotes around it (and without a weak `W/` mark), as Ceph 16 compares it.
fn unquoted(e_tag: &str) -> &str {
    let e_tag = e_tag.strip_prefix("W/").unwrap_or(e_tag);
    e_tag
        .strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .unwrap_or(e_tag)
}

/// Whether two ETags name the same version, quoted or not.
fn same_e_tag(a: &str, b: &str) -> bool {
    unquoted(a) == unquoted(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_taken_off_an_e_tag() {
        assert_eq!(unquoted("\"abc\""), "abc");
        assert_eq!(unquoted("W/\"abc\""), "abc");
        assert_eq!(unquoted("abc"), "abc");
        assert_eq!(unquoted("\""), "\"");
        assert!(same_e_tag("\"abc\"", "abc"));
        assert!(!same_e_tag("\"abc\"", "\"abd\""));
    }
}
