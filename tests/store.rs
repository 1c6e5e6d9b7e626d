//! The versioned store, run once per backend (the JSON files and an S3-compatible object store,
//! moto, started by the test, holding the same names and JSON), so the object-store backend
//! cannot drift from the file backend's rules: compare-and-swap, tombstones, listing,
//! concurrent writers, restarts, stores left by the original, corrupt blobs and shutdown.

mod common;

use std::collections::BTreeSet;
use std::fs;

use blobs::clock::now_ms;
use blobs::names::{Bucket, Ref};
use blobs::store::{Edit, Expect, SetOutcome, SetRequest, live};
use common::{Backend, blob_name, hex_ref};
use serde_json::{Value, json};

/// A restart serves exactly what was acknowledged before it.
#[tokio::test]
async fn a_restart_serves_what_was_acknowledged() {
    for backend in Backend::all().await {
        let name = backend.name();
        let server = backend.start(tempfile::tempdir().unwrap()).await;
        let mut client = server.subscribed("b", &hex_ref("a1")).await;
        let mut version = None;
        for i in 0..5 {
            let ack = client
                .call1(
                    "set",
                    json!({"data": format!("{i}AAA"), "version": version}),
                )
                .await
                .unwrap();
            version = ack["version"].as_u64();
        }
        let storage = server.stop().await;

        let server = backend.start(storage).await;
        let mut client = server.subscribed("b", &hex_ref("a1")).await;
        assert_eq!(
            client.call1("get", json!({})).await.unwrap(),
            json!({"data": "4AAA", "version": 5}),
            "{name}"
        );
        server.stop().await;
    }
}

/// Blobs written by the original are served as they are: upper-case bucket names, with and
/// without `data`/`updated`; writes continue from the stored version and keep `created`.
/// On files, also what only a file system has: a `.backup` beside a torn file (restored), a
/// stale `.backup` beside a complete file (dropped), and temp files from a crash (removed).
#[tokio::test]
async fn a_store_of_the_original_is_read_as_is() {
    for backend in Backend::all().await {
        let name = backend.name();
        let storage = tempfile::tempdir().unwrap();
        let plain = hex_ref("c1");
        let bare = hex_ref("c2");
        backend
            .write(
                storage.path(),
                &blob_name("MyApp", &plain),
                br#"{"data":"aGk=","version":3,"created":1763780000000,"updated":1763780100000,"ip":"203.0.113.7"}"#,
            )
            .await;
        backend
            .write(
                storage.path(),
                &blob_name("MyApp", &bare),
                br#"{"version":1,"created":1763780000000,"ip":"unknown"}"#,
            )
            .await;
        let mut expectations = vec![
            (plain.clone(), json!({"data": "aGk=", "version": 3})),
            (bare, json!({"version": 1})),
        ];
        if let Backend::Files = backend {
            expectations.extend(original_file_leftovers(storage.path()));
        }

        let server = backend.start(storage).await;
        let mut client = server.client("MyApp").await;
        for (r, expected) in &expectations {
            client.call("ref", &[json!(r)]).await.unwrap();
            assert_eq!(
                client.call1("get", json!({})).await.unwrap(),
                *expected,
                "{name}: {r}"
            );
        }
        client.call("ref", &[json!(plain)]).await.unwrap();
        assert_eq!(
            client
                .call1("set", json!({"data": "eA==", "version": 3}))
                .await
                .unwrap(),
            json!({"success": true, "version": 4}),
            "{name}"
        );
        let stored = backend
            .read(server.storage(), &blob_name("MyApp", &plain))
            .await;
        let stored: Value = serde_json::from_slice(&stored).unwrap();
        assert_eq!(stored["created"], 1763780000000u64, "{name}");

        if let Backend::Files = backend {
            let leftovers: Vec<String> = ["c3", "c4", "c5"]
                .iter()
                .flat_map(|s| fs::read_dir(server.storage().join("MyApp").join(s)).unwrap())
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| !name.ends_with(".json"))
                .collect();
            assert!(
                leftovers.is_empty(),
                "backups and temp files resolved: {leftovers:?}"
            );
            assert!(!server.storage().join(".tmp-probe").exists());
            assert!(!server.storage().join("MyApp/c1/.tmp-crashed").exists());
        }
        server.stop().await;
    }
}

