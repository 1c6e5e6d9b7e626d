//! The versioned store's semantics, run against every backend: the JSON files and an
//! S3-compatible object store (moto, started by the test), so the object-store backend cannot
//! drift from the file backend's rules.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use blobs::names::{Bucket, Ref};
use blobs::store::{
    Change, Expect, FsStore, ObjectBlobs, SetOutcome, SetRequest, Store, live, now_ms,
};
use common::S3Server;

/// A store under test and what keeps it alive.
struct Backend {
    store: Arc<dyn Store>,
    _files: Option<tempfile::TempDir>,
    _server: Option<S3Server>,
}

async fn backends() -> Vec<(&'static str, Backend)> {
    let files = tempfile::tempdir().unwrap();
    let fs = Backend {
        store: Arc::new(FsStore::open(files.path()).unwrap()),
        _files: Some(files),
        _server: None,
    };
    let server = S3Server::start().await;
    let object = Backend {
        store: Arc::new(ObjectBlobs::new(server.client(), "prefix/")),
        _files: None,
        _server: Some(server),
    };
    vec![("files", fs), ("object store", object)]
}

fn bucket() -> Bucket {
    Bucket::parse("b").unwrap()
}

fn r(pair: &str) -> Ref {
    Ref::parse(&pair.repeat(32)).unwrap()
}

fn put(expect: Expect, data: &str) -> SetRequest {
    SetRequest {
        change: Change::Put(Some(data.to_owned())),
        expect,
        ip: "127.0.0.1".into(),
        now: now_ms(),
    }
}

fn committed(outcome: SetOutcome) -> u64 {
    match outcome {
        SetOutcome::Committed { version } => version,
        other => panic!("expected a commit, got {other:?}"),
    }
}

/// Create, read, compare-and-swap; a stale write gets the current data.
#[tokio::test]
async fn compare_and_swap() {
    for (name, backend) in backends().await {
        let store = &backend.store;
        let (b, one) = (bucket(), r("a1"));
        assert!(store.get(&b, &one).await.unwrap().is_none(), "{name}");
        let v1 = committed(
            store
                .set(&b, &one, put(Expect::Protocol(None), "AA=="))
                .await
                .unwrap(),
        );
        assert_eq!(v1, 1, "{name}");
        let v2 = committed(
            store
                .set(&b, &one, put(Expect::Protocol(Some(1)), "AQ=="))
                .await
                .unwrap(),
        );
        assert_eq!(v2, 2, "{name}");
        match store
            .set(&b, &one, put(Expect::Protocol(Some(1)), "Ag=="))
            .await
            .unwrap()
        {
            SetOutcome::Conflict(Some(current)) => {
                assert_eq!(
                    (current.version, current.data.as_deref()),
                    (2, Some("AQ==")),
                    "{name}"
                );
            }
            other => panic!("{name}: a stale write conflicts, got {other:?}"),
        }
        match store
            .set(&b, &one, put(Expect::Unconditional, "Aw=="))
            .await
            .unwrap()
        {
            SetOutcome::PreconditionRequired(current) => assert_eq!(current.version, 2, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
        let read = store.get(&b, &one).await.unwrap().unwrap();
        assert_eq!(
            (read.version, read.data.as_deref()),
            (2, Some("AQ==")),
            "{name}"
        );
        // Another bucket is another namespace.
        let other = Bucket::parse("other").unwrap();
        assert!(store.get(&other, &one).await.unwrap().is_none(), "{name}");
    }
}

/// A delete leaves a tombstone that keeps the version; creating again continues from it.
#[tokio::test]
async fn tombstones() {
    for (name, backend) in backends().await {
        let store = &backend.store;
        let (b, one) = (bucket(), r("b2"));
        committed(
            store
                .set(&b, &one, put(Expect::Absent, "AA=="))
                .await
                .unwrap(),
        );
        let delete = SetRequest {
            change: Change::Delete,
            expect: Expect::Version(1),
            ip: "127.0.0.1".into(),
            now: now_ms(),
        };
        assert_eq!(
            committed(store.set(&b, &one, delete).await.unwrap()),
            2,
            "{name}"
        );
        let tombstone = store.get(&b, &one).await.unwrap();
        assert!(tombstone.as_ref().is_some_and(|t| t.deleted), "{name}");
        assert!(live(tombstone).is_none(), "{name}");
        let stale = store
            .set(&b, &one, put(Expect::Protocol(Some(1)), "AQ=="))
            .await
            .unwrap();
        assert!(matches!(stale, SetOutcome::Conflict(Some(_))), "{name}");
        assert_eq!(
            committed(
                store
                    .set(&b, &one, put(Expect::Absent, "Ag=="))
                    .await
                    .unwrap()
            ),
            3,
            "{name}"
        );
    }
}

/// The listing: live blobs in ref order, paged with `after`.
#[tokio::test]
async fn listing() {
    for (name, backend) in backends().await {
        let store = &backend.store;
        let b = bucket();
        for pair in ["05", "a0", "0f", "ff", "10"] {
            committed(
                store
                    .set(&b, &r(pair), put(Expect::Absent, "AA=="))
                    .await
                    .unwrap(),
            );
        }
        let delete = SetRequest {
            change: Change::Delete,
            expect: Expect::Version(1),
            ip: "127.0.0.1".into(),
            now: now_ms(),
        };
        committed(store.set(&b, &r("10"), delete).await.unwrap());
        let refs = |page: Vec<(Ref, Arc<blobs::store::Blob>)>| {
            page.into_iter()
                .map(|(r, _)| r.as_str()[..2].to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            refs(store.list(&b, None, 10).await.unwrap()),
            ["05", "0f", "a0", "ff"],
            "{name}"
        );
        assert_eq!(
            refs(store.list(&b, None, 2).await.unwrap()),
            ["05", "0f"],
            "{name}"
        );
        assert_eq!(
            refs(store.list(&b, Some(&r("0f")), 10).await.unwrap()),
            ["a0", "ff"],
            "{name}"
        );
        assert!(store.writable().await, "{name}");
    }
}

/// 16 writers CAS-loop on one blob: every version is won exactly once, whatever the backend
/// (on the object store, only its conditional writes decide).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_win_each_version_once() {
    const WRITERS: usize = 16;
    const WRITES_EACH: usize = 5;
    for (name, backend) in backends().await {
        let (b, one) = (bucket(), r("c3"));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (store, b, one) = (backend.store.clone(), b.clone(), one.clone());
                tokio::spawn(async move {
                    let mut won = Vec::new();
                    let mut known = None;
                    while won.len() < WRITES_EACH {
                        match store
                            .set(&b, &one, put(Expect::Protocol(known), "AA=="))
                            .await
                            .unwrap()
                        {
                            SetOutcome::Committed { version } => {
                                won.push(version);
                                known = Some(version);
                            }
                            SetOutcome::Conflict(current) => known = current.map(|c| c.version),
                            other => panic!("{other:?}"),
                        }
                    }
                    won
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        let unique: BTreeSet<u64> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "{name}: a version was won twice");
        let expected: BTreeSet<u64> = (1..=(WRITERS * WRITES_EACH) as u64).collect();
        assert_eq!(unique, expected, "{name}: every version from 1 was won");
        let last = backend.store.get(&b, &one).await.unwrap().unwrap();
        assert_eq!(last.version, (WRITERS * WRITES_EACH) as u64, "{name}");
    }
}
