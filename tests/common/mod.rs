//! The one helper every integration test uses: a real server on `127.0.0.1:0` with a temp
//! storage directory, stopped gracefully by the test.

#![allow(dead_code)] // each test binary uses a different part of this helper

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use blobs::auth::Keys;
use blobs::client::RawClient;
use blobs::config::Config;
use blobs::names::Bucket;
use clap::Parser;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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

/// A ref made of one repeated hex digit pair, e.g. `hex_ref("ab")`.
pub fn hex_ref(pair: &str) -> String {
    pair.repeat(32)
}
