//! The 13 run statuses of Trigger.dev v4, with the booleans its API derives
//! from them.

use serde::{Deserialize, Serialize};

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    /// Waiting for a deployment that has its task.
    PendingVersion,
    /// Triggered with a `delay` that has not passed.
    Delayed,
    /// Waiting for a concurrency slot.
    Queued,
    /// Taken off its queue, about to execute.
    Dequeued,
    /// An attempt is running.
    Executing,
    /// Waiting on a timer, child run or token, holding no slot.
    Waiting,
    /// Finished successfully.
    Completed,
    /// Canceled by a user.
    Canceled,
    /// Failed after its last attempt.
    Failed,
    /// The attempt crashed (out of memory, a trap the task could not catch).
    Crashed,
    /// Kiln itself failed the run.
    SystemFailure,
    /// Its `ttl` ran out before it started.
    Expired,
    /// It used more than its `maxDuration`.
    TimedOut,
}

impl RunStatus {
    /// Every status.
    pub const ALL: [RunStatus; 13] = [
        RunStatus::PendingVersion,
        RunStatus::Delayed,
        RunStatus::Queued,
        RunStatus::Dequeued,
        RunStatus::Executing,
        RunStatus::Waiting,
        RunStatus::Completed,
        RunStatus::Canceled,
        RunStatus::Failed,
        RunStatus::Crashed,
        RunStatus::SystemFailure,
        RunStatus::Expired,
        RunStatus::TimedOut,
    ];

    /// The status's name on the wire (`TIMED_OUT`).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::PendingVersion => "PENDING_VERSION",
            RunStatus::Delayed => "DELAYED",
            RunStatus::Queued => "QUEUED",
            RunStatus::Dequeued => "DEQUEUED",
            RunStatus::Executing => "EXECUTING",
            RunStatus::Waiting => "WAITING",
            RunStatus::Completed => "COMPLETED",
            RunStatus::Canceled => "CANCELED",
            RunStatus::Failed => "FAILED",
            RunStatus::Crashed => "CRASHED",
            RunStatus::SystemFailure => "SYSTEM_FAILURE",
            RunStatus::Expired => "EXPIRED",
            RunStatus::TimedOut => "TIMED_OUT",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        RunStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Not started yet: `QUEUED`, `DELAYED` or `PENDING_VERSION`.
    pub fn is_queued(self) -> bool {
        matches!(
            self,
            RunStatus::Queued | RunStatus::Delayed | RunStatus::PendingVersion
        )
    }

    /// `EXECUTING` or `DEQUEUED`.
    pub fn is_executing(self) -> bool {
        matches!(self, RunStatus::Executing | RunStatus::Dequeued)
    }

    /// `WAITING`.
    pub fn is_waiting(self) -> bool {
        self == RunStatus::Waiting
    }

    /// At rest until a timer, another run or a deploy wakes it (`WAITING`,
    /// `DELAYED`, `PENDING_VERSION`): recovery after a restart need not read
    /// it.
    pub fn is_at_rest(self) -> bool {
        matches!(
            self,
            RunStatus::Waiting | RunStatus::Delayed | RunStatus::PendingVersion
        )
    }

    /// Final: the run will not change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Completed
                | RunStatus::Canceled
                | RunStatus::Failed
                | RunStatus::Crashed
                | RunStatus::SystemFailure
                | RunStatus::Expired
                | RunStatus::TimedOut
        )
    }

    /// Finished successfully.
    pub fn is_success(self) -> bool {
        self == RunStatus::Completed
    }

    /// Finished, but not successfully.
    pub fn is_failed(self) -> bool {
        self.is_final() && !self.is_success()
    }

    /// `CANCELED`.
    pub fn is_cancelled(self) -> bool {
        self == RunStatus::Canceled
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for s in RunStatus::ALL {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }

    #[test]
    fn booleans_partition_the_statuses() {
        for s in RunStatus::ALL {
            let groups = [
                s.is_queued(),
                s.is_executing(),
                s.is_waiting(),
                s.is_final(),
            ];
            assert_eq!(groups.iter().filter(|b| **b).count(), 1, "{s}");
            assert_eq!(s.is_failed(), s.is_final() && s != RunStatus::Completed);
        }
        assert!(RunStatus::TimedOut.is_final() && RunStatus::Expired.is_final());
    }
}