/// Writes what a crash of the original leaves in a directory; what each blob must read as.
fn original_file_leftovers(storage: &std::path::Path) -> Vec<(String, Value)> {
    let write = |r: &str, suffix: &str, text: &str| {
        let dir = storage.join("MyApp").join(&r[..2]);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("{r}.json{suffix}")), text).unwrap();
    };
    let torn = hex_ref("c3");
    let stale_backup = hex_ref("c4");
    let lost_file = hex_ref("c5");
    write(&torn, "", r#"{"data":"bmV3","vers"#);
    write(
        &torn,
        ".backup",
        r#"{"data":"b2xk","version":6,"created":1,"updated":2,"ip":"unknown"}"#,
    );
    write(
        &stale_backup,
        "",
        r#"{"data":"bmV3","version":8,"created":1,"updated":3,"ip":"unknown"}"#,
    );
    write(
        &stale_backup,
        ".backup",
        r#"{"data":"b2xk","version":7,"created":1,"updated":2,"ip":"unknown"}"#,
    );
    write(
        &lost_file,
        ".backup",
        r#"{"data":"b2xk","version":2,"created":1,"updated":2,"ip":"unknown"}"#,
    );
    fs::write(storage.join("MyApp/c1/.tmp-crashed"), "partial").unwrap();
    fs::write(storage.join(".tmp-probe"), "probe").unwrap();
    vec![
        (torn, json!({"data": "b2xk", "version": 6})),
        (stale_backup, json!({"data": "bmV3", "version": 8})),
        (lost_file, json!({"data": "b2xk", "version": 2})),
    ]
}

/// A blob that does not parse is reported as an error, never overwritten or served as
/// missing, and other blobs keep working.
#[tokio::test]
async fn a_corrupt_blob_is_an_error_not_a_missing_blob() {
    for backend in Backend::all().await {
        let name = backend.name();
        let storage = tempfile::tempdir().unwrap();
        let bad = hex_ref("d1");
        let bad_name = blob_name("b", &bad);
        backend.write(storage.path(), &bad_name, b"{not json").await;
        let server = backend.start(storage).await;

        let mut client = server.subscribed("b", &bad).await;
        let ack = client.call1("get", json!({})).await.unwrap();
        assert!(
            ack["error"].as_str().unwrap().starts_with("Storage error"),
            "{name}: {ack}"
        );
        let ack = client.call1("set", json!({"data": "aGk="})).await.unwrap();
        assert!(ack["error"].is_string(), "{name}: {ack}");
        assert_eq!(
            backend.read(server.storage(), &bad_name).await,
            b"{not json",
            "{name}"
        );

        client.call("ref", &[json!(hex_ref("d2"))]).await.unwrap();
        assert_eq!(
            client.call1("set", json!({"data": "aGk="})).await.unwrap(),
            json!({"success": true, "version": 1}),
            "{name}"
        );
        server.stop().await;
    }
}

