//! The content-addressed `/blobs/{hash}` routes against the real server, with reqwest: every
//! status of the contract, ranges, the streaming limit, corrupt files, signed URLs, bucket
//! isolation and flat memory for a 50 MiB upload.

use std::time::Duration;

use crate::fixture::{self, SECRET, TestServer, read_only_token, token};
use blobs::auth::signed_url::{DirectUrls, SignedUrls};
use blobs::names::{Bucket, ContentHash};
use bytes::Bytes;
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

fn url(server: &TestServer, hash: &str) -> String {
    format!("http://{}/blobs/{hash}", server.addr)
}

fn hash_of(bytes: &[u8]) -> String {
    ContentHash::of(bytes).to_string()
}

/// A request with the Bearer token of `bucket`.
fn request(method: Method, url: &str, bucket: &str) -> RequestBuilder {
    Client::new()
        .request(method, url)
        .bearer_auth(token(bucket))
}

/// The status of the answer to `request`.
async fn status(request: RequestBuilder) -> StatusCode {
    request.send().await.unwrap().status()
}

async fn error_of(response: Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"].as_str().expect("JSON error body").to_owned()
}

/// The names of the files in the bucket's content store (temp files included).
fn stored_files(server: &TestServer, bucket: &str) -> Vec<String> {
    let mut names = Vec::new();
    let cas = server.storage().join(bucket).join("cas");
    let Ok(entries) = std::fs::read_dir(&cas) else {
        return names;
    };
    for entry in entries {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            for file in std::fs::read_dir(entry.path()).unwrap() {
                names.push(file.unwrap().file_name().to_string_lossy().into_owned());
            }
        } else {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names
}

/// PUT stores (201, then 200), GET and HEAD read, DELETE removes; 422, 400, 401, 403, 404 and
/// 415 as the contract says, with JSON errors.
#[tokio::test]
async fn put_get_head_delete_and_every_refusal() {
    let server = TestServer::start().await;
    let bytes = b"a photo, say".to_vec();
    let hash = hash_of(&bytes);
    let url = url(&server, &hash);

    let created = request(Method::PUT, &url, "b")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.headers()["etag"], format!("\"{hash}\"").as_str());
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["size"], bytes.len());
    let again = request(Method::PUT, &url, "b")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK, "already present");
    assert_eq!(stored_files(&server, "b"), [hash.as_str()]);
    let on_disk = server.storage().join("b/cas").join(&hash[..2]).join(&hash);
    assert_eq!(
        std::fs::read(on_disk).unwrap(),
        bytes,
        "raw bytes, not JSON"
    );

    let got = request(Method::GET, &url, "b").send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.headers()["content-type"], "application/octet-stream");
    assert_eq!(got.headers()["etag"], format!("\"{hash}\"").as_str());
    assert_eq!(got.headers()["accept-ranges"], "bytes");
    assert_eq!(got.bytes().await.unwrap(), bytes);
    let head = request(Method::HEAD, &url, "b").send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["content-length"],
        bytes.len().to_string().as_str()
    );
    assert!(head.bytes().await.unwrap().is_empty());
    let cached = request(Method::GET, &url, "b")
        .header("if-none-match", format!("\"{hash}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);

    // Bytes that do not hash to the name: 422, and nothing is stored under either name.
    let claimed = hash_of(b"what the client claims");
    let lie = request(Method::PUT, &self::url(&server, &claimed), "b")
        .body("other bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(lie.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_of(lie).await, "hash mismatch");
    assert_eq!(stored_files(&server, "b"), [hash.as_str()]);
    let missing = request(Method::GET, &self::url(&server, &claimed), "b")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_of(missing).await, "not found");
    let head_missing = request(Method::HEAD, &self::url(&server, &claimed), "b")
        .send()
        .await
        .unwrap();
    assert_eq!(head_missing.status(), StatusCode::NOT_FOUND);

    // Upper case is not lower-cased: the contract forbids it.
    for bad in [
        hash.to_ascii_uppercase(),
        hash[..63].to_owned(),
        format!("{hash}0"),
    ] {
        for method in [Method::GET, Method::PUT, Method::DELETE] {
            let response = request(method.clone(), &self::url(&server, &bad), "b")
                .body(bytes.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{method} {bad}");
            assert_eq!(error_of(response).await, "non-canonical hash");
        }
    }

    for unauthorized in [
        Client::new().get(&url),
        Client::new().get(&url).bearer_auth("not-a-token"),
        Client::new().put(&url).body(bytes.clone()),
    ] {
        let response = unauthorized.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(error_of(response).await, "unauthorized");
    }

    let encoded = request(Method::PUT, &url, "b")
        .header("content-encoding", "gzip")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(encoded.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(!error_of(encoded).await.is_empty());

    // A read-only token reads but neither stores nor deletes.
    let reader = |method: Method| {
        Client::new()
            .request(method, &url)
            .bearer_auth(read_only_token("b"))
    };
    assert_eq!(
        reader(Method::GET).send().await.unwrap().status(),
        StatusCode::OK
    );
    for method in [Method::PUT, Method::DELETE] {
        let refused = reader(method).body(bytes.clone()).send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }

    let deleted = request(Method::DELETE, &url, "b").send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status(request(Method::GET, &url, "b")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status(request(Method::DELETE, &url, "b")).await,
        StatusCode::NOT_FOUND
    );
    assert!(stored_files(&server, "b").is_empty());
    server.stop().await;
}

/// Ranges: 206 with `Content-Range` for one range, 416 past the end, the whole content for
/// several ranges or an `If-Range` naming other content.
#[tokio::test]
async fn byte_ranges() {
    let server = TestServer::start().await;
    let bytes: Vec<u8> = (0..100u8).collect();
    let hash = hash_of(&bytes);
    let url = url(&server, &hash);
    assert_eq!(
        status(request(Method::PUT, &url, "b").body(bytes.clone())).await,
        StatusCode::CREATED
    );
    let range = |value: &'static str| request(Method::GET, &url, "b").header("range", value);
    for (value, first, last) in [
        ("bytes=0-9", 0, 9),
        ("bytes=90-", 90, 99),
        ("bytes=-5", 95, 99),
        ("bytes=50-500", 50, 99),
    ] {
        let partial = range(value).send().await.unwrap();
        assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT, "{value}");
        assert_eq!(
            partial.headers()["content-range"],
            format!("bytes {first}-{last}/100").as_str()
        );
        assert_eq!(partial.bytes().await.unwrap(), &bytes[first..=last]);
    }
    let unsatisfiable = range("bytes=100-").send().await.unwrap();
    assert_eq!(unsatisfiable.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(unsatisfiable.headers()["content-range"], "bytes */100");
    assert_eq!(error_of(unsatisfiable).await, "range not satisfiable");
    let several = range("bytes=0-1,5-6").send().await.unwrap();
    assert_eq!(several.status(), StatusCode::OK);
    assert_eq!(several.bytes().await.unwrap(), bytes);
    let stale = range("bytes=0-1")
        .header("if-range", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
    let current = range("bytes=0-1")
        .header("if-range", format!("\"{hash}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(current.status(), StatusCode::PARTIAL_CONTENT);
    server.stop().await;
}

/// A body over the limit is refused with 413 — declared up front, or found while a chunked
/// body arrives — and leaves nothing behind, temp files included.
#[tokio::test]
async fn the_size_limit_holds_while_the_body_streams() {
    let server = TestServer::start_with(
        tempfile::tempdir().unwrap(),
        &["--content-max-bytes", "1048576"],
    )
    .await;
    let big = vec![7u8; 4 * 1024 * 1024];
    let url = url(&server, &hash_of(&big));
    let declared = request(Method::PUT, &url, "b")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_of(declared).await.contains("1048576"));

    // Chunked: no Content-Length, so only counting while receiving can catch it.
    let chunks: Vec<Result<Bytes, std::io::Error>> = big
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let chunked = request(Method::PUT, &url, "b")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(chunked.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        stored_files(&server, "b").is_empty(),
        "{:?}",
        stored_files(&server, "b")
    );

    // At the limit exactly is fine.
    let max = vec![1u8; 1024 * 1024];
    let ok = request(Method::PUT, &self::url(&server, &hash_of(&max)), "b")
        .body(max)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    server.stop().await;
}

/// A stored file whose bytes no longer match its name is never served: it reads as missing,
/// and an upload of the right bytes repairs it.
#[tokio::test]
async fn corrupt_content_is_treated_as_missing() {
    let server = TestServer::start().await;
    let bytes = b"precious".to_vec();
    let hash = hash_of(&bytes);
    let url = url(&server, &hash);
    request(Method::PUT, &url, "b")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    let path = server.storage().join("b/cas").join(&hash[..2]).join(&hash);
    std::fs::write(&path, b"precioUs").unwrap();
    assert_eq!(
        status(request(Method::GET, &url, "b")).await,
        StatusCode::NOT_FOUND
    );
    let repaired = request(Method::PUT, &url, "b")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(repaired.status(), StatusCode::CREATED);
    assert_eq!(
        request(Method::GET, &url, "b")
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        bytes
    );
    server.stop().await;
}

/// One bucket never sees, overwrites or deletes another's content.
#[tokio::test]
async fn buckets_are_isolated() {
    let server = TestServer::start().await;
    let bytes = b"mine".to_vec();
    let url = url(&server, &hash_of(&bytes));
    request(Method::PUT, &url, "one")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        status(request(Method::GET, &url, "two")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status(request(Method::DELETE, &url, "two")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status(request(Method::GET, &url, "one")).await,
        StatusCode::OK
    );
    server.stop().await;
}

/// A signed URL works without a token for its one method, bucket and hash until it expires;
/// a tampered, expired or misused one is 403.
#[tokio::test]
async fn signed_urls_are_bound_and_expire() {
    let server = TestServer::start().await;
    let origin = format!("http://{}", server.addr);
    let urls = SignedUrls::new(SECRET, Duration::from_secs(900));
    let bucket = Bucket::parse("b").unwrap();
    let bytes = b"direct".to_vec();
    let hash = ContentHash::of(&bytes);
    let now = blobs::clock::now_unix();
    let put = urls
        .grant(&origin, &Method::PUT, &bucket, &hash, now)
        .await
        .unwrap();
    let get = urls
        .grant(&origin, &Method::GET, &bucket, &hash, now)
        .await
        .unwrap();
    let http = Client::new();

    let forbidden = |response: Response| async move {
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(error_of(response).await.starts_with("forbidden"));
    };
    // The GET URL does not allow a PUT, nor the PUT URL a GET.
    forbidden(http.put(&get.url).body(bytes.clone()).send().await.unwrap()).await;
    let created = http.put(&put.url).body(bytes.clone()).send().await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    forbidden(http.get(&put.url).send().await.unwrap()).await;
    let fetched = http.get(&get.url).send().await.unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert_eq!(fetched.bytes().await.unwrap(), bytes);
    assert_eq!(
        http.head(&get.url).send().await.unwrap().status(),
        StatusCode::OK
    );

    let sig = get.url.rsplit_once("sig=").unwrap().1.to_owned();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    let other = hash_of(b"other");
    for tampered in [
        get.url.replace(
            &format!("sig={sig}"),
            &format!("sig={flipped}{}", &sig[1..]),
        ),
        get.url.replace("bucket=b&", "bucket=c&"),
        get.url.replace(
            &format!("exp={}", get.expires_at_unix),
            &format!("exp={}", get.expires_at_unix + 3600),
        ),
        get.url.replace(hash.as_str(), &other),
        get.url.replace(&format!("&sig={sig}"), ""),
        format!(
            "{}&exp=abc",
            get.url.split_once('?').unwrap().0.to_owned() + "?bucket=b&sig=00"
        ),
    ] {
        forbidden(http.get(&tampered).send().await.unwrap()).await;
    }
    // Expired an hour ago: signed with a start time in the past.
    let expired = urls
        .grant(&origin, &Method::GET, &bucket, &hash, now - 3600)
        .await
        .unwrap();
    let response = http.get(&expired.url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(error_of(response).await.contains("expired"));
    server.stop().await;
}

/// A 50 MiB upload streams to disk: the server's peak memory grows by far less than the body,
/// and the bytes read back hash to their name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_upload_keeps_memory_flat() {
    const SIZE: usize = 50 * 1024 * 1024;
    const CHUNK: usize = 256 * 1024;
    let storage = tempfile::tempdir().unwrap();
    let server = fixture::start_process(storage.path(), &[]);
    let base = format!("http://{}/blobs", server.addr);
    // Warm up the allocator and the connection path with a small upload first.
    let small = b"warm-up".to_vec();
    let warm = request(Method::PUT, &format!("{base}/{}", hash_of(&small)), "b")
        .body(small)
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), StatusCode::CREATED);
    let before = server.peak_rss_bytes();

    let chunk_at =
        |i: usize| -> Vec<u8> { (0..CHUNK).map(|j| ((i * 31 + j * 7) % 251) as u8).collect() };
    let mut hasher = blake3::Hasher::new();
    for i in 0..SIZE / CHUNK {
        hasher.update(&chunk_at(i));
    }
    let hash = hasher.finalize().to_hex().to_string();
    let chunks = futures_util::stream::iter(
        (0..SIZE / CHUNK).map(move |i| Ok::<_, std::io::Error>(chunk_at(i))),
    );
    let response = request(Method::PUT, &format!("{base}/{hash}"), "b")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let after_upload = server.peak_rss_bytes();

    let mut download = request(Method::GET, &format!("{base}/{hash}"), "b")
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), StatusCode::OK);
    let mut check = blake3::Hasher::new();
    let mut received = 0;
    while let Some(chunk) = download.chunk().await.unwrap() {
        received += chunk.len();
        check.update(&chunk);
    }
    assert_eq!(received, SIZE);
    assert_eq!(check.finalize().to_hex().as_str(), hash);
    let after_download = server.peak_rss_bytes();
    let growth = after_download.saturating_sub(before);
    println!(
        "peak RSS: {before} before, {after_upload} after the 50 MiB upload, {after_download} after reading it back"
    );
    assert!(
        growth < 16 * 1024 * 1024,
        "peak memory grew by {growth} bytes for a 50 MiB body"
    );
}

/// Temp files a crash left in a content store are removed at start; stored content stays.
#[tokio::test]
async fn a_restart_sweeps_temp_files_and_keeps_content() {
    let server = TestServer::start().await;
    let bytes = b"kept".to_vec();
    let hash = hash_of(&bytes);
    request(Method::PUT, &url(&server, &hash), "b")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    let storage = server.stop().await;
    let cas = storage.path().join("b/cas");
    std::fs::write(cas.join(".tmp-upload"), b"half an upload").unwrap();
    std::fs::write(cas.join(&hash[..2]).join(".tmp-other"), b"half").unwrap();

    let server = TestServer::start_in(storage).await;
    // Answering a request means start-up, and its sweep, is over.
    let got = request(Method::GET, &url(&server, &hash), "b")
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap(), bytes);
    assert_eq!(stored_files(&server, "b"), [hash.as_str()]);
    server.stop().await;
}

/// Every `/blobs/{hash}` response with content (GET, HEAD, a range, and a direct URL's GET)
/// has `X-Content-Type-Options: nosniff` and `Content-Security-Policy: sandbox`.
#[tokio::test]
async fn content_is_served_sandboxed() {
    let server = TestServer::start().await;
    let bytes = b"<html><script>alert(1)</script></html>".to_vec();
    let hash = hash_of(&bytes);
    let url = url(&server, &hash);
    let put = request(Method::PUT, &url, "b").body(bytes.clone());
    assert_eq!(status(put).await, StatusCode::CREATED);
    let signed = SignedUrls::new(SECRET, Duration::from_secs(900))
        .grant(
            &format!("http://{}", server.addr),
            &Method::GET,
            &Bucket::parse("b").unwrap(),
            &ContentHash::parse(&hash).unwrap(),
            blobs::clock::now_unix(),
        )
        .await
        .unwrap();
    for (what, sent, expected) in [
        ("GET", request(Method::GET, &url, "b"), StatusCode::OK),
        ("HEAD", request(Method::HEAD, &url, "b"), StatusCode::OK),
        (
            "range",
            request(Method::GET, &url, "b").header("range", "bytes=0-5"),
            StatusCode::PARTIAL_CONTENT,
        ),
        ("direct URL", Client::new().get(&signed.url), StatusCode::OK),
    ] {
        let response = sent.send().await.unwrap();
        assert_eq!(response.status(), expected, "{what}");
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(headers["content-security-policy"], "sandbox", "{what}");
    }
    server.stop().await;
}
