//! The one state handle every connection shares.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::revocation::Revocations;
use crate::auth::signed_url::{DirectUrls, SignedUrls};
use crate::auth::{Grant, Keys};
use crate::blob_service::BlobService;
use crate::config::Config;
use crate::edge::admission::Admission;
use crate::names::ContentHash;
use crate::names::{Bucket, Ref};
use crate::serve::backend::Backend;
use crate::serve::changes::Changes;
use crate::storage::content::ContentStore;
use crate::storage::content::{ByteStream, Stored};
use crate::storage::quota::{AdmitError, Quota, Refusal, UsageChange};
use crate::storage::store::{Edit, MAX_LAST_WRITE_LEN, SetOutcome, SetRequest, Store};

/// Shared server state: what every request and socket shares, named. Cloning is cheap: it is
/// one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    /// The settings, as read at start; every plain setting is read from here.
    config: Arc<Config>,
    keys: Keys,
    revocations: Revocations,
    store: Arc<dyn Store>,
    content: Arc<dyn ContentStore>,
    service: BlobService,
    /// The buckets' quotas and usage, and the free-space reserve: every write passes it.
    quota: Arc<Quota>,
    /// Hands out direct transfer URLs for content.
    direct: Arc<dyn DirectUrls>,
    /// Checks the URLs this server signed itself.
    signed: SignedUrls,
    changes: Changes,
    /// What a connection may hold and send.
    admission: Admission,
    /// Tasks that run client events; shutdown waits for them so every write that started is
    /// finished and acknowledged before the sockets close.
    tasks: TaskTracker,
    /// Events read from every socket so far: shutdown waits until it stops growing.
    events_received: AtomicU64,
    /// The one shutdown signal, cancelled once shutdown begins: new events are refused with an
    /// `{ error }` ack, no reply waits any more for a client that does not read, HTTP streams
    /// end, and the background tasks stop.
    shutdown: CancellationToken,
    /// Counts Socket.IO sockets by transport and open TCP connections, for the metrics; set
    /// once the Socket.IO server exists.
    census: OnceLock<Box<dyn Fn() -> SocketCensus + Send + Sync>>,
}

/// This node's sockets by transport, and its open TCP connections.
#[derive(Clone, Copy, Debug, Default)]
pub struct SocketCensus {
    pub polling: usize,
    pub websocket: usize,
    pub connections: usize,
}

/// Bytes a blob's file takes beyond its data, at most: what a write reserves against the quota
/// before it knows its file (the version, times and address). A write with a write id reserves
/// one entry of the blob's writers more (the others were in the file it replaces).
const BLOB_FILE_OVERHEAD: u64 = 160;

/// Why a write to the versioned store was not made.
#[derive(Debug, thiserror::Error)]
pub enum SetBlobError {
    /// Past the bucket's quota, or the free-space reserve: HTTP 507, or the Socket.IO
    /// `{ error }`.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The store failed (or the bucket could not be measured): logged, and masked toward
    /// clients.
    #[error(transparent)]
    Store(#[from] crate::storage::store::Error),
}

impl From<AdmitError> for SetBlobError {
    fn from(error: AdmitError) -> Self {
        match error {
            AdmitError::Refused(refusal) => SetBlobError::Refused(refusal),
            AdmitError::Measure(cause) => SetBlobError::Store(crate::storage::store::Error::Io {
                path: "the bucket's listing".to_owned(),
                source: std::io::Error::other(cause),
            }),
        }
    }
}

/// What `blob-uploaded` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adopted {
    Yes,
    /// No intact content of that hash arrived, or none of at most this many bytes: all the
    /// bucket's quota has room for (`None`: the quota did not limit it).
    No(Option<u64>),
}

impl AppState {
    /// The state of a server on `backend`, whose records `service` serves.
    pub fn new(
        config: Arc<Config>,
        admission: Admission,
        keys: Keys,
        revocations: Revocations,
        backend: Backend,
        service: BlobService,
        secret: &str,
    ) -> Self {
        let signed = SignedUrls::new(secret, config.direct_url_ttl);
        let direct = backend.direct.unwrap_or_else(|| Arc::new(signed.clone()));
        let shutdown = CancellationToken::new();
        Self(Arc::new(Inner {
            keys,
            revocations,
            store: backend.blobs,
            content: backend.content,
            service,
            quota: backend.quota,
            direct,
            signed,
            changes: Changes::new(config.max_watches, shutdown.clone()),
            admission,
            tasks: TaskTracker::new(),
            events_received: AtomicU64::new(0),
            shutdown,
            census: OnceLock::new(),
            config,
        }))
    }

