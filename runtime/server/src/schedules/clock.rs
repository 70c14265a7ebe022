//! The scheduler's clock: the system clock, or for tests a clock that runs
//! faster than real time.

use kiln_types::Timestamp;
use std::time::Duration;

/// What time it is for schedules.
///
/// `rate` 1 (the default) is the system clock. A test clock runs `rate`
/// times faster than real time from the real instant `anchor`: its time is
/// `anchor + (real - anchor) * rate`, a function of the real clock alone, so
/// it reads the same in every process and carries on across a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleClock {
    anchor: u64,
    rate: u64,
}

impl Default for ScheduleClock {
    fn default() -> Self {
        ScheduleClock { anchor: 0, rate: 1 }
    }
}

impl ScheduleClock {
    /// A clock running `rate` times faster than real time from the real
    /// instant `anchor` (in ms since the epoch).
    pub fn accelerated(anchor: Timestamp, rate: u64) -> Self {
        ScheduleClock {
            anchor: anchor.as_millis(),
            rate: rate.max(1),
        }
    }

    /// Parses `ANCHOR_MS:RATE` (the hidden `--schedule-clock` option).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (anchor, rate) = text
            .split_once(':')
            .ok_or_else(|| format!("`{text}` is not ANCHOR_MS:RATE"))?;
        let anchor = anchor
            .parse::<u64>()
            .map_err(|e| format!("anchor `{anchor}`: {e}"))?;
        let rate = rate
            .parse::<u64>()
            .map_err(|e| format!("rate `{rate}`: {e}"))?;
        Ok(Self::accelerated(Timestamp(anchor), rate))
    }

    /// The schedule time at a real instant.
    pub fn at(&self, real: Timestamp) -> Timestamp {
        let real = real.as_millis();
        if self.rate == 1 || real <= self.anchor {
            return Timestamp(real);
        }
        Timestamp(self.anchor + (real - self.anchor).saturating_mul(self.rate))
    }

    /// The schedule time now.
    pub fn now(&self) -> Timestamp {
        self.at(Timestamp::now())
    }

    /// How long to sleep, in real time, until the schedule time `until`.
    pub fn real_delay(&self, until: Timestamp) -> Duration {
        let ahead = until.as_millis().saturating_sub(self.now().as_millis());
        Duration::from_millis(ahead.div_ceil(self.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_clock_is_real_time() {
        let clock = ScheduleClock::default();
        assert_eq!(clock.at(Timestamp(123_456)), Timestamp(123_456));
    }

    #[test]
    fn an_accelerated_clock_depends_only_on_real_time() {
        let clock = ScheduleClock::parse("1000:60").unwrap();
        assert_eq!(clock.at(Timestamp(1_000)), Timestamp(1_000));
        assert_eq!(clock.at(Timestamp(2_000)), Timestamp(61_000));
        assert_eq!(ScheduleClock::parse("1000:60").unwrap(), clock);
        assert!(ScheduleClock::parse("1000").is_err());
        assert!(ScheduleClock::parse("x:2").is_err());
    }
}
