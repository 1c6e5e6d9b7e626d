//! The one state handle every connection shares.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ipnet::IpNet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::revocation::Revocations;
use crate::auth::signed_url::{DirectUrls, SignedUrls};
use crate::auth::{Grant, Keys};
use crate::blob_service::BlobService;
use crate::config::Config;
use crate::edge::limits::{Backlog, Backlogs, Cap, Connections};
use crate::names::ContentHash;
use crate::names::{Bucket, Ref};
use crate::serve::backend::Backend;
use crate::serve::changes::Changes;
use crate::storage::content::ContentStore;
use crate::storage::content::{ByteStream, Stored};
use crate::storage::quota::{AdmitError, Change, Quota, Refusal};
use crate::storage::store::{Edit, SetOutcome, SetRequest, Store};

/// Shared server state. Cloning is cheap: it is one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
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
    content_limits: ContentLimits,
    changes: Changes,
    connections: Arc<Connections>,
    /// Engine.IO sessions waiting to authenticate (`MAX_PENDING_HANDSHAKES`).
    handshakes: Arc<Cap>,
    backlogs: Backlogs,
    /// Bytes of large replies a socket may have waiting for its client, and its queue's
    /// length in packets.
    send_buffer: (u64, usize),
    /// How long a socket's client may read nothing while replies wait before it is dropped.
    stall_timeout: Duration,
    /// Largest blob in bytes (HTTP body; Socket.IO `data` is its base64).
    max_data_bytes: usize,
    /// Keep-alive interval of idle event streams.
    stream_keep_alive: Duration,
    /// Most refs one socket may watch.
    max_watched_refs: usize,
    /// What one socket may send.
    event_limits: EventLimits,
    trusted_proxies: Vec<IpNet>,
    /// Whether token holders see who uploaded a Blob Service record (`EXPOSE_UPLOADER_IP`).
    expose_uploader_ip: bool,
    /// Tasks that run client events; shutdown waits for them so every write that started is
    /// finished and acknowledged before the sockets close.
    tasks: TaskTracker,
    /// Cancelled once shutdown begins: new events are refused with an `{ error }` ack, and no
    /// reply waits any more for a client that does not read.
    closing: CancellationToken,
    /// The bearer token `/metrics` requires; `None`: no metrics.
    metrics_token: Option<String>,
    /// Counts Socket.IO sockets by transport (polling, websocket) and open TCP connections,
    /// for the metrics; set once the Socket.IO server exists.
    census: OnceLock<Census>,
}

type Census = Box<dyn Fn() -> (usize, usize, usize) + Send + Sync>;

/// What one Socket.IO socket may send.
#[derive(Clone, Copy, Debug)]
pub struct EventLimits {
    /// Sustained events per second.
    pub per_second: u32,
    /// Events at once above the sustained rate; also how many may wait to run.
    pub burst: u32,
    /// Bytes of arguments the events waiting to run may hold.
    pub pending_bytes: u64,
}

impl EventLimits {
    /// Events that may wait to run: a whole burst (at least 64).
    pub fn pending(&self) -> usize {
        (self.burst as usize).max(64)
    }
}

/// Bytes a blob's file takes beyond its data, at most: what a write reserves against the quota
/// before it knows its file (the version, times and address).
const BLOB_FILE_OVERHEAD: u64 = 160;

/// Why a write to the versioned store was not made.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Past the bucket's quota, or the free-space reserve: HTTP 507, or the Socket.IO
    /// `{ error }`.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The store failed (or the bucket could not be measured): logged, and masked toward
    /// clients.
    #[error(transparent)]
    Store(#[from] crate::storage::store::Error),
}

