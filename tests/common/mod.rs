//! The one helper every integration test uses: a real server on `127.0.0.1:0` with a temp
//! storage directory, stopped gracefully by the test.

#![allow(dead_code)] // each test binary uses a different part of this helper

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use blobs::auth::Keys;
use blobs::client::RawClient;
use blobs::config::Config;
use blobs::names::Bucket;
use clap::Parser;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod service_api;

pub const SECRET: &str = "integration-test-secret";

pub struct TestServer {
    pub addr: SocketAddr,
    storage: TempDir,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), blobs::error::StartError>>,
}

impl TestServer {
    /// Starts a server on a new, empty storage directory.
    pub async fn start() -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir")).await
    }

    /// Starts a server on an existing storage directory (a restart, or a store prepared by the
    /// test).
    pub async fn start_in(storage: TempDir) -> Self {
        Self::start_with(storage, &[]).await
    }

    /// Starts a server with extra command-line options, e.g. `["--max-connections", "2"]`.
    pub async fn start_with(storage: TempDir, options: &[&str]) -> Self {
        // `BLOBS_TEST_LOG=debug` shows the server's log while debugging a test.
        if let Ok(filter) = std::env::var("BLOBS_TEST_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let mut args = vec![
            "blobs",
            "--token-secret",
            SECRET,
            "--storage",
            storage.path().to_str().expect("utf-8 temp path"),
        ];
        args.extend_from_slice(options);
        let config = Config::parse_from(args);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(blobs::run(listener, config, async {
            stopped.await.ok();
        }));
        Self {
            addr,
            storage,
            stop,
            task,
        }
    }

    pub fn storage(&self) -> &Path {
        self.storage.path()
    }

    /// The file of one blob, in the original's layout.
    pub fn blob_path(&self, bucket: &str, r: &str) -> PathBuf {
        self.storage()
            .join(bucket)
            .join(&r[..2])
            .join(format!("{r}.json"))
    }

    /// Shuts the server down gracefully and hands back its storage for a restart.
    pub async fn stop(self) -> TempDir {
        self.stop.send(()).ok();
        self.task
            .await
            .expect("server task")
            .expect("server ran without error");
        self.storage
    }

    /// A connected raw client of `bucket`.
    pub async fn client(&self, bucket: &str) -> RawClient {
        RawClient::connect_token(self.addr, &token(bucket))
            .await
            .expect("client connects")
    }

    /// The `connect_error` message of a handshake with `auth`, which must be refused.
    pub async fn refusal(&self, auth: serde_json::Value) -> String {
        match RawClient::connect(self.addr, auth).await {
            Err(blobs::client::ClientError::Refused(message)) => message,
            Err(other) => panic!("expected a connect error, got {other}"),
            Ok(_) => panic!("the connection should have been refused"),
        }
    }

    /// A raw client of `bucket` subscribed to `r`.
    pub async fn subscribed(&self, bucket: &str, r: &str) -> RawClient {
        let mut client = self.client(bucket).await;
        let ack = client
            .call_raw("ref", &[serde_json::json!(r)])
            .await
            .expect("ref ack");
        assert!(
            ack.starts_with('3') && ack.ends_with("[]"),
            "ref is acknowledged with no argument: {ack}"
        );
        client
    }
}

/// A token for `bucket` signed with the test secret.
pub fn token(bucket: &str) -> String {
    Keys::new(SECRET).mint(&Bucket::parse(bucket).expect("valid bucket"))
}

/// A read-only token for `bucket`.
pub fn read_only_token(bucket: &str) -> String {
    let options = blobs::auth::MintOptions {
        expires_in: None,
        read_only: true,
    };
    Keys::new(SECRET).mint_with(&Bucket::parse(bucket).expect("valid bucket"), &options)
}

/// A numeric setting of a long-running test from the environment (e.g. its cycle count).
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A ref made of one repeated hex digit pair, e.g. `hex_ref("ab")`.
pub fn hex_ref(pair: &str) -> String {
    pair.repeat(32)
}

/// The server binary run as a child process, for tests that kill it, signal it or read its
/// memory and file descriptors.
pub struct ServerProcess {
    pub addr: SocketAddr,
    /// `None` once reaped; a process still running when the test ends (or panics) is killed.
    child: Option<std::process::Child>,
}

