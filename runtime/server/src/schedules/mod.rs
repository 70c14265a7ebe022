//! Schedules: scheduled tasks fired on cron expressions in IANA time zones.
//!
//! - Imperative schedules are created, changed and deleted through the API
//!   (upserted by `deduplicationKey`); declarative ones are declared on the
//!   task in the bundle and synced on each deploy ([`Schedules::sync`]).
//! - [`firing`] turns due occurrences into runs, exactly once each: the run,
//!   the occurrence record and the schedule's next occurrence commit
//!   together, so a crash leaves either all of them or none.
//! - Every change to a schedule reads and writes it under one lock that is
//!   held only while the change is applied to the store (not while it is
//!   made durable), so the API and the scheduler never overwrite each other.

mod clock;
mod firing;

pub use clock::ScheduleClock;

use crate::deployments::Deployments;
use crate::executor::Executor;
use kiln_cron::CronSchedule;
use kiln_store::{Batch, ScheduleKey, Store, StoreError};
use kiln_types::{Schedule, ScheduleId, ScheduleKind, Timestamp};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// The longest external id or deduplication key accepted.
pub const MAX_KEY_LEN: usize = 512;

/// Why a schedule call was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// No such schedule.
    #[error("Schedule not found")]
    NotFound,
    /// The request cannot be carried out as given (a bad cron, a task that
    /// is not a scheduled task...).
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a backend gives to create or update an imperative schedule.
#[derive(Debug, Clone, Default)]
pub struct ScheduleInput {
    /// The scheduled task to fire.
    pub task: String,
    /// The five-field cron expression.
    pub cron: String,
    /// The IANA time zone; UTC when absent.
    pub timezone: Option<String>,
    /// The user's id for what the schedule belongs to.
    pub external_id: Option<String>,
    /// Makes create idempotent: a second create with the same key updates
    /// the first schedule.
    pub deduplication_key: Option<String>,
}

/// The schedules of this server and the scheduler that fires them.
#[derive(Clone)]
pub struct Schedules {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    deployments: Arc<Deployments>,
    executor: Executor,
    clock: ScheduleClock,
    lock: Mutex<()>,
    changed: Notify,
}

