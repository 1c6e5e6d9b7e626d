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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::UpdateVersion;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

// The list's name, at the top of the storage (a dot: never a bucket), is the layout's.
use crate::auth::Grant;
use crate::names::Bucket;
use crate::storage::layout::REVOCATIONS_FILE as FILE_NAME;
use crate::storage::objects::{Objects, Reread};

/// How often a server reads the list again: a revocation applies within about this long.
pub const POLL: Duration = Duration::from_secs(1);

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
    #[error("revocation list: {0}")]
    Store(#[from] crate::storage::objects::Error),
    #[error("revocation list {path} does not parse: {source}")]
    Corrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("revocation list: other revocations kept winning the write; try again")]
    Contended,
}

/// Where the list is kept: [`FILE_NAME`] at the top of the storage, a file under the storage
/// root or an object of the shared store.
#[derive(Clone)]
pub struct ListObject {
    objects: Objects,
}

impl ListObject {
    pub fn new(objects: Objects) -> Self {
        Self { objects }
    }

    fn parse(&self, bytes: Option<&[u8]>) -> Result<RevocationList, Error> {
        match bytes {
            None => Ok(RevocationList::default()),
            Some(bytes) => serde_json::from_slice(bytes).map_err(|source| Error::Corrupt {
                path: format!("{} {FILE_NAME}", self.objects.describe()),
                source,
            }),
        }
    }

    /// The list as stored now (empty when there is none), and its version.
    async fn read_found(&self) -> Result<(RevocationList, Option<UpdateVersion>), Error> {
        let found = self.objects.get(FILE_NAME).await?;
        let list = self.parse(found.as_ref().map(|f| f.bytes.as_ref()))?;
        Ok((list, found.map(|f| f.version)))
    }

    /// The list as stored now (empty when there is none).
    pub async fn read(&self) -> Result<RevocationList, Error> {
        Ok(self.read_found().await?.0)
    }

    /// Changes the list with `change` and writes it back durably; returns the list written.
    /// The write is conditional on the list read, so two revocations at once, from any
    /// process or node, both land.
    pub async fn update(
        &self,
        change: impl Fn(&mut RevocationList) + Send + 'static,
    ) -> Result<RevocationList, Error> {
        for _ in 0..MAX_ATTEMPTS {
            let (mut list, version) = self.read_found().await?;
            change(&mut list);
            if self
                .objects
                .put_if(FILE_NAME, list.to_json(), version)
                .await?
                .is_some()
            {
                return Ok(list);
            }
        }
        Err(Error::Contended)
    }
}

/// The list a server applies, read again every [`POLL`]; connections wait on it to end when
/// their token is revoked.
#[derive(Clone)]
pub struct Revocations {
    place: ListObject,
    current: watch::Sender<Arc<RevocationList>>,
    /// The version of the list in force, to read it again only when it changed.
    seen: Arc<Mutex<Option<UpdateVersion>>>,
}

impl Revocations {
    /// Reads the list once: a server that cannot know what is revoked does not start.
    pub async fn load(place: ListObject) -> Result<Self, Error> {
        let (list, version) = place.read_found().await?;
        Ok(Self {
            place,
            current: watch::Sender::new(Arc::new(list)),
            seen: Arc::new(Mutex::new(version)),
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

    /// Reads the list again and applies it when it changed: a conditional read, so an unchanged
    /// list costs no body. A list that cannot be read or does not parse is logged, and the last
    /// one read stays in force.
    pub async fn refresh(&self) {
        let seen = self.seen.lock().expect("never poisoned").clone();
        let read = match self.place.objects.reread(FILE_NAME, seen.as_ref()).await {
            Ok(Reread::Unchanged) => return,
            Ok(Reread::Missing) => Ok((RevocationList::default(), None)),
            Ok(Reread::Changed(found)) => self
                .place
                .parse(Some(&found.bytes))
                .map(|list| (list, Some(found.version))),
            Err(e) => Err(e.into()),
        };
        match read {
            Ok((list, version)) => {
                *self.seen.lock().expect("never poisoned") = version;
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
        let place = ListObject::new(Objects::directory(dir.path()));
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

    #[tokio::test]
    async fn revocations_at_once_all_land() {
        let dir = tempfile::tempdir().unwrap();
        // Each its own handle, as `blobs revoke` beside a server is its own process.
        let writers = (0..8).map(|i| {
            let place = ListObject::new(Objects::directory(dir.path()));
            tokio::spawn(async move {
                place
                    .update(move |list| list.revoke_token(&format!("t{i}"), 1))
                    .await
            })
        });
        for writer in writers.collect::<Vec<_>>() {
            writer.await.unwrap().unwrap();
        }
        let list = ListObject::new(Objects::directory(dir.path()))
            .read()
            .await
            .unwrap();
        assert_eq!(list.tokens.len(), 8, "{list:?}");
    }
}
