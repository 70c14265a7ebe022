//! The store entries through which something wakes a suspended run's wait,
//! in one place: the wait itself in the run's waits table, a durable timer
//! for a timer wait, a waiter entry per child for a child or batch wait, a
//! waiter entry (and a timeout timer) for a token wait. A run writes them
//! when it suspends ([`kiln_engine::Command::Arm`]); the commit that
//! delivers the wake removes them ([`kiln_engine::Command::Disarm`]).

use kiln_store::{Batch, TimerKey, Waiter};
use kiln_types::{BatchId, RunId, WaitOn, WaitRecord};

/// The timer of a wait, if it has one (a timer, or a token's timeout).
fn timer(run: &RunId, wait: &WaitRecord) -> Option<TimerKey> {
    let due = match &wait.on {
        WaitOn::Timer { due_at } => *due_at,
        WaitOn::Token { timeout_at, .. } => (*timeout_at)?,
        WaitOn::Run { .. } | WaitOn::Batch { .. } | WaitOn::Fetch { .. } => return None,
    };
    Some(TimerKey {
        due,
        run_id: run.clone(),
        wait_id: wait.id,
    })
}

/// Adds the entries that wake `wait` of a suspending `run`; returns its
/// timer, to arm in the timer service.
pub(crate) fn arm(batch: &mut Batch, run: &RunId, wait: &WaitRecord) -> Option<TimerKey> {
    let waiter = |batch_id: Option<BatchId>| Waiter {
        parent: run.clone(),
        wait_id: wait.id,
        batch: batch_id,
    };
    batch.put_wait(run, wait);
    match &wait.on {
        WaitOn::Timer { .. } | WaitOn::Fetch { .. } => {}
        WaitOn::Run { run_id } => {
            batch.put_waiter(run_id, &waiter(None));
        }
        WaitOn::Batch { batch_id, runs } => {
            let entry = waiter(BatchId::parse(batch_id).ok());
            for child in runs {
                batch.put_waiter(child, &entry);
            }
        }
        WaitOn::Token { token_id, .. } => {
            batch.put_token_waiter(token_id, &waiter(None));
        }
    }
    let timer = timer(run, wait)?;
    batch.put_timer(&timer);
    Some(timer)
}

/// Removes what [`arm`] added for `wait`.
pub(crate) fn disarm(batch: &mut Batch, run: &RunId, wait: &WaitRecord) {
    batch.delete_wait(run, wait.id);
    match &wait.on {
        WaitOn::Timer { .. } | WaitOn::Fetch { .. } => {}
        WaitOn::Run { run_id } => {
            batch.delete_waiter(run_id, run, wait.id);
        }
        WaitOn::Batch { runs, .. } => {
            for child in runs {
                batch.delete_waiter(child, run, wait.id);
            }
        }
        WaitOn::Token { token_id, .. } => {
            batch.delete_token_waiter(token_id, run, wait.id);
        }
    }
    if let Some(timer) = timer(run, wait) {
        batch.delete_timer(&timer);
    }
}
