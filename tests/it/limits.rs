//! Least privilege and overload limits: read-only tokens, trusted proxies, connection limits,
//! the per-socket event rate and stalled subscribers.

use std::time::Duration;

use crate::fixture::{self, TestServer, hex_ref, read_only_token, token};
use blobs_testkit::tokio_tungstenite::{connect_async, tungstenite::Message};
use blobs_testkit::{ClientError, RawClient};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};

async fn server_with(options: &[&str]) -> TestServer {
    TestServer::start_with(tempfile::tempdir().unwrap(), options).await
}

/// A read-only token may `ref`, `get` and hear `changed`; every write is refused.
#[tokio::test]
async fn read_only_tokens_read_and_listen_but_never_write() {
    let server = TestServer::start().await;
    let r = hex_ref("a0");
    let mut writer = server.subscribed("b", &r).await;
    writer.call1("set", json!({"data": "aGk="})).await.unwrap();

    let mut reader = RawClient::connect_token(server.addr, &read_only_token("b"))
        .await
        .unwrap();
    reader.call("ref", &[json!(r)]).await.unwrap();
    assert_eq!(
        reader.call1("get", json!({})).await.unwrap(),
        json!({"data": "aGk=", "version": 1})
    );
    for attempt in [
        json!({"data": "eA==", "version": 1}),
        json!({}),
        Value::Null,
    ] {
        assert_eq!(
            reader.call1("set", attempt).await.unwrap(),
            json!({"error": "Read-only token"})
        );
    }
    writer
        .call1("set", json!({"data": "eQ==", "version": 1}))
        .await
        .unwrap();
    assert_eq!(reader.recv().await.unwrap(), r#"2["changed"]"#);
    assert_eq!(
        reader.call1("get", json!({"known": 2})).await.unwrap(),
        json!({"version": 2})
    );
    server.stop().await;
}

/// The address a server records for a write sent with `X-Real-IP: 203.0.113.7`.
async fn recorded_address(server: &TestServer) -> Value {
    let r = hex_ref("a1");
    let mut client = RawClient::connect_with_headers(
        server.addr,
        json!({"token": token("b")}),
        &[("x-real-ip", "203.0.113.7")],
    )
    .await
    .unwrap();
    client.call("ref", &[json!(r)]).await.unwrap();
    client.call1("set", json!({"data": "aGk="})).await.unwrap();
    serde_json::from_slice::<Value>(&std::fs::read(server.blob_path("b", &r)).unwrap()).unwrap()
        ["ip"]
        .clone()
}

/// `X-Real-IP` is believed from a trusted proxy (loopback by default); from anyone else the
/// peer address is recorded.
#[tokio::test]
async fn x_real_ip_is_believed_only_from_trusted_proxies() {
    let trusting = TestServer::start_files_current().await;
    assert_eq!(recorded_address(&trusting).await, "203.0.113.7");
    trusting.stop().await;

    let distrusting = server_with(&[
        "--trusted-proxies",
        "10.0.0.1,192.168.0.0/16",
        "--unwritten-bytes",
        "0",
    ])
    .await;
    assert_eq!(recorded_address(&distrusting).await, "127.0.0.1");
    distrusting.stop().await;
}

/// Connections beyond the per-address limit and the server limit are refused with a clear
/// message, and a freed slot can be taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_refuse_the_excess() {
    let server = server_with(&["--max-connections-per-ip", "2"]).await;
    let first = server.client("b").await;
    let _second = server.client("b").await;
    assert_eq!(
        server.refusal(json!({"token": token("b")})).await,
        "Too many connections from this address"
    );
    server.stop().await;

    // The server limit counts connections at the edge: the third is answered 503 before any
    // handshake.
    let server = server_with(&["--max-connections", "2"]).await;
    let first_again = server.client("b").await;
    let _other = server.client("b").await;
    match RawClient::connect_token(server.addr, &token("b")).await {
        Err(e) => assert!(e.to_string().contains("503"), "{e}"),
        Ok(_) => panic!("a third connection over a limit of two"),
    }
    // The slot is freed when the server has processed the close; retry until then.
    first_again.close().await.unwrap();
    fixture::eventually(
        "the freed slot taken again",
        async || match RawClient::connect_token(server.addr, &token("b")).await {
            Ok(_) => true,
            Err(e) if e.to_string().contains("503") => false,
            Err(e) => panic!("a connection to a freed slot: {e}"),
        },
    )
    .await;
    drop(first);
    server.stop().await;
}

