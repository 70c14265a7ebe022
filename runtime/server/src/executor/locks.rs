//! Striped locks that serialise read-modify-write of one run's record
//! between the executor, the timer service and the API (cancel), and (a
//! second set) the admission of one request idempotency key. A holder of a
//! key lock may then take the trigger lock, never the other way round.

use kiln_types::RunId;
use std::hash::{Hash, Hasher};
use tokio::sync::{Mutex, MutexGuard};

const STRIPES: usize = 256;

/// One lock per stripe of run ids.
pub(crate) struct RunLocks {
    stripes: Vec<Mutex<()>>,
}

impl Default for RunLocks {
    fn default() -> Self {
        RunLocks {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl RunLocks {
    /// Locks the stripe of `run`.
    pub(crate) async fn lock(&self, run: &RunId) -> MutexGuard<'_, ()> {
        self.lock_key(run.as_str()).await
    }

    /// Locks the stripe of any key (a request idempotency key).
    pub(crate) async fn lock_key(&self, key: &str) -> MutexGuard<'_, ()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        self.stripes[hasher.finish() as usize % STRIPES]
            .lock()
            .await
    }
}
