//! What a queue allows.

/// A queue's limits, as its declaration gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueLimits {
    /// How many runs of one lane (one `concurrencyKey` value, or the runs
    /// without a key) execute at once; only the environment bounds it when
    /// `None`.
    pub concurrency: Option<u32>,
    /// How many runs of the whole queue, across all its lanes, execute at
    /// once; the environment's base limit when `None`.
    pub total: Option<u32>,
    /// How many runs may start per time window.
    pub rate: Option<RateLimit>,
}

/// At most `limit` starts in any `period_ms` window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Starts per window.
    pub limit: u32,
    /// The window, in milliseconds.
    pub period_ms: u64,
    /// Whether each lane (`concurrencyKey` value) has its own window; when
    /// false the whole queue shares one.
    pub per_key: bool,
}

/// Why a queue's limits were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitError(pub String);

impl std::fmt::Display for LimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LimitError {}

/// The longest rate-limit window: a day.
pub const MAX_RATE_PERIOD_MS: u64 = 24 * 60 * 60 * 1000;

impl QueueLimits {
    /// Checks that every limit is at least 1 and a rate window is between
    /// 1 ms and a day.
    pub fn validate(&self) -> Result<(), LimitError> {
        if self.concurrency == Some(0) {
            return Err(LimitError(
                "concurrency_limit must be at least 1 (pause a queue to stop it)".into(),
            ));
        }
        if self.total == Some(0) {
            return Err(LimitError(
                "concurrency_limit_total must be at least 1".into(),
            ));
        }
        if let Some(rate) = &self.rate {
            if rate.limit == 0 {
                return Err(LimitError("rate_limit.limit must be at least 1".into()));
            }
            if rate.period_ms == 0 || rate.period_ms > MAX_RATE_PERIOD_MS {
                return Err(LimitError(
                    "rate_limit.period must be between 1 ms and 1 day".into(),
                ));
            }
        }
        Ok(())
    }

    /// How many runs of one lane may execute at once, under `base`.
    pub(crate) fn lane_cap(&self, base: u32) -> u32 {
        self.concurrency.map_or(base, |c| c.min(base))
    }

    /// How many runs of the queue may execute at once, under `base`.
    pub(crate) fn queue_cap(&self, base: u32) -> u32 {
        self.total.map_or(base, |c| c.min(base))
    }
}
