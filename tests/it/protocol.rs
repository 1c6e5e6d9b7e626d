//! The Socket.IO protocol of docs/PROTOCOL.md, row by row, checked with exact packets.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::fixture::{self, SECRET, TestServer, hex_ref, token};
use blobs_testkit::RawClient;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn sign(claims: Value, alg: Algorithm, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// `now` answers the server time in milliseconds.
#[tokio::test]
async fn now_answers_the_server_time() {
    let server = TestServer::start().await;
    let mut client = server.client("b").await;
    let before = now_ms();
    let ack = client.call1("now", Value::Null).await.unwrap();
    let timestamp = ack["timestamp"].as_u64().expect("timestamp is an integer");
    assert!(timestamp >= before - 1000 && timestamp <= now_ms() + 1000);
    // `now` also works with no argument at all.
    let ack = client.call("now", &[]).await.unwrap();
    assert!(ack[0]["timestamp"].is_u64());
    server.stop().await;
}

/// Missing, malformed, wrongly signed, expired or not-yet-valid tokens and unsafe bucket claims
/// are all refused with "Access denied", and nothing is created on disk.
#[tokio::test]
async fn bad_tokens_get_access_denied() {
    let server = TestServer::start().await;
    let now = now_ms() / 1000;
    let cases = [
        json!({}),
        json!(null),
        json!({ "token": 42 }),
        json!({ "token": "garbage" }),
        json!({ "token": sign(json!({"bucket": "b"}), Algorithm::HS256, "wrong secret") }),
        json!({ "token": sign(json!({"bucket": "b", "exp": now - 10}), Algorithm::HS256, SECRET) }),
        json!({ "token": sign(json!({"bucket": "b", "nbf": now + 3600}), Algorithm::HS256, SECRET) }),
        json!({ "token": sign(json!({"bucket": ".."}), Algorithm::HS256, SECRET) }),
        json!({ "token": sign(json!({"bucket": "a/b"}), Algorithm::HS256, SECRET) }),
        json!({ "token": sign(json!({"bucket": "x".repeat(1000)}), Algorithm::HS256, SECRET) }),
        json!({ "token": sign(json!({"iat": now}), Algorithm::HS256, SECRET) }),
        // `alg: none`, hand-built: header {"alg":"none","typ":"JWT"}, payload {"bucket":"b"}.
        json!({ "token": "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJidWNrZXQiOiJiIn0." }),
    ];
    for auth in cases {
        assert_eq!(
            server.refusal(auth.clone()).await,
            "Access denied",
            "{auth}"
        );
    }
    assert_eq!(
        server.entries_on_disk(),
        0,
        "a refused client touches nothing on disk"
    );
    server.stop().await;
}

/// Tokens of the original (`{bucket, iat}`, no `exp`), HS384/HS512 and an unexpired `exp` work.
#[tokio::test]
async fn tokens_of_the_original_are_accepted() {
    let server = TestServer::start().await;
    let now = now_ms() / 1000;
    for (claims, alg) in [
        (json!({"bucket": "Legacy_1", "iat": now}), Algorithm::HS256),
        (json!({"bucket": "b", "iat": now}), Algorithm::HS384),
        (json!({"bucket": "b"}), Algorithm::HS512),
        (json!({"bucket": "b", "exp": now + 3600}), Algorithm::HS256),
    ] {
        let token = sign(claims, alg, SECRET);
        let mut client = RawClient::connect_token(server.addr, &token).await.unwrap();
        assert!(client.call1("now", Value::Null).await.unwrap()["timestamp"].is_u64());
    }
    server.stop().await;
}

/// `ref` acks with no argument; `get` on a missing blob acks `null`; exact packets.
#[tokio::test]
async fn ref_and_get_ack_shapes_are_exact() {
    let server = TestServer::start().await;
    let mut client = server.client("b").await;
    assert_eq!(
        client
            .call_raw("ref", &[json!(hex_ref("ab"))])
            .await
            .unwrap(),
        "30[]"
    );
    assert_eq!(
        client.call_raw("get", &[json!({})]).await.unwrap(),
        "31[null]"
    );
    assert_eq!(
        client
            .call_raw("get", &[json!({"known": 3})])
            .await
            .unwrap(),
        "32[null]"
    );
    server.stop().await;
}

/// `set` creates at version 1 whatever `version` said, then is compare-and-swap; `get` answers
/// `{version}` when `known` matches and `{data, version}` otherwise.
#[tokio::test]
async fn set_is_compare_and_swap_and_get_honours_known() {
    let server = TestServer::start_files_current().await;
    let mut client = server.subscribed("b", &hex_ref("01")).await;

    let created = client
        .call1("set", json!({"data": "aGk=", "version": 7}))
        .await
        .unwrap();
    assert_eq!(created, json!({"success": true, "version": 1}));
    assert_eq!(
        client.call1("get", json!({})).await.unwrap(),
        json!({"data": "aGk=", "version": 1})
    );
    assert_eq!(
        client.call1("get", json!({"known": 1})).await.unwrap(),
        json!({"version": 1})
    );
    assert_eq!(
        client.call1("get", json!({"known": 5})).await.unwrap(),
        json!({"data": "aGk=", "version": 1})
    );

    let updated = client
        .call1("set", json!({"data": "aGk9", "version": 1}))
        .await
        .unwrap();
    assert_eq!(updated, json!({"success": true, "version": 2}));
    for stale in [
        json!({"data": "eA==", "version": 1}),
        json!({"data": "eA=="}),
    ] {
        assert_eq!(
            client.call1("set", stale).await.unwrap(),
            json!({"success": false, "data": "aGk9", "version": 2})
        );
    }

    // A blob may have a version and no data.
    let bare = client.call1("set", json!({"version": 2})).await.unwrap();
    assert_eq!(bare, json!({"success": true, "version": 3}));
    assert_eq!(
        client.call1("get", json!({})).await.unwrap(),
        json!({"version": 3})
    );
    assert_eq!(
        client.call1("set", json!({"version": 1})).await.unwrap(),
        json!({"success": false, "version": 3})
    );

    // The file is the original's format: updated present after an update, no data here.
    let file: Value =
        serde_json::from_slice(&std::fs::read(server.blob_path("b", &hex_ref("01"))).unwrap())
            .unwrap();
    assert_eq!(file["version"], 3);
    assert!(file.get("data").is_none());
    assert!(file["created"].as_u64().unwrap() <= file["updated"].as_u64().unwrap());
    assert_eq!(
        file["ip"], "127.0.0.1",
        "the peer address when no X-Real-IP is sent"
    );
    server.stop().await;
}

/// A `set` with a write id (`writer`, `seq`) is done once: sent again (its answer lost with a
/// connection), even after other writes and a restart, it is answered with the version it made
/// and writes nothing; a stale one whose writer the blob may have forgotten says `unknown`; a
/// bad write id is an `{ error }`.
#[tokio::test]
async fn a_set_sent_again_under_its_write_id_is_not_applied_twice() {
    let server = TestServer::start().await;
    let r = hex_ref("0a");
    let mut client = server.subscribed("b", &r).await;
    let mut watcher = server.subscribed("b", &r).await;
    let first = json!({"data": "aGk=", "writer": "tab-1", "seq": 7});
    let done = json!({"success": true, "version": 1});
    assert_eq!(client.call1("set", first.clone()).await.unwrap(), done);
    assert_eq!(watcher.recv().await.unwrap(), r#"2["changed"]"#);
    assert_eq!(client.call1("set", first.clone()).await.unwrap(), done);
    // Another write, without a write id, in between.
    let other = json!({"data": "eA==", "version": 1});
    assert_eq!(client.call1("set", other).await.unwrap()["version"], 2);
    assert_eq!(watcher.recv().await.unwrap(), r#"2["changed"]"#);
    let storage = server.stop().await;

    let server = TestServer::start_in(storage).await;
    let mut client = server.subscribed("b", &r).await;
    let mut watcher = server.subscribed("b", &r).await;
    assert_eq!(client.call1("set", first).await.unwrap(), done);
    assert_eq!(
        client.call1("get", json!({})).await.unwrap(),
        json!({"data": "eA==", "version": 2}),
        "the repeated write wrote nothing"
    );
    // Nothing was announced either: past one round trip, the watcher has nothing waiting.
    assert!(
        watcher
            .call_raw("now", &[])
            .await
            .unwrap()
            .contains("timestamp")
    );
    assert!(
        tokio::time::timeout(std::time::Duration::ZERO, watcher.recv())
            .await
            .is_err(),
        "no change was announced for the repeated write"
    );

    // The blob remembers its last 32 writers: a stale write whose earlier send would be older
    // than their writes may have committed, and says so.
    for version in 2..40u64 {
        let write =
            json!({"data": "eA==", "version": version, "writer": format!("w{version}"), "seq": 1});
        assert_eq!(
            client.call1("set", write).await.unwrap()["version"],
            version + 1
        );
    }
    let stale =
        |version: u64| json!({"data": "eA==", "version": version, "writer": "lost", "seq": 1});
    assert_eq!(
        client.call1("set", stale(6)).await.unwrap(),
        json!({"success": false, "data": "eA==", "version": 40, "unknown": true})
    );
    assert_eq!(
        client.call1("set", stale(8)).await.unwrap(),
        json!({"success": false, "data": "eA==", "version": 40}),
        "version 9 was made by w8, which the blob remembers: this write never committed"
    );
    let bad_ids = [
        json!({"writer": "", "seq": 1}),
        json!({"writer": "a".repeat(65), "seq": 1}),
        json!({"writer": "a b", "seq": 1}),
        json!({"writer": 7, "seq": 1}),
        json!({"writer": "é", "seq": 1}),
        json!({"writer": "a"}),
        json!({"seq": 1}),
        json!({"writer": "a", "seq": 0}),
        json!({"writer": "a", "seq": 1.5}),
        json!({"writer": "a", "seq": "1"}),
    ];
    for bad in bad_ids {
        let mut write = json!({"data": "eA==", "version": 40});
        write
            .as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        let ack = client.call1("set", write).await.unwrap();
        let error = ack["error"].as_str().unwrap_or_default();
        assert!(error.contains("Invalid write id"), "{bad}: {ack}");
    }
    server.stop().await;
}

/// Without a subscription `get` and `set` answer "Reference is not provided"; `ref(null)`
/// unsubscribes; refs are lower-cased, so both cases name one blob.
#[tokio::test]
async fn ref_subscription_rules() {
    let server = TestServer::start_files_current().await;
    let mut client = server.client("b").await;
    let no_ref = json!({"error": "Reference is not provided"});
    assert_eq!(client.call1("get", json!({})).await.unwrap(), no_ref);
    assert_eq!(
        client.call1("set", json!({"data": "aGk="})).await.unwrap(),
        no_ref
    );

    client.call("ref", &[json!(hex_ref("AB"))]).await.unwrap();
    assert_eq!(
        client.call1("set", json!({"data": "aGk="})).await.unwrap(),
        json!({"success": true, "version": 1})
    );
    client.call("ref", &[json!(hex_ref("ab"))]).await.unwrap();
    assert_eq!(
        client.call1("get", json!({})).await.unwrap(),
        json!({"data": "aGk=", "version": 1})
    );
    assert!(server.blob_path("b", &hex_ref("ab")).exists());

    assert_eq!(
        client.call("ref", &[Value::Null]).await.unwrap(),
        Vec::<Value>::new()
    );
    assert_eq!(client.call1("get", json!({})).await.unwrap(), no_ref);
    server.stop().await;
}

/// Every invalid argument shape gets an `{ error }` ack and the socket keeps working.
#[tokio::test]
async fn invalid_arguments_get_error_acks() {
    let server = TestServer::start().await;
    let mut client = server.client("b").await;
    let bad_refs = [
        json!("abc"),
        json!("g".repeat(64)),
        json!(format!("{}é", "a".repeat(62))),
        json!("a".repeat(65)),
        json!(42),
        json!({}),
        json!([hex_ref("ab")]),
        json!(true),
    ];
    for bad in bad_refs {
        let ack = client.call1("ref", bad.clone()).await.unwrap();
        assert!(
            ack["error"].as_str().unwrap().contains("Invalid reference"),
            "{bad}: {ack}"
        );
    }
    let ack = client.call("ref", &[]).await.unwrap();
    assert!(ack[0]["error"].is_string(), "ref without argument: {ack:?}");

    client.call("ref", &[json!(hex_ref("cd"))]).await.unwrap();
    let huge = json!(1e300);
    let shapes = [
        Value::Null,
        json!(5),
        json!("x"),
        json!([]),
        json!([{"version": 1}]),
        json!(true),
    ];
    for event in ["get", "set"] {
        for bad in &shapes {
            let ack = client.call1(event, bad.clone()).await.unwrap();
            assert!(ack["error"].is_string(), "{event}({bad}): {ack}");
        }
        let ack = client.call(event, &[]).await.unwrap();
        assert!(ack[0]["error"].is_string(), "{event}(): {ack:?}");
    }
    let versions = [
        json!(0),
        json!(-1),
        json!(1.5),
        json!("1"),
        huge.clone(),
        json!(9007199254740992u64),
        json!({"n": 1}),
    ];
    for bad in &versions {
        let ack = client.call1("get", json!({"known": bad})).await.unwrap();
        assert!(
            ack["error"].as_str().unwrap().starts_with("Invalid known"),
            "{bad}: {ack}"
        );
        let ack = client
            .call1("set", json!({"version": bad, "data": "aGk="}))
            .await
            .unwrap();
        assert!(
            ack["error"]
                .as_str()
                .unwrap()
                .starts_with("Invalid version"),
            "{bad}: {ack}"
        );
    }
    let too_long = "A".repeat(1_048_580);
    for bad in [
        json!("not base64!"),
        json!("aG k="),
        json!(" aGk="),
        json!(12),
        json!({"x": 1}),
        json!(too_long),
    ] {
        let ack = client.call1("set", json!({"data": bad})).await.unwrap();
        assert!(
            ack["error"].as_str().unwrap().starts_with("Invalid data"),
            "{ack}"
        );
    }
    // Nothing of the above was written, and the socket still works; extra fields are ignored.
    assert_eq!(client.call1("get", json!({})).await.unwrap(), Value::Null);
    assert_eq!(
        client
            .call1("set", json!({"data": "aGk=", "extra": {"deep": [1, 2]}}))
            .await
            .unwrap(),
        json!({"success": true, "version": 1})
    );
    server.stop().await;
}

/// An event sent without an ack callback disconnects that socket (`io server disconnect`).
#[tokio::test]
async fn an_event_without_ack_disconnects() {
    let server = TestServer::start().await;
    for packet in [
        r#"2["now"]"#,
        r#"2["ref",null]"#,
        r#"2["get",{}]"#,
        r#"2["set",{}]"#,
    ] {
        let mut client = server.client("b").await;
        client.send_raw(packet).await.unwrap();
        assert_eq!(
            client.recv().await.unwrap(),
            "1",
            "{packet} gets a DISCONNECT packet"
        );
    }
    // Unknown events are ignored, as Socket.IO does, and others are unaffected.
    let mut client = server.client("b").await;
    client.send_raw(r#"2["unknown",1]"#).await.unwrap();
    assert!(client.call1("now", Value::Null).await.unwrap()["timestamp"].is_u64());
    server.stop().await;
}

/// Events take effect in the order sent: `ref` then `get` at once (no wait for the first ack)
/// reads the new ref, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_take_effect_in_order() {
    // 400 events at full speed: lift the per-socket rate limit for this test.
    let unlimited = ["--events-per-second", "1000000", "--event-burst", "1000000"];
    let server = TestServer::start_with(tempfile::tempdir().unwrap(), &unlimited).await;
    let mut writer = server.subscribed("b", &hex_ref("11")).await;
    writer.call1("set", json!({"data": "MTE="})).await.unwrap();

    let mut client = server.client("b").await;
    for round in 0..200u64 {
        let (r, expected) = if round % 2 == 0 {
            (hex_ref("11"), json!({"data": "MTE=", "version": 1}))
        } else {
            (hex_ref("22"), Value::Null)
        };
        let ref_id = round * 2;
        let get_id = ref_id + 1;
        client
            .send_raw(&format!(r#"2{ref_id}["ref","{r}"]"#))
            .await
            .unwrap();
        client
            .send_raw(&format!(r#"2{get_id}["get",{{}}]"#))
            .await
            .unwrap();
        assert_eq!(
            client.wait_ack(ref_id).await.unwrap(),
            format!("3{ref_id}[]")
        );
        let ack = client.wait_ack(get_id).await.unwrap();
        assert_eq!(ack, format!("3{get_id}[{expected}]"), "round {round}");
    }
    server.stop().await;
}

/// An event sent the moment CONNECT arrives is answered: socketioxide marks a socket
/// connected only after sending CONNECT, so the server must not use that flag to skip events.
/// The window is small; many connections make hitting it likely under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sent_on_connect_are_answered() {
    let server = TestServer::start().await;
    let clients = (0..200).map(|_| {
        let addr = server.addr;
        tokio::spawn(async move {
            let mut client = RawClient::connect_token(addr, &token("b")).await.unwrap();
            let ack = fixture::within(
                "the answer to now, sent on connect",
                client.call_raw("now", &[]),
            );
            assert!(ack.await.unwrap().contains("timestamp"));
        })
    });
    for client in clients.collect::<Vec<_>>() {
        client.await.unwrap();
    }
    server.stop().await;
}

/// `changed` goes to the other subscribers of the same bucket and ref only, with no argument.
#[tokio::test]
async fn changed_reaches_the_other_subscribers_only() {
    let server = TestServer::start().await;
    let r = hex_ref("33");
    let mut writer = server.subscribed("b", &r).await;
    let mut watchers = Vec::new();
    for _ in 0..3 {
        watchers.push(server.subscribed("b", &r).await);
    }
    let mut other_ref = server.subscribed("b", &hex_ref("44")).await;
    let mut other_bucket = server.subscribed("c", &r).await;
    let mut unsubscribed = server.client("b").await;

    for version in 1..=3u64 {
        let previous = (version > 1).then(|| version - 1);
        let ack = writer
            .call1("set", json!({"data": "aGk=", "version": previous}))
            .await
            .unwrap();
        assert_eq!(ack["version"], version);
        for watcher in &mut watchers {
            assert_eq!(watcher.recv().await.unwrap(), r#"2["changed"]"#);
        }
    }
    // `changed` is broadcast before the writer's ack, so one more round trip on every other
    // socket proves nothing was queued for it.
    for client in [
        &mut writer,
        &mut other_ref,
        &mut other_bucket,
        &mut unsubscribed,
    ] {
        let ack = client.call_raw("now", &[]).await.unwrap();
        assert!(ack.contains("timestamp"));
        assert!(
            tokio::time::timeout(std::time::Duration::ZERO, client.recv())
                .await
                .is_err(),
            "no packet other than the ack arrived"
        );
    }
    // After unsubscribing a watcher hears nothing more.
    let mut quiet = watchers.pop().unwrap();
    quiet.call("ref", &[Value::Null]).await.unwrap();
    writer.call1("set", json!({"version": 3})).await.unwrap();
    for watcher in &mut watchers {
        assert_eq!(watcher.recv().await.unwrap(), r#"2["changed"]"#);
    }
    quiet.call_raw("now", &[]).await.unwrap();
    assert!(
        tokio::time::timeout(std::time::Duration::ZERO, quiet.recv())
            .await
            .is_err()
    );
    server.stop().await;
}

/// The same ref in two buckets is two different blobs.
#[tokio::test]
async fn buckets_are_isolated() {
    let server = TestServer::start().await;
    let r = hex_ref("55");
    let mut a = server.subscribed("alpha", &r).await;
    let mut b = server.subscribed("beta", &r).await;
    a.call1("set", json!({"data": "YQ=="})).await.unwrap();
    assert_eq!(b.call1("get", json!({})).await.unwrap(), Value::Null);
    b.call1("set", json!({"data": "Yg=="})).await.unwrap();
    assert_eq!(a.call1("get", json!({})).await.unwrap()["data"], "YQ==");
    assert_eq!(b.call1("get", json!({})).await.unwrap()["data"], "Yg==");
    server.stop().await;
}

/// Concurrent compare-and-swap loops on one blob: every version is won exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sets_have_exactly_one_winner_per_version() {
    const CLIENTS: usize = 8;
    const WINS_EACH: usize = 10;
    let server = TestServer::start().await;
    let r = hex_ref("66");
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = server.subscribed("b", &r).await;
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            let mut version: Option<u64> = None;
            while won.len() < WINS_EACH {
                let ack = client
                    .call1("set", json!({"data": "aGk=", "version": version}))
                    .await
                    .unwrap();
                let current = ack["version"].as_u64().expect("version in every set ack");
                if ack["success"] == true {
                    won.push(current);
                }
                version = Some(current);
            }
            won
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    let expected: Vec<u64> = (1..=(CLIENTS * WINS_EACH) as u64).collect();
    assert_eq!(all, expected, "each version won exactly once, none skipped");
    server.stop().await;
}

/// The documented maximum `data` fits in one `set` over WebSocket; a frame over the transport
/// limit disconnects only its sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_limits() {
    let server = TestServer::start().await;
    let r = hex_ref("88");
    let max = "QUJD".repeat(1_048_576 / 4);
    let mut big = server.subscribed("b", &r).await;
    let mut bystander = server.subscribed("b", &r).await;
    let ack = big.call1("set", json!({"data": max})).await.unwrap();
    assert_eq!(ack, json!({"success": true, "version": 1}));
    assert_eq!(bystander.recv().await.unwrap(), r#"2["changed"]"#);
    let got = bystander.call1("get", json!({})).await.unwrap();
    assert_eq!(got["data"].as_str().unwrap().len(), 1_048_576);

    let over = format!(r#"420["set",{{"data":"{}"}}]"#, "A".repeat(3 * 1024 * 1024));
    big.send_engine(&over).await.ok();
    let closed = fixture::within("the close after the oversized frame", async {
        while let Ok(packet) = big.recv().await {
            assert!(
                !packet.starts_with("30"),
                "the oversized set must not be answered"
            );
        }
    });
    closed.await;
    assert!(bystander.call1("now", Value::Null).await.unwrap()["timestamp"].is_u64());
    assert_eq!(
        bystander.call1("get", json!({"known": 1})).await.unwrap(),
        json!({"version": 1})
    );
    server.stop().await;
}
