//! The content store's and the Blob Service records' semantics, each case run on the files and
//! on an S3-compatible object store (moto, started by the test), and the object store's marker
//! protocol with several nodes removing and storing one content at once (on Ceph RGW).

use std::sync::Arc;
use std::time::Duration;

use crate::fixture::{self, S3Server, TestStore};
use blobs::blob_service::{BlobService, Record, RecordStore, RetentionPolicy, Upload};
use blobs::names::{Bucket, ContentHash, Handle};
use blobs::storage::content::{self, ContentStore, ObjectContent, Owner};
use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use tokio::io::AsyncReadExt;

fixture::on_every_store!(
    content_is_verified_both_ways,
    the_service_releases_only_its_own_content,
    records_round_trip,
    content_is_listed_in_pages,
);

const PREFIX: &str = fixture::OBJECT_PREFIX;

/// A content store and a record store under test, on one store.
struct Stores {
    name: &'static str,
    content: Arc<dyn ContentStore>,
    records: Arc<RecordStore>,
    test_store: TestStore,
    dir: tempfile::TempDir,
}

impl Stores {
    /// The stores on `test_store`; `grace` is the object store's claim grace.
    async fn on(test_store: TestStore, grace: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            name: test_store.name(),
            content: test_store.content(dir.path(), grace).await,
            records: test_store.records(dir.path()).await,
            test_store,
            dir,
        }
    }
}

fn bucket() -> Bucket {
    Bucket::parse("b").unwrap()
}

async fn read(store: &dyn ContentStore, hash: &ContentHash) -> Option<Vec<u8>> {
    let mut content = store.open(&bucket(), hash).await.unwrap()?;
    let mut bytes = Vec::new();
    content.reader.read_to_end(&mut bytes).await.unwrap();
    assert_eq!(content.size, bytes.len() as u64);
    Some(bytes)
}

/// Stores `bytes` as `owner` would.
async fn commit(store: &dyn ContentStore, bytes: &'static [u8], owner: Owner) -> bool {
    let body = futures_util::stream::iter([Ok(Bytes::from_static(bytes))]);
    let incoming = store
        .receive(&bucket(), Box::pin(body), 1 << 20)
        .await
        .unwrap();
    let held = store.lock(&bucket(), incoming.hash()).await;
    incoming.commit(held, owner).await.unwrap().0
}

async fn release(store: &dyn ContentStore, hash: &ContentHash) -> Option<u64> {
    let held = store.lock(&bucket(), hash).await;
    store.release(&bucket(), hash, held).await.unwrap()
}

/// Stores, reads back verified, refuses a body of another hash or over the limit, and keeps
/// nothing of a refused body; a stored copy that no longer matches is missing.
async fn content_is_verified_both_ways(test_store: TestStore) {
    let stores = Stores::on(test_store, Duration::ZERO).await;
    let (name, store) = (stores.name, &*stores.content);
    let hash = ContentHash::of(b"hello");
    let stored = content::put_bytes(store, &bucket(), &hash, Bytes::from_static(b"hello"), 64)
        .await
        .unwrap();
    assert!(stored.created, "{name}");
    let again = content::put_bytes(store, &bucket(), &hash, Bytes::from_static(b"hello"), 64)
        .await
        .unwrap();
    assert!(!again.created, "{name}: the same bytes are stored once");
    assert_eq!(
        read(store, &hash).await.as_deref(),
        Some(&b"hello"[..]),
        "{name}"
    );
    assert_eq!(
        store.size(&bucket(), &hash).await.unwrap(),
        Some(5),
        "{name}"
    );

    let other = ContentHash::of(b"other");
    let lying = content::put_bytes(store, &bucket(), &other, Bytes::from_static(b"x"), 64).await;
    assert!(matches!(lying, Err(content::Error::Mismatch)), "{name}");
    let large = ContentHash::of(&[0; 65]);
    let over = content::put_bytes(store, &bucket(), &large, Bytes::from(vec![0; 65]), 64).await;
    assert!(matches!(over, Err(content::Error::TooLarge(64))), "{name}");
    assert_eq!(store.size(&bucket(), &other).await.unwrap(), None, "{name}");
    assert_eq!(store.size(&bucket(), &large).await.unwrap(), None, "{name}");

    // Damage the stored copy behind the store's back.
    let damaged = ContentHash::of(b"fragile");
    commit(store, b"fragile", Owner::Shared).await;
    let name_of = format!("b/cas/{}/{damaged}", damaged.shard());
    stores
        .test_store
        .write(stores.dir.path(), &name_of, b"fragilE")
        .await;
    assert_eq!(
        read(store, &damaged).await,
        None,
        "{name}: damaged is missing"
    );

    let held = store.lock(&bucket(), &hash).await;
    assert!(
        store.remove(&bucket(), &hash, held).await.unwrap(),
        "{name}"
    );
    assert_eq!(read(store, &hash).await, None, "{name}");
    let held = store.lock(&bucket(), &hash).await;
    assert!(
        !store.remove(&bucket(), &hash, held).await.unwrap(),
        "{name}"
    );
}

