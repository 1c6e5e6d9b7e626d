//! Crash torture: concurrent writes over real sockets, SIGKILL at random moments, restart, and
//! check that no acknowledged write was lost.
//!
//! CI runs 20 kill/restart cycles. The long mode is the same test with more cycles:
//! `BLOBS_TORTURE_CYCLES=200 cargo test --release --test it torture:: -- --nocapture`
//! (`BLOBS_TORTURE_SEED` replays a run; the seed is printed).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::fixture::{self, env_or, token};
use blobs_testkit::{ClientError, RawClient};
use serde_json::{Value, json};

const WRITERS: usize = 8;
/// Refs written: writers `i` and `i + REFS` share ref `i`, so some refs see conflicts.
const REFS: usize = 6;
const BUCKET: &str = "torture";

/// What the clients know of one ref.
#[derive(Default, Clone, Copy)]
struct Entry {
    /// Highest version acknowledged as committed.
    acked: u64,
    /// Writes sent and not answered when the server died.
    in_flight: u64,
}

type Ledger = Arc<Mutex<HashMap<String, Entry>>>;

fn ref_name(i: usize) -> String {
    format!("{:02x}{:062x}", (i * 53) % 256, i)
}

/// How a writer's connection ended.
struct Ended {
    committed: u64,
    /// Closed cleanly (a WebSocket close), not reset.
    clean: bool,
}

/// A compare-and-swap loop until the connection ends; counts acknowledged commits.
async fn writer(addr: std::net::SocketAddr, r: String, ledger: Ledger) -> Ended {
    let mut committed = 0;
    let ended = |committed, error: ClientError| Ended {
        committed,
        clean: matches!(error, ClientError::Closed),
    };
    let mut client = match RawClient::connect_token(addr, &token(BUCKET)).await {
        Ok(client) => client,
        Err(e) => return ended(0, e),
    };
    if let Err(e) = client.call("ref", &[json!(r)]).await {
        return ended(0, e);
    }
    let mut version = ledger
        .lock()
        .unwrap()
        .get(&r)
        .map(|e| e.acked)
        .filter(|v| *v > 0);
    loop {
        ledger
            .lock()
            .unwrap()
            .entry(r.clone())
            .or_default()
            .in_flight += 1;
        let data = format!("{committed:08}");
        let ack = match client
            .call1("set", json!({ "data": data, "version": version }))
            .await
        {
            Ok(ack) => ack,
            Err(e) => return ended(committed, e), // died with this write in flight
        };
        let mut ledger = ledger.lock().unwrap();
        let entry = ledger.get_mut(&r).expect("entry made above");
        entry.in_flight -= 1;
        if ack["error"].is_string() {
            continue; // refused (shutting down): nothing was written
        }
        let current = ack["version"].as_u64().expect("set ack carries a version");
        if ack["success"] == true {
            entry.acked = entry.acked.max(current);
            committed += 1;
        }
        version = Some(current);
    }
}

/// Every file parses, no temp or backup file is left, and each ref's stored version is the
/// acknowledged one, or above it by at most the writes that were in flight. Returns the
/// stored versions and the number of lost writes.
fn check_files(storage: &Path, ledger: &HashMap<String, Entry>) -> (HashMap<String, u64>, u64) {
    let mut stored = HashMap::new();
    let bucket = storage.join(BUCKET);
    for shard in std::fs::read_dir(&bucket).into_iter().flatten() {
        for file in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let r = name
                .strip_suffix(".json")
                .unwrap_or_else(|| panic!("leftover file {}", path.display()));
            let blob: Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            stored.insert(r.to_owned(), blob["version"].as_u64().unwrap());
        }
    }
    let mut lost = 0;
    for (r, entry) in ledger {
        let version = stored.get(r).copied().unwrap_or(0);
        if version < entry.acked {
            lost += entry.acked - version;
            eprintln!(
                "LOST: {r} acknowledged {} but stored {version}",
                entry.acked
            );
        }
        assert!(
            version <= entry.acked + entry.in_flight,
            "{r}: stored {version} beyond acknowledged {} + in flight {}",
            entry.acked,
            entry.in_flight
        );
    }
    (stored, lost)
}

/// Whether the journal holds records (more than a segment's 12-byte header), which the next
/// start replays.
fn journal_holds_records(storage: &Path) -> bool {
    std::fs::read_dir(storage.join(blobs::storage::store::JOURNAL_DIR))
        .into_iter()
        .flatten()
        .any(|segment| segment.unwrap().metadata().unwrap().len() > 12)
}

/// The journal's segment numbers, oldest first.
fn segments(storage: &Path) -> Vec<u64> {
    let mut numbers: Vec<u64> = std::fs::read_dir(storage.join(blobs::storage::store::JOURNAL_DIR))
        .into_iter()
        .flatten()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".wal")?
                .parse()
                .ok()
        })
        .collect();
    numbers.sort_unstable();
    numbers
}

/// Whether a kill landed inside a checkpoint, from the segments it left: a server starts the
/// segment after the last it found (`last`); a checkpoint starts a newer one, and only trims
/// the older ones at its end.
fn inside_checkpoint(storage: &Path, last: u64) -> bool {
    let numbers = segments(storage);
    numbers.len() > 1 && numbers.last().is_some_and(|&n| n > last + 1)
}

