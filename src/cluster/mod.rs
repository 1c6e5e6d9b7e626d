//! Several nodes on one Redis (`REDIS_URL`), through one client library (redis-rs) and one
//! connection that every use shares: the Socket.IO adapter's channels (this is its
//! [`Driver`]), the relay of changes and records between nodes ([`relay`]), and the Blob
//! Service's order lock. It imports only the shared modules: what travels is serialized by
//! its users, so it knows no storage, state or transport.
//!
//! The connection speaks RESP3, so pub/sub messages arrive as pushes on the same connection
//! as commands. When it drops, redis-rs connects again and subscribes to every channel again
//! by itself; what was published meanwhile is lost, which the relay's listeners are told
//! ([`Redis::subscribe_counting_losses`]), so they catch up from storage.

pub mod relay;

/// The Socket.IO adapter of several nodes: rooms span the nodes over the shared Redis
/// connection.
pub(crate) type NodesAdapter =
    socketioxide_redis::CustomRedisAdapter<socketioxide::adapter::Emitter, Redis>;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, IntoConnectionInfo as _, PushInfo, PushKind, RedisResult};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::{mpsc, watch};

/// Longest wait for Redis to answer one command.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to Redis shared by every part of the server; cloning shares it.
#[derive(Clone)]
pub struct Redis {
    connection: ConnectionManager,
    routes: Arc<Routes>,
}

/// Where pushed messages go.
#[derive(Default)]
struct Routes(RwLock<HashMap<String, Route>>);

/// One subscribed channel's receiver.
#[derive(Clone)]
struct Route {
    sender: mpsc::Sender<ChanItem>,
    /// Counts the times this channel's messages may have been lost (the connection dropped, or
    /// the receiver fell behind), for a receiver that catches up when it grows; `None` for
    /// one that takes losses as pub/sub does (the Socket.IO adapter's).
    losses: Option<watch::Sender<u64>>,
}

impl Route {
    fn lost(&self) {
        if let Some(losses) = &self.losses {
            losses.send_modify(|count| *count += 1);
        }
    }
}

impl Routes {
    fn deliver(&self, push: PushInfo) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let mut data = push.data.into_iter();
                let (Some(channel), Some(message)) = (data.next(), data.next()) else {
                    return;
                };
                let (Ok(channel), Ok(message)) = (
                    redis::from_redis_value::<String>(channel),
                    redis::from_redis_value::<Vec<u8>>(message),
                ) else {
                    tracing::warn!("malformed message from Redis skipped");
                    return;
                };
                let Some(route) = self.read().get(&channel).cloned() else {
                    return;
                };
                match route.sender.try_send((channel, message)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full((channel, _))) => {
                        tracing::warn!(
                            channel,
                            "a Redis channel's receiver fell behind: message lost"
                        );
                        route.lost();
                    }
                    // The receiver is gone (shutdown): nothing more goes to it.
                    Err(mpsc::error::TrySendError::Closed((channel, _))) => {
                        self.write().remove(&channel);
                    }
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("lost the connection to Redis: connecting again");
                crate::metrics::redis_reconnecting();
                for route in self.read().values() {
                    route.lost();
                }
            }
            _ => {}
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Route>> {
        self.0.read().expect("route map poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Route>> {
        self.0.write().expect("route map poisoned")
    }
}

