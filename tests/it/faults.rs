//! Disk faults: a full disk. A write that cannot be made durable is answered `{ error }`, the
//! previous version stays readable, other buckets are served, the server recovers by itself
//! when the disk does, and no acknowledged write is lost.
//!
//! The test mounts a small tmpfs, so it needs root (or CAP_SYS_ADMIN), as on CI.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fixture::{self, TestServer, hex_ref, token};
use blobs_testkit::RawClient;
use serde_json::{Value, json};

/// A small tmpfs mounted on a temp directory, unmounted on drop.
struct SmallDisk {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        Self::mount_with(&format!("size={size}"))
    }

    /// A tmpfs with these mount options (`size=…`, `nr_inodes=…`).
    fn mount_with(options: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            options,
            "tmpfs",
            path.to_str().unwrap(),
        ]);
        Self {
            dir: Some(dir),
            path,
        }
    }

    /// Fills the disk with one file but for `room` bytes; returns its path.
    fn fill(&self, room: u64) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        let mut len = 0;
        while file.write_all(&chunk).is_ok() {
            len += chunk.len() as u64;
        }
        file.set_len(len.saturating_sub(room)).unwrap();
        filler
    }

    /// Hands the mount point to a test server; the disk stays mounted until drop.
    fn storage(&mut self) -> tempfile::TempDir {
        self.dir.take().expect("storage taken once")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a server's journal may still be closing its segment.
        Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status()
            .ok();
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

/// Full disk: errors for writes, old data for reads, recovery without a restart.
///
/// (A read-only remount cannot be tested while the server runs: the journal holds its segment
/// open for writing, so `mount -o remount,ro` is refused as busy. A disk the kernel turns
/// read-only fails the journal's writes like a full one.)
#[tokio::test]
#[ignore = "needs root to mount a tmpfs (run by scripts/test)"]
async fn disk_faults_refuse_writes_and_keep_old_versions() {
    let mut disk = SmallDisk::mount("1m");
    // The free-space reserve off: the disk itself runs out (`tests/it/quota.rs` tests the reserve).
    let server = TestServer::start_with(disk.storage(), &["--min-free-bytes", "0"]).await;
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
    let filler = disk.fill(0);
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

    // Stopped: the last checkpoint has written the file.
    let path = server.blob_path("b", &r);
    let storage = server.stop().await;
    let file: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(file["data"], big);
    drop(storage);
}

/// Fills the disk while writes go on: writes fail with a clean `{ error }` ack, the server
/// keeps serving what was acknowledged, takes writes again once there is room, and after a
/// crash and restart every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a tmpfs (run by scripts/test)"]
async fn a_full_disk_fails_writes_cleanly_and_loses_nothing_acknowledged() {
    const REFS: usize = 4;
    let disk = SmallDisk::mount("4m");
    let server = fixture::start_process(
        &disk.path,
        &[
            ("CHECKPOINT_INTERVAL", "50ms"),
            ("EVENTS_PER_SECOND", "100000"),
            ("MIN_FREE_BYTES", "0"),
        ],
    );
    let refs: Vec<String> = (0..REFS).map(|i| format!("{i:02x}").repeat(32)).collect();
    let mut clients = Vec::new();
    for r in &refs {
        let mut client = RawClient::connect_token(server.addr, &token("full"))
            .await
            .unwrap();
        client.call("ref", &[json!(r)]).await.unwrap();
        clients.push(client);
    }
    let data = "A".repeat(16 * 1024);
    let mut acked = [0u64; REFS];
    for (i, client) in clients.iter_mut().enumerate() {
        let ack = client.call1("set", json!({ "data": data })).await.unwrap();
        assert_eq!(ack["success"], true, "{ack}");
        acked[i] = 1;
    }
    // Fill the disk but for a few pages: a write needs room for its journal record and for a
    // new copy of its file.
    let filler = disk.fill(48 * 1024);
    let mut errors = 0;
    // Round-robin writes until every ref has been refused a few times.
    let mut refused = [0; REFS];
    let mut round = 0;
    while refused.iter().any(|&n| n < 3) {
        round += 1;
        assert!(round < 10_000, "the disk never filled");
        for (i, client) in clients.iter_mut().enumerate() {
            let version = (acked[i] > 0).then_some(acked[i]);
            let ack = client
                .call1("set", json!({ "data": data, "version": version }))
                .await
                .expect("a full disk never drops the connection");
            if ack["success"] == true {
                acked[i] = ack["version"].as_u64().unwrap();
            } else {
                assert_eq!(
                    ack["error"], "Storage error: the operation could not be completed",
                    "{ack}"
                );
                errors += 1;
                refused[i] += 1;
            }
        }
    }
    // What was acknowledged is still served.
    for (i, client) in clients.iter_mut().enumerate() {
        let got = client.call1("get", json!({})).await.unwrap();
        assert_eq!(got["version"].as_u64(), Some(acked[i]), "{got}");
    }
    // Room again: writes go through.
    std::fs::remove_file(&filler).unwrap();
    for (i, client) in clients.iter_mut().enumerate() {
        let ack = client
            .call1("set", json!({ "data": data, "version": acked[i] }))
            .await
            .unwrap();
        assert_eq!(ack["success"], true, "{ack}");
        acked[i] += 1;
    }
    server.kill();

    let server = fixture::start_process(&disk.path, &[]);
    let mut reader = RawClient::connect_token(server.addr, &token("full"))
        .await
        .unwrap();
    for (i, r) in refs.iter().enumerate() {
        reader.call("ref", &[json!(r)]).await.unwrap();
        let got = reader.call1("get", json!({})).await.unwrap();
        assert_eq!(got["version"].as_u64(), Some(acked[i]), "{r}: {got}");
        assert_eq!(got["data"].as_str().map(str::len), Some(data.len()));
    }
    println!("full disk: {errors} writes refused, acknowledged {acked:?}, none lost");
    server.kill();
}

/// Blob files wait for the checkpoint, and a checkpoint on a full disk writes what fits: the
/// files it cannot write stay in the journal, the next start replays them, nothing
/// acknowledged is lost and no half-written file is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a tmpfs (run by scripts/test)"]
async fn a_checkpoint_on_a_full_disk_keeps_every_write_in_the_journal() {
    const VERSIONS: u64 = 3;
    let disk = SmallDisk::mount("4m");
    // No checkpoint before the stop: the writes are in the journal and in memory only.
    let server = fixture::start_process(
        &disk.path,
        &[("CHECKPOINT_INTERVAL", "1h"), ("MIN_FREE_BYTES", "0")],
    );
    let refs: Vec<String> = (0..4).map(|i| format!("{i:02x}").repeat(32)).collect();
    let data = "A".repeat(16 * 1024);
    let mut client = RawClient::connect_token(server.addr, &token("full"))
        .await
        .unwrap();
    for r in &refs {
        client.call("ref", &[json!(r)]).await.unwrap();
        for version in 0..VERSIONS {
            let version = (version > 0).then_some(version);
            let ack = client
                .call1("set", json!({ "data": data, "version": version }))
                .await
                .unwrap();
            assert_eq!(ack["success"], true, "{ack}");
        }
    }
    let files = || -> Vec<PathBuf> {
        let mut found = Vec::new();
        for shard in std::fs::read_dir(disk.path.join("full"))
            .into_iter()
            .flatten()
        {
            found.extend(
                std::fs::read_dir(shard.unwrap().path())
                    .unwrap()
                    .map(|e| e.unwrap().path()),
            );
        }
        found
    };
    assert_eq!(
        files(),
        Vec::<PathBuf>::new(),
        "no blob file before the checkpoint"
    );

    // Room for about two of the four files: the stop's checkpoint fails part-way.
    let filler = disk.fill(40 * 1024);
    for r in &refs {
        client.call("ref", &[json!(r)]).await.unwrap();
        let got = client.call1("get", json!({})).await.unwrap();
        assert_eq!(got["version"], VERSIONS, "served from memory");
    }
    server.terminate();
    server.wait().await;
    assert!(temp_files(&disk.path).is_empty(), "no half-written file");
    let written = files();
    println!(
        "checkpoint on a full disk: {} of 4 files written",
        written.len()
    );
    assert!(
        written.len() < refs.len(),
        "the disk filled during the checkpoint"
    );
    for path in written {
        // A file the checkpoint wrote is whole and current.
        let file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(file["version"], VERSIONS, "{}", path.display());
    }

    // Room again: the next start replays the journal.
    std::fs::remove_file(filler).unwrap();
    let server = fixture::start_process(&disk.path, &[]);
    let mut reader = RawClient::connect_token(server.addr, &token("full"))
        .await
        .unwrap();
    for r in &refs {
        reader.call("ref", &[json!(r)]).await.unwrap();
        let got = reader.call1("get", json!({})).await.unwrap();
        assert_eq!(got["version"], VERSIONS, "{r}: {got}");
        assert_eq!(got["data"].as_str().map(str::len), Some(data.len()));
    }
    server.terminate();
    server.wait().await;
    assert_eq!(files().len(), refs.len(), "every file written at the stop");
}

/// Blob files that cannot be written (no inode left for a file) while the journal still takes
/// writes: the unwritten blobs reach `UNWRITTEN_BYTES`, and then a write is refused with the
/// storage error instead of waiting for good. With inodes again, writes go on, and after a
/// crash every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a tmpfs (run by scripts/test)"]
async fn writes_at_the_unwritten_bound_are_refused_while_files_cannot_be_written() {
    const REFS: usize = 8;
    let disk = SmallDisk::mount_with("size=16m,nr_inodes=64");
    let settings = [
        ("CHECKPOINT_INTERVAL", "1h"),
        ("UNWRITTEN_BYTES", "64KiB"),
        ("MIN_FREE_BYTES", "0"),
    ];
    let server = fixture::start_process(&disk.path, &settings);
    // Every inode left taken by empty files.
    let filler = disk.path.join("filler");
    std::fs::create_dir(&filler).unwrap();
    let mut taken = 0;
    while std::fs::File::create(filler.join(taken.to_string())).is_ok() {
        taken += 1;
    }
    let refs: Vec<String> = (0..REFS).map(|i| format!("{i:02x}").repeat(32)).collect();
    let data = "A".repeat(16 * 1024);
    let mut client = RawClient::connect_token(server.addr, &token("inodes"))
        .await
        .unwrap();
    let mut acked = [0u64; REFS];
    let set = async |client: &mut RawClient, i: usize, acked: &mut [u64; REFS]| {
        client.call("ref", &[json!(refs[i])]).await.unwrap();
        let version = (acked[i] > 0).then_some(acked[i]);
        let write = client.call1("set", json!({ "data": data, "version": version }));
        let ack = fixture::within("the answer to a write at the bound", write)
            .await
            .unwrap();
        if ack["success"] == true {
            acked[i] = ack["version"].as_u64().unwrap();
        }
        ack
    };
    let mut refused = None;
    for round in 0..REFS * 4 {
        let ack = set(&mut client, round % REFS, &mut acked).await;
        if ack["success"] != true {
            refused = Some(ack);
            break;
        }
    }
    let refused = refused.expect("a write was refused at the bound");
    assert_eq!(
        refused["error"], "Storage error: the operation could not be completed",
        "{refused}"
    );
    assert!(
        acked.iter().sum::<u64>() >= 3,
        "writes went on up to the bound: {acked:?}"
    );

    // Inodes again: the next write waits for a checkpoint that now writes the files.
    std::fs::remove_dir_all(&filler).unwrap();
    let ack = set(&mut client, 0, &mut acked).await;
    assert_eq!(ack["success"], true, "{ack}");
    server.kill();

    let server = fixture::start_process(&disk.path, &[]);
    let mut reader = RawClient::connect_token(server.addr, &token("inodes"))
        .await
        .unwrap();
    for (i, r) in refs.iter().enumerate() {
        reader.call("ref", &[json!(r)]).await.unwrap();
        let got = reader.call1("get", json!({})).await.unwrap();
        let served = got["version"].as_u64().unwrap_or(0);
        assert_eq!(served, acked[i], "{r}: {got}");
    }
    println!("inodes exhausted ({taken} taken): acknowledged {acked:?}, then {refused}");
    server.kill();
}
