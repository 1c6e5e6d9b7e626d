//! The JSON-file store across restarts, and stores left by the original read as they are.

mod common;

use std::fs;

use common::{TestServer, hex_ref};
use serde_json::{Value, json};

/// A restart serves exactly what was acknowledged before it.
#[tokio::test]
async fn a_restart_serves_what_was_acknowledged() {
    let server = TestServer::start().await;
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

    let server = TestServer::start_in(storage).await;
    let mut client = server.subscribed("b", &hex_ref("a1")).await;
    assert_eq!(
        client.call1("get", json!({})).await.unwrap(),
        json!({"data": "4AAA", "version": 5})
    );
    server.stop().await;
}

/// A directory written by the original is served as is: upper-case bucket names, files with
/// and without `data`/`updated`, a `.backup` beside a torn file (restored), a stale `.backup`
/// beside a complete file (dropped), and a temp file from a crash (removed).
#[tokio::test]
async fn a_store_of_the_original_is_read_as_is() {
    let storage = tempfile::tempdir().unwrap();
    let write = |bucket: &str, r: &str, suffix: &str, text: &str| {
        let dir = storage.path().join(bucket).join(&r[..2]);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("{r}.json{suffix}")), text).unwrap();
    };
    let plain = hex_ref("c1");
    let bare = hex_ref("c2");
    let torn = hex_ref("c3");
    let stale_backup = hex_ref("c4");
    let lost_file = hex_ref("c5");
    write(
        "MyApp",
        &plain,
        "",
        r#"{"data":"aGk=","version":3,"created":1763780000000,"updated":1763780100000,"ip":"203.0.113.7"}"#,
    );
    write(
        "MyApp",
        &bare,
        "",
        r#"{"version":1,"created":1763780000000,"ip":"unknown"}"#,
    );
    write("MyApp", &torn, "", r#"{"data":"bmV3","vers"#);
    write(
        "MyApp",
        &torn,
        ".backup",
        r#"{"data":"b2xk","version":6,"created":1,"updated":2,"ip":"unknown"}"#,
    );
    write(
        "MyApp",
        &stale_backup,
        "",
        r#"{"data":"bmV3","version":8,"created":1,"updated":3,"ip":"unknown"}"#,
    );
    write(
        "MyApp",
        &stale_backup,
        ".backup",
        r#"{"data":"b2xk","version":7,"created":1,"updated":2,"ip":"unknown"}"#,
    );
    write(
        "MyApp",
        &lost_file,
        ".backup",
        r#"{"data":"b2xk","version":2,"created":1,"updated":2,"ip":"unknown"}"#,
    );
    let shard = storage.path().join("MyApp").join("c1");
    fs::write(shard.join(".tmp-crashed"), "partial").unwrap();
    fs::write(storage.path().join(".tmp-probe"), "probe").unwrap();

    let server = TestServer::start_in(storage).await;
    let expectations = [
        (&plain, json!({"data": "aGk=", "version": 3})),
        (&bare, json!({"version": 1})),
        (&torn, json!({"data": "b2xk", "version": 6})),
        (&stale_backup, json!({"data": "bmV3", "version": 8})),
        (&lost_file, json!({"data": "b2xk", "version": 2})),
    ];
    let mut client = server.client("MyApp").await;
    for (r, expected) in &expectations {
        client.call("ref", &[json!(r)]).await.unwrap();
        assert_eq!(
            client.call1("get", json!({})).await.unwrap(),
            *expected,
            "{r}"
        );
    }
    // Writes continue from the stored version and keep `created`.
    client.call("ref", &[json!(plain)]).await.unwrap();
    assert_eq!(
        client
            .call1("set", json!({"data": "eA==", "version": 3}))
            .await
            .unwrap(),
        json!({"success": true, "version": 4})
    );
    let file: Value =
        serde_json::from_slice(&fs::read(server.blob_path("MyApp", &plain)).unwrap()).unwrap();
    assert_eq!(file["created"], 1763780000000u64);

    let leftovers: Vec<String> = ["c1", "c3", "c4", "c5"]
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
    server.stop().await;
}

/// A blob file that does not parse is reported as an error, never overwritten or served as
/// missing, and other blobs keep working.
#[tokio::test]
async fn a_corrupt_file_is_an_error_not_a_missing_blob() {
    let server = TestServer::start().await;
    let bad = hex_ref("d1");
    let path = server.blob_path("b", &bad);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, "{not json").unwrap();

    let mut client = server.subscribed("b", &bad).await;
    let ack = client.call1("get", json!({})).await.unwrap();
    assert!(
        ack["error"].as_str().unwrap().starts_with("Storage error"),
        "{ack}"
    );
    let ack = client.call1("set", json!({"data": "aGk="})).await.unwrap();
    assert!(ack["error"].is_string(), "{ack}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "{not json");

    client.call("ref", &[json!(hex_ref("d2"))]).await.unwrap();
    assert_eq!(
        client.call1("set", json!({"data": "aGk="})).await.unwrap(),
        json!({"success": true, "version": 1})
    );
    server.stop().await;
}

/// Graceful shutdown answers the writes already sent: every acknowledged write is on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_acknowledges_writes_in_flight() {
    let server = TestServer::start().await;
    let r = hex_ref("e1");
    let path = server.blob_path("b", &r);
    let mut client = server.subscribed("b", &r).await;
    let first = client.call1("set", json!({"data": "aGk="})).await.unwrap();
    assert_eq!(first["version"], 1);
    // A burst of writes sent without waiting, then shutdown at once: each is either finished
    // and acknowledged or refused with an error, never left unanswered while the socket lives.
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
    let file: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert!(
        file["version"].as_u64().unwrap() >= acknowledged,
        "every acknowledged version is on disk"
    );
    drop(storage);
}
