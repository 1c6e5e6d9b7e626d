//! Several Blobs nodes on one Redis and one real object store, Ceph's RADOS Gateway (both on
//! loopback, started here for each test): notifications cross nodes, compare-and-swap holds
//! across nodes, a node killed with SIGKILL loses no acknowledged write, a node started later
//! sees everything, the Blob Service's records are one sequence on every node, and direct
//! transfer URLs are the object store's own. Every exchange with the nodes is bounded.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::fixture::service_api::{Api, next_line, subscription};
use crate::fixture::{
    self, PATIENCE, RedisServer, S3Server, ServerProcess, TestServer, hex_ref, token, within,
};
use blobs::names::ContentHash;
use blobs_testkit::RawClient;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// What the nodes share.
struct Cluster {
    redis: RedisServer,
    s3: S3Server,
}

impl Cluster {
    async fn start() -> Self {
        Self {
            redis: fixture::redis(),
            s3: fixture::rgw().await,
        }
    }

    /// The options that put a node on this cluster.
    fn options(&self) -> Vec<String> {
        self.options_with_redis(&self.redis.url)
    }

    /// The same, with the Redis URL written as `redis_url`.
    fn options_with_redis(&self, redis_url: &str) -> Vec<String> {
        let mut options = fixture::s3_options(&self.s3, "");
        options.extend(["--redis-url".to_owned(), redis_url.to_owned()]);
        options
    }

    /// The same, as environment variables for the server binary.
    fn env(&self) -> Vec<(String, String)> {
        let mut env = fixture::s3_env(&self.s3, "");
        env.push(("REDIS_URL".to_owned(), self.redis.url.clone()));
        env
    }

    async fn node(&self) -> TestServer {
        self.node_with(&[]).await
    }

    async fn node_with(&self, extra: &[&str]) -> TestServer {
        Self::start_node(self.options(), extra).await
    }

    async fn start_node(options: Vec<String>, extra: &[&str]) -> TestServer {
        let mut options: Vec<&str> = options.iter().map(String::as_str).collect();
        options.extend(extra);
        TestServer::start_with(tempfile::tempdir().unwrap(), &options).await
    }

    async fn three_nodes(&self) -> [TestServer; 3] {
        [self.node().await, self.node().await, self.node().await]
    }
}

/// The acknowledgement of `event` with `arg` on `client`, within [`PATIENCE`].
async fn ack(client: &mut RawClient, event: &str, arg: Value) -> Value {
    within(
        &format!("the ack of {event} {arg}"),
        client.call1(event, arg.clone()),
    )
    .await
    .unwrap_or_else(|e| panic!("{event} {arg}: {e}"))
}

/// Waits for `changed` on `client`, within [`PATIENCE`].
async fn changed(client: &mut RawClient) {
    let event = within("changed", client.next_event("changed"))
        .await
        .expect("the connection stays open");
    assert!(event.is_empty(), "changed has no argument");
}

