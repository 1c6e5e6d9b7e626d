//! Per-bucket quotas and the free-space reserve against the real server: every write path is
//! refused past a bucket's quota while other buckets still write, deletes make room, operator
//! exceptions apply, a content body is cut off while it arrives, the record count is bounded,
//! a reserve larger than the disk refuses every write but no read or delete, `blobs usage`
//! reports what is stored, and the object store is held to its quota too.

use std::path::Path;
use std::process::{Command, Output};

use crate::fixture::service_api::Api;
use crate::fixture::{self, SECRET, TestServer, hex_ref, token};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use blobs::names::ContentHash;
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};

/// The quota of the buckets in these tests, in bytes.
const QUOTA: u64 = 10_000;

fn hash_of(bytes: &[u8]) -> String {
    ContentHash::of(bytes).to_string()
}

/// `n` bytes that differ with `seed` (distinct content per call).
fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

/// `PUT /v1/blobs/{r}` of a new blob.
async fn put_blob(server: &TestServer, bucket: &str, r: &str, body: Vec<u8>) -> Response {
    Client::new()
        .put(format!("http://{}/v1/blobs/{r}", server.addr))
        .bearer_auth(token(bucket))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// `PUT /blobs/{hash}` of `body`.
async fn put_content(server: &TestServer, bucket: &str, body: Vec<u8>) -> Response {
    Client::new()
        .put(format!("http://{}/blobs/{}", server.addr, hash_of(&body)))
        .bearer_auth(token(bucket))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A 507 whose JSON error names the bucket quota (`"Bucket quota"`) or the disk (`"low on
/// disk"`).
async fn assert_refused(response: Response, says: &str) {
    assert_eq!(response.status(), StatusCode::INSUFFICIENT_STORAGE);
    let body: Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains(says), "{error:?} should say {says:?}");
}

/// Every write path of one bucket, each with `size` new bytes: the HTTP blob `PUT`, the
/// Socket.IO `set`, the content `PUT`, the Socket.IO `blob-upload`, the Blob Service upload.
/// Each answer: the HTTP status, or the ack's `error` (`None` when it succeeded).
async fn write_everywhere(
    server: &TestServer,
    bucket: &str,
    size: usize,
    seed: u8,
) -> Vec<(&'static str, Result<StatusCode, Option<String>>)> {
    let mut answers = Vec::new();
    let r = hex_ref(&format!("{seed:02x}"));
    let blob = put_blob(server, bucket, &r, bytes(size, seed)).await;
    answers.push(("http blob", Ok(blob.status())));
    let mut client = server.client(bucket).await;
    let set = client
        .call1(
            "set",
            json!({ "ref": hex_ref(&format!("{:02x}", seed ^ 0xff)), "data": STANDARD.encode(bytes(size, seed ^ 1)) }),
        )
        .await
        .unwrap();
    answers.push(("socket set", Err(set["error"].as_str().map(str::to_owned))));
    let content = put_content(server, bucket, bytes(size, seed ^ 2)).await;
    answers.push(("http content", Ok(content.status())));
    let inline = bytes(size, seed ^ 3);
    let uploaded = client
        .call1(
            "blob-upload",
            json!({ "blobs": [{ "hash": hash_of(&inline), "data_b64": STANDARD.encode(&inline) }] }),
        )
        .await
        .unwrap();
    let uploaded = match uploaded["error"].as_str() {
        Some(error) => Some(error.to_owned()),
        None if uploaded["accepted"] == json!([hash_of(&inline)]) => None,
        None => Some(uploaded.to_string()),
    };
    answers.push(("socket blob-upload", Err(uploaded)));
    let service = Api::new(server, bucket)
        .upload_raw(&bytes(size, seed ^ 4), json!({ "semantics": "s" }))
        .await;
    answers.push(("blob service upload", Ok(service.status())));
    answers
}

/// Another bucket than the full one writes on every path.
async fn other_bucket_writes_everywhere(server: &TestServer) {
    for (path, answer) in write_everywhere(server, "other", 1000, 20).await {
        match answer {
            Ok(status) => assert!(status.is_success(), "{path}: {status}"),
            Err(error) => assert_eq!(error, None, "{path}"),
        }
    }
}

/// Deleting the full bucket's blob `first` (at version 1) makes room for 3,000 bytes.
async fn delete_makes_room(server: &TestServer, first: &str) {
    let deleted = Client::new()
        .delete(format!("http://{}/v1/blobs/{first}", server.addr))
        .bearer_auth(token("full"))
        .header("If-Match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        put_content(server, "full", bytes(3000, 13)).await.status(),
        StatusCode::CREATED
    );
}

/// Past its quota a bucket gets 507 or an `{ error }` naming the quota on each write path,
/// while another bucket writes the same; a delete makes room again, and a bucket the operator
/// gave more takes more.
#[tokio::test]
async fn each_write_path_stops_at_the_quota_and_other_buckets_go_on() {
    let quota = QUOTA.to_string();
    let server = TestServer::start_with(
        tempfile::tempdir().unwrap(),
        &[
            "--bucket-quota-bytes",
            &quota,
            "--bucket-quotas",
            "big:1MiB",
        ],
    )
    .await;
    // 6,000 bytes are a file of about 8,070 (base64 and the JSON around it).
    let first = hex_ref("01");
    assert_eq!(
        put_blob(&server, "full", &first, bytes(6000, 1))
            .await
            .status(),
        StatusCode::CREATED
    );

    for (path, answer) in write_everywhere(&server, "full", 3000, 10).await {
        match answer {
            Ok(status) => assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{path}"),
            Err(error) => {
                let error = error.unwrap_or_else(|| panic!("{path} was accepted"));
                assert!(
                    error.starts_with("Bucket quota exceeded"),
                    "{path}: {error}"
                );
            }
        }
    }
    let refused = put_content(&server, "full", bytes(3000, 11)).await;
    assert_refused(refused, "Bucket quota exceeded").await;
    // What still fits is taken.
    assert_eq!(
        put_content(&server, "full", bytes(1000, 12)).await.status(),
        StatusCode::CREATED
    );
    // Reads go on.
    let read = Client::new()
        .get(format!("http://{}/v1/blobs/{first}", server.addr))
        .bearer_auth(token("full"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);

    other_bucket_writes_everywhere(&server).await;

    // A delete frees what the blob took.
    delete_makes_room(&server, &first).await;
    // And a content delete frees its bytes.
    let gone = Client::new()
        .delete(format!(
            "http://{}/blobs/{}",
            server.addr,
            hash_of(&bytes(3000, 13))
        ))
        .bearer_auth(token("full"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        put_content(&server, "full", bytes(5000, 14)).await.status(),
        StatusCode::CREATED
    );

    // The operator's exception: `big` takes 1 MiB.
    for i in 0..5u8 {
        let r = hex_ref(&format!("{:02x}", 0x40 + i));
        assert_eq!(
            put_blob(&server, "big", &r, bytes(6000, i)).await.status(),
            StatusCode::CREATED
        );
    }
    server.stop().await;
}

/// A content body past the quota is answered 507 while it is still arriving: the server does
/// not wait for the rest, and keeps nothing of it.
#[tokio::test]
async fn a_content_body_is_cut_off_at_the_quota_while_it_arrives() {
    let server = TestServer::start_with(
        tempfile::tempdir().unwrap(),
        &["--bucket-quota-bytes", "1MiB"],
    )
    .await;
    const CHUNK: usize = 64 * 1024;
    let (sender, chunks) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let body = futures_util::stream::unfold(chunks, |mut chunks| async move {
        let chunk = chunks.recv().await?;
        Some((Ok::<_, std::io::Error>(chunk), chunks))
    });
    // The name of 4 MiB that are never all sent.
    let hash = hash_of(b"never complete");
    let request = Client::new()
        .put(format!("http://{}/blobs/{hash}", server.addr))
        .bearer_auth(token("b"))
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let response = tokio::spawn(request);
    // 1.5 MiB: past the quota, well short of the body's end.
    for i in 0..24u8 {
        if sender.send(bytes(CHUNK, i)).await.is_err() {
            break;
        }
    }
    let response = fixture::within("the answer while the body is still open", response)
        .await
        .unwrap()
        .unwrap();
    assert_refused(response, "Bucket quota exceeded").await;
    drop(sender);
    let cas = server.storage().join("b/cas");
    let left: Vec<_> = walk(&cas);
    assert!(left.is_empty(), "nothing kept: {left:?}");
    server.stop().await;
}

/// Every file under `dir` (none when it does not exist).
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flat_map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

/// A bucket holds at most `BUCKET_MAX_RECORDS` Blob Service records: the next upload is 507
/// before its body is read, a delete makes room, and other buckets are not limited by it.
#[tokio::test]
async fn the_record_count_is_bounded_per_bucket() {
    let server =
        TestServer::start_with(tempfile::tempdir().unwrap(), &["--bucket-max-records", "2"]).await;
    let api = Api::new(&server, "b");
    let first = api.upload(b"one", json!({ "semantics": "s" })).await;
    api.upload(b"two", json!({ "semantics": "s" })).await;
    let third = api.upload_raw(b"three", json!({ "semantics": "s" })).await;
    assert_refused(third, "Blob Service records").await;
    Api::new(&server, "other")
        .upload(b"three", json!({ "semantics": "s" }))
        .await;
    assert_eq!(
        api.status(Method::DELETE, &format!("/blobs/{first}")).await,
        StatusCode::NO_CONTENT
    );
    api.upload(b"three", json!({ "semantics": "s" })).await;
    server.stop().await;
}

/// With a reserve larger than the disk's free space every write that adds bytes is refused
/// (507 naming the disk, or the `{ error }`), while reads and deletes go on, and the deletes
/// are durable across a restart (the journal and the checkpoint work).
#[tokio::test]
async fn a_reserve_larger_than_the_disk_refuses_writes_but_not_reads_or_deletes() {
    let server = TestServer::start().await;
    let (kept, removed) = (hex_ref("0a"), hex_ref("0b"));
    for r in [&kept, &removed] {
        assert_eq!(
            put_blob(&server, "b", r, b"before".to_vec()).await.status(),
            StatusCode::CREATED
        );
    }
    let content = b"stored before".to_vec();
    assert_eq!(
        put_content(&server, "b", content.clone()).await.status(),
        StatusCode::CREATED
    );
    let storage = server.stop().await;

    let server = TestServer::start_with(storage, &["--min-free-bytes", "1000000TiB"]).await;
    for (path, answer) in write_everywhere(&server, "b", 100, 30).await {
        match answer {
            Ok(status) => assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{path}"),
            Err(error) => {
                let error = error.unwrap_or_else(|| panic!("{path} was accepted"));
                assert!(error.contains("low on disk space"), "{path}: {error}");
            }
        }
    }
    assert_refused(
        put_content(&server, "b", b"more".to_vec()).await,
        "low on disk space",
    )
    .await;
    let http = Client::new();
    let read = http
        .get(format!("http://{}/v1/blobs/{kept}", server.addr))
        .bearer_auth(token("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.bytes().await.unwrap(), &b"before"[..]);
    let read = http
        .get(format!(
            "http://{}/blobs/{}",
            server.addr,
            hash_of(&content)
        ))
        .bearer_auth(token("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.bytes().await.unwrap(), content);
    let deleted = http
        .delete(format!("http://{}/v1/blobs/{removed}", server.addr))
        .bearer_auth(token("b"))
        .header("If-Match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let storage = server.stop().await;

    let server = TestServer::start_in(storage).await;
    let status = |r: String| {
        let http = http.clone();
        let url = format!("http://{}/v1/blobs/{r}", server.addr);
        async move {
            http.get(url)
                .bearer_auth(token("b"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status(kept).await, StatusCode::OK);
    assert_eq!(status(removed).await, StatusCode::NOT_FOUND);
    server.stop().await;
}

/// A write sent again once it committed (its answer lost) is answered as committed even when
/// the server now refuses writes for space; a new write is refused.
#[tokio::test]
async fn a_committed_write_sent_again_is_answered_as_committed_when_writes_are_refused() {
    let server = TestServer::start().await;
    let r = hex_ref("0c");
    let write = json!({"data": "aGk=", "writer": "tab", "seq": 3});
    let mut client = server.subscribed("b", &r).await;
    let done = json!({"success": true, "version": 1});
    assert_eq!(client.call1("set", write.clone()).await.unwrap(), done);
    let storage = server.stop().await;

    let server = TestServer::start_with(storage, &["--min-free-bytes", "1000000TiB"]).await;
    let mut client = server.subscribed("b", &r).await;
    assert_eq!(client.call1("set", write).await.unwrap(), done);
    let next = json!({"data": "aGk=", "version": 1, "writer": "tab", "seq": 4});
    let refused = client.call1("set", next).await.unwrap();
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("low on disk space")),
        "{refused}"
    );
    server.stop().await;
}

/// `blobs <args>` with the test secret, `STORAGE` and `env`.
fn blobs(storage: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let cwd = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_blobs"))
        .args(args)
        .env("TOKEN_SECRET", SECRET)
        .env("STORAGE", storage)
        .envs(env.iter().copied())
        .current_dir(cwd.path())
        .output()
        .unwrap()
}

/// The `name=value` pairs of the line of `bucket` in `blobs usage` output.
fn usage_of(output: &Output, bucket: &str) -> Vec<(String, u64)> {
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("bucket={bucket} ")))
        .unwrap_or_else(|| panic!("no line of {bucket} in {text}"));
    line.split(' ')
        .skip(1)
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// The size of the file at `path`.
fn size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// `blobs usage` reports each kind's bytes, the record count and the quota of a store whose
/// files are known, for one bucket and for all; the server, restarted, measures the same.
#[tokio::test]
async fn the_usage_command_reports_what_is_stored() {
    let server = TestServer::start().await;
    let r = hex_ref("5a");
    put_blob(&server, "photos", &r, b"a blob".to_vec()).await;
    let content = bytes(4321, 7);
    put_content(&server, "photos", content.clone()).await;
    let api = Api::new(&server, "photos");
    let handle = api
        .upload(&bytes(1000, 8), json!({ "semantics": "s" }))
        .await;
    put_blob(&server, "notes", &r, b"note".to_vec()).await;
    let storage = server.stop().await;
    let root = storage.path();
    let blob_file = size(&root.join(format!("photos/5a/{r}.json")));
    let record_file = size(&root.join(format!("photos/handles/{}/{handle}.json", &handle[..2])));

    let env = [("BUCKET_QUOTAS", "photos:1MiB:7")];
    let one = blobs(root, &env, &["usage", "--bucket", "photos"]);
    let expected: Vec<(String, u64)> = [
        ("blobs", blob_file),
        ("content", 4321 + 1000),
        ("record_bytes", record_file),
        ("records", 1),
        ("total", blob_file + 5321 + record_file),
        ("quota_bytes", 1 << 20),
        ("quota_records", 7),
    ]
    .map(|(name, value)| (name.to_owned(), value))
    .to_vec();
    assert_eq!(usage_of(&one, "photos"), expected);
    let all = blobs(root, &env, &["usage"]);
    assert_eq!(usage_of(&all, "photos"), expected);
    let notes = usage_of(&all, "notes");
    assert_eq!(notes[0].1, size(&root.join(format!("notes/5a/{r}.json"))));
    assert_eq!(notes[5], ("quota_bytes".to_owned(), 10 << 30));
    let empty = blobs(root, &env, &["usage", "--bucket", "nothing"]);
    assert_eq!(usage_of(&empty, "nothing")[4], ("total".to_owned(), 0));
    let bad = blobs(root, &env, &["usage", "--bucket", "../x"]);
    assert_eq!(bad.status.code(), Some(2));

    // Restarted with the quota at exactly what is stored, the server has no byte of room.
    let total = (blob_file + 5321 + record_file).to_string();
    let server = TestServer::start_with(storage, &["--bucket-quota-bytes", &total]).await;
    let refused = put_content(&server, "photos", b"x".to_vec()).await;
    assert_eq!(refused.status(), StatusCode::INSUFFICIENT_STORAGE);
    let body: Value = refused.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.contains(&format!("holds {total}")), "{error}");
    server.stop().await;
}

/// On the object store the quota holds on every write path the same way (the usage measured
/// from the bucket's objects), a delete makes room, another bucket goes on, `request-upload`
/// is denied past the quota, and `blobs usage` reads the objects.
#[tokio::test]
#[ignore = "needs moto, the S3 server in tests/interop/.venv (run by scripts/test)"]
async fn the_object_store_is_held_to_the_quota() {
    let s3 = &fixture::s3().await;
    let mut options = fixture::s3_options(s3, fixture::OBJECT_PREFIX);
    options.extend(["--bucket-quota-bytes".to_owned(), QUOTA.to_string()]);
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), &options).await;
    let first = hex_ref("01");
    assert_eq!(
        put_blob(&server, "full", &first, bytes(6000, 1))
            .await
            .status(),
        StatusCode::CREATED
    );
    for (path, answer) in write_everywhere(&server, "full", 3000, 10).await {
        match answer {
            Ok(status) => assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{path}"),
            Err(error) => {
                let error = error.unwrap_or_else(|| panic!("{path} was accepted"));
                assert!(
                    error.starts_with("Bucket quota exceeded"),
                    "{path}: {error}"
                );
            }
        }
    }
    let mut client = server.client("full").await;
    let denied = client
        .call1(
            "request-upload",
            json!({ "hash": hash_of(b"big"), "size": 5000 }),
        )
        .await
        .unwrap();
    let reason = denied["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("Bucket quota exceeded"), "{denied}");
    other_bucket_writes_everywhere(&server).await;
    delete_makes_room(&server, &first).await;
    server.stop().await;

    let env = fixture::s3_env(s3, fixture::OBJECT_PREFIX);
    let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let usage = blobs(Path::new("/nonexistent"), &env, &["usage"]);
    let full = usage_of(&usage, "full");
    assert_eq!(full[1], ("content".to_owned(), 3000));
    assert!(full[4].1 <= QUOTA, "{full:?}");
    let other = usage_of(&usage, "other");
    assert_eq!(other[3], ("records".to_owned(), 1));
}
