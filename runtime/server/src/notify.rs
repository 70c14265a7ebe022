//! Wakes whoever waits for a run to finish (`GET /api/v3/runs/{id}?wait=`).

use kiln_types::RunId;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// Waiters by run.
#[derive(Default)]
pub(crate) struct Notifier {
    waiters: Mutex<HashMap<RunId, Vec<oneshot::Sender<()>>>>,
}

impl Notifier {
    /// Registers a waiter; the receiver resolves when the run finishes.
    pub(crate) fn subscribe(&self, run: &RunId) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.lock().entry(run.clone()).or_default().push(tx);
        rx
    }

    /// Wakes every waiter of `run`.
    pub(crate) fn finished(&self, run: &RunId) {
        if let Some(waiters) = self.lock().remove(run) {
            for w in waiters {
                let _ = w.send(());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, Vec<oneshot::Sender<()>>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }
}
