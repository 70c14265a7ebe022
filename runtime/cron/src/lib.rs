//! Kiln's cron schedules: a five-field cron expression in an IANA time zone,
//! and the instants it fires at.
//!
//! Parsing and matching are [`croner`]'s, which reads the syntax Trigger.dev
//! documents (five fields, no seconds; ranges, steps and lists; `L` in
//! day-of-month; `1L`–`7L` in day-of-week) and follows Vixie cron across
//! daylight-saving changes. Time zones come from [`chrono_tz`]'s copy of the
//! tz database, so no system zoneinfo is needed.
//!
//! Daylight saving, as Kiln applies it (and tests below):
//! - **Spring forward** (a wall-clock hour is skipped): a schedule whose time
//!   falls in the skipped hour (`30 2 * * *` on the day New York goes from
//!   02:00 to 03:00) fires once, at the first instant after the jump
//!   (03:00 EDT). Interval schedules (`*/15 * * * *`) simply have no
//!   occurrences in the skipped hour.
//! - **Fall back** (a wall-clock hour happens twice): a schedule with a fixed
//!   time in that hour (`30 1 * * *`) fires once, at the first of the two
//!   instants (01:30 EDT). Interval schedules fire in both hours, since both
//!   are real time that passes.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use kiln_types::Timestamp;

/// The longest cron expression accepted.
pub const MAX_EXPRESSION_LEN: usize = 128;

/// Why an expression or a time zone was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// The expression does not parse.
    #[error("invalid cron expression `{expression}`: {reason}")]
    Expression {
        /// The expression given.
        expression: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The time zone is not an IANA name.
    #[error(
        "unknown time zone `{0}`: use an IANA name such as `America/New_York` (GET /api/v1/timezones lists them)"
    )]
    TimeZone(String),
}

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: Tz,
    expression: String,
}

impl CronSchedule {
    /// Parses a five-field expression (minute, hour, day of month, month, day
    /// of week) to be read in `timezone`.
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, CronError> {
        let tz = parse_timezone(timezone)?;
        let expression = expression.trim();
        let refuse = |reason: &str| CronError::Expression {
            expression: expression.to_string(),
            reason: reason.to_string(),
        };
        if expression.is_empty() {
            return Err(refuse(
                "it is empty; give five fields: minute hour day-of-month month day-of-week",
            ));
        }
        if expression.len() > MAX_EXPRESSION_LEN {
            return Err(refuse(&format!(
                "it is longer than {MAX_EXPRESSION_LEN} characters"
            )));
        }
        if expression.starts_with('@') {
            return Err(refuse(
                "aliases such as @daily are not supported; write the five fields",
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| refuse(&e.to_string()))?;
        Ok(CronSchedule {
            cron,
            tz,
            expression: expression.to_string(),
        })
    }

    /// The expression, trimmed.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone's IANA name.
    pub fn timezone(&self) -> &'static str {
        self.tz.name()
    }

    /// The expression in words (`At 09:00, on Monday, ... and Friday.`).
    pub fn describe(&self) -> String {
        self.cron.describe()
    }

    fn zoned(&self, at: Timestamp) -> Option<DateTime<Tz>> {
        // Occurrences fall on whole minutes; drop the milliseconds so an
        // instant just past an occurrence compares as that second.
        let secs = i64::try_from(at.as_millis() / 1000).ok()?;
        Utc.timestamp_opt(secs, 0)
            .single()
            .map(|t| t.with_timezone(&self.tz))
    }

    fn instant(t: DateTime<Tz>) -> Option<Timestamp> {
        u64::try_from(t.timestamp_millis()).ok().map(Timestamp)
    }

    /// The first occurrence strictly after `after`, or `None` if there is
    /// none within croner's search limit (`0 0 30 2 *` never fires).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = self.zoned(after)?;
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        Self::instant(next).filter(|t| *t > after)
    }

    /// The last occurrence at or before `at`.
    pub fn latest_at_or_before(&self, at: Timestamp) -> Option<Timestamp> {
        let start = self.zoned(at)?;
        let previous = self.cron.find_previous_occurrence(&start, true).ok()?;
        Self::instant(previous)
    }