/// Events over the rate get `{ error }` acks; a socket that keeps flooding is disconnected.
#[tokio::test]
async fn the_event_rate_is_limited_and_floods_are_disconnected() {
    let server = server_with(&["--events-per-second", "5", "--event-burst", "5"]).await;
    let mut client = server.client("b").await;
    for _ in 0..5 {
        assert!(client.call1("now", Value::Null).await.unwrap()["timestamp"].is_u64());
    }
    let refused = client.call1("now", Value::Null).await.unwrap();
    assert_eq!(
        refused["error"],
        "Rate limit exceeded: too many events per second"
    );
    // Keep flooding: the grace runs out and the server disconnects the socket.
    let mut outcome = Ok(Vec::new());
    for _ in 0..20 {
        outcome = client.call("now", &[]).await;
        if outcome.is_err() {
            break;
        }
    }
    assert!(matches!(outcome, Err(ClientError::Closed)), "{outcome:?}");
    // Other sockets are not affected.
    let mut other = server.client("b").await;
    assert!(other.call1("now", Value::Null).await.unwrap()["timestamp"].is_u64());
    server.stop().await;
}

/// A client that stops reading is dropped once a reply has waited `PING_TIMEOUT` for it to
/// read; others keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_dropped() {
    let options = [
        "--send-buffer-packets",
        "4",
        "--ping-interval",
        "1s",
        "--ping-timeout",
        "1s",
        "--events-per-second",
        "1000",
        "--event-burst",
        "1000",
    ];
    let server = server_with(&options).await;
    let r = hex_ref("a2");
    let big = "QUJD".repeat(1_000_000 / 4);
    let mut first = server.subscribed("b", &r).await;
    first.call1("set", json!({"data": big})).await.unwrap();

    let mut stalled = server.subscribed("b", &r).await;
    const REQUESTS: u64 = 200;
    for id in 0..REQUESTS {
        if stalled
            .send_raw(&format!(r#"2{}["get",{{}}]"#, 1000 + id))
            .await
            .is_err()
        {
            break;
        }
    }
    // The subject of this test is a timeout: read nothing for longer than `PING_TIMEOUT`.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Now read: the connection ends before every request was answered.
    let mut answered = 0;
    let ended = async {
        loop {
            match stalled.recv().await {
                Ok(packet) if packet.starts_with("31") => answered += 1,
                Ok(packet) if packet == "1" => break, // DISCONNECT
                Ok(_) => {}
                Err(_) => break,
            }
        }
    };
    fixture::within("the end of the stalled client's connection", ended).await;
    assert!(
        answered < REQUESTS,
        "some requests were dropped ({answered} answered)"
    );

    // Other clients are unaffected (the first writer, which read nothing meanwhile either,
    // missed its pings: a new one writes).
    drop(first);
    let mut writer = server.subscribed("b", &r).await;
    let ack = writer
        .call1("set", json!({"data": "aGk=", "version": 1}))
        .await
        .unwrap();
    assert_eq!(ack["version"], 2);
    let mut fresh = server.subscribed("b", &r).await;
    assert_eq!(
        fresh.call1("get", json!({"known": 2})).await.unwrap(),
        json!({"version": 2})
    );
    server.stop().await;
}

/// A packet that announces a binary attachment (which no event takes) closes its connection at
/// once, before its payload is kept: after CONNECT, and on a session that never sent CONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_announcing_an_attachment_closes_the_connection() {
    let server = server_with(&[]).await;
    let payload = "x".repeat(500_000);
    let packet = format!(r#"51-1["now",{{"_placeholder":true,"num":0}},"{payload}"]"#);

    let mut client = server.client("b").await;
    client.send_raw(&packet).await.unwrap();
    let closed = async {
        loop {
            if client.recv().await.is_err() {
                break;
            }
        }
    };
    fixture::within("the close after CONNECT", closed).await;

    // No CONNECT: the Engine.IO session is closed too.
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let (mut ws, _) = connect_async(url).await.unwrap();
    ws.send(Message::text(format!("4{packet}"))).await.unwrap();
    let ended = async {
        while let Some(Ok(message)) = ws.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
            if let Message::Text(text) = &message
                && text.as_str() == "2"
            {
                ws.send(Message::text("3")).await.ok();
            }
        }
    };
    fixture::within("the close of the session without CONNECT", ended).await;

    // Everyone else is served.
    let mut other = server.client("b").await;
    assert!(other.call1("now", Value::Null).await.unwrap()["timestamp"].is_u64());
    server.stop().await;
}

