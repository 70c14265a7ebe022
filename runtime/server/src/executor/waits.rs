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

/// The runs a suspended run may wait on: the children of every run or batch
/// wait armed since the set was read from the store's `waiter/` entries,
/// less the runs that finished since. A run's end reads its waiters from
/// the store only if it is here (`None`: not known, and every end reads
/// them), so the end of a run nothing waits on, most runs, makes no scan.
///
/// The executor's gate holds it, so it is read and changed only under the
/// gate, with the commit of the decision that changed it made: a wait
/// armed and the end of the run it waits on change it in the order they
/// were decided, as they change the store. A run that finished leaves it
/// (its end told every waiter it had); a wait armed on a run that already
/// finished puts that run back for good, so once the set is twice the size
/// it had when last read it is read again from the store.
pub(crate) struct WaitedOn {
    runs: Option<std::collections::HashSet<RunId>>,
    /// Its size when last read from the store.
    read: usize,
}

/// The size under which the set is not read again.
const READ_AGAIN_OVER: usize = 1_024;

impl WaitedOn {
    /// The set as the store holds it now.
    pub(crate) fn read(store: &kiln_store::Store) -> Self {
        let runs = read_waited_on(store);
        let read = runs.as_ref().map_or(0, |r| r.len());
        WaitedOn { runs, read }
    }

    /// Whether a run may have runs waiting on it (false: it has none).
    pub(crate) fn may_be_waited_on(&self, run: &RunId) -> bool {
        self.runs.as_ref().is_none_or(|runs| runs.contains(run))
    }

    /// Takes in what a decision whose commit was just made changed: the
    /// runs its armed waits wait on, the runs it finished.
    pub(crate) fn decided(&mut self, commands: &[kiln_engine::Command], store: &kiln_store::Store) {
        use kiln_engine::Command;
        let Some(runs) = self.runs.as_mut() else {
            return;
        };
        for command in commands {
            match command {
                Command::Arm { wait, .. } => match &wait.on {
                    WaitOn::Run { run_id } => {
                        runs.insert(run_id.clone());
                    }
                    WaitOn::Batch { runs: children, .. } => {
                        runs.extend(children.iter().cloned());
                    }
                    WaitOn::Timer { .. } | WaitOn::Token { .. } | WaitOn::Fetch { .. } => {}
                },
                Command::Finished { run } => {
                    runs.remove(run);
                }
                _ => {}
            }
        }
        if runs.len() > self.read.saturating_mul(2).max(READ_AGAIN_OVER) {
            *self = WaitedOn::read(store);
        }
    }
}

/// The runs the store's `waiter/` entries name; `None` if it cannot be
/// read (every run's end then reads its waiters).
fn read_waited_on(store: &kiln_store::Store) -> Option<std::collections::HashSet<RunId>> {
    match store.waited_on() {
        Ok(runs) => Some(runs),
        Err(error) => {
            tracing::warn!(%error, "reading which runs are waited on failed; every run's end reads its waiters");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_engine::Command;
    use kiln_store::{MemoryBackend, Store};
    use std::sync::Arc;

    fn arm_on(parent: &RunId, on: WaitOn) -> Command {
        Command::Arm {
            run: parent.clone(),
            wait: WaitRecord { id: 1, on },
        }
    }

    #[tokio::test]
    async fn a_run_is_waited_on_from_the_wait_armed_until_it_finishes() {
        let store = Store::new(Arc::new(MemoryBackend::new()));
        let (parent, child, other) = (RunId::generate(1), RunId::generate(2), RunId::generate(3));
        // Read from the store at start: an entry written before is seen.
        let mut batch = Batch::default();
        arm(
            &mut batch,
            &parent,
            &WaitRecord {
                id: 1,
                on: WaitOn::Run {
                    run_id: child.clone(),
                },
            },
        );
        store.commit(batch).await.unwrap();
        let mut waited = WaitedOn::read(&store);
        assert!(waited.may_be_waited_on(&child));
        assert!(!waited.may_be_waited_on(&other));
        // A run finished is no longer waited on; one a wait is armed on is.
        waited.decided(&[Command::Finished { run: child.clone() }], &store);
        assert!(!waited.may_be_waited_on(&child));
        let batch_children = vec![RunId::generate(4), RunId::generate(5)];
        waited.decided(
            &[
                arm_on(
                    &parent,
                    WaitOn::Run {
                        run_id: other.clone(),
                    },
                ),
                arm_on(
                    &parent,
                    WaitOn::Batch {
                        batch_id: "batch_1".into(),
                        runs: batch_children.clone(),
                    },
                ),
            ],
            &store,
        );
        assert!(waited.may_be_waited_on(&other));
        assert!(batch_children.iter().all(|c| waited.may_be_waited_on(c)));
    }

    #[tokio::test]
    async fn runs_left_in_the_set_go_once_it_doubles() {
        let store = Store::new(Arc::new(MemoryBackend::new()));
        let mut waited = WaitedOn::read(&store);
        let parent = RunId::generate(0);
        // Waits armed on runs with no entry in the store (as a wait armed
        // on a run that had already finished leaves it): the set grows
        // until it is read again, and then holds only what the store does.
        let runs: Vec<RunId> = (1..=READ_AGAIN_OVER as u64 + 1)
            .map(RunId::generate)
            .collect();
        for run in &runs[..READ_AGAIN_OVER] {
            waited.decided(
                &[arm_on(
                    &parent,
                    WaitOn::Run {
                        run_id: run.clone(),
                    },
                )],
                &store,
            );
        }
        assert!(waited.may_be_waited_on(&runs[0]));
        waited.decided(
            &[arm_on(
                &parent,
                WaitOn::Run {
                    run_id: runs[READ_AGAIN_OVER].clone(),
                },
            )],
            &store,
        );
        assert!(runs.iter().all(|r| !waited.may_be_waited_on(r)));
    }
}
