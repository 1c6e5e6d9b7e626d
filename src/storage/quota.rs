//! What a bucket may store, what it stores now, and the checks a write passes before it touches
//! storage: the per-bucket quota (bytes of versioned blobs, content and Blob Service records
//! together, and a count of records) and the free-space reserve of the local file system.
//!
//! **Usage.** A bucket's usage is learned once per server run, on the first write (or delete)
//! of that bucket, by listing its files or objects ([`measure_bucket`]); from then on every
//! write and delete this node makes adds its change ([`Account::apply`]). Nothing here walks
//! the disk or asks the object store on a write after that: an admission is a lock of the
//! bucket's counters and, at most once a second or per [`DISK_REFRESH_BYTES`], one `statvfs`.
//!
//! **Admission.** A write first takes a [`Hold`]: bytes (and records) reserved against the
//! quota while it runs, so writes running at once cannot together pass it; a body that arrives
//! in chunks reserves them as they come ([`Hold::grow`]) and is refused at the first chunk past
//! the quota. Once the write is done, its real change is applied to the usage, then the hold is
//! let go. A delete takes no hold: it always passes, so a full bucket can make room.
//!
//! **Several nodes** on one object store each count their own writes on top of what they
//! measured; another node's writes show at this node's next start. Each node admits writes
//! until the usage *it* sees reaches the quota, so with `N` nodes a bucket holds at most `N`
//! times its quota (and each node's record index at most `N` times the record quota).
//!
//! **The reserve** is free space kept for what must never fail for want of it: the journal,
//! checkpoints, deletes and the other buckets. Writes that add bytes are refused while the
//! file system holding the storage (`STORE=fs`) or the local temp directory uploads are
//! received into (`STORE=s3`) has less free than `MIN_FREE_BYTES`.
//!
//! This module must never import a transport: the protocols turn a [`Refusal`] into a 507 or
//! an `{ error }` acknowledgement.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::config::{BucketQuota, Config};
use crate::names::Bucket;
use crate::storage::layout::{Kind, Tree, TreeError, classify};

/// How long a look at the free space is trusted.
const DISK_REFRESH: Duration = Duration::from_secs(1);

/// Bytes admitted after which the free space is looked at again, however recent the last
/// look: a flood within one second cannot eat the reserve on an old figure.
pub const DISK_REFRESH_BYTES: u64 = 64 * 1024 * 1024;

/// What one bucket may hold; 0 in a field: no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Bytes of versioned blobs, content and Blob Service records together.
    pub bytes: u64,
    /// Blob Service records.
    pub records: u64,
}

/// The quota of every bucket: a default, and the operator's exceptions.
#[derive(Clone, Debug)]
pub struct Limits {
    default: Limit,
    exceptions: HashMap<Bucket, Limit>,
}

impl Limits {
    /// The default `default`, with `exceptions` over it (a later entry for the same bucket
    /// wins; the configuration refuses duplicates before this).
    /// The quota of every bucket `config` sets: the default, and `BUCKET_QUOTAS`.
    pub fn from_config(config: &Config) -> Self {
        let default = Limit {
            bytes: config.bucket_quota_bytes,
            records: config.bucket_max_records,
        };
        Self::new(default, &config.bucket_quotas)
    }

    pub fn new(default: Limit, exceptions: &[BucketQuota]) -> Self {
        let exceptions = exceptions
            .iter()
            .map(|q| {
                let limit = Limit {
                    bytes: q.bytes,
                    records: q.records.unwrap_or(default.records),
                };
                (q.bucket.clone(), limit)
            })
            .collect();
        Self {
            default,
            exceptions,
        }
    }

    /// No limit at all.
    pub fn unlimited() -> Self {
        Self::new(
            Limit {
                bytes: 0,
                records: 0,
            },
            &[],
        )
    }

    /// The quota of `bucket`.
    pub fn of(&self, bucket: &Bucket) -> Limit {
        self.exceptions.get(bucket).copied().unwrap_or(self.default)
    }
}

