//! Firing schedules: each due occurrence becomes exactly one run.
//!
//! The scheduler reads what is due from the store's time-ordered due index
//! (one range scan, however many schedules exist), and for each due schedule
//! commits, in one atomic batch with the others of that scan:
//! - the run, `QUEUED` on the current deployment, with the scheduled payload;
//! - the occurrence record (schedule id + occurrence time -> run id);
//! - the schedule with its `lastTimestamp` and its next occurrence, which
//!   moves its due-index entry.
//!
//! A crash before the commit is durable loses all of these, and the
//! occurrence is still due at the next start; after it, none of them is due
//! again. So an occurrence fires once across restarts and `SIGKILL`s.
//!
//! Missed occurrences: if the server was down across one or more
//! occurrences of a schedule, the schedule fires once when it comes back,
//! for the latest occurrence it missed, and carries on from there.

use super::{ScheduleError, Schedules};
use kiln_cron::CronSchedule;
use kiln_store::Batch;
use kiln_types::{Run, RunSchedule, Schedule, Timestamp};
use serde_json::{Value, json};
use std::time::Duration;

/// The most schedules fired in one commit.
const FIRE_BATCH: usize = 512;
/// The longest the scheduler sleeps without looking at the due index.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// How many upcoming occurrences a scheduled payload lists.
const UPCOMING: usize = 5;

/// What one pass over the due index did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fired {
    /// Runs created.
    pub runs: usize,
    /// Due schedules that made no run (their task is not in the current
    /// deployment, or their entry was stale).
    pub skipped: usize,
}

