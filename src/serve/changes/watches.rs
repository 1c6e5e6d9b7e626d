//! Who watches which blob (`watch { refs }`), on this node: a compact index from a blob to the
//! sockets watching it, with a ceiling on the watches of the whole server.
//!
//! Watches are kept here rather than as Socket.IO rooms: a room costs two copies of its name
//! and a set per blob inside the adapter (about 630 bytes a watched ref, measured), and the
//! adapter's maps never give their memory back. Here a watch costs a 32-byte ref and a
//! socket id in one map (about 100 bytes), the session keeps its own 32-byte refs, and the
//! map shrinks when the watchers leave. Several nodes need no shared index: every node hears
//! every change (its own commits, and the others' over the relay) and tells its own watchers.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};

use socketioxide::socket::Sid;

use crate::names::Ref;

/// A ref as its 32 bytes (a ref is 64 hex digits, so nothing is lost).
pub type RefKey = [u8; 32];

/// The key of a ref in the index.
pub fn ref_key(r: &Ref) -> RefKey {
    let mut key = [0u8; 32];
    // A `Ref` is 64 hex digits by construction.
    hex::decode_to_slice(r.as_str(), &mut key).expect("a ref is 64 hex digits");
    key
}

/// The refused watch: the server holds `MAX_WATCHES` already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerFull(pub usize);

/// Every watch on this node.
pub struct Watches {
    max_total: usize,
    /// A std mutex: held for a map update or a lookup, never across an await or a send.
    index: Mutex<Index>,
}

#[derive(Default)]
struct Index {
    /// By bucket, then by ref: a lookup by the bucket's name borrows it.
    by_bucket: HashMap<Arc<str>, HashMap<RefKey, Watchers>>,
    total: usize,
}

/// The sockets watching one blob; most blobs have one, which needs no allocation of its own.
enum Watchers {
    One(Sid),
    Many(Vec<Sid>),
}

/// A map whose length fell under this share of its capacity is shrunk, so memory taken by a
/// crowd of watchers is given back once they leave.
const SHRINK_BELOW: usize = 4;

impl Watches {
    pub fn new(max_total: usize) -> Self {
        Self {
            max_total,
            index: Mutex::new(Index::default()),
        }
    }

    /// `sid` watches `refs` of `bucket` (none of which it watched already), all or none.
    pub fn add(&self, bucket: &str, refs: &[RefKey], sid: Sid) -> Result<(), ServerFull> {
        let mut index = self.index.lock().expect("watch index lock poisoned");
        if index.total + refs.len() > self.max_total {
            return Err(ServerFull(self.max_total));
        }
        index.total += refs.len();
        let blobs = match index.by_bucket.get_mut(bucket) {
            Some(blobs) => blobs,
            None => index.by_bucket.entry(Arc::from(bucket)).or_default(),
        };
        for r in refs {
            match blobs.entry(*r) {
                Entry::Vacant(entry) => {
                    entry.insert(Watchers::One(sid));
                }
                Entry::Occupied(mut entry) => {
                    let watchers = entry.get_mut();
                    match watchers {
                        Watchers::One(first) => *watchers = Watchers::Many(vec![*first, sid]),
                        Watchers::Many(sids) => sids.push(sid),
                    }
                }
            }
        }
        Ok(())
    }

    /// `sid` no longer watches `refs` of `bucket` (each of which it watched).
    pub fn remove<'a>(&self, bucket: &str, refs: impl IntoIterator<Item = &'a RefKey>, sid: Sid) {
        let mut index = self.index.lock().expect("watch index lock poisoned");
        let Some(blobs) = index.by_bucket.get_mut(bucket) else {
            return;
        };
        let mut removed = 0;
        for r in refs {
            let Entry::Occupied(mut entry) = blobs.entry(*r) else {
                continue;
            };
            match entry.get_mut() {
                Watchers::One(only) if *only == sid => {
                    entry.remove();
                }
                Watchers::One(_) => continue,
                Watchers::Many(sids) => {
                    sids.retain(|s| *s != sid);
                    if let [only] = sids[..] {
                        entry.insert(Watchers::One(only));
                    }
                }
            }
            removed += 1;
        }
        if blobs.is_empty() {
            index.by_bucket.remove(bucket);
        } else if blobs.capacity() > 64 && blobs.len() < blobs.capacity() / SHRINK_BELOW {
            let len = blobs.len();
            blobs.shrink_to(len * 2);
        }
        index.total -= removed;
    }

    /// The sockets watching `r` of `bucket` now.
    pub fn watchers(&self, bucket: &str, r: &Ref) -> Vec<Sid> {
        let index = self.index.lock().expect("watch index lock poisoned");
        match index.by_bucket.get(bucket).and_then(|b| b.get(&ref_key(r))) {
            Some(Watchers::One(sid)) => vec![*sid],
            Some(Watchers::Many(sids)) => sids.clone(),
            None => Vec::new(),
        }
    }

    #[cfg(test)]
    /// Watches held now, on this node.
    pub fn total(&self) -> usize {
        self.index.lock().expect("watch index lock poisoned").total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: u8) -> Ref {
        Ref::parse(&format!("{n:02x}").repeat(32)).unwrap()
    }

    #[test]
    fn watches_are_indexed_capped_and_given_back() {
        let watches = Watches::new(3);
        let (a, b) = (Sid::new(), Sid::new());
        let (app, other) = ("app", "other");
        watches
            .add(app, &[ref_key(&r(1)), ref_key(&r(2))], a)
            .unwrap();
        watches.add(app, &[ref_key(&r(1))], b).unwrap();
        assert_eq!(watches.add(other, &[ref_key(&r(1))], b), Err(ServerFull(3)));
        assert_eq!(watches.watchers("app", &r(1)), vec![a, b]);
        assert!(watches.watchers("other", &r(1)).is_empty());
        watches.remove(app, &[ref_key(&r(1))], a);
        assert_eq!(watches.watchers("app", &r(1)), vec![b]);
        assert_eq!(watches.total(), 2);
        watches.remove(app, &[ref_key(&r(1))], b);
        watches.remove(app, &[ref_key(&r(2))], a);
        assert_eq!(watches.total(), 0);
        assert!(watches.watchers("app", &r(2)).is_empty());
    }

    #[test]
    fn the_index_shrinks_when_its_watchers_leave() {
        let watches = Watches::new(100_000);
        let sid = Sid::new();
        let app = "app";
        let keys: Vec<RefKey> = (0..50_000u32)
            .map(|n| {
                let mut key = [0u8; 32];
                key[..4].copy_from_slice(&n.to_be_bytes());
                key
            })
            .collect();
        watches.add(app, &keys, sid).unwrap();
        let capacity = |w: &Watches| {
            w.index
                .lock()
                .unwrap()
                .by_bucket
                .get(app)
                .map_or(0, HashMap::capacity)
        };
        let full = capacity(&watches);
        watches.remove(app, &keys[1..], sid);
        let after = capacity(&watches);
        assert!(full >= 50_000 && after < 100, "{full} -> {after}");
        watches.remove(app, &keys[..1], sid);
        assert!(watches.index.lock().unwrap().by_bucket.is_empty());
    }
}