/// What a bucket stores, by kind, in bytes as listed (files or objects).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Versioned blobs' JSON files, tombstones included.
    pub blobs: u64,
    /// Content-addressed bytes, with the Blob Service's markers beside them.
    pub content: u64,
    /// The Blob Service's records, as JSON.
    pub record_bytes: u64,
    /// How many records.
    pub records: u64,
}

impl Usage {
    /// Every byte counted against the quota.
    pub fn bytes(&self) -> u64 {
        self.blobs
            .saturating_add(self.content)
            .saturating_add(self.record_bytes)
    }

    /// Counts one stored name of the bucket (other kinds: temp files, backups, the server's
    /// own files, count for nothing).
    pub fn count(&mut self, kind: &Kind, size: u64) {
        match kind {
            Kind::Blob(..) => self.blobs += size,
            Kind::Content(..) | Kind::Marker(..) => self.content += size,
            Kind::Record(..) => {
                self.record_bytes += size;
                self.records += 1;
            }
            _ => {}
        }
    }

    fn apply(&mut self, change: UsageChange) {
        let add = |value: &mut u64, delta: i64| {
            *value = value.saturating_add_signed(delta);
        };
        add(&mut self.blobs, change.blobs);
        add(&mut self.content, change.content);
        add(&mut self.record_bytes, change.record_bytes);
        add(&mut self.records, change.records);
    }
}

/// A change of a bucket's usage; negative: freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageChange {
    pub blobs: i64,
    pub content: i64,
    pub record_bytes: i64,
    pub records: i64,
}

impl UsageChange {
    pub fn blobs(bytes: i64) -> Self {
        Self {
            blobs: bytes,
            ..Self::default()
        }
    }

    pub fn content(bytes: i64) -> Self {
        Self {
            content: bytes,
            ..Self::default()
        }
    }

    /// One record of `bytes` added (negative: removed).
    pub fn record(bytes: i64) -> Self {
        Self {
            record_bytes: bytes,
            records: bytes.signum(),
            ..Self::default()
        }
    }
}

/// Why a write was refused for space; the message is what the client reads (HTTP 507, or the
/// Socket.IO `{ error }`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The bucket's byte quota.
    #[error(
        "Bucket quota exceeded: the bucket may store {limit} bytes and holds {used}; delete something to make room"
    )]
    Bytes { used: u64, limit: u64 },
    /// The bucket's record quota.
    #[error(
        "Bucket quota exceeded: the bucket may hold {limit} Blob Service records; delete some to make room"
    )]
    Records { limit: u64 },
    /// The reserve of free disk space.
    #[error("Server low on disk space: writes are refused until space is freed")]
    Disk,
}

impl Refusal {
    /// The refusal an I/O error carries, when a metered body was cut short by one.
    pub fn carried_by(error: &io::Error) -> Option<Refusal> {
        error.get_ref()?.downcast_ref::<Refusal>().cloned()
    }
}

/// Why a write could not be admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The bucket's usage could not be measured (its listing failed): the write is not made.
    #[error("cannot measure the bucket's usage: {0}")]
    Measure(#[from] TreeError),
}

/// The quotas of a server and the usage of every bucket it has written to. Shared by the
/// state and the Blob Service.
pub struct Quota {
    limits: Limits,
    /// Where buckets are measured; `None`: nothing is measured, and only the limits of
    /// what is written from now on hold (parts of the server run alone in tests).
    tree: Option<Tree>,
    disk: Option<Arc<Disk>>,
    /// A std mutex: held to find or add a bucket's account, never across an await. One
    /// account per bucket written since start (buckets are the operator's: minted tokens).
    accounts: Mutex<HashMap<Bucket, Arc<Account>>>,
}

impl Quota {
    /// Quotas `limits` over the store `tree`, keeping `reserve` bytes free on the file system
    /// of `disk` (0: no reserve).
    pub fn new(limits: Limits, tree: Tree, disk: PathBuf, reserve: u64) -> Self {
        Self {
            limits,
            tree: Some(tree),
            disk: (reserve > 0).then(|| Arc::new(Disk::new(disk, reserve))),
            accounts: Mutex::default(),
        }
    }

    /// The store the buckets are measured on, if any.
    pub fn tree(&self) -> Option<&Tree> {
        self.tree.as_ref()
    }

