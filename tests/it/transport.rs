//! HTTP-level transport behaviour: CORS for browser apps served from anywhere, long-polling
//! limits, and what unknown paths answer.

use crate::fixture::TestServer;
use serde_json::Value;

const ORIGIN: &str = "https://app.example";

/// Opens an Engine.IO long-polling session and returns its sid.
async fn polling_session(http: &reqwest::Client, server: &TestServer) -> String {
    let url = format!("http://{}/socket.io/?EIO=4&transport=polling", server.addr);
    let body = http.get(&url).send().await.unwrap().text().await.unwrap();
    let open: Value = serde_json::from_str(body.strip_prefix('0').expect("open packet")).unwrap();
    open["sid"].as_str().unwrap().to_owned()
}

/// Any origin is reflected, without credentials (as the original), on the handshake and on a
/// preflight.
#[tokio::test]
async fn cors_reflects_any_origin() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/socket.io/?EIO=4&transport=polling", server.addr);
    let response = http
        .get(&url)
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], ORIGIN);
    assert!(!headers.contains_key("access-control-allow-credentials"));
    let exposed = headers["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(exposed.contains("etag"), "{exposed}");

    let preflight = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], ORIGIN);
    let allowed = preflight.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(allowed.contains("POST"), "{allowed}");
    server.stop().await;
}

/// A long-polling POST over the transport limit is refused, and the server keeps serving.
#[tokio::test]
async fn an_oversized_polling_post_is_refused() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let sid = polling_session(&http, &server).await;
    let url = format!(
        "http://{}/socket.io/?EIO=4&transport=polling&sid={sid}",
        server.addr
    );
    let oversized = format!(r#"420["set",{{"data":"{}"}}]"#, "A".repeat(3 * 1024 * 1024));
    let response = http.post(&url).body(oversized).send().await.unwrap();
    assert_eq!(response.status(), 413);

    let mut client = server.client("b").await;
    let ack = client.call1("now", Value::Null).await.unwrap();
    assert!(ack["timestamp"].is_u64());
    server.stop().await;
}

/// Paths other than Socket.IO's answer a JSON 404.
#[tokio::test]
async fn other_paths_are_a_json_404() {
    let server = TestServer::start().await;
    let response = reqwest::get(format!("http://{}/nothing/here", server.addr))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "not found");
    server.stop().await;
}