    /// The settings, as read at start.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// What `token` grants, unless it is refused: not valid (see [`Keys::verify`]) or revoked.
    pub fn authorize(&self, token: &str) -> Option<Grant> {
        self.0
            .keys
            .verify(token)
            .filter(|grant| !self.0.revocations.revokes(grant))
    }

    /// Resolves when the token of `grant` stops being accepted (it expires or is revoked):
    /// connections and streams opened with it end then.
    pub fn grant_ends(&self, grant: &Grant) -> impl Future<Output = ()> + Send + use<> {
        let expiry = grant.expiry();
        let revoked = self.0.revocations.revoked(grant);
        async move {
            tokio::select! {
                () = expiry => {}
                () = revoked => {}
            }
        }
    }

    pub fn revocations(&self) -> &Revocations {
        &self.0.revocations
    }

    pub fn store(&self) -> &dyn Store {
        &*self.0.store
    }

    /// A conditional write to the versioned store, both protocols' one way in: within the
    /// bucket's quota and the free-space reserve (a delete always passes), counted in the
    /// bucket's usage, and timed for the metrics.
    pub async fn set_blob(
        &self,
        bucket: &Bucket,
        r: &Ref,
        request: SetRequest,
    ) -> Result<SetOutcome, SetBlobError> {
        let quota = &self.0.quota;
        let (hold, account) = match &request.edit {
            Edit::Put(data) => {
                let writer = request.id.as_ref().map_or(0, |_| MAX_LAST_WRITE_LEN);
                let needs =
                    data.as_ref().map_or(0, String::len) as u64 + BLOB_FILE_OVERHEAD + writer;
                let hold = match quota.admit(bucket, needs, 0).await {
                    Ok(hold) => hold,
                    Err(refused) => {
                        // A write sent again once it committed is answered as committed, even
                        // when the bucket has filled up since.
                        if let Some(id) = &request.id
                            && let Some(blob) = self.0.store.get(bucket, r).await?
                            && let Some(last) = blob.committed(id)
                        {
                            return Ok(SetOutcome::Repeated {
                                version: last.version,
                            });
                        }
                        return Err(refused.into());
                    }
                };
                (Some(hold), None)
            }
            Edit::Delete => (None, quota.account_for_delete(bucket).await),
        };
        let started = std::time::Instant::now();
        let outcome = self.0.store.set(bucket, r, request).await;
        crate::metrics::blob_set(started.elapsed());
        if let Ok(SetOutcome::Committed { grown, .. }) = &outcome {
            let account = hold.as_deref().map(|h| h.account()).or(account.as_deref());
            if let Some(account) = account {
                account.apply(UsageChange::blobs(*grown));
            }
        }
        Ok(outcome?)
    }

    pub fn quota(&self) -> &Quota {
        &self.0.quota
    }

    /// Streams `body` into the bucket's content store ([`crate::storage::content::put`]) within the
    /// bucket's quota and the free-space reserve: a body that would pass either is cut off
    /// while it arrives, and nothing is stored.
    pub async fn put_content(
        &self,
        bucket: &Bucket,
        expected: Option<&ContentHash>,
        body: ByteStream<'_>,
    ) -> crate::storage::content::Result<Stored> {
        let hold = self.0.quota.admit(bucket, 0, 0).await?;
        let body = crate::storage::content::metered(body, &hold);
        let limit = self.0.config.content_max_bytes;
        let stored =
            crate::storage::content::put(self.content(), bucket, expected, body, limit).await?;
        if stored.created {
            hold.account()
                .apply(UsageChange::content(stored.size as i64));
        }
        Ok(stored)
    }

