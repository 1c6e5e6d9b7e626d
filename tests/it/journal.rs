//! The file store's journal under what a power cut leaves: a journal cut at every byte offset
//! of its last records. (A disk that fills while the journal is written: `tests/it/faults.rs`.)

use std::path::{Path, PathBuf};

use blobs::names::{Bucket, Ref};
use blobs::storage::store::{Edit, Expect, FsStore, JOURNAL_DIR, SetOutcome, SetRequest, Store};

fn set_request(version: u64, data: &str) -> SetRequest {
    SetRequest {
        edit: Edit::Put(Some(data.to_owned())),
        expect: Expect::Protocol((version > 0).then_some(version)),
        ip: "127.0.0.1".into(),
        now: 1_700_000_000_000 + version,
        id: None,
    }
}

fn data_of(version: u64) -> String {
    format!("dmVyc2lvbi{version:04}")
}

/// The one segment in `root`'s journal.
fn segment(root: &Path) -> PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(root.join(JOURNAL_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(segments.len(), 1, "one journal segment: {segments:?}");
    segments.pop().unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A power cut keeps any prefix of what was appended since the last sync, and drops the blob
/// files written since the last checkpoint. Cut the journal at every byte offset of its last
/// records, with the files as the last checkpoint left them: every whole record is applied,
/// never a torn one.
#[tokio::test]
async fn a_journal_cut_at_any_byte_loses_no_whole_record_and_applies_no_torn_one() {
    const CHECKPOINTED: u64 = 2;
    const JOURNALED: u64 = 3;
    let live = tempfile::tempdir().unwrap();
    let bucket = Bucket::parse("cut").unwrap();
    let r = Ref::parse(&"ab".repeat(32)).unwrap();
    let other = Ref::parse(&"cd".repeat(32)).unwrap();

    let store = FsStore::open(live.path()).unwrap();
    for version in 0..CHECKPOINTED {
        let outcome = store
            .set(&bucket, &r, set_request(version, &data_of(version + 1)))
            .await
            .unwrap();
        assert!(
            matches!(outcome, SetOutcome::Committed { version: v, .. } if v == version + 1),
            "{outcome:?}"
        );
    }
    store.checkpoint().await.unwrap();
    // What a power cut right now leaves: the checkpointed files and an empty journal.
    let checkpointed = tempfile::tempdir().unwrap();
    copy_dir(live.path(), checkpointed.path());
    let segment_name = segment(live.path()).file_name().unwrap().to_owned();

    // Each acknowledged write ends where the segment ends when it is acknowledged.
    let mut ends = Vec::new();
    for version in CHECKPOINTED..CHECKPOINTED + JOURNALED {
        store
            .set(&bucket, &r, set_request(version, &data_of(version + 1)))
            .await
            .unwrap();
        ends.push(std::fs::metadata(segment(live.path())).unwrap().len());
    }
    store
        .set(&bucket, &other, set_request(0, "b3RoZXI="))
        .await
        .unwrap();
    let journal = std::fs::read(segment(live.path())).unwrap();
    ends.push(journal.len() as u64);
    drop(store);

    // From the segment's header on: the header is torn too in the first few cuts.
    for cut in 0..=journal.len() {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(checkpointed.path(), dir.path());
        std::fs::write(
            dir.path().join(JOURNAL_DIR).join(&segment_name),
            &journal[..cut],
        )
        .unwrap();
        let whole = ends.iter().filter(|&&end| end <= cut as u64).count() as u64;
        let store = FsStore::open(dir.path()).unwrap();
        let expected = CHECKPOINTED + whole.min(JOURNALED);
        let blob = store.get(&bucket, &r).await.unwrap().expect("blob present");
        assert_eq!(blob.version, expected, "cut at {cut}");
        assert_eq!(blob.data.as_deref(), Some(data_of(expected).as_str()));
        let other_blob = store.get(&bucket, &other).await.unwrap();
        assert_eq!(other_blob.is_some(), whole > JOURNALED, "cut at {cut}");
        // The replay is durable in the files, and the journal is empty again.
        drop(store);
        let file: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("cut/ab").join(format!("{r}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(file["version"], expected);
        let left = std::fs::metadata(segment(dir.path())).unwrap().len();
        assert!(left < 64, "journal emptied after replay: {left} bytes left");
    }
}
