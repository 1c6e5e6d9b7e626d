//! Messages between nodes over Redis pub/sub, for what the Socket.IO adapter does not carry
//! (the HTTP change streams, the Blob Service's records).
//!
//! Redis pub/sub delivers a channel's messages in publish order, at most once: a connection
//! that drops loses what is published until it is back. [`listen`] tells its [`Listener`]
//! once the channel is subscribed again, and the listener catches up from storage.

use std::future::Future;
use std::time::Duration;

use redis::RedisResult;
use socketioxide_redis::drivers::ChanItem;
use tokio::sync::{mpsc, watch};

use super::Redis;

/// Messages of a relayed channel that may wait for their listener; past this, one is lost
/// and the listener catches up as after a lost connection.
const BUFFER: usize = 4096;

/// First wait, and the longest, between attempts to confirm the subscription again.
const RESUBSCRIBE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// What a node does with one channel's messages.
#[async_trait::async_trait]
pub trait Listener: Send + 'static {
    /// One message, in publish order.
    async fn message(&mut self, text: &str);
    /// Messages may have been lost and the subscription is live again: what was published
    /// meanwhile never arrives.
    async fn resubscribed(&mut self);
}

/// A channel subscribed, whose messages wait for [`listen`].
pub struct Subscription {
    redis: Redis,
    channel: &'static str,
    messages: mpsc::Receiver<ChanItem>,
    /// Grows with every loss of this channel's messages.
    losses: watch::Receiver<u64>,
}

/// Subscribes to `channel`.
pub async fn subscribe(redis: &Redis, channel: &'static str) -> RedisResult<Subscription> {
    let (messages, losses) = redis.subscribe_counting_losses(channel, BUFFER).await?;
    Ok(Subscription {
        redis: redis.clone(),
        channel,
        messages,
        losses,
    })
}

/// Hands every message of `subscription` to `listener`, and tells it after every loss once the
/// channel is subscribed again, until `closing` resolves.
pub fn listen(
    subscription: Subscription,
    closing: impl Future<Output = ()> + Send + 'static,
    mut listener: impl Listener,
) {
    let Subscription {
        redis,
        channel,
        mut messages,
        mut losses,
    } = subscription;
    tokio::spawn(async move {
        tokio::pin!(closing);
        loop {
            tokio::select! {
                message = messages.recv() => {
                    let Some((_, payload)) = message else { return };
                    listener.message(&String::from_utf8_lossy(&payload)).await;
                }
                changed = losses.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    losses.mark_unchanged();
                    let mut pause = RESUBSCRIBE.0;
                    while let Err(e) = redis.confirm(channel).await {
                        tracing::warn!(channel, "cannot subscribe again yet: {e}");
                        crate::metrics::redis_error();
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            () = &mut closing => return,
                        }
                        pause = (pause * 2).min(RESUBSCRIBE.1);
                    }
                    tracing::info!(channel, "subscribed to Redis again");
                    // What arrived before the subscription was confirmed is older than what
                    // the listener catches up to: it goes first.
                    while let Ok((_, payload)) = messages.try_recv() {
                        listener.message(&String::from_utf8_lossy(&payload)).await;
                    }
                    listener.resubscribed().await;
                }
                () = &mut closing => return,
            }
        }
    });
}
