//! The servers a several-node Blobs needs, for tests and the benchmark: Redis and an
//! S3-compatible object store, each on a free loopback port and killed when dropped. The
//! caller says which programs to run.

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader, Read};
use std::process::{Child, Command, Stdio};

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

/// An S3-compatible server with one empty bucket: moto's, run by a script that decides one
/// request at a time (moto's own conditional PUT is not atomic across its threads; S3's is).
pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    child: Child,
}

impl S3Server {
    /// Runs `script` (which takes a host and a port, and prints `Running on http://...`) with
    /// `python`, and creates the bucket `bucket`.
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
        let line = wait_for(
            child.stderr.take().expect("piped stderr"),
            "Running on http://",
        );
        let at = line.find("http://").expect("an address");
        let endpoint = line[at..].trim().to_owned();
        let created = reqwest::Client::new()
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .await
            .expect("the S3 server answers");
        assert!(
            created.status().is_success(),
            "bucket created: {}",
            created.status()
        );
        Self {
            endpoint,
            bucket: bucket.to_owned(),
            child,
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
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
