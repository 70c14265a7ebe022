//! Delayed runs: moving a `DELAYED` run's start (reschedule) and folding a
//! debounced trigger into the run its window holds. Both change the run's
//! delay timer under the run's lock, so they never race the timer firing.

use super::Executor;
use kiln_store::{Batch, TimerKey};
use kiln_types::{DebounceMode, Run, RunId, RunStatus, Timestamp};

/// Why a reschedule was refused.
#[derive(Debug, thiserror::Error)]
pub enum RescheduleError {
    /// No such run.
    #[error("run not found")]
    NotFound,
    /// The run is not `DELAYED`.
    #[error("only a DELAYED run can be rescheduled; this one is {0}")]
    NotDelayed(RunStatus),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
}

impl Executor {
    /// Moves a `DELAYED` run's start to `at` (at once if `at` has passed).
    pub async fn reschedule(&self, run_id: &RunId, at: Timestamp) -> Result<Run, RescheduleError> {
        let shared = &self.shared;
        let _guard = shared.locks.lock(run_id).await;
        let mut run = shared.store.run(run_id)?.ok_or(RescheduleError::NotFound)?;
        if run.status != RunStatus::Delayed {
            return Err(RescheduleError::NotDelayed(run.status));
        }
        let timers = move_delay(&mut run, at);
        let mut batch = Batch::default();
        for timer in &timers.0 {
            batch.delete_timer(timer);
        }
        for timer in &timers.1 {
            batch.put_timer(timer);
        }
        batch.put_run(&run);
        shared.store.commit(batch).await?;
        self.arm(timers.1);
        Ok(run)
    }

    /// Folds `incoming` (a trigger with the same debounce key) into the run
    /// holding the window: its start moves to the incoming delay after now
    /// (never past the window's deadline) and, in trailing mode, it takes
    /// the incoming payload, metadata and tags. `None` when the window has
    /// closed (the run started or ended): the caller opens a new one.
    pub(crate) async fn debounce(
        &self,
        holder: &RunId,
        incoming: &Run,
    ) -> Result<Option<Run>, kiln_store::StoreError> {
        let shared = &self.shared;
        let _guard = shared.locks.lock(holder).await;
        let Some(mut run) = shared.store.run(holder)? else {
            return Ok(None);
        };
        let (Some(window), Some(next)) = (run.debounce.as_mut(), incoming.debounce.as_ref()) else {
            return Ok(None);
        };
        if run.status != RunStatus::Delayed {
            return Ok(None);
        }
        window.triggers = window.triggers.saturating_add(1);
        window.delay_ms = next.delay_ms;
        let now = Timestamp::now();
        let at = window.due(now);
        if window.mode == DebounceMode::Trailing {
            run.payload = incoming.payload.clone();
            run.payload_type = incoming.payload_type.clone();
            if incoming.metadata.is_some() {
                run.metadata = incoming.metadata.clone();
            }
            if !incoming.tags.is_empty() {
                run.tags = incoming.tags.clone();
            }
        }
        run.updated_at = now;
        let (old, new) = move_delay(&mut run, at);
        let mut batch = Batch::default();
        for timer in &old {
            batch.delete_timer(timer);
        }
        for timer in &new {
            batch.put_timer(timer);
        }
        batch.put_run(&run);
        shared.store.commit(batch).await?;
        self.arm(new);
        Ok(Some(run))
    }
}

/// Sets a delayed run's start to `at`; returns its timers before and after.
fn move_delay(run: &mut Run, at: Timestamp) -> (Vec<TimerKey>, Vec<TimerKey>) {
    let old = TimerKey::of_run(run);
    run.delayed_until = Some(at);
    run.updated_at = Timestamp::now();
    (old, TimerKey::of_run(run))
}
