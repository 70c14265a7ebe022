//! Schedules: a task fired on a cron expression in a time zone.

use crate::{ScheduleId, Timestamp};
use serde::{Deserialize, Serialize};

/// Where a schedule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ScheduleKind {
    /// Created through the API or the CLI.
    Imperative,
    /// Declared on the task in the bundle; synced on each deploy.
    Declarative,
}

impl ScheduleKind {
    /// The wire name (`IMPERATIVE`, `DECLARATIVE`).
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleKind::Imperative => "IMPERATIVE",
            ScheduleKind::Declarative => "DECLARATIVE",
        }
    }
}

/// Everything the server keeps about a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// The schedule's id.
    pub id: ScheduleId,
    /// Imperative or declarative.
    pub kind: ScheduleKind,
    /// The scheduled task it fires.
    pub task_id: String,
    /// The five-field cron expression.
    pub cron: String,
    /// The IANA time zone the expression is read in.
    pub timezone: String,
    /// The user's id for what the schedule belongs to (a tenant, a user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The user's key that makes creating it idempotent (imperative only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplication_key: Option<String>,
    /// Whether it fires.
    pub active: bool,
    /// The next occurrence it will fire for (none when inactive, or when the
    /// expression has no future occurrence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<Timestamp>,
    /// The occurrence it last fired for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_timestamp: Option<Timestamp>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// The schedule a run was fired by, as the run keeps it.
///
/// Stored in a run's record by field number (see `kiln_store`'s
/// `numbered`): a new field goes after the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSchedule {
    /// The schedule's id.
    pub id: ScheduleId,
    /// Its external id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Its deduplication key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplication_key: Option<String>,
    /// Its cron expression when it fired.
    pub cron: String,
    /// The occurrence the run was fired for.
    pub timestamp: Timestamp,
}