    /// `blob-uploaded`: takes in what arrived at the direct upload URL of `hash`
    /// ([`crate::storage::content::adopt`]), within the bucket's quota and the free-space reserve.
    pub async fn adopt_content(
        &self,
        bucket: &Bucket,
        hash: &ContentHash,
    ) -> Result<Adopted, crate::storage::content::Error> {
        let store = self.content();
        let max = self.0.config.content_max_bytes;
        if store.size(bucket, hash).await?.is_some() {
            // Stored already (this server's own direct URLs store through `put_content`).
            let adopted = crate::storage::content::adopt(store, bucket, hash, max).await?;
            return Ok(if adopted {
                Adopted::Yes
            } else {
                Adopted::No(None)
            });
        }
        let hold = self.0.quota.admit(bucket, 0, 0).await?;
        // A full bucket, or a disk at its reserve, refuses before anything is read.
        hold.grow(1)?;
        let room = hold.room().saturating_add(1);
        let limit = max.min(room);
        if !crate::storage::content::adopt(store, bucket, hash, limit).await? {
            return Ok(Adopted::No((limit < max).then_some(limit)));
        }
        if let Some(size) = store.size(bucket, hash).await? {
            hold.account().apply(UsageChange::content(size as i64));
        }
        Ok(Adopted::Yes)
    }

    pub fn content(&self) -> &dyn ContentStore {
        &*self.0.content
    }

    pub fn service(&self) -> &BlobService {
        &self.0.service
    }

    pub fn direct(&self) -> &dyn DirectUrls {
        &*self.0.direct
    }

    pub fn signed(&self) -> &SignedUrls {
        &self.0.signed
    }

    pub fn changes(&self) -> &Changes {
        &self.0.changes
    }

    /// Longest Socket.IO `data`: the base64 length of `MAX_DATA_BYTES`.
    pub fn max_data_chars(&self) -> usize {
        self.0.config.max_data_bytes.div_ceil(3) * 4
    }

    pub fn admission(&self) -> &Admission {
        &self.0.admission
    }

    /// The one shutdown signal: cancelled once shutdown begins.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.0.shutdown
    }

    pub fn tasks(&self) -> &TaskTracker {
        &self.0.tasks
    }

    /// Sets how sockets and connections are counted for the metrics.
    pub fn set_census(&self, census: impl Fn() -> SocketCensus + Send + Sync + 'static) {
        self.0.census.set(Box::new(census)).ok();
    }

    /// The bearer token `/metrics` requires; `None`: metrics are off.
    pub fn metrics_token(&self) -> Option<&str> {
        self.0
            .config
            .metrics_token
            .as_deref()
            .filter(|t| !t.is_empty())
    }

    /// What exists now, for the metrics' gauges.
    pub fn census(&self) -> crate::metrics::Census {
        let sockets = self
            .0
            .census
            .get()
            .map_or_else(SocketCensus::default, |c| c());
        crate::metrics::Census {
            sockets: (sockets.polling, sockets.websocket),
            connections: sockets.connections,
            records: self.0.service.record_count(),
        }
    }

    /// Counts one event read from a socket, for [`AppState::drain`].
    pub fn event_received(&self) {
        self.0.events_received.fetch_add(1, Ordering::Relaxed);
    }

    /// Refuses new events and waits until every event already accepted has been answered, then
    /// until no event has arrived for [`QUIET`] (at most `grace`): the events a client sent
    /// just before the shutdown, still in the socket's buffers when it began, are read and
    /// refused with an answer instead of cut off unread when the transports close.
    pub async fn drain(&self, grace: Duration) {
        self.0.shutdown.cancel();
        self.0.tasks.close();
        let _ = tokio::time::timeout(grace, async {
            self.0.tasks.wait().await;
            loop {
                let seen = self.0.events_received.load(Ordering::Relaxed);
                tokio::time::sleep(QUIET).await;
                if self.0.events_received.load(Ordering::Relaxed) == seen {
                    break;
                }
            }
        })
        .await;
        // Events that arrived within the quiet period were refused at once, yet their answers
        // are tracked like any other.
        self.0.tasks.wait().await;
    }
}

/// How long no event may arrive before the transports close at shutdown.
pub const QUIET: Duration = Duration::from_millis(200);
