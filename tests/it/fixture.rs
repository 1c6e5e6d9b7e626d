//! What every integration test shares: the real server on `127.0.0.1:0` with a temp storage
//! directory, stopped gracefully by the test ([`TestServer`]) or run as a child process
//! ([`start_process`]); tokens; bounded waits that say what they waited for ([`PATIENCE`],
//! [`within`], [`eventually`]); and the stores the storage suites run on ([`TestStore`],
//! [`on_every_store!`]) with the servers of the suites that need more than Rust ([`s3`],
//! [`rgw`], [`redis`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use blobs::auth::Keys;
use blobs::config::Config;
use blobs::names::Bucket;
use blobs::storage::objects::Objects;
pub use blobs_testkit::{PATIENCE, RawClient, RedisServer, S3Server, ServerProcess};
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
    task: JoinHandle<Result<(), blobs::StartError>>,
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

    /// Starts a server on a new storage directory whose every write replaces its blob file
    /// before it is acknowledged (`UNWRITTEN_BYTES=0`), for tests that read what a write left
    /// in its file (the writer's address, which no client sees).
    pub async fn start_files_current() -> Self {
        let storage = tempfile::tempdir().expect("temp dir");
        Self::start_with(storage, &["--unwritten-bytes", "0"]).await
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
        let run = blobs::run(listener, config, async {
            stopped.await.ok();
        });
        let task = tokio::spawn(async move {
            let ran = run.await;
            // Said at once: a server that failed to start shows only as refused or reset
            // connections, long before `stop` would report this.
            if let Err(e) = &ran {
                eprintln!("the test server stopped: {e}");
            }
            ran
        });
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

    /// Entries of the storage root a client made: everything but the store's journal and the
    /// server's lock.
    pub fn entries_on_disk(&self) -> usize {
        std::fs::read_dir(self.storage())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name != blobs::storage::store::JOURNAL_DIR
                    && name != blobs::storage::store::LOCK_FILE
            })
            .count()
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
            Err(blobs_testkit::ClientError::Refused(message)) => message,
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

/// The output of `future`, or a failure saying that `what` did not come within [`PATIENCE`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {PATIENCE:?}"))
}

