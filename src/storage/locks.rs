//! Per-key async locks, for the stores: one lock per blob makes its read-modify-write atomic
//! while work on other blobs goes on in parallel.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Locks kept for keys nobody is using; past this many, idle locks are dropped on the next
/// insert (locks in use are never dropped, so the map can only exceed it by the number of
/// operations in flight).
const IDLE_LIMIT: usize = 4096;

/// One tokio mutex per key, each guarding a `V` (what is known in memory about that key).
/// A tokio mutex because its holder awaits file I/O: that is what makes the work under it
/// atomic.
pub struct KeyedLocks<K, V> {
    /// A std mutex: held only to find or insert a lock, never across an await.
    map: Mutex<HashMap<K, Arc<tokio::sync::Mutex<V>>>>,
}

impl<K: Hash + Eq + Clone, V: Default> Default for KeyedLocks<K, V> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Default> KeyedLocks<K, V> {
    /// The lock of `key`, created (holding `V::default()`) if there is none.
    pub fn get(&self, key: &K) -> Arc<tokio::sync::Mutex<V>> {
        let mut map = self.map.lock().expect("lock map poisoned");
        if let Some(lock) = map.get(key) {
            return lock.clone();
        }
        let lock = Arc::new(tokio::sync::Mutex::new(V::default()));
        map.insert(key.clone(), lock.clone());
        if map.len() > IDLE_LIMIT {
            map.retain(|_, l| Arc::strong_count(l) > 1);
        }
        lock
    }

    /// Waits for the lock of `key` and holds it until the guard is dropped (the guard owns
    /// the lock, so it can move into the work it protects).
    pub async fn lock(&self, key: &K) -> tokio::sync::OwnedMutexGuard<V> {
        self.get(key).lock_owned().await
    }
}
