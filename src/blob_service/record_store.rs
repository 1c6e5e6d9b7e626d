//! Where the Blob Service keeps its records: one JSON document per handle at
//! `<bucket>/handles/<handle[0..2]>/<handle>.json`, an object of the object layer (a file under
//! the storage root, or an object of the store the nodes share: same name, same JSON).

use std::sync::Arc;

use futures_util::StreamExt;

use crate::names::{Bucket, Handle};
use crate::storage::durable;
use crate::storage::layout::{HANDLES_DIR, record_name as name};
use crate::storage::objects::Objects;

use super::{Record, Result};

/// One record as found in storage.
pub type Found = (Bucket, Handle, Arc<Record>);

/// Durable records, as objects of the object layer.
pub struct RecordStore {
    objects: Objects,
}

/// The last part of a key, the record's file name.
fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Parses a record stored under `key`, whose file name must be its handle's.
fn parse(bytes: &[u8], key: &str) -> Result<(Handle, Arc<Record>), String> {
    let named = file_name(key).strip_suffix(".json").unwrap_or_default();
    decode(bytes, named).map(|(handle, record)| (handle, Arc::new(record)))
}

/// Decodes a record stored under the handle `named`, refusing one that is damaged: it does
/// not parse, its handle is not canonical or not `named`, or its hash is not a content hash
/// (a name nothing could be read by).
pub fn decode(bytes: &[u8], named: &str) -> Result<(Handle, Record), String> {
    let record: Record =
        serde_json::from_slice(bytes).map_err(|e| format!("does not parse: {e}"))?;
    let handle = Handle::parse(&record.handle).ok_or("its handle is not canonical")?;
    if handle.as_str() != named {
        return Err("its name is not its handle".to_owned());
    }
    if record.content_hash().is_none() {
        return Err("its hash is not 64 lower-case hexadecimal characters".to_owned());
    }
    Ok((handle, record))
}

impl RecordStore {
    pub fn new(objects: Objects) -> Self {
        Self { objects }
    }

    /// Every record (one that cannot be read is logged and left out; a temp file an
    /// interrupted write left in a directory is removed).
    pub async fn load(&self) -> Result<Vec<Found>> {
        let mut found = Vec::new();
        for bucket in self.objects.dirs("").await? {
            let Some(bucket) = Bucket::parse(&bucket) else {
                continue;
            };
            let mut keys = self.objects.list(&format!("{bucket}/{HANDLES_DIR}/"));
            while let Some(listed) = keys.next().await {
                let (key, _) = listed?;
                if durable::is_temp_name(file_name(&key)) {
                    tracing::info!(key, "removing temp file left by a crash");
                    self.objects.delete(&key).await?;
                    continue;
                }
                let Some(stored) = self.objects.get(&key).await? else {
                    continue;
                };
                match parse(&stored.bytes, &key) {
                    Ok((handle, record)) => found.push((bucket.clone(), handle, record)),
                    Err(e) => tracing::warn!(key, "record left out: {e}"),
                }
            }
        }
        Ok(found)
    }

    /// One record; `None` when there is none.
    pub async fn read(&self, bucket: &Bucket, handle: &Handle) -> Result<Option<Arc<Record>>> {
        let key = name(bucket, handle);
        let Some(stored) = self.objects.get(&key).await? else {
            return Ok(None);
        };
        Ok(parse(&stored.bytes, &key).ok().map(|(_, record)| record))
    }

    /// Writes a record, durably.
    pub async fn write(&self, bucket: &Bucket, handle: &Handle, record: &Record) -> Result<()> {
        let bytes = serde_json::to_vec(record).expect("a record always serialises");
        Ok(self.objects.put(&name(bucket, handle), bytes).await?)
    }

    /// Removes a record (none is not an error).
    pub async fn remove(&self, bucket: &Bucket, handle: &Handle) -> Result<()> {
        Ok(self.objects.delete(&name(bucket, handle)).await?)
    }

    /// Whether other nodes write here too: memory is then only a view, which a lookup that
    /// misses and every sweep check against storage.
    pub fn shared(&self) -> bool {
        !self.objects.is_directory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(handle: &str, hash: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "handle": handle, "hash": hash, "size": 1, "contentType": "text/plain",
            "semantics": "s", "retentionPolicy": {"policy": "keepForever"},
            "created": 1, "uploader": "203.0.113.7"
        }))
        .unwrap()
    }

    #[test]
    fn records_naming_no_content_or_another_handle_are_damaged() {
        let (handle, hash) = ("ab".repeat(16), "cd".repeat(32));
        assert!(decode(&record(&handle, &hash), &handle).is_ok());
        for bad_hash in ["../../../outside/secret.bin", &"CD".repeat(32), "cd"] {
            let refused = decode(&record(&handle, bad_hash), &handle).unwrap_err();
            assert!(refused.contains("its hash"), "{bad_hash}: {refused}");
        }
        let other = "ef".repeat(16);
        assert!(decode(&record(&handle, &hash), &other).is_err());
        assert!(decode(&record(&"AB".repeat(16), &hash), &"AB".repeat(16)).is_err());
        assert!(decode(b"{", &handle).is_err());
    }
}