impl From<AdmitError> for CommitError {
    fn from(error: AdmitError) -> Self {
        match error {
            AdmitError::Refused(refusal) => CommitError::Refused(refusal),
            AdmitError::Measure(cause) => CommitError::Store(crate::storage::store::Error::Io {
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

/// Limits and addresses of the content-addressed store.
#[derive(Clone, Debug)]
pub struct ContentLimits {
    /// Largest content, in bytes.
    pub max_bytes: u64,
    /// Content larger than this is redirected when a `blob-request` allows it.
    pub redirect_bytes: u64,
    /// Origin of direct URLs; `None`: from the client's `Host`.
    pub public_url: Option<String>,
}

impl AppState {
    /// The state of a server on `backend`, whose records `service` serves.
    pub fn new(
        config: &Config,
        keys: Keys,
        revocations: Revocations,
        backend: Backend,
        service: BlobService,
        secret: &str,
    ) -> Self {
        let signed = SignedUrls::new(secret, config.direct_url_ttl);
        let direct = backend.direct.unwrap_or_else(|| Arc::new(signed.clone()));
        Self(Arc::new(Inner {
            keys,
            revocations,
            store: backend.blobs,
            content: backend.content,
            service,
            quota: backend.quota,
            direct,
            signed,
            content_limits: ContentLimits {
                max_bytes: config.content_max_bytes,
                redirect_bytes: config.content_redirect_bytes,
                public_url: config.public_url.clone(),
            },
            changes: Changes::new(config.max_watches),
            connections: Connections::new(config.max_connections, config.max_connections_per_ip),
            handshakes: Cap::new(config.max_pending_handshakes),
            backlogs: Backlogs::new(config.max_connect_bytes),
            send_buffer: (
                config.send_buffer_bytes,
                config.send_buffer_packets as usize,
            ),
            stall_timeout: config.ping_timeout,
            max_data_bytes: config.max_data_bytes,
            event_limits: EventLimits {
                per_second: config.events_per_second,
                burst: config.event_burst,
                pending_bytes: config.max_pending_bytes,
            },
            max_watched_refs: config.max_watched_refs,
            stream_keep_alive: config.stream_keep_alive,
            trusted_proxies: config.trusted_proxies.clone(),
            expose_uploader_ip: config.expose_uploader_ip,
            tasks: TaskTracker::new(),
            closing: CancellationToken::new(),
            metrics_token: config.metrics_token.clone().filter(|t| !t.is_empty()),
            census: OnceLock::new(),
        }))
    }

    /// What `token` grants, unless it is refused: not valid (see [`Keys::verify`]) or revoked.
    pub fn verify(&self, token: &str) -> Option<Grant> {
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
    pub async fn commit(
        &self,
        bucket: &Bucket,
        r: &Ref,
        request: SetRequest,
    ) -> Result<SetOutcome, CommitError> {
        let quota = &self.0.quota;
        let (hold, account) = match &request.edit {
            Edit::Put(data) => {
                let needs = data.as_ref().map_or(0, String::len) as u64 + BLOB_FILE_OVERHEAD;
                let hold = quota.admit(bucket, needs, 0).await?;
                (Some(hold), None)
            }
            Edit::Delete => (None, quota.account_for_delete(bucket).await),
        };
        let started = std::time::Instant::now();
        let outcome = self.0.store.set(bucket, r, request).await;
        crate::metrics::commit(started.elapsed());
        if let Ok(SetOutcome::Committed { grown, .. }) = &outcome {
            let account = hold.as_deref().map(|h| h.account()).or(account.as_deref());
            if let Some(account) = account {
                account.apply(Change::blobs(*grown));
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
        let limit = self.0.content_limits.max_bytes;
        let stored =
            crate::storage::content::put(self.content(), bucket, expected, body, limit).await?;
        if stored.created {
            hold.account().apply(Change::content(stored.size as i64));
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
        let max = self.0.content_limits.max_bytes;
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
            hold.account().apply(Change::content(size as i64));
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

    pub fn content_limits(&self) -> &ContentLimits {
        &self.0.content_limits
    }

    pub fn changes(&self) -> &Changes {
        &self.0.changes
    }

    pub fn connections(&self) -> &Arc<Connections> {
        &self.0.connections
    }

    pub fn handshakes(&self) -> &Arc<Cap> {
        &self.0.handshakes
    }

    pub fn backlogs(&self) -> &Backlogs {
        &self.0.backlogs
    }

    pub fn stall_timeout(&self) -> Duration {
        self.0.stall_timeout
    }

    /// A new socket's [`Backlog`].
    pub fn backlog(&self) -> Arc<Backlog> {
        let (bytes, packets) = self.0.send_buffer;
        Backlog::new(bytes, packets)
    }

    pub fn max_data_bytes(&self) -> usize {
        self.0.max_data_bytes
    }

    /// Longest Socket.IO `data`: the base64 length of [`AppState::max_data_bytes`].
    pub fn max_data_chars(&self) -> usize {
        self.0.max_data_bytes.div_ceil(3) * 4
    }

    pub fn stream_keep_alive(&self) -> Duration {
        self.0.stream_keep_alive
    }

    pub fn max_watched_refs(&self) -> usize {
        self.0.max_watched_refs
    }

    pub fn event_limits(&self) -> EventLimits {
        self.0.event_limits
    }

    pub fn trusted_proxies(&self) -> &[IpNet] {
        &self.0.trusted_proxies
    }

    /// Whether the records token holders read show the uploader's address.
    pub fn expose_uploader_ip(&self) -> bool {
        self.0.expose_uploader_ip
    }

    pub fn tasks(&self) -> &TaskTracker {
        &self.0.tasks
    }

    pub fn is_closing(&self) -> bool {
        self.0.closing.is_cancelled()
    }

    /// Resolves once shutdown begins.
    pub async fn closing(&self) {
        self.0.closing.cancelled().await;
    }

    /// Cancelled once shutdown begins, for work that checks it as it goes.
    pub fn closing_token(&self) -> CancellationToken {
        self.0.closing.clone()
    }

    /// Sets how sockets and connections are counted for the metrics.
    pub fn set_census(&self, census: impl Fn() -> (usize, usize, usize) + Send + Sync + 'static) {
        self.0.census.set(Box::new(census)).ok();
    }

    /// The bearer token `/metrics` requires; `None`: metrics are off.
    pub fn metrics_token(&self) -> Option<&str> {
        self.0.metrics_token.as_deref()
    }

    /// What exists now, for the metrics' gauges.
    pub fn census(&self) -> crate::metrics::Census {
        let (polling, websocket, connections) = self.0.census.get().map_or((0, 0, 0), |c| c());
        crate::metrics::Census {
            sockets: (polling, websocket),
            connections,
            records: self.0.service.record_count(),
        }
    }

    /// Refuses new events and waits until every event already accepted has been answered.
    pub async fn drain(&self) {
        self.0.closing.cancel();
        self.0.tasks.close();
        self.0.tasks.wait().await;
    }
}
