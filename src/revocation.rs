//! Revoked tokens: a list kept in the store, so every node reads the same one.
//!
//! Two kinds of entry, written by `blobs revoke`:
//! - a bucket and a time: every token of that bucket issued (`iat`) before it is refused; a
//!   token without `iat` counts as issued at the epoch, so it is always covered;
//! - a token id (`jti`): that one token is refused (`token` gives every token a random id, or
//!   the one `--jti` names).
//!
//! The list is one small JSON file a person can read, `<STORAGE>/.revoked.json` (or the object
//! `<S3_PREFIX>.revoked.json`); no bucket can have that name. Each server reads it at start
//! (and refuses to start when it cannot) and again every [`POLL`], and then ends the sockets
//! and streams whose token it now refuses.
//!
//! `iat` counts whole seconds, so a cut-off is rounded up to the next second: a token issued
//! in the cut-off's second is revoked too. `revoke --before now` returns only once that second
//! has passed, so a token minted after it returns is never caught.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::auth::Grant;
use crate::names::Bucket;

/// How often a server reads the list again: a revocation applies within about this long.
pub const POLL: Duration = Duration::from_secs(1);

/// Name of the list, at the top of the storage (a dot: never a bucket).
pub const FILE_NAME: &str = ".revoked.json";

/// Rounds of read, change and conditional write one revocation may take while other
/// revocations keep winning.
const MAX_ATTEMPTS: usize = 16;

/// The revocations, as stored: `{"buckets":{"<bucket>":<seconds>},"tokens":{"<jti>":<seconds>}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// Per bucket: tokens issued before this time (seconds since the epoch) are refused.
    #[serde(default)]
    pub buckets: BTreeMap<String, u64>,
    /// Revoked token ids, with the time each was revoked (seconds since the epoch).
    #[serde(default)]
    pub tokens: BTreeMap<String, u64>,
}

impl RevocationList {
    /// Whether this list refuses the token `grant` came from.
    pub fn revokes(&self, grant: &Grant) -> bool {
        if grant
            .id
            .as_ref()
            .is_some_and(|id| self.tokens.contains_key(id))
        {
            return true;
        }
        self.buckets
            .get(grant.bucket.as_str())
            .is_some_and(|&before| grant.issued.unwrap_or(0) < before)
    }

    /// Revokes every token of `bucket` issued before `before` (seconds); a later cut-off only
    /// widens what an earlier one revoked.
    pub fn revoke_bucket(&mut self, bucket: &Bucket, before: u64) {
        self.merge(RevocationList {
            buckets: [(bucket.as_str().to_owned(), before)].into(),
            tokens: Default::default(),
        });
    }

    /// Revokes the token whose `jti` is `id`, at `now` (seconds).
    pub fn revoke_token(&mut self, id: &str, now: u64) {
        self.tokens.entry(id.to_owned()).or_insert(now);
    }

    /// Adds every revocation of `other`: the union revokes what either did.
    pub fn merge(&mut self, other: RevocationList) {
        for (bucket, before) in other.buckets {
            let entry = self.buckets.entry(bucket).or_default();
            *entry = (*entry).max(before);
        }
        for (id, at) in other.tokens {
            self.tokens.entry(id).or_insert(at);
        }
    }

    /// The list as stored: indented JSON a person can read.
    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("the list always serialises");
        bytes.push(b'\n');
        bytes
    }
}

/// Why the list could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("revocation list {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("revocation list {path} does not parse: {source}")]
    Corrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("revocation list: object store: {0}")]
    Object(#[from] object_store::Error),
    #[error("revocation list: other revocations kept winning the write; try again")]
    Contended,
}

/// Where the list is kept: a file under the storage root, or an object of the shared store.
#[derive(Clone)]
pub enum Place {
    File(PathBuf),
    Object {
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
    },
}

/// What was read: the bytes (none when there is no list yet) and the object's version.
struct Read {
    bytes: Option<Vec<u8>>,
    version: Option<UpdateVersion>,
}