/// Content the Blob Service brought in is its own to release; stored again by a shared flow,
/// it is not any more; content a shared flow stored first never becomes the service's.
async fn the_service_releases_only_its_own_content(test_store: TestStore) {
    let stores = Stores::on(test_store, Duration::ZERO).await;
    let (name, store) = (stores.name, &*stores.content);
    let own = ContentHash::of(b"own");
    assert!(commit(store, b"own", Owner::Service).await, "{name}");
    assert_eq!(
        store.service_owned().await.unwrap(),
        vec![(bucket(), own.clone())],
        "{name}"
    );
    assert_eq!(release(store, &own).await, Some(3), "{name}");
    assert_eq!(read(store, &own).await, None, "{name}");
    assert!(store.service_owned().await.unwrap().is_empty(), "{name}");

    let handed = ContentHash::of(b"handed");
    commit(store, b"handed", Owner::Service).await;
    assert!(!commit(store, b"handed", Owner::Shared).await, "{name}");
    assert_eq!(release(store, &handed).await, None, "{name}: shared now");
    assert!(read(store, &handed).await.is_some(), "{name}");

    let shared = ContentHash::of(b"shared");
    commit(store, b"shared", Owner::Shared).await;
    assert!(!commit(store, b"shared", Owner::Service).await, "{name}");
    assert_eq!(release(store, &shared).await, None, "{name}: shared stays");
    assert!(read(store, &shared).await.is_some(), "{name}");

    // A shared delete of referenced content hands it to the service instead.
    let held = store.lock(&bucket(), &shared).await;
    assert!(
        store.claim(&bucket(), &shared, held).await.unwrap(),
        "{name}"
    );
    assert_eq!(release(store, &shared).await, Some(6), "{name}");
}

/// Records are written, read, listed and removed alike on every backend; a stored record
/// whose name is not its handle is left out.
async fn records_round_trip(test_store: TestStore) {
    let stores = Stores::on(test_store, Duration::ZERO).await;
    let (name, records) = (stores.name, &*stores.records);
    let handle = Handle::new();
    let record = Record {
        handle: handle.to_string(),
        hash: ContentHash::of(b"x").to_string(),
        size: 1,
        content_type: "text/plain".into(),
        file_name: None,
        semantics: "notes".into(),
        retention_policy: RetentionPolicy::KeepForever,
        created: 7,
        uploader: "127.0.0.1".into(),
    };
    assert!(
        records.read(&bucket(), &handle).await.unwrap().is_none(),
        "{name}"
    );
    records.write(&bucket(), &handle, &record).await.unwrap();
    assert_eq!(
        *records.read(&bucket(), &handle).await.unwrap().unwrap(),
        record,
        "{name}"
    );
    let other = Handle::new();
    records.write(&bucket(), &other, &record).await.unwrap();
    let loaded = records.load().await.unwrap();
    assert_eq!(loaded.len(), 1, "{name}: the misnamed record is left out");
    assert_eq!((&loaded[0].0, &loaded[0].1), (&bucket(), &handle), "{name}");
    records.remove(&bucket(), &handle).await.unwrap();
    records.remove(&bucket(), &handle).await.unwrap();
    assert!(
        records.read(&bucket(), &handle).await.unwrap().is_none(),
        "{name}"
    );
}

/// A shared `DELETE` of `hash` on `store`; whether there was such content.
async fn remove(store: &dyn ContentStore, hash: ContentHash) -> bool {
    let held = store.lock(&bucket(), &hash).await;
    store.remove(&bucket(), &hash, held).await.unwrap()
}

