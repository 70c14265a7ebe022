//! What a queue allows. (Declared limits are checked where they are
//! declared, in `kiln-manifest`; the scheduler takes them as given.)

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

impl QueueLimits {
    /// How many runs of one lane may execute at once, under `base`.
    pub(crate) fn lane_cap(&self, base: u32) -> u32 {
        self.concurrency.map_or(base, |c| c.min(base))
    }

    /// How many runs of the queue may execute at once, under `base`.
    pub(crate) fn queue_cap(&self, base: u32) -> u32 {
        self.total.map_or(base, |c| c.min(base))
    }
}
