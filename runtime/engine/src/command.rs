//! What the engine asks for: writes, which go into one atomic commit per
//! input, and effects, which the server performs only once that commit is
//! durable.

use kiln_types::{Arrival, JournalRecord, Run, RunId, Timestamp, WaitRecord, WaitToken};

/// One command of an input's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Save the run's record (with the timers its record calls for: a
    /// delay's end, a ttl).
    PutRun(Run),
    /// Append to a run's journal.
    AppendJournal {
        /// The run.
        run: RunId,
        /// The entry, numbered.
        record: JournalRecord,
    },
    /// Arm a wait of a suspending run: the waits table, the waiter entry of
    /// each child or token it waits on, its durable timer.
    Arm {
        /// The run.
        run: RunId,
        /// The wait.
        wait: WaitRecord,
    },
    /// Remove everything [`Command::Arm`] wrote for a wait.
    Disarm {
        /// The run.
        run: RunId,
        /// The wait.
        wait: WaitRecord,
    },
    /// Put a fact in a run's inbox.
    PutArrival {
        /// The run it is addressed to.
        run: RunId,
        /// The fact.
        arrival: Arrival,
    },
    /// Take a fact out of a run's inbox.
    DeleteArrival {
        /// The run.
        run: RunId,
        /// The wait.
        wait: u64,
        /// The part.
        part: u32,
    },
    /// Delete a wait's durable timer.
    DeleteTimer {
        /// The run.
        run: RunId,
        /// The wait.
        wait: u64,
        /// When it was due.
        due: Timestamp,
    },
    /// Save a wait token.
    PutToken(WaitToken),

    /// Effect: put the run on its queue, to start no earlier than
    /// `not_before`.
    Enqueue {
        /// The run, as saved.
        run: Run,
        /// A retry's backoff, or at once.
        not_before: Option<Timestamp>,
    },
    /// Effect: deliver the run's inbox (feed [`crate::Input::Deliver`]).
    Deliver {
        /// The run.
        run: RunId,
    },
    /// Effect: the run reached a final status; tell whoever polls for it.
    Finished {
        /// The run.
        run: RunId,
    },
    /// Effect: stop the run's executing guest.
    Interrupt {
        /// The run.
        run: RunId,
    },
    /// Effect: cancel the run's unfinished children.
    CancelChildren {
        /// The run.
        run: RunId,
    },
}

impl Command {
    /// Whether the command is a write (part of the input's atomic commit)
    /// rather than an effect performed after it.
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            Command::Enqueue { .. }
                | Command::Deliver { .. }
                | Command::Finished { .. }
                | Command::Interrupt { .. }
                | Command::CancelChildren { .. }
        )
    }
}
