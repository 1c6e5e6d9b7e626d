//! The HTTP API against the real server, with reqwest: ETags, preconditions, tombstones,
//! paging, the change stream, cross-protocol notification, health and the OpenAPI document.

use crate::fixture::{self, SECRET, TestServer, hex_ref, token};
use blobs::auth::{Keys, MintOptions};
use blobs::names::Bucket;
use futures_util::StreamExt;
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};

struct Api {
    http: Client,
    base: String,
    token: String,
}

impl Api {
    fn new(server: &TestServer, bucket: &str) -> Self {
        Self {
            http: Client::new(),
            base: format!("http://{}", server.addr),
            token: token(bucket),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }
}

fn etag(response: &Response) -> &str {
    response.headers()["etag"].to_str().unwrap()
}

async fn error_of(response: Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"].as_str().expect("JSON error body").to_owned()
}

/// Missing or bad tokens get 401 with `WWW-Authenticate: Bearer` and a JSON error; health
/// endpoints need none.
#[tokio::test]
async fn auth_and_health() {
    let server = TestServer::start().await;
    let base = format!("http://{}", server.addr);
    let http = Client::new();
    for request in [
        http.get(format!("{base}/v1/blobs")),
        http.get(format!("{base}/v1/blobs")).bearer_auth("garbage"),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert!(!error_of(response).await.is_empty());
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            http.get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    server.stop().await;
}

/// Every route answers the same failure the same way: one 401 body with the Bearer challenge,
/// one 404 body (unknown paths too), one 405; and `access_token` authenticates reads on every
/// route, never writes.
#[tokio::test]
async fn one_error_shape_and_one_token_on_every_route() {
    let server = TestServer::start().await;
    let base = format!("http://{}", server.addr);
    let http = Client::new();
    let hash = "a".repeat(64);
    let handle = "0".repeat(32);
    let r = hex_ref("0e");
    for path in [
        "/v1/blobs".to_owned(),
        format!("/v1/blobs/{r}"),
        format!("/v1/blobs/{r}/events"),
        format!("/blobs/{hash}"),
        "/api/v1/blobs".to_owned(),
        format!("/api/v1/blobs/{handle}"),
    ] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{path}");
        assert_eq!(error_of(response).await, "unauthorized", "{path}");
    }
    let token = token("same");
    for path in [
        format!("/v1/blobs/{r}"),
        format!("/blobs/{hash}"),
        format!("/api/v1/blobs/{handle}"),
        "/no/such/route".to_owned(),
    ] {
        let response = http
            .get(format!("{base}{path}?access_token={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_of(response).await, "not found", "{path}");
    }
    let listed = http
        .get(format!("{base}/v1/blobs?access_token={token}&limit=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
    let written = http
        .put(format!("{base}/v1/blobs/{r}?access_token={token}"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        written.status(),
        StatusCode::UNAUTHORIZED,
        "no token in a write's URL"
    );
    let wrong_method = http
        .post(format!("{base}/v1/blobs/{r}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        error_of(wrong_method).await,
        "Method not allowed on this path"
    );
    server.stop().await;
}

/// Create, read, conditional reads and writes: 201, 200, 304, 412, 428, 413, 400.
#[tokio::test]
async fn etags_and_preconditions() {
    let server =
        TestServer::start_with(tempfile::tempdir().unwrap(), &["--max-data-bytes", "16"]).await;
    let api = Api::new(&server, "b");
    let path = format!("/v1/blobs/{}", hex_ref("AB"));

    let created = api.send(Method::PUT, &path, &[], b"hello").await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(etag(&created), "\"1\"");

    let read = api.send(Method::GET, &path, &[], b"").await;
    assert_eq!(read.status(), 200);
    assert_eq!(etag(&read), "\"1\"");
    assert_eq!(read.headers()["content-type"], "application/octet-stream");
    assert!(read.headers().contains_key("last-modified"));
    assert_eq!(read.bytes().await.unwrap().as_ref(), b"hello");

    let head = api.send(Method::HEAD, &path, &[], b"").await;
    assert_eq!((head.status(), etag(&head)), (StatusCode::OK, "\"1\""));
    let unchanged = api
        .send(Method::GET, &path, &[("if-none-match", "\"1\"")], b"")
        .await;
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);

    let required = api.send(Method::PUT, &path, &[], b"again").await;
    assert_eq!(required.status(), StatusCode::PRECONDITION_REQUIRED);
    let updated = api
        .send(Method::PUT, &path, &[("if-match", "\"1\"")], b"world")
        .await;
    assert_eq!(
        (updated.status(), etag(&updated)),
        (StatusCode::OK, "\"2\"")
    );
    let stale = api
        .send(Method::PUT, &path, &[("if-match", "\"1\"")], b"lost")
        .await;
    assert_eq!(
        (stale.status(), etag(&stale)),
        (StatusCode::PRECONDITION_FAILED, "\"2\"")
    );
    assert_eq!(
        stale.bytes().await.unwrap().as_ref(),
        b"world",
        "412 carries the current bytes"
    );
    let exists = api
        .send(Method::PUT, &path, &[("if-none-match", "*")], b"new")
        .await;
    assert_eq!(exists.status(), StatusCode::PRECONDITION_FAILED);

    for size in [17, 3 * 1024 * 1024] {
        let body = vec![0u8; size];
        let too_big = api
            .send(Method::PUT, &path, &[("if-match", "\"2\"")], &body)
            .await;
        assert_eq!(too_big.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(error_of(too_big).await.contains("limit"));
    }
    // The same limit holds for Socket.IO `data` (16 bytes are 24 base64 characters).
    let mut socket = server.subscribed("b", &hex_ref("ab")).await;
    let over = socket
        .call1("set", json!({"data": "A".repeat(28), "version": 2}))
        .await
        .unwrap();
    assert!(
        over["error"].as_str().unwrap().contains("24 characters"),
        "{over}"
    );
    let max = socket
        .call1("set", json!({"data": "A".repeat(24), "version": 2}))
        .await
        .unwrap();
    assert_eq!(max, json!({"success": true, "version": 3}));
    let not_allowed = api.send(Method::POST, &path, &[], b"").await;
    assert_eq!(not_allowed.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(!error_of(not_allowed).await.is_empty());
    let bad_ref = api.send(Method::GET, "/v1/blobs/xyz", &[], b"").await;
    assert_eq!(bad_ref.status(), StatusCode::BAD_REQUEST);
    let bad_tag = api
        .send(Method::PUT, &path, &[("if-match", "2")], b"x")
        .await;
    assert_eq!(bad_tag.status(), StatusCode::BAD_REQUEST);
    let missing = api
        .send(
            Method::GET,
            &format!("/v1/blobs/{}", hex_ref("cd")),
            &[],
            b"",
        )
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    server.stop().await;
}

/// DELETE leaves a tombstone: readers see nothing, the version continues, stale writers lose.
#[tokio::test]
async fn deletes_leave_tombstones() {
    let server = TestServer::start().await;
    let api = Api::new(&server, "b");
    let r = hex_ref("de");
    let path = format!("/v1/blobs/{r}");
    api.send(Method::PUT, &path, &[], b"one").await;
    let mut socket = server.subscribed("b", &r).await;

    assert_eq!(
        api.send(Method::DELETE, &path, &[], b"").await.status(),
        StatusCode::PRECONDITION_REQUIRED
    );
    let deleted = api
        .send(Method::DELETE, &path, &[("if-match", "\"1\"")], b"")
        .await;
    assert_eq!(
        (deleted.status(), etag(&deleted)),
        (StatusCode::NO_CONTENT, "\"2\"")
    );
    assert_eq!(socket.recv().await.unwrap(), r#"2["changed"]"#);
    assert_eq!(
        api.send(Method::GET, &path, &[], b"").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(socket.call1("get", json!({})).await.unwrap(), Value::Null);
    // An old Socket.IO client naming version 1 can never win.
    let stale = socket
        .call1("set", json!({"data": "eA==", "version": 1}))
        .await
        .unwrap();
    assert_eq!(stale, json!({"success": false, "version": 2}));

    let again = api
        .send(Method::PUT, &path, &[("if-none-match", "*")], b"two")
        .await;
    assert_eq!(
        (again.status(), etag(&again)),
        (StatusCode::CREATED, "\"3\"")
    );
    server.stop().await;
}

/// The listing pages through live blobs in ref order.
#[tokio::test]
async fn listing_pages_in_ref_order() {
    let server = TestServer::start().await;
    let api = Api::new(&server, "b");
    let mut refs: Vec<String> = ["05", "a1", "33", "f0", "10"]
        .iter()
        .map(|p| hex_ref(p))
        .collect();
    for r in &refs {
        api.send(Method::PUT, &format!("/v1/blobs/{r}"), &[], b"abc")
            .await;
    }
    let gone = hex_ref("77");
    api.send(Method::PUT, &format!("/v1/blobs/{gone}"), &[], b"x")
        .await;
    api.send(
        Method::DELETE,
        &format!("/v1/blobs/{gone}"),
        &[("if-match", "\"1\"")],
        b"",
    )
    .await;
    refs.sort();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let query = match &after {
            Some(a) => format!("/v1/blobs?limit=2&after={a}"),
            None => "/v1/blobs?limit=2".to_owned(),
        };
        let page: Value = api
            .send(Method::GET, &query, &[], b"")
            .await
            .json()
            .await
            .unwrap();
        for entry in page["blobs"].as_array().unwrap() {
            assert_eq!(
                (entry["version"].clone(), entry["size"].clone()),
                (json!(1), json!(3))
            );
            assert!(entry["updated"].as_u64().unwrap() > 0);
            seen.push(entry["ref"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, refs);
    for bad in [
        "/v1/blobs?limit=0",
        "/v1/blobs?limit=1001",
        "/v1/blobs?after=zz",
        "/v1/blobs?limit=x",
    ] {
        let response = api.send(Method::GET, bad, &[], b"").await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(
            !error_of(response).await.is_empty(),
            "{bad} answers a JSON error"
        );
    }
    server.stop().await;
}

/// The change stream: HTTP and Socket.IO writes both appear, and `Last-Event-ID` resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_stream_sees_both_protocols_and_resumes() {
    let server = TestServer::start().await;
    let api = Api::new(&server, "b");
    let r = hex_ref("5e");
    let path = format!("/v1/blobs/{r}");
    let events = api
        .send(Method::GET, &format!("{path}/events"), &[], b"")
        .await;
    assert_eq!(events.status(), 200);
    let mut stream = events.bytes_stream();

    api.send(Method::PUT, &path, &[], b"one").await;
    let mut socket = server.subscribed("b", &r).await;
    socket
        .call1("set", json!({"data": "dHdv", "version": 1}))
        .await
        .unwrap();
    let mut text = String::new();
    while !text.contains("id: 2") {
        let chunk = fixture::within("the change stream's events", stream.next())
            .await
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: changed"), "{text}");
    assert!(text.contains("data: {\"version\":1}"), "{text}");
    assert!(text.contains("data: {\"version\":2}"), "{text}");

    // Resume from version 1: the current version comes at once.
    let resumed = api
        .send(
            Method::GET,
            &format!("{path}/events"),
            &[("last-event-id", "1")],
            b"",
        )
        .await;
    let mut stream = resumed.bytes_stream();
    let chunk = fixture::within("the resumed stream's first event", stream.next())
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&chunk).contains("id: 2"));
    server.stop().await;
}

/// Read-only tokens read but never write; a blob without data answers 204.
#[tokio::test]
async fn read_only_tokens_and_empty_blobs() {
    let server = TestServer::start().await;
    let r = hex_ref("0e");
    let mut socket = server.subscribed("b", &r).await;
    socket.call1("set", json!({})).await.unwrap();
    let mut api = Api::new(&server, "b");
    let options = MintOptions {
        read_only: true,
        ..Default::default()
    };
    api.token = Keys::new(SECRET).mint_with(&Bucket::parse("b").unwrap(), &options);
    let path = format!("/v1/blobs/{r}");
    let empty = api.send(Method::GET, &path, &[], b"").await;
    assert_eq!(
        (empty.status(), etag(&empty)),
        (StatusCode::NO_CONTENT, "\"1\"")
    );
    let refused = api
        .send(Method::PUT, &path, &[("if-match", "\"1\"")], b"x")
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_of(refused).await, "Read-only token");
    server.stop().await;
}

/// The OpenAPI document is valid 3.1 (checked by openapi-spec-validator, a validator nobody
/// here wrote, installed by `scripts/test`) and names every route.
#[tokio::test]
#[ignore = "needs Python's openapi-spec-validator in tests/interop/.venv (run by scripts/test)"]
async fn the_openapi_document_describes_every_route() {
    let server = TestServer::start().await;
    let doc: Value = reqwest::get(format!("http://{}/v1/openapi.json", server.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/v1/blobs", &["get"][..]),
        ("/v1/blobs/{ref}", &["get", "put", "delete"][..]),
        ("/v1/blobs/{ref}/events", &["get"][..]),
        ("/v1/openapi.json", &["get"][..]),
        ("/healthz", &["get"][..]),
        ("/readyz", &["get"][..]),
        ("/blobs/", &["get"][..]),
        ("/blobs/{hash}", &["get", "put", "delete"][..]),
        ("/api/v1/blobs", &["get", "post"][..]),
        ("/api/v1/blobs/{handle}", &["get", "delete"][..]),
        ("/api/v1/blobs/{handle}/metadata", &["get"][..]),
        ("/api/v1/events/subscribe", &["post"][..]),
    ] {
        for method in methods {
            assert!(
                paths[path].get(*method).is_some(),
                "{method} {path} is documented"
            );
        }
    }
    assert_eq!(paths.len(), 12, "no undocumented or stale route");

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&doc).unwrap()).unwrap();
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/.venv/bin/python");
    let output = std::process::Command::new(&python)
        .args(["-m", "openapi_spec_validator"])
        .arg(file.path())
        .output()
        .expect("the validator is installed: run scripts/test");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    server.stop().await;
}

/// Asserts that a response carrying a blob's bytes cannot run as a page of the server's origin.
#[track_caller]
fn assert_sandboxed(response: &Response, what: &str) {
    let headers = response.headers();
    assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(headers["content-security-policy"], "sandbox", "{what}");
}

/// Every `/v1/blobs/{ref}` response with a blob's bytes (GET, HEAD, and the 412 that carries
/// the current bytes) has `X-Content-Type-Options: nosniff` and `Content-Security-Policy:
/// sandbox`, so HTML a token holder wrote never runs as a page of this origin.
#[tokio::test]
async fn blob_bytes_are_served_sandboxed() {
    let server = TestServer::start().await;
    let api = Api::new(&server, "b");
    let path = format!("/v1/blobs/{}", hex_ref("5a"));
    let page = b"<html><script>alert(document.cookie)</script></html>";
    let created = api.send(Method::PUT, &path, &[], page).await;
    assert_eq!(created.status(), StatusCode::CREATED);

    let read = api.send(Method::GET, &path, &[], b"").await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_sandboxed(&read, "GET");
    assert_eq!(read.headers()["content-type"], "application/octet-stream");
    assert_eq!(read.bytes().await.unwrap(), page.as_slice());
    let head = api.send(Method::HEAD, &path, &[], b"").await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_sandboxed(&head, "HEAD");
    let stale = api
        .send(Method::PUT, &path, &[("if-match", "\"7\"")], b"other")
        .await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_sandboxed(&stale, "412");
    assert_eq!(stale.bytes().await.unwrap(), page.as_slice());
    server.stop().await;
}

/// The writer's address of a versioned blob is recorded in its file, for the operator, and
/// reaches no client: not the HTTP read, listing or change stream, nor the Socket.IO `get`,
/// the refused `set` or `changed`.
#[tokio::test]
async fn writer_addresses_never_reach_clients() {
    const WRITER: &str = "203.0.113.9";
    let server = TestServer::start_files_current().await;
    let api = Api::new(&server, "b");
    let r = hex_ref("5c");
    let path = format!("/v1/blobs/{r}");
    let events = api
        .send(Method::GET, &format!("{path}/events"), &[], b"")
        .await;
    assert_eq!(events.status(), 200);
    let mut stream = events.bytes_stream();
    let mut socket = server.subscribed("b", &r).await;
    let written = api
        .send(Method::PUT, &path, &[("x-real-ip", WRITER)], b"hello")
        .await;
    assert_eq!(written.status(), StatusCode::CREATED);
    let file = std::fs::read_to_string(server.blob_path("b", &r)).unwrap();
    assert!(file.contains(WRITER), "the operator sees it: {file}");

    let mut seen = Vec::new();
    let mut change = String::new();
    while !change.contains("id: 1") {
        let chunk = fixture::within("the change event", stream.next())
            .await
            .unwrap()
            .unwrap();
        change.push_str(&String::from_utf8_lossy(&chunk));
    }
    seen.push(("change stream", change));
    seen.push((
        "changed",
        format!("{:?}", socket.next_event("changed").await.unwrap()),
    ));
    let read = api.send(Method::GET, &path, &[], b"").await;
    seen.push(("read headers", format!("{:?}", read.headers())));
    seen.push(("read", read.text().await.unwrap()));
    let listed = api.send(Method::GET, "/v1/blobs", &[], b"").await;
    seen.push(("listing", listed.text().await.unwrap()));
    seen.push(("get", socket.call_raw("get", &[json!({})]).await.unwrap()));
    let stale = socket
        .call_raw("set", &[json!({"data": "eA==", "version": 7})])
        .await
        .unwrap();
    assert!(stale.contains("\"success\":false"), "{stale}");
    seen.push(("refused set", stale));
    for (what, text) in seen {
        assert!(!text.contains(WRITER), "{what}: {text}");
        assert!(!text.contains("\"ip\""), "{what}: {text}");
    }
    server.stop().await;
}
