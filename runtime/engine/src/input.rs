//! What the engine takes: every change to a run, a wait or a token that
//! the server (or the simulation) has to decide on.

use crate::Event;
use kiln_types::{Logs, RunId, Timestamp, TokenId, WaitRecord};

/// One input to [`crate::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Something happened to a run's status: dequeued, an attempt started
    /// or ended, canceled, recovered after a crash, a delay or ttl ran out.
    Run {
        /// The run.
        run: RunId,
        /// What happened.
        event: Event,
        /// Log lines of the attempt to keep with the record.
        logs: Logs,
    },
    /// The dispatcher took a `QUEUED` run off its queue to run a slice:
    /// `DEQUEUED` and `EXECUTING` in one write (a new attempt, or the open
    /// one of a woken or recovered run).
    Claim {
        /// The run.
        run: RunId,
    },
    /// A run's guest is at rest with `waits` pending and has been
    /// snapshotted: it suspends, holding no instance and no slot.
    Suspend {
        /// The run.
        run: RunId,
        /// Execution time of the attempt so far, in milliseconds.
        usage_ms: u64,
        /// Every wait still pending.
        waits: Vec<WaitRecord>,
        /// Log lines of the attempt to keep with the record.
        logs: Logs,
    },
    /// The durable timer of a wait came due (a timer wait, or a token
    /// wait's timeout).
    TimerDue {
        /// The waiting run.
        run: RunId,
        /// Its wait.
        wait: u64,
        /// When the timer was due.
        due: Timestamp,
    },
    /// A backend (or a callback URL) completes a wait token.
    CompleteToken {
        /// The token.
        token: TokenId,
        /// Its data, as JSON.
        data: String,
    },
    /// Look again at what a suspended run's waits wait on, and put whatever
    /// is true already in its inbox (at start-up, for runs suspended by a
    /// Kiln that committed wakes apart from their causes).
    Recheck {
        /// The run.
        run: RunId,
    },
    /// Deliver what a run's inbox holds to the waits it completes.
    Deliver {
        /// The run.
        run: RunId,
    },
}