/// Until its CONNECT is accepted, a session may send `MAX_CONNECT_BYTES`: an unfinished large
/// message from a client without a token closes its connection as soon as it passes that,
/// before the message is buffered, however long the session could otherwise wait. Once
/// connected, over a WebSocket opened directly or upgraded from long-polling, the largest
/// message is taken as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_sends_little_before_it_connects() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // Nothing but the cap could close these connections within the test's patience.
    let long = [
        "--connect-timeout",
        "300s",
        "--ping-interval",
        "300s",
        "--ping-timeout",
        "300s",
    ];
    let server = server_with(&long).await;

    // A text frame announcing 900 kB, of which 200 kB come and the rest never does.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let upgrade = "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: blobs\r\n\
        Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    tcp.write_all(upgrade.as_bytes()).await.unwrap();
    let mut head = vec![0; 512];
    let n = tcp.read(&mut head).await.unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    let mut frame = vec![0x81, 0xFF];
    frame.extend_from_slice(&900_000u64.to_be_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(b"42[\"now\",\"");
    frame.resize(frame.len() + 200_000, b'x');
    // The server may close while this is still being written.
    let _ = tcp.write_all(&frame).await;
    let closed = async {
        let mut sink = vec![0; 64 * 1024];
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    fixture::within(
        "the close of the unfinished large frame's connection",
        closed,
    )
    .await;

    // A long-polling session's POST before CONNECT is held to the same budget. A connection
    // whose body was refused half sent is not reused by the requests after it.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let base = format!("http://{}/socket.io/?EIO=4&transport=polling", server.addr);
    let open = http.get(&base).send().await.unwrap().text().await.unwrap();
    let open: Value = serde_json::from_str(
        open.strip_prefix('0')
            .unwrap_or_else(|| panic!("not an open packet: {open}")),
    )
    .unwrap();
    let polling = format!("{base}&sid={}", open["sid"].as_str().unwrap());
    let big = format!("42[\"now\",\"{}\"]", "x".repeat(200_000));
    // Refused from its declared length, before the body is read: the client reads the 413,
    // unless the server closed the connection while the client was still sending the body
    // (a busy machine), which is the other answer a refused body may get.
    match http.post(&polling).body(big.clone()).send().await {
        Ok(refused) => {
            assert_eq!(refused.status(), 413);
            let error: Value = refused.json().await.unwrap();
            assert_eq!(
                error["error"],
                "More data than a Socket.IO CONNECT before connecting"
            );
        }
        Err(e) => assert!(e.is_request(), "closed while sending: {e:?}"),
    }

    // Connected, over long-polling then upgraded, the same message is read and answered.
    let polling = {
        let open = http.get(&base).send().await.unwrap();
        let status = open.status();
        let open = open.text().await.unwrap();
        let open: Value = serde_json::from_str(
            open.strip_prefix('0')
                .unwrap_or_else(|| panic!("not an open packet: {status} {open}")),
        )
        .unwrap();
        format!("{base}&sid={}", open["sid"].as_str().unwrap())
    };
    let connect = format!("40{}", json!({"token": token("b")}));
    let posted = http.post(&polling).body(connect).send().await.unwrap();
    assert!(posted.status().is_success());
    // Polled as a client polls: a ping that comes first (a busy machine) is answered.
    let connected = async {
        loop {
            let polled = http
                .get(&polling)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if polled.split('\u{1e}').any(|p| p.starts_with("40{")) {
                return;
            }
            if polled.split('\u{1e}').any(|p| p == "2") {
                http.post(&polling).body("3").send().await.unwrap();
            }
        }
    };
    fixture::within("the answer to CONNECT over long-polling", connected).await;
    let upgraded = polling.replace("transport=polling", "transport=websocket");
    let (mut ws, _) = connect_async(upgraded.replacen("http", "ws", 1))
        .await
        .unwrap();
    ws.send(Message::text("2probe")).await.unwrap();
    ws.send(Message::text("5")).await.unwrap();
    ws.send(Message::text(format!("421{}", &big[2..])))
        .await
        .unwrap();
    let answered = async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = &message
                && text.as_str().starts_with("431")
            {
                return;
            }
        }
        panic!("closed unanswered");
    };
    fixture::within("the answer to the large event after the upgrade", answered).await;

    // Connected directly over a WebSocket: as before.
    let mut client = server.subscribed("b", &hex_ref("c0")).await;
    let data = "eHh4".repeat(100_000);
    let stored = client.call1("set", json!({ "data": data })).await.unwrap();
    assert_eq!(stored["success"], true, "{stored}");
    server.stop().await;
}

/// 64 distinct refs of a prefix.
fn refs(prefix: u32, n: u32) -> Vec<String> {
    (0..n).map(|i| format!("{prefix:08x}{i:056x}")).collect()
}

