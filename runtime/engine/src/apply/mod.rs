//! [`apply`]: one input in, the commands it calls for out.
//!
//! One file per family of inputs: [`runs`] (status events, and what a run's
//! end owes the runs waiting on it), [`waits`] (suspending, due timers and
//! delivering wakes) and [`tokens`] (completing and timing out tokens).

mod runs;
mod tokens;
mod waits;

use crate::{Command, Input, TransitionError, View, ViewError};
use kiln_types::{Run, RunId, Timestamp, TokenId, WaitToken};

/// Why an input was refused. Nothing is to be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// No such run.
    #[error("run {0} not found")]
    RunNotFound(RunId),
    /// No such token.
    #[error("wait token {0} not found")]
    TokenNotFound(TokenId),
    /// The run's status does not take the event.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// A read failed.
    #[error(transparent)]
    View(#[from] ViewError),
}

/// What an input came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Nothing to report (a delivery, a timer).
    Done,
    /// The run as the input left it.
    Run(Box<Run>),
    /// A claimed run as the claim left it (`EXECUTING`), and whether the
    /// claim started its first attempt: a run that never started one has
    /// nothing in its journal (every entry is written by or after a slice
    /// that a claim began, and commits after the claim), so its slice
    /// need not read it.
    Claimed {
        /// The run.
        run: Box<Run>,
        /// No attempt had started before this claim.
        first: bool,
    },
    /// The token as the input left it.
    Token(WaitToken),
    /// The token had timed out before it was completed (its timeout is now
    /// committed, if it was not yet).
    TokenTimedOut(WaitToken),
}

/// An input's answer: the commands to perform (writes first, in one atomic
/// commit; then effects) and what it came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The commands, in order.
    pub commands: Vec<Command>,
    /// What the input came to.
    pub outcome: Outcome,
}

impl Applied {
    fn new(commands: Vec<Command>, outcome: Outcome) -> Self {
        Applied { commands, outcome }
    }
}

/// Applies `input` at time `now`, reading durable state through `view`.
///
/// The caller commits every write command of the answer in one atomic
/// batch, with no other input applied between the reads and that commit,
/// and performs the effects once the batch is durable.
pub fn apply(view: &impl View, input: Input, now: Timestamp) -> Result<Applied, EngineError> {
    match input {
        Input::Run { run, event, logs } => runs::event(view, &run, event, logs, now),
        Input::Claim { run } => runs::claim(view, &run, now),
        Input::Suspend {
            run,
            usage_ms,
            waits,
            logs,
        } => waits::suspend(view, &run, usage_ms, waits, logs, now),
        Input::TimerDue { run, wait, due } => waits::timer_due(view, &run, wait, due, now),
        Input::CompleteToken { token, data } => tokens::complete(view, &token, data, now),
        Input::Recheck { run } => waits::recheck(view, &run, now),
        Input::Deliver { run } => waits::deliver(view, &run, now),
    }
}

pub use tokens::timed_out_value;
pub use waits::{Wake, complete};
