//! Versioned blobs and the storage trait behind them.
//!
//! The trait is small on purpose: reading the current blob, a conditional write and a listing
//! are all the protocols need, and they map onto an object store with conditional writes
//! ([`ObjectBlobs`]) as well as onto files ([`FsStore`]). Implementations must acknowledge a
//! write only once it is durable.
//!
//! A deleted blob stays as a tombstone (`"deleted": true`, no data, its version kept): readers
//! see it as missing, and a blob created again continues from its version, so an old client's
//! write naming a stale version can never win.

mod format;
mod fs;
mod object;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::names::{Bucket, Ref};

pub use format::{damage, decode, preferred};
pub use fs::{CASE_CONFLICT, FsStore, JOURNAL_DIR, LOCK_FILE, journaled, lock};
pub use object::ObjectBlobs;

/// Largest version a client may name: JavaScript's `Number.MAX_SAFE_INTEGER`, so every version
/// (and the next one) stays exact in a browser.
pub const MAX_VERSION: u64 = (1 << 53) - 1;

/// Writers a blob remembers: the last this many that wrote it with a write id (see
/// [`Blob::writers`]).
pub const WRITERS: usize = 32;

/// Longest writer name a client may send. With it, [`WRITERS`] entries stay well within the
/// tail of a blob file that a listing reads (`format::TAIL`).
pub const MAX_WRITER: usize = 32;

/// Bytes a write id adds to its blob's file at most: its entry of [`Blob::writers`] with a
/// comma, or, the first time, with the key.
pub const MAX_LAST_WRITE_LEN: u64 = 13 + 31 + MAX_WRITER as u64 + 2 * 16;

/// One blob, exactly as stored in `<bucket>/<ref[0..2]>/<ref>.json` (the original's format,
/// plus `deleted` on tombstones and `writers` on blobs written with write ids).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Blob {
    /// Base64 text as the client sent it; absent when the blob has a version and no data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    pub version: u64,
    /// Milliseconds since the epoch.
    pub created: u64,
    /// Milliseconds since the epoch; absent until the first update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<u64>,
    /// Address of the last writer (`X-Real-IP` from a trusted proxy, or the peer).
    #[serde(default = "unknown_ip")]
    pub ip: String,
    /// A tombstone: the blob was deleted at this version.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The last [`WRITERS`] writers that wrote with a write id, the one that wrote least
    /// recently first, each with its last write: a write sent again is answered with the
    /// version it made instead of being applied twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writers: Vec<LastWrite>,
}

/// A write id: who wrote, and the write's place in the writer's order. A writer sends its
/// writes of one blob in increasing `seq`, each once the one before is answered, so the last
/// `seq` committed tells which of its writes committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteId {
    pub writer: String,
    pub seq: u64,
}

/// A writer's last committed write of a blob, and the version it made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastWrite {
    pub writer: String,
    pub seq: u64,
    pub version: u64,
}

fn unknown_ip() -> String {
    "unknown".to_owned()
}

impl Blob {
    /// Time of the last change, milliseconds since the epoch.
    pub fn modified(&self) -> u64 {
        self.updated.unwrap_or(self.created)
    }

    /// Whether the write `id` committed, as far as this blob remembers: its writer's last
    /// committed write, and the version that made, when it is `id` or a later one.
    pub fn committed(&self, id: &WriteId) -> Option<&LastWrite> {
        self.writers
            .iter()
            .find(|last| last.writer == id.writer && last.seq >= id.seq)
    }

    /// Whether a write whose writer this blob does not remember may still have committed on
    /// top of version `expected` (0: none), its writer forgotten since: the blob has forgotten
    /// writers (it remembers [`WRITERS`]), and even the one it remembers least recently wrote
    /// after what that write would have made.
    pub fn may_have_forgotten(&self, expected: u64) -> bool {
        self.writers.len() >= WRITERS && self.writers[0].version > expected + 1
    }

    /// Length of the decoded data in bytes (0 without data).
    pub fn size(&self) -> usize {
        self.data.as_deref().map_or(0, decoded_len)
    }