/// Graceful shutdown answers the writes already sent: every acknowledged write is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_acknowledges_writes_in_flight() {
    for backend in Backend::all().await {
        let name = backend.name();
        let server = backend.start(tempfile::tempdir().unwrap()).await;
        let r = hex_ref("e1");
        let mut client = server.subscribed("b", &r).await;
        let first = client.call1("set", json!({"data": "aGk="})).await.unwrap();
        assert_eq!(first["version"], 1, "{name}");
        // A burst of writes sent without waiting, then shutdown at once: each is either
        // finished and acknowledged or refused with an error, never left unanswered while the
        // socket lives.
        for id in 101..110u64 {
            client
                .send_raw(&format!(
                    r#"2{id}["set",{{"data":"aGk=","version":{}}}]"#,
                    id - 100
                ))
                .await
                .unwrap();
        }
        let stopping = tokio::spawn(server.stop());
        let mut acknowledged = 1;
        for id in 101..110u64 {
            match client.wait_ack(id).await {
                Ok(ack) if ack.contains(r#""success":true"#) => acknowledged += 1,
                Ok(ack) => assert!(ack.contains("error") || ack.contains("success"), "{ack}"),
                Err(_) => break, // closed after the last accepted event was answered
            }
        }
        let storage = stopping.await.unwrap();
        let stored = backend.read(storage.path(), &blob_name("b", &r)).await;
        let stored: Value = serde_json::from_slice(&stored).unwrap();
        assert!(
            stored["version"].as_u64().unwrap() >= acknowledged,
            "{name}: every acknowledged version is stored"
        );
    }
}

fn bucket() -> Bucket {
    Bucket::parse("b").unwrap()
}

fn r(pair: &str) -> Ref {
    Ref::parse(&pair.repeat(32)).unwrap()
}

fn put(expect: Expect, data: &str) -> SetRequest {
    SetRequest {
        edit: Edit::Put(Some(data.to_owned())),
        expect,
        ip: "127.0.0.1".into(),
        now: now_ms(),
    }
}

fn committed(outcome: SetOutcome) -> u64 {
    match outcome {
        SetOutcome::Committed { version, .. } => version,
        other => panic!("expected a commit, got {other:?}"),
    }
}

/// Create, read, compare-and-swap; a stale write gets the current data.
#[tokio::test]
async fn compare_and_swap() {
    for backend in Backend::all().await {
        let (name, dir) = (backend.name(), tempfile::tempdir().unwrap());
        let store = &backend.versioned(dir.path());
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
    for backend in Backend::all().await {
        let (name, dir) = (backend.name(), tempfile::tempdir().unwrap());
        let store = &backend.versioned(dir.path());
        let (b, one) = (bucket(), r("b2"));
        committed(
            store
                .set(&b, &one, put(Expect::Absent, "AA=="))
                .await
                .unwrap(),
        );
        let delete = SetRequest {
            edit: Edit::Delete,
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
    for backend in Backend::all().await {
        let (name, dir) = (backend.name(), tempfile::tempdir().unwrap());
        let store = &backend.versioned(dir.path());
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
            edit: Edit::Delete,
            expect: Expect::Version(1),
            ip: "127.0.0.1".into(),
            now: now_ms(),
        };
        committed(store.set(&b, &r("10"), delete).await.unwrap());
        let refs = |page: Vec<(Ref, blobs::store::Listed)>| {
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

/// 16 writers run compare-and-swap loops on one blob: every version is won exactly once, whatever the backend
/// (on the object store, only its conditional writes decide).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_win_each_version_once() {
    const WRITERS: usize = 16;
    const WRITES_EACH: usize = 5;
    for backend in Backend::all().await {
        let (name, dir) = (backend.name(), tempfile::tempdir().unwrap());
        let store = backend.versioned(dir.path());
        let (b, one) = (bucket(), r("c3"));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (store, b, one) = (store.clone(), b.clone(), one.clone());
                tokio::spawn(async move {
                    let mut won = Vec::new();
                    let mut known = None;
                    while won.len() < WRITES_EACH {
                        match store
                            .set(&b, &one, put(Expect::Protocol(known), "AA=="))
                            .await
                            .unwrap()
                        {
                            SetOutcome::Committed { version, .. } => {
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
        let last = store.get(&b, &one).await.unwrap().unwrap();
        assert_eq!(last.version, (WRITERS * WRITES_EACH) as u64, "{name}");
    }
}