/// Two object-store nodes.
async fn two_nodes(grace: Duration) -> (S3Server, ObjectContent, ObjectContent) {
    let server = fixture::rgw().await;
    let a = ObjectContent::new(&fixture::objects(&server, PREFIX).await, grace);
    let b = ObjectContent::new(&fixture::objects(&server, PREFIX).await, grace);
    (server, a, b)
}

/// Writes the marker of `hash` as a node would have long ago.
async fn backdate(server: &S3Server, hash: &ContentHash, marker: &str) {
    let path = Path::from(format!(
        "{}.service",
        content::content_path(PREFIX, &bucket(), hash)
    ));
    fixture::s3_client(server)
        .put(&path, marker.as_bytes().to_vec().into())
        .await
        .unwrap();
}

/// Two nodes sweeping one unreferenced content at once: exactly one removes it, and nothing
/// of it is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Ceph RGW (run by scripts/test)"]
async fn two_nodes_sweeping_at_once_remove_once() {
    let (server, a, b) = two_nodes(Duration::from_secs(3600)).await;
    for round in 0..10u32 {
        let bytes: &'static [u8] =
            Box::leak(format!("swept {round}").into_bytes().into_boxed_slice());
        let hash = ContentHash::of(bytes);
        commit(&a, bytes, Owner::Service).await;
        // Claimed long ago: past the grace.
        backdate(&server, &hash, r#"{"claimed":0}"#).await;
        let (ra, rb) = tokio::join!(release(&a, &hash), release(&b, &hash));
        assert_eq!(
            usize::from(ra.is_some()) + usize::from(rb.is_some()),
            1,
            "round {round}: {ra:?} {rb:?}"
        );
        assert_eq!(a.size(&bucket(), &hash).await.unwrap(), None);
        assert!(a.service_owned().await.unwrap().is_empty(), "round {round}");
    }
}

/// A node sweeps content that another node's upload stores again at the same moment: the
/// upload either claims it first (the sweep backs off) or waits until the removal is over and
/// stores it again, so the bytes are there once the upload returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Ceph RGW (run by scripts/test)"]
async fn an_upload_racing_a_sweep_on_another_node_keeps_its_bytes() {
    let (server, a, b) = two_nodes(Duration::from_secs(3600)).await;
    let (mut backed_off, mut removed) = (0, 0);
    for round in 0..20u32 {
        let bytes: &'static [u8] =
            Box::leak(format!("raced {round}").into_bytes().into_boxed_slice());
        let hash = ContentHash::of(bytes);
        commit(&a, bytes, Owner::Service).await;
        backdate(&server, &hash, r#"{"claimed":0}"#).await;
        let (swept, _) = tokio::join!(release(&a, &hash), commit(&b, bytes, Owner::Service));
        match swept {
            Some(_) => removed += 1,
            None => backed_off += 1,
        }
        assert_eq!(
            read(&b, &hash).await.as_deref(),
            Some(bytes),
            "round {round}: the upload's bytes are there"
        );
        // And they are the service's, claimed just now: safe from the next sweep.
        assert_eq!(release(&a, &hash).await, None, "round {round}");
    }
    println!("sweep removed first {removed} times, backed off {backed_off} times");
}

/// A removal a node died in the middle of (an old doomed marker) is taken over: an upload
/// does not wait for it, and a sweep finishes it.
#[tokio::test]
#[ignore = "needs Ceph RGW (run by scripts/test)"]
async fn a_removal_left_by_a_dead_node_is_taken_over() {
    let (server, a, _b) = two_nodes(Duration::from_secs(3600)).await;
    let hash = ContentHash::of(b"orphan");
    commit(&a, b"orphan", Owner::Service).await;
    backdate(&server, &hash, r#"{"doomed":0}"#).await;
    assert_eq!(release(&a, &hash).await, Some(6));
    assert!(a.service_owned().await.unwrap().is_empty());

    commit(&a, b"orphan", Owner::Service).await;
    backdate(&server, &hash, r#"{"doomed":0}"#).await;
    assert!(
        !commit(&a, b"orphan", Owner::Service).await,
        "present: not stored again"
    );
    assert_eq!(release(&a, &hash).await, None, "claimed again just now");
    assert_eq!(read(&a, &hash).await.as_deref(), Some(&b"orphan"[..]));
}

/// What a client put to a presigned upload URL becomes content only once its hash checks;
/// unconfirmed uploads are swept.
#[tokio::test]
#[ignore = "needs Ceph RGW (run by scripts/test)"]
async fn direct_uploads_are_adopted_only_when_they_match() {
    let (server, a, _b) = two_nodes(Duration::ZERO).await;
    let client = fixture::s3_client(&server);
    let good = ContentHash::of(b"direct");
    let staged = content::staging_path(PREFIX, &bucket(), &good);
    client
        .put(&staged, b"direct".to_vec().into())
        .await
        .unwrap();
    assert!(content::adopt(&a, &bucket(), &good, 1024).await.unwrap());
    assert_eq!(read(&a, &good).await.as_deref(), Some(&b"direct"[..]));
    assert!(
        client.head(&staged).await.is_err(),
        "the staged upload is gone"
    );
    assert!(
        content::adopt(&a, &bucket(), &good, 1024).await.unwrap(),
        "confirmed twice"
    );

    let large = ContentHash::of(&[1; 2000]);
    let staged = content::staging_path(PREFIX, &bucket(), &large);
    client.put(&staged, vec![1; 2000].into()).await.unwrap();
    assert!(
        !content::adopt(&a, &bucket(), &large, 1024).await.unwrap(),
        "over the limit"
    );
    assert_eq!(a.size(&bucket(), &large).await.unwrap(), None);

    let bad = ContentHash::of(b"expected");
    let staged = content::staging_path(PREFIX, &bucket(), &bad);
    client
        .put(&staged, b"something else".to_vec().into())
        .await
        .unwrap();
    assert!(!content::adopt(&a, &bucket(), &bad, 1024).await.unwrap());
    assert_eq!(a.size(&bucket(), &bad).await.unwrap(), None);

    let never = ContentHash::of(b"never confirmed");
    let staged = content::staging_path(PREFIX, &bucket(), &never);
    client
        .put(&staged, b"never confirmed".to_vec().into())
        .await
        .unwrap();
    assert_eq!(a.sweep_staging(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(a.sweep_staging(Duration::ZERO).await.unwrap(), 1);
    assert!(client.head(&staged).await.is_err());
}

/// Two nodes running the retention sweep at once over one object store: every expired record
/// and the content only they referred to are gone, content a live record still refers to
/// stays, and neither sweep fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Ceph RGW (run by scripts/test)"]
async fn two_nodes_sweeping_the_blob_service_at_once() {
    const EXPIRED: usize = 8;
    let server = fixture::rgw().await;
    let node = || {
        let objects = fixture::objects(&server, PREFIX);
        async move {
            let objects = objects.await;
            let content: Arc<dyn ContentStore> =
                Arc::new(ObjectContent::new(&objects, Duration::ZERO));
            let records = Arc::new(RecordStore::new(objects));
            let service = BlobService::open(records, content.clone()).await.unwrap();
            (service, content)
        }
    };
    let (a, content) = node().await;
    let long_ago = blobs::clock::now_ms() - 60_000;
    let upload = |service: BlobService, bytes: String, policy: RetentionPolicy| {
        let content = content.clone();
        async move {
            let body = futures_util::stream::iter([Ok(Bytes::from(bytes))]);
            let incoming = content
                .receive(&bucket(), Box::pin(body), 1024)
                .await
                .unwrap();
            let upload = Upload {
                semantics: "s".into(),
                retention_policy: policy,
                content_type: "text/plain".into(),
                file_name: None,
                uploader: "test".into(),
                now: long_ago,
            };
            service
                .upload(&bucket(), incoming, upload, |_| {})
                .await
                .unwrap()
        }
    };
    let expiring = RetentionPolicy::KeepForDuration { duration_ms: 1 };
    let mut gone = Vec::new();
    for i in 0..EXPIRED {
        let record = upload(a.clone(), format!("expired {i}"), expiring.clone()).await;
        gone.push(record.content_hash().unwrap());
    }
    upload(a.clone(), "kept".into(), expiring.clone()).await;
    let kept = upload(a.clone(), "kept".into(), RetentionPolicy::KeepForever).await;
    let (b, _) = node().await;

    let now = blobs::clock::now_ms();
    let (swept_a, swept_b) = tokio::join!(a.sweep(now), b.sweep(now));
    assert!(
        swept_a.contents + swept_b.contents >= EXPIRED,
        "{swept_a:?} {swept_b:?}"
    );
    let left = RecordStore::new(fixture::objects(&server, PREFIX).await)
        .load()
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "only the live record is left");
    assert_eq!(left[0].2.handle, kept.handle);
    for hash in &gone {
        assert_eq!(content.size(&bucket(), hash).await.unwrap(), None);
    }
    let kept_hash = kept.content_hash().unwrap();
    assert_eq!(
        read(&*content, &kept_hash).await.as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(
        content.service_owned().await.unwrap(),
        vec![(bucket(), kept_hash)]
    );
}

/// A Blob Service upload of bytes a shared flow stored keeps them from a shared `DELETE` on
/// another node (whose view may lack the new record) for the grace, however the two race; the
/// sweep never takes them (they stay shared); past the grace a shared `DELETE` removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Ceph RGW (run by scripts/test)"]
async fn a_service_upload_keeps_shared_bytes_from_a_delete_on_another_node() {
    let (server, a, b) = two_nodes(Duration::from_secs(3600)).await;
    for round in 0..20u32 {
        let bytes: &'static [u8] =
            Box::leak(format!("shared {round}").into_bytes().into_boxed_slice());
        let hash = ContentHash::of(bytes);
        commit(&a, bytes, Owner::Shared).await;
        let (_, _) = tokio::join!(commit(&a, bytes, Owner::Service), remove(&b, hash.clone()));
        assert_eq!(
            read(&a, &hash).await.as_deref(),
            Some(bytes),
            "round {round}: the upload's bytes are there"
        );
        assert_eq!(
            release(&b, &hash).await,
            None,
            "round {round}: never the sweep's"
        );
        assert!(remove(&b, hash.clone()).await, "round {round}: present");
        assert!(
            read(&a, &hash).await.is_some(),
            "round {round}: kept for the grace"
        );
        backdate(&server, &hash, r#"{"kept":0}"#).await;
        assert!(remove(&b, hash.clone()).await);
        assert_eq!(
            read(&a, &hash).await,
            None,
            "round {round}: removed past the grace"
        );
    }
}

/// New bytes stored at once by a shared flow on one node and a Blob Service upload on another
/// end up shared, whichever finishes first: the sweep never takes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Ceph RGW (run by scripts/test)"]
async fn bytes_stored_by_both_flows_at_once_stay_shared() {
    let (_server, a, b) = two_nodes(Duration::ZERO).await;
    for round in 0..20u32 {
        let bytes: &'static [u8] =
            Box::leak(format!("both {round}").into_bytes().into_boxed_slice());
        let hash = ContentHash::of(bytes);
        tokio::join!(
            commit(&a, bytes, Owner::Shared),
            commit(&b, bytes, Owner::Service)
        );
        assert_eq!(release(&b, &hash).await, None, "round {round}: shared");
        assert_eq!(
            read(&a, &hash).await.as_deref(),
            Some(bytes),
            "round {round}"
        );
    }
}

/// The bucket's content in hash order, in pages, with sizes: markers, other buckets and
/// unconfirmed uploads left out.
async fn content_is_listed_in_pages(test_store: TestStore) {
    let stores = Stores::on(test_store, Duration::from_secs(600)).await;
    let store = &*stores.content;
    let bodies: [&'static [u8]; 5] = [b"one", b"two", b"three", b"four", b"five"];
    for (i, body) in bodies.iter().enumerate() {
        let owner = if i % 2 == 0 {
            Owner::Shared
        } else {
            Owner::Service
        };
        assert!(commit(store, body, owner).await, "{}", stores.name);
    }
    let mut expected: Vec<(String, u64)> = bodies
        .iter()
        .map(|b| (ContentHash::of(b).to_string(), b.len() as u64))
        .collect();
    expected.sort();
    let first = store.list(&bucket(), None, 3).await.unwrap();
    let rest = store.list(&bucket(), Some(&first[2].0), 3).await.unwrap();
    let listed: Vec<(String, u64)> = first
        .iter()
        .chain(&rest)
        .map(|(hash, size)| (hash.to_string(), *size))
        .collect();
    assert_eq!(listed, expected, "{}", stores.name);
    let other = Bucket::parse("other").unwrap();
    assert!(
        store.list(&other, None, 10).await.unwrap().is_empty(),
        "{}",
        stores.name
    );
}
