//! `blobs check`: walks a store and reports what is wrong with it.
//!
//! Found: blob files that do not parse or whose version is out of range, content whose bytes
//! no longer hash to their name, Blob Service records that do not parse, whose handle or hash
//! is not a canonical name, or that name missing content, markers without content, temp files
//! and the original's backups left behind, blob files of the original under refs not in lower
//! case, and the files moved aside when two spellings of one ref conflicted, journal writes not
//! yet in their files, names outside the layout.
//!
//! `--repair` does only what cannot lose an acknowledged write, and only on a file store no
//! server is running on: it opens the store as a server would at start (temp files removed,
//! the original's backups resolved, the journal written to the files), and removes markers
//! whose content is gone. Everything else is data a person has to look at: it is reported and
//! left alone.

use std::collections::HashSet;

use super::copy::invalid;
use crate::blob_service::Record;
use crate::storage::journal::HEADER_LEN;
use crate::storage::layout::{Entry, Kind, Tree, TreeError, classify, key_of};

/// What is wrong with a name that an interrupted write or the original left behind: a temp
/// file, a backup, journal writes not yet in their files. Opening the store repairs these.
pub fn leftover(key: &str, size: u64) -> Option<String> {
    match classify(key) {
        Kind::Temp => Some(format!("{key}: temp file left by an interrupted write")),
        Kind::Backup => Some(format!("{key}: backup left by the original")),
        Kind::CasedBlob(bucket, r) => Some(format!(
            "{key}: blob file of the original under a ref not in lower case; starting the \
             server or `check --repair` moves it to {}",
            key_of(&Kind::Blob(bucket, r)).expect("a blob has a name")
        )),
        Kind::Internal if key.starts_with(".journal/") && size > HEADER_LEN => Some(format!(
            "{key}: journal writes not yet checkpointed to their files (a server is running, \
             or stopped without its shutdown); starting the server or `check --repair` writes \
             them"
        )),
        _ => None,
    }
}

/// What a check found, and what it repaired.
#[derive(Debug, Default)]
pub struct Report {
    /// Names of the layout checked.
    pub checked: u64,
    pub problems: Vec<String>,
    pub repaired: Vec<String>,
}

/// Checks every name of `tree`. With `repair` on a file store (which the caller holds
/// stopped, after the start-up repair), removes temp files and markers without content.
pub async fn check(tree: &Tree, repair: bool) -> Result<Report, TreeError> {
    let mut report = Report::default();
    let entries = tree.list().await?;
    let keys: HashSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    for Entry { key, size } in &entries {
        let kind = classify(key);
        match &kind {
            // Only a stopped store is repaired: its temp files have no writer left.
            Kind::Temp if repair && tree.is_files() => {
                tree.remove(key).await?;
                report.repaired.push(format!(
                    "{key}: removed a temp file left by an interrupted write"
                ));
            }
            Kind::Temp | Kind::Backup | Kind::CasedBlob(..) | Kind::Internal => {
                report.problems.extend(leftover(key, *size));
            }
            Kind::CaseConflict => report.problems.push(format!(
                "{key}: moved aside at start because another spelling of its ref held a newer \
                 version (now the blob); compare the two and remove this one"
            )),
            Kind::Unknown => report
                .problems
                .push(format!("{key}: not a name of the layout")),
            Kind::Marker(bucket, hash) => {
                report.checked += 1;
                let content = key_of(&Kind::Content(bucket.clone(), hash.clone()))
                    .expect("content has a name");
                if !keys.contains(content.as_str()) {
                    if repair && tree.is_files() {
                        tree.remove(key).await?;
                        report
                            .repaired
                            .push(format!("{key}: removed the marker of missing content"));
                    } else {
                        report
                            .problems
                            .push(format!("{key}: marker without content"));
                    }
                }
            }
            _ => {
                report.checked += 1;
                let Some(bytes) = tree.read(key).await? else {
                    continue;
                };
                if let Some(problem) = invalid(&kind, &bytes) {
                    report.problems.push(format!("{key}: {problem}"));
                    continue;
                }
                if let Kind::Record(bucket, _) = &kind
                    && let Some(hash) = serde_json::from_slice::<Record>(&bytes)
                        .ok()
                        .and_then(|r| r.content_hash())
                {
                    let content =
                        key_of(&Kind::Content(bucket.clone(), hash)).expect("content has a name");
                    if !keys.contains(content.as_str()) {
                        report
                            .problems
                            .push(format!("{key}: names content {content}, which is missing"));
                    }
                }
            }
        }
    }
    if repair {
        tree.sync().await?;
    }
    Ok(report)
}