impl Redis {
    /// Connects to `url`, in RESP3 whatever the URL's `protocol` says: pub/sub messages
    /// arrive on the shared connection only as RESP3 pushes.
    pub async fn connect(url: &str) -> RedisResult<Self> {
        let info = without_protocol(url)?.into_connection_info()?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))?;
        let routes = Arc::new(Routes::default());
        let pushes = routes.clone();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(move |push: PushInfo| {
                pushes.deliver(push);
                Ok::<(), std::convert::Infallible>(())
            })
            .set_automatic_resubscription()
            // One connection carries the adapter's broadcasts, the relay and the order lock:
            // room for a burst ahead of a command (redis-rs's default is 500 ms).
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let connection = client.get_connection_manager_with_config(config).await?;
        Ok(Self { connection, routes })
    }

    /// A handle for commands; clones share the connection.
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// Subscribes to `channel`; its messages arrive on the receiver, at most `buffer` ahead of
    /// the reader (past that, they are lost, as with any pub/sub).
    pub async fn subscribe(
        &self,
        channel: &str,
        buffer: usize,
    ) -> RedisResult<mpsc::Receiver<ChanItem>> {
        let (sender, receiver) = mpsc::channel(buffer);
        self.route(
            channel,
            Route {
                sender,
                losses: None,
            },
        )
        .await?;
        Ok(receiver)
    }

    /// Like [`Redis::subscribe`], and counts the times messages of `channel` may have been
    /// lost since, for a receiver that must catch up after each.
    pub async fn subscribe_counting_losses(
        &self,
        channel: &str,
        buffer: usize,
    ) -> RedisResult<(mpsc::Receiver<ChanItem>, watch::Receiver<u64>)> {
        let (sender, receiver) = mpsc::channel(buffer);
        let (losses, counted) = watch::channel(0);
        let losses = Some(losses);
        self.route(channel, Route { sender, losses }).await?;
        Ok((receiver, counted))
    }

    async fn route(&self, channel: &str, route: Route) -> RedisResult<()> {
        // Routed before SUBSCRIBE is sent: its first message may come right after the reply.
        self.routes.write().insert(channel.to_owned(), route);
        self.connection.clone().subscribe(channel).await
    }

    /// Subscribes to `channel` again, which returns once the subscription is live on the
    /// current connection (after a loss, once the connection is back).
    pub async fn confirm(&self, channel: &str) -> RedisResult<()> {
        self.connection.clone().subscribe(channel).await
    }
}

/// The Socket.IO adapter's pub/sub, on the shared connection.
impl Driver for Redis {
    type Error = redis::RedisError;

    async fn publish(&self, channel: String, message: Vec<u8>) -> RedisResult<()> {
        self.connection.clone().publish(channel, message).await
    }

    async fn subscribe(
        &self,
        channel: String,
        size: usize,
    ) -> RedisResult<MessageStream<ChanItem>> {
        Ok(MessageStream::new(
            Redis::subscribe(self, &channel, size).await?,
        ))
    }

    async fn unsubscribe(&self, channel: String) -> RedisResult<()> {
        self.routes.write().remove(&channel);
        self.connection.clone().unsubscribe(channel).await
    }

    async fn num_serv(&self, channel: &str) -> RedisResult<u16> {
        let (_, count): (String, u16) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(count)
    }
}

/// `url` without its `protocol` parameter, which redis-rs reads only in lower case (the
/// socketioxide-redis documentation writes `RESP3`) and which [`Redis::connect`] sets itself.
fn without_protocol(url: &str) -> RedisResult<url::Url> {
    let mut parsed = url::Url::parse(url).map_err(|e| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "not a Redis URL",
            e.to_string(),
        ))
    })?;
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(key, _)| !key.eq_ignore_ascii_case("protocol"))
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok(parsed)
}

/// `url` without its password, for messages (`redis://user:secret@host` → `redis://user:***@host`).
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_parameter_is_dropped_in_any_spelling() {
        for (url, expected) in [
            ("redis://h:6379", "redis://h:6379"),
            ("redis://h:6379/?protocol=RESP3", "redis://h:6379/"),
            ("redis://h/0?protocol=3&x=1", "redis://h/0?x=1"),
            ("redis://u:pw@h/?Protocol=resp2", "redis://u:pw@h/"),
        ] {
            assert_eq!(without_protocol(url).unwrap().as_str(), expected);
        }
        assert!(without_protocol("not a url").is_err());
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redacted("redis://u:pw@h:6379/0"), "redis://u:***@h:6379/0");
        assert_eq!(redacted("redis://:pw@h"), "redis://:***@h");
        assert_eq!(redacted("redis://h:6379"), "redis://h:6379");
    }
}
