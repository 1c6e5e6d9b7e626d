//! Copying a store into another, which `backup`, `restore` and `migrate` all are: every
//! versioned blob, every content with its marker, every Blob Service record and the revoked
//! tokens, each checked before it is written and read back after.
//!
//! A copy is idempotent and resumable: what the destination already holds unchanged is left as
//! it is, so running it again after an interruption copies only what is missing or changed. A
//! destination blob at a higher version than the source's (written there since) is never
//! overwritten: it is reported as a conflict. The revoked tokens of both sides are merged, so
//! no copy ever brings a revoked token back.
//!
//! Blob files the original stored under upper- or mixed-case refs are copied to their
//! lower-case names, as opening the file store moves them; when several spellings of one ref
//! exist, the newest intact one is copied and the others are reported, not copied.
//!
//! Each name is copied whole (one content is held in memory at a time, at most
//! `CONTENT_MAX_BYTES`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::auth::revocation::RevocationList;
use crate::blob_service::{Record, record_store};
use crate::names::{Bucket, ContentHash, Ref};
use crate::storage::content::marker_owns;
use crate::storage::layout::{Kind, Tree, TreeError, classify, key_of};
use crate::storage::store::{self, Blob};

/// How often a long copy says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// What a copy did.
#[derive(Debug, Default)]
pub struct Copied {
    /// Names of the layout the source holds.
    pub total: u64,
    /// Names written to the destination.
    pub written: u64,
    /// Names the destination already held as the source does.
    pub unchanged: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Names not copied, and why: corrupt in the source, or newer in the destination.
    pub problems: Vec<String>,
    /// Names outside the layout, or leftovers (temp and backup files), not copied.
    pub skipped: Vec<String>,
    /// Blob Service records left out because the source removed them (with their content)
    /// while the copy ran.
    pub vanished: u64,
}

/// Copies every name of the layout from `from` into `to`, printing progress to stderr.
pub async fn copy(from: &Tree, to: &Tree) -> Result<Copied, TreeError> {
    let mut copied = Copied::default();
    // Each name with the source's key it is read from: a blob's may be another spelling.
    let mut names = Vec::new();
    let mut spellings: BTreeMap<(Bucket, Ref), Vec<String>> = BTreeMap::new();
    for entry in from.list().await? {
        match classify(&entry.key) {
            Kind::Internal => {}
            Kind::Temp | Kind::Backup | Kind::CaseConflict | Kind::Unknown => {
                copied.skipped.push(entry.key)
            }
            Kind::Blob(bucket, r) | Kind::CasedBlob(bucket, r) => {
                spellings.entry((bucket, r)).or_default().push(entry.key)
            }
            kind => names.push((entry.key, kind)),
        }
    }
    for ((bucket, r), keys) in spellings {
        let kind = Kind::Blob(bucket, r);
        if let Some(key) = spelling(from, &kind, keys, &mut copied).await? {
            names.push((key, kind));
        }
    }
    // Content before the records that name it, and before the markers that claim it.
    names.sort_by_key(|(_, kind)| match kind {
        Kind::Content(..) => 0,
        Kind::Marker(..) => 1,
        Kind::Blob(..) => 2,
        Kind::Record(..) => 3,
        _ => 4,
    });
    copied.total = names.len() as u64;
    let started = Instant::now();
    let mut reported = started;
    let mut records = Vec::new();
    for (done, (source_key, kind)) in names.iter().enumerate() {
        if reported.elapsed() >= PROGRESS_EVERY {
            reported = Instant::now();
            eprintln!(
                "  {done} of {} names, {} written, {} MiB",
                copied.total,
                copied.written,
                copied.bytes >> 20
            );
        }
        copy_one(from, to, source_key, kind, &mut copied).await?;
        if let Kind::Record(..) = kind {
            records.push(kind.clone());
        }
    }
    // Content stored while the listing ran may be missing for a record listed after it.
    for record in records {
        complete_record(from, to, &record, &mut copied).await?;
    }
    to.sync().await?;
    Ok(copied)
}

/// Of the source's files of one blob (`keys`: its lower-case name and the other spellings the
/// original left), the one to copy: the only one, or the newest intact one
/// (as opening the file store chooses); the others are reported.
async fn spelling(
    from: &Tree,
    kind: &Kind,
    mut keys: Vec<String>,
    copied: &mut Copied,
) -> Result<Option<String>, TreeError> {
    if keys.len() == 1 {
        return Ok(keys.pop());
    }
    let name = key_of(kind).expect("a blob has a name");
    // The lower-case name first: it wins a full tie.
    keys.sort_by_key(|key| *key != name);
    let mut found = Vec::new();
    for key in keys {
        if let Some(bytes) = from.read(&key).await? {
            found.push((key, store::decode(&bytes).ok()));
        }
    }
    if found.is_empty() {
        return Ok(None);
    }
    let blobs: Vec<Option<Blob>> = found.iter().map(|(_, blob)| blob.clone()).collect();
    let keep = store::preferred(&blobs);
    let kept = found[keep].0.clone();
    for (key, blob) in &found {
        if *key != kept {
            let version = blob
                .as_ref()
                .map_or("damaged".to_owned(), |b| format!("version {}", b.version));
            copied.problems.push(format!(
                "{key}: another spelling of {name} ({version}); {kept} was copied as {name}, \
                 this one was not"
            ));
        }
    }
    Ok(Some(kept))
}