/// A client on node A subscribed to a blob hears `changed` for a write made through node B
/// over Socket.IO and through node C over HTTP; an HTTP change stream and a `watch` on A hear
/// both too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and Ceph RGW (run by scripts/test)"]
async fn changes_reach_subscribers_on_every_node() {
    let cluster = Cluster::start().await;
    let nodes = [
        cluster.node().await,
        cluster.node().await,
        cluster.node().await,
    ];
    let r = hex_ref("c1");
    let mut watcher = nodes[0].subscribed("b", &r).await;
    let mut writer = nodes[1].subscribed("b", &r).await;
    // A `watch` on node A hears the writes of nodes B and C, with what changed.
    let mut watching = nodes[0].client("b").await;
    let watched = ack(&mut watching, "watch", json!({ "refs": [r] })).await;
    assert_eq!(watched, json!({ "watching": 1 }));
    let stream = reqwest::Client::new()
        .get(format!("http://{}/v1/blobs/{r}/events", nodes[0].addr))
        .bearer_auth(token("b"))
        .send()
        .await
        .unwrap();
    let mut events = stream.bytes_stream();

    let created = ack(&mut writer, "set", json!({ "data": "aGk=" })).await;
    assert_eq!(created, json!({ "success": true, "version": 1 }));
    changed(&mut watcher).await;

    let put = reqwest::Client::new()
        .put(format!("http://{}/v1/blobs/{r}", nodes[2].addr))
        .bearer_auth(token("b"))
        .header("if-match", "\"1\"")
        .body("there")
        .timeout(PATIENCE)
        .send()
        .await
        .unwrap();
    let status = put.status();
    assert_eq!(
        status,
        200,
        "an HTTP update of version 1 through node C: {}",
        put.text().await.unwrap_or_default()
    );
    changed(&mut watcher).await;
    changed(&mut writer).await;
    let got = ack(&mut watcher, "get", json!({})).await;
    assert_eq!(got["version"], 2, "node A reads what node C wrote");
    for version in [1, 2] {
        let heard = watching.next_event("changed");
        let heard = within(
            &format!("the watcher on node A hearing version {version}"),
            heard,
        )
        .await
        .unwrap();
        assert_eq!(heard, vec![json!({ "ref": r, "version": version })]);
    }

    let mut seen = String::new();
    while !(seen.contains("id: 1") && seen.contains("id: 2")) {
        let chunk = within("the change stream's events", events.next())
            .await
            .expect("the stream stays open")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Another bucket's socket on node A heard nothing: its next event is its own.
    let mut stranger = nodes[0].subscribed("other", &r).await;
    let mut other_writer = nodes[2].subscribed("other", &r).await;
    ack(&mut other_writer, "set", json!({ "data": "AA==" })).await;
    changed(&mut stranger).await;
    for node in nodes {
        node.stop().await;
    }
}

/// 16 clients spread over three nodes run compare-and-swap loops on one blob: every version is won exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and Ceph RGW (run by scripts/test)"]
async fn compare_and_swap_holds_across_nodes() {
    const CLIENTS: usize = 16;
    const WRITES_EACH: usize = 5;
    let cluster = Cluster::start().await;
    let nodes = [
        cluster.node().await,
        cluster.node().await,
        cluster.node().await,
    ];
    let r = hex_ref("c2");
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let mut client = nodes[i % 3].subscribed("b", &r).await;
        tasks.push(tokio::spawn(async move {
            // Losing is expected, losing for minutes is not: a bounded loop.
            let patience = 2 * PATIENCE;
            let deadline = tokio::time::Instant::now() + patience;
            let mut won = Vec::new();
            let mut known: Option<u64> = None;
            while won.len() < WRITES_EACH {
                let set = json!({ "data": "AA==", "version": known });
                let answer = ack(&mut client, "set", set).await;
                let version = answer["version"].as_u64();
                if answer["success"] == true {
                    won.push(version.unwrap());
                }
                known = version;
                let late = tokio::time::Instant::now() >= deadline;
                assert!(
                    !late,
                    "client {i} won {} of {WRITES_EACH} versions in {patience:?}; last: {answer}",
                    won.len()
                );
            }
            won
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a version was won twice");
    let expected: BTreeSet<u64> = (1..=(CLIENTS * WRITES_EACH) as u64).collect();
    assert_eq!(unique, expected);
    for node in nodes {
        node.stop().await;
    }
}

/// Killing one node with SIGKILL in the middle of writes loses no acknowledged write; the
/// other nodes keep serving, and a node started afterwards sees everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and Ceph RGW (run by scripts/test)"]
async fn a_killed_node_loses_no_acknowledged_write() {
    let cluster = Cluster::start().await;
    let env = cluster.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<ServerProcess> = dirs
        .iter()
        .map(|d| fixture::start_process(d.path(), &env))
        .collect();
    let r = hex_ref("c3");
    let mut writers = Vec::new();
    for node in &nodes {
        let mut client = RawClient::connect_token(node.addr, &token("b"))
            .await
            .unwrap();
        client.call("ref", &[json!(r)]).await.unwrap();
        writers.push(client);
    }
    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut known: Option<u64> = None;
    let mut victim = Some(nodes.into_iter());
    let mut survivors = Vec::new();
    for round in 0..60 {
        if round == 30 {
            // SIGKILL the first node mid-run; its client's writes stop there.
            let mut all = victim.take().unwrap();
            all.next().unwrap().kill();
            survivors.extend(all);
            writers.remove(0);
        }
        let i = round % writers.len();
        let data = format!("{round:04}");
        let set = writers[i].call1("set", json!({ "data": data, "version": known }));
        match within(&format!("the ack of write {round}"), set).await {
            Ok(ack) => {
                if ack["success"] == true {
                    acked.push((ack["version"].as_u64().unwrap(), data));
                }
                known = ack["version"].as_u64();
            }
            Err(e) => panic!("a surviving node stopped serving: {e}"),
        }
    }
    let late_dir = tempfile::tempdir().unwrap();
    let late = fixture::start_process(late_dir.path(), &env);
    let mut reader = RawClient::connect_token(late.addr, &token("b"))
        .await
        .unwrap();
    reader.call("ref", &[json!(r)]).await.unwrap();
    let current = ack(&mut reader, "get", json!({})).await;
    // One writer at a time, each naming the version it last heard of: every write is won.
    assert_eq!(
        acked.len(),
        60,
        "acknowledged writes; the last: {:?}",
        acked.last()
    );
    let (last_version, last_data) = acked.last().unwrap().clone();
    assert_eq!(
        current["version"].as_u64(),
        Some(last_version),
        "a node started later sees the last write"
    );
    assert_eq!(current["data"], last_data);
    let versions: BTreeSet<u64> = acked.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        versions.len(),
        acked.len(),
        "each acknowledged version once"
    );
    drop(survivors);
}

/// Blob Service uploads made through three nodes at once reach the metadata stream of every
/// node in one strictly increasing `created` order, each once, and `blob-metadata` reaches a
/// socket on any node; each upload reads through another node, every node lists them all, and
/// one deleted through one node is gone on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and Ceph RGW (run by scripts/test)"]
async fn blob_service_records_are_one_sequence_on_every_node() {
    const EACH: usize = 6;
    let cluster = Cluster::start().await;
    let nodes = cluster.three_nodes().await;
    let apis: Vec<Api> = nodes.iter().map(|node| Api::new(node, "b")).collect();
    let mut streams = Vec::new();
    for api in &apis {
        let response = api.subscribe(&subscription(None)).await;
        assert_eq!(response.status(), StatusCode::OK);
        streams.push((response.bytes_stream(), String::new()));
    }
    let mut socket = nodes[2].client("b").await;

    let uploads = apis.iter().enumerate().map(|(i, api)| async move {
        let mut handles = Vec::new();
        for k in 0..EACH {
            let bytes = format!("node {i} upload {k}");
            let handle = api
                .upload(bytes.as_bytes(), json!({ "semantics": "s" }))
                .await;
            handles.push((handle, bytes));
        }
        handles
    });
    let uploaded = within(
        "18 uploads through three nodes",
        futures_util::future::join_all(uploads),
    )
    .await;
    let all: BTreeSet<String> = uploaded.iter().flatten().map(|(h, _)| h.clone()).collect();
    assert_eq!(all.len(), 3 * EACH);

    for (node, (stream, buffer)) in streams.iter_mut().enumerate() {
        let (mut last, mut seen) = (0, BTreeSet::new());
        for _ in 0..all.len() {
            let record = next_line(stream, buffer).await;
            let created = record["created"].as_u64().unwrap();
            assert!(created > last, "node {node}: {created} after {last}");
            last = created;
            seen.insert(record["handle"].as_str().unwrap().to_owned());
        }
        assert_eq!(seen, all, "node {node} streams every record once");
    }
    for _ in 0..all.len() {
        within("blob-metadata", socket.next_event("blob-metadata"))
            .await
            .unwrap();
    }

    for (i, handles) in uploaded.iter().enumerate() {
        let reader = &apis[(i + 1) % 3];
        for (handle, bytes) in handles {
            let response = reader.get(&format!("/blobs/{handle}")).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.bytes().await.unwrap(), bytes.as_bytes());
        }
    }
    for (node, api) in apis.iter().enumerate() {
        let page = api.list("limit=100").await;
        let listed: BTreeSet<String> = page["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["handle"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(listed, all, "node {node} lists every record");
    }

    let victim = &uploaded[1][0].0;
    let path = format!("/blobs/{victim}");
    assert_eq!(
        within("a delete", apis[0].status(Method::DELETE, &path)).await,
        StatusCode::NO_CONTENT
    );
    for api in &apis[1..] {
        assert_eq!(api.status(Method::GET, &path).await, StatusCode::NOT_FOUND);
    }
    for node in nodes {
        node.stop().await;
    }
}

/// On the object store, direct transfer URLs are the store's own presigned URLs: an upload
/// goes straight to the store and becomes content only once `blob-uploaded` finds its hash
/// right; a redirect downloads straight from the store, through any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and Ceph RGW (run by scripts/test)"]
async fn direct_urls_are_the_object_stores_own() {
    let cluster = Cluster::start().await;
    let options = ["--content-redirect-bytes", "16"];
    let nodes = [
        cluster.node_with(&options).await,
        cluster.node_with(&options).await,
    ];
    let http = reqwest::Client::new();
    let bytes = vec![7u8; 5000];
    let hash = ContentHash::of(&bytes).to_string();
    let mut client = nodes[0].client("b").await;
    let granted = ack(
        &mut client,
        "request-upload",
        json!({ "hash": hash, "size": bytes.len() }),
    )
    .await;
    let url = granted["url"].as_str().unwrap();
    assert!(url.starts_with(&cluster.s3.endpoint), "{url}");
    let put = http.put(url).body(bytes.clone()).send().await.unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let confirmed = ack(&mut client, "blob-uploaded", json!({ "hash": hash })).await;
    assert_eq!(confirmed, json!({ "hash": hash }));

    let mut reader = nodes[1].client("b").await;
    reader
        .emit(
            "blob-request",
            &[json!({ "hashes": [hash], "redirect": true })],
        )
        .await
        .unwrap();
    let redirect = within("blob-redirect", reader.next_event("blob-redirect"))
        .await
        .unwrap();
    let url = redirect[0]["redirects"][0]["url"].as_str().unwrap();
    assert!(url.starts_with(&cluster.s3.endpoint), "{url}");
    let fetched = http.get(url).send().await.unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert_eq!(fetched.bytes().await.unwrap(), bytes);
    let through_node = http
        .get(format!("http://{}/blobs/{hash}", nodes[1].addr))
        .bearer_auth(token("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(through_node.bytes().await.unwrap(), bytes);

    // A client that puts other bytes than it named gets them refused, and nothing is stored.
    let named = ContentHash::of(b"what was promised").to_string();
    let granted = ack(
        &mut client,
        "request-upload",
        json!({ "hash": named, "size": 17 }),
    )
    .await;
    let url = granted["url"].as_str().unwrap();
    http.put(url).body("something else").send().await.unwrap();
    let rejected = ack(&mut client, "blob-uploaded", json!({ "hash": named })).await;
    assert!(rejected["reason"].is_string(), "{rejected}");
    let missing = http
        .get(format!("http://{}/blobs/{named}", nodes[0].addr))
        .bearer_auth(token("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    for node in nodes {
        node.stop().await;
    }
}

/// Redis restarting empty (every node loses its connections and Redis its state) loses no
/// Blob Service record: the nodes connect and subscribe again, uploads go on, a metadata
/// stream opened before the outage delivers the records made after it, each once, in order,
/// and `changed` crosses nodes through the Socket.IO adapter again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and Ceph RGW (run by scripts/test)"]
async fn everything_flows_again_after_redis_restarts() {
    let mut cluster = Cluster::start().await;
    let nodes = [cluster.node().await, cluster.node().await];
    let (watcher, uploader) = (Api::new(&nodes[0], "b"), Api::new(&nodes[1], "b"));
    let response = watcher.subscribe(&subscription(None)).await;
    let (mut stream, mut buffer) = (response.bytes_stream(), String::new());
    let before = within(
        "an upload",
        uploader.upload(b"before", json!({ "semantics": "s" })),
    )
    .await;
    let first = next_line(&mut stream, &mut buffer).await;
    assert_eq!(first["handle"], before);
    let r = hex_ref("d1");
    let mut watcher_socket = nodes[0].subscribed("b", &r).await;
    let mut writer_socket = nodes[1].subscribed("b", &r).await;
    ack(&mut writer_socket, "set", json!({ "data": "AA==" })).await;
    changed(&mut watcher_socket).await;

    cluster.redis.restart();
    // A request that meets a connection Redis dropped fails (500); the next one reconnects.
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut after = Vec::new();
    while after.len() < 3 {
        let bytes = format!("after {}", after.len());
        let upload = uploader.upload_raw(bytes.as_bytes(), json!({ "semantics": "s" }));
        let response = within("an upload after the restart", upload).await;
        match response.status() {
            StatusCode::CREATED => {
                let body: Value = response.json().await.unwrap();
                after.push(body["handle"].as_str().unwrap().to_owned());
            }
            status => {
                assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
                assert!(
                    std::time::Instant::now() < deadline,
                    "uploads still failed {PATIENCE:?} after Redis restarted"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mut last = first["created"].as_u64().unwrap();
    for handle in &after {
        let record = next_line(&mut stream, &mut buffer).await;
        assert_eq!(&record["handle"], handle, "each record once, in order");
        let created = record["created"].as_u64().unwrap();
        assert!(created > last, "{created} after {last}");
        last = created;
    }
    let listed = watcher.list("limit=10").await;
    assert_eq!(listed["blobs"].as_array().unwrap().len(), 4);

    // Writes made while the adapter is still subscribing again may not be announced; one made
    // once it is back is.
    let mut version = 1;
    fixture::eventually("changed crossing the nodes again", async || {
        let set = json!({ "data": "AQ==", "version": version });
        let answer = ack(&mut writer_socket, "set", set).await;
        version = answer["version"].as_u64().unwrap();
        // How long to listen for this write's change before writing again.
        let heard = watcher_socket.next_event("changed");
        tokio::time::timeout(Duration::from_millis(500), heard)
            .await
            .is_ok()
    })
    .await;
    for node in nodes {
        node.stop().await;
    }
}

/// A writer never hears its own `changed` on any node, while the other sockets of the blob, on
/// its node and on others, do; and a node takes a Redis URL that asks for RESP3 as
/// socketioxide-redis's examples write it (`?protocol=RESP3`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and Ceph RGW (run by scripts/test)"]
async fn the_writer_skips_its_own_change_on_every_node() {
    let cluster = Cluster::start().await;
    let a = cluster.node().await;
    let resp3 = cluster.options_with_redis(&format!("{}/?protocol=RESP3", cluster.redis.url));
    let b = Cluster::start_node(resp3, &[]).await;
    let r = hex_ref("5e");
    let mut on_a = a.subscribed("b", &r).await;
    let mut beside = b.subscribed("b", &r).await;
    let mut writer = b.subscribed("b", &r).await;
    let created = ack(&mut writer, "set", json!({ "data": "aGk=" })).await;
    assert_eq!(created, json!({ "success": true, "version": 1 }));
    changed(&mut on_a).await;
    // The socket beside the writer hears the same broadcast on the same node; once it has,
    // a round trip of the writer's own shows whether it was sent one too.
    changed(&mut beside).await;
    ack(&mut writer, "now", Value::Null).await;
    assert_eq!(
        writer.pending_events("changed"),
        0,
        "the writer heard itself"
    );
}
