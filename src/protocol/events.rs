//! The original's events (`ref`, `get`, `set`; `now` is answered in place) and the shapes of
//! their replies, byte for byte as the original sends them.

use std::collections::HashSet;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;

use crate::clock::now_ms;
use crate::names::Ref;
use crate::protocol::ack::AckError;
use crate::serve::changes::{self, Change, RefKey, ServerFull, ref_key};
use crate::storage::store::{
    Edit, Expect, MAX_VERSION, MAX_WRITER, SetOutcome, SetRequest, WriteId, live,
};

use super::session::Session;

impl<A: Adapter> Session<A> {
    pub(super) fn subscribe(
        &self,
        socket: &SocketRef<A>,
        arg: Option<&Value>,
    ) -> Result<Reply, AckError> {
        let new = match arg {
            Some(Value::Null) => None,
            Some(Value::String(text)) => Some(Ref::parse(text).ok_or(AckError::InvalidRef)?),
            _ => return Err(AckError::InvalidRef),
        };
        let mut queue = self.queue.lock().expect("queue lock poisoned");
        if let Some(old) = queue.subscribed.take() {
            socket.leave(changes::room(&self.bucket, &old));
        }
        if let Some(r) = &new {
            socket.join(changes::room(&self.bucket, r));
        }
        queue.subscribed = new;
        Ok(Reply::Empty)
    }

    pub(super) fn subscribed(&self) -> Result<Ref, AckError> {
        let queue = self.queue.lock().expect("queue lock poisoned");
        queue.subscribed.clone().ok_or(AckError::NoRef)
    }

    /// The blob a `get` or `set` acts on: its `ref` when it names one (any number of blobs on
    /// one socket), else the one `ref` subscribed (the original's way).
    fn target(&self, params: &Map<String, Value>) -> Result<Ref, AckError> {
        match params.get("ref") {
            None => self.subscribed(),
            Some(Value::String(text)) => Ref::parse(text).ok_or(AckError::InvalidRef),
            Some(_) => Err(AckError::InvalidRef),
        }
    }

    /// `watch { refs }`: this socket hears `changed { ref, version }` for each of the refs from
    /// now on, its own writes included; at most `MAX_WATCHED_REFS` in all, and `MAX_WATCHES`
    /// on the whole server.
    pub(super) fn watch(&self, arg: Option<&Value>) -> Result<Reply, AckError> {
        let refs = ref_list(object(arg)?)?;
        let mut queue = self.queue.lock().expect("queue lock poisoned");
        // A set: a ref named twice in one event counts once against the limit.
        let new: HashSet<RefKey> = refs
            .iter()
            .map(ref_key)
            .filter(|key| !queue.watched.contains(key))
            .collect();
        let limit = self.state.config().max_watched_refs;
        if queue.watched.len() + new.len() > limit {
            return Err(AckError::TooManyWatched(limit));
        }
        let new: Vec<RefKey> = new.into_iter().collect();
        self.state
            .changes()
            .watches()
            .add(self.bucket.as_str(), &new, self.sid)
            .map_err(|ServerFull(limit)| AckError::ServerWatchesFull(limit))?;
        queue.watched.extend(new);
        Ok(Reply::Value(json!({ "watching": queue.watched.len() })))
    }

    /// `unwatch { refs }`: the socket stops hearing about these refs.
    pub(super) fn unwatch(&self, arg: Option<&Value>) -> Result<Reply, AckError> {
        let refs = ref_list(object(arg)?)?;
        let mut queue = self.queue.lock().expect("queue lock poisoned");
        let gone: Vec<RefKey> = refs
            .iter()
            .map(ref_key)
            .filter(|key| queue.watched.remove(key))
            .collect();
        self.state
            .changes()
            .watches()
            .remove(self.bucket.as_str(), &gone, self.sid);
        queue.watched.shrink_to_fit();
        Ok(Reply::Value(json!({ "watching": queue.watched.len() })))
    }

    pub(super) async fn get(&self, arg: Option<&Value>) -> Result<Reply, AckError> {
        let params = object(arg)?;
        let known = optional_version(params, "known")?;
        let r = self.target(params)?;
        let Some(blob) = live(self.state.store().get(&self.bucket, &r).await?) else {
            return Ok(Reply::Value(Value::Null));
        };
        Ok(Reply::Value(if known == Some(blob.version) {
            json!({ "version": blob.version })
        } else {
            with_data(json!({ "version": blob.version }), blob.data.as_deref())
        }))
    }