impl ServerProcess {
    /// Starts `blobs` on `127.0.0.1:0` with `storage`, plus extra environment variables, and
    /// waits until it listens.
    pub fn start(storage: &Path, env: &[(&str, &str)]) -> Self {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut command = Command::new(env!("CARGO_BIN_EXE_blobs"));
        command
            .current_dir(storage)
            .env("TOKEN_SECRET", SECRET)
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("STORAGE", storage)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("server binary starts");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the server prints its address before exiting")
                .expect("readable log");
            if let Some(addr) = blobs::listening_addr(&line) {
                break addr;
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            addr,
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("not reaped").id()
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("not reaped");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait(mut self) -> Option<i32> {
        let mut child = self.child.take().expect("not reaped");
        tokio::task::spawn_blocking(move || child.wait().expect("wait").code())
            .await
            .expect("wait task")
    }

    /// Resident memory in bytes.
    pub fn rss_bytes(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:") * 1024
    }

    /// Peak resident memory in bytes since the process started (`VmHWM`).
    pub fn peak_rss_bytes(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:") * 1024
    }

    /// Open file descriptors.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }
}

/// A `kB` field of `/proc/<pid>/status`.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// Where a server under test keeps its data: the suites that test storage run once per
/// backend.
pub enum Backend {
    Files,
    Object(S3Server),
}

/// Object names of the object backend start with this, as with `S3_PREFIX`.
pub const BACKEND_PREFIX: &str = "data/";

impl Backend {
    /// Every backend, each fresh.
    pub async fn all() -> Vec<Backend> {
        vec![Backend::Files, Backend::Object(S3Server::start().await)]
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Files => "files",
            Backend::Object(_) => "object store",
        }
    }

    /// Starts a server on this backend (`storage` is its directory either way).
    pub async fn start(&self, storage: TempDir) -> TestServer {
        let options = match self {
            Backend::Files => Vec::new(),
            Backend::Object(s3) => s3.options(BACKEND_PREFIX),
        };
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        TestServer::start_with(storage, &options).await
    }

    /// The versioned store of this backend, kept under `storage` or the object prefix.
    pub fn versioned(&self, storage: &Path) -> Arc<dyn blobs::store::Store> {
        match self {
            Backend::Files => Arc::new(blobs::store::FsStore::open(storage).unwrap()),
            Backend::Object(s3) => {
                Arc::new(blobs::store::ObjectBlobs::new(s3.client(), BACKEND_PREFIX))
            }
        }
    }

    /// The content store of this backend (`grace`: the object store's claim grace).
    pub fn content(
        &self,
        storage: &Path,
        grace: Duration,
    ) -> Arc<dyn blobs::content::ContentStore> {
        match self {
            Backend::Files => Arc::new(blobs::content::FsContent::open(storage).unwrap()),
            Backend::Object(s3) => Arc::new(blobs::content::ObjectContent::new(
                s3.client(),
                BACKEND_PREFIX,
                grace,
            )),
        }
    }

    /// The Blob Service's record store of this backend.
    pub fn records(&self, storage: &Path) -> Arc<dyn blobs::blob_service::RecordStore> {
        match self {
            Backend::Files => Arc::new(blobs::blob_service::RecordFiles::new(storage)),
            Backend::Object(s3) => Arc::new(blobs::blob_service::RecordObjects::new(
                s3.client(),
                BACKEND_PREFIX,
            )),
        }
    }

    /// Writes `bytes` at `name` (`<bucket>/<shard>/<ref>.json`) behind the server's back.
    pub async fn write(&self, storage: &Path, name: &str, bytes: &[u8]) {
        match self {
            Backend::Files => {
                let path = storage.join(name);
                std::fs::create_dir_all(path.parent().expect("a parent")).unwrap();
                std::fs::write(path, bytes).unwrap();
            }
            Backend::Object(s3) => {
                let path = object_store::path::Path::from(format!("{BACKEND_PREFIX}{name}"));
                let payload = bytes.to_vec().into();
                object_store::ObjectStoreExt::put(&*s3.client(), &path, payload)
                    .await
                    .unwrap();
            }
        }
    }

    /// Reads what is stored at `name`, as the server left it.
    pub async fn read(&self, storage: &Path, name: &str) -> Vec<u8> {
        match self {
            Backend::Files => std::fs::read(storage.join(name)).unwrap(),
            Backend::Object(s3) => {
                let path = object_store::path::Path::from(format!("{BACKEND_PREFIX}{name}"));
                let found = object_store::ObjectStoreExt::get(&*s3.client(), &path)
                    .await
                    .unwrap();
                found.bytes().await.unwrap().to_vec()
            }
        }
    }
}

/// The name of a blob's JSON below the storage root or the object prefix.
pub fn blob_name(bucket: &str, r: &str) -> String {
    format!("{bucket}/{}/{r}.json", &r[..2])
}

/// An S3-compatible server for the tests: moto's S3 server from PyPI (installed by
/// `scripts/test`), run by `tests/interop/s3_server.py` so that it decides one request at a
/// time (moto's own conditional PUT is not atomic across its threads; S3's is), on a free
/// loopback port, with one empty bucket; killed when dropped.
pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    child: std::process::Child,
}

