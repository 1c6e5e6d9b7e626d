//! The versioned store, each case run on the JSON files and on an S3-compatible object store
//! (moto, started by the test, holding the same names and JSON), so the object-store backend
//! cannot drift from the file backend's rules: compare-and-swap, tombstones, listing,
//! concurrent writers, restarts, stores left by the original, corrupt blobs and shutdown.

use std::collections::BTreeSet;
use std::fs;

use crate::fixture::{self, TestStore, blob_name, hex_ref};
use blobs::clock::now_ms;
use blobs::names::{Bucket, Ref};
use blobs::storage::store::{Edit, Expect, SetOutcome, SetRequest, live};
use serde_json::{Value, json};

fixture::on_every_store!(
    a_restart_serves_what_was_acknowledged,
    a_store_of_the_original_is_read_as_is,
    a_corrupt_blob_is_an_error_not_a_missing_blob,
    damaged_blob_files_are_refused_and_left_out_of_listings,
    shutdown_acknowledges_writes_in_flight,
    compare_and_swap,
    tombstones,
    listing,
    concurrent_writers_win_each_version_once,
);

/// A restart serves exactly what was acknowledged before it.
async fn a_restart_serves_what_was_acknowledged(test_store: TestStore) {
    let name = test_store.name();
    let server = test_store.start(tempfile::tempdir().unwrap()).await;
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

    let server = test_store.start(storage).await;
    let mut client = server.subscribed("b", &hex_ref("a1")).await;
    assert_eq!(
        client.call1("get", json!({})).await.unwrap(),
        json!({"data": "4AAA", "version": 5}),
        "{name}"
    );
    server.stop().await;
}

