//! The content-addressed blob flow over Socket.IO against the real server, with the raw
//! client for exact events and reqwest for the direct transfers: inline upload, request and
//! pack, redirects, the direct upload grant, lying clients, `blob-available` to the bucket's
//! other sockets only, and the message limit.

use crate::fixture::{self, TestServer, read_only_token};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use blobs::names::ContentHash;
use blobs_testkit::RawClient;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn hash_of(bytes: &[u8]) -> String {
    ContentHash::of(bytes).to_string()
}

fn entry(bytes: &[u8]) -> Value {
    json!({ "hash": hash_of(bytes), "data_b64": STANDARD.encode(bytes) })
}

/// Proves that no `blob-available` reached `client` for anything done before this call: the
/// server queues an announcement before it answers the event that caused it, and one
/// socket's packets arrive in order, so one after the answer would be too late to matter.
async fn assert_no_announcement(client: &mut RawClient) {
    client.call1("now", Value::Null).await.unwrap();
    assert_eq!(client.pending_events("blob-available"), 0);
}

/// An upload that stores many new contents is announced to each other socket of the bucket
/// once, `{ hash, hashes }`, not once per content; content already stored is not announced.
#[tokio::test]
async fn an_upload_of_many_is_announced_once() {
    let server = TestServer::start().await;
    let mut uploader = server.client("b").await;
    let mut peer = server.client("b").await;
    let known = b"already here".to_vec();
    uploader
        .call1("blob-upload", json!({ "blobs": [entry(&known)] }))
        .await
        .unwrap();
    let first = peer.next_event("blob-available").await.unwrap();
    assert_eq!(first, [json!({ "hash": hash_of(&known) })]);

    let contents: Vec<Vec<u8>> = (0..100)
        .map(|i| format!("content {i}").into_bytes())
        .collect();
    let mut entries: Vec<Value> = contents.iter().map(|c| entry(c)).collect();
    entries.push(entry(&known));
    let reply = uploader
        .call1("blob-upload", json!({ "blobs": entries }))
        .await
        .unwrap();
    assert_eq!(reply["accepted"].as_array().unwrap().len(), 101);
    let announced = peer.next_event("blob-available").await.unwrap();
    let hashes: Vec<Value> = contents.iter().map(|c| json!(hash_of(c))).collect();
    assert_eq!(
        announced,
        [json!({ "hash": hash_of(&contents[0]), "hashes": hashes })]
    );
    assert_no_announcement(&mut peer).await;
    server.stop().await;
}

