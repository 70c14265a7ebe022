//! Wakes whoever waits for a run to finish (`GET /api/v3/runs/{id}?wait=`).
//!
//! A waiter whose wait timed out is gone (its receiver dropped) but its
//! sender stays registered until the run finishes, which for a run that
//! waits a week may be never. So each subscription first drops the closed
//! senders of its run, and every so often (after as many subscriptions as
//! the last sweep kept runs, at least 1,024) all of them: the map holds
//! about the waiters that are still waiting, amortised O(1) per call.

use kiln_types::RunId;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// Subscriptions between two sweeps, at least.
const SWEEP_EVERY: usize = 1_024;

/// Waiters by run.
#[derive(Default)]
pub(crate) struct Notifier {
    waiters: Mutex<Waiters>,
}

#[derive(Default)]
struct Waiters {
    by_run: HashMap<RunId, Vec<oneshot::Sender<()>>>,
    /// Subscriptions since the last sweep.
    since_sweep: usize,
    /// Runs with waiters the last sweep left.
    kept: usize,
}

impl Notifier {
    /// Registers a waiter; the receiver resolves when the run finishes.
    pub(crate) fn subscribe(&self, run: &RunId) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut waiters = self.lock();
        let senders = waiters.by_run.entry(run.clone()).or_default();
        senders.retain(|s| !s.is_closed());
        senders.push(tx);
        waiters.since_sweep += 1;
        if waiters.since_sweep >= waiters.kept.max(SWEEP_EVERY) {
            waiters.by_run.retain(|_, senders| {
                senders.retain(|s| !s.is_closed());
                !senders.is_empty()
            });
            waiters.since_sweep = 0;
            waiters.kept = waiters.by_run.len();
        }
        rx
    }

    /// Wakes every waiter of `run`.
    pub(crate) fn finished(&self, run: &RunId) {
        if let Some(waiters) = self.lock().by_run.remove(run) {
            for w in waiters {
                let _ = w.send(());
            }
        }
    }

    /// Senders held, for tests.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().by_run.values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_that_gave_up_are_let_go() {
        let notifier = Notifier::default();
        let waiting = RunId::generate(1);
        // 80,000 waits that time out on one run that never finishes.
        for _ in 0..80_000 {
            drop(notifier.subscribe(&waiting));
        }
        assert!(notifier.held() <= 1, "held {}", notifier.held());
        // One wait each on 10,000 runs that never finish.
        for n in 0..10_000 {
            drop(notifier.subscribe(&RunId::generate(n)));
        }
        assert!(
            notifier.held() <= SWEEP_EVERY + 1,
            "held {}",
            notifier.held()
        );
        // Live waiters stay and are woken.
        let mut live = notifier.subscribe(&waiting);
        for n in 0..5_000 {
            drop(notifier.subscribe(&RunId::generate(n)));
        }
        notifier.finished(&waiting);
        assert_eq!(live.try_recv(), Ok(()));
    }
}