    /// Bytes of this blob's file as this server writes it (its JSON), counted without writing
    /// it out.
    pub fn stored_len(&self) -> u64 {
        let digits = |n: u64| u64::from(n.checked_ilog10().unwrap_or(0) + 1);
        let data = self.data.as_ref().map_or(0, |d| d.len() as u64 + 10);
        let updated = self.updated.map_or(0, |u| 11 + digits(u));
        let deleted = if self.deleted { 15 } else { 0 };
        // `,"writers":[` … `]`, each `{"writer":"…","seq":S,"version":V}`, commas between.
        let writers = if self.writers.is_empty() {
            0
        } else {
            let each =
                |w: &LastWrite| 31 + w.writer.len() as u64 + digits(w.seq) + digits(w.version);
            13 + self.writers.iter().map(each).sum::<u64>() + self.writers.len() as u64 - 1
        };
        // `{"version":V,"created":C,"ip":"…"}` and the optional fields.
        writers
            + 2
            + 10
            + digits(self.version)
            + 11
            + digits(self.created)
            + 8
            + self.ip.len() as u64
            + data
            + updated
            + deleted
    }
}

/// What a listing says of one blob. No data: a page costs memory by its entries, not by the
/// size of the blobs it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed {
    pub version: u64,
    /// Bytes of data.
    pub size: usize,
    /// Last change, milliseconds since the epoch.
    pub updated: u64,
}

impl From<&Blob> for Listed {
    fn from(blob: &Blob) -> Self {
        Listed {
            version: blob.version,
            size: blob.size(),
            updated: blob.modified(),
        }
    }
}

/// Bytes a base64 text decodes to (padding optional).
fn decoded_len(text: &str) -> usize {
    let body = text.trim_end_matches('=').len();
    body * 3 / 4
}

/// Bytes a blob's file grows by when `blob` replaces `current`.
fn grown(current: Option<&Blob>, blob: &Blob) -> i64 {
    blob.stored_len() as i64 - current.map_or(0, Blob::stored_len) as i64
}

/// The blob as readers see it: `None` for a missing blob and for a tombstone.
pub fn live(blob: Option<Arc<Blob>>) -> Option<Arc<Blob>> {
    blob.filter(|b| !b.deleted)
}

/// What a write expects of the current blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The Socket.IO rule: a missing blob is created whatever the version says; otherwise the
    /// version must match the current one (a tombstone's included).
    Protocol(Option<u64>),
    /// `If-Match`: a live blob at exactly this version.
    Version(u64),
    /// `If-None-Match: *`: no live blob (missing, or a tombstone, which it continues).
    Absent,
    /// No precondition: creates like `Absent`, but a live blob needs a precondition.
    Unconditional,
}

/// The change a write makes.
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    /// New data (or none: a blob with a version and no data).
    Put(Option<String>),
    /// A tombstone.
    Delete,
}

/// A conditional write.
#[derive(Clone, Debug)]
pub struct SetRequest {
    pub edit: Edit,
    pub expect: Expect,
    pub ip: String,
    /// Time of the write, milliseconds since the epoch.
    pub now: u64,
    /// The client's id for this write (see [`Blob::writers`]): a write the blob remembers as
    /// committed is not applied again.
    pub id: Option<WriteId>,
}

/// What a conditional write did.
#[derive(Clone, Debug, PartialEq)]
pub enum SetOutcome {
    /// The write is durable; the blob (or tombstone) now has this version, and its file grew
    /// by `grown` bytes (negative: shrank; [`Blob::stored_len`] of what it replaced).
    Committed { version: u64, grown: i64 },
    /// The expectation failed: nothing was written; this is the current blob, if any
    /// (tombstones included).
    Conflict(Option<Arc<Blob>>),
    /// An unconditional write met a live blob: the writer must say which version it replaces.
    PreconditionRequired(Arc<Blob>),
    /// The blob remembers the write's id as committed: its writer's last write made this
    /// version, and nothing was written now.
    Repeated { version: u64 },
}

/// A storage failure. Its detail is logged; the client only learns that the operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A damaged blob file (see [`decode`]): never served, never written over.
    #[error("blob file {path} is damaged: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("the next version would exceed {MAX_VERSION}")]
    VersionOverflow,
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The object store failed (or could not be reached).
    #[error("object store: {0}")]
    Object(object_store::Error),
}