/// Inline upload: good entries are stored and acknowledged, bad ones rejected with a reason,
/// and each new blob is announced to the bucket's other sockets, not to the uploader nor to
/// other buckets.
#[tokio::test]
async fn inline_upload_verifies_stores_and_announces() {
    let server =
        TestServer::start_with(tempfile::tempdir().unwrap(), &["--max-data-bytes", "1024"]).await;
    let mut uploader = server.client("b").await;
    let mut peer = server.client("b").await;
    let mut stranger = server.client("other").await;

    let good = b"inline content".to_vec();
    let too_big = vec![9u8; 2048];
    let reply = uploader
        .call1(
            "blob-upload",
            json!({ "blobs": [
                entry(&good),
                { "hash": hash_of(b"claimed"), "data_b64": STANDARD.encode(b"actual") },
                { "hash": hash_of(&good).to_ascii_uppercase(), "data_b64": STANDARD.encode(&good) },
                { "hash": hash_of(b"x"), "data_b64": "not base64!" },
                entry(&too_big),
            ]}),
        )
        .await
        .unwrap();
    assert_eq!(reply["accepted"], json!([hash_of(&good)]));
    let reasons: Vec<&str> = reply["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons[0], "hash mismatch");
    assert_eq!(reasons[1], "non-canonical hash");
    assert!(reasons[2].contains("base64"), "{}", reasons[2]);
    assert!(
        reasons[3].contains("request-upload"),
        "points to the direct path: {}",
        reasons[3]
    );
    assert_eq!(reply["rejected"][0]["hash"], hash_of(b"claimed"));

    let announced = peer.next_event("blob-available").await.unwrap();
    assert_eq!(announced, [json!({ "hash": hash_of(&good) })]);
    assert_eq!(
        uploader.pending_events("blob-available"),
        0,
        "not to the uploader"
    );
    assert_no_announcement(&mut stranger).await;
    let on_disk = server
        .storage()
        .join("b/cas")
        .join(&hash_of(&good)[..2])
        .join(hash_of(&good));
    assert_eq!(std::fs::read(on_disk).unwrap(), good);

    // Storing the same bytes again is accepted and announces nothing new.
    let again = uploader
        .call1("blob-upload", json!({ "blobs": [entry(&good)] }))
        .await
        .unwrap();
    assert_eq!(again["accepted"], json!([hash_of(&good)]));
    assert_no_announcement(&mut peer).await;

    // Without an ack, the reply comes as an event.
    uploader
        .emit("blob-upload", &[json!({ "blobs": [entry(b"second")] })])
        .await
        .unwrap();
    let result = uploader.next_event("blob-upload-result").await.unwrap();
    assert_eq!(result[0]["accepted"], json!([hash_of(b"second")]));

    let mut reader = RawClient::connect_token(server.addr, &read_only_token("b"))
        .await
        .unwrap();
    let refused = reader
        .call1("blob-upload", json!({ "blobs": [entry(b"ro")] }))
        .await
        .unwrap();
    assert_eq!(refused["error"], "Read-only token");
    let malformed = uploader
        .call1("blob-upload", json!({ "blobs": "nope" }))
        .await
        .unwrap();
    assert!(
        malformed["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid argument")
    );
    server.stop().await;
}

/// `blob-request` packs what it has and lists the rest as unavailable; other buckets' content
/// is unavailable; with `redirect`, content over the threshold comes as a working download URL.
#[tokio::test]
async fn request_pack_and_redirect() {
    let server = TestServer::start_with(
        tempfile::tempdir().unwrap(),
        &["--content-redirect-bytes", "1000"],
    )
    .await;
    let mut client = server.client("b").await;
    let small = b"small".to_vec();
    let large = vec![3u8; 5000];
    let stored = client
        .call1(
            "blob-upload",
            json!({ "blobs": [entry(&small), entry(&large)] }),
        )
        .await
        .unwrap();
    assert_eq!(stored["accepted"].as_array().unwrap().len(), 2);
    let missing = hash_of(b"never stored");

    let pack = client
        .call1(
            "blob-request",
            json!({ "hashes": [hash_of(&small), missing, "XYZ", hash_of(&large)] }),
        )
        .await
        .unwrap();
    let blobs = pack["blobs"].as_array().unwrap();
    assert_eq!(blobs.len(), 2);
    assert_eq!(blobs[0], entry(&small));
    assert_eq!(blobs[1], entry(&large));
    assert_eq!(pack["unavailable"], json!([missing, "XYZ"]));

    let mut stranger = server.client("other").await;
    let foreign = stranger
        .call1("blob-request", json!({ "hashes": [hash_of(&small)] }))
        .await
        .unwrap();
    assert_eq!(foreign["blobs"], json!([]));
    assert_eq!(foreign["unavailable"], json!([hash_of(&small)]));

    // Redirects, without an ack: a `blob-pack` and a `blob-redirect` event.
    client
        .emit(
            "blob-request",
            &[json!({ "hashes": [hash_of(&small), hash_of(&large)], "redirect": true })],
        )
        .await
        .unwrap();
    let pack = client.next_event("blob-pack").await.unwrap();
    assert_eq!(pack[0]["blobs"], json!([entry(&small)]));
    let redirect = client.next_event("blob-redirect").await.unwrap();
    let redirects = redirect[0]["redirects"].as_array().unwrap();
    assert_eq!(redirects.len(), 1);
    assert_eq!(redirects[0]["hash"], hash_of(&large));
    assert!(redirects[0]["expires_at_unix"].as_u64().unwrap() > blobs::clock::now_unix());
    let url = redirects[0]["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("http://{}/blobs/", server.addr)),
        "{url}"
    );
    let fetched = reqwest::get(url).await.unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert_eq!(fetched.bytes().await.unwrap(), large);
    server.stop().await;
}

/// A pack never exceeds the transport's message limit: what does not fit is `deferred`.
#[tokio::test]
async fn a_pack_stays_under_the_message_limit() {
    let server = TestServer::start().await;
    let mut client = server.client("b").await;
    // Three blobs of 700 KiB: each fits inline (768 KiB), all three do not fit one 2 MiB message.
    let contents: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 700 * 1024]).collect();
    for content in &contents {
        let reply = client
            .call1("blob-upload", json!({ "blobs": [entry(content)] }))
            .await
            .unwrap();
        assert_eq!(reply["accepted"].as_array().unwrap().len(), 1, "{reply}");
    }
    let hashes: Vec<String> = contents.iter().map(|c| hash_of(c)).collect();
    let packet = client
        .call_raw("blob-request", &[json!({ "hashes": hashes })])
        .await
        .unwrap();
    assert!(packet.len() < 2 * 1024 * 1024, "{} bytes", packet.len());
    let pack: Vec<Value> = serde_json::from_str(&packet[packet.find('[').unwrap()..]).unwrap();
    assert_eq!(pack[0]["blobs"].as_array().unwrap().len(), 2);
    assert_eq!(pack[0]["deferred"], json!([hashes[2]]));
    // Asked again, the deferred one comes.
    let rest = client
        .call1("blob-request", json!({ "hashes": [hashes[2]] }))
        .await
        .unwrap();
    assert_eq!(rest["blobs"][0]["hash"], hashes[2]);
    server.stop().await;
}