/// SIGKILL at random moments under concurrent writes loses no acknowledged write. Every other
/// cycle checkpoints back to back (a tiny bound on unwritten blobs, and a short interval), and
/// the cycles go on until at least two kills landed inside a checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_write() {
    let cycles = env_or("BLOBS_TORTURE_CYCLES", 20);
    let seed = env_or("BLOBS_TORTURE_SEED", fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let storage = tempfile::tempdir().unwrap();
    let ledger: Ledger = Arc::default();
    let (mut acknowledged, mut lost, mut in_flight_at_kill) = (0u64, 0u64, 0u64);
    let (mut replays, mut inside) = (0, 0);

    let mut cycle = 0;
    while cycle < cycles || (inside < 2 && cycle < 5 * cycles) {
        let settings: &[(&str, &str)] = if cycle % 2 == 0 {
            &[("CHECKPOINT_INTERVAL", "1s")]
        } else {
            &[("CHECKPOINT_INTERVAL", "5ms"), ("UNWRITTEN_BYTES", "256")]
        };
        cycle += 1;
        replays += usize::from(journal_holds_records(storage.path()));
        let last = segments(storage.path()).last().copied().unwrap_or(0);
        let server = fixture::start_process(storage.path(), settings);
        // The server swept its directory before listening: check what the last kill left.
        let (stored, cycle_lost) = check_files(storage.path(), &ledger.lock().unwrap());
        lost += cycle_lost;
        {
            let mut ledger = ledger.lock().unwrap();
            for (r, version) in &stored {
                // A write that was in flight may have landed: it is the new base.
                *ledger.entry(r.clone()).or_default() = Entry {
                    acked: *version,
                    in_flight: 0,
                };
            }
        }
        // The server serves exactly what is on disk.
        let mut reader = RawClient::connect_token(server.addr, &token(BUCKET))
            .await
            .unwrap();
        for (r, version) in &stored {
            reader.call("ref", &[json!(r)]).await.unwrap();
            let got = reader.call1("get", json!({})).await.unwrap();
            assert_eq!(got["version"].as_u64(), Some(*version), "{r} served");
        }

        let writers: Vec<_> = (0..WRITERS)
            .map(|i| tokio::spawn(writer(server.addr, ref_name(i % REFS), ledger.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.u64(20..250))).await; // a random moment
        server.kill();
        inside += usize::from(inside_checkpoint(storage.path(), last));
        for task in writers {
            acknowledged += task.await.unwrap().committed;
        }
        in_flight_at_kill += ledger
            .lock()
            .unwrap()
            .values()
            .map(|e| e.in_flight)
            .sum::<u64>();
    }
    let server = fixture::start_process(storage.path(), &[]);
    let (_, final_lost) = check_files(storage.path(), &ledger.lock().unwrap());
    lost += final_lost;
    server.kill();

    println!(
        "torture: cycles={cycle} writes_acknowledged={acknowledged} writes_in_flight_at_kill={in_flight_at_kill} writes_lost={lost} restarts_replaying_the_journal={replays} kills_inside_a_checkpoint={inside} seed={seed}"
    );
    assert!(inside > 0, "some kills landed inside a checkpoint");
    assert!(
        replays > 0,
        "some kills left writes in the journal to replay"
    );
    assert!(acknowledged > 0, "the load produced acknowledged writes");
    assert_eq!(lost, 0, "acknowledged writes were lost (seed {seed})");
}

/// SIGTERM under load: the server exits 0, every write acknowledged before exit is on disk,
/// and every client sees a clean close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing() {
    let storage = tempfile::tempdir().unwrap();
    let ledger: Ledger = Arc::default();
    let server = fixture::start_process(storage.path(), &[]);
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| tokio::spawn(writer(server.addr, ref_name(i % REFS), ledger.clone())))
        .collect();
    // Let the load build up: every ref written, a few hundred writes acknowledged.
    let loaded = || {
        let ledger = ledger.lock().unwrap();
        let written = ledger.values().filter(|e| e.acked > 0).count();
        written == REFS && ledger.values().map(|e| e.acked).sum::<u64>() >= 300
    };
    fixture::eventually(
        "the load building up (every ref written, 300 writes acknowledged)",
        async || loaded(),
    )
    .await;
    server.terminate();
    let mut acknowledged = 0;
    for task in writers {
        let ended = task.await.unwrap();
        assert!(ended.clean, "the client saw a clean close");
        acknowledged += ended.committed;
    }
    assert_eq!(server.wait().await, Some(0));

    let ledger = ledger.lock().unwrap();
    let (stored, lost) = check_files(storage.path(), &ledger);
    for (r, entry) in ledger.iter() {
        // Graceful shutdown answers every write it accepted: nothing is left in doubt.
        assert_eq!(stored.get(r).copied(), Some(entry.acked), "{r}");
    }
    println!("sigterm under load: writes_acknowledged={acknowledged} writes_lost={lost}");
    assert_eq!(lost, 0);
}
