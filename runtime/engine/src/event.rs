//! What can happen to a run, and what the driver must do about it.

use kiln_types::{AttemptOutcome, RunError, Timestamp};

/// How an attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub enum FailureKind {
    /// The task returned an error (or panicked). Retried by the policy unless
    /// `abort`; `retry_delay_ms` overrides the backoff.
    Error {
        /// Do not retry.
        abort: bool,
        /// Retry after this many milliseconds.
        retry_delay_ms: Option<u64>,
    },
    /// The guest went past its memory cap: the run ends `CRASHED`.
    OutOfMemory,
    /// The run went past its `maxDuration`: it ends `TIMED_OUT`.
    TimedOut,
    /// Kiln could not run the attempt: the run ends `SYSTEM_FAILURE`.
    System,
}

/// Something that happened to a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The scheduler took the run off its queue.
    Dequeued,
    /// An attempt began executing.
    AttemptStarted,
    /// The attempt's task returned its output (JSON).
    AttemptSucceeded {
        /// The output.
        output: String,
        /// Execution time of the attempt in milliseconds.
        usage_ms: u64,
    },
    /// The attempt failed.
    AttemptFailed {
        /// Why.
        kind: FailureKind,
        /// The error to show.
        error: RunError,
        /// Execution time of the attempt in milliseconds.
        usage_ms: u64,
        /// A random number in `[0, 1)` for the backoff's spread.
        random: f64,
    },
    /// The attempt's guest is waiting and was snapshotted: the run holds no
    /// instance and no slot until a wake.
    Suspended {
        /// Execution time of the attempt so far, in milliseconds.
        usage_ms: u64,
    },
    /// Something the waiting run waits on happened: queue it to resume.
    Woken,
    /// A user canceled the run.
    Cancel,
    /// The server restarted while the run was dequeued or executing. The
    /// attempt stays open: it resumes by replaying its journal.
    Recovered,
    /// A `DELAYED` run's delay is over: queue it (its ttl starts now).
    DelayElapsed,
    /// The run's ttl ran out before its first attempt started.
    Expire,
}

impl Event {
    /// How the attempt ends, for an event that ends one.
    pub fn attempt_outcome(&self) -> Option<AttemptOutcome> {
        Some(match self {
            Event::AttemptSucceeded { .. } => AttemptOutcome::Succeeded,
            Event::AttemptFailed { kind, .. } => match kind {
                FailureKind::Error { .. } => AttemptOutcome::Failed,
                FailureKind::OutOfMemory => AttemptOutcome::Crashed,
                FailureKind::TimedOut => AttemptOutcome::TimedOut,
                FailureKind::System => AttemptOutcome::SystemFailure,
            },
            Event::Cancel => AttemptOutcome::Canceled,
            _ => return None,
        })
    }
}

/// What the driver must do after a transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Put the run on its queue, to start no earlier than `not_before`.
    Enqueue {
        /// The earliest start (a retry's backoff), or at once.
        not_before: Option<Timestamp>,
    },
    /// Stop the attempt that is executing.
    InterruptAttempt,
    /// The run reached a final status: wake whoever waits for it.
    NotifyFinished,
}
