//! Timestamps in milliseconds since the Unix epoch, shown as ISO 8601.

use serde::{Deserialize, Serialize};

/// A point in time, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Now, by the system clock.
    pub fn now() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// ISO 8601 in UTC with milliseconds (`2026-11-22T04:59:00.123Z`).
    pub fn to_iso(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        match ::time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(t) => format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            ),
            Err(_) => "1970-01-01T00:00:00.000Z".into(),
        }
    }

    /// The date part (`YYYYMMDD`), as Trigger.dev's deployment versions use.
    pub fn date_stamp(self) -> String {
        self.to_iso()[..10].replace('-', "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_iso_with_millis() {
        assert_eq!(Timestamp(0).to_iso(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp(1_795_317_540_123).to_iso(),
            "2026-11-22T03:19:00.123Z"
        );
        assert_eq!(Timestamp(1_795_317_540_123).date_stamp(), "20261122");
    }
}
