//! The Blob Service across several nodes (`REDIS_URL`): new records get their `created` and
//! are announced in one order for every node, and every node's view of the records follows
//! the others'.
//!
//! A node holds the bucket's order lock in Redis (`SET NX PX`, renewed while it works, released
//! only by its holder) from choosing `created` (above the bucket's clock in Redis and above
//! every record it has seen) until its record is durable and published on `blobs:metadata`;
//! the clock and the publication happen in one script that first checks the lock is still
//! the node's. Redis delivers one channel's messages in publish order to every subscriber, so
//! each node applies new records in `created` order and its metadata streams keep the
//! single-node guarantee: replay, then live records, each once, in order. A node that dies
//! holding the lock holds up that bucket's uploads for at most `LOCK_TTL` (30 s).

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::cluster::Redis;
use crate::names::{Bucket, Handle};

use super::Record;

/// The Redis channel that carries the records' comings and goings between nodes.
pub const CHANNEL: &str = "blobs:metadata";

/// Longest a bucket's order lock is held; a lock its node never released expires then.
const LOCK_TTL: Duration = Duration::from_secs(30);

/// First wait, and the longest, between tries for a taken lock.
const LOCK_POLL: (Duration, Duration) = (Duration::from_millis(2), Duration::from_millis(50));

/// Releases a lock only if it is still the caller's (it may have expired and been taken).
const UNLOCK: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;

/// Extends a lock only if it is still the caller's.
const RENEW: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) else return 0 end"#;

/// Under the caller's lock only: raises the bucket's clock to `created` and publishes the
/// record; 0 when the lock is no longer the caller's.
const ANNOUNCE: &str = r#"
if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
local clock = tonumber(redis.call("GET", KEYS[2]) or "0")
if tonumber(ARGV[2]) > clock then redis.call("SET", KEYS[2], ARGV[2]) end
redis.call("PUBLISH", ARGV[3], ARGV[4])
return 1
"#;

/// What one node tells the others.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Relayed {
    Created { bucket: String, record: Record },
    Removed { bucket: String, handle: String },
}

/// The records' order across nodes, and their announcements.
#[derive(Clone)]
pub struct Order {
    /// The node's shared Redis connection, made again after Redis went away.
    redis: ConnectionManager,
}

/// A bucket's order lock, held (and renewed) until [`Order::unlock`].
pub struct OrderLock {
    bucket: Bucket,
    token: String,
    renewal: tokio::task::JoinHandle<()>,
}

impl Order {
    pub fn new(redis: &Redis) -> Self {
        Self {
            redis: redis.connection(),
        }
    }

    /// Waits for the bucket's order lock.
    pub async fn lock(&self, bucket: &Bucket) -> redis::RedisResult<OrderLock> {
        let (key, token) = (lock_key(bucket), uuid::Uuid::new_v4().simple().to_string());
        let mut redis = self.redis.clone();
        let mut pause = LOCK_POLL.0;
        loop {
            let taken: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_TTL.as_millis() as u64)
                .query_async(&mut redis)
                .await?;
            if taken.is_some() {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LOCK_POLL.1);
        }
        // A slow object store must not let the lock expire under its holder.
        let renewal = tokio::spawn({
            let (key, token) = (key.clone(), token.clone());
            async move {
                loop {
                    tokio::time::sleep(LOCK_TTL / 3).await;
                    let renewed = redis::Script::new(RENEW)
                        .key(&key)
                        .arg(&token)
                        .arg(LOCK_TTL.as_millis() as u64)
                        .invoke_async::<i64>(&mut redis)
                        .await;
                    if let Err(e) = renewed {
                        tracing::warn!(%key, "order lock not renewed: {e}");
                    }
                }
            }
        });
        Ok(OrderLock {
            bucket: bucket.clone(),
            token,
            renewal,
        })
    }

    pub async fn unlock(&self, lock: OrderLock) -> redis::RedisResult<()> {
        lock.renewal.abort();
        redis::Script::new(UNLOCK)
            .key(lock_key(&lock.bucket))
            .arg(&lock.token)
            .invoke_async::<i64>(&mut self.redis.clone())
            .await
            .map(drop)
    }

    /// The newest `created` of the bucket on any node (0 when Redis has none).
    pub async fn clock(&self, bucket: &Bucket) -> redis::RedisResult<u64> {
        let clock: Option<u64> = self.redis.clone().get(clock_key(bucket)).await?;
        Ok(clock.unwrap_or(0))
    }

    /// Raises the bucket's clock to the record's `created` and publishes it, if `lock` is
    /// still held; `false` when it is not (it expired: the record is not announced).
    pub async fn announce(&self, lock: &OrderLock, record: &Record) -> redis::RedisResult<bool> {
        let message = Relayed::Created {
            bucket: lock.bucket.to_string(),
            record: record.clone(),
        };
        let text = serde_json::to_string(&message).expect("a message always serialises");
        let announced: i64 = redis::Script::new(ANNOUNCE)
            .key(lock_key(&lock.bucket))
            .key(clock_key(&lock.bucket))
            .arg(&lock.token)
            .arg(record.created)
            .arg(CHANNEL)
            .arg(text)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(announced == 1)
    }

    pub async fn publish(&self, message: &Relayed) -> redis::RedisResult<()> {
        let text = serde_json::to_string(message).expect("a message always serialises");
        self.redis.clone().publish(CHANNEL, text).await
    }
}

// One hash tag per bucket: a Redis Cluster keeps a bucket's lock and clock in one slot, as
// the announcing script needs.
fn lock_key(bucket: &Bucket) -> String {
    format!("blobs:{{{bucket}}}:order")
}

fn clock_key(bucket: &Bucket) -> String {
    format!("blobs:{{{bucket}}}:clock")
}

impl Relayed {
    /// The message as the service applies it (`None` for anything malformed).
    pub fn parse(text: &str) -> Option<Applied> {
        match serde_json::from_str(text).ok()? {
            Relayed::Created { bucket, record } => {
                let handle = Handle::parse(&record.handle)?;
                Some(Applied::Created(
                    Bucket::parse(&bucket)?,
                    handle,
                    Arc::new(record),
                ))
            }
            Relayed::Removed { bucket, handle } => Some(Applied::Removed(
                Bucket::parse(&bucket)?,
                Handle::parse(&handle)?,
            )),
        }
    }
}

/// A relayed message, checked.
pub enum Applied {
    Created(Bucket, Handle, Arc<Record>),
    Removed(Bucket, Handle),
}
