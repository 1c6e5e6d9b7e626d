//! Disk faults: a full disk and a read-only one. A write that cannot be made durable is
//! answered `{ error }`, the previous version stays readable, other buckets are served, and
//! the server recovers by itself when the disk does.
//!
//! The test mounts a small tmpfs, so it needs root (or CAP_SYS_ADMIN), as on CI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TestServer, hex_ref};
use serde_json::{Value, json};

/// A small tmpfs mounted on a temp directory, unmounted on drop.
struct SmallDisk {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            path.to_str().unwrap(),
        ]);
        Self {
            dir: Some(dir),
            path,
        }
    }

    fn remount(&self, mode: &str) {
        mount(&[
            "-o",
            &format!("remount,{mode}"),
            self.path.to_str().unwrap(),
        ]);
    }

    /// Fills the disk with one file; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        filler
    }

    /// Hands the mount point to a test server; the disk stays mounted until drop.
    fn storage(&mut self) -> tempfile::TempDir {
        self.dir.take().expect("storage taken once")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        Command::new("umount").arg(&self.path).status().ok();
        std::fs::remove_dir(&self.path).ok();
    }
}

fn mount(args: &[&str]) {
    let status = Command::new("mount")
        .args(args)
        .status()
        .expect("mount runs");
    assert!(
        status.success(),
        "mount {args:?} failed: the disk-fault tests need root (CAP_SYS_ADMIN)"
    );
}

fn temp_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                found.push(path);
            }
        }
    }
    found
}

/// Full disk, then read-only disk: errors for writes, old data for reads, recovery without
/// a restart.
#[tokio::test]
async fn disk_faults_refuse_writes_and_keep_old_versions() {
    let mut disk = SmallDisk::mount("1m");
    let server = TestServer::start_in(disk.storage()).await;
    let r = hex_ref("d0");
    let mut writer = server.subscribed("b", &r).await;
    let mut other = server.subscribed("other", &r).await;
    assert_eq!(
        writer.call1("set", json!({"data": "djE="})).await.unwrap()["version"],
        1
    );
    assert_eq!(
        other
            .call1("set", json!({"data": "b3RoZXI="}))
            .await
            .unwrap()["version"],
        1
    );

    // Full disk.
    let filler = disk.fill();
    let big = "QUJD".repeat(64 * 1024);
    let ack = writer
        .call1("set", json!({"data": big, "version": 1}))
        .await
        .unwrap();
    assert!(
        ack["error"].as_str().unwrap().starts_with("Storage error"),
        "{ack}"
    );
    assert_eq!(
        writer.call1("get", json!({})).await.unwrap(),
        json!({"data": "djE=", "version": 1}),
        "the previous version is intact"
    );
    assert_eq!(
        other.call1("get", json!({})).await.unwrap()["data"],
        "b3RoZXI="
    );
    assert!(
        temp_files(&disk.path).is_empty(),
        "no half-written temp file is left"
    );

    // Space returns: the same write now succeeds, without a restart.
    std::fs::remove_file(filler).unwrap();
    let ack = writer
        .call1("set", json!({"data": big, "version": 1}))
        .await
        .unwrap();
    assert_eq!(ack, json!({"success": true, "version": 2}));

    // Read-only disk.
    disk.remount("ro");
    let ack = writer
        .call1("set", json!({"data": "djM=", "version": 2}))
        .await
        .unwrap();
    assert!(ack["error"].is_string(), "{ack}");
    let current = writer.call1("get", json!({"known": 2})).await.unwrap();
    assert_eq!(current, json!({"version": 2}));
    assert_eq!(
        other.call1("get", json!({"known": 1})).await.unwrap(),
        json!({"version": 1})
    );
    disk.remount("rw");
    let ack = writer
        .call1("set", json!({"data": "djM=", "version": 2}))
        .await
        .unwrap();
    assert_eq!(ack, json!({"success": true, "version": 3}));

    let file: Value =
        serde_json::from_slice(&std::fs::read(server.blob_path("b", &r)).unwrap()).unwrap();
    assert_eq!(file["data"], "djM=");
    server.stop().await;
}
