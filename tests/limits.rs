//! Least privilege and overload limits: read-only tokens, trusted proxies, connection limits,
//! the per-socket event rate and stalled subscribers.

mod common;

use std::time::Duration;

use blobs_testkit::{ClientError, RawClient};
use common::{TestServer, hex_ref, read_only_token, token};
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
    let trusting = TestServer::start().await;
    assert_eq!(recorded_address(&trusting).await, "203.0.113.7");
    trusting.stop().await;

    let distrusting = server_with(&["--trusted-proxies", "10.0.0.1,192.168.0.0/16"]).await;
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
    // The slot is freed when the server has processed the close; retry (bounded) until then.
    first_again.close().await.unwrap();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match RawClient::connect_token(server.addr, &token("b")).await {
            Ok(_) => break,
            Err(e) if attempts < 200 && e.to_string().contains("503") => {
                tokio::task::yield_now().await
            }
            Err(e) => panic!("the freed slot was never reusable: {e}"),
        }
    }
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

/// A client that stops reading is dropped once its send buffer is full; others keep working.
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
    let mut writer = server.subscribed("b", &r).await;
    writer.call1("set", json!({"data": big})).await.unwrap();

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
    // Now read: the connection ends before every request was answered.
    let mut answered = 0;
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stalled.recv().await {
                Ok(packet) if packet.starts_with("31") => answered += 1,
                Ok(packet) if packet == "1" => break, // DISCONNECT
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    ended
        .await
        .expect("the stalled client's connection is closed");
    assert!(
        answered < REQUESTS,
        "some requests were dropped ({answered} answered)"
    );

    // The writer and new clients are unaffected.
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
