//! The `digest` example's next version, as far as schedules go:
//! `daily-digest` moves to 07:30 Paris time, `hourly-cleanup` is new, and
//! `tenant-digest` is gone.

use kiln_sdk::schedules::ScheduledPayload;
use kiln_sdk::{Context, TaskError, task};

/// The daily digest, now at 07:30 in Paris.
#[task(id = "daily-digest", cron = "30 7 * * *", timezone = "Europe/Paris")]
pub async fn daily_digest(payload: ScheduledPayload, _ctx: &Context) -> Result<String, TaskError> {
    Ok(payload.timestamp)
}

/// A new task with a UTC schedule.
#[task(id = "hourly-cleanup", cron = "0 * * * *")]
pub async fn hourly_cleanup(
    payload: ScheduledPayload,
    _ctx: &Context,
) -> Result<String, TaskError> {
    Ok(payload.timestamp)
}

kiln_sdk::bundle!(daily_digest, hourly_cleanup);
