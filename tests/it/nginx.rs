//! `deploy/nginx.conf` (the README's nginx block) through a real nginx in front of the server:
//! both Socket.IO transports, a 1 MiB `set` over long-polling, the SSE change stream and the
//! NDJSON metadata stream arriving unbuffered, 40 MiB uploads on `/blobs/` and `/api/`, and the
//! writer's address taken from `X-Real-IP`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::fixture::{PATIENCE, TestServer, hex_ref, token};
use blobs_testkit::RawClient;
use serde_json::{Value, json};

fn deployed_conf() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf"))
        .unwrap()
}

/// The README shows the file as it is.
#[test]
fn the_readme_shows_the_deployed_file() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("```nginx\n").expect("an nginx block") + "```nginx\n".len();
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    let without_header: String = deployed_conf()
        .lines()
        .skip_while(|line| line.starts_with('#'))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_eq!(without_header, block);
}

/// nginx running `deploy/nginx.conf`, with plain HTTP on a free loopback port instead of TLS on
/// 443 and the test server as the upstream. Stopped on drop.
struct Nginx {
    addr: SocketAddr,
    /// The master process; it starts the worker.
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstream: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // nginx cannot be handed a socket: take a free port and release it for nginx.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let original = deployed_conf();
        let server = original
            .replace("listen 443 ssl;", &format!("listen {addr};"))
            .replace("server 127.0.0.1:3000;", &format!("server {upstream};"));
        assert_eq!(
            server.matches(&addr.to_string()).count()
                + server.matches(&upstream.to_string()).count(),
            2,
            "the listener and the upstream were replaced"
        );
        let d = dir.path().display();
        let main = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{}}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body;\n \
             proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n \
             uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{server}\n}}\n"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, main).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .spawn()
            .expect("nginx runs (the test command installs it when missing)");
        let nginx = Self { addr, child, dir };
        // Bounded wait for nginx to listen (it reads its configuration first).
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < PATIENCE,
                "nginx did not listen within {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // `nginx -s stop` has the master stop its worker, then exit; a SIGKILL of the master
        // alone would leave the worker running, orphaned, on the port.
        let stopped = Command::new("nginx")
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(self.dir.path().join("nginx.conf"))
            .args(["-s", "stop"])
            .stderr(Stdio::null())
            .status();
        if !matches!(stopped, Ok(status) if status.success()) {
            self.child.kill().ok();
        }
        self.child.wait().ok();
    }
}

/// One long-polling Engine.IO session through nginx, spoken by hand.
struct Polling {
    http: reqwest::Client,
    url: String,
}

impl Polling {
    async fn open(nginx: &Nginx, token: &str) -> Self {
        let http = reqwest::Client::new();
        let base = nginx.url("/socket.io/?EIO=4&transport=polling");
        let open = http.get(&base).send().await.unwrap().text().await.unwrap();
        let handshake: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
        let url = format!("{base}&sid={}", handshake["sid"].as_str().unwrap());
        let polling = Self { http, url };
        polling
            .send(&format!("40{}", json!({ "token": token })))
            .await;
        assert!(polling.receive("40").await.starts_with("40{"));
        polling
    }

    async fn send(&self, packet: &str) {
        let response = self
            .http
            .post(&self.url)
            .body(packet.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    /// The next packet that starts with `prefix` (earlier ones, pings, are skipped).
    async fn receive(&self, prefix: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(
                Instant::now() < deadline,
                "no packet {prefix} within {PATIENCE:?}"
            );
            let payload = self.http.get(&self.url).send().await.unwrap();
            let payload = payload.text().await.unwrap();
            if let Some(packet) = payload.split('\u{1e}').find(|p| p.starts_with(prefix)) {
                return packet.to_owned();
            }
        }
    }
}

/// Reads `response` until its body so far contains `needle`, within [`PATIENCE`]; the stream
/// stays open, so what arrives came through unbuffered.
async fn read_until(response: &mut reqwest::Response, needle: &str) -> String {
    let mut seen = String::new();
    tokio::time::timeout(PATIENCE, async {
        while !seen.contains(needle) {
            let chunk = response.chunk().await.unwrap().expect("stream still open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{needle:?} did not arrive; got {seen:?}"));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx (run by scripts/test)"]
async fn the_deployed_nginx_config_carries_every_transport() {
    let server = TestServer::start_files_current().await;
    let nginx = Nginx::start(server.addr);
    let token = token("proxied");
    let http = reqwest::Client::new();

    // WebSocket, upgraded through nginx.
    let mut socket = RawClient::connect_token(nginx.addr, &token).await.unwrap();
    socket.call("ref", &[json!(hex_ref("a1"))]).await.unwrap();
    let ack = socket
        .call1("set", json!({ "data": "aGk=" }))
        .await
        .unwrap();
    assert_eq!(ack, json!({ "success": true, "version": 1 }));

    // Long-polling, with a 1 MiB `set` in one POST.
    let polling = Polling::open(&nginx, &token).await;
    polling
        .send(&format!("420{}", json!(["ref", hex_ref("a2")])))
        .await;
    polling.receive("430").await;
    let data = "QUJD".repeat(256 * 1024);
    polling
        .send(&format!("421{}", json!(["set", { "data": data }])))
        .await;
    assert_eq!(
        polling.receive("431").await,
        r#"431[{"success":true,"version":1}]"#
    );

    // The SSE change stream, then a write from another address: the change arrives while the
    // stream is open, and the writer's address is the one nginx saw.
    let r = hex_ref("a3");
    let mut events = http
        .get(nginx.url(&format!("/v1/blobs/{r}/events")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let elsewhere = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .build()
        .unwrap();
    let put = elsewhere
        .put(nginx.url(&format!("/v1/blobs/{r}")))
        .bearer_auth(&token)
        .body("from elsewhere")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    read_until(&mut events, r#"{"version":1}"#).await;
    let file: Value =
        serde_json::from_slice(&std::fs::read(server.blob_path("proxied", &r)).unwrap()).unwrap();
    assert_eq!(file["ip"], "127.0.0.2", "X-Real-IP from nginx");

    // 40 MiB of content on /blobs/.
    let big = vec![0x5a_u8; 40 * 1024 * 1024];
    let hash = blake3::hash(&big).to_hex().to_string();
    let stored = http
        .put(nginx.url(&format!("/blobs/{hash}")))
        .bearer_auth(&token)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert!(stored.status().is_success(), "{}", stored.status());

    // The NDJSON metadata stream, then a 40 MiB Blob Service upload on /api/: its record
    // arrives while the stream is open.
    let mut metadata = http
        .post(nginx.url("/api/v1/events/subscribe"))
        .bearer_auth(&token)
        .json(&json!({ "subscriptions": [{}] }))
        .send()
        .await
        .unwrap();
    assert_eq!(metadata.status(), 200);
    let form = reqwest::multipart::Form::new()
        .part("blob", reqwest::multipart::Part::bytes(big))
        .text("metadata", json!({ "semantics": "proxied" }).to_string());
    let uploaded = http
        .post(nginx.url("/api/v1/blobs"))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert!(uploaded.status().is_success(), "{}", uploaded.status());
    let record = read_until(&mut metadata, "\"proxied\"").await;
    assert!(record.contains(&(40 * 1024 * 1024).to_string()), "{record}");

    // The inspector page, with the server's security policy, and the content listing it
    // reads (on `/blobs/`).
    let page = http.get(nginx.url("/inspect/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let listed = http
        .get(nginx.url("/blobs/?limit=10"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);

    drop(nginx);
    server.stop().await;
}