/// Checks `done` every few milliseconds until it holds, for at most [`PATIENCE`], for what the
/// server does in its own time (a disconnect processed, a background sweep); a failure says
/// `what` never happened.
pub async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens, with `token`, the SSE change stream of `r` and the Blob Service's metadata stream;
/// both answered 200 and left open.
pub async fn open_streams(
    addr: SocketAddr,
    token: &str,
    r: &str,
) -> (reqwest::Response, reqwest::Response) {
    let http = reqwest::Client::new();
    let events = http
        .get(format!("http://{addr}/v1/blobs/{r}/events"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let metadata = http
        .post(format!("http://{addr}/api/v1/events/subscribe"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "subscriptions": [{}] }))
        .send()
        .await
        .unwrap();
    assert_eq!(metadata.status(), 200);
    (events, metadata)
}

/// A token for `bucket` signed with the test secret.
pub fn token(bucket: &str) -> String {
    Keys::new(SECRET).mint(&Bucket::parse(bucket).expect("valid bucket"))
}

/// A read-only token for `bucket`.
pub fn read_only_token(bucket: &str) -> String {
    let options = blobs::auth::MintOptions {
        read_only: true,
        ..Default::default()
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

/// The `blobs` binary of this build as a child process on `storage`, with the test secret and
/// `env`: for tests that kill it, signal it or read its memory and file descriptors.
pub fn start_process(storage: &Path, env: &[(&str, &str)]) -> ServerProcess {
    let mut all = vec![("TOKEN_SECRET", SECRET)];
    all.extend_from_slice(env);
    ServerProcess::start(Path::new(env!("CARGO_BIN_EXE_blobs")), storage, &all)
}

/// Where a server under test keeps its data. The suites that test storage run each case on
/// both (see [`on_every_store!`]): the files in plain `cargo test`, the object store with the
/// suites that need what `scripts/test` installs.
pub enum TestStore {
    /// JSON files under the storage directory.
    Files,
    /// An S3-compatible object store: moto's S3 server (see [`s3`]).
    Objects(S3Server),
}

/// Object names of the object store start with this, as with `S3_PREFIX`.
pub const OBJECT_PREFIX: &str = "data/";

impl TestStore {
    /// A fresh object store: moto's S3 server with one empty bucket.
    pub async fn object_store() -> Self {
        Self::Objects(s3().await)
    }

    /// How failure messages name this store.
    pub fn name(&self) -> &'static str {
        match self {
            TestStore::Files => "files",
            TestStore::Objects(_) => "object store",
        }
    }

    /// Starts a server on this store (`storage` is its directory either way).
    pub async fn start(&self, storage: TempDir) -> TestServer {
        let options = match self {
            TestStore::Files => Vec::new(),
            TestStore::Objects(s3) => s3_options(s3, OBJECT_PREFIX),
        };
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        TestServer::start_with(storage, &options).await
    }

    /// The object layer of this store: the directory `storage`, or the bucket under
    /// [`OBJECT_PREFIX`] as a node opens it (probed, conditional writes normalized).
    pub async fn objects(&self, storage: &Path) -> Objects {
        match self {
            TestStore::Files => Objects::directory(storage),
            TestStore::Objects(s3) => objects(s3, OBJECT_PREFIX).await,
        }
    }

    /// The versioned store of this store's kind, kept under `storage` or the object prefix (the
    /// file store keeps its journal beside the files).
    pub async fn versioned(&self, storage: &Path) -> Arc<dyn blobs::storage::store::Store> {
        match self {
            TestStore::Files => Arc::new(blobs::storage::store::FsStore::open(storage).unwrap()),
            TestStore::Objects(_) => Arc::new(blobs::storage::store::ObjectBlobs::new(
                self.objects(storage).await,
            )),
        }
    }

    /// The content store on this store (`grace`: the object store's claim grace).
    pub async fn content(
        &self,
        storage: &Path,
        grace: Duration,
    ) -> Arc<dyn blobs::storage::content::ContentStore> {
        match self {
            TestStore::Files => {
                Arc::new(blobs::storage::content::FsContent::open(storage).unwrap())
            }
            TestStore::Objects(_) => Arc::new(blobs::storage::content::ObjectContent::new(
                &self.objects(storage).await,
                grace,
            )),
        }
    }

    /// The Blob Service's record store on this store.
    pub async fn records(&self, storage: &Path) -> Arc<blobs::blob_service::RecordStore> {
        Arc::new(blobs::blob_service::RecordStore::new(
            self.objects(storage).await,
        ))
    }

    /// Writes `bytes` at `name` (`<bucket>/<shard>/<ref>.json`) behind the server's back.
    pub async fn write(&self, storage: &Path, name: &str, bytes: &[u8]) {
        let objects = self.objects(storage).await;
        objects.put(name, bytes.to_vec()).await.unwrap();
    }

    /// Reads what is stored at `name`, as the server left it.
    pub async fn read(&self, storage: &Path, name: &str) -> Vec<u8> {
        let objects = self.objects(storage).await;
        let found = objects.get(name).await.unwrap();
        found.expect("an object at the name").bytes.to_vec()
    }
}

/// Declares the tests of storage cases, each an `async fn(TestStore)` of the calling module:
/// `files::<case>` runs it on the files, in plain `cargo test`; `objects::<case>` runs it on
/// moto's object store, ignored unless asked for (`scripts/test` runs it), so the object
/// store cannot drift from the files' rules.
macro_rules! on_every_store {
    ($($case:ident),+ $(,)?) => {
        mod files {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::fixture::TestStore::Files).await;
                }
            )+
        }

        mod objects {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs moto, the S3 server in tests/interop/.venv (run by scripts/test)"]
                async fn $case() {
                    super::$case($crate::fixture::TestStore::object_store().await).await;
                }
            )+
        }
    };
}
pub(crate) use on_every_store;

