//! Messages between nodes over Redis pub/sub, for what the Socket.IO adapter does not carry
//! (the HTTP change streams, the Blob Service's records).
//!
//! Redis pub/sub delivers a channel's messages in publish order, at most once: a connection
//! that drops loses what is published until it is back. [`listen`] subscribes again by itself
//! and tells its [`Listener`], which catches up from storage.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::aio::PubSub;

/// First wait, and the longest, between attempts to subscribe again.
const RESUBSCRIBE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// What a node does with one channel's messages.
#[async_trait::async_trait]
pub trait Listener: Send + 'static {
    /// One message, in publish order.
    async fn message(&mut self, text: &str);
    /// The subscription was lost and is back: what was published meanwhile never arrives.
    async fn resubscribed(&mut self);
}

/// A connection subscribed to `channel`.
pub async fn subscribe(client: &redis::Client, channel: &str) -> redis::RedisResult<PubSub> {
    let mut subscriber = client.get_async_pubsub().await?;
    subscriber.subscribe(channel).await?;
    Ok(subscriber)
}

/// Hands every message of `channel` to `listener`, starting with the already `subscribed`
/// connection and subscribing again whenever it drops, until `closing` resolves.
pub fn listen(
    client: redis::Client,
    subscribed: PubSub,
    channel: &'static str,
    closing: impl Future<Output = ()> + Send + 'static,
    mut listener: impl Listener,
) {
    tokio::spawn(async move {
        tokio::pin!(closing);
        let mut subscriber = subscribed;
        loop {
            let mut messages = subscriber.into_on_message();
            loop {
                let message = tokio::select! {
                    message = messages.next() => message,
                    () = &mut closing => return,
                };
                let Some(message) = message else { break };
                let text: String = message.get_payload().unwrap_or_default();
                listener.message(&text).await;
            }
            tracing::warn!(channel, "lost the Redis subscription: subscribing again");
            let mut pause = RESUBSCRIBE.0;
            subscriber = loop {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = &mut closing => return,
                }
                match subscribe(&client, channel).await {
                    Ok(subscriber) => break subscriber,
                    Err(e) => tracing::warn!(channel, "cannot subscribe again yet: {e}"),
                }
                pause = (pause * 2).min(RESUBSCRIBE.1);
            };
            tracing::info!(channel, "subscribed to Redis again");
            listener.resubscribed().await;
        }
    });
}