impl Place {
    /// The list of a file store rooted at `storage`.
    pub fn file(storage: &Path) -> Self {
        Place::File(storage.join(FILE_NAME))
    }

    /// The list of an object store under `prefix`.
    pub fn object(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Place::Object {
            store,
            path: ObjectPath::from(format!("{prefix}{FILE_NAME}")),
        }
    }

    fn name(&self) -> String {
        match self {
            Place::File(path) => path.display().to_string(),
            Place::Object { path, .. } => path.to_string(),
        }
    }

    async fn read_raw(&self) -> Result<Read, Error> {
        match self {
            Place::File(path) => match tokio::fs::read(path).await {
                Ok(bytes) => Ok(Read {
                    bytes: Some(bytes),
                    version: None,
                }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Read {
                    bytes: None,
                    version: None,
                }),
                Err(source) => Err(Error::Io {
                    path: self.name(),
                    source,
                }),
            },
            Place::Object { store, path } => match store.get(path).await {
                Ok(found) => {
                    let version = UpdateVersion {
                        e_tag: found.meta.e_tag.clone(),
                        version: found.meta.version.clone(),
                    };
                    Ok(Read {
                        bytes: Some(found.bytes().await?.to_vec()),
                        version: Some(version),
                    })
                }
                Err(object_store::Error::NotFound { .. }) => Ok(Read {
                    bytes: None,
                    version: None,
                }),
                Err(e) => Err(e.into()),
            },
        }
    }

    fn parse(&self, bytes: Option<&[u8]>) -> Result<RevocationList, Error> {
        match bytes {
            None => Ok(RevocationList::default()),
            Some(bytes) => serde_json::from_slice(bytes).map_err(|source| Error::Corrupt {
                path: self.name(),
                source,
            }),
        }
    }

    /// The list as stored now (empty when there is none).
    pub async fn read(&self) -> Result<RevocationList, Error> {
        let read = self.read_raw().await?;
        self.parse(read.bytes.as_deref())
    }