/// Watches are capped for the whole server (`MAX_WATCHES`) as well as per connection, the
/// refused `watch` applies nothing, and the watches of a socket that leaves are given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_are_capped_per_server_and_given_back() {
    let server = server_with(&["--max-watches", "1500", "--max-watched-refs", "1000"]).await;
    let mut first = server.client("b").await;
    let mut second = server.client("c").await;
    let ack = first.call1("watch", json!({ "refs": refs(1, 1000) })).await;
    assert_eq!(ack.unwrap(), json!({ "watching": 1000 }));
    let refused = second.call1("watch", json!({ "refs": refs(2, 600) })).await;
    assert_eq!(
        refused.unwrap()["error"],
        "Too many watched refs on this server: at most 1500"
    );
    let ack = second.call1("watch", json!({ "refs": refs(2, 500) })).await;
    assert_eq!(ack.unwrap(), json!({ "watching": 500 }));
    // An unwatch gives its watches back at once.
    let ack = first
        .call1("unwatch", json!({ "refs": refs(1, 100) }))
        .await;
    assert_eq!(ack.unwrap(), json!({ "watching": 900 }));
    let ack = second.call1("watch", json!({ "refs": refs(3, 100) })).await;
    assert_eq!(ack.unwrap(), json!({ "watching": 600 }));

    // A change reaches its watcher with what changed, and no one else.
    let watched = &refs(2, 1)[0];
    let mut writer = server.client("c").await;
    let ack = writer
        .call1("set", json!({ "ref": watched, "data": "aGk=" }))
        .await;
    assert_eq!(ack.unwrap()["version"], 1);
    let changed = fixture::within(
        "the watcher hearing the change",
        second.next_event("changed"),
    );
    assert_eq!(
        changed.await.unwrap(),
        vec![json!({ "ref": watched, "version": 1 })]
    );

    // The first socket leaves: its 900 watches are given back (retried until the server has
    // processed the disconnect).
    first.close().await.unwrap();
    fixture::eventually("the first socket's watches given back", async || {
        let ack = second
            .call1("watch", json!({ "refs": refs(4, 400) }))
            .await
            .unwrap();
        ack == json!({ "watching": 1000 })
    })
    .await;
    assert_eq!(second.pending_events("changed"), 0);
    server.stop().await;
}

/// Many sockets watching many refs cost a bounded amount of memory per watch, and what they
/// held is given back and reused once they leave: with `MAX_WATCHES` at exactly one crowd, a
/// second crowd as large gets its watches once the first has left, and grows nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_memory_is_bounded_and_reused() {
    const SOCKETS: u32 = 100;
    const REFS: u32 = 1000;
    let storage = tempfile::tempdir().unwrap();
    let max = (SOCKETS * REFS).to_string();
    let server = fixture::start_process(storage.path(), &[("MAX_WATCHES", max.as_str())]);
    let mut rss = vec![server.rss_bytes()];
    for crowd in 0..2 {
        let mut clients = Vec::new();
        for _ in 0..SOCKETS {
            clients.push(
                RawClient::connect_token(server.addr, &token("b"))
                    .await
                    .unwrap(),
            );
        }
        for (i, client) in clients.iter_mut().enumerate() {
            let refs = refs(crowd * SOCKETS + i as u32, REFS);
            // The first crowd's disconnects may still be in progress: retried until done.
            fixture::eventually("the first crowd's watches given back", async || {
                let ack = client
                    .call1("watch", json!({ "refs": refs.clone() }))
                    .await
                    .unwrap();
                ack == json!({ "watching": REFS })
            })
            .await;
        }
        rss.push(server.rss_bytes());
        for client in clients {
            client.close().await.unwrap();
        }
    }
    let per_watch = (rss[1] - rss[0]) / u64::from(SOCKETS * REFS);
    eprintln!("watch memory: {per_watch} bytes per watch; resident {rss:?}");
    assert!(per_watch < 400, "{per_watch} bytes per watch");
    // Without reuse the second crowd would grow memory as much as the first did; the allocator's
    // per-thread arenas may hand the second crowd some fresh pages, so half is the bound.
    assert!(
        rss[2] < rss[1] + (rss[1] - rss[0]) / 2,
        "the second crowd grew memory again: {rss:?}"
    );
}