impl Schedules {
    /// The service; call [`Schedules::start`] once runs have been recovered.
    pub(crate) fn new(
        store: Store,
        deployments: Arc<Deployments>,
        executor: Executor,
        clock: ScheduleClock,
    ) -> Self {
        Schedules {
            inner: Arc::new(Inner {
                store,
                deployments,
                executor,
                clock,
                lock: Mutex::new(()),
                changed: Notify::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.inner.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The scheduler's clock.
    pub fn clock(&self) -> ScheduleClock {
        self.inner.clock
    }

    /// A schedule by id.
    pub fn get(&self, id: &ScheduleId) -> Result<Schedule, ScheduleError> {
        self.inner
            .store
            .schedule(id)?
            .ok_or(ScheduleError::NotFound)
    }

    /// One page of schedules, oldest first, with the number of all that
    /// match. `external_id` narrows the list to one tenant's schedules.
    pub fn list(
        &self,
        page: usize,
        per_page: usize,
        external_id: Option<&str>,
    ) -> Result<(Vec<Schedule>, usize), ScheduleError> {
        let mut all = self.inner.store.schedules()?;
        if let Some(external) = external_id {
            all.retain(|s| s.external_id.as_deref() == Some(external));
        }
        let count = all.len();
        let start = page.saturating_sub(1).saturating_mul(per_page);
        Ok((all.into_iter().skip(start).take(per_page).collect(), count))
    }

    /// Checks a create or update against the current deployment: the task
    /// must be a scheduled task, the cron and time zone valid.
    fn check(&self, input: &ScheduleInput) -> Result<CronSchedule, ScheduleError> {
        let Some(deployed) = self.inner.deployments.current() else {
            return Err(ScheduleError::Invalid(format!(
                "Task `{}` not found: nothing is deployed yet",
                input.task
            )));
        };
        match deployed.record.manifest.task(&input.task) {
            None => {
                return Err(ScheduleError::Invalid(format!(
                    "Task `{}` not found in version {}",
                    input.task, deployed.record.version
                )));
            }
            Some(task) if !task.scheduled => {
                return Err(ScheduleError::Invalid(format!(
                    "Task `{}` is not a scheduled task: only tasks that take `kiln_sdk::schedules::ScheduledPayload` accept schedules",
                    input.task
                )));
            }
            Some(_) => {}
        }
        for (what, value) in [
            ("externalId", &input.external_id),
            ("deduplicationKey", &input.deduplication_key),
        ] {
            if let Some(v) = value
                && (v.is_empty() || v.len() > MAX_KEY_LEN)
            {
                return Err(ScheduleError::Invalid(format!(
                    "{what} must be 1 to {MAX_KEY_LEN} characters"
                )));
            }
        }
        CronSchedule::parse(&input.cron, input.timezone.as_deref().unwrap_or("UTC"))
            .map_err(|e| ScheduleError::Invalid(e.to_string()))
    }

    /// The next occurrence of a schedule that is (re)armed now.
    fn next_run(&self, cron: &CronSchedule) -> Option<Timestamp> {
        cron.next_after(self.inner.clock.now())
    }

    /// Commits a change made under the lock, then wakes the scheduler.
    async fn commit(&self, commit: kiln_store::Commit) -> Result<(), ScheduleError> {
        commit.await?;
        self.inner.changed.notify_one();
        Ok(())
    }

    /// Creates an imperative schedule, or updates the one with the same
    /// deduplication key (keeping its id and whether it is active).
    pub async fn create(&self, input: ScheduleInput) -> Result<Schedule, ScheduleError> {
        let cron = self.check(&input)?;
        let (schedule, commit) = {
            let _guard = self.lock();
            let existing = match &input.deduplication_key {
                Some(key) => self
                    .inner
                    .store
                    .schedule_by_key(&ScheduleKey::Deduplication(key.clone()))?,
                None => None,
            };
            let mut batch = Batch::default();
            let schedule = match existing {
                Some(old) => {
                    let schedule = self.changed(&old, &input, &cron);
                    batch.put_schedule(&schedule, Some(&old));
                    schedule
                }
                None => {
                    let mut schedule =
                        self.new_schedule(ScheduleKind::Imperative, &input.task, &cron);
                    schedule.external_id = input.external_id.clone();
                    schedule.deduplication_key = input.deduplication_key.clone();
                    batch.put_schedule(&schedule, None);
                    schedule
                }
            };
            (schedule, self.inner.store.commit(batch))
        };
        self.commit(commit).await?;
        Ok(schedule)
    }

    /// `old` with the task, cron, time zone and external id of `input`; its
    /// next occurrence is worked out again if the cron or zone changed.
    fn changed(&self, old: &Schedule, input: &ScheduleInput, cron: &CronSchedule) -> Schedule {
        let mut schedule = if old.cron != cron.expression() || old.timezone != cron.timezone() {
            self.rearmed(old, cron)
        } else {
            old.clone()
        };
        schedule.task_id = input.task.clone();
        schedule.external_id = input.external_id.clone();
        schedule.updated_at = Timestamp::now();
        schedule
    }

    /// `old` with a new cron and time zone, and its next occurrence after
    /// now under them (if it is active).
    fn rearmed(&self, old: &Schedule, cron: &CronSchedule) -> Schedule {
        let mut schedule = old.clone();
        schedule.cron = cron.expression().to_string();
        schedule.timezone = cron.timezone().to_string();
        schedule.next_run = if old.active {
            self.next_run(cron)
        } else {
            None
        };
        schedule.updated_at = Timestamp::now();
        schedule
    }

    /// A new, active schedule of `task`, armed for its next occurrence.
    fn new_schedule(&self, kind: ScheduleKind, task: &str, cron: &CronSchedule) -> Schedule {
        let now = Timestamp::now();
        Schedule {
            id: ScheduleId::generate(now.as_millis()),
            kind,
            task_id: task.to_string(),
            cron: cron.expression().to_string(),
            timezone: cron.timezone().to_string(),
            external_id: None,
            deduplication_key: None,
            active: true,
            next_run: self.next_run(cron),
            last_timestamp: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Reads a schedule under the lock, lets `change` alter it, and commits
    /// the result.
    async fn modify(
        &self,
        id: &ScheduleId,
        change: impl FnOnce(&Schedule) -> Result<Schedule, ScheduleError>,
    ) -> Result<Schedule, ScheduleError> {
        let (schedule, commit) = {
            let _guard = self.lock();
            let old = self.get(id)?;
            let schedule = change(&old)?;
            let mut batch = Batch::default();
            batch.put_schedule(&schedule, Some(&old));
            (schedule, self.inner.store.commit(batch))
        };
        self.commit(commit).await?;
        Ok(schedule)
    }

    /// Changes an imperative schedule's task, cron, time zone and external
    /// id.
    pub async fn update(
        &self,
        id: &ScheduleId,
        input: ScheduleInput,
    ) -> Result<Schedule, ScheduleError> {
        let cron = self.check(&input)?;
        self.modify(id, |old| {
            refuse_declarative(old, "changed")?;
            Ok(self.changed(old, &input, &cron))
        })
        .await
    }

    /// Makes a schedule fire again, from its next occurrence after now.
    pub async fn activate(&self, id: &ScheduleId) -> Result<Schedule, ScheduleError> {
        self.modify(id, |old| {
            let mut schedule = old.clone();
            if !old.active {
                let cron = CronSchedule::parse(&old.cron, &old.timezone)
                    .map_err(|e| ScheduleError::Invalid(e.to_string()))?;
                schedule.active = true;
                schedule.next_run = self.next_run(&cron);
                schedule.updated_at = Timestamp::now();
            }
            Ok(schedule)
        })
        .await
    }

    /// Stops a schedule from firing until it is activated again.
    pub async fn deactivate(&self, id: &ScheduleId) -> Result<Schedule, ScheduleError> {
        self.modify(id, |old| {
            let mut schedule = old.clone();
            if old.active {
                schedule.active = false;
                schedule.next_run = None;
                schedule.updated_at = Timestamp::now();
            }
            Ok(schedule)
        })
        .await
    }

    /// Deletes an imperative schedule. Its runs keep their record of it.
    pub async fn delete(&self, id: &ScheduleId) -> Result<Schedule, ScheduleError> {
        let (schedule, commit) = {
            let _guard = self.lock();
            let schedule = self.get(id)?;
            refuse_declarative(&schedule, "deleted")?;
            let mut batch = Batch::default();
            batch.delete_schedule(&schedule);
            (schedule, self.inner.store.commit(batch))
        };
        self.commit(commit).await?;
        Ok(schedule)
    }

    /// Makes the declarative schedules match the current deployment's tasks:
    /// a task's new `cron` adds a schedule, a changed one updates it (same
    /// id), and a removed one, or a removed task, deletes it. Run after each
    /// deploy and at start-up; a second run changes nothing. It reads the
    /// current deployment under the lock, so when two deploys race the last
    /// sync is of the latest deployment.
    pub async fn sync(&self) -> Result<SyncReport, ScheduleError> {
        let mut report = SyncReport::default();
        let commit = {
            let _guard = self.lock();
            let Some(deployed) = self.inner.deployments.current() else {
                return Ok(report);
            };
            let mut existing: HashMap<String, Schedule> = self
                .inner
                .store
                .declarative_schedules()?
                .into_iter()
                .map(|s| (s.task_id.clone(), s))
                .collect();
            let mut batch = Batch::default();
            for task in &deployed.record.manifest.tasks {
                let Some(declared) = &task.cron else {
                    continue;
                };
                let cron = CronSchedule::parse(
                    &declared.pattern,
                    declared.timezone.as_deref().unwrap_or("UTC"),
                )
                .map_err(|e| ScheduleError::Invalid(format!("task `{}`: {e}", task.id)))?;
                match existing.remove(&task.id) {
                    Some(old)
                        if old.cron == cron.expression() && old.timezone == cron.timezone() => {}
                    Some(old) => {
                        let schedule = self.rearmed(&old, &cron);
                        batch.put_schedule(&schedule, Some(&old));
                        report.updated += 1;
                    }
                    None => {
                        let schedule =
                            self.new_schedule(ScheduleKind::Declarative, &task.id, &cron);
                        batch.put_schedule(&schedule, None);
                        report.created += 1;
                    }
                }
            }
            for stale in existing.values() {
                batch.delete_schedule(stale);
                report.deleted += 1;
            }
            if batch.is_empty() {
                return Ok(report);
            }
            self.inner.store.commit(batch)
        };
        self.commit(commit).await?;
        Ok(report)
    }
}

/// What a declarative sync changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// Schedules added for tasks that newly declare a cron.
    pub created: usize,
    /// Schedules whose cron or time zone changed.
    pub updated: usize,
    /// Schedules of tasks that no longer declare one.
    pub deleted: usize,
}

fn refuse_declarative(schedule: &Schedule, what: &str) -> Result<(), ScheduleError> {
    if schedule.kind == ScheduleKind::Declarative {
        return Err(ScheduleError::Invalid(format!(
            "Schedule {} is declarative: it is {what} by editing the `cron` of task `{}` and deploying",
            schedule.id, schedule.task_id
        )));
    }
    Ok(())
}
