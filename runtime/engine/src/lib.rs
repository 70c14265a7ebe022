//! Kiln's run state machine, free of I/O.
//!
//! [`apply`] takes a run record and an [`Event`] and returns the next record
//! with the [`Action`]s the driver must perform (queue the run, interrupt an
//! attempt, tell waiters the run finished). The server's executor is that
//! driver; this crate only decides. Every (status, event) pair has a defined
//! answer: a transition, or a [`TransitionError`] that leaves the run as it
//! was.

mod event;
mod transition;

pub use event::{Action, Event, FailureKind};
pub use transition::{Transition, TransitionError, apply};
