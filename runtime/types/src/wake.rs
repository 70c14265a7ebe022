//! How a wake reaches a suspended run: who waits on what, and the facts
//! addressed to a waiting run (its inbox).

use crate::{BatchId, RunId, WakeValue};
use serde::{Deserialize, Serialize};

/// A run suspended on another run (or a token): which of its waits that
/// other thing's end wakes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Waiter {
    /// The waiting run.
    pub parent: RunId,
    /// Its wait.
    pub wait_id: u64,
    /// Set when the wait is on the whole batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchId>,
}

/// A fact that makes (part of) a wait of a suspended run true, addressed to
/// that run: an entry of its inbox. It is written in the same atomic commit
/// as the fact itself (a child's final status, a token's resolution, a due
/// timer), so a crash can never keep the fact and lose the wake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arrival {
    /// The wait it is for.
    pub wait_id: u64,
    /// Which part of the wait: a batch child's index, 0 for anything else.
    pub part: u32,
    /// What it brings (for a batch part, the child's `Run` outcome).
    pub value: WakeValue,
}
