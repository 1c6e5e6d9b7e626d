//! The servers a several-node Blobs needs, for tests and the benchmark: Redis and an
//! S3-compatible object store (moto, or Ceph's RADOS Gateway), each on a free loopback port and
//! taken down when dropped. The caller says which programs to run.

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

/// Redis without persistence (Debian's `redis-server`).
pub struct RedisServer {
    pub url: String,
    program: std::ffi::OsString,
    port: u16,
    child: Child,
}

impl RedisServer {
    /// Starts `program` (e.g. `redis-server`) and returns once it accepts connections.
    ///
    /// # Panics
    /// When the program cannot start or exits before it is ready.
    pub fn start(program: impl AsRef<OsStr>) -> Self {
        // Redis takes no port 0: take a free port from the kernel and hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let program = program.as_ref().to_owned();
        Self {
            url: format!("redis://127.0.0.1:{port}"),
            child: spawn_redis(&program, port),
            program,
            port,
        }
    }

    /// Kills Redis and starts a new, empty one on the same port: clients lose their
    /// connections and what Redis held.
    pub fn restart(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        self.child = spawn_redis(&self.program, self.port);
    }
}

fn spawn_redis(program: &OsStr, port: u16) -> Child {
    let mut child = Command::new(program)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program:?} starts (scripts/test installs it): {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    wait_for(stdout, "Ready to accept connections");
    child
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// An S3-compatible server with one empty bucket, and the keys and region to sign with: moto's
/// (quick, a mock), or a real Ceph RADOS Gateway.
pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    /// Takes the server down when the value is dropped.
    _process: Process,
}

/// What runs an [`S3Server`]; dropping it takes the server down, also when the server is still
/// being set up (a panic there leaves nothing running).
enum Process {
    /// moto, a child of this process.
    Moto(Child),
    /// The daemons `script start dir` left running in sessions of their own.
    Rgw { script: PathBuf, dir: TempDir },
}

impl S3Server {
    /// moto, run by `script` (which takes a host and a port, decides one request at a time, as
    /// moto's own conditional PUT is not atomic across its threads while S3's is, and prints
    /// `Running on http://...`) with `python`, with the bucket `bucket` created. moto takes
    /// any keys.
    ///
    /// # Panics
    /// When the server cannot start or the bucket cannot be created.
    pub async fn start(python: impl AsRef<OsStr>, script: impl AsRef<OsStr>, bucket: &str) -> Self {
        let python = python.as_ref();
        let mut child = Command::new(python)
            .arg(script)
            .args(["127.0.0.1", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{python:?} starts (scripts/test installs it): {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let process = Process::Moto(child);
        let line = wait_for(stderr, "Running on http://");
        let at = line.find("http://").expect("an address");
        let server = Self {
            endpoint: line[at..].trim().to_owned(),
            bucket: bucket.to_owned(),
            access_key: "test".to_owned(),
            secret_key: "test".to_owned(),
            region: "us-east-1".to_owned(),
            _process: process,
        };
        // moto takes an unsigned request.
        let created = reqwest::Client::new()
            .put(format!("{}/{bucket}", server.endpoint))
            .send()
            .await
            .expect("the S3 server answers");
        assert!(
            created.status().is_success(),
            "bucket created: {}",
            created.status()
        );
        server
    }

    /// A Ceph RADOS Gateway of its own (one monitor, one in-memory OSD, radosgw, all on
    /// loopback, under a new temp directory), brought up by `script` (`scripts/rgw`), with the
    /// bucket `bucket` (at least 3 characters) created. Several can run at once.
    ///
    /// # Panics
    /// When the gateway does not come up (the script gives up after 5 minutes, with the logs
    /// that say why) or the bucket cannot be created.
    pub async fn rgw(script: &Path, bucket: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("blobs-rgw-")
            .tempdir()
            .expect("a temp dir");
        let output = Command::new(script)
            .arg("start")
            .arg(dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{script:?} runs: {e}"));
        let process = Process::Rgw {
            script: script.to_owned(),
            dir,
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{script:?} start: {} (scripts/test installs radosgw, ceph-mon, ceph-osd)\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let said = |key: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("{script:?} start printed no {key}: {stdout}"))
                .to_owned()
        };
        let server = Self {
            endpoint: said("endpoint"),
            bucket: bucket.to_owned(),
            access_key: said("access_key"),
            secret_key: said("secret_key"),
            region: said("region"),
            _process: process,
        };
        server.create_signed_bucket().await;
        server
    }

    /// Creates the bucket with a SigV4-signed `PUT /<bucket>` (RGW refuses an anonymous one).
    /// It is signed by object_store's own signer, the one the server signs every request with,
    /// so no second signing library comes in; radosgw-admin cannot create a bucket, and a
    /// signer in the script would be one more to keep right.
    async fn create_signed_bucket(&self) {
        use object_store::aws::{AwsAuthorizer, AwsCredential};
        use object_store::client::{HttpRequest, HttpRequestBody};
        let url = format!("{}/{}", self.endpoint, self.bucket);
        let mut request = HttpRequest::new(HttpRequestBody::from(Vec::new()));
        *request.method_mut() = reqwest::Method::PUT;
        *request.uri_mut() = url.parse().expect("the bucket's URL");
        let credential = AwsCredential {
            key_id: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            token: None,
        };
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .expect("the request is signed");
        let created = reqwest::Client::new()
            .put(&url)
            .headers(request.headers().clone())
            .timeout(crate::PATIENCE)
            .send()
            .await
            .expect("the S3 server answers the bucket's creation");
        let status = created.status();
        assert!(
            status.is_success(),
            "bucket created: {status} {}",
            created.text().await.unwrap_or_default()
        );
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        match self {
            Process::Moto(child) => {
                child.kill().ok();
                child.wait().ok();
            }
            // The script waits for the daemons (SIGKILL after a few seconds), so the
            // directory is free to go once it returns.
            Process::Rgw { script, dir } => {
                let stopped = Command::new(&*script)
                    .arg("stop")
                    .arg(dir.path())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .status();
                if !matches!(stopped, Ok(status) if status.success()) {
                    eprintln!("{script:?} stop {:?}: {stopped:?}", dir.path());
                }
            }
        }
    }
}

/// Reads `output` until a line contains `marker`, then keeps draining it on a thread so the
/// child never blocks on a full pipe; that line.
fn wait_for(output: impl Read + Send + 'static, marker: &str) -> String {
    let mut lines = BufReader::new(output).lines();
    let found = loop {
        match lines.next() {
            Some(Ok(line)) if line.contains(marker) => break line,
            Some(Ok(_)) => {}
            other => panic!("the helper ended before saying {marker:?}: {other:?}"),
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    found
}
