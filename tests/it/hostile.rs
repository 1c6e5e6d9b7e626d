//! Hostile and malformed input: none of it may panic, hang or stop the server, and a normal
//! client is served after each case.

use crate::fixture::{self, SECRET, TestServer, hex_ref};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use blobs_testkit::tokio_tungstenite::tungstenite::Message;
use blobs_testkit::{ClientError, RawClient};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

async fn assert_healthy(server: &TestServer) {
    let mut client = server.subscribed("healthy", &hex_ref("ee")).await;
    let ack = client.call1("now", Value::Null).await.unwrap();
    assert!(ack["timestamp"].is_u64());
}

/// Reads what the server sends after a hostile packet until the connection closes or a probe
/// (`now` with a fresh ack id) is answered, whichever comes first; both are acceptable.
async fn survive(client: &mut RawClient, case: &str) {
    let probe = async {
        match client.call_raw("now", &[]).await {
            Ok(_) | Err(ClientError::Closed) | Err(ClientError::Ws(_)) => {}
            Err(e) => panic!("unexpected client error: {e}"),
        }
    };
    fixture::within(
        &format!("{case:?}: an answer to a probe, or the close"),
        probe,
    )
    .await;
}

/// Tokens built to trick the verifier: algorithm confusion, `none`, bad claim types, unsafe
/// buckets. All are "Access denied" and nothing appears on disk.
#[tokio::test]
async fn hostile_tokens_are_denied_and_touch_nothing() {
    let server = TestServer::start().await;
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"bucket": "b"}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut parts = hs256.split('.');
    let (_, payload, signature) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
    let rs256_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let tokens = [
        format!("{rs256_header}.{payload}.{signature}"),
        format!("{none_header}.{payload}."),
        format!("{none_header}.{payload}.{signature}"),
        sign(json!({"bucket": "b", "exp": "tomorrow"})),
        sign(json!({"bucket": "b", "nbf": [1]})),
        sign(json!({"bucket": "a\u{0}b"})),
        sign(json!({"bucket": "ünïcödé"})),
        sign(json!({"bucket": ""})),
        sign(json!({"bucket": "..", "iat": 1})),
        sign(json!({"bucket": null})),
        sign(json!({"bucket": "b", "scope": "admin"})),
        "x".repeat(60_000),
    ];
    for token in tokens {
        match RawClient::connect_token(server.addr, &token).await {
            Err(ClientError::Refused(message)) => assert_eq!(message, "Access denied"),
            Err(e) => panic!("{token:.60}: {e}"),
            Ok(_) => panic!("{token:.60} was accepted"),
        }
    }
    // A CONNECT over `MAX_CONNECT_BYTES` (64 KiB) closes the connection before it is read whole.
    match RawClient::connect_token(server.addr, &"x".repeat(100_000)).await {
        Err(ClientError::Closed | ClientError::Ws(_)) => {}
        other => panic!("a 100 kB token: {:?}", other.map(|_| "connected")),
    }
    assert_eq!(
        server.entries_on_disk(),
        0,
        "a refused client touches nothing on disk"
    );
    assert_healthy(&server).await;
    server.stop().await;
}

/// A token signed with the test secret whose header is exactly `header` (JSON text).
fn with_header(header: &str, claims: &Value) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
        .expect("HS256 signs");
    format!("{message}.{signature}")
}

/// Whether `token` is accepted over HTTP (a read of a blob nobody wrote: 404, else 401) and at
/// the Socket.IO handshake (connected, else "Access denied"); both must agree.
async fn accepted(server: &TestServer, token: &str) -> bool {
    let url = format!("http://{}/v1/blobs/{}", server.addr, hex_ref("c1"));
    let status = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status();
    let over_http = match status {
        reqwest::StatusCode::NOT_FOUND => true,
        reqwest::StatusCode::UNAUTHORIZED => false,
        other => panic!("{token:.60}: HTTP {other}"),
    };
    let at_handshake = match RawClient::connect_token(server.addr, token).await {
        Ok(_) => true,
        Err(ClientError::Refused(message)) => {
            assert_eq!(message, "Access denied");
            false
        }
        Err(e) => panic!("{token:.60}: {e}"),
    };
    assert_eq!(
        over_http, at_handshake,
        "{token:.60}: HTTP and Socket.IO agree"
    );
    over_http
}