/// Blobs written by the original are served as they are: upper-case bucket names, with and
/// without `data`/`updated`; writes continue from the stored version and keep `created`.
/// On files, also what only a file system has: a `.backup` beside a torn file (restored), a
/// stale `.backup` beside a complete file (dropped), and temp files from a crash (removed).
async fn a_store_of_the_original_is_read_as_is(test_store: TestStore) {
    let name = test_store.name();
    let storage = tempfile::tempdir().unwrap();
    let plain = hex_ref("c1");
    let bare = hex_ref("c2");
    test_store
        .write(
            storage.path(),
            &blob_name("MyApp", &plain),
            br#"{"data":"aGk=","version":3,"created":1763780000000,"updated":1763780100000,"ip":"203.0.113.7"}"#,
        )
        .await;
    test_store
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
    if let TestStore::Files = test_store {
        expectations.extend(original_file_leftovers(storage.path()));
    }

    let server = test_store.start(storage).await;
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
    let stored = test_store
        .read(server.storage(), &blob_name("MyApp", &plain))
        .await;
    let stored: Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(stored["created"], 1763780000000u64, "{name}");

    if let TestStore::Files = test_store {
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
async fn a_corrupt_blob_is_an_error_not_a_missing_blob(test_store: TestStore) {
    let name = test_store.name();
    let storage = tempfile::tempdir().unwrap();
    let bad = hex_ref("d1");
    let bad_name = blob_name("b", &bad);
    test_store
        .write(storage.path(), &bad_name, b"{not json")
        .await;
    let server = test_store.start(storage).await;

    let mut client = server.subscribed("b", &bad).await;
    let ack = client.call1("get", json!({})).await.unwrap();
    assert!(
        ack["error"].as_str().unwrap().starts_with("Storage error"),
        "{name}: {ack}"
    );
    let ack = client.call1("set", json!({"data": "aGk="})).await.unwrap();
    assert!(ack["error"].is_string(), "{name}: {ack}");
    assert_eq!(
        test_store.read(server.storage(), &bad_name).await,
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

/// The answer to an HTTP request with `bucket`'s token: status and body.
async fn http(
    server: &fixture::TestServer,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (reqwest::StatusCode, Vec<u8>) {
    let mut request = reqwest::Client::new()
        .request(method, format!("http://{}{path}", server.addr))
        .bearer_auth(fixture::token("b"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.bytes().await.unwrap().to_vec())
}

/// 786,432 bytes as base64: the largest blob.
fn largest_data() -> String {
    "QUJD".repeat(262_144)
}

/// Damaged blob files (version 0 or above 2^53 − 1, unparseable, a large one torn at its end or
/// with version 0) are a storage error to read and to write over HTTP and Socket.IO, stay as
/// they were, and are left out of listings, which list the rest: small and large blobs with
/// their versions and sizes.
async fn damaged_blob_files_are_refused_and_left_out_of_listings(test_store: TestStore) {
    let large = largest_data();
    let damaged = [
        (
            "d1",
            r#"{"data":"aGk=","version":0,"created":1,"ip":"unknown"}"#.to_owned(),
        ),
        (
            "d2",
            format!(
                r#"{{"data":"aGk=","version":{},"created":1,"ip":"unknown"}}"#,
                1u64 << 53
            ),
        ),
        ("d3", "{not json".to_owned()),
        (
            "d4",
            format!(r#"{{"data":"{large}","version":0,"created":1,"ip":"unknown"}}"#),
        ),
        ("d5", format!(r#"{{"data":"{large}","version":2,"crea"#)),
    ];
    let sound = [
        (
            "a1",
            r#"{"data":"aGk=","version":3,"created":1,"updated":2,"ip":"unknown"}"#.to_owned(),
            3,
            2,
        ),
        (
            "f1",
            format!(r#"{{"data":"{large}","version":7,"created":1,"ip":"unknown"}}"#),
            7,
            786_432,
        ),
    ];
    let name = test_store.name();
    let storage = tempfile::tempdir().unwrap();
    let files = damaged.iter().map(|(p, t)| (p, t));
    for (pair, text) in files.chain(sound.iter().map(|(p, t, ..)| (p, t))) {
        let file = blob_name("b", &hex_ref(pair));
        test_store
            .write(storage.path(), &file, text.as_bytes())
            .await;
    }
    let server = test_store.start(storage).await;

    let (status, body) = http(&server, reqwest::Method::GET, "/v1/blobs?limit=1000", &[]).await;
    assert_eq!(status, 200, "{name}");
    let listed: Value = serde_json::from_slice(&body).unwrap();
    let expected: Vec<Value> = sound
        .iter()
        .map(|(pair, _, version, size)| json!([hex_ref(pair), version, size]))
        .collect();
    let listed: Vec<Value> = listed["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| json!([b["ref"], b["version"], b["size"]]))
        .collect();
    assert_eq!(listed, expected, "{name}");

    let mut client = server.client("b").await;
    for (pair, text) in &damaged {
        let r = hex_ref(pair);
        let path = format!("/v1/blobs/{r}");
        let (status, body) = http(&server, reqwest::Method::GET, &path, &[]).await;
        assert_eq!(status, 500, "{name} {pair}");
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            error,
            json!({"error": "Storage error: the operation could not be completed"}),
            "{name} {pair}"
        );
        for precondition in [("if-match", "\"0\""), ("if-none-match", "*")] {
            let (status, _) = http(&server, reqwest::Method::PUT, &path, &[precondition]).await;
            assert_eq!(status, 500, "{name} {pair}: a write is refused");
        }
        client.call("ref", &[json!(r)]).await.unwrap();
        for (event, arg) in [
            ("get", json!({})),
            ("set", json!({"data": "eA=="})),
            ("set", json!({"data": "eA==", "version": 1})),
        ] {
            let ack = client.call1(event, arg).await.unwrap();
            assert!(
                ack["error"].as_str().unwrap().starts_with("Storage error"),
                "{name} {pair} {event}: {ack}"
            );
        }
        let file = blob_name("b", &r);
        assert_eq!(
            test_store.read(server.storage(), &file).await,
            text.as_bytes(),
            "{name} {pair}: left as it was"
        );
    }
    server.stop().await;
}

/// Writes `text` at `<bucket>/<shard>/<name>` as the original would have.
fn write_original(storage: &std::path::Path, shard: &str, name: &str, text: &str) {
    let dir = storage.join("MyApp").join(shard);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), text).unwrap();
}

/// A blob file of the original: `data`, `version`, `created`, `updated`.
fn original_blob(data: &str, version: u64, created: u64, updated: u64) -> String {
    format!(
        r#"{{"data":"{data}","version":{version},"created":{created},"updated":{updated},"ip":"unknown"}}"#
    )
}

/// A directory the original left, with blob files under upper- and mixed-case refs (as their
/// clients sent them), with and without `.backup` files, and two spellings of one ref, is
/// served as it is: every blob over HTTP and Socket.IO under any case of its ref, the newer of
/// two spellings (the other kept aside, and reported by `blobs check`), writes continuing
/// from the stored version; a second start moves nothing.
#[tokio::test]
async fn the_originals_upper_case_files_are_served() {
    let storage = tempfile::tempdir().unwrap();
    let root = storage.path();
    let upper = "AB".repeat(32);
    let mixed = "cD".repeat(32);
    let torn = "EF".repeat(32);
    let lost = "A1".repeat(32);
    let lower_wins = "BC".repeat(32);
    let upper_wins = "DE".repeat(32);
    let large = "F0".repeat(32);
    let large_data = largest_data();
    write_original(
        root,
        "AB",
        &format!("{upper}.json"),
        &original_blob("aGk=", 3, 1, 2),
    );
    write_original(
        root,
        "cD",
        &format!("{mixed}.json"),
        &original_blob("bWl4", 2, 1, 2),
    );
    // A torn file and its backup; a backup whose file is gone; a stale backup.
    write_original(
        root,
        "EF",
        &format!("{torn}.json"),
        r#"{"data":"bmV3","ver"#,
    );
    write_original(
        root,
        "EF",
        &format!("{torn}.json.backup"),
        &original_blob("b2xk", 6, 1, 2),
    );
    write_original(
        root,
        "A1",
        &format!("{lost}.json.backup"),
        &original_blob("bG9zdA==", 4, 1, 2),
    );
    write_original(
        root,
        "AB",
        &format!("{upper}.json.backup"),
        &original_blob("b2xk", 2, 1, 1),
    );
    // Two spellings of one ref: the higher version wins, or on a tie the later change.
    write_original(
        root,
        "BC",
        &format!("{lower_wins}.json"),
        &original_blob("dXA=", 5, 1, 9),
    );
    let lower = lower_wins.to_lowercase();
    write_original(
        root,
        "bc",
        &format!("{lower}.json"),
        &original_blob("bG93", 7, 1, 2),
    );
    write_original(
        root,
        "DE",
        &format!("{upper_wins}.json"),
        &original_blob("dXA=", 9, 1, 8),
    );
    let lower = upper_wins.to_lowercase();
    write_original(
        root,
        "de",
        &format!("{lower}.json"),
        &original_blob("bG93", 9, 1, 7),
    );
    write_original(
        root,
        "F0",
        &format!("{large}.json"),
        &original_blob(&large_data, 1, 1, 2),
    );
    let expected = [
        (&upper, Some("aGk="), 3),
        (&mixed, Some("bWl4"), 2),
        (&torn, Some("b2xk"), 6),
        (&lost, Some("bG9zdA=="), 4),
        (&lower_wins, Some("bG93"), 7),
        (&upper_wins, Some("dXA="), 9),
        (&large, None, 1),
    ];

    let server = fixture::TestServer::start_in(storage).await;
    let mut client = server.client("MyApp").await;
    for (r, data, version) in &expected {
        for spelling in [r.to_string(), r.to_lowercase(), r.to_uppercase()] {
            let response = reqwest::Client::new()
                .get(format!("http://{}/v1/blobs/{spelling}", server.addr))
                .bearer_auth(fixture::token("MyApp"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{spelling}");
            assert_eq!(
                response.headers()["etag"],
                format!("\"{version}\""),
                "{spelling}"
            );
            client.call("ref", &[json!(spelling)]).await.unwrap();
            let got = client.call1("get", json!({})).await.unwrap();
            assert_eq!(got["version"], *version, "{spelling}: {got}");
            if let Some(data) = data {
                assert_eq!(got["data"], *data, "{spelling}");
            } else {
                assert_eq!(got["data"].as_str().map(str::len), Some(large_data.len()));
            }
        }
    }
    client.call("ref", &[json!(upper)]).await.unwrap();
    assert_eq!(
        client
            .call1("set", json!({"data": "eA==", "version": 3}))
            .await
            .unwrap(),
        json!({"success": true, "version": 4})
    );

    let on_disk = |root: &std::path::Path| {
        let mut names: Vec<String> = fs::read_dir(root.join("MyApp"))
            .unwrap()
            .flat_map(|shard| fs::read_dir(shard.unwrap().path()).unwrap())
            .map(|e| {
                let path = e.unwrap().path();
                let shard = path
                    .parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                format!("{shard}/{}", path.file_name().unwrap().to_string_lossy())
            })
            .collect();
        names.sort();
        names
    };
    let mut wanted: Vec<String> = expected
        .iter()
        .map(|(r, ..)| {
            let r = r.to_lowercase();
            format!("{}/{r}.json", &r[..2])
        })
        .collect();
    let bc = lower_wins.to_lowercase();
    let de = upper_wins.to_lowercase();
    wanted.push(format!("bc/{bc}.json.case-conflict-1"));
    wanted.push(format!("de/{de}.json.case-conflict-1"));
    wanted.sort();
    let storage = server.stop().await;
    assert_eq!(on_disk(storage.path()), wanted);
    let aside = |name: &str| fs::read_to_string(storage.path().join("MyApp").join(name)).unwrap();
    assert!(aside(&format!("bc/{bc}.json.case-conflict-1")).contains(r#""version":5"#));
    assert!(
        aside(&format!("de/{de}.json.case-conflict-1"))
            .contains(r#""version":9,"created":1,"updated":7"#)
    );

    let check = std::process::Command::new(env!("CARGO_BIN_EXE_blobs"))
        .arg("check")
        .env("TOKEN_SECRET", fixture::SECRET)
        .env("STORAGE", storage.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{report}");
    assert_eq!(report.matches("problem:").count(), 2, "{report}");
    for aside in [
        format!("{bc}.json.case-conflict-1"),
        format!("{de}.json.case-conflict-1"),
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.contains(&aside) && l.contains("another spelling")),
            "{aside} in:\n{report}"
        );
    }

    let server = fixture::TestServer::start_in(storage).await;
    let storage = server.stop().await;
    assert_eq!(
        on_disk(storage.path()),
        wanted,
        "a second start moves nothing"
    );
}

/// Graceful shutdown answers the writes already sent: every acknowledged write is stored.
async fn shutdown_acknowledges_writes_in_flight(test_store: TestStore) {
    let name = test_store.name();
    let server = test_store.start(tempfile::tempdir().unwrap()).await;
    let r = hex_ref("e1");
    let mut client = server.subscribed("b", &r).await;
    let first = client.call1("set", json!({"data": "aGk="})).await.unwrap();
    assert_eq!(first["version"], 1, "{name}");
    // A burst of writes sent without waiting, then shutdown at once: each is either
    // finished and acknowledged or refused with an error, never left unanswered while the
    // socket lives. (All are sent before the shutdown begins, and the server closes no socket
    // before it has finished what it accepted.) A socket's events run in order, so the
    // acknowledged writes are the first of the burst, and the refused ones the rest.
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
        let packet = fixture::within(&format!("the answer to write {id}"), client.wait_ack(id))
            .await
            .unwrap_or_else(|e| panic!("{name}: write {id} was left unanswered: {e}"));
        let ack: Value = serde_json::from_str(&packet[packet.find('[').unwrap()..]).unwrap();
        if ack[0]["success"] == true {
            assert_eq!(
                acknowledged,
                id - 100,
                "{name}: write {id} acknowledged after a refused one"
            );
            assert_eq!(ack[0]["version"], id - 99, "{name}: {packet}");
            acknowledged += 1;
        } else {
            assert_eq!(
                ack[0],
                json!({ "error": "Server is shutting down" }),
                "{name}: write {id}"
            );
        }
    }
    let storage = stopping.await.unwrap();
    let stored = test_store.read(storage.path(), &blob_name("b", &r)).await;
    let stored: Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(
        stored["version"].as_u64().unwrap(),
        acknowledged,
        "{name}: the acknowledged writes are stored, and no refused one"
    );
    println!(
        "{name}: shutdown acknowledged {} of the 9 writes in flight",
        acknowledged - 1
    );
}

fn bucket() -> Bucket {
    Bucket::parse("b").unwrap()
}

fn r(pair: &str) -> Ref {
    Ref::parse(&pair.repeat(32)).unwrap()
}

fn request(edit: Edit, expect: Expect) -> SetRequest {
    SetRequest {
        edit,
        expect,
        ip: "127.0.0.1".into(),
        now: now_ms(),
        id: None,
    }
}

fn put(expect: Expect, data: &str) -> SetRequest {
    request(Edit::Put(Some(data.to_owned())), expect)
}

/// A delete of the live blob at `version`.
fn delete(version: u64) -> SetRequest {
    request(Edit::Delete, Expect::Version(version))
}

fn committed(outcome: SetOutcome) -> u64 {
    match outcome {
        SetOutcome::Committed { version, .. } => version,
        other => panic!("expected a commit, got {other:?}"),
    }
}

/// Create, read, compare-and-swap; a stale write gets the current data.
async fn compare_and_swap(test_store: TestStore) {
    let (name, dir) = (test_store.name(), tempfile::tempdir().unwrap());
    let store = &test_store.versioned(dir.path()).await;
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

/// A delete leaves a tombstone that keeps the version; creating again continues from it.
async fn tombstones(test_store: TestStore) {
    let (name, dir) = (test_store.name(), tempfile::tempdir().unwrap());
    let store = &test_store.versioned(dir.path()).await;
    let (b, one) = (bucket(), r("b2"));
    committed(
        store
            .set(&b, &one, put(Expect::Absent, "AA=="))
            .await
            .unwrap(),
    );
    assert_eq!(
        committed(store.set(&b, &one, delete(1)).await.unwrap()),
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

/// The listing: live blobs in ref order, paged with `after`.
async fn listing(test_store: TestStore) {
    let (name, dir) = (test_store.name(), tempfile::tempdir().unwrap());
    let store = &test_store.versioned(dir.path()).await;
    let b = bucket();
    for pair in ["05", "a0", "0f", "ff", "10"] {
        committed(
            store
                .set(&b, &r(pair), put(Expect::Absent, "AA=="))
                .await
                .unwrap(),
        );
    }
    committed(store.set(&b, &r("10"), delete(1)).await.unwrap());
    let refs = |page: Vec<(Ref, blobs::storage::store::Listed)>| {
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

/// 16 writers run compare-and-swap loops on one blob: every version is won exactly once, whatever the backend
/// (on the object store, only its conditional writes decide).
async fn concurrent_writers_win_each_version_once(test_store: TestStore) {
    const WRITERS: usize = 16;
    const WRITES_EACH: usize = 5;
    let (name, dir) = (test_store.name(), tempfile::tempdir().unwrap());
    let store = test_store.versioned(dir.path()).await;
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
