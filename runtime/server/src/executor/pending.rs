//! `PENDING_VERSION` runs: triggered before any deployment of their
//! environment had their task. Each keeps its trigger beside it; the deploy
//! that brings the task makes the run from that trigger (the task's queue,
//! machine, retry policy and schema now known) and queues it, in one batch
//! with the trigger's removal. A trigger the task refuses (its schema, a
//! queue it does not declare) fails the run with the reason.

use super::Executor;
use crate::deployments::Deployed;
use crate::metrics::Before;
use crate::trigger::TriggerOptions;
use kiln_store::Batch;
use kiln_types::{RunError, RunStatus, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// What a pending run keeps of its trigger.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PendingTrigger {
    /// The payload as plain JSON (what the task's schema checks).
    pub(crate) payload: Value,
    /// The trigger's options.
    pub(crate) options: TriggerOptions,
    /// When it was triggered: a `delay` or `ttl` counts from then, not
    /// from the deploy.
    #[serde(default)]
    pub(crate) triggered_at: Option<Timestamp>,
}

impl PendingTrigger {
    /// The record the store keeps.
    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl Executor {
    /// Makes and queues every pending run whose task `deployed` has.
    /// Returns how many it released (queued or failed).
    pub(crate) async fn release_pending(
        &self,
        deployed: &Arc<Deployed>,
    ) -> kiln_store::Result<usize> {
        let store = &self.shared.store;
        // Two deploys release one at a time, so no run is made twice.
        let _one_release = self.shared.pending_lock.lock().await;
        let mut released = 0;
        for (id, record) in store.pending()? {
            // Under the run's lock, as a cancel takes it: a run canceled
            // while pending stays canceled.
            let _run = self.shared.locks.lock(&id).await;
            let Some(run) = store.run(&id)? else {
                let mut batch = Batch::default();
                batch.delete_pending(&id);
                store.commit(batch).await?;
                continue;
            };
            if run.status != RunStatus::PendingVersion {
                // Canceled while it waited: only the trigger is left.
                let mut batch = Batch::default();
                batch.delete_pending(&id);
                store.commit(batch).await?;
                continue;
            }
            if deployed.record.manifest.task(&run.task_id).is_none() {
                continue;
            }
            let now = Timestamp::now();
            let made = match serde_json::from_slice::<PendingTrigger>(&record) {
                Ok(trigger) => crate::trigger::new_run(
                    deployed,
                    &run.task_id,
                    &trigger.payload,
                    store.payload_of(&run)?,
                    run.payload_type.clone(),
                    trigger.options,
                    trigger.triggered_at.unwrap_or(run.created_at),
                )
                .map_err(|e| e.message().to_string()),
                Err(e) => Err(format!("its trigger could not be read: {e}")),
            };
            let mut batch = Batch::default();
            batch.delete_pending(&id);
            let queued = match made {
                Ok(mut made) => {
                    made.id = run.id.clone();
                    made.created_at = run.created_at;
                    made.updated_at = now;
                    made.tags = run.tags.clone();
                    made.metadata = run.metadata.clone();
                    if made.status == RunStatus::Queued
                        && made.expires_at.is_some_and(|at| at <= now)
                    {
                        // Its ttl, counted from the trigger, ran out while it
                        // waited for the deploy.
                        made.status = RunStatus::Expired;
                        made.expired_at = Some(now);
                        made.finished_at = Some(now);
                        batch.put_run(&made);
                        crate::metrics::observe_run(Some(Before::of(&run)), &made);
                        None
                    } else {
                        Self::stage_new(&mut batch, &made, None, now);
                        Some(made)
                    }
                }
                Err(reason) => {
                    let mut failed = run.clone();
                    failed.status = RunStatus::Failed;
                    failed.error = Some(RunError::new(
                        "TriggerError",
                        format!(
                            "version {} has task `{}`, but it refuses this run's trigger: {reason}",
                            deployed.record.version, run.task_id
                        ),
                    ));
                    failed.updated_at = now;
                    failed.finished_at = Some(now);
                    batch.put_run(&failed);
                    crate::metrics::observe_run(Some(Before::of(&run)), &failed);
                    None
                }
            };
            store.commit(batch).await?;
            // A run that ended here (expired, refused) is told to whoever
            // waits for it by the store's listener, as every end is.
            if let Some(made) = queued {
                self.admit(&made);
            }
            released += 1;
        }
        Ok(released)
    }
}