/// Long-lived HTTP streams count against `MAX_CONNECTIONS_PER_IP` like sockets: one address
/// gets 429 past its share, while another address is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_count_against_the_per_address_cap() {
    let server = server_with(&["--max-connections-per-ip", "3"]).await;
    let r = hex_ref("c3");
    let (events, metadata) = fixture::open_streams(server.addr, &token("b"), &r).await;
    let _socket = server.client("b").await;
    let http = reqwest::Client::new();
    let stream = |address: &'static str| {
        http.get(format!("http://{}/v1/blobs/{r}/events", server.addr))
            .bearer_auth(token("b"))
            .header("X-Real-IP", address)
            .send()
    };
    let refused = stream("127.0.0.1").await.unwrap();
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "Too many connections from this address");
    assert_eq!(
        server.refusal(json!({ "token": token("b") })).await,
        "Too many connections from this address"
    );
    // Another address (named by the trusted proxy's X-Real-IP) is served.
    let other = stream("203.0.113.9").await.unwrap();
    assert_eq!(other.status(), 200);
    // A closed stream gives its place back (retried until the server has seen it close).
    drop(events);
    fixture::eventually("the closed stream's place given back", async || {
        stream("127.0.0.1").await.unwrap().status() == 200
    })
    .await;
    drop((metadata, other));
    server.stop().await;
}

/// A burst within `EVENT_BURST` is answered in full and in order, large replies included,
/// without dropping the client; past the burst, `{ error }` acks on a socket that stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_answered_in_full_and_the_excess_refused_in_order() {
    let server = server_with(&[]).await;
    let r = hex_ref("b4");
    let mut client = server.subscribed("b", &r).await;
    let data = "QUJD".repeat(64 * 1024);
    client.call1("set", json!({ "data": data })).await.unwrap();
    for id in 0..300 {
        client
            .send_raw(&format!(r#"2{}["get",{{}}]"#, 10_000 + id))
            .await
            .unwrap();
    }
    let mut answers = Vec::new();
    let read = async {
        while answers.len() < 300 {
            let packet = client.recv().await.expect("still connected");
            if let Some(ack) = packet.strip_prefix("3") {
                answers.push(ack.to_owned());
            }
        }
    };
    fixture::within("an answer to each of the 300 events", read).await;
    // In order: ids 10000, 10001, …
    for (i, ack) in answers.iter().enumerate() {
        assert!(
            ack.starts_with(&(10_000 + i).to_string()),
            "{i}: {}",
            &ack[..20.min(ack.len())]
        );
    }
    let ok = answers
        .iter()
        .filter(|a| a.contains(r#""version":1"#))
        .count();
    let refused = answers
        .iter()
        .filter(|a| a.contains(r#"{"error":"#))
        .count();
    assert!(
        ok >= 200 && ok + refused == 300,
        "{ok} answered, {refused} refused"
    );
    assert!(answers[..200].iter().all(|a| a.contains(r#""version":1"#)));
    assert!(client.call1("now", Value::Null).await.is_ok());
    server.stop().await;
}

/// A client that stops reading holds at most the bounded kernel send buffer
/// (`SOCKET_SEND_BUFFER`), and `SEND_TIMEOUT` closes its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_a_bounded_kernel_buffer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = server_with(&["--send-timeout", "2s"]).await;
    let r = hex_ref("d5");
    let body = vec![7u8; 700 * 1024];
    let http = reqwest::Client::new();
    let put = http
        .put(format!("http://{}/v1/blobs/{r}", server.addr))
        .bearer_auth(token("b"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let mut tcp = socket.connect(server.addr).await.unwrap();
    let local_port = tcp.local_addr().unwrap().port();
    let request = format!(
        "GET /v1/blobs/{r} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        token("b")
    );
    // Ten responses pipelined: 7 MB the client never reads.
    tcp.write_all(request.repeat(10).as_bytes()).await.unwrap();
    // The server's side of the connection, until it is gone; its largest send queue.
    let mut largest = 0;
    let gone = async {
        // Sampled, to see the largest the queue gets.
        while let Some(queued) = send_queue(server.addr.port(), local_port) {
            largest = largest.max(queued);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    fixture::within("SEND_TIMEOUT closing the connection", gone).await;
    assert!(
        largest < 1024 * 1024,
        "the kernel held {largest} bytes for the client"
    );
    let mut received = Vec::new();
    let _ = tcp.read_to_end(&mut received).await;
    assert!(received.len() < 10 * body.len());
    server.stop().await;
}

/// The kernel's send queue of the connection from local port `server` to `client`, from
/// /proc/net/tcp; `None` once the connection is gone.
fn send_queue(server: u16, client: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{server:04X}");
    let remote = format!(":{client:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Established (01): the server has not closed it yet.
        let live = fields[3] == "01";
        (fields[1].ends_with(&local) && fields[2].ends_with(&remote) && live).then(|| {
            let tx = fields[4].split(':').next().unwrap();
            u64::from_str_radix(tx, 16).unwrap()
        })
    })
}
