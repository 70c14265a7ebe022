//! What the engine may read of durable state while it decides.
//!
//! The engine does no I/O: the server implements [`View`] over its store,
//! the simulation over its model. Reads see every commit already applied,
//! and the caller keeps other inputs out between the reads and the commit
//! of the commands they lead to (the server's gate), so a decision and its
//! writes are one atomic step.

use kiln_types::{Arrival, Run, RunId, RunOutcome, TokenId, WaitRecord, WaitToken, Waiter};

/// A failed read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reading state failed: {0}")]
pub struct ViewError(pub String);

/// Shorthand for reads.
pub type ViewResult<T> = Result<T, ViewError>;

/// Durable state, as the engine sees it.
pub trait View {
    /// A run by id.
    fn run(&self, id: &RunId) -> ViewResult<Option<Run>>;
    /// How a finished run ended, as a run waiting on it is told.
    fn outcome(&self, run: &Run) -> ViewResult<RunOutcome>;
    /// The runs suspended on `child` (or on a batch holding it).
    fn waiters(&self, child: &RunId) -> ViewResult<Vec<Waiter>>;
    /// The waits a run has armed.
    fn waits(&self, run: &RunId) -> ViewResult<Vec<WaitRecord>>;
    /// A run's inbox.
    fn inbox(&self, run: &RunId) -> ViewResult<Vec<Arrival>>;
    /// A wait token.
    fn token(&self, id: &TokenId) -> ViewResult<Option<WaitToken>>;
    /// The runs suspended on a token.
    fn token_waiters(&self, id: &TokenId) -> ViewResult<Vec<Waiter>>;
    /// The number of the last entry of a run's journal (0 if none).
    fn last_journal_seq(&self, run: &RunId) -> ViewResult<u64>;
}