/// The direct path: `request-upload` grants a URL, the client PUTs the bytes there, and
/// `blob-uploaded` makes the server verify them and announce them to the bucket's other
/// sockets. Present content, oversize requests and read-only tokens are denied.
#[tokio::test]
async fn direct_upload_grant_put_and_confirm() {
    let server = TestServer::start_with(
        tempfile::tempdir().unwrap(),
        &["--content-max-bytes", "100000"],
    )
    .await;
    let mut client = server.client("b").await;
    let mut peer = server.client("b").await;
    let mut stranger = server.client("other").await;
    let bytes = vec![5u8; 50_000];
    let hash = hash_of(&bytes);

    let granted = client
        .call1(
            "request-upload",
            json!({ "hash": hash, "size": bytes.len(), "content_type": "image/jpeg" }),
        )
        .await
        .unwrap();
    assert_eq!(granted["hash"], hash);
    let url = granted["url"].as_str().unwrap().to_owned();
    assert!(granted["expires_at_unix"].as_u64().unwrap() > blobs::clock::now_unix());
    let put = reqwest::Client::new()
        .put(&url)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    // Bytes sent to a direct URL are announced by `blob-uploaded`, not before.
    assert_no_announcement(&mut peer).await;

    let confirmed = client
        .call1("blob-uploaded", json!({ "hash": hash }))
        .await
        .unwrap();
    assert_eq!(confirmed, json!({ "hash": hash }));
    assert_eq!(
        peer.next_event("blob-available").await.unwrap(),
        [json!({ "hash": hash })]
    );
    assert_no_announcement(&mut stranger).await;
    assert_eq!(client.pending_events("blob-available"), 0);

    // Without an ack: the grant or denial comes as an event.
    client
        .emit(
            "request-upload",
            &[json!({ "hash": hash, "size": bytes.len() })],
        )
        .await
        .unwrap();
    let denied = client.next_event("upload-denied").await.unwrap();
    assert_eq!(
        denied[0],
        json!({ "hash": hash, "reason": "already present" })
    );
    let fresh = hash_of(b"fresh");
    client
        .emit("request-upload", &[json!({ "hash": fresh, "size": 5 })])
        .await
        .unwrap();
    let granted = client.next_event("upload-granted").await.unwrap();
    assert_eq!(granted[0]["hash"], fresh);

    let oversize = client
        .call1("request-upload", json!({ "hash": fresh, "size": 100_001 }))
        .await
        .unwrap();
    assert!(
        oversize["reason"].as_str().unwrap().contains("limit"),
        "{oversize}"
    );
    let upper = client
        .call1(
            "request-upload",
            json!({ "hash": fresh.to_ascii_uppercase(), "size": 5 }),
        )
        .await
        .unwrap();
    assert_eq!(upper["reason"], "non-canonical hash");
    // A malformed request is refused in the same shape, with a reason.
    let malformed = client.call1("request-upload", json!("nope")).await.unwrap();
    assert!(
        malformed["reason"]
            .as_str()
            .unwrap()
            .starts_with("Invalid argument")
    );
    let mut reader = RawClient::connect_token(server.addr, &read_only_token("b"))
        .await
        .unwrap();
    let refused = reader
        .call1("request-upload", json!({ "hash": fresh, "size": 5 }))
        .await
        .unwrap();
    assert_eq!(refused["reason"], "read-only token");
    server.stop().await;
}

/// A client that lies — PUTs other bytes to its grant, or confirms an upload it never made —
/// gets 422 and `upload-rejected`, and nobody hears of it.
#[tokio::test]
async fn a_lying_client_is_rejected() {
    let server = TestServer::start().await;
    let mut client = server.client("b").await;
    let mut peer = server.client("b").await;
    let claimed = hash_of(b"the real thing");
    let granted = client
        .call1("request-upload", json!({ "hash": claimed, "size": 14 }))
        .await
        .unwrap();
    let url = granted["url"].as_str().unwrap();
    let put = reqwest::Client::new()
        .put(url)
        .body("a fake thing!!")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let rejected = client
        .call1("blob-uploaded", json!({ "hash": claimed }))
        .await
        .unwrap();
    assert_eq!(rejected["hash"], claimed);
    assert!(
        rejected["reason"].as_str().unwrap().contains("PUT"),
        "{rejected}"
    );
    client
        .emit(
            "blob-uploaded",
            &[json!({ "hash": hash_of(b"never sent") })],
        )
        .await
        .unwrap();
    let event = client.next_event("upload-rejected").await.unwrap();
    assert_eq!(event[0]["hash"], hash_of(b"never sent"));
    assert_no_announcement(&mut peer).await;
    let missing = client
        .call1("blob-request", json!({ "hashes": [claimed] }))
        .await
        .unwrap();
    assert_eq!(missing["unavailable"], json!([claimed]));
    server.stop().await;
}

/// Content stored over HTTP with a Bearer token is announced to every socket of the bucket.
#[tokio::test]
async fn http_uploads_are_announced_to_the_bucket() {
    let server = TestServer::start().await;
    let mut listener = server.client("b").await;
    let mut stranger = server.client("other").await;
    let bytes = b"over http".to_vec();
    let hash = hash_of(&bytes);
    let stored = reqwest::Client::new()
        .put(format!("http://{}/blobs/{hash}", server.addr))
        .bearer_auth(fixture::token("b"))
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::CREATED);
    assert_eq!(
        listener.next_event("blob-available").await.unwrap(),
        [json!({ "hash": hash })]
    );
    assert_no_announcement(&mut stranger).await;
    server.stop().await;
}