    /// Changes the list with `change` and writes it back durably; returns the list written.
    /// On the object store the write is conditional, so two revocations at once both land.
    pub async fn update(
        &self,
        change: impl Fn(&mut RevocationList) + Send + 'static,
    ) -> Result<RevocationList, Error> {
        match self {
            Place::File(path) => {
                let path = path.clone();
                let name = self.name();
                let place = self.clone();
                tokio::task::spawn_blocking(move || {
                    let io_error = |source| Error::Io {
                        path: name.clone(),
                        source,
                    };
                    // Two revocations at once on one machine take turns.
                    let _lock = crate::durable::lock_exclusive(&path.with_extension("lock"))
                        .map_err(io_error)?;
                    let bytes = match std::fs::read(&path) {
                        Ok(bytes) => Some(bytes),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                        Err(e) => return Err(io_error(e)),
                    };
                    let mut list = place.parse(bytes.as_deref())?;
                    change(&mut list);
                    crate::durable::replace(&path, &list.to_json()).map_err(io_error)?;
                    Ok(list)
                })
                .await
                .map_err(|e| Error::Io {
                    path: self.name(),
                    source: io::Error::other(e),
                })?
            }
            Place::Object { store, path } => {
                for _ in 0..MAX_ATTEMPTS {
                    let read = self.read_raw().await?;
                    let mut list = self.parse(read.bytes.as_deref())?;
                    change(&mut list);
                    let mode = match read.version {
                        Some(version) => PutMode::Update(version),
                        None => PutMode::Create,
                    };
                    let payload = PutPayload::from(list.to_json());
                    match store.put_opts(path, payload, mode.into()).await {
                        Ok(_) => return Ok(list),
                        Err(object_store::Error::Precondition { .. })
                        | Err(object_store::Error::AlreadyExists { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(Error::Contended)
            }
        }
    }
}

/// The list a server applies, read again every [`POLL`]; connections wait on it to end when
/// their token is revoked.
#[derive(Clone)]
pub struct Revocations {
    place: Place,
    current: watch::Sender<Arc<RevocationList>>,
}

impl Revocations {
    /// Reads the list once: a server that cannot know what is revoked does not start.
    pub async fn load(place: Place) -> Result<Self, Error> {
        let list = place.read().await?;
        Ok(Self {
            place,
            current: watch::Sender::new(Arc::new(list)),
        })
    }

    /// Whether the token `grant` came from is revoked now.
    pub fn revokes(&self, grant: &Grant) -> bool {
        self.current.borrow().revokes(grant)
    }

    /// Resolves once the token `grant` came from is revoked (never, if it never is).
    pub fn revoked(&self, grant: &Grant) -> impl Future<Output = ()> + Send + use<> {
        let mut list = self.current.subscribe();
        let grant = grant.clone();
        async move {
            if list.wait_for(|list| list.revokes(&grant)).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Reads the list again and applies it when it changed. A list that cannot be read or
    /// does not parse is logged, and the last one read stays in force.
    pub async fn refresh(&self) {
        match self.place.read().await {
            Ok(list) => {
                self.current.send_if_modified(|current| {
                    let changed = **current != list;
                    if changed {
                        tracing::info!(
                            buckets = list.buckets.len(),
                            tokens = list.tokens.len(),
                            "revocation list changed"
                        );
                        *current = Arc::new(list);
                    }
                    changed
                });
            }
            Err(e) => tracing::error!("{e}; the last list read stays in force"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(bucket: &str, issued: Option<u64>, id: Option<&str>) -> Grant {
        Grant {
            bucket: Bucket::parse(bucket).unwrap(),
            read_only: false,
            expires: None,
            issued,
            id: id.map(str::to_owned),
        }
    }

    #[test]
    fn a_bucket_cut_off_revokes_what_was_issued_before_it() {
        let mut list = RevocationList::default();
        list.revoke_bucket(&Bucket::parse("photos").unwrap(), 1_000);
        assert!(list.revokes(&grant("photos", Some(999), None)));
        assert!(
            list.revokes(&grant("photos", None, None)),
            "no iat: issued at 0"
        );
        assert!(!list.revokes(&grant("photos", Some(1_000), None)));
        assert!(!list.revokes(&grant("other", Some(1), None)));
        // An earlier cut-off never narrows a later one.
        list.revoke_bucket(&Bucket::parse("photos").unwrap(), 10);
        assert!(list.revokes(&grant("photos", Some(999), None)));
    }

    #[test]
    fn a_token_id_revokes_that_token_only() {
        let mut list = RevocationList::default();
        list.revoke_token("abc", 5);
        assert!(list.revokes(&grant("any", Some(10), Some("abc"))));
        assert!(!list.revokes(&grant("any", Some(10), Some("abd"))));
        assert!(!list.revokes(&grant("any", Some(10), None)));
        let json = String::from_utf8(list.to_json()).unwrap();
        let read: RevocationList = serde_json::from_str(&json).unwrap();
        assert_eq!(read, list);
    }

    #[tokio::test]
    async fn the_file_list_is_read_written_and_watched() {
        let dir = tempfile::tempdir().unwrap();
        let place = Place::file(dir.path());
        assert_eq!(place.read().await.unwrap(), RevocationList::default());
        let revocations = Revocations::load(place.clone()).await.unwrap();
        let victim = grant("photos", Some(5), Some("t1"));
        let revoked = revocations.revoked(&victim);
        place
            .update(|list| list.revoke_token("t1", 9))
            .await
            .unwrap();
        assert!(!revocations.revokes(&victim), "applied on refresh only");
        revocations.refresh().await;
        assert!(revocations.revokes(&victim));
        revoked.await;
        // A corrupt list keeps the last one in force.
        std::fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        revocations.refresh().await;
        assert!(revocations.revokes(&victim));
        assert!(place.read().await.is_err());
        assert!(Revocations::load(place).await.is_err());
    }
}
