//! The one state handle every connection shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::task::TaskTracker;

use crate::auth::Keys;
use crate::store::Store;

/// Shared server state. Cloning is cheap: it is one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    keys: Keys,
    store: Arc<dyn Store>,
    /// Tasks that run client events; shutdown waits for them so every write that started is
    /// finished and acknowledged before the sockets close.
    tasks: TaskTracker,
    /// Set once shutdown begins: new events are refused with an `{ error }` ack.
    closing: AtomicBool,
}

impl AppState {
    pub fn new(keys: Keys, store: Arc<dyn Store>) -> Self {
        Self(Arc::new(Inner {
            keys,
            store,
            tasks: TaskTracker::new(),
            closing: AtomicBool::new(false),
        }))
    }

    pub fn keys(&self) -> &Keys {
        &self.0.keys
    }

    pub fn store(&self) -> &dyn Store {
        &*self.0.store
    }

    pub fn tasks(&self) -> &TaskTracker {
        &self.0.tasks
    }

    pub fn is_closing(&self) -> bool {
        self.0.closing.load(Ordering::Acquire)
    }

    /// Refuses new events and waits until every event already accepted has been answered.
    pub async fn drain(&self) {
        self.0.closing.store(true, Ordering::Release);
        self.0.tasks.close();
        self.0.tasks.wait().await;
    }
}
