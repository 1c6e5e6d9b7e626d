//! The write-ahead journal of the file store: group commit.
//!
//! A write is appended to the journal and acknowledged once the journal is synced; one
//! `fdatasync` covers every record that arrived while the previous one ran. One thread owns the
//! journal file, takes every record waiting for it, writes them with one `write` and syncs once,
//! so under load a sync covers as many writes as there are writers.
//!
//! The journal is a directory of segment files, `<sequence>.wal`, numbered upwards. A
//! checkpoint starts a new segment ([`Journal::rotate`]); once what the older ones hold is
//! durable elsewhere they are removed ([`Journal::remove_before`]).
//!
//! # Format (version 1)
//!
//! A segment starts with the 8 bytes `BLOBSWAL` and a format version (`u32`, little-endian).
//! Then records, each:
//!
//! | bytes | what |
//! |---|---|
//! | 4 | payload length `n`, `u32` little-endian (1 ..= [`MAX_RECORD`]) |
//! | 4 | CRC-32C of the length bytes and the payload, `u32` little-endian |
//! | n | payload |
//!
//! Reading stops at the first record that is incomplete, has an impossible length or fails its
//! checksum: that is the torn tail of a write that was never acknowledged (records are only
//! acknowledged once synced, and a segment is only ever appended to), and it is never applied.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::storage::durable;

/// First bytes of every segment.
const MAGIC: &[u8; 8] = b"BLOBSWAL";
/// Format version written after [`MAGIC`].
const FORMAT_VERSION: u32 = 1;
/// Bytes of a segment before its first record: a segment this long holds no write.
pub const HEADER_LEN: u64 = 12;
/// Bytes before each payload: its length and checksum.
const RECORD_HEADER_LEN: usize = 8;
/// Largest payload: larger lengths are read as a torn record.
pub const MAX_RECORD: usize = 256 * 1024 * 1024;
/// Bytes one group commit writes at most before it syncs (records past it wait for the next).
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
const SEGMENT_SUFFIX: &str = ".wal";

/// What the journal thread is asked to do.
enum Request {
    /// Append a record and answer once it is durable.
    Append(Vec<u8>, oneshot::Sender<io::Result<()>>),
    /// Start a new segment; answers with its sequence number.
    Rotate(oneshot::Sender<io::Result<u64>>),
}

/// The records found in the journal at start-up, to replay.
pub struct Replay {
    /// Payloads of every complete record, oldest first.
    pub records: Vec<Vec<u8>>,
    /// The segment the journal now appends to: the records above are in the ones below it,
    /// which `remove_before(next)` removes once the records are durable elsewhere.
    pub next: u64,
    /// Bytes of torn tails that were skipped.
    pub torn_bytes: u64,
}

/// A handle on the journal; appends from any task. Clones share the one journal thread.
#[derive(Clone)]
pub struct Journal {
    dir: PathBuf,
    requests: mpsc::Sender<Request>,
}

