//! Retry policies for failed attempts.

use serde::{Deserialize, Serialize};

/// How a task retries a failed attempt: exponential backoff, as Trigger.dev's
/// `retry` option. The delay before attempt `n + 1` is
/// `min(max_timeout, min_timeout * factor^(n - 1))`, scaled by a random factor
/// in `[1, 2)` when `randomize` is set.
///
/// Stored in a run's record by field number (see `kiln_store`'s
/// `numbered`): a new field goes after the last one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (Trigger.dev's default: 3).
    pub max_attempts: u32,
    /// The backoff growth factor.
    pub factor: f64,
    /// The delay before the first retry, in milliseconds.
    pub min_timeout_ms: u64,
    /// The longest delay between attempts, in milliseconds.
    pub max_timeout_ms: u64,
    /// Spread delays randomly to avoid retry storms.
    pub randomize: bool,
    /// Retry an attempt that ran out of memory on this larger machine
    /// (Trigger.dev's `retry.outOfMemory.machine`); without it, running out
    /// of memory ends the run `CRASHED`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_of_memory_machine: Option<crate::Machine>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            factor: 2.0,
            min_timeout_ms: 1_000,
            max_timeout_ms: 10_000,
            randomize: true,
            out_of_memory_machine: None,
        }
    }
}

impl RetryPolicy {
    /// Checks that the policy's numbers make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1".into());
        }
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(format!(
                "retry.factor must be a number of at least 1, not {}",
                self.factor
            ));
        }
        if self.min_timeout_ms > self.max_timeout_ms {
            return Err(format!(
                "retry.min_timeout_ms ({}) is larger than retry.max_timeout_ms ({})",
                self.min_timeout_ms, self.max_timeout_ms
            ));
        }
        Ok(())
    }

    /// The delay before the attempt after `failed_attempt` (1-based), given a
    /// random number in `[0, 1)` for randomisation.
    pub fn delay_ms(&self, failed_attempt: u32, random: f64) -> u64 {
        let exponent = failed_attempt.saturating_sub(1).min(64) as i32;
        let base = self.min_timeout_ms as f64 * self.factor.powi(exponent);
        let scaled = if self.randomize {
            base * (1.0 + random.clamp(0.0, 1.0))
        } else {
            base
        };
        (scaled.min(self.max_timeout_ms as f64)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            randomize: false,
            ..RetryPolicy::default()
        };
        assert_eq!(p.delay_ms(1, 0.5), 1_000);
        assert_eq!(p.delay_ms(2, 0.5), 2_000);
        assert_eq!(p.delay_ms(3, 0.5), 4_000);
        assert_eq!(p.delay_ms(30, 0.5), 10_000);
    }

    #[test]
    fn randomize_spreads_within_double() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay_ms(1, 0.0), 1_000);
        assert_eq!(p.delay_ms(1, 0.5), 1_500);
    }

    #[test]
    fn validate_rejects_nonsense() {
        let p = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert!(p.validate().is_err());
        let p = RetryPolicy {
            min_timeout_ms: 5,
            max_timeout_ms: 1,
            ..RetryPolicy::default()
        };
        assert!(p.validate().unwrap_err().contains("larger than"));
    }
}