    pub(super) async fn set(
        &self,
        socket: &SocketRef<A>,
        arg: Option<&Value>,
    ) -> Result<Reply, AckError> {
        if self.read_only {
            return Err(AckError::ReadOnly);
        }
        let params = object(arg)?;
        let version = optional_version(params, "version")?;
        let data = optional_data(params, self.state.max_data_chars())?;
        let id = write_id(params)?;
        let with_id = id.is_some();
        let r = self.target(params)?;
        let request = SetRequest {
            edit: Edit::Put(data),
            expect: Expect::Protocol(version),
            ip: self.ip.clone(),
            now: now_ms(),
            id,
        };
        let outcome = self.state.set_blob(&self.bucket, &r, request).await;
        match outcome? {
            SetOutcome::Committed { version, .. } => {
                tracing::debug!(bucket = %self.bucket, r#ref = %r, version, "committed");
                let change = Change {
                    bucket: self.bucket.clone(),
                    blob_ref: r,
                    version,
                    deleted: false,
                };
                self.state.changes().publish(change, Some(socket.id));
                Ok(Reply::Value(json!({ "success": true, "version": version })))
            }
            // A protocol write always finds something to conflict with (a missing blob is
            // created), so `current` is the live blob or its tombstone (which has no data).
            // Committed before, under the same id: answered as then, and announced then.
            SetOutcome::Repeated { version } => {
                Ok(Reply::Value(json!({ "success": true, "version": version })))
            }
            SetOutcome::Conflict(Some(current)) | SetOutcome::PreconditionRequired(current) => {
                Ok(Reply::Stale(Stale {
                    success: false,
                    data: current.data.clone(),
                    version: current.version,
                    unknown: with_id && current.may_have_forgotten(version.unwrap_or_default()),
                }))
            }
            SetOutcome::Conflict(None) => Ok(Reply::Value(json!({ "success": false }))),
        }
    }
}

pub(super) enum Reply {
    /// No argument (`ref`).
    Empty,
    Value(Value),
    /// Named replies of the content-addressed events: each is an event when the client sent
    /// no ack; with an ack, their fields are merged into one object.
    Events(Vec<(&'static str, Value)>),
    /// A refused `set`, with its keys in the original's order (a JSON map would sort them).
    Stale(Stale),
}

/// The bytes `value` serialises to, at least (escapes left out).
pub(super) fn json_min_len(value: &Value) -> u64 {
    let separators = |n: usize| n.saturating_sub(1) as u64;
    match value {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(_) => 1,
        Value::String(text) => text.len() as u64 + 2,
        Value::Array(items) => {
            2 + separators(items.len()) + items.iter().map(json_min_len).sum::<u64>()
        }
        Value::Object(fields) => {
            2 + separators(fields.len())
                + fields
                    .iter()
                    .map(|(key, value)| key.len() as u64 + 3 + json_min_len(value))
                    .sum::<u64>()
        }
    }
}

/// `{ success: false, data?, version, unknown? }`.
#[derive(serde::Serialize)]
pub(super) struct Stale {
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    version: u64,
    /// A `set` with a write id whose writer the blob may have forgotten (see
    /// [`Blob::may_have_forgotten`](crate::storage::store::Blob::may_have_forgotten)): an
    /// earlier send of it may have committed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unknown: bool,
}

impl Reply {
    /// A lower bound of the bytes this reply takes on the wire: its JSON without escapes or
    /// framing. Never more than the truth, so bytes the client read always cover it (an
    /// estimate over the truth would pile up as a backlog that is not there).
    pub(super) fn min_len(&self) -> u64 {
        match self {
            Reply::Empty => 2,
            Reply::Value(value) => json_min_len(value),
            Reply::Events(events) => events.iter().map(|(_, value)| json_min_len(value)).sum(),
            Reply::Stale(stale) => {
                29 + stale.data.as_ref().map_or(0, |d| d.len() as u64 + 10)
                    + if stale.unknown { 15 } else { 0 }
            }
        }
    }
}

/// The fields of several reply objects in one.
pub(super) fn merged(events: Vec<(&'static str, Value)>) -> Value {
    let mut all = Map::new();
    for (_, payload) in events {
        if let Value::Object(fields) = payload {
            all.extend(fields);
        }
    }
    Value::Object(all)
}

pub(super) fn with_data(mut reply: Value, data: Option<&str>) -> Value {
    if let (Some(data), Some(map)) = (data, reply.as_object_mut()) {
        map.insert("data".to_owned(), Value::String(data.to_owned()));
    }
    reply
}

pub(super) fn object(arg: Option<&Value>) -> Result<&Map<String, Value>, AckError> {
    arg.and_then(Value::as_object).ok_or(AckError::NotAnObject)
}

/// The `refs` of `watch` and `unwatch`: a list of refs (at most 1,000 in one event).
fn ref_list(params: &Map<String, Value>) -> Result<Vec<Ref>, AckError> {
    match params.get("refs") {
        Some(Value::Array(items)) if items.len() <= MAX_REFS_PER_EVENT => items
            .iter()
            .map(|item| item.as_str().and_then(Ref::parse))
            .collect::<Option<Vec<_>>>()
            .ok_or(AckError::InvalidRefs),
        _ => Err(AckError::InvalidRefs),
    }
}

/// Most refs one `watch` or `unwatch` names.
const MAX_REFS_PER_EVENT: usize = 1000;

/// `known` or `version`: absent or `null` is `None`; otherwise an integer in `1..=MAX_VERSION`.
pub(super) fn optional_version(
    params: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<u64>, AckError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .filter(|v| (1..=MAX_VERSION).contains(v))
            .map(Some)
            .ok_or(AckError::InvalidVersion(key)),
    }
}

/// The write id of a `set` (see [`SetRequest::id`]): `writer`, 1 to [`MAX_WRITER`] letters,
/// digits, `-` or `_`, and `seq`, an integer from 1 to [`MAX_VERSION`]; both or neither
/// (absent or `null`).
fn write_id(params: &Map<String, Value>) -> Result<Option<WriteId>, AckError> {
    let present = |key| !matches!(params.get(key), None | Some(Value::Null));
    if !present("writer") && !present("seq") {
        return Ok(None);
    }
    let writer = match params.get("writer") {
        Some(Value::String(writer))
            if (1..=MAX_WRITER).contains(&writer.len())
                && writer
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            writer.clone()
        }
        _ => return Err(AckError::InvalidWriteId),
    };
    let seq = optional_version(params, "seq")
        .ok()
        .flatten()
        .ok_or(AckError::InvalidWriteId)?;
    Ok(Some(WriteId { writer, seq }))
}

/// `data`: absent or `null` is `None`; otherwise standard base64 (padding optional, no
/// whitespace) of at most `max_chars` characters, kept exactly as sent.
pub(super) fn optional_data(
    params: &Map<String, Value>,
    max_chars: usize,
) -> Result<Option<String>, AckError> {
    match params.get("data") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.len() <= max_chars && is_base64(text) => {
            Ok(Some(text.clone()))
        }
        Some(_) => Err(AckError::InvalidData(max_chars)),
    }
}

pub(super) fn is_base64(text: &str) -> bool {
    const ENGINE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    ENGINE.decode(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    /// The backlog's measure of a reply never exceeds its JSON, or the backlog would grow
    /// while the client reads everything.
    #[test]
    fn reply_lengths_are_lower_bounds() {
        let values = [
            json!(null),
            json!({}),
            json!([]),
            json!({ "version": 12345, "data": "aGk=" }),
            json!({ "blobs": [{ "hash": "ab", "data_b64": "x\ny\"" }], "unavailable": ["\u{1}"] }),
            json!([true, false, 1.5, -3, "", { "a": [null] }]),
        ];
        for value in values {
            let text = serde_json::to_string(&value).unwrap();
            assert!(json_min_len(&value) <= text.len() as u64, "{text}");
        }
        for data in [None, Some(String::new()), Some("aGk=".to_owned())] {
            for unknown in [false, true] {
                let stale = Stale {
                    success: false,
                    data: data.clone(),
                    version: 1,
                    unknown,
                };
                let text = serde_json::to_string(&stale).unwrap();
                assert_eq!(Reply::Stale(stale).min_len(), text.len() as u64, "{text}");
            }
        }
    }

    #[test]
    fn versions_are_integers_in_the_safe_range() {
        for ok in [json!({}), json!({"known": null})] {
            assert_eq!(optional_version(&params(ok), "known").unwrap(), None);
        }
        assert_eq!(
            optional_version(&params(json!({"known": MAX_VERSION})), "known").unwrap(),
            Some(MAX_VERSION)
        );
        for bad in [
            json!({"known": 0}),
            json!({"known": -1}),
            json!({"known": 1.5}),
            json!({"known": "1"}),
            json!({"known": MAX_VERSION + 1}),
            json!({"known": 1e300}),
            json!({"known": [1]}),
        ] {
            assert!(optional_version(&params(bad), "known").is_err());
        }
    }

    #[test]
    fn data_is_bounded_base64() {
        const MAX_DATA_LEN: usize = 1_048_576;
        assert_eq!(
            optional_data(&params(json!({})), MAX_DATA_LEN).unwrap(),
            None
        );
        for ok in ["", "aGk=", "aGk", "+/+/"] {
            assert_eq!(
                optional_data(&params(json!({ "data": ok })), MAX_DATA_LEN)
                    .unwrap()
                    .as_deref(),
                Some(ok)
            );
        }
        let max = "A".repeat(MAX_DATA_LEN);
        assert!(optional_data(&params(json!({ "data": max })), MAX_DATA_LEN).is_ok());
        let over = "A".repeat(MAX_DATA_LEN + 4);
        for bad in [
            json!("aG k="),
            json!("aGk=\n"),
            json!("a-_b"),
            json!("@@@@"),
            json!(7),
            json!({}),
            json!(over),
        ] {
            assert!(optional_data(&params(json!({ "data": bad })), MAX_DATA_LEN).is_err());
        }
    }
}