/// Copies one name (read from the source under `source_key`), unless the destination already
/// has it (or something newer).
async fn copy_one(
    from: &Tree,
    to: &Tree,
    source_key: &str,
    kind: &Kind,
    copied: &mut Copied,
) -> Result<(), TreeError> {
    let key = key_of(kind).expect("only data names are copied");
    // Gone since the listing: removed in the source meanwhile, as a running server may.
    let Some(bytes) = from.read(source_key).await? else {
        return Ok(());
    };
    let bytes = match kind {
        // A marker says the same in both backends, in the form each reads.
        Kind::Marker(..) if to.is_files() && !from.is_files() => {
            if !marker_owns(&bytes) {
                return Ok(());
            }
            Bytes::new()
        }
        _ => bytes,
    };
    if let Some(problem) = invalid(kind, &bytes) {
        copied
            .problems
            .push(format!("{source_key}: {problem} (not copied)"));
        return Ok(());
    }
    let current = to.read(&key).await?;
    let bytes = match (kind, current) {
        (_, Some(current)) if current == bytes => {
            copied.unchanged += 1;
            return Ok(());
        }
        (Kind::Content(_, hash), Some(current)) if hash_of(&current) == *hash => {
            copied.unchanged += 1;
            return Ok(());
        }
        (Kind::Blob(..), Some(current)) => {
            let ours = version(&bytes);
            match serde_json::from_slice::<Blob>(&current) {
                Ok(theirs) if theirs.version >= ours => {
                    copied.problems.push(format!(
                        "{key}: the destination holds version {} and the source {ours}; \
                         kept the destination's",
                        theirs.version
                    ));
                    return Ok(());
                }
                _ => bytes,
            }
        }
        (Kind::Revocations, Some(current)) => {
            let Ok(mut merged) = serde_json::from_slice::<RevocationList>(&current) else {
                copied.problems.push(format!(
                    "{key}: the destination's list does not parse; left as it is"
                ));
                return Ok(());
            };
            merged.merge(serde_json::from_slice(&bytes).expect("checked by `invalid`"));
            let merged = Bytes::from(merged.to_json());
            if merged == current {
                copied.unchanged += 1;
                return Ok(());
            }
            merged
        }
        _ => bytes,
    };
    to.write(&key, bytes.clone()).await?;
    // Read back: what the destination serves must be what was meant.
    if to.read(&key).await?.as_ref() != Some(&bytes) {
        copied
            .problems
            .push(format!("{key}: reads back differently after writing"));
        return Ok(());
    }
    copied.written += 1;
    copied.bytes += bytes.len() as u64;
    Ok(())
}

/// Makes sure the content a copied record names is in the destination: copied now if the
/// listing missed it; if the source no longer has it either, the record was removed with it
/// by the retention sweep, and leaves the destination too.
async fn complete_record(
    from: &Tree,
    to: &Tree,
    record: &Kind,
    copied: &mut Copied,
) -> Result<(), TreeError> {
    let Kind::Record(bucket, _) = record else {
        return Ok(());
    };
    let key = key_of(record).expect("a record has a name");
    let Some(hash) = to
        .read(&key)
        .await?
        .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
        .and_then(|r| r.content_hash())
    else {
        return Ok(());
    };
    let content = Kind::Content(bucket.clone(), hash);
    let content_key = key_of(&content).expect("content has a name");
    if to.read(&content_key).await?.is_some() {
        return Ok(());
    }
    if from.read(&content_key).await?.is_some() {
        return copy_one(from, to, &content_key, &content, copied).await;
    }
    if from.read(&key).await?.is_none() {
        to.remove(&key).await?;
        copied.vanished += 1;
    } else {
        copied.problems.push(format!(
            "{key}: names content {content_key}, which is missing"
        ));
    }
    Ok(())
}

/// Why the bytes of `kind` cannot be what they claim to be, if they cannot.
pub fn invalid(kind: &Kind, bytes: &[u8]) -> Option<String> {
    match kind {
        Kind::Content(_, hash) => {
            let actual = hash_of(bytes);
            (actual != *hash).then(|| format!("content hashes to {actual}, not to its name"))
        }
        Kind::Blob(..) | Kind::CasedBlob(..) => {
            store::damage(bytes).map(|reason| format!("blob file is damaged: {reason}"))
        }
        Kind::Record(_, handle) => record_store::decode(bytes, handle.as_str())
            .err()
            .map(|reason| format!("Blob Service record is damaged: {reason}")),
        Kind::Revocations => serde_json::from_slice::<RevocationList>(bytes)
            .err()
            .map(|e| format!("revocation list does not parse: {e}")),
        _ => None,
    }
}

fn hash_of(bytes: &[u8]) -> ContentHash {
    ContentHash::from_blake3(&blake3::hash(bytes))
}

/// The version of blob bytes already checked by [`invalid`].
fn version(bytes: &[u8]) -> u64 {
    serde_json::from_slice::<Blob>(bytes).map_or(0, |blob| blob.version)
}
