//! The Blob Service (the ActyxOS Blob Service API): uploads with a meaning (`semantics`) and
//! a lifetime (`retentionPolicy`), named by a handle, stored once in the bucket's content
//! store, and announced on the bucket's metadata stream. It stands on storage and, across
//! nodes, on `cluster`; it never imports a transport (`http`, `protocol`) or `serve`.
//!
//! Each upload is a record, one JSON document per handle at
//! `<bucket>/handles/<handle[0..2]>/<handle>.json`, as a file or as an object ([`record_store`]);
//! every record is also kept in memory (loaded at start) for listing and for the reference
//! checks of the retention sweep. With several nodes ([`order_lock`]), that memory follows the
//! other nodes' records through Redis, a handle it does not know yet is looked up in storage,
//! and each sweep first catches up with storage. An expired record is gone for readers at
//! once; the sweep deletes expired records, then the content no live record refers to any
//! more, if the service brought it in (content a shared flow also stored stays).
//!
//! Storing an upload's content and its record, and removing content the sweep found
//! unreferenced, happen under the content's lock, so a sweep never removes bytes an upload of
//! the same content is committing.

mod index;
pub mod order_lock;
mod record;
pub mod record_store;
mod sweep;

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::names::{Bucket, Handle};
use crate::storage::content::{self, ContentStore, Incoming, Owner};
use crate::storage::locks::KeyedLocks;
use crate::storage::quota::{Account, Quota, UsageChange};

use crate::cluster::{Redis, relay};
use index::{Index, Records, created_after};
use order_lock::{Applied, Order, Relayed};
pub use record::{
    MAX_SEMANTICS, Metadata, Record, RetentionPolicy, STREAM_NAME, STREAM_SEMANTICS, Shown, Upload,
};
pub use record_store::RecordStore;
pub use sweep::Swept;

