//! Durations and instants as Trigger.dev's options give them: `"30s"`,
//! `"1h52m18s"`, `"2w"`, an ISO 8601 date, or a number of seconds.

use kiln_types::Timestamp;
use serde_json::Value;

/// Parses `30s`, `1m`, `2h`, `3d`, `4w` and combinations (`1h52m18s`) into
/// milliseconds.
pub(crate) fn parse_ms(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a duration like 30s, 15m, 2h, 3d, 1w or 1h52m18s");
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            'w' => 7 * 86_400_000,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        number.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

/// An instant given as a duration from `now`, an ISO 8601 date, or a number
/// of seconds from `now`.
pub(crate) fn parse_instant(value: &Value, now: Timestamp) -> Result<Timestamp, String> {
    match value {
        Value::Number(n) => {
            let secs = n
                .as_u64()
                .ok_or_else(|| format!("`{n}` is not a whole number of seconds"))?;
            Ok(Timestamp(
                now.as_millis().saturating_add(secs.saturating_mul(1000)),
            ))
        }
        Value::String(s) if s.contains('-') && s.contains('T') => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|e| format!("`{s}` is not an ISO 8601 date: {e}"))?;
            u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
                .map(Timestamp)
                .map_err(|_| format!("`{s}` is before 1970"))
        }
        Value::String(s) => Ok(Timestamp(now.as_millis().saturating_add(parse_ms(s)?))),
        other => Err(format!("`{other}` is neither a duration nor a date")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_ms("30s"), Ok(30_000));
        assert_eq!(parse_ms("1h52m18s"), Ok(6_738_000));
        assert_eq!(parse_ms("2w"), Ok(1_209_600_000));
        assert!(parse_ms("").is_err());
        assert!(parse_ms("5").is_err());
        assert!(parse_ms("5y").is_err());
        assert!(parse_ms("h").is_err());
        // The periods of runs.list's filter[createdAt][period].
        assert_eq!(parse_ms("1d"), Ok(86_400_000));
        assert_eq!(parse_ms("30m"), Ok(1_800_000));
        assert!(parse_ms("d").is_err());
    }

    #[test]
    fn instants() {
        let now = Timestamp(1_000_000);
        assert_eq!(parse_instant(&"1s".into(), now), Ok(Timestamp(1_001_000)));
        assert_eq!(
            parse_instant(&serde_json::json!(2), now),
            Ok(Timestamp(1_002_000))
        );
        assert_eq!(
            parse_instant(&"2026-11-22T03:19:00.123Z".into(), now),
            Ok(Timestamp(1_795_317_540_123))
        );
        assert!(parse_instant(&serde_json::json!(true), now).is_err());
    }
}
