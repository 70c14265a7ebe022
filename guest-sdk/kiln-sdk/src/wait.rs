//! Durable waits: while a task waits, its run holds no memory on the server
//! and no concurrency slot.

use crate::TaskError;
use crate::bindings::kiln::task::types::{WaitKind, WakeValue};
use crate::executor::WaitFuture;
use std::time::{Duration, SystemTime};

/// Waits for `duration`.
pub async fn for_duration(duration: Duration) -> Result<(), TaskError> {
    let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    expect_timer(WaitFuture::new(WaitKind::Duration(ms)).await)
}

/// Waits until `at` (returns at once if it has passed).
pub async fn until(at: SystemTime) -> Result<(), TaskError> {
    let ms = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    expect_timer(WaitFuture::new(WaitKind::Until(ms)).await)
}

fn expect_timer(value: WakeValue) -> Result<(), TaskError> {
    match value {
        WakeValue::Timer => Ok(()),
        _ => Err(
            TaskError::new("a timer wait woke with something other than its timer")
                .with_name("KilnProtocolError"),
        ),
    }
}

/// A wait token: a run waits on it until a backend completes it (or its
/// callback URL is called), or it times out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The token's id (`waitpoint_...`): give it to whoever completes it.
    pub id: String,
    /// A URL that completes the token with a POST of JSON, no API key needed.
    pub url: String,
}

/// Options for [`create_token`], as Trigger.dev's `wait.createToken`.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenOptions {
    /// When it times out: `"10m"`, `"1h"`, `"1d"`, or an ISO 8601 date.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Creating a token with a key that is still live returns that token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// How long the key deduplicates (`"1h"`; 30 days by default).
    #[serde(rename = "idempotencyKeyTTL", skip_serializing_if = "Option::is_none")]
    pub idempotency_key_ttl: Option<String>,
    /// Tags to find it by.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// The token timed out before it was completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenTimeout {
    /// The host's message.
    pub message: String,
}

impl std::fmt::Display for TokenTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Creates a wait token. Journaled: a replay returns the same token.
pub async fn create_token(options: TokenOptions) -> Result<Token, TaskError> {
    use crate::bindings::kiln::task::host;
    let options = serde_json::to_string(&options).unwrap_or_else(|_| "{}".into());
    host::create_token(&options)
        .map(|t| Token {
            id: t.id,
            url: t.url,
        })
        .map_err(|e| TaskError::from_host("creating a wait token", "TokenError", e))
}

/// Waits until the token is completed, with its data as `T`, or times out.
/// The run holds no memory and no slot meanwhile.
pub async fn for_token<T: serde::de::DeserializeOwned>(
    id: impl Into<String>,
) -> Result<Result<T, TokenTimeout>, TaskError> {
    match WaitFuture::new(WaitKind::Token(id.into())).await {
        WakeValue::Token(Ok(data)) => serde_json::from_str(&data).map(Ok).map_err(|e| {
            TaskError::abort(format!(
                "the token's data does not fit the expected type: {e}"
            ))
            .with_name("TokenDataError")
        }),
        WakeValue::Token(Err(message)) => Ok(Err(TokenTimeout { message })),
        _ => Err(
            TaskError::new("a token wait woke with something other than its token")
                .with_name("KilnProtocolError"),
        ),
    }
}