    /// Up to `n` occurrences strictly after `after`, in order.
    pub fn upcoming(&self, after: Timestamp, n: usize) -> Vec<Timestamp> {
        let mut out = Vec::with_capacity(n);
        let mut cursor = after;
        while out.len() < n {
            match self.next_after(cursor) {
                Some(next) => {
                    out.push(next);
                    cursor = next;
                }
                None => break,
            }
        }
        out
    }
}

/// Parses an IANA time zone name (`UTC`, `America/New_York`).
pub fn parse_timezone(name: &str) -> Result<Tz, CronError> {
    name.parse::<Tz>()
        .map_err(|_| CronError::TimeZone(name.to_string()))
}

/// Every IANA time zone name Kiln knows, sorted.
pub fn timezones() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect();
    names.sort_unstable();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The instant of a wall-clock time in a zone (the earlier one if it
    /// happens twice).
    fn at(tz: &str, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> Timestamp {
        let tz: Tz = tz.parse().unwrap();
        let t = tz.with_ymd_and_hms(y, mo, d, h, mi, 0).earliest().unwrap();
        Timestamp(t.timestamp_millis() as u64)
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> Timestamp {
        at("UTC", y, mo, d, h, mi)
    }

    fn next(expr: &str, tz: &str, from: Timestamp, n: usize) -> Vec<Timestamp> {
        CronSchedule::parse(expr, tz).unwrap().upcoming(from, n)
    }

    #[test]
    fn a_plain_expression_is_read_in_utc() {
        let got = next("0 9 * * *", "UTC", utc(2026, 11, 22, 10, 0), 2);
        assert_eq!(got, vec![utc(2026, 11, 23, 9, 0), utc(2026, 11, 24, 9, 0)]);
    }

    #[test]
    fn weekday_mornings_in_new_york_follow_the_wall_clock_across_dst() {
        // 2026-03-06 is a Friday; New York springs forward on Sunday 03-08.
        let got = next("0 9 * * 1-5", "America/New_York", utc(2026, 3, 6, 0, 0), 3);
        assert_eq!(
            got,
            vec![
                utc(2026, 3, 6, 14, 0), // Fri 09:00 EST
                utc(2026, 3, 9, 13, 0), // Mon 09:00 EDT
                utc(2026, 3, 10, 13, 0),
            ]
        );
    }

    #[test]
    fn a_time_in_the_skipped_hour_fires_once_when_the_clock_jumps() {
        // New York, 2026-03-08: 02:00 EST becomes 03:00 EDT.
        let got = next(
            "30 2 * * *",
            "America/New_York",
            at("America/New_York", 2026, 3, 7, 12, 0),
            2,
        );
        assert_eq!(
            got,
            vec![
                utc(2026, 3, 8, 7, 0),  // 03:00 EDT, the first instant after the gap
                utc(2026, 3, 9, 6, 30), // 02:30 EDT the next day
            ]
        );
    }

    #[test]
    fn a_time_in_the_repeated_hour_fires_once_at_its_first_instant() {
        // New York, 2026-11-01: 02:00 EDT becomes 01:00 EST.
        let got = next(
            "30 1 * * *",
            "America/New_York",
            at("America/New_York", 2026, 10, 31, 12, 0),
            2,
        );
        assert_eq!(
            got,
            vec![
                utc(2026, 11, 1, 5, 30), // 01:30 EDT, not again at 01:30 EST
                utc(2026, 11, 2, 6, 30), // 01:30 EST the next day
            ]
        );
    }

    #[test]
    fn an_interval_schedule_fires_in_both_repeated_hours_and_not_in_the_skipped_one() {
        let fall = next(
            "0 * * * *",
            "America/New_York",
            at("America/New_York", 2026, 11, 1, 0, 30),
            3,
        );
        // 01:00 EDT, 01:00 EST, 02:00 EST: one hour apart in real time.
        assert_eq!(
            fall,
            vec![
                utc(2026, 11, 1, 5, 0),
                utc(2026, 11, 1, 6, 0),
                utc(2026, 11, 1, 7, 0)
            ]
        );
        let spring = next(
            "0 * * * *",
            "America/New_York",
            at("America/New_York", 2026, 3, 8, 0, 30),
            2,
        );
        // 01:00 EST, then 03:00 EDT: one hour apart, 02:00 never existed.
        assert_eq!(spring, vec![utc(2026, 3, 8, 6, 0), utc(2026, 3, 8, 7, 0)]);
    }

    #[test]
    fn l_is_the_last_day_of_the_month() {
        let got = next("0 0 L * *", "UTC", utc(2028, 1, 15, 0, 0), 3);
        assert_eq!(
            got,
            vec![
                utc(2028, 1, 31, 0, 0),
                utc(2028, 2, 29, 0, 0), // a leap year
                utc(2028, 3, 31, 0, 0)
            ]
        );
    }

    #[test]
    fn nl_is_the_last_such_weekday_of_the_month() {
        // 5L: the last Friday; 7L and 0L: the last Sunday.
        let fridays = next("0 12 * * 5L", "UTC", utc(2026, 11, 1, 0, 0), 2);
        assert_eq!(
            fridays,
            vec![utc(2026, 11, 27, 12, 0), utc(2026, 12, 25, 12, 0)]
        );
        let sundays = next("0 12 * * 7L", "UTC", utc(2026, 11, 1, 0, 0), 1);
        assert_eq!(sundays, vec![utc(2026, 11, 29, 12, 0)]);
        assert_eq!(
            next("0 12 * * 0L", "UTC", utc(2026, 11, 1, 0, 0), 1),
            sundays
        );
        let mondays = next("0 12 * * 1L", "UTC", utc(2026, 11, 1, 0, 0), 1);
        assert_eq!(mondays, vec![utc(2026, 11, 30, 12, 0)]);
    }

    #[test]
    fn ranges_steps_and_lists() {
        let got = next("5,35 8-10/2 * * *", "UTC", utc(2026, 1, 1, 0, 0), 5);
        assert_eq!(
            got,
            vec![
                utc(2026, 1, 1, 8, 5),
                utc(2026, 1, 1, 8, 35),
                utc(2026, 1, 1, 10, 5),
                utc(2026, 1, 1, 10, 35),
                utc(2026, 1, 2, 8, 5)
            ]
        );
    }

    #[test]
    fn next_after_is_strict_and_latest_is_inclusive() {
        let s = CronSchedule::parse("*/10 * * * *", "UTC").unwrap();
        let t = utc(2026, 1, 1, 0, 10);
        assert_eq!(s.next_after(t), Some(utc(2026, 1, 1, 0, 20)));
        assert_eq!(
            s.next_after(Timestamp(t.0 + 500)),
            Some(utc(2026, 1, 1, 0, 20))
        );
        assert_eq!(s.latest_at_or_before(t), Some(t));
        assert_eq!(s.latest_at_or_before(Timestamp(t.0 + 9 * 60_000)), Some(t));
    }

    #[test]
    fn bad_expressions_and_zones_say_what_is_wrong() {
        let six = CronSchedule::parse("0 * * * * *", "UTC").unwrap_err();
        assert!(six.to_string().contains("5 fields"), "{six}");
        let range = CronSchedule::parse("61 * * * *", "UTC").unwrap_err();
        assert!(range.to_string().contains("out of bounds"), "{range}");
        let l = CronSchedule::parse("L * * * *", "UTC").unwrap_err();
        assert!(
            l.to_string()
                .contains("invalid cron expression `L * * * *`"),
            "{l}"
        );
        let empty = CronSchedule::parse("  ", "UTC").unwrap_err();
        assert!(empty.to_string().contains("empty"), "{empty}");
        let alias = CronSchedule::parse("@daily", "UTC").unwrap_err();
        assert!(alias.to_string().contains("aliases"), "{alias}");
        let tz = CronSchedule::parse("0 9 * * *", "Mars/Olympus").unwrap_err();
        assert!(
            tz.to_string().contains("unknown time zone `Mars/Olympus`"),
            "{tz}"
        );
    }

    #[test]
    fn a_date_that_never_comes_has_no_next_occurrence() {
        let s = CronSchedule::parse("0 0 30 2 *", "UTC").unwrap();
        assert_eq!(s.next_after(utc(2026, 1, 1, 0, 0)), None);
    }

    #[test]
    fn describes_and_lists_zones() {
        let s = CronSchedule::parse("0 9 * * 1-5", "America/New_York").unwrap();
        assert!(s.describe().starts_with("At 09:00"), "{}", s.describe());
        assert_eq!(s.timezone(), "America/New_York");
        let zones = timezones();
        assert!(zones.contains(&"UTC") && zones.contains(&"Asia/Tokyo"));
        assert!(zones.windows(2).all(|w| w[0] <= w[1]));
    }
}
