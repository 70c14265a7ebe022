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
        self.move_delay(&mut run, at).await?;
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
        window.delay_ms = next.delay_ms;
        let at = window.due(Timestamp::now());
        if window.mode == DebounceMode::Trailing {
            run.payload = incoming.payload.clone();
            run.payload_blob = None;
            run.payload_type = incoming.payload_type.clone();
            if incoming.metadata.is_some() {
                run.metadata = incoming.metadata.clone();
            }
            if !incoming.tags.is_empty() {
                run.tags = incoming.tags.clone();
            }
        }
        self.move_delay(&mut run, at).await?;
        Ok(Some(run))
    }

    /// Sets a delayed run's start to `at` and commits it with its delay
    /// timer moved. Called under the run's lock.
    async fn move_delay(&self, run: &mut Run, at: Timestamp) -> Result<(), kiln_store::StoreError> {
        let mut batch = Batch::default();
        for old in TimerKey::of_run(run) {
            batch.delete_timer(&old);
        }
        run.delayed_until = Some(at);
        run.updated_at = Timestamp::now();
        let timers = TimerKey::of_run(run);
        for new in &timers {
            batch.put_timer(new);
        }
        batch.put_run(run);
        self.shared.store.commit(batch).await?;
        self.arm(timers);
        Ok(())
    }
}