    /// No quota and no reserve.
    pub fn unlimited() -> Self {
        Self {
            limits: Limits::unlimited(),
            tree: None,
            disk: None,
            accounts: Mutex::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The account of `bucket`, measured (the first call for a bucket lists it; calls that
    /// arrive meanwhile wait for that listing).
    pub async fn account(&self, bucket: &Bucket) -> Result<Arc<Account>, TreeError> {
        let account = {
            let mut accounts = self.accounts.lock().expect("quota accounts poisoned");
            accounts
                .entry(bucket.clone())
                .or_insert_with(|| {
                    Arc::new(Account {
                        limit: self.limits.of(bucket),
                        measured: OnceCell::new(),
                        counts: Mutex::default(),
                    })
                })
                .clone()
        };
        account
            .measured
            .get_or_try_init(|| async {
                let usage = match &self.tree {
                    Some(tree) => measure_bucket(tree, bucket).await?,
                    None => Usage::default(),
                };
                tracing::debug!(%bucket, bytes = usage.bytes(), records = usage.records, "bucket usage measured");
                account.counts().used = usage;
                Ok::<_, TreeError>(())
            })
            .await?;
        Ok(account)
    }

    /// The account of `bucket` for a delete, which runs whatever happens: `None` (logged)
    /// when the bucket cannot be measured, and the delete is then not counted.
    pub async fn account_for_delete(&self, bucket: &Bucket) -> Option<Arc<Account>> {
        match self.account(bucket).await {
            Ok(account) => Some(account),
            Err(e) => {
                tracing::warn!(%bucket, "a delete is not counted in the bucket's usage: {e}");
                None
            }
        }
    }

    /// Reserves `bytes` and `records` of `bucket`'s quota for a write, and checks the reserve
    /// of free space; the [`Hold`] gives them back when dropped.
    pub async fn admit(
        &self,
        bucket: &Bucket,
        bytes: u64,
        records: u64,
    ) -> Result<Arc<Hold>, AdmitError> {
        let account = self.account(bucket).await?;
        let hold = Arc::new(Hold {
            account,
            disk: self.disk.clone(),
            held: Mutex::default(),
        });
        hold.reserve(bytes, records)?;
        Ok(hold)
    }
}

/// One bucket's limit and usage.
pub struct Account {
    limit: Limit,
    /// Set once the bucket is measured.
    measured: OnceCell<()>,
    /// A std mutex: a few additions under it, never an await.
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    used: Usage,
    /// Reserved by writes in progress.
    held_bytes: u64,
    held_records: u64,
}

impl Account {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().expect("quota counts poisoned")
    }

    /// Counts a change this node made to the bucket's storage.
    pub fn apply(&self, change: UsageChange) {
        self.counts().used.apply(change);
    }

    /// The usage as counted now (without the writes in progress).
    pub fn usage(&self) -> Usage {
        self.counts().used
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }
}

/// Bytes and records reserved for one write; given back when the last clone is dropped. Apply
/// the write's real change to [`Hold::account`] before dropping it.
pub struct Hold {
    account: Arc<Account>,
    disk: Option<Arc<Disk>>,
    /// What this write holds now: bytes and records. A std mutex, never held across an await.
    held: Mutex<(u64, u64)>,
}

impl Hold {
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// Reserves `bytes` more, as a body's next chunk arrives.
    pub fn grow(&self, bytes: u64) -> Result<(), Refusal> {
        self.reserve(bytes, 0)
    }

    /// Bytes this write could still take under the quota (`u64::MAX` without a byte limit).
    pub fn room(&self) -> u64 {
        let limit = self.account.limit.bytes;
        if limit == 0 {
            return u64::MAX;
        }
        let counts = self.account.counts();
        limit.saturating_sub(counts.used.bytes().saturating_add(counts.held_bytes))
    }

    /// Checks the quota, then the disk, and reserves. Reserving nothing always passes.
    fn reserve(&self, bytes: u64, records: u64) -> Result<(), Refusal> {
        let Limit {
            bytes: byte_limit,
            records: record_limit,
        } = self.account.limit;
        let mut counts = self.account.counts();
        let used = counts.used.bytes().saturating_add(counts.held_bytes);
        if bytes > 0 && byte_limit > 0 && used.saturating_add(bytes) > byte_limit {
            return Err(Refusal::Bytes {
                used,
                limit: byte_limit,
            });
        }
        let records_used = counts.used.records.saturating_add(counts.held_records);
        if records > 0 && record_limit > 0 && records_used.saturating_add(records) > record_limit {
            return Err(Refusal::Records {
                limit: record_limit,
            });
        }
        if bytes > 0
            && let Some(disk) = &self.disk
        {
            disk.take(bytes)?;
        }
        counts.held_bytes += bytes;
        counts.held_records += records;
        drop(counts);
        let mut held = self.held.lock().expect("quota hold poisoned");
        held.0 += bytes;
        held.1 += records;
        Ok(())
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let (bytes, records) = *self.held.get_mut().expect("quota hold poisoned");
        let mut counts = self.account.counts();
        counts.held_bytes = counts.held_bytes.saturating_sub(bytes);
        counts.held_records = counts.held_records.saturating_sub(records);
    }
}

/// The free space of one file system, looked at once a second or per [`DISK_REFRESH_BYTES`].
struct Disk {
    path: PathBuf,
    reserve: u64,
    /// A std mutex: the look (one `statvfs`) is quick.
    state: Mutex<DiskState>,
}

#[derive(Default)]
struct DiskState {
    /// When the free space was last looked at; `None`: never.
    looked: Option<Instant>,
    free: u64,
    /// Bytes admitted since that look.
    taken: u64,
}

impl Disk {
    fn new(path: PathBuf, reserve: u64) -> Self {
        Self {
            path,
            reserve,
            state: Mutex::default(),
        }
    }

    /// Takes `bytes` of the free space above the reserve, or refuses.
    fn take(&self, bytes: u64) -> Result<(), Refusal> {
        let mut state = self.state.lock().expect("disk state poisoned");
        let stale = state
            .looked
            .is_none_or(|at| at.elapsed() >= DISK_REFRESH || state.taken >= DISK_REFRESH_BYTES);
        if stale {
            match free_space(&self.path) {
                Ok(free) => {
                    *state = DiskState {
                        looked: Some(Instant::now()),
                        free,
                        taken: 0,
                    }
                }
                Err(e) => {
                    // Not known: writes pass rather than fail on a look that failed.
                    tracing::warn!(path = %self.path.display(), "cannot read the free disk space: {e}");
                    return Ok(());
                }
            }
        }
        let left = state.free.saturating_sub(state.taken);
        if left < self.reserve.saturating_add(bytes) {
            return Err(Refusal::Disk);
        }
        state.taken += bytes;
        Ok(())
    }
}

/// Bytes free for unprivileged writers on the file system of `path`.
fn free_space(path: &std::path::Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// What `bucket` stores in `tree`, from one listing of its names (no byte is read).
pub async fn measure_bucket(tree: &Tree, bucket: &Bucket) -> Result<Usage, TreeError> {
    let mut usage = Usage::default();
    for entry in tree.within(bucket.as_str()).list().await? {
        usage.count(&classify(&format!("{bucket}/{}", entry.key)), entry.size);
    }
    Ok(usage)
}

/// What every bucket stores in `tree`, from one listing of the whole store.
pub async fn measure(tree: &Tree) -> Result<BTreeMap<Bucket, Usage>, TreeError> {
    let mut buckets: BTreeMap<Bucket, Usage> = BTreeMap::new();
    for entry in tree.list().await? {
        let kind = classify(&entry.key);
        let bucket = match &kind {
            Kind::Blob(b, _) | Kind::Content(b, _) | Kind::Marker(b, _) | Kind::Record(b, _) => {
                b.clone()
            }
            _ => continue,
        };
        buckets.entry(bucket).or_default().count(&kind, entry.size);
    }
    Ok(buckets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_bucket_quota, parse_size};

    fn bucket(name: &str) -> Bucket {
        Bucket::parse(name).unwrap()
    }

    #[test]
    fn sizes_take_bytes_and_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("10 GiB"), Ok(10 << 30));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "lots", "-1", "10 parsecs"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bucket_quotas_name_a_bucket_its_bytes_and_maybe_its_records() {
        assert_eq!(
            parse_bucket_quota("app1:50GiB:1000000"),
            Ok(BucketQuota {
                bucket: bucket("app1"),
                bytes: 50 << 30,
                records: Some(1_000_000),
            })
        );
        assert_eq!(
            parse_bucket_quota(" app2:0 ").map(|q| (q.bytes, q.records)),
            Ok((0, None))
        );
        for bad in ["app1", "app1:", "../x:1", "a:1:2:3", "a:1:many", ":1"] {
            assert!(parse_bucket_quota(bad).is_err(), "{bad}");
        }
        let limits = Limits::new(
            Limit {
                bytes: 10,
                records: 5,
            },
            &[parse_bucket_quota("big:100").unwrap()],
        );
        assert_eq!(
            limits.of(&bucket("big")),
            Limit {
                bytes: 100,
                records: 5
            }
        );
        assert_eq!(limits.of(&bucket("other")).bytes, 10);
    }

    /// Holds reserve against the quota until dropped; applied changes stay; a hold of nothing
    /// passes even in a full bucket.
    #[tokio::test]
    async fn holds_reserve_until_dropped() {
        let quota = Quota {
            limits: Limits::new(
                Limit {
                    bytes: 100,
                    records: 2,
                },
                &[],
            ),
            tree: None,
            disk: None,
            accounts: Mutex::default(),
        };
        let b = bucket("b");
        let first = quota.admit(&b, 60, 1).await.unwrap();
        assert!(matches!(
            quota.admit(&b, 50, 0).await,
            Err(AdmitError::Refused(Refusal::Bytes {
                used: 60,
                limit: 100
            }))
        ));
        assert_eq!(first.room(), 40);
        first.grow(30).unwrap();
        assert!(first.grow(11).is_err());
        first.account().apply(UsageChange::content(90));
        first.account().apply(UsageChange::record(10));
        drop(first);
        let account = quota.account(&b).await.unwrap();
        assert_eq!(account.usage().bytes(), 100);
        assert!(quota.admit(&b, 1, 0).await.is_err());
        assert!(quota.admit(&b, 0, 0).await.is_ok());
        account.apply(UsageChange::content(-50));
        let two = quota.admit(&b, 0, 1).await.unwrap();
        assert!(matches!(
            quota.admit(&b, 0, 1).await,
            Err(AdmitError::Refused(Refusal::Records { limit: 2 }))
        ));
        drop(two);
        assert!(quota.admit(&b, 50, 1).await.is_ok());
    }

    /// A reserve larger than the disk refuses every write that adds bytes.
    #[test]
    fn the_reserve_refuses_when_the_disk_is_short() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::new(dir.path().to_path_buf(), u64::MAX / 2);
        assert_eq!(disk.take(1), Err(Refusal::Disk));
        let roomy = Disk::new(dir.path().to_path_buf(), 1);
        assert_eq!(roomy.take(1), Ok(()));
    }

    #[test]
    fn names_count_by_kind() {
        let mut usage = Usage::default();
        let b = bucket("b");
        let hash = crate::names::ContentHash::parse(&"ab".repeat(32)).unwrap();
        usage.count(
            &Kind::Blob(
                b.clone(),
                crate::names::Ref::parse(&"cd".repeat(32)).unwrap(),
            ),
            100,
        );
        usage.count(&Kind::Content(b.clone(), hash.clone()), 1000);
        usage.count(&Kind::Marker(b.clone(), hash), 2);
        usage.count(
            &Kind::Record(b, crate::names::Handle::parse(&"ef".repeat(16)).unwrap()),
            300,
        );
        usage.count(&Kind::Temp, 5000);
        assert_eq!(
            usage,
            Usage {
                blobs: 100,
                content: 1002,
                record_bytes: 300,
                records: 1
            }
        );
        assert_eq!(usage.bytes(), 1402);
        usage.apply(UsageChange::record(-300));
        usage.apply(UsageChange::blobs(-1000));
        assert_eq!((usage.records, usage.blobs), (0, 0));
    }
}
