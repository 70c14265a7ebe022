//! Kiln example: `digest`, two scheduled tasks.
//!
//! - `daily-digest` declares its schedule on the task: weekday mornings at
//!   09:00 in New York, daylight saving included. Deploying the bundle
//!   creates the schedule; changing the `cron` and deploying again changes
//!   it; removing it removes the schedule.
//! - `tenant-digest` declares none: each tenant gets its own schedule, made
//!   at runtime from a backend or the CLI, with the tenant's id as the
//!   schedule's external id and a deduplication key so that making it twice
//!   updates it:
//!
//! ```text
//! kiln schedules create --task tenant-digest --cron "0 8 * * *" \
//!     --timezone Europe/Paris --external-id acme --dedup-key digest:acme
//! kiln runs list --task tenant-digest
//! ```
//!
//! - `preview-digest` is an ordinary task that makes a tenant's digest on
//!   demand; as it is not a scheduled task, it accepts no schedules.

use kiln_sdk::schedules::{ScheduleType, ScheduledPayload, to_iso};
use kiln_sdk::{Context, TaskError, task};
use serde::{Deserialize, Serialize};

/// What one digest covered.
#[derive(Debug, Serialize)]
pub struct Digest {
    /// Whose digest it is (`everyone` for the daily digest).
    pub tenant: String,
    /// The occurrence it was made for (ISO 8601, UTC).
    pub scheduled_for: String,
    /// The digest's window starts at the previous occurrence, or a day
    /// before this one for the first.
    pub since: String,
    /// The schedule's time zone.
    pub timezone: String,
    /// When the next digest is due.
    pub next: Option<String>,
    /// The schedule that fired it.
    pub schedule_id: String,
}

fn digest(tenant: String, payload: ScheduledPayload, ctx: &Context) -> Digest {
    let since = payload.last_timestamp.clone().unwrap_or_else(|| {
        // No earlier digest: cover the day before this one.
        to_iso(
            payload
                .timestamp_ms()
                .unwrap_or(0)
                .saturating_sub(86_400_000),
        )
    });
    ctx.log.info(
        "digest",
        &[
            ("tenant", &tenant),
            ("for", &payload.timestamp),
            ("since", &since),
            ("timezone", &payload.timezone),
        ],
    );
    Digest {
        tenant,
        scheduled_for: payload.timestamp,
        since,
        timezone: payload.timezone,
        next: payload.upcoming.first().cloned(),
        schedule_id: payload.schedule_id,
    }
}

/// The team-wide digest, every weekday at 09:00 New York time.
#[task(
    id = "daily-digest",
    cron = "0 9 * * 1-5",
    timezone = "America/New_York"
)]
pub async fn daily_digest(payload: ScheduledPayload, ctx: &Context) -> Result<Digest, TaskError> {
    Ok(digest("everyone".into(), payload, ctx))
}

/// One tenant's digest, on the tenant's own schedule (its external id).
#[task(id = "tenant-digest")]
pub async fn tenant_digest(payload: ScheduledPayload, ctx: &Context) -> Result<Digest, TaskError> {
    let Some(tenant) = payload.external_id.clone() else {
        return Err(TaskError::abort(
            "a tenant digest's schedule needs the tenant as its external id (--external-id)",
        ));
    };
    Ok(digest(tenant, payload, ctx))
}

/// Which tenant to preview.
#[derive(Debug, Deserialize)]
pub struct Preview {
    /// The tenant's id.
    pub tenant: String,
}

/// Makes a tenant's digest now, on demand (an ordinary task: it accepts no
/// schedules).
#[task(id = "preview-digest")]
pub async fn preview_digest(payload: Preview, ctx: &Context) -> Result<Digest, TaskError> {
    let now = ctx.now_ms();
    let payload = ScheduledPayload {
        kind: ScheduleType::Imperative,
        timestamp: to_iso(now),
        last_timestamp: None,
        timezone: "UTC".into(),
        schedule_id: "preview".into(),
        external_id: Some(payload.tenant.clone()),
        upcoming: Vec::new(),
    };
    Ok(digest(
        payload.external_id.clone().unwrap_or_default(),
        payload,
        ctx,
    ))
}

kiln_sdk::bundle!(daily_digest, tenant_digest, preview_digest);