/// A correctly signed token whose header has `crit` (RFC 7515 §4.1.11: extensions the server
/// must understand, and it understands none) is refused over HTTP and at the handshake.
#[tokio::test]
async fn a_crit_header_refuses_the_token() {
    let server = TestServer::start().await;
    let claims = json!({"bucket": "b"});
    let plain = with_header(r#"{"alg":"HS256","typ":"JWT"}"#, &claims);
    assert!(
        accepted(&server, &plain).await,
        "the same token without crit"
    );
    // Headers the JWT library alone accepts: `crit` is the only reason to refuse them.
    for header in [
        r#"{"alg":"HS256","typ":"JWT","crit":["exp"]}"#,
        r#"{"alg":"HS256","crit":["x-ext"],"x-ext":"must be understood"}"#,
        r#"{"alg":"HS256","crit":null}"#,
    ] {
        let token = with_header(header, &claims);
        assert!(!accepted(&server, &token).await, "{header}");
    }
    assert_healthy(&server).await;
    server.stop().await;
}

/// A token whose `iat` is more than a minute ahead of the server's clock (which would outlive
/// `blobs revoke --before`) is refused over HTTP and at the handshake; a few seconds ahead is
/// forgiven as clock skew.
#[tokio::test]
async fn an_iat_far_in_the_future_is_refused() {
    let server = TestServer::start().await;
    let now = blobs::clock::now_unix();
    let issued = |iat: u64| {
        with_header(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &json!({"bucket": "b", "iat": iat}),
        )
    };
    assert!(
        accepted(&server, &issued(now + 5)).await,
        "within the leeway"
    );
    for ahead in [blobs::auth::IAT_LEEWAY_SECS + 60, 86_400, 50 * 365 * 86_400] {
        assert!(
            !accepted(&server, &issued(now + ahead)).await,
            "{ahead} s ahead"
        );
    }
    server.stop().await;
}

/// Malformed Engine.IO / Socket.IO packets over WebSocket: the server survives each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_do_not_hurt_the_server() {
    let server = TestServer::start().await;
    let huge_attachments = r#"51000000000-["set",{"_placeholder":true,"num":0}]"#;
    let packets = [
        "4".to_owned(),
        "42".to_owned(),
        "42[".to_owned(),
        "42{}".to_owned(),
        "42[]".to_owned(),
        "42[42]".to_owned(),
        "42[\"get\",{\"known\":[[[[[[{}]]]]]]}]".to_owned(),
        "4299999999999999999999999999[\"now\"]".to_owned(),
        "42-1[\"now\"]".to_owned(),
        format!("4{huge_attachments}"),
        "49".to_owned(),
        "9".to_owned(),
        String::new(),
        "40/admin,{}".to_owned(),
        "42/admin,[\"now\"]".to_owned(),
    ];
    for packet in packets {
        let mut client = server.client("b").await;
        client.send_engine(&packet).await.ok();
        survive(&mut client, &packet).await;
        assert_healthy(&server).await;
    }
    // A client DISCONNECT leaves the namespace; later events on that transport are ignored,
    // as Socket.IO does, so only the server's health is checked.
    let mut client = server.client("b").await;
    client.send_engine("41").await.unwrap();
    assert_healthy(&server).await;
    drop(client);
    // Binary frames: invalid UTF-8 and an unexpected attachment.
    for frame in [vec![0xff, 0xfe, 0xfd], vec![0x34, 0x32, 0xc3, 0x28]] {
        let mut client = server.client("b").await;
        client
            .send_message(Message::binary(frame.clone()))
            .await
            .ok();
        survive(&mut client, &format!("binary {frame:?}")).await;
        assert_healthy(&server).await;
    }
    server.stop().await;
}

