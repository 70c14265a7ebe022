//! Scheduled tasks: tasks fired by cron schedules.
//!
//! A task whose payload type is [`ScheduledPayload`] is a *scheduled task*.
//! Schedules are attached to it in two ways:
//! - declaratively, on the task: `#[task(cron = "0 9 * * 1-5", timezone =
//!   "America/New_York")]` (a cron without a time zone is read in UTC); the
//!   schedule is created, changed or removed on each deploy;
//! - imperatively, per tenant, through the API or the CLI:
//!   `kiln schedules create --task digest --cron "0 8 * * *" --timezone
//!   Europe/Paris --external-id acme --dedup-key digest:acme`.
//!
//! ```ignore
//! use kiln_sdk::schedules::ScheduledPayload;
//! use kiln_sdk::{task, Context, TaskError};
//!
//! #[task(id = "nightly-report", cron = "0 2 * * *")]
//! async fn nightly_report(payload: ScheduledPayload, ctx: &Context) -> Result<(), TaskError> {
//!     ctx.log.info("report", &[("for", &payload.timestamp)]);
//!     Ok(())
//! }
//! ```

use serde::{Deserialize, Serialize};

/// How the schedule that fired a run was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ScheduleType {
    /// Declared on the task and synced on deploy.
    Declarative,
    /// Created through the API or the CLI.
    Imperative,
}

/// The payload of a scheduled task's run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledPayload {
    /// How the schedule was made.
    #[serde(rename = "type")]
    pub kind: ScheduleType,
    /// The occurrence this run is for, ISO 8601 in UTC
    /// (`2026-11-23T14:00:00.000Z`); a few milliseconds before the run
    /// started.
    pub timestamp: String,
    /// The occurrence the schedule fired for before this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_timestamp: Option<String>,
    /// The schedule's IANA time zone (`UTC` unless one was given).
    pub timezone: String,
    /// The schedule's id (`sched_...`).
    pub schedule_id: String,
    /// The external id given when the schedule was created (a tenant, a
    /// user), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The next five occurrences, ISO 8601 in UTC.
    #[serde(default)]
    pub upcoming: Vec<String>,
}

impl ScheduledPayload {
    /// [`timestamp`](Self::timestamp) in milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> Option<u64> {
        parse_iso_ms(&self.timestamp)
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.mmm]Z` into milliseconds since the epoch.
pub fn parse_iso_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !text.ends_with('Z') {
        return None;
    }
    let num = |from: usize, to: usize| text.get(from..to)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, s) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let ms = match text.get(19..20) {
        Some(".") => num(20, 23)?,
        _ => 0,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let total = ((days * 24 + h) * 60 + mi) * 60 + s;
    u64::try_from(total * 1000 + ms).ok()
}

/// Formats milliseconds since the epoch as the server does
/// (`2026-11-22T03:19:00.123Z`).
pub fn to_iso(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_servers_timestamps() {
        assert_eq!(parse_iso_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_iso_ms("2026-11-22T03:19:00.123Z"),
            Some(1_795_317_540_123)
        );
        assert_eq!(
            parse_iso_ms("2028-02-29T00:00:00Z"),
            Some(1_835_395_200_000)
        );
        assert_eq!(parse_iso_ms("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_iso_ms("yesterday"), None);
        for ms in [0, 1_795_317_540_123, 1_835_395_200_000, 951_782_400_999] {
            assert_eq!(parse_iso_ms(&to_iso(ms)), Some(ms), "{}", to_iso(ms));
        }
        assert_eq!(to_iso(1_795_317_540_123), "2026-11-22T03:19:00.123Z");
    }

    #[test]
    fn reads_the_wire_payload() {
        let p: ScheduledPayload = serde_json::from_str(
            r#"{"type":"IMPERATIVE","timestamp":"2026-11-23T14:00:00.000Z","timezone":"America/New_York","scheduleId":"sched_x","externalId":"acme","upcoming":["2026-11-24T14:00:00.000Z"]}"#,
        )
        .unwrap();
        assert_eq!(p.kind, ScheduleType::Imperative);
        assert_eq!(p.external_id.as_deref(), Some("acme"));
        assert_eq!(p.last_timestamp, None);
        assert_eq!(p.timestamp_ms(), Some(1_795_442_400_000));
    }
}