/// Counted by the object layer already.
impl From<crate::storage::objects::Error> for Error {
    fn from(e: crate::storage::objects::Error) -> Self {
        Error::Object(e.source)
    }
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        crate::metrics::object_store_error();
        Error::Object(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Storage for versioned blobs, shared by every connection.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current blob or tombstone, or `None` when there never was one.
    async fn get(&self, bucket: &Bucket, r: &Ref) -> Result<Option<Arc<Blob>>>;

    /// A conditional write (see [`apply`] for the rules).
    async fn set(&self, bucket: &Bucket, r: &Ref, request: SetRequest) -> Result<SetOutcome>;

    /// Live blobs of a bucket in ref order, after `after`, at most `limit` of them. A listing
    /// reads only what it shows (a large blob's file by its head and tail, see
    /// `format::summarize_ends`), never a blob's data; a damaged blob file is logged and left
    /// out, so one bad file cannot fail a whole listing.
    async fn list(
        &self,
        bucket: &Bucket,
        after: Option<&Ref>,
        limit: usize,
    ) -> Result<Vec<(Ref, Listed)>>;

    /// Whether the store can take writes now (a probe write succeeds).
    async fn writable(&self) -> bool;

    /// Makes every committed write durable where readers other than this server find it (the
    /// file store's checkpoint); a no-op where a write already lands there.
    async fn checkpoint(&self) -> Result<()> {
        Ok(())
    }

    /// Resolves when a checkpoint is wanted before its time (the file store's unwritten blobs
    /// near their limit); never, where none is.
    async fn checkpoint_wanted(&self) {
        std::future::pending::<()>().await;
    }
}

/// The blob a conditional write produces from the current one, or what it reports instead.
///
/// Pure, so the version rules are tested once for every backend.
pub fn apply(current: Option<&Arc<Blob>>, request: SetRequest) -> Result<Result<Blob, SetOutcome>> {
    let repeated = request.id.as_ref().and_then(|id| current?.committed(id));
    if let Some(last) = repeated {
        return Ok(Err(SetOutcome::Repeated {
            version: last.version,
        }));
    }
    let conflict = || Ok(Err(SetOutcome::Conflict(current.cloned())));
    let live = current.filter(|b| !b.deleted);
    let base = match (request.expect, current) {
        (Expect::Protocol(_), None) => None,
        (Expect::Protocol(version), Some(blob)) if version == Some(blob.version) => Some(blob),
        (Expect::Protocol(_), Some(_)) => return conflict(),
        (Expect::Version(version), _) => match live {
            Some(blob) if blob.version == version => Some(blob),
            _ => return conflict(),
        },
        (Expect::Absent, _) if live.is_some() => return conflict(),
        (Expect::Unconditional, _) if live.is_some() => {
            return Ok(Err(SetOutcome::PreconditionRequired(
                live.cloned().expect("checked above"),
            )));
        }
        (Expect::Absent | Expect::Unconditional, tombstone) => tombstone,
    };
    // Deleting what readers already see as missing is a conflict, not a new tombstone.
    if request.edit == Edit::Delete && base.is_none_or(|b| b.deleted) {
        return conflict();
    }
    let version = match base {
        None => 1,
        Some(b) if b.version >= MAX_VERSION => return Err(Error::VersionOverflow),
        Some(b) => b.version + 1,
    };
    let (data, deleted) = match request.edit {
        Edit::Put(data) => (data, false),
        Edit::Delete => (None, true),
    };
    // Kept by every write, so writers outlive writes without an id; a file that holds more
    // (edited by hand) is brought back to the bound.
    let mut writers = base.map_or_else(Vec::new, |b| b.writers.clone());
    let room = match &request.id {
        Some(id) => {
            writers.retain(|last| last.writer != id.writer);
            WRITERS - 1
        }
        None => WRITERS,
    };
    writers.drain(..writers.len().saturating_sub(room));
    if let Some(WriteId { writer, seq }) = request.id {
        writers.push(LastWrite {
            writer,
            seq,
            version,
        });
    }
    Ok(Ok(Blob {
        data,
        version,
        // A blob created again over a tombstone starts a new life.
        created: base
            .filter(|b| !b.deleted)
            .map_or(request.now, |b| b.created),
        updated: base.is_some_and(|b| !b.deleted).then_some(request.now),
        ip: request.ip,
        deleted,
        writers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(expect: Expect, edit: Edit) -> SetRequest {
        SetRequest {
            edit,
            expect,
            ip: "ip".into(),
            now: 7,
            id: None,
        }
    }

    fn put(expect: Expect) -> SetRequest {
        request(expect, Edit::Put(Some("AA==".into())))
    }

    fn committed(current: Option<&Arc<Blob>>, req: SetRequest) -> Arc<Blob> {
        Arc::new(apply(current, req).unwrap().expect("write commits"))
    }

    #[test]
    fn a_missing_blob_is_created_at_version_one_whatever_the_protocol_request_says() {
        for version in [None, Some(1), Some(42)] {
            let blob = committed(None, put(Expect::Protocol(version)));
            assert_eq!((blob.version, blob.created, blob.updated), (1, 7, None));
        }
        assert_eq!(committed(None, put(Expect::Absent)).version, 1);
        assert_eq!(committed(None, put(Expect::Unconditional)).version, 1);
        assert_eq!(
            apply(None, put(Expect::Version(1))).unwrap(),
            Err(SetOutcome::Conflict(None))
        );
    }

    #[test]
    fn a_matching_version_increments_and_a_stale_one_conflicts() {
        let current = committed(None, put(Expect::Protocol(None)));
        let next = committed(Some(&current), put(Expect::Protocol(Some(1))));
        assert_eq!((next.version, next.created, next.updated), (2, 7, Some(7)));
        assert_eq!(
            committed(Some(&current), put(Expect::Version(1))).version,
            2
        );
        for stale in [
            Expect::Protocol(None),
            Expect::Protocol(Some(2)),
            Expect::Version(2),
        ] {
            assert_eq!(
                apply(Some(&current), put(stale)).unwrap(),
                Err(SetOutcome::Conflict(Some(current.clone())))
            );
        }
        assert_eq!(
            apply(Some(&current), put(Expect::Absent)).unwrap(),
            Err(SetOutcome::Conflict(Some(current.clone())))
        );
        assert_eq!(
            apply(Some(&current), put(Expect::Unconditional)).unwrap(),
            Err(SetOutcome::PreconditionRequired(current.clone()))
        );
    }

    #[test]
    fn tombstones_keep_the_version_and_stale_writers_never_win() {
        let v1 = committed(None, put(Expect::Protocol(None)));
        let tombstone = committed(Some(&v1), request(Expect::Version(1), Edit::Delete));
        assert!(tombstone.deleted && tombstone.data.is_none());
        assert_eq!(tombstone.version, 2);
        assert!(live(Some(tombstone.clone())).is_none());
        // An old client naming version 1, or none, loses.
        for stale in [
            Expect::Protocol(Some(1)),
            Expect::Protocol(None),
            Expect::Version(2),
        ] {
            assert!(matches!(
                apply(Some(&tombstone), put(stale)).unwrap(),
                Err(SetOutcome::Conflict(Some(_)))
            ));
        }
        // Deleting again is a conflict; creating again continues the versions.
        assert!(
            apply(Some(&tombstone), request(Expect::Version(2), Edit::Delete))
                .unwrap()
                .is_err()
        );
        for create in [
            Expect::Absent,
            Expect::Unconditional,
            Expect::Protocol(Some(2)),
        ] {
            let again = committed(Some(&tombstone), put(create));
            assert_eq!(
                (again.version, again.deleted, again.updated),
                (3, false, None)
            );
        }
    }

    #[test]
    fn the_file_format_round_trips() {
        let text = r#"{"data":"aGk=","version":3,"created":1763780000000,"updated":1763780100000,"ip":"203.0.113.7"}"#;
        let blob: Blob = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&blob).unwrap(), text);
        assert_eq!((blob.size(), blob.modified()), (2, 1763780100000));
        let bare: Blob =
            serde_json::from_str(r#"{"version":1,"created":5,"ip":"unknown"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&bare).unwrap(),
            r#"{"version":1,"created":5,"ip":"unknown"}"#
        );
        let tombstone = r#"{"version":4,"created":5,"ip":"unknown","deleted":true}"#;
        let blob: Blob = serde_json::from_str(tombstone).unwrap();
        assert!(blob.deleted);
        assert_eq!(serde_json::to_string(&blob).unwrap(), tombstone);
    }

    #[test]
    fn stored_lengths_are_the_files_lengths() {
        let mut blob = Blob {
            data: Some("aGVsbG8=".into()),
            version: 1,
            created: 1_763_780_000_000,
            updated: None,
            ip: "203.0.113.7".into(),
            deleted: false,
            writers: Vec::new(),
        };
        let len = |b: &Blob| serde_json::to_vec(b).unwrap().len() as u64;
        assert_eq!(blob.stored_len(), len(&blob));
        for version in [9, 10, 99_999, MAX_VERSION] {
            blob.version = version;
            blob.updated = Some(version * 7);
            assert_eq!(blob.stored_len(), len(&blob), "{version}");
        }
        blob.data = None;
        blob.deleted = true;
        blob.created = 0;
        assert_eq!(blob.stored_len(), len(&blob));
        blob.data = Some(String::new());
        blob.ip = "::1".into();
        assert_eq!(blob.stored_len(), len(&blob));
        for (i, version) in [(1, 7), (2, 10), (3, MAX_VERSION)] {
            blob.writers.push(LastWrite {
                writer: "x".repeat(i * 20),
                seq: version * 3 % 1000,
                version,
            });
            assert_eq!(blob.stored_len(), len(&blob), "{:?}", blob.writers);
        }
        // The longest entry, the first or another, within what a write reserves for it.
        let longest = LastWrite {
            writer: "w".repeat(MAX_WRITER),
            seq: MAX_VERSION,
            version: MAX_VERSION,
        };
        let before = len(&blob);
        blob.writers.push(longest.clone());
        assert!(len(&blob) - before <= MAX_LAST_WRITE_LEN);
        blob.writers.clear();
        let before = len(&blob);
        blob.writers.push(longest);
        assert_eq!(len(&blob) - before, MAX_LAST_WRITE_LEN);
    }

    fn with_id(expect: Expect, writer: &str, seq: u64) -> SetRequest {
        SetRequest {
            id: Some(WriteId {
                writer: writer.into(),
                seq,
            }),
            ..put(expect)
        }
    }

    #[test]
    fn a_write_sent_again_under_its_id_is_answered_with_its_version_not_applied_again() {
        let first = committed(None, with_id(Expect::Protocol(None), "a", 1));
        // Another client's write, without an id, keeps what the blob remembers.
        let second = committed(Some(&first), put(Expect::Protocol(Some(1))));
        assert_eq!(second.writers.len(), 1);
        // Sent again (its answer was lost) with the version it named then.
        assert_eq!(
            apply(Some(&second), with_id(Expect::Protocol(None), "a", 1)).unwrap(),
            Err(SetOutcome::Repeated { version: 1 })
        );
        // The writer's next write is a new write, checked as any other.
        assert!(matches!(
            apply(Some(&second), with_id(Expect::Protocol(Some(1)), "a", 2)).unwrap(),
            Err(SetOutcome::Conflict(_))
        ));
        let third = committed(Some(&second), with_id(Expect::Protocol(Some(2)), "a", 2));
        assert_eq!(
            third.writers,
            [LastWrite {
                writer: "a".into(),
                seq: 2,
                version: 3
            }]
        );
        // An earlier write of a writer whose later write committed committed before it.
        assert_eq!(
            apply(Some(&third), with_id(Expect::Protocol(Some(9)), "a", 1)).unwrap(),
            Err(SetOutcome::Repeated { version: 3 })
        );
    }

    #[test]
    fn a_blob_remembers_its_last_writers_and_says_when_it_may_have_forgotten_one() {
        let mut blob = committed(None, with_id(Expect::Protocol(None), "w0", 1));
        for i in 1..50u64 {
            // Each writer writes twice in a row: it is remembered once.
            let writer = format!("w{}", i / 2);
            blob = committed(
                Some(&blob),
                with_id(Expect::Protocol(Some(i)), &writer, i + 1),
            );
            assert!(blob.writers.len() <= WRITERS);
        }
        assert_eq!(blob.version, 50);
        assert_eq!(blob.writers.len(), 25);
        let young = blob.clone();
        assert!(!young.may_have_forgotten(0), "no writer was forgotten yet");
        for i in 50..100u64 {
            let writer = format!("w{i}");
            blob = committed(Some(&blob), with_id(Expect::Protocol(Some(i)), &writer, 1));
        }
        // The last WRITERS writers (versions 69..=100) are remembered, the others forgotten.
        let id = |writer: &str| WriteId {
            writer: writer.into(),
            seq: 1,
        };
        assert_eq!(blob.committed(&id("w99")).map(|l| l.version), Some(100));
        assert_eq!(blob.committed(&id("w68")).map(|l| l.version), Some(69));
        assert_eq!(blob.committed(&id("w67")), None);
        // A write on version 68 would have made 69, which is remembered: that it is not among
        // them is certain. On 67 it would have made 68, whose writer is forgotten.
        assert!(!blob.may_have_forgotten(68));
        assert!(blob.may_have_forgotten(67));
        // A file edited to hold more is brought back to the bound by the next write.
        let mut edited = (*blob).clone();
        edited.writers = (0..100)
            .map(|i| LastWrite {
                writer: format!("e{i}"),
                seq: 1,
                version: i,
            })
            .collect();
        let edited = Arc::new(edited);
        assert_eq!(
            committed(Some(&edited), put(Expect::Protocol(Some(100))))
                .writers
                .len(),
            WRITERS
        );
        let next = committed(
            Some(&edited),
            with_id(Expect::Protocol(Some(100)), "new", 1),
        );
        assert_eq!(next.writers.len(), WRITERS);
        assert_eq!(next.writers.last().unwrap().writer, "new");
    }
}