/// A storage failure; every variant is logged with its detail, and the client sees a 500
/// `Storage error`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The content store failed.
    #[error(transparent)]
    Content(#[from] content::Error),
    /// A record could not be read, written or removed.
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The store of the records failed.
    #[error(transparent)]
    Store(#[from] crate::storage::objects::Error),
    /// Redis, which orders new records across nodes, failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A storage task panicked.
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The Blob Service's records, over the bucket's content store. Cloning is cheap: the state
/// is shared.
#[derive(Clone)]
pub struct BlobService(Arc<Inner>);

struct Inner {
    storage: Arc<RecordStore>,
    content: Arc<dyn ContentStore>,
    /// A std mutex: held only to read or change the maps (and to announce a new record, so
    /// announcements come in `created` order), never across an await.
    records: Mutex<Records>,
    /// Every new record, in `created` order, for the metadata streams; bounded (see
    /// [`METADATA_STREAM_BACKLOG`]): a stream that falls further behind replays from the records.
    stream: broadcast::Sender<(Bucket, Arc<Record>)>,
    /// One lock per bucket, held by an upload from choosing its `created` until its record is
    /// announced. A tokio lock: the record's durable write happens under it. Taken after the
    /// content lock and before `records`, by uploads only. With several nodes, the bucket's
    /// lock in Redis does this instead.
    order: KeyedLocks<Bucket, ()>,
    /// The other nodes, once joined (`REDIS_URL`).
    nodes: OnceLock<Order>,
    /// Counts the records applied from the nodes' channel: an upload waits until its own
    /// record came back, so this node lists it from then on.
    applied: watch::Sender<u64>,
    /// Where this service's writes and removals are counted, once set (the server sets it
    /// before serving; unset, nothing is counted).
    quota: OnceLock<Arc<Quota>>,
}

/// New records of every bucket, in `created` order, as a metadata stream reads them.
pub type NewRecords = broadcast::Receiver<(Bucket, Arc<Record>)>;

/// New records a metadata stream may fall behind by before it replays from the records.
const METADATA_STREAM_BACKLOG: usize = 1024;

/// How long an upload waits for its record to come back from Redis (this node lists it from
/// then on; a message lost with a Redis connection arrives through the catch-up instead).
const APPLY_WAIT: Duration = Duration::from_secs(2);

/// Records younger than this are left to the other nodes' channel when a sweep catches up with
/// storage, so they reach the metadata streams in `created` order.
const SETTLE: Duration = Duration::from_secs(10);

impl BlobService {
    /// Loads every record from `storage`.
    pub async fn open(storage: Arc<RecordStore>, content: Arc<dyn ContentStore>) -> Result<Self> {
        let mut records = Records::default();
        for (bucket, handle, record) in storage.load().await? {
            records.insert(&bucket, handle, record);
        }
        Ok(Self(Arc::new(Inner {
            storage,
            content,
            records: Mutex::new(records),
            stream: broadcast::channel(METADATA_STREAM_BACKLOG).0,
            order: KeyedLocks::default(),
            nodes: OnceLock::new(),
            applied: watch::channel(0).0,
            quota: OnceLock::new(),
        })))
    }

    /// Counts this service's uploads and removals in `quota` from now on.
    pub fn count_in(&self, quota: Arc<Quota>) {
        self.0.quota.set(quota).ok();
    }

    /// The account of `bucket`, for a change about to be made (taken first, so the bucket's
    /// first measurement cannot see the change and have it counted again); `None` without a
    /// quota, or when the bucket cannot be measured (logged).
    async fn account(&self, bucket: &Bucket) -> Option<Arc<Account>> {
        self.0.quota.get()?.account_for_delete(bucket).await
    }

    /// Joins the other nodes on Redis: from now on this node's new records are ordered with
    /// theirs, and it follows their records, from `records_feed`, until `closing` resolves.
    /// `records_feed` must have been subscribed to [`order_lock::CHANNEL`] before this service
    /// was opened, so every record the others write is in what it loaded, or on the feed.
    pub fn join(
        &self,
        redis: &Redis,
        records_feed: relay::Subscription,
        closing: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        self.0.nodes.set(Order::new(redis)).ok();
        relay::listen(records_feed, closing, RelayedRecords(self.clone()));
    }

    /// Applies what a node (this one included) announced.
    fn apply(&self, applied: Applied) {
        {
            let mut records = self.records();
            match applied {
                Applied::Created(bucket, handle, record) => {
                    // Under the lock, so streams receive records in `created` order; once.
                    if records.insert(&bucket, handle, record.clone()) {
                        self.0.stream.send((bucket, record)).ok();
                    }
                }
                Applied::Removed(bucket, handle) => drop(records.remove(&bucket, &handle)),
            }
        }
        self.0.applied.send_modify(|count| *count += 1);
    }

    /// Brings memory up to what storage holds: records created before `settled` that memory
    /// lacks are added and streamed, oldest first (younger ones are on their way through the
    /// channel), and records memory had before this look that storage no longer has are
    /// dropped.
    async fn catch_up(&self, settled: u64) -> Result<()> {
        let known: HashSet<(Bucket, Handle)> =
            self.records().select(|_, _, _| true).into_iter().collect();
        let mut found = self.0.storage.load().await?;
        let present: HashSet<(&Bucket, &Handle)> = found.iter().map(|(b, h, _)| (b, h)).collect();
        let gone: Vec<&(Bucket, Handle)> = known
            .iter()
            .filter(|(bucket, handle)| !present.contains(&(bucket, handle)))
            .collect();
        let mut records = self.records();
        for (bucket, handle) in gone {
            records.remove(bucket, handle);
        }
        found.sort_by_key(|(_, _, record)| record.created);
        for (bucket, handle, record) in found {
            // A record this node knew and no longer has was removed while storage was read.
            let new = !known.contains(&(bucket.clone(), handle.clone()));
            if new && record.created < settled && records.insert(&bucket, handle, record.clone()) {
                self.0.stream.send((bucket, record)).ok();
            }
        }
        Ok(())
    }

    /// Records in the index, every bucket's.
    pub fn record_count(&self) -> usize {
        self.records()
            .buckets
            .values()
            .map(|index| index.by_handle.len())
            .sum()
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.0.records.lock().expect("record index lock poisoned")
    }

    /// Runs `f` on the bucket's records (none yet: an empty index, not kept).
    fn with_index<T>(&self, bucket: &Bucket, f: impl FnOnce(&Index) -> T) -> T {
        let records = self.records();
        f(records.buckets.get(bucket).unwrap_or(&Index::default()))
    }

    /// Commits received content and a new record for it, durably, announces the record on the
    /// metadata streams and hands it to `announce` (for the other protocols). Runs to the end
    /// even if the caller goes away.
    pub async fn upload(
        &self,
        bucket: &Bucket,
        incoming: Box<dyn Incoming>,
        upload: Upload,
        announce: impl FnOnce(&Arc<Record>) + Send + 'static,
    ) -> Result<Arc<Record>> {
        let this = self.clone();
        let bucket = bucket.clone();
        tokio::spawn(async move {
            let record = this.store_upload(bucket, incoming, upload).await?;
            announce(&record);
            Ok(record)
        })
        .await?
    }

    async fn store_upload(
        &self,
        bucket: Bucket,
        incoming: Box<dyn Incoming>,
        upload: Upload,
    ) -> Result<Arc<Record>> {
        let (hash, size) = (incoming.hash().clone(), incoming.size());
        let handle = Handle::new();
        let account = self.account(&bucket).await;
        let held = self.0.content.lock(&bucket, &hash).await;
        let (created, held) = incoming.commit(held, Owner::Service).await?;
        let record = Record {
            handle: handle.to_string(),
            hash: hash.to_string(),
            size,
            content_type: upload.content_type,
            file_name: upload.file_name,
            semantics: upload.semantics,
            retention_policy: upload.retention_policy,
            created: 0,
            uploader: upload.uploader,
        };
        let written = match self.0.nodes.get() {
            None => {
                self.write_in_order(&bucket, &handle, record, upload.now)
                    .await
            }
            Some(cluster) => {
                self.write_in_cluster_order(cluster, &bucket, &handle, record, upload.now)
                    .await
            }
        };
        match written {
            Ok(record) => {
                drop(held);
                if let Some(account) = account {
                    let content = if created { size as i64 } else { 0 };
                    account.apply(UsageChange::content(content));
                    account.apply(UsageChange::record(record_len(&record)));
                }
                Ok(record)
            }
            Err(e) => {
                // Nothing refers to content this upload brought in: take it out again.
                if created {
                    self.0.content.release(&bucket, &hash, held).await?;
                }
                Err(e)
            }
        }
    }

    /// Gives the record its `created`, writes it and announces it, one upload of the bucket
    /// at a time from `created` to the announcement: records reach the streams in `created`
    /// order.
    async fn write_in_order(
        &self,
        bucket: &Bucket,
        handle: &Handle,
        mut record: Record,
        now: u64,
    ) -> Result<Arc<Record>> {
        let _ordered = self.0.order.lock(bucket).await;
        record.created = {
            let mut records = self.records();
            records.newest = records.newest.saturating_add(1).max(now);
            records.newest
        };
        self.0.storage.write(bucket, handle, &record).await?;
        let record = Arc::new(record);
        let mut records = self.records();
        records.insert(bucket, handle.clone(), record.clone());
        // Under the lock, so streams receive records in `created` order.
        self.0.stream.send((bucket.clone(), record.clone())).ok();
        Ok(record)
    }

    /// [`BlobService::write_in_order`] across nodes: under the bucket's order lock in Redis,
    /// above the bucket's clock there, announced on the channel every node applies in order.
    async fn write_in_cluster_order(
        &self,
        cluster: &Order,
        bucket: &Bucket,
        handle: &Handle,
        mut record: Record,
        now: u64,
    ) -> Result<Arc<Record>> {
        let lock = cluster.lock(bucket).await?;
        let written = async {
            let clock = cluster.clock(bucket).await?;
            let newest = self.records().newest;
            record.created = now.max(clock.max(newest).saturating_add(1));
            self.0.storage.write(bucket, handle, &record).await?;
            let announced = cluster.announce(&lock, &record).await;
            if !matches!(announced, Ok(true)) {
                // Written but not announced (Redis failed, or the lock expired under a stalled
                // node): take the record back, so it never turns up out of order.
                if let Err(e) = self.0.storage.remove(bucket, handle).await {
                    tracing::error!(%bucket, %handle, "unannounced record left in storage: {e}");
                }
                announced?;
                return Err(Error::Io {
                    path: handle.to_string(),
                    source: io::Error::other(
                        "the bucket's order lock expired before the record was announced",
                    ),
                });
            }
            Ok::<_, Error>(record)
        }
        .await;
        if let Err(e) = cluster.unlock(lock).await {
            tracing::warn!(%bucket, "order lock not released (it expires): {e}");
        }
        let record = Arc::new(written?);
        let mut applied = self.0.applied.subscribe();
        let back = async {
            while self.with_index(bucket, |index| !index.by_handle.contains_key(handle)) {
                if applied.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(APPLY_WAIT, back).await.is_err() {
            tracing::warn!(%bucket, %handle, "record not back from Redis in time: listed once it arrives");
        }
        Ok(record)
    }

    /// The live record of `handle`. When other nodes share the records, storage is asked:
    /// a record another node has just written or deleted is read as it is now.
    pub async fn get(
        &self,
        bucket: &Bucket,
        handle: &Handle,
        now: u64,
    ) -> Result<Option<Arc<Record>>> {
        let record = if self.0.storage.shared() {
            self.0.storage.read(bucket, handle).await?
        } else {
            self.with_index(bucket, |index| index.by_handle.get(handle).cloned())
        };
        Ok(record.filter(|r| r.live(now)))
    }

    /// Live records, newest first, with this semantics (any when `None`), starting after the
    /// cursor `after` (`(created, handle)` of the last record of the previous page); at most
    /// `limit`, plus whether there are more.
    pub fn list(
        &self,
        bucket: &Bucket,
        semantics: Option<&str>,
        after: Option<&(u64, Handle)>,
        limit: usize,
        now: u64,
    ) -> (Vec<Arc<Record>>, bool) {
        self.with_index(bucket, |index| {
            let keys = index.by_time.iter().rev();
            let mut matching = keys
                .skip_while(|key| after.is_some_and(|a| *key >= a))
                .filter_map(|(_, handle)| index.by_handle.get(handle))
                .filter(|r| r.live(now) && semantics.is_none_or(|s| r.semantics == s));
            let page: Vec<_> = matching.by_ref().take(limit).cloned().collect();
            let more = matching.next().is_some();
            (page, more)
        })
    }

    /// Live records created after `since`, oldest first.
    pub fn created_after(&self, bucket: &Bucket, since: u64, now: u64) -> Vec<Arc<Record>> {
        self.with_index(bucket, |index| created_after(index, since, now))
    }

    /// The live records of `bucket` created after `since` (none without `since`), and every
    /// new record from then on: together, each record exactly once, in `created` order.
    pub fn follow(
        &self,
        bucket: &Bucket,
        since: Option<u64>,
        now: u64,
    ) -> (Vec<Arc<Record>>, NewRecords) {
        let records = self.records();
        // Subscribed under the lock that announcements are sent under: no gap, no overlap.
        let live = self.0.stream.subscribe();
        let replay = match (since, records.buckets.get(bucket)) {
            (Some(since), Some(index)) => created_after(index, since, now),
            _ => Vec::new(),
        };
        (replay, live)
    }

    /// Deletes a live record, then its content if nothing else refers to it; `false` when
    /// there is no such live record. Runs to the end even if the caller goes away.
    pub async fn delete(&self, bucket: &Bucket, handle: &Handle, now: u64) -> Result<bool> {
        let Some(record) = self.get(bucket, handle, now).await? else {
            return Ok(false);
        };
        let this = self.clone();
        let (bucket, handle) = (bucket.clone(), handle.clone());
        tokio::spawn(async move {
            this.remove_record(&bucket, &handle).await?;
            if let Some(hash) = record.content_hash() {
                this.collect(&bucket, &hash).await?;
            }
            Ok(true)
        })
        .await?
    }
}

/// Bytes of a record's stored JSON.
fn record_len(record: &Record) -> i64 {
    serde_json::to_vec(record).map_or(0, |json| json.len() as i64)
}

/// The nodes' channel of records, applied to one node's view.
struct RelayedRecords(BlobService);

#[async_trait::async_trait]
impl relay::Listener for RelayedRecords {
    async fn message(&mut self, text: &str) {
        match Relayed::parse(text) {
            Some(applied) => self.0.apply(applied),
            None => tracing::trace!("relayed record skipped"),
        }
    }

    async fn resubscribed(&mut self) {
        // Records announced while the subscription was away arrive from storage instead.
        if let Err(e) = self.0.catch_up(u64::MAX).await {
            tracing::error!("cannot catch up with the records after a Redis outage: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::ContentHash;

    fn metadata(json: &str) -> Result<(String, RetentionPolicy), String> {
        let parsed: Metadata = serde_json::from_str(json).map_err(|e| e.to_string())?;
        parsed.validate(1_000).map_err(|e| e.to_string())
    }

    #[test]
    fn metadata_is_checked() {
        assert_eq!(
            metadata(r#"{"semantics":"photos"}"#).unwrap(),
            ("photos".to_owned(), RetentionPolicy::KeepForever)
        );
        assert_eq!(
            metadata(
                r#"{"semantics":"p","retentionPolicy":{"policy":"keepUntilTime","until":2000}}"#
            )
            .unwrap()
            .1,
            RetentionPolicy::KeepUntilTime { until: 2000 }
        );
        assert_eq!(
            metadata(
                r#"{"semantics":"p","retentionPolicy":{"policy":"keepForDuration","durationMs":5}}"#
            )
            .unwrap()
            .1
            .expires_at(1_000),
            Some(1_005)
        );
        for bad in [
            r#"{}"#,
            r#"{"semantics":""}"#,
            r#"{"semantics":7}"#,
            r#"{"semantics":"p","retentionPolicy":{"policy":"keepSomeTime"}}"#,
            r#"{"semantics":"p","retentionPolicy":{"policy":"keepUntilTime","until":999}}"#,
            r#"{"semantics":"p","retentionPolicy":{"policy":"keepUntilTime"}}"#,
            r#"{"semantics":"p","retentionPolicy":{"policy":"keepForDuration","durationMs":0}}"#,
            r#"{"semantics":"p","retentionPolicy":{"policy":"keepForDuration","durationMs":-1}}"#,
        ] {
            assert!(metadata(bad).is_err(), "{bad} should be refused");
        }
        let long = format!(r#"{{"semantics":"{}"}}"#, "é".repeat(MAX_SEMANTICS));
        assert!(
            metadata(&long).is_ok(),
            "256 characters, whatever their bytes"
        );
        let longer = format!(r#"{{"semantics":"{}"}}"#, "a".repeat(MAX_SEMANTICS + 1));
        assert!(metadata(&longer).is_err());
    }

    /// Concurrent uploads to one bucket reach a follower in strictly increasing `created`
    /// order, each once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_uploads_are_announced_in_created_order() {
        const UPLOADS: usize = 200;
        let root = tempfile::tempdir().unwrap();
        let content: Arc<dyn ContentStore> =
            Arc::new(crate::storage::content::FsContent::open(root.path()).unwrap());
        let records = Arc::new(RecordStore::new(
            crate::storage::objects::Objects::directory(root.path()),
        ));
        let service = BlobService::open(records, content.clone()).await.unwrap();
        let bucket = Bucket::parse("b").unwrap();
        let (replay, mut live) = service.follow(&bucket, Some(0), 0);
        assert!(replay.is_empty());
        let tasks: Vec<_> = (0..UPLOADS)
            .map(|i| {
                let (service, content, bucket) = (service.clone(), content.clone(), bucket.clone());
                tokio::spawn(async move {
                    let body = futures_util::stream::iter([Ok(bytes::Bytes::from(i.to_string()))]);
                    let incoming = content
                        .receive(&bucket, Box::pin(body), 1024)
                        .await
                        .unwrap();
                    let upload = Upload {
                        semantics: "s".into(),
                        retention_policy: RetentionPolicy::KeepForever,
                        content_type: "text/plain".into(),
                        file_name: None,
                        uploader: "test".into(),
                        now: 1,
                    };
                    service
                        .upload(&bucket, incoming, upload, |_| {})
                        .await
                        .unwrap();
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let mut last = 0;
        for _ in 0..UPLOADS {
            let (_, record) = live.recv().await.unwrap();
            assert!(record.created > last, "{} after {last}", record.created);
            last = record.created;
        }
    }

    #[test]
    fn records_round_trip_and_expire() {
        let record = Record {
            handle: Handle::new().to_string(),
            hash: ContentHash::of(b"x").to_string(),
            size: 1,
            content_type: "image/png".into(),
            file_name: Some("a.png".into()),
            semantics: "photos".into(),
            retention_policy: RetentionPolicy::KeepForDuration { duration_ms: 10 },
            created: 100,
            uploader: "127.0.0.1".into(),
        };
        let text = serde_json::to_string(&record).unwrap();
        assert!(text.contains(r#""retentionPolicy":{"policy":"keepForDuration","durationMs":10}"#));
        assert!(text.contains(r#""contentType":"image/png""#));
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), record);
        assert!(record.live(109) && !record.live(110));
        assert_eq!(record.event()["semantics"], "photos");
    }
}