impl Schedules {
    /// Starts the scheduler. Call it after the executor has recovered, so a
    /// run fired now is not also re-queued by recovery.
    pub(crate) fn start(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let now = this.inner.clock.now();
                if let Err(error) = this.fire_due(now).await {
                    tracing::error!(%error, "firing schedules failed; trying again in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                let delay = match this.inner.store.next_schedule_due() {
                    Ok(Some(at)) => this.inner.clock.real_delay(at).min(MAX_SLEEP),
                    Ok(None) => MAX_SLEEP,
                    Err(error) => {
                        tracing::error!(%error, "reading the schedule index failed");
                        Duration::from_secs(1)
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = this.inner.changed.notified() => {}
                }
            }
        });
    }

    /// Fires every schedule due at or before `now` (schedule time), in
    /// commits of up to [`FIRE_BATCH`] schedules, and queues their runs.
    pub async fn fire_due(&self, now: Timestamp) -> Result<Fired, ScheduleError> {
        let mut total = Fired::default();
        loop {
            let (commit, runs, scanned, fired) = {
                let _guard = self.lock();
                let due = self
                    .inner
                    .store
                    .due_schedules(Timestamp(now.as_millis() + 1), FIRE_BATCH)?;
                if due.is_empty() {
                    return Ok(total);
                }
                let mut batch = Batch::default();
                let mut runs = Vec::new();
                let mut fired = Fired::default();
                for (at, id) in &due {
                    match self.fire_one(&mut batch, *at, id, now)? {
                        Some(run) => {
                            runs.push(run);
                            fired.runs += 1;
                        }
                        None => fired.skipped += 1,
                    }
                }
                (self.inner.store.commit(batch), runs, due.len(), fired)
            };
            commit.await?;
            for run in runs {
                self.inner.executor.enqueue(&run);
            }
            total.runs += fired.runs;
            total.skipped += fired.skipped;
            if scanned < FIRE_BATCH {
                return Ok(total);
            }
        }
    }

    /// Adds one due schedule's firing to `batch`; returns the run it makes.
    fn fire_one(
        &self,
        batch: &mut Batch,
        due: Timestamp,
        id: &kiln_types::ScheduleId,
        now: Timestamp,
    ) -> Result<Option<Run>, ScheduleError> {
        let store = &self.inner.store;
        let schedule = match store.schedule(id)? {
            Some(s) if s.active && s.next_run == Some(due) => s,
            _ => {
                batch.delete_due(due, id);
                return Ok(None);
            }
        };
        let cron = match CronSchedule::parse(&schedule.cron, &schedule.timezone) {
            Ok(cron) => cron,
            Err(error) => {
                tracing::error!(schedule = %schedule.id, %error, "a stored schedule no longer parses; deactivating it");
                let mut off = schedule.clone();
                off.active = false;
                off.next_run = None;
                batch.put_schedule(&off, Some(&schedule));
                return Ok(None);
            }
        };
        // The latest occurrence that has come (the due one, unless the server
        // was down across later ones too), then the first after now.
        let occurrence = cron
            .latest_at_or_before(now)
            .filter(|t| *t >= due)
            .unwrap_or(due);
        if occurrence != due {
            tracing::warn!(schedule = %schedule.id, missed_from = %due.to_iso(), firing = %occurrence.to_iso(), "occurrences were missed while the server was down; firing the latest once");
        }
        let next = cron.next_after(occurrence.max(now));
        let mut updated = schedule.clone();
        updated.last_timestamp = Some(occurrence);
        updated.next_run = next;
        batch.put_schedule(&updated, Some(&schedule));
        if store.occurrence(&schedule.id, occurrence)?.is_some() {
            // Already fired (only possible if the index was rebuilt by hand).
            return Ok(None);
        }
        let Some(run) = self.scheduled_run(&schedule, &cron, occurrence) else {
            tracing::warn!(schedule = %schedule.id, task = %schedule.task_id, "the task is not a scheduled task of the current deployment; occurrence skipped");
            return Ok(None);
        };
        batch.put_new_run(&run);
        crate::metrics::observe_run(None, &run);
        batch.put_occurrence(&schedule.id, occurrence, schedule.last_timestamp, &run.id);
        Ok(Some(run))
    }

    /// The run for one occurrence, on the current deployment, if it still
    /// has the schedule's task as a scheduled task.
    fn scheduled_run(
        &self,
        schedule: &Schedule,
        cron: &CronSchedule,
        occurrence: Timestamp,
    ) -> Option<Run> {
        let deployed = self.inner.deployments.current()?;
        let task = deployed
            .record
            .manifest
            .task(&schedule.task_id)
            .filter(|t| t.scheduled)?;
        let now = Timestamp::now();
        let payload = scheduled_payload(schedule, cron, occurrence, self.inner.clock.now());
        // Built like every other run: the task's queue, machine and retry.
        let run = crate::trigger::new_run(
            &deployed,
            &task.id,
            &payload,
            payload.to_string(),
            "application/json".into(),
            crate::trigger::TriggerOptions::default(),
            now,
        );
        let run = match run {
            Ok(run) => run,
            Err(error) => {
                tracing::warn!(schedule = %schedule.id, error = %error.message(), "the occurrence's run was refused");
                return None;
            }
        };
        Some(Run {
            schedule: Some(RunSchedule {
                id: schedule.id.clone(),
                external_id: schedule.external_id.clone(),
                deduplication_key: schedule.deduplication_key.clone(),
                cron: schedule.cron.clone(),
                timestamp: occurrence,
            }),
            ..run
        })
    }
}

/// The payload of a scheduled run, in Trigger.dev's shape.
fn scheduled_payload(
    schedule: &Schedule,
    cron: &CronSchedule,
    occurrence: Timestamp,
    now: Timestamp,
) -> Value {
    let mut payload = json!({
        "type": schedule.kind.as_str(),
        "timestamp": occurrence.to_iso(),
        "timezone": schedule.timezone,
        "scheduleId": schedule.id,
        "upcoming": cron
            .upcoming(occurrence.max(now), UPCOMING)
            .into_iter()
            .map(Timestamp::to_iso)
            .collect::<Vec<_>>(),
    });
    if let Some(last) = schedule.last_timestamp {
        payload["lastTimestamp"] = json!(last.to_iso());
    }
    if let Some(external) = &schedule.external_id {
        payload["externalId"] = json!(external);
    }
    payload
}