/// The objects of `s3`'s bucket under `prefix`, as a node opens them.
pub async fn objects(s3: &S3Server, prefix: &str) -> Objects {
    Objects::remote(s3_client(s3), prefix)
        .await
        .expect("the S3 server does compare-and-swap")
}

/// The name of a blob's JSON below the storage root or the object prefix.
pub fn blob_name(bucket: &str, r: &str) -> String {
    format!("{bucket}/{}/{r}.json", &r[..2])
}

/// Debian's `redis-server` (installed by `scripts/test`) on a free loopback port.
pub fn redis() -> RedisServer {
    RedisServer::start("redis-server")
}

/// moto's S3 server from PyPI (installed by `scripts/test`) with one empty bucket, checked to
/// answer a stale `If-Match` with 412, so a server that ignores the header cannot make the tests
/// pass. Quick: for the suites of one node's store.
pub async fn s3() -> S3Server {
    let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let server = S3Server::start(
        interop.join(".venv/bin/python"),
        interop.join("s3_server.py"),
        "blobs-test",
    )
    .await;
    probed(&server).await;
    server
}

/// A real object store, Ceph's RADOS Gateway (Debian's `radosgw`, `ceph-mon` and `ceph-osd`,
/// installed by `scripts/test`), of its own, brought up by `scripts/rgw` with one empty bucket,
/// checked like [`s3`]: for several nodes and migrations, where how a real store answers
/// conditional writes, races and listings matters.
pub async fn rgw() -> S3Server {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rgw");
    let server = S3Server::rgw(&script, "blobs-test").await;
    probed(&server).await;
    server
}

/// Runs the server's own start-up probe against `server`: it must refuse a create over an
/// existing object and a stale `If-Match`, take the current ETag, and keep metadata, so a
/// server that ignores conditional headers cannot make the tests pass.
async fn probed(server: &S3Server) {
    let client = s3_client(server);
    blobs::storage::objects::probe(client.as_ref(), "")
        .await
        .expect("the S3 server does compare-and-swap");
}

/// The server options that put a node's storage on `s3`'s bucket (under `prefix`).
pub fn s3_options(s3: &S3Server, prefix: &str) -> Vec<String> {
    [
        "--store",
        "s3",
        "--s3-endpoint",
        &s3.endpoint,
        "--s3-bucket",
        &s3.bucket,
        "--s3-region",
        &s3.region,
        "--s3-access-key-id",
        &s3.access_key,
        "--s3-secret-access-key",
        &s3.secret_key,
        "--s3-prefix",
        prefix,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The same as environment variables for the server binary (`STORE` included).
pub fn s3_env(s3: &S3Server, prefix: &str) -> Vec<(String, String)> {
    s3_options(s3, prefix)
        .chunks(2)
        .map(|pair| {
            let name = pair[0]
                .trim_start_matches("--")
                .replace('-', "_")
                .to_uppercase();
            (name, pair[1].clone())
        })
        .collect()
}

/// An object-store client of `s3`'s bucket.
pub fn s3_client(s3: &S3Server) -> Arc<dyn object_store::ObjectStore> {
    Arc::new(
        blobs::storage::s3::client(
            &s3.endpoint,
            &s3.bucket,
            &s3.region,
            &s3.access_key,
            &s3.secret_key,
        )
        .expect("S3 client"),
    )
}

/// Every Rust file under `path` (or `path` itself), with its code: comment lines left out, so
/// a name only a comment mentions is not taken for code. For the tests that read the source.
pub fn rust_sources(path: &Path) -> Vec<(PathBuf, String)> {
    if path.is_dir() {
        let mut sources = Vec::new();
        for entry in std::fs::read_dir(path).unwrap() {
            sources.extend(rust_sources(&entry.unwrap().path()));
        }
        return sources;
    }
    if path.extension().is_none_or(|e| e != "rs") {
        return Vec::new();
    }
    let code = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    vec![(path.to_owned(), code)]
}