impl Journal {
    /// Reads what the segments in `dir` hold (creating `dir`), then starts a new segment after
    /// them, which the journal thread appends to. The old segments stay until
    /// [`Journal::remove_before`].
    pub fn open(dir: &Path) -> io::Result<(Self, Replay)> {
        fs::create_dir_all(dir)?;
        let mut records = Vec::new();
        let mut torn_bytes = 0;
        let mut last = 0;
        for (sequence, path) in segments(dir)? {
            let read = read_segment(&path)?;
            if read.torn_bytes > 0 {
                tracing::warn!(
                    path = %path.display(),
                    bytes = read.torn_bytes,
                    "journal segment ends in a torn record (a write that was never acknowledged); skipped"
                );
            }
            torn_bytes += read.torn_bytes;
            records.extend(read.records);
            last = sequence;
        }
        let next = last + 1;
        let file = create_segment(dir, next)?;
        let (requests, receiver) = mpsc::channel();
        let writer = Writer {
            dir: dir.to_owned(),
            file,
            sequence: next,
            len: HEADER_LEN,
            broken: false,
            named: false,
        };
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer.run(receiver))?;
        let journal = Self {
            dir: dir.to_owned(),
            requests,
        };
        Ok((
            journal,
            Replay {
                records,
                next,
                torn_bytes,
            },
        ))
    }

    /// Appends `payload` (at most [`MAX_RECORD`] bytes); resolves once it is on stable storage.
    pub async fn append(&self, payload: Vec<u8>) -> io::Result<()> {
        if payload.is_empty() || payload.len() > MAX_RECORD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "journal record size out of range",
            ));
        }
        let (done, answer) = oneshot::channel();
        self.ask(Request::Append(payload, done), answer).await
    }

    /// Starts a new segment: every record appended before this returns is in an older one.
    /// Returns the new segment's sequence number.
    pub async fn rotate(&self) -> io::Result<u64> {
        let (done, answer) = oneshot::channel();
        self.ask(Request::Rotate(done), answer).await
    }

    async fn ask<T>(
        &self,
        request: Request,
        answer: oneshot::Receiver<io::Result<T>>,
    ) -> io::Result<T> {
        let gone = || io::Error::other("the journal thread has stopped");
        self.requests.send(request).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Durably removes the segments numbered below `sequence` (their records are durable
    /// elsewhere).
    pub fn remove_before(&self, sequence: u64) -> io::Result<()> {
        let mut removed = false;
        for (number, path) in segments(&self.dir)? {
            if number < sequence {
                fs::remove_file(&path)?;
                removed = true;
            }
        }
        if removed {
            durable::sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// The journal thread's state.
struct Writer {
    dir: PathBuf,
    file: File,
    sequence: u64,
    /// Bytes of the segment known good: a failed append is cut back to here.
    len: u64,
    /// The segment's end is in doubt (a failed sync, or a failed cut after a failed write):
    /// the next batch starts a new segment, so nothing acknowledged follows bytes that might
    /// hide it. What the doubtful end holds was never acknowledged.
    broken: bool,
    /// Whether the segment's name is durable (its directory synced since it was created).
    named: bool,
}

impl Writer {
    fn run(mut self, requests: mpsc::Receiver<Request>) {
        let mut batch = Vec::new();
        let mut waiting = Vec::new();
        // Blocks for the first request, then takes every request already waiting.
        while let Ok(first) = requests.recv() {
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Append(payload, done) => {
                        encode(&payload, &mut batch);
                        waiting.push(done);
                        if batch.len() < MAX_BATCH_BYTES {
                            next = requests.try_recv().ok();
                        }
                    }
                    Request::Rotate(done) => {
                        // Records before the rotation belong to the old segment.
                        self.write_batch(&mut batch, &mut waiting);
                        done.send(self.rotate()).ok();
                        next = requests.try_recv().ok();
                    }
                }
            }
            self.write_batch(&mut batch, &mut waiting);
        }
    }

    /// Writes `batch` with one write and one sync, and answers its writers.
    fn write_batch(
        &mut self,
        batch: &mut Vec<u8>,
        waiting: &mut Vec<oneshot::Sender<io::Result<()>>>,
    ) {
        if waiting.is_empty() {
            return;
        }
        let result = self.write(batch);
        if let Err(e) = &result {
            tracing::error!(records = waiting.len(), "journal append failed: {e}");
        }
        for done in waiting.drain(..) {
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            done.send(answer).ok();
        }
        batch.clear();
        if batch.capacity() > MAX_BATCH_BYTES {
            batch.shrink_to(MAX_BATCH_BYTES);
        }
    }

    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        if self.broken {
            self.rotate()?;
        }
        if let Err(e) = self.file.write_all(batch) {
            // Nothing of this batch was acknowledged: cut it off, so the next batch follows the
            // last good record (a torn record in the middle would hide everything after it).
            self.broken = self.cut().is_err();
            return Err(e);
        }
        let synced = self.file.sync_data().and_then(|()| {
            if !self.named {
                durable::sync_dir(&self.dir)?;
                self.named = true;
            }
            Ok(())
        });
        if let Err(e) = synced {
            // After a failed sync the kernel may have dropped the dirty pages: what the file
            // holds is unknown, and a later sync of it would say nothing about them.
            self.broken = true;
            return Err(e);
        }
        self.len += batch.len() as u64;
        Ok(())
    }

    fn cut(&mut self) -> io::Result<()> {
        use std::io::Seek as _;
        self.file.set_len(self.len)?;
        self.file.seek(io::SeekFrom::Start(self.len))?;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<u64> {
        let sequence = self.sequence + 1;
        self.file = create_segment(&self.dir, sequence)?;
        self.sequence = sequence;
        self.len = HEADER_LEN;
        self.broken = false;
        self.named = false;
        Ok(sequence)
    }
}

/// Appends one record (header and payload) to `out`.
fn encode(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The complete records of every segment in `dir`, oldest first, read without opening the
/// journal: for a reader beside the process that appends (a backup beside a running server).
/// A segment removed while it is read (a checkpoint trimmed it) is skipped: what it held is in
/// the blob files by then. A torn tail is what is being appended, not yet acknowledged.
pub fn read_all(dir: &Path) -> io::Result<Vec<Vec<u8>>> {
    let segments = match segments(dir) {
        Ok(segments) => segments,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut records = Vec::new();
    for (_, path) in segments {
        match read_segment(&path) {
            Ok(segment) => records.extend(segment.records),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(records)
}

/// The segments in `dir`, by sequence number.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let sequence = name
            .to_str()
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(sequence) = sequence {
            found.push((sequence, entry.path()));
        }
    }
    found.sort_unstable();
    Ok(found)
}

fn segment_path(dir: &Path, sequence: u64) -> PathBuf {
    dir.join(format!("{sequence:020}{SEGMENT_SUFFIX}"))
}

/// Creates segment `sequence` with its header. Nothing is synced: the first commit into it
/// syncs the header with its records, and the directory for its name (see `Writer::named`), so
/// starting a segment never makes a writer wait for the disk.
fn create_segment(dir: &Path, sequence: u64) -> io::Result<File> {
    // Truncated, not created new: a creation that failed half-way (a full disk) is retried
    // under the same number. Numbers only grow, so nothing else ever has this one.
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(segment_path(dir, sequence))?;
    let mut header = Vec::with_capacity(HEADER_LEN as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.write_all(&header)?;
    Ok(file)
}

/// What one segment holds.
struct Segment {
    records: Vec<Vec<u8>>,
    torn_bytes: u64,
}

fn read_segment(path: &Path) -> io::Result<Segment> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    if bytes.len() < HEADER_LEN as usize || &bytes[..8] != MAGIC {
        // Created, but its header never reached the disk: nothing in it was acknowledged
        // (the first commit syncs the header with its records).
        return Ok(Segment {
            records: Vec::new(),
            torn_bytes: bytes.len() as u64,
        });
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a journal segment of format {FORMAT_VERSION}",
                path.display()
            ),
        ));
    }
    let (records, good) = decode(&bytes[HEADER_LEN as usize..]);
    Ok(Segment {
        records,
        torn_bytes: (bytes.len() - HEADER_LEN as usize - good) as u64,
    })
}

/// The complete records at the start of `bytes`, and how many bytes they take.
fn decode(bytes: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + RECORD_HEADER_LEN) {
        let len_bytes: [u8; 4] = header[..4].try_into().expect("4 bytes");
        let len = u32::from_le_bytes(len_bytes) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_RECORD {
            break;
        }
        let start = at + RECORD_HEADER_LEN;
        let Some(payload) = bytes.get(start..start + len) else {
            break;
        };
        if crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload) != crc {
            break;
        }
        records.push(payload.to_vec());
        at = start + len;
    }
    (records, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode(p, &mut out);
        }
        out
    }

    #[test]
    fn every_cut_keeps_exactly_the_whole_records_before_it() {
        let payloads: [&[u8]; 3] = [b"first", b"second record", b"x"];
        let bytes = encoded(&payloads);
        let ends: Vec<usize> = payloads
            .iter()
            .scan(0, |at, p| {
                *at += RECORD_HEADER_LEN + p.len();
                Some(*at)
            })
            .collect();
        for cut in 0..=bytes.len() {
            let (records, good) = decode(&bytes[..cut]);
            let whole = ends.iter().filter(|&&end| end <= cut).count();
            assert_eq!(records.len(), whole, "cut at {cut}");
            assert_eq!(good, if whole == 0 { 0 } else { ends[whole - 1] });
        }
    }

    #[test]
    fn a_flipped_bit_ends_the_journal_there() {
        let bytes = encoded(&[b"first", b"second", b"third"]);
        for at in RECORD_HEADER_LEN + 5..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            let (records, _) = decode(&damaged);
            assert!(records.len() < 3, "damage at {at} went unseen");
            assert_eq!(records[0], b"first");
        }
    }

    #[tokio::test]
    async fn appended_records_are_replayed_in_order_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, replay) = Journal::open(dir.path()).unwrap();
        assert!(replay.records.is_empty());
        let appends = (0..100u32).map(|i| journal.append(i.to_le_bytes().to_vec()));
        for result in futures_util::future::join_all(appends).await {
            result.unwrap();
        }
        let second = journal.rotate().await.unwrap();
        journal.append(b"after".to_vec()).await.unwrap();
        drop(journal);

        let (journal, replay) = Journal::open(dir.path()).unwrap();
        assert_eq!(replay.records.len(), 101);
        assert_eq!(replay.records[0], 0u32.to_le_bytes());
        assert_eq!(replay.records[100], b"after");
        assert_eq!(replay.next, second + 1);
        journal.remove_before(replay.next).unwrap();
        drop(journal);
        let (_, replay) = Journal::open(dir.path()).unwrap();
        assert!(replay.records.is_empty());
    }
}
