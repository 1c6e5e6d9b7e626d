//! An attacker's requests, authenticated or not: each costs a bounded amount and ends in a
//! clear answer or a closed connection, and a token stops working when it expires.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fixture::{self, SECRET, TestServer, hex_ref, token};
use blobs_testkit::{RawClient, ServerProcess};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn server_with(options: &[&str]) -> TestServer {
    TestServer::start_with(tempfile::tempdir().unwrap(), options).await
}

/// Sends `bytes` on a new connection and reads until the server closes it; what it answered.
async fn exchange(server: &TestServer, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    read_to_close(&mut tcp).await
}

/// Everything the server sends until it closes the connection (a reset counts as closed).
async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    fixture::within("the server closing the connection", read).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn expiring_token(bucket: &str, seconds: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "bucket": bucket, "iat": now, "exp": now + seconds }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A request head over `MAX_HEAD_BYTES` is answered 431 and the connection closed; one under
/// it is served.
#[tokio::test]
async fn large_request_heads_get_431() {
    let server = server_with(&["--max-head-bytes", "8192"]).await;
    let padding = "a".repeat(20_000);
    let head = format!(
        "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nX-Pad: {padding}\r\n\r\n"
    );
    let answer = exchange(&server, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let small = exchange(
        &server,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(small.starts_with("HTTP/1.1 200"), "{small}");
}

/// A half-sent head, an idle keep-alive connection and a half-sent body are all closed by the
/// server's timeouts instead of held open.
#[tokio::test]
async fn slow_clients_are_closed() {
    // Files current: "a half-sent body writes nothing" is read in the blob's file.
    let server = server_with(&[
        "--header-timeout",
        "1s",
        "--body-timeout",
        "1s",
        "--unwritten-bytes",
        "0",
    ])
    .await;
    // Half a head.
    let answer = exchange(&server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Nothing at all.
    assert_eq!(exchange(&server, b"").await, "");
    // Idle after a keep-alive response.
    let answer = exchange(&server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Half a body.
    let put = format!(
        "PUT /v1/blobs/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\nhalf",
        hex_ref("ab"),
        token("b")
    );
    let answer = exchange(&server, put.as_bytes()).await;
    assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");
    assert!(
        !server.blob_path("b", &hex_ref("ab")).exists(),
        "a half-sent body writes nothing"
    );
}

/// Engine.IO sessions that have not connected are capped (503 past the cap) and closed after
/// `CONNECT_TIMEOUT`, which frees their places.
#[tokio::test]
async fn pending_handshakes_are_capped_and_expire() {
    let server = server_with(&["--max-pending-handshakes", "3", "--connect-timeout", "1s"]).await;
    let http = reqwest::Client::new();
    let handshake = format!("http://{}/socket.io/?EIO=4&transport=polling", server.addr);
    for _ in 0..3 {
        let opened = http.get(&handshake).send().await.unwrap();
        assert_eq!(opened.status(), 200);
    }
    let refused = http.get(&handshake).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("authenticate"));
    // The three sessions never send CONNECT: they are closed, and a client gets in again.
    let mut client = None;
    fixture::eventually("a place freed by the expired handshakes", async || {
        client = RawClient::connect_token(server.addr, &token("b"))
            .await
            .ok();
        client.is_some()
    })
    .await;
    let ack = client.unwrap().call1("now", Value::Null).await.unwrap();
    assert!(ack["timestamp"].is_u64());
}

/// The connection cap covers plain HTTP too; past it `/healthz` still answers and every other
/// route gets 503.
#[tokio::test]
async fn the_connection_cap_covers_http_and_health_still_answers() {
    let server = server_with(&["--max-connections", "4"]).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        // A served request proves the connection was accepted under the cap.
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(tcp);
    }
    let health = exchange(&server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let other = exchange(&server, b"GET /v1/blobs HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(other.starts_with("HTTP/1.1 503"), "{other}");
    assert!(other.contains("connection limit"), "{other}");
    drop(held);
}

/// The metadata stream's subscribe request takes a small body with a bounded number of
/// subscriptions, whatever the token.
#[tokio::test]
async fn subscribe_requests_are_small() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/api/v1/events/subscribe", server.addr);
    let huge = format!(
        "{{\"subscriptions\":[{}{{}}]}}",
        "{},".repeat(1024 * 1024 / 3)
    );
    let refused = http
        .post(&url)
        .bearer_auth(fixture::read_only_token("b"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 413);
    let many = json!({ "subscriptions": vec![json!({}); 101] });
    let refused = http
        .post(&url)
        .bearer_auth(token("b"))
        .json(&many)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
}

/// A socket is disconnected when its token expires, and the SSE change stream and the NDJSON
/// metadata stream end.
#[tokio::test]
async fn expiry_ends_sockets_and_streams() {
    let server = TestServer::start_files_current().await;
    let r = hex_ref("e1");
    let expiring = expiring_token("b", 2);
    let mut client = RawClient::connect_token(server.addr, &expiring)
        .await
        .unwrap();
    client.call("ref", &[json!(r)]).await.unwrap();
    let ack = client
        .call1("set", json!({ "data": "aGk=" }))
        .await
        .unwrap();
    assert_eq!(ack, json!({ "success": true, "version": 1 }));
    let (events, metadata) = fixture::open_streams(server.addr, &expiring, &r).await;
    // The server says DISCONNECT (`41`) on its own once `exp` passes.
    let disconnected = async {
        loop {
            match client.recv().await {
                Ok(packet) if packet == "1" => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    };
    assert!(
        fixture::within("the DISCONNECT at exp", disconnected).await,
        "the connection closed without a DISCONNECT"
    );
    // Each stream ends, whether closed cleanly or cut: only waiting for good would be wrong.
    let _ = fixture::within("the change stream's end at exp", events.bytes()).await;
    let _ = fixture::within("the metadata stream's end at exp", metadata.bytes()).await;
    // The writer's blob is untouched by anything after expiry.
    assert!(server.blob_path("b", &r).exists());
}

/// By default any origin may call, without credentials (as the original); `CORS_ORIGINS`
/// allows only its origins, with credentials when asked.
#[tokio::test]
async fn cors_sends_credentials_only_when_configured() {
    let http = reqwest::Client::new();
    let open = TestServer::start().await;
    for origin in ["https://app.example", "null"] {
        let answer = http
            .get(format!("http://{}/healthz", open.addr))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.headers()["access-control-allow-origin"], origin);
        assert!(
            !answer
                .headers()
                .contains_key("access-control-allow-credentials")
        );
    }
    let listed = server_with(&[
        "--cors-origins",
        "https://app.example",
        "--cors-credentials",
        "true",
    ])
    .await;
    let allowed = http
        .get(format!("http://{}/healthz", listed.addr))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );
    let other = http
        .get(format!("http://{}/healthz", listed.addr))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
}

/// `HEAD` and `304` read no content; a full read of content that no longer matches its hash
/// fails before its end instead of handing out wrong bytes; a range of it is refused.
#[tokio::test]
async fn cheap_content_requests_do_not_hash_and_reads_stay_verified() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let bytes = vec![7u8; 3_000_000];
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let url = format!("http://{}/blobs/{hash}", server.addr);
    let stored = http
        .put(&url)
        .bearer_auth(token("b"))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    // Corrupt it at rest, same size.
    let path = server
        .storage()
        .join("b")
        .join("cas")
        .join(&hash[..2])
        .join(&hash);
    let mut corrupt = bytes.clone();
    corrupt[123] = 8;
    std::fs::write(&path, &corrupt).unwrap();

    // HEAD and 304 answer from the name and size alone.
    let head = http
        .head(&url)
        .bearer_auth(token("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "3000000");
    let cached = http
        .get(&url)
        .bearer_auth(token("b"))
        .header("if-none-match", format!("\"{hash}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
    // A full read never completes with the wrong bytes.
    let full = http.get(&url).bearer_auth(token("b")).send().await.unwrap();
    assert_eq!(full.status(), 200);
    assert!(
        full.bytes().await.is_err(),
        "a corrupt full read is cut off"
    );
    // A range of a file not known good is checked first.
    let range = http
        .get(&url)
        .bearer_auth(token("b"))
        .header("range", "bytes=0-0")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), 404);
}

/// The stale-write ack has the original's key order, byte for byte.
#[tokio::test]
async fn stale_write_acks_have_the_original_key_order() {
    let server = TestServer::start().await;
    let r = hex_ref("5a");
    let mut client = server.subscribed("b", &r).await;
    client
        .call1("set", json!({ "data": "aGk=" }))
        .await
        .unwrap();
    let ack = client
        .call_raw("set", &[json!({ "data": "eA==", "version": 7 })])
        .await
        .unwrap();
    assert!(
        ack.ends_with(r#"[{"success":false,"data":"aGk=","version":1}]"#),
        "{ack}"
    );
}

/// No token appears in the log, at any level.
#[tokio::test]
async fn tokens_never_reach_the_log() {
    use std::process::{Command, Stdio};
    let storage = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_blobs"));
    command
        .current_dir(storage.path())
        .env("TOKEN_SECRET", SECRET)
        .env("STORAGE", storage.path())
        // The most specific directives too: no setting widens what those libraries log.
        .env(
            "RUST_LOG",
            "trace,tungstenite::protocol=trace,engineioxide=trace,socketioxide=trace",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut server = ServerProcess::start_command(command);
    let addr = server.addr;
    let (stdout, stderr) = server.take_output();
    let (stdout, mut stderr) = (stdout.unwrap(), stderr.unwrap());
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            lines_tx.send(line).ok();
        }
    });
    let secret_token = token("logged");
    let mut client = RawClient::connect_token(addr, &secret_token).await.unwrap();
    client.call("ref", &[json!(hex_ref("10"))]).await.unwrap();
    client.call1("get", json!({})).await.unwrap();
    let sse = reqwest::Client::new()
        .get(format!(
            "http://{addr}/v1/blobs?access_token={secret_token}"
        ))
        .bearer_auth(&secret_token)
        .send()
        .await
        .unwrap();
    assert!(sse.status().is_success());
    client.close().await.ok();
    server.terminate();
    let mut errors = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut errors).unwrap();
    server.wait().await;
    let log: Vec<String> = lines_rx.iter().collect();
    assert!(
        log.iter().any(|line| line.contains("connected")),
        "the connection was logged: {log:?}"
    );
    let signature = secret_token.rsplit('.').next().unwrap();
    for line in log
        .iter()
        .chain(errors.lines().map(str::to_owned).collect::<Vec<_>>().iter())
    {
        assert!(!line.contains(signature), "a token in the log: {line}");
    }
}

/// One address may hold well over the original's common NAT loads on defaults: 1,000 sockets.
#[tokio::test]
async fn a_thousand_connections_from_one_address_are_served_on_defaults() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for _ in 0..1000 {
        clients.push(server.client("nat").await);
    }
    let last = clients.last_mut().unwrap();
    assert!(last.call1("now", Value::Null).await.unwrap()["timestamp"].is_u64());
}

/// With a low descriptor limit, hundreds of idle connections never starve the server: the
/// connection cap is lowered to fit the limit, connections past it are closed, and `/healthz`
/// answers throughout.
#[tokio::test]
async fn idle_connections_never_exhaust_descriptors() {
    use std::process::{Command, Stdio};
    rlimit::increase_nofile_limit(4096).unwrap();
    let storage = tempfile::tempdir().unwrap();
    let mut command = Command::new("sh");
    command
        .args(["-c", "ulimit -n 256 && exec \"$0\""])
        .arg(env!("CARGO_BIN_EXE_blobs"))
        .current_dir(storage.path())
        .env("TOKEN_SECRET", SECRET)
        .env("STORAGE", storage.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null());
    let server = ServerProcess::start_command(command);
    let addr = server.addr;
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // The overflow places free within seconds of the idle connections taking them.
    fixture::eventually("/healthz answering past the idle connections", async || {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        read_to_close(&mut tcp).await.starts_with("HTTP/1.1 200")
    })
    .await;
    let open = server.open_fds();
    assert!(open < 256, "{open} descriptors open");
    drop(idle);
    server.kill();
}

/// A blob of the largest size, stored over HTTP; its ref.
async fn largest_blob(server: &TestServer, pair: &str) -> String {
    let r = hex_ref(pair);
    let created = reqwest::Client::new()
        .put(format!("http://{}/v1/blobs/{r}", server.addr))
        .bearer_auth(token("b"))
        .body(vec![0x5au8; 786_432])
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    r
}

/// A client that reads is never held up for long by the byte bound of its send buffer: thirty
/// replies of 1 MiB, asked for at once over a WebSocket, all arrive (seven times the budget).
#[tokio::test]
async fn a_reading_websocket_client_gets_every_large_reply() {
    let server = TestServer::start().await;
    let r = largest_blob(&server, "b1").await;
    let mut client = server.subscribed("b", &r).await;
    for id in 100..130 {
        client
            .send_raw(&format!("2{id}[\"get\",{{}}]"))
            .await
            .unwrap();
    }
    for id in 100..130 {
        let ack = fixture::within(&format!("the answer to get {id}"), client.wait_ack(id))
            .await
            .unwrap();
        assert!(ack.len() > 1_000_000, "{}", &ack[..40]);
    }
}

/// The same over long-polling: what each poll takes counts as read.
#[tokio::test]
async fn a_reading_polling_client_gets_every_large_reply() {
    let server = TestServer::start().await;
    let r = largest_blob(&server, "b2").await;
    let http = reqwest::Client::new();
    let base = format!("http://{}/socket.io/?EIO=4&transport=polling", server.addr);
    let open = http.get(&base).send().await.unwrap().text().await.unwrap();
    let open: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    let url = format!("{base}&sid={}", open["sid"].as_str().unwrap());
    let post = |body: String| {
        let request = http.post(&url).body(body).send();
        async move { assert_eq!(request.await.unwrap().status(), 200) }
    };
    post(format!("40{{\"token\":\"{}\"}}", token("b"))).await;
    // Engine.IO message `4`, Socket.IO event `2`, then the ack id.
    let mut packets = vec![format!("421[\"ref\",\"{r}\"]")];
    packets.extend((100..130).map(|id| format!("42{id}[\"get\",{{}}]")));
    let acks = fixture::within("31 answers over long-polling", async {
        let mut sent = false;
        let mut acks = 0;
        while acks < 31 {
            let body = http.get(&url).send().await.unwrap().text().await.unwrap();
            for packet in body.split('\x1e') {
                if packet == "2" {
                    post("3".to_owned()).await;
                } else if packet.starts_with("43") {
                    acks += 1;
                } else if packet.starts_with("40") && !sent {
                    post(packets.join("\x1e")).await;
                    sent = true;
                }
            }
        }
        acks
    })
    .await;
    assert_eq!(acks, 31);
}

/// A client that stops reading a response loses its connection after `SEND_TIMEOUT` instead of
/// holding it, and what was queued for it, forever.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off() {
    let server = server_with(&["--send-timeout", "1s"]).await;
    let http = reqwest::Client::new();
    // More than the kernel buffers of both ends hold on loopback.
    let bytes = vec![3u8; 24 * 1024 * 1024];
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let url = format!("http://{}/blobs/{hash}", server.addr);
    let stored = http
        .put(&url)
        .bearer_auth(token("b"))
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    let reading = http.get(&url).bearer_auth(token("b")).send().await.unwrap();
    assert_eq!(reading.status(), 200);
    // The subject of this test is a timeout: stop reading for longer than it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        reading.bytes().await.is_err(),
        "the server closed the connection"
    );
}
