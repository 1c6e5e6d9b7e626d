//! The Blob Service API against the real server, with reqwest: multipart uploads and every
//! refusal, reads by handle (Bearer and `access_token`), listing, deletion, retention and its
//! sweep, and the metadata stream over HTTP and Socket.IO.

use std::path::Path;
use std::time::Duration;

use crate::fixture::service_api::{Api, PNG, next_line, subscription};
use crate::fixture::{self, TestServer, read_only_token, token};
use blobs::names::ContentHash;
use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};

async fn error_of(response: Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"].as_str().expect("JSON error body").to_owned()
}

fn handles_of(page: &Value) -> Vec<String> {
    page["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["handle"].as_str().unwrap().to_owned())
        .collect()
}

/// Every file under `dir` (recursively), temp files included.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}

fn content_path(server: &TestServer, bucket: &str, bytes: &[u8]) -> std::path::PathBuf {
    let hash = ContentHash::of(bytes);
    server
        .storage()
        .join(bucket)
        .join("cas")
        .join(hash.shard())
        .join(hash.as_str())
}

fn now_ms() -> u64 {
    blobs::clock::now_ms()
}

/// An upload is stored once and named by its handle; its bytes come back with their
/// Content-Type and ranges, its record as metadata, with Bearer or `access_token`; a read-only
/// token reads but neither uploads nor deletes; deleting makes it 404.
#[tokio::test]
async fn upload_read_metadata_and_delete() {
    let server = TestServer::start().await;
    let api = Api::new(&server, "b");
    let photo = b"\x89PNG pretend this is a photo".to_vec();
    let before = now_ms();
    let handle = api
        .upload(&photo, json!({ "semantics": "inspection-photo" }))
        .await;
    assert_eq!(handle.len(), 32);
    assert_eq!(
        std::fs::read(content_path(&server, "b", &photo)).unwrap(),
        photo
    );

    let read = api.get(&format!("/blobs/{handle}")).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.headers()["content-type"], PNG);
    let hash = ContentHash::of(&photo);
    assert_eq!(read.headers()["etag"], format!("\"{hash}\"").as_str());
    assert_eq!(read.bytes().await.unwrap(), photo);
    let partial = api
        .request(Method::GET, &format!("/blobs/{handle}"))
        .header("range", "bytes=1-3")
        .send()
        .await
        .unwrap();
    assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(partial.bytes().await.unwrap(), &photo[1..=3]);

    let record: Value = api
        .get(&format!("/blobs/{handle}/metadata"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(record["handle"], handle);
    assert_eq!(record["hash"], hash.as_str());
    assert_eq!(record["size"], photo.len());
    assert_eq!(record["contentType"], PNG);
    assert_eq!(record["fileName"], "photo.png");
    assert_eq!(record["semantics"], "inspection-photo");
    assert_eq!(
        record["retentionPolicy"],
        json!({ "policy": "keepForever" })
    );
    assert!(
        record.get("uploader").is_none(),
        "the uploader's address is the operator's: {record}"
    );
    let created = record["created"].as_u64().unwrap();
    assert!(created >= before && created <= now_ms());

    // A browser's <img src>: the token as a query parameter, on GET only.
    let img = Client::new()
        .get(format!(
            "{}/blobs/{handle}?access_token={}",
            api.base, api.token
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(img.status(), StatusCode::OK);
    assert_eq!(img.bytes().await.unwrap(), photo);
    let by_query = Client::new()
        .delete(format!(
            "{}/blobs/{handle}?access_token={}",
            api.base, api.token
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), StatusCode::UNAUTHORIZED);
    for unauthorized in [
        Client::new().get(format!("{}/blobs/{handle}", api.base)),
        Client::new().get(format!("{}/blobs/{handle}?access_token=nope", api.base)),
        Client::new().get(format!("{}/blobs", api.base)),
    ] {
        let response = unauthorized.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(!error_of(response).await.is_empty());
    }

    // Another bucket sees nothing.
    let other = Api::new(&server, "other");
    assert_eq!(
        other.status(Method::GET, &format!("/blobs/{handle}")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        other
            .status(Method::DELETE, &format!("/blobs/{handle}"))
            .await,
        StatusCode::NOT_FOUND
    );

    let reader = Api {
        base: api.base.clone(),
        token: read_only_token("b"),
    };
    assert_eq!(
        reader
            .status(Method::GET, &format!("/blobs/{handle}"))
            .await,
        StatusCode::OK
    );
    assert_eq!(
        reader
            .upload_raw(b"x", json!({ "semantics": "s" }))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        reader
            .status(Method::DELETE, &format!("/blobs/{handle}"))
            .await,
        StatusCode::FORBIDDEN
    );

    assert_eq!(
        api.status(Method::GET, "/blobs/NOT-A-HANDLE").await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.status(Method::DELETE, &format!("/blobs/{handle}"))
            .await,
        StatusCode::NO_CONTENT
    );
    for path in [
        format!("/blobs/{handle}"),
        format!("/blobs/{handle}/metadata"),
    ] {
        let gone = api.get(&path).await;
        assert_eq!(gone.status(), StatusCode::NOT_FOUND);
        assert!(!error_of(gone).await.is_empty());
    }
    assert_eq!(
        api.status(Method::DELETE, &format!("/blobs/{handle}"))
            .await,
        StatusCode::NOT_FOUND
    );
    // The content was the service's alone: deleting its only record removed it.
    assert!(!content_path(&server, "b", &photo).exists());
    server.stop().await;
}

/// Every malformed upload is a 4xx with a JSON error and stores nothing.
#[tokio::test]
async fn a_refused_upload_stores_nothing() {
    let server = TestServer::start_with(
        tempfile::tempdir().unwrap(),
        &["--content-max-bytes", "65536"],
    )
    .await;
    let api = Api::new(&server, "b");
    let past = now_ms() - 1000;
    let bytes = b"bytes".to_vec();
    for (metadata, expect) in [
        (json!({}), "semantics"),
        (json!({ "semantics": "" }), "semantics"),
        (json!({ "semantics": "s".repeat(257) }), "semantics"),
        (json!({ "semantics": 5 }), "metadata"),
        (
            json!({ "semantics": "s", "retentionPolicy": { "policy": "keepALittle" } }),
            "metadata",
        ),
        (
            json!({ "semantics": "s", "retentionPolicy": { "policy": "keepUntilTime", "until": past } }),
            "past",
        ),
        (
            json!({ "semantics": "s", "retentionPolicy": { "policy": "keepForDuration", "durationMs": 0 } }),
            "durationMs",
        ),
    ] {
        let response = api.upload_raw(&bytes, metadata.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{metadata}");
        let error = error_of(response).await;
        assert!(error.contains(expect), "{metadata}: {error}");
    }

    let send = |form: Form| api.request(Method::POST, "/blobs").multipart(form).send();
    let blob_only = Form::new().part("blob", Part::bytes(bytes.clone()));
    let metadata_only = Form::new().text("metadata", json!({ "semantics": "s" }).to_string());
    let not_json = Form::new()
        .part("blob", Part::bytes(bytes.clone()))
        .text("metadata", "{semantics: s");
    let stray = Form::new()
        .part("blob", Part::bytes(bytes.clone()))
        .text("metadata", json!({ "semantics": "s" }).to_string())
        .text("extra", "?");
    for form in [blob_only, metadata_only, not_json, stray] {
        let response = send(form).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(!error_of(response).await.is_empty());
    }
    let plain = api
        .request(Method::POST, "/blobs")
        .body("not multipart")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::BAD_REQUEST);
    assert!(error_of(plain).await.contains("multipart"));

    // Over the limit, while the part streams in.
    let big = api
        .upload_raw(&vec![1u8; 200_000], json!({ "semantics": "s" }))
        .await;
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_of(big).await.contains("65536"));

    assert_eq!(
        files_under(&server.storage().join("b")),
        Vec::<String>::new(),
        "no content, record or temp file"
    );
    assert_eq!(handles_of(&api.list("").await), Vec::<String>::new());
    server.stop().await;
}

/// The listing is newest first, filtered by semantics, and paged with a cursor.
#[tokio::test]
async fn listing_by_semantics_newest_first_in_pages() {
    let server = TestServer::start().await;
    let api = Api::new(&server, "b");
    let mut photos = Vec::new();
    for i in 0..5u8 {
        let semantics = if i % 2 == 0 { "photo" } else { "pdf" };
        let handle = api.upload(&[i], json!({ "semantics": semantics })).await;
        if semantics == "photo" {
            photos.push(handle);
        }
    }
    photos.reverse();
    assert_eq!(handles_of(&api.list("semantics=photo").await), photos);
    assert_eq!(handles_of(&api.list("").await).len(), 5);

    let first = api.list("semantics=photo&limit=2").await;
    assert_eq!(handles_of(&first), photos[..2]);
    let cursor = first["next"].as_str().unwrap().to_owned();
    let second = api
        .list(&format!("semantics=photo&limit=2&cursor={cursor}"))
        .await;
    assert_eq!(handles_of(&second), photos[2..]);
    assert!(second.get("next").is_none());
    for bad in ["limit=0", "limit=1001", "cursor=nonsense", "limit=x"] {
        assert_eq!(
            api.status(Method::GET, &format!("/blobs?{bad}")).await,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    server.stop().await;
}

/// An expired upload is gone for readers at once; the sweep then deletes its record and the
/// content nothing else refers to, while content another record or a shared flow still
/// needs survives.
#[tokio::test]
async fn retention_expires_readers_at_once_and_the_sweep_frees_content() {
    let server = TestServer::start_with(
        tempfile::tempdir().unwrap(),
        &["--retention-sweep-interval", "100ms"],
    )
    .await;
    let api = Api::new(&server, "b");
    let short = |ms: u64| json!({ "semantics": "s", "retentionPolicy": { "policy": "keepForDuration", "durationMs": ms } });

    let alone = b"expires alone".to_vec();
    let shared = b"shared by two records".to_vec();
    let nodal = b"also stored by the content flow".to_vec();
    let expiring = api.upload(&alone, short(1500)).await;
    let shared_expiring = api.upload(&shared, short(1500)).await;
    let shared_forever = api.upload(&shared, json!({ "semantics": "s" })).await;
    let nodal_expiring = api.upload(&nodal, short(1500)).await;
    // The same bytes stored through the content-addressed flow: no longer the service's alone.
    let put = Client::new()
        .put(format!(
            "http://{}/blobs/{}",
            server.addr,
            ContentHash::of(&nodal)
        ))
        .bearer_auth(token("b"))
        .body(nodal.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK, "already present");
    let until = now_ms() + 1500;
    let by_time = api
        .upload(
            b"until a time",
            json!({ "semantics": "s", "retentionPolicy": { "policy": "keepUntilTime", "until": until } }),
        )
        .await;
    assert_eq!(
        api.status(Method::GET, &format!("/blobs/{expiring}")).await,
        StatusCode::OK
    );

    // Time passes: the subject of this test is the clock, not another task.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    for handle in [&expiring, &shared_expiring, &nodal_expiring, &by_time] {
        assert_eq!(
            api.status(Method::GET, &format!("/blobs/{handle}")).await,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(handles_of(&api.list("").await), [shared_forever.as_str()]);

    let alone_path = content_path(&server, "b", &alone);
    // The retention sweep runs in the background.
    fixture::eventually("the sweep removing unreferenced content", async || {
        !alone_path.exists()
    })
    .await;
    let records = server.storage().join("b/handles");
    fixture::eventually("the sweep removing expired records", async || {
        files_under(&records).len() == 1
    })
    .await;
    assert!(content_path(&server, "b", &shared).exists());
    assert!(content_path(&server, "b", &nodal).exists());
    let still = api.get(&format!("/blobs/{shared_forever}")).await;
    assert_eq!(still.bytes().await.unwrap(), shared);
    server.stop().await;
}

/// The metadata stream replays records created after `since`, then delivers each new upload
/// of the bucket, one JSON record per line; other buckets' uploads never appear; every socket
/// of the bucket receives `blob-metadata`.
#[tokio::test]
async fn the_metadata_stream_replays_and_delivers_per_bucket() {
    let server = TestServer::start().await;
    let api = Api::new(&server, "b");
    let other = Api::new(&server, "other");
    let old = api.upload(b"old", json!({ "semantics": "old" })).await;
    let recent = api
        .upload(b"recent", json!({ "semantics": "recent" }))
        .await;
    // Every record is created after the one before it, so `since` can name a record.
    let old_record: Value = api
        .get(&format!("/blobs/{old}/metadata"))
        .await
        .json()
        .await
        .unwrap();
    let cut = old_record["created"].as_u64().unwrap();

    let response = api.subscribe(&subscription(Some(cut))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let replayed = next_line(&mut stream, &mut buffer).await;
    assert_eq!(
        replayed["handle"], recent,
        "only records after since: not {old}"
    );
    assert_eq!(replayed["semantics"], "recent");

    let other_response = other.subscribe(&subscription(None)).await;
    let mut other_stream = other_response.bytes_stream();
    let mut other_buffer = String::new();

    let mut socket = server.client("b").await;
    let mut stranger = server.client("other").await;
    let live = api
        .upload(
            b"live",
            json!({ "semantics": "live", "retentionPolicy": { "policy": "keepForDuration", "durationMs": 60000 } }),
        )
        .await;
    let event = next_line(&mut stream, &mut buffer).await;
    assert_eq!(event["handle"], live);
    assert_eq!(event["semantics"], "live");
    assert_eq!(event["size"], 4);
    assert_eq!(event["contentType"], PNG);
    assert_eq!(
        event["retentionPolicy"],
        json!({ "policy": "keepForDuration", "durationMs": 60000 })
    );
    assert!(event["created"].as_u64().is_some());
    let announced = socket.next_event("blob-metadata").await.unwrap();
    assert_eq!(announced[0], event);

    // The other bucket's stream and socket: their next event is their own upload.
    let theirs = other
        .upload(b"theirs", json!({ "semantics": "theirs" }))
        .await;
    assert_eq!(
        next_line(&mut other_stream, &mut other_buffer).await["handle"],
        theirs
    );
    let seen = stranger.next_event("blob-metadata").await.unwrap();
    assert_eq!(seen[0]["handle"], theirs);
    assert_eq!(stranger.pending_events("blob-metadata"), 0);

    // A subscription to another stream gets no records; a malformed one is a 400.
    let unrelated = api
        .subscribe(&json!({ "subscriptions": [{ "name": "some-other-stream" }], "since": 0 }))
        .await;
    assert_eq!(unrelated.status(), StatusCode::OK);
    let bad = api.subscribe(&json!({ "subscribe": [] })).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(!error_of(bad).await.is_empty());
    drop(unrelated);
    server.stop().await;
}

/// Records survive a restart.
#[tokio::test]
async fn records_survive_a_restart() {
    let server = TestServer::start().await;
    let api = Api::new(&server, "b");
    let handle = api.upload(b"durable", json!({ "semantics": "s" })).await;
    let storage = server.stop().await;
    let server = TestServer::start_in(storage).await;
    let api = Api::new(&server, "b");
    let read = api.get(&format!("/blobs/{handle}")).await;
    assert_eq!(read.bytes().await.unwrap(), b"durable".as_slice());
    assert_eq!(handles_of(&api.list("semantics=s").await), [handle]);
    server.stop().await;
}

/// An idle metadata stream gets keep-alive newlines (here every 50 ms), which a reader that
/// skips empty lines ignores.
#[tokio::test]
async fn an_idle_stream_gets_keep_alive_newlines() {
    let server = TestServer::start_with(
        tempfile::tempdir().unwrap(),
        &["--stream-keep-alive", "50ms"],
    )
    .await;
    let api = Api::new(&server, "b");
    let response = api.subscribe(&subscription(None)).await;
    let mut stream = response.bytes_stream();
    for _ in 0..2 {
        let chunk = fixture::within("a keep-alive newline", stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(chunk.as_ref(), b"\n");
    }
    let handle = api
        .upload(b"after the silence", json!({ "semantics": "s" }))
        .await;
    let mut buffer = String::new();
    assert_eq!(next_line(&mut stream, &mut buffer).await["handle"], handle);
    server.stop().await;
}

/// Deleting an upload never takes the bytes of a concurrent upload of the same content: in
/// every round, the new upload's bytes stay readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_never_races_an_upload_of_the_same_bytes() {
    let server = TestServer::start().await;
    let api = Api::new(&server, "b");
    let bytes = vec![7u8; 64 * 1024];
    for round in 0..30 {
        let first = api.upload(&bytes, json!({ "semantics": "s" })).await;
        let delete = api
            .request(Method::DELETE, &format!("/blobs/{first}"))
            .send();
        let (deleted, second) =
            tokio::join!(delete, api.upload(&bytes, json!({ "semantics": "s" })));
        assert_eq!(deleted.unwrap().status(), StatusCode::NO_CONTENT);
        let read = api.get(&format!("/blobs/{second}")).await;
        assert_eq!(read.status(), StatusCode::OK, "round {round}");
        assert_eq!(read.bytes().await.unwrap(), bytes);
        let cleanup = api
            .status(Method::DELETE, &format!("/blobs/{second}"))
            .await;
        assert_eq!(cleanup, StatusCode::NO_CONTENT);
    }
    assert!(!content_path(&server, "b", &bytes).exists());
    server.stop().await;
}

/// Content that a shared flow deletes while an upload still refers to it stays for that
/// upload, and goes with it; content a shared flow stores again after a repair is no longer
/// the service's to remove.
#[tokio::test]
async fn shared_deletes_and_repairs_respect_the_other_flow() {
    let server = TestServer::start().await;
    let api = Api::new(&server, "b");
    let cas_url = |bytes: &[u8]| format!("http://{}/blobs/{}", server.addr, ContentHash::of(bytes));
    let shared = Client::new();

    let photo = b"needed by an upload".to_vec();
    let handle = api.upload(&photo, json!({ "semantics": "s" })).await;
    let deleted = shared
        .delete(cas_url(&photo))
        .bearer_auth(token("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let read = api.get(&format!("/blobs/{handle}")).await;
    assert_eq!(read.bytes().await.unwrap(), photo, "the upload still reads");
    assert_eq!(
        api.status(Method::DELETE, &format!("/blobs/{handle}"))
            .await,
        StatusCode::NO_CONTENT
    );
    assert!(
        !content_path(&server, "b", &photo).exists(),
        "gone with its last upload"
    );

    // A corrupt file repaired by a shared PUT belongs to the shared flow from then on.
    let repaired = b"repaired by the shared flow".to_vec();
    let handle = api.upload(&repaired, json!({ "semantics": "s" })).await;
    std::fs::write(content_path(&server, "b", &repaired), b"bit rot").unwrap();
    let put = shared
        .put(cas_url(&repaired))
        .bearer_auth(token("b"))
        .body(repaired.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    assert_eq!(
        api.status(Method::DELETE, &format!("/blobs/{handle}"))
            .await,
        StatusCode::NO_CONTENT
    );
    let kept = shared
        .get(cas_url(&repaired))
        .bearer_auth(token("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(kept.bytes().await.unwrap(), repaired);
    server.stop().await;
}

/// Service content that no record refers to — what a crash between the content and its
/// record leaves — is removed by the sweep.
#[tokio::test]
async fn the_sweep_removes_content_a_crash_left_without_a_record() {
    let server = TestServer::start().await;
    let api = Api::new(&server, "b");
    let bytes = b"left behind".to_vec();
    let handle = api.upload(&bytes, json!({ "semantics": "s" })).await;
    let storage = server.stop().await;
    // The crash: the record never became durable.
    let records = storage.path().join("b/handles").join(&handle[..2]);
    std::fs::remove_file(records.join(format!("{handle}.json"))).unwrap();

    let server = TestServer::start_with(storage, &["--retention-sweep-interval", "100ms"]).await;
    let orphan = content_path(&server, "b", &bytes);
    fixture::eventually("the sweep removing orphaned content", async || {
        !orphan.exists()
    })
    .await;
    assert!(files_under(&server.storage().join("b/cas")).is_empty());
    server.stop().await;
}

/// Uploaded bytes never run as a page of the server's origin: `nosniff` and a sandbox on
/// GET, HEAD and ranges, and a download for types that could carry script.
#[tokio::test]
async fn uploads_are_served_so_they_cannot_run_script() {
    let server = TestServer::start().await;
    let api = Api::new(&server, "b");
    let upload_as = |content_type: &'static str, bytes: &'static [u8]| {
        let form = Form::new()
            .part("blob", Part::bytes(bytes).mime_str(content_type).unwrap())
            .text("metadata", json!({ "semantics": "s" }).to_string());
        api.request(Method::POST, "/blobs").multipart(form).send()
    };
    for (content_type, bytes, attachment) in [
        ("text/html", b"<script>alert(1)</script>".as_slice(), true),
        ("image/svg+xml", b"<svg onload=alert(1)/>".as_slice(), true),
        ("image/png", b"\x89PNG".as_slice(), false),
    ] {
        let created: Value = upload_as(content_type, bytes)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let handle = created["handle"].as_str().unwrap();
        let read = api.get(&format!("/blobs/{handle}")).await;
        let headers = read.headers();
        assert_eq!(headers["content-type"], content_type);
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["content-security-policy"], "sandbox");
        assert_eq!(
            headers
                .get("content-disposition")
                .is_some_and(|v| v == "attachment"),
            attachment,
            "{content_type}"
        );
        let path = format!("/blobs/{handle}");
        for (what, response) in [
            (
                "HEAD",
                api.request(Method::HEAD, &path).send().await.unwrap(),
            ),
            (
                "range",
                api.request(Method::GET, &path)
                    .header("range", "bytes=0-1")
                    .send()
                    .await
                    .unwrap(),
            ),
        ] {
            assert!(response.status().is_success(), "{what}");
            let headers = response.headers();
            assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
            assert_eq!(headers["content-security-policy"], "sandbox", "{what}");
        }
    }
    server.stop().await;
}

/// The address an upload comes from (`X-Real-IP` from the loopback proxy).
const UPLOADER: &str = "203.0.113.7";

/// Uploads `bytes` to `api`'s bucket from [`UPLOADER`]; the new handle.
async fn upload_from_uploader(api: &Api, bytes: &'static [u8]) -> String {
    let form = Form::new()
        .part("blob", Part::bytes(bytes).mime_str(PNG).unwrap())
        .text("metadata", json!({ "semantics": "s" }).to_string());
    let response = api
        .request(Method::POST, "/blobs")
        .header("x-real-ip", UPLOADER)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    body["handle"].as_str().unwrap().to_owned()
}

/// The text of the record file of `handle` in bucket `b`, as the operator reads it.
fn record_file(server: &TestServer, handle: &str) -> String {
    let path = server
        .storage()
        .join("b/handles")
        .join(&handle[..2])
        .join(format!("{handle}.json"));
    std::fs::read_to_string(path).unwrap()
}

/// By default no token holder learns where an upload came from: the address is in the record
/// file, for the operator, and in none of the listing, `/metadata`, the metadata stream (live
/// and replayed) or the `blob-metadata` event.
#[tokio::test]
async fn uploader_addresses_are_hidden_from_token_holders() {
    let server = TestServer::start().await;
    let api = Api::new(&server, "b");
    let live = api.subscribe(&subscription(None)).await;
    let mut stream = live.bytes_stream();
    let mut buffer = String::new();
    let mut socket = server.client("b").await;

    let handle = upload_from_uploader(&api, b"where from?").await;
    assert!(record_file(&server, &handle).contains(UPLOADER));

    let event = next_line(&mut stream, &mut buffer).await;
    assert_eq!(event["handle"], handle);
    let announced = socket.next_event("blob-metadata").await.unwrap();
    assert_eq!(announced[0]["handle"], handle);
    let replay = api.subscribe(&subscription(Some(0))).await;
    let mut replay_stream = replay.bytes_stream();
    let mut replay_buffer = String::new();
    let replayed = next_line(&mut replay_stream, &mut replay_buffer).await;
    assert_eq!(replayed["handle"], handle);
    let listed = api.list("").await;
    assert_eq!(handles_of(&listed), std::slice::from_ref(&handle));
    let metadata: Value = api
        .get(&format!("/blobs/{handle}/metadata"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["handle"], handle);
    for (what, seen) in [
        ("stream", event),
        ("blob-metadata", json!(announced)),
        ("replay", replayed),
        ("listing", listed),
        ("metadata", metadata),
    ] {
        let text = seen.to_string();
        assert!(
            !text.contains(UPLOADER) && !text.contains("uploader"),
            "{what}: {text}"
        );
    }
    server.stop().await;
}

/// With `EXPOSE_UPLOADER_IP=true` the listing and `/metadata` show `uploader`; the metadata
/// stream and `blob-metadata` keep their shape without it.
#[tokio::test]
async fn uploader_addresses_are_shown_when_the_operator_exposes_them() {
    let storage = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(storage, &["--expose-uploader-ip", "true"]).await;
    let api = Api::new(&server, "b");
    let mut socket = server.client("b").await;
    let handle = upload_from_uploader(&api, b"shown").await;
    let listed = api.list("").await;
    assert_eq!(listed["blobs"][0]["uploader"], UPLOADER);
    let metadata: Value = api
        .get(&format!("/blobs/{handle}/metadata"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["uploader"], UPLOADER);
    let announced = socket.next_event("blob-metadata").await.unwrap();
    assert_eq!(announced[0]["handle"], handle);
    assert!(announced[0].get("uploader").is_none());
    server.stop().await;
}
