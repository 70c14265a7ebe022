//! Queues: how many runs of a group of tasks execute at once, and how fast
//! they start.
//!
//! Declare a queue as a `const` and name it on each task that shares it:
//!
//! ```ignore
//! use kiln_sdk::{Queue, RateLimit};
//! use std::time::Duration;
//!
//! pub const EMAILS: Queue = Queue::new("emails")
//!     .concurrency_limit(5)
//!     .rate_limit(RateLimit::new(100, Duration::from_secs(60)));
//!
//! #[kiln_sdk::task(queue = EMAILS)]
//! async fn send_welcome(p: Welcome, ctx: &Context) -> Result<(), TaskError> { /* ... */ }
//! ```
//!
//! A task without `queue` runs on its own queue (`task/<id>`), limited with
//! `#[task(concurrency_limit = 1)]`. A queue no task names but that
//! triggers may pick is listed in [`bundle!`](crate::bundle):
//! `kiln_sdk::bundle!(a, b; queues: PAID_USERS)`. Each deploy creates or
//! updates the bundle's queues; a trigger cannot create one.
//!
//! When triggers pass a `concurrencyKey` (a tenant id), each key value gets
//! its own lane with the queue's `concurrency_limit`, and lanes take turns,
//! so one tenant's backlog does not hold up the others.
//! [`total_concurrency_limit`](Queue::total_concurrency_limit) caps the
//! queue across all its keys.

use kiln_manifest::{QueueManifest, RateLimitManifest};
use std::time::Duration;

/// A queue declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    name: &'static str,
    concurrency_limit: Option<u32>,
    total_concurrency_limit: Option<u32>,
    rate_limit: Option<RateLimit>,
}

/// At most `limit` runs start in any window of `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    limit: u32,
    period: Duration,
    per_key: bool,
}

impl Queue {
    /// A queue with no limits of its own (the server's still apply).
    pub const fn new(name: &'static str) -> Self {
        Queue {
            name,
            concurrency_limit: None,
            total_concurrency_limit: None,
            rate_limit: None,
        }
    }

    /// At most `limit` runs execute at once (per `concurrencyKey` value
    /// when triggers give one). Waiting runs do not count.
    pub const fn concurrency_limit(mut self, limit: u32) -> Self {
        self.concurrency_limit = Some(limit);
        self
    }

    /// At most `limit` runs of the queue execute at once across all its
    /// `concurrencyKey` values.
    pub const fn total_concurrency_limit(mut self, limit: u32) -> Self {
        self.total_concurrency_limit = Some(limit);
        self
    }

    /// At most so many runs start per time window.
    pub const fn rate_limit(mut self, rate: RateLimit) -> Self {
        self.rate_limit = Some(rate);
        self
    }

    /// The queue's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The declaration as the manifest holds it.
    pub fn manifest(&self) -> QueueManifest {
        QueueManifest {
            name: self.name.to_string(),
            concurrency_limit: self.concurrency_limit,
            concurrency_limit_total: self.total_concurrency_limit,
            rate_limit: self.rate_limit.map(|r| RateLimitManifest {
                limit: r.limit,
                period_ms: r.period.as_millis().min(u64::MAX as u128) as u64,
                per_key: r.per_key,
            }),
        }
    }
}

impl RateLimit {
    /// At most `limit` starts in any window of `period`, for the whole
    /// queue.
    pub const fn new(limit: u32, period: Duration) -> Self {
        RateLimit {
            limit,
            period,
            per_key: false,
        }
    }

    /// Gives each `concurrencyKey` value its own window.
    pub const fn per_key(mut self) -> Self {
        self.per_key = true;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declaration_becomes_its_manifest() {
        const Q: Queue = Queue::new("emails")
            .concurrency_limit(2)
            .total_concurrency_limit(10)
            .rate_limit(RateLimit::new(100, Duration::from_secs(60)).per_key());
        let m = Q.manifest();
        assert_eq!(m.name, "emails");
        assert_eq!(m.concurrency_limit, Some(2));
        assert_eq!(m.concurrency_limit_total, Some(10));
        let rate = m.rate_limit.unwrap();
        assert_eq!(
            (rate.limit, rate.period_ms, rate.per_key),
            (100, 60_000, true)
        );
    }
}
