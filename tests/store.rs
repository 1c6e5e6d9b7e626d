//! The versioned store across restarts, stores left by the original read as they are, corrupt
//! blobs and shutdown, run once per backend (the JSON files and an S3-compatible object store
//! holding the same names and JSON).

mod common;

use std::fs;

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
