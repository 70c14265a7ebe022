//! Wait tokens: a run waits until a backend (or a callback URL) completes
//! the token, or it times out.

use crate::{Timestamp, TokenId};
use serde::{Deserialize, Serialize};

/// Where a token stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TokenStatus {
    /// Not completed yet.
    Waiting,
    /// Completed with data.
    Completed,
    /// Its timeout passed first.
    TimedOut,
}

impl TokenStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::Waiting => "WAITING",
            TokenStatus::Completed => "COMPLETED",
            TokenStatus::TimedOut => "TIMED_OUT",
        }
    }
}

/// Everything the server keeps about a wait token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitToken {
    /// The token's id.
    pub id: TokenId,
    /// Completed or not (a timed-out token is stored `WAITING` until looked
    /// at; see [`WaitToken::status_at`]).
    pub status: TokenStatus,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// When it times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_at: Option<Timestamp>,
    /// The user's idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// When the idempotency key stops deduplicating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key_expires_at: Option<Timestamp>,
    /// The data it was completed with, as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
}

impl WaitToken {
    /// Its status at `now`: a waiting token past its timeout has timed out.
    pub fn status_at(&self, now: Timestamp) -> TokenStatus {
        match (self.status, self.timeout_at) {
            (TokenStatus::Waiting, Some(t)) if t <= now => TokenStatus::TimedOut,
            (status, _) => status,
        }
    }
}
