//! The records in memory, by bucket: by handle, in `created` order, and by content (which
//! the retention sweep asks before removing content).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::names::{Bucket, ContentHash, Handle};

use super::Record;

/// A bucket's records in memory.
#[derive(Default)]
pub(super) struct Index {
    pub(super) by_handle: HashMap<Handle, Arc<Record>>,
    /// Newest first when iterated in reverse: `(created, handle)`.
    pub(super) by_time: BTreeSet<(u64, Handle)>,
    /// Records (live or expired) per content: content with none is the sweep's to remove.
    pub(super) refs: HashMap<ContentHash, usize>,
}

impl Index {
    /// Adds a record; `false` (and nothing changes) when its handle is known already.
    pub(super) fn insert(&mut self, handle: Handle, record: Arc<Record>) -> bool {
        if self.by_handle.contains_key(&handle) {
            return false;
        }
        if let Some(hash) = record.content_hash() {
            *self.refs.entry(hash).or_default() += 1;
        }
        self.by_time.insert((record.created, handle.clone()));
        self.by_handle.insert(handle, record);
        true
    }

    pub(super) fn remove(&mut self, handle: &Handle) -> Option<Arc<Record>> {
        let record = self.by_handle.remove(handle)?;
        self.by_time.remove(&(record.created, handle.clone()));
        if let Some(hash) = record.content_hash()
            && let Some(count) = self.refs.get_mut(&hash)
        {
            *count -= 1;
            if *count == 0 {
                self.refs.remove(&hash);
            }
        }
        Some(record)
    }

    pub(super) fn referenced(&self, hash: &ContentHash) -> bool {
        self.refs.contains_key(hash)
    }
}

/// Every bucket's records, and the order new ones are announced in.
#[derive(Default)]
pub(super) struct Records {
    pub(super) buckets: HashMap<Bucket, Index>,
    /// `created` of the newest record: each new one gets a later time, so `created` orders
    /// records and a stream can resume from the last one it saw.
    pub(super) newest: u64,
}

impl Records {
    /// Adds a record; `false` (and nothing changes) when its handle is known already.
    pub(super) fn insert(&mut self, bucket: &Bucket, handle: Handle, record: Arc<Record>) -> bool {
        self.newest = self.newest.max(record.created);
        let index = self.buckets.entry(bucket.clone()).or_default();
        index.insert(handle, record)
    }

    /// Removes a record; the record removed, if there was one.
    pub(super) fn remove(&mut self, bucket: &Bucket, handle: &Handle) -> Option<Arc<Record>> {
        self.buckets.get_mut(bucket)?.remove(handle)
    }

    /// Every record's bucket and handle for which `keep` holds.
    pub(super) fn select(
        &self,
        keep: impl Fn(&Bucket, &Handle, &Record) -> bool,
    ) -> Vec<(Bucket, Handle)> {
        self.buckets
            .iter()
            .flat_map(|(bucket, index)| {
                index
                    .by_handle
                    .iter()
                    .filter(|(handle, r)| keep(bucket, handle, r))
                    .map(|(handle, _)| (bucket.clone(), handle.clone()))
            })
            .collect()
    }
}

/// Live records of one bucket created after `since`, oldest first.
pub(super) fn created_after(index: &Index, since: u64, now: u64) -> Vec<Arc<Record>> {
    index
        .by_time
        .iter()
        .skip_while(|(created, _)| *created <= since)
        .filter_map(|(_, handle)| index.by_handle.get(handle))
        .filter(|r| r.live(now))
        .cloned()
        .collect()
}
