//! Queues as a bundle declares them.

use serde::{Deserialize, Serialize};

/// The prefix of a task's own queue: `task/<task id>`.
pub const TASK_QUEUE_PREFIX: &str = "task/";

/// The longest rate-limit window a queue may declare: a day.
pub const MAX_RATE_PERIOD_MS: u64 = 24 * 60 * 60 * 1000;

/// A queue declared in a bundle, shared by the tasks that name it (or a
/// task's own queue, `task/<id>`, which only [`crate::Manifest::queues`]
/// makes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueManifest {
    /// The queue's name (`emails`).
    pub name: String,
    /// How many runs execute at once, per `concurrencyKey` value when runs
    /// carry one; only the environment's limit applies when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u32>,
    /// How many runs of the queue execute at once across all keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limit_total: Option<u32>,
    /// How many runs may start per time window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitManifest>,
}

/// At most `limit` runs start in any `period_ms` window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitManifest {
    /// Starts per window.
    pub limit: u32,
    /// The window in milliseconds.
    pub period_ms: u64,
    /// Whether each `concurrencyKey` value has its own window.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_key: bool,
}

impl QueueManifest {
    /// A queue with no limits of its own.
    pub fn named(name: impl Into<String>) -> Self {
        QueueManifest {
            name: name.into(),
            concurrency_limit: None,
            concurrency_limit_total: None,
            rate_limit: None,
        }
    }

    /// Whether this is a task's own queue.
    pub fn is_task_queue(&self) -> bool {
        self.name.starts_with(TASK_QUEUE_PREFIX)
    }

    /// Checks the limits: each at least 1, a rate window of 1 ms to a day.
    pub fn check_limits(&self) -> Result<(), String> {
        let name = &self.name;
        if self.concurrency_limit == Some(0) {
            return Err(format!(
                "queue `{name}`: concurrency_limit must be at least 1 (pause the queue to stop it)"
            ));
        }
        if self.concurrency_limit_total == Some(0) {
            return Err(format!(
                "queue `{name}`: concurrency_limit_total must be at least 1"
            ));
        }
        if let Some(rate) = &self.rate_limit {
            if rate.limit == 0 {
                return Err(format!(
                    "queue `{name}`: rate_limit must allow at least 1 run"
                ));
            }
            if rate.period_ms == 0 || rate.period_ms > MAX_RATE_PERIOD_MS {
                return Err(format!(
                    "queue `{name}`: the rate_limit window must be between 1 ms and 1 day"
                ));
            }
        }
        Ok(())
    }
}
