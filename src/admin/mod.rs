//! The operator's commands: `blobs check`, `backup`, `restore`, `migrate`, `revoke` and
//! `usage`. They read the same configuration as the server (`STORE`, `STORAGE`, `S3_*`), and
//! act on the store it names. They stand on storage, `auth` and the Blob Service's records,
//! and never import the server, its state or a transport.
//!
//! A file store is locked by the server that runs on it (`<STORAGE>/.lock`, an advisory lock
//! the kernel drops with the process). Commands that must not run beside a server (`check
//! --repair`, `restore`, `migrate` into the files) take that lock, so a server cannot start
//! under them either, and refuse while a server holds it. An object store shared by several
//! nodes has no such lock: stop every node before `restore`, or before the last `migrate`
//! pass.

mod check;
mod copy;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::revocation::{self, ListObject};
use crate::clock::now_unix;
use crate::config::{Config, ConfigError, StoreKind};
use crate::names::Bucket;
use crate::storage::objects::Objects;
use crate::storage::quota;
use crate::storage::store::FsStore;

use crate::storage::layout::{Kind, Tree, TreeError, classify};
pub use check::Report;
pub use copy::Copied;

/// What the operator asked for.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Walk the configured store and report what is wrong: blob files that do not parse or
    /// whose version is out of range, content that no longer matches its hash, Blob Service
    /// records that do not parse, name no valid handle or hash, or name missing content,
    /// markers without content, the original's blob files under refs not in lower case and
    /// files moved aside when two spellings of one ref conflicted, leftovers of interrupted
    /// writes. Exits 1 when a problem remains.
    Check {
        /// Repair what is safe (the server must be stopped): replay the journal, remove temp
        /// files, resolve the original's backups, move the original's blob files to their
        /// lower-case names, remove markers whose content is gone.
        #[arg(long)]
        repair: bool,
    },
    /// Copy the configured store into the directory DEST, while the server runs, and verify
    /// the copy. Run again on the same DEST to bring it up to date.
    Backup {
        /// A directory: the backup is a file store a server can run on.
        dest: PathBuf,
    },
    /// Bring a backup back into the configured store, which must hold no data yet (stop the
    /// server first).
    Restore {
        /// A directory written by `blobs backup`.
        source: PathBuf,
    },
    /// Copy every blob, content and Blob Service record from one kind of store into the other:
    /// `--to s3` from `STORAGE` into the object store `S3_*` names, `--to fs` the other way.
    /// Resumable: run it again to copy what changed since.
    Migrate {
        /// The store to copy into; the configured store of the other kind is the source.
        #[arg(long, value_enum)]
        to: StoreKind,
    },
    /// Revoke tokens: running servers refuse them within 2 s and close their connections.
    Revoke(RevokeArgs),
    /// Show what buckets store, one line each: bytes of versioned blobs, content and Blob
    /// Service records, the record count, and the quota that applies. Reads a listing only;
    /// safe beside a running server.
    Usage {
        /// Only this bucket (shown even when it stores nothing).
        #[arg(long)]
        bucket: Option<String>,
    },
}

/// Which tokens to revoke.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = true)]
pub struct RevokeArgs {
    /// Revoke tokens of this bucket issued before `--before`.
    #[arg(long, requires = "before")]
    bucket: Option<String>,
    /// The cut-off: an RFC 3339 time (`2026-11-30T12:00:00Z`) or `now`. `iat` counts whole
    /// seconds, so the second of the cut-off is revoked too.
    #[arg(long, requires = "bucket")]
    before: Option<String>,
    /// Revoke the one token with this id (`jti`, printed by `token`).
    #[arg(long)]
    jti: Option<String>,
}