/// Long-polling: invalid UTF-8 bodies (400, and the session is closed), unknown sessions, and a
/// WebSocket upgrade for a session id that does not exist.
#[tokio::test]
async fn malformed_http_requests_get_errors() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let base = format!("http://{}/socket.io/?EIO=4&transport=polling", server.addr);
    let open = http.get(&base).send().await.unwrap().text().await.unwrap();
    let open: Value = serde_json::from_str(&open[1..]).unwrap();
    let sid = open["sid"].as_str().unwrap();
    let session = format!("{base}&sid={sid}");

    let invalid_utf8 = http
        .post(&session)
        .body(vec![0x34, 0x32, 0xff, 0xfe])
        .send()
        .await
        .unwrap();
    assert_eq!(invalid_utf8.status(), 400);
    // The session is closed by then: its sid is unknown to a POST and to a poll.
    for after in [http.post(&session).body("40"), http.get(&session)] {
        let after = after.send().await.unwrap();
        assert_eq!(
            after.status(),
            400,
            "the session of an invalid body is closed"
        );
        let body: Value = after.json().await.unwrap();
        assert_eq!(body["message"], "Session ID unknown");
    }

    let unknown = http
        .post(format!("{base}&sid=AAAAAAAAAAAAAAAA"))
        .body("40")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);

    let bad_version = http
        .get(format!(
            "http://{}/socket.io/?EIO=9&transport=polling",
            server.addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_version.status(), 400);

    let upgrade = blobs_testkit::tokio_tungstenite::connect_async(format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid=AAAAAAAAAAAAAAAA",
        server.addr
    ))
    .await;
    // Refused at the HTTP level, or upgraded and closed at once without an open packet.
    match upgrade {
        Err(blobs_testkit::tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400)
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok((mut ws, _)) => {
            use futures_util::StreamExt;
            let first =
                fixture::within("the close of an unknown session's upgrade", ws.next()).await;
            assert!(
                matches!(first, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
                "an upgrade for an unknown session is closed at once: {first:?}"
            );
        }
    }
    assert_healthy(&server).await;
    server.stop().await;
}

/// Argument shapes nobody should send: deep nesting, huge numbers, wrong types everywhere.
#[tokio::test]
async fn garbage_arguments_get_error_acks() {
    let server = TestServer::start().await;
    let mut client = server.subscribed("b", &hex_ref("ab")).await;
    let mut deep = json!(1);
    for _ in 0..100 {
        deep = json!([deep]);
    }
    // Each argument is refused by the events that read the field it spoils; `get` ignores
    // `data` and `version`, and `set` ignores `known`, as extra fields are ignored.
    let garbage = [
        (deep.clone(), ["get", "set"].as_slice()),
        (json!({"version": deep}), &["set"]),
        (json!({"known": deep}), &["get"]),
        (json!({"known": {"$gt": 0}}), &["get"]),
        (json!({"data": ["aGk="]}), &["set"]),
        (json!({"data": "aGk=", "version": 1e308}), &["set"]),
        (
            json!({"data": "aGk=", "version": -9007199254740991i64}),
            &["set"],
        ),
        (
            json!({"data": "aGk=", "version": 18446744073709551615u64}),
            &["set"],
        ),
        (json!({"data": "\u{0}\u{1}"}), &["set"]),
        (json!({"data": "aGk=\r\n"}), &["set"]),
    ];
    for (arg, events) in garbage {
        for event in events {
            let ack = client.call1(event, arg.clone()).await.unwrap();
            assert!(
                ack["error"].is_string(),
                "{event}({arg}) must be refused: {ack}"
            );
        }
    }
    assert_eq!(client.call1("get", json!({})).await.unwrap(), Value::Null);
    server.stop().await;
}