impl S3Server {
    /// Starts moto, creates the bucket, and checks that a stale `If-Match` really gets 412, so
    /// a server that ignores the header cannot make the tests pass.
    pub async fn start() -> Self {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        let program = interop.join(".venv/bin/python");
        let mut child = Command::new(&program)
            .arg(interop.join("s3_server.py"))
            .args(["127.0.0.1", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} starts (run scripts/test to install it): {e}",
                    program.display()
                )
            });
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let endpoint = loop {
            let line = lines
                .next()
                .expect("moto prints its address before exiting")
                .expect("readable log");
            if let Some(at) = line.find("Running on http://") {
                break line[at + "Running on ".len()..].trim().to_owned();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        let bucket = "blobs-test".to_owned();
        let http = reqwest::Client::new();
        let created = http
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .await
            .expect("moto answers");
        assert!(
            created.status().is_success(),
            "bucket created: {}",
            created.status()
        );
        let server = Self {
            endpoint,
            bucket,
            child,
        };
        // Through the signed client, as the store talks to it: a stale ETag must be refused.
        use object_store::{ObjectStoreExt, PutMode, PutPayload, UpdateVersion};
        let client = server.client();
        let check = object_store::path::Path::from("if-match-check");
        client
            .put(&check, PutPayload::from_static(b"one"))
            .await
            .expect("a put");
        let stale = UpdateVersion {
            e_tag: Some("\"0123456789abcdef0123456789abcdef\"".to_owned()),
            version: None,
        };
        let refused = client
            .put_opts(
                &check,
                PutPayload::from_static(b"two"),
                PutMode::Update(stale).into(),
            )
            .await;
        assert!(
            matches!(refused, Err(object_store::Error::Precondition { .. })),
            "the S3 server must answer a stale If-Match with 412, got {refused:?}"
        );
        client.delete(&check).await.expect("a delete");
        server
    }

    /// The server options that put a node's storage on this bucket (under `prefix`).
    pub fn options(&self, prefix: &str) -> Vec<String> {
        [
            "--store",
            "s3",
            "--s3-endpoint",
            &self.endpoint,
            "--s3-bucket",
            &self.bucket,
            "--s3-access-key-id",
            "test",
            "--s3-secret-access-key",
            "test",
            "--s3-prefix",
            prefix,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// An object-store client of the bucket.
    pub fn client(&self) -> std::sync::Arc<dyn object_store::ObjectStore> {
        std::sync::Arc::new(
            blobs::store::s3_client(&self.endpoint, &self.bucket, "us-east-1", "test", "test")
                .expect("S3 client"),
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A Redis server for the several-node tests (Debian's `redis-server`, installed by
/// `scripts/test`) on a free loopback port, without persistence; killed when dropped.
pub struct RedisServer {
    pub url: String,
    child: std::process::Child,
}

impl RedisServer {
    pub fn start() -> Self {
        // Redis takes no port 0: take a free port from the kernel and hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Self {
            url: format!("redis://127.0.0.1:{port}"),
            child: Self::spawn(port),
        }
    }

    /// Kills Redis and starts a new, empty one on the same port: the nodes lose their
    /// connections and what Redis held.
    pub fn restart(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        let port = self.url.rsplit(':').next().and_then(|p| p.parse().ok());
        self.child = Self::spawn(port.expect("the URL names the port"));
    }

    fn spawn(port: u16) -> std::process::Child {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-server starts (run scripts/test to install it)");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        loop {
            let line = lines
                .next()
                .expect("redis-server says it is ready before exiting")
                .expect("readable log");
            if line.contains("Ready to accept connections") {
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        child
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}
