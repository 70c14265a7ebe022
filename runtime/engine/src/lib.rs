//! Kiln's run engine, free of I/O.
//!
//! [`apply`] takes an [`Input`] (a status event, a suspension, a due timer,
//! a token's completion, a delivery) and, reading durable state through a
//! [`View`], returns the [`Command`]s it calls for: writes, which the caller
//! commits in one atomic batch, and effects (queue a run, deliver a wake,
//! interrupt a guest), which it performs once that batch is durable. A fact
//! and the wake it owes a waiting run are always among the writes of one
//! input, so no crash can keep one and lose the other.
//!
//! [`cursor`] holds the rules of an attempt's replay: where a slice resumes
//! in the journal, which waits are pending, how a step's waits are checked
//! against the journal, and whether a guest at rest is woken from the
//! journal, makes a fetch, sleeps warm or suspends.
//!
//! Underneath, [`transition::apply`](apply_event) is the status machine: a
//! run record and an [`Event`] in, the next record and its [`Action`]s out.
//! Every (status, event) pair has a defined answer: a transition, or a
//! [`TransitionError`] that leaves the run as it was.

mod apply;
mod command;
pub mod cursor;
mod event;
mod input;
mod transition;
mod view;

pub use apply::{Applied, EngineError, Outcome, apply};
pub use command::Command;
pub use event::{Action, Event, FailureKind};
pub use input::Input;
pub use transition::{Transition, TransitionError, apply as apply_event};
pub use view::{View, ViewError, ViewResult};

/// The pure parts of waking, for those that need them directly.
pub mod wakes {
    pub use crate::apply::{Wake, complete, timed_out_value};
}