/// Why a command could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Revocation(#[from] revocation::Error),
    #[error(transparent)]
    Objects(#[from] crate::storage::objects::OpenError),
    #[error("{0}")]
    Refused(String),
    #[error("cannot open the storage directory {path}: {source}")]
    Storage {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `command` on the store `config` names. `Ok(false)`: it ran, and found or left
/// problems (exit 1).
pub async fn run(command: Command, config: &Config) -> Result<bool, AdminError> {
    match command {
        Command::Check { repair } => check(config, repair).await,
        Command::Backup { dest } => backup(config, &dest).await,
        Command::Restore { source } => restore(config, &source).await,
        Command::Migrate { to } => migrate(config, to).await,
        Command::Revoke(args) => revoke(config, args).await.map(|()| true),
        Command::Usage { bucket } => usage(config, bucket.as_deref()).await.map(|()| true),
    }
}

/// The store of `kind`, with the settings of `config`.
async fn tree(config: &Config, kind: StoreKind) -> Result<Tree, AdminError> {
    Ok(Tree::configured(config, kind).await?)
}

/// The file store at `root` locked, then opened as a server opens it (the journal replayed,
/// temp files removed, the original's backups resolved); the lock is held until the file is
/// dropped. `None` while a server (or another command) holds it.
fn open_stopped(root: &Path) -> Result<Option<std::fs::File>, AdminError> {
    let storage_error = |source| AdminError::Storage {
        path: root.display().to_string(),
        source,
    };
    let Some(lock) = crate::storage::store::lock(root).map_err(storage_error)? else {
        return Ok(None);
    };
    FsStore::open(root).map_err(storage_error)?;
    Ok(Some(lock))
}

/// [`open_stopped`], or a refusal naming what to stop.
fn lock_stopped(root: &Path, doing: &str) -> Result<std::fs::File, AdminError> {
    open_stopped(root)?.ok_or_else(|| {
        AdminError::Refused(format!(
            "a server (or another command) is using {}: stop it before {doing}",
            root.display()
        ))
    })
}

/// Whether a server holds the file store at `root` now.
fn server_running(root: &Path) -> Result<bool, AdminError> {
    if !root.exists() {
        return Ok(false);
    }
    crate::storage::store::lock(root)
        .map(|held| held.is_none())
        .map_err(|source| AdminError::Storage {
            path: root.display().to_string(),
            source,
        })
}

async fn check(config: &Config, repair: bool) -> Result<bool, AdminError> {
    let tree = tree(config, config.store).await?;
    let mut repaired = Vec::new();
    let mut running = false;
    let _held = match (config.store, repair) {
        (StoreKind::Fs, true) => {
            // What opening the store repaired is the leftovers gone between these two looks.
            let leftovers = async || -> Result<Vec<String>, TreeError> {
                let entries = tree.list().await?;
                Ok(entries
                    .iter()
                    .filter_map(|e| check::leftover(&e.key, e.size))
                    .collect())
            };
            let before = leftovers().await?;
            let held = lock_stopped(&config.storage, "repairing it")?;
            let after = leftovers().await?;
            repaired.extend(
                before
                    .into_iter()
                    .filter(|p| !after.contains(p))
                    .map(|p| format!("{p}: repaired at open")),
            );
            Some(held)
        }
        (StoreKind::Fs, false) => {
            running = server_running(&config.storage)?;
            None
        }
        (StoreKind::S3, _) => None,
    };
    let mut report = check::check(&tree, repair).await?;
    report.repaired.splice(0..0, repaired);
    if running {
        // A running server's journal and temp files are its writes in flight.
        report
            .problems
            .retain(|p| !p.contains("journal writes") && !p.contains("temp file"));
        println!("a server is running on this storage: its journal and temp files are not checked");
    }
    println!("checked {} names in {}", report.checked, tree.describe());
    for line in &report.repaired {
        println!("repaired: {line}");
    }
    for line in &report.problems {
        println!("problem: {line}");
    }
    let clean = report.problems.is_empty();
    println!(
        "{}",
        if clean {
            "no problem found".to_owned()
        } else {
            format!("{} problems found", report.problems.len())
        }
    );
    Ok(clean)
}

/// Prints what a copy did, then checks the destination; whether both are clean.
async fn finish(what: &str, copied: &Copied, to: &Tree) -> Result<bool, AdminError> {
    println!(
        "{what}: {} names, {} written ({} MiB), {} already there",
        copied.total,
        copied.written,
        copied.bytes >> 20,
        copied.unchanged
    );
    if copied.vanished > 0 {
        println!(
            "left out {} Blob Service records the source removed meanwhile",
            copied.vanished
        );
    }
    for key in &copied.skipped {
        println!("skipped (not data of the layout): {key}");
    }
    for line in &copied.problems {
        println!("problem: {line}");
    }
    let verified = check::check(to, false).await?;
    for line in &verified.problems {
        println!("problem in the copy: {line}");
    }
    let clean = copied.problems.is_empty() && verified.problems.is_empty();
    if clean {
        println!("verified: {} names in {}", verified.checked, to.describe());
    }
    Ok(clean)
}

async fn backup(config: &Config, dest: &Path) -> Result<bool, AdminError> {
    let from = tree(config, config.store).await?;
    if config.store == StoreKind::Fs && same_dir(&config.storage, dest) {
        return Err(AdminError::Refused(
            "the backup's destination is the storage itself".to_owned(),
        ));
    }
    // No server may run on the backup while it is written.
    let _held = lock_stopped(dest, "writing a backup into it")?;
    let to = Tree::files(dest);
    let copied = copy::copy(&from, &to).await?;
    finish("backup", &copied, &to).await
}

async fn restore(config: &Config, source: &Path) -> Result<bool, AdminError> {
    if !source.is_dir() {
        return Err(AdminError::Refused(format!(
            "{} is not a backup directory",
            source.display()
        )));
    }
    let to = tree(config, config.store).await?;
    let _held = match config.store {
        StoreKind::Fs => Some(lock_stopped(&config.storage, "restoring into it")?),
        StoreKind::S3 => None,
    };
    if let Some(entry) = to
        .list()
        .await?
        .into_iter()
        .find(|e| !matches!(classify(&e.key), Kind::Internal))
    {
        return Err(AdminError::Refused(format!(
            "{} already holds data ({}): restore only into an empty store",
            to.describe(),
            entry.key
        )));
    }
    let from = Tree::files(source);
    let copied = copy::copy(&from, &to).await?;
    finish("restore", &copied, &to).await
}

async fn migrate(config: &Config, to_kind: StoreKind) -> Result<bool, AdminError> {
    let from_kind = match to_kind {
        StoreKind::Fs => StoreKind::S3,
        StoreKind::S3 => StoreKind::Fs,
    };
    let from = tree(config, from_kind).await?;
    let to = tree(config, to_kind).await?;
    let _held = match from_kind {
        StoreKind::Fs => {
            let held = open_stopped(&config.storage)?;
            if held.is_none() {
                println!(
                    "a server is running on {}: what it writes after this pass is not copied; \
                     stop it and run migrate again to finish",
                    config.storage.display()
                );
            }
            held
        }
        StoreKind::S3 => Some(lock_stopped(&config.storage, "migrating into it")?),
    };
    let copied = copy::copy(&from, &to).await?;
    finish(
        &format!("migrate from {} to {}", from.describe(), to.describe()),
        &copied,
        &to,
    )
    .await
}

async fn revoke(config: &Config, args: RevokeArgs) -> Result<(), AdminError> {
    // Every argument is checked before anything is written.
    if args.jti.as_deref().is_some_and(|id| id.trim().is_empty()) {
        return Err(AdminError::Refused("--jti names no token".to_owned()));
    }
    let bucket_cut = match (args.bucket, args.before) {
        (Some(bucket), Some(before)) => {
            let bucket = Bucket::parse(&bucket)
                .ok_or_else(|| AdminError::Refused(format!("invalid bucket name {bucket:?}")))?;
            Some((bucket, cut_off(&before)?))
        }
        _ => None,
    };
    let place = ListObject::new(Objects::configured(config, config.store, false).await?);
    if let Some(id) = args.jti {
        let now = now_unix();
        place
            .update(move |list| list.revoke_token(&id, now))
            .await?;
        println!("revoked the token with this id");
    }
    if let Some((bucket, cut)) = bucket_cut {
        let name = bucket.clone();
        place
            .update(move |list| list.revoke_bucket(&name, cut))
            .await?;
        // A token minted from now on has `iat` at or after the cut-off: wait for its second.
        let wait = Duration::from_secs(cut).saturating_sub(since_epoch());
        tokio::time::sleep(wait).await;
        println!(
            "revoked every token of bucket {bucket} issued before {}",
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(cut))
        );
    }
    println!(
        "running servers apply it within {} s",
        revocation::POLL.as_secs() * 2
    );
    Ok(())
}

async fn usage(config: &Config, bucket: Option<&str>) -> Result<(), AdminError> {
    let tree = tree(config, config.store).await?;
    let limits = crate::storage::quota::Limits::from_config(config);
    let buckets = match bucket {
        Some(name) => {
            let bucket = Bucket::parse(name)
                .ok_or_else(|| AdminError::Refused(format!("invalid bucket name {name:?}")))?;
            let usage = quota::measure_bucket(&tree, &bucket).await?;
            std::collections::BTreeMap::from([(bucket, usage)])
        }
        None => quota::measure(&tree).await?,
    };
    for (bucket, usage) in &buckets {
        println!("{}", usage_line(bucket, usage, limits.of(bucket)));
    }
    if bucket.is_none() {
        println!("{} buckets in {}", buckets.len(), tree.describe());
    }
    Ok(())
}

/// One bucket's line of `blobs usage`: `name=value` pairs, sizes in bytes, 0 for no limit.
fn usage_line(bucket: &Bucket, usage: &quota::Usage, limit: quota::Limit) -> String {
    format!(
        "bucket={bucket} blobs={} content={} record_bytes={} records={} total={} quota_bytes={} quota_records={}",
        usage.blobs,
        usage.content,
        usage.record_bytes,
        usage.records,
        usage.bytes(),
        limit.bytes,
        limit.records,
    )
}

/// A cut-off in whole seconds, rounded up: `now`, or an RFC 3339 time.
/// The cut-off `--before` names, in whole seconds (rounded up). A time still to come is
/// refused: it would also revoke every token minted until then, which no command could undo
/// but an edit of the list.
fn cut_off(text: &str) -> Result<u64, AdminError> {
    let now = since_epoch();
    let at = if text == "now" {
        now
    } else {
        humantime::parse_rfc3339_weak(text)
            .map_err(|e| {
                AdminError::Refused(format!(
                    "--before {text:?}: {e} (use `now` or a time like 2026-11-30T12:00:00Z)"
                ))
            })?
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    };
    if at > now {
        return Err(AdminError::Refused(format!(
            "--before {text:?} is still to come: it would revoke the tokens minted until then too (use `now` or a past time)"
        )));
    }
    Ok(at.as_secs() + u64::from(at.subsec_nanos() > 0))
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Whether two paths name one directory (either may not exist yet).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_offs_round_up_to_the_second() {
        assert_eq!(cut_off("2026-11-30T12:00:00Z").unwrap(), 1_796_040_000);
        assert_eq!(cut_off("2026-11-30T12:00:00.250Z").unwrap(), 1_796_040_001);
        assert!(cut_off("2999-01-01T00:00:00Z").is_err(), "a time to come");
        let now = cut_off("now").unwrap();
        assert!((now_unix()..=now_unix() + 1).contains(&now));
        assert!(cut_off("yesterday").is_err());
    }
}
