//! Several Blobs nodes on one Redis and one S3-compatible store (both real servers on
//! loopback, started here): notifications cross nodes, compare-and-swap holds across nodes,
//! a node killed with SIGKILL loses no acknowledged write, and a node started later sees
//! everything.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use blobs::client::RawClient;
use common::{RedisServer, S3Server, ServerProcess, TestServer, hex_ref, token};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// What the nodes share.
struct Cluster {
    redis: RedisServer,
    s3: S3Server,
}

impl Cluster {
    async fn start() -> Self {
        Self {
            redis: RedisServer::start(),
            s3: S3Server::start().await,
        }
    }

    /// The options that put a node on this cluster.
    fn options(&self) -> Vec<String> {
        [
            "--store",
            "s3",
            "--s3-endpoint",
            &self.s3.endpoint,
            "--s3-bucket",
            &self.s3.bucket,
            "--s3-access-key-id",
            "test",
            "--s3-secret-access-key",
            "test",
            "--redis-url",
            &self.redis.url,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// The same, as environment variables for the server binary.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("STORE", "s3".to_owned()),
            ("S3_ENDPOINT", self.s3.endpoint.clone()),
            ("S3_BUCKET", self.s3.bucket.clone()),
            ("S3_ACCESS_KEY_ID", "test".to_owned()),
            ("S3_SECRET_ACCESS_KEY", "test".to_owned()),
            ("REDIS_URL", self.redis.url.clone()),
        ]
    }

    async fn node(&self) -> TestServer {
        let options = self.options();
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        TestServer::start_with(tempfile::tempdir().unwrap(), &options).await
    }
}

/// Waits for `changed` on `client`, within a bound.
async fn changed(client: &mut RawClient) {
    let event = tokio::time::timeout(Duration::from_secs(10), client.next_event("changed"))
        .await
        .expect("changed in time")
        .expect("the connection stays open");
    assert!(event.is_empty(), "changed has no argument");
}

/// A client on node A subscribed to a blob hears `changed` for a write made through node B
/// over Socket.IO and through node C over HTTP; an HTTP change stream on A hears both too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    let stream = reqwest::Client::new()
        .get(format!("http://{}/v1/blobs/{r}/events", nodes[0].addr))
        .bearer_auth(token("b"))
        .send()
        .await
        .unwrap();
    let mut events = stream.bytes_stream();

    let ack = writer
        .call1("set", json!({ "data": "aGk=" }))
        .await
        .unwrap();
    assert_eq!(ack, json!({ "success": true, "version": 1 }));
    changed(&mut watcher).await;

    let put = reqwest::Client::new()
        .put(format!("http://{}/v1/blobs/{r}", nodes[2].addr))
        .bearer_auth(token("b"))
        .header("if-match", "\"1\"")
        .body("there")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    changed(&mut watcher).await;
    changed(&mut writer).await;
    let got = watcher.call1("get", json!({})).await.unwrap();
    assert_eq!(got["version"], 2, "node A reads what node C wrote");

    let mut seen = String::new();
    while !(seen.contains("id: 1") && seen.contains("id: 2")) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("change stream events in time")
            .expect("the stream stays open")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Another bucket's socket on node A heard nothing: its next event is its own.
    let mut stranger = nodes[0].subscribed("other", &r).await;
    let mut other_writer = nodes[2].subscribed("other", &r).await;
    other_writer
        .call1("set", json!({ "data": "AA==" }))
        .await
        .unwrap();
    changed(&mut stranger).await;
    for node in nodes {
        node.stop().await;
    }
}

/// 16 clients spread over three nodes CAS-loop on one blob: every version is won exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
            let mut won = Vec::new();
            let mut known: Option<u64> = None;
            while won.len() < WRITES_EACH {
                let ack = client
                    .call1("set", json!({ "data": "AA==", "version": known }))
                    .await
                    .unwrap();
                let version = ack["version"].as_u64();
                if ack["success"] == true {
                    won.push(version.unwrap());
                }
                known = version;
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
async fn a_killed_node_loses_no_acknowledged_write() {
    let cluster = Cluster::start().await;
    let env = cluster.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<ServerProcess> = dirs
        .iter()
        .map(|d| ServerProcess::start(d.path(), &env))
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
        match writers[i]
            .call1("set", json!({ "data": data, "version": known }))
            .await
        {
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
    let late = ServerProcess::start(late_dir.path(), &env);
    let mut reader = RawClient::connect_token(late.addr, &token("b"))
        .await
        .unwrap();
    reader.call("ref", &[json!(r)]).await.unwrap();
    let current: Value = reader.call1("get", json!({})).await.unwrap();
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
