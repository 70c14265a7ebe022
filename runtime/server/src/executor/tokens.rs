//! Wait tokens: created by a backend or from inside a task, waited on by a
//! suspended run, completed through the API or the token's callback URL,
//! or timed out by a durable timer.
//!
//! Completing a token and timing it out go through the engine: whichever
//! commits first settles the token, and the same commit puts the wake in
//! the inbox of the run suspended on it (a run that suspends on a token
//! already settled finds it at suspension).

use super::Executor;
use super::children::AttemptSink;
use super::interpreter::StepError;
use crate::duration::{parse_instant, parse_ms};
use kiln_engine::{EngineError, Input, Outcome};
use kiln_sandbox::TokenFuture;
use kiln_store::Batch;
use kiln_types::{HostCall, JournalEntry, Timestamp, TokenId, TokenStatus, WaitToken};
use serde::Deserialize;
use serde_json::Value;

/// The default idempotency key lifetime (Trigger.dev's: 30 days).
const DEFAULT_KEY_TTL_MS: u64 = 30 * 86_400_000;
/// The largest completion data accepted.
pub const MAX_TOKEN_DATA: usize = 10 * 1024 * 1024;

/// Options for a new token, as Trigger.dev's `wait.createToken`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenOptions {
    /// `"10m"`, an ISO date, or seconds.
    pub timeout: Option<Value>,
    /// Returns the existing token created with the same key.
    pub idempotency_key: Option<String>,
    /// How long the key deduplicates (`"1h"`; 30 days by default).
    #[serde(rename = "idempotencyKeyTTL")]
    pub idempotency_key_ttl: Option<String>,
    /// Tags (a string or a list).
    pub tags: Option<Value>,
}

/// Why a token call was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No such token.
    #[error("Waitpoint token not found")]
    NotFound,
    /// Bad options or data.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
    /// Something else failed.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Executor {
    /// The callback URL that completes a token without an API key: the
    /// token id signed with the server's key.
    pub fn token_url(&self, id: &TokenId) -> String {
        format!(
            "{}/api/v1/waitpoints/tokens/{id}/callback/{}",
            self.shared.config.public_url,
            crate::jwt::token_signature(&self.shared.config.secret, id.as_str())
        )
    }

    /// A new token, or the live one created earlier with the same
    /// idempotency key (`true` when cached). The caller commits `batch`.
    fn new_token(
        &self,
        options: TokenOptions,
        batch: &mut Batch,
    ) -> Result<(WaitToken, bool), String> {
        let now = Timestamp::now();
        if let Some(key) = &options.idempotency_key
            && let Some(existing) = self
                .shared
                .store
                .token_by_key(key)
                .map_err(|e| e.to_string())?
            && existing.idempotency_key_expires_at.is_none_or(|t| t > now)
        {
            return Ok((existing, true));
        }
        let timeout_at = options
            .timeout
            .as_ref()
            .map(|t| parse_instant(t, now))
            .transpose()
            .map_err(|e| format!("timeout: {e}"))?;
        let ttl = match &options.idempotency_key_ttl {
            Some(ttl) => parse_ms(ttl).map_err(|e| format!("idempotencyKeyTTL: {e}"))?,
            None => DEFAULT_KEY_TTL_MS,
        };
        let token = WaitToken {
            id: TokenId::generate(now.as_millis()),
            status: TokenStatus::Waiting,
            tags: crate::trigger::tags(options.tags)?,
            timeout_at,
            idempotency_key_expires_at: options
                .idempotency_key
                .as_ref()
                .map(|_| Timestamp(now.as_millis().saturating_add(ttl))),
            idempotency_key: options.idempotency_key,
            output: None,
            created_at: now,
            completed_at: None,
        };
        batch.put_token(&token);
        Ok((token, false))
    }

    /// Creates a token for a backend.
    pub async fn create_token(
        &self,
        options: TokenOptions,
    ) -> Result<(WaitToken, bool), TokenError> {
        let mut batch = Batch::default();
        let (token, cached) = self
            .new_token(options, &mut batch)
            .map_err(TokenError::Invalid)?;
        if !cached {
            self.shared.store.commit(batch).await?;
        }
        Ok((token, cached))
    }

    /// A token by id.
    pub fn token(&self, id: &TokenId) -> Result<WaitToken, TokenError> {
        self.shared.store.token(id)?.ok_or(TokenError::NotFound)
    }

    /// Completes a token with `data` (JSON) and wakes the run suspended on
    /// it. Completing a completed token changes nothing.
    pub async fn complete_token(
        &self,
        id: &TokenId,
        data: String,
    ) -> Result<WaitToken, TokenError> {
        if data.len() > MAX_TOKEN_DATA {
            return Err(TokenError::Invalid(format!(
                "the data is {} bytes, over the limit of {MAX_TOKEN_DATA}",
                data.len()
            )));
        }
        let input = Input::CompleteToken {
            token: id.clone(),
            data,
        };
        match self.step(input, Batch::default()).await {
            Ok(Outcome::Token(token)) => Ok(token),
            Ok(Outcome::TokenTimedOut(_)) => Err(TokenError::Invalid(format!(
                "wait token {id} timed out before it was completed"
            ))),
            Ok(_) => Err(TokenError::NotFound),
            Err(StepError::Engine(EngineError::TokenNotFound(_))) => Err(TokenError::NotFound),
            Err(StepError::Store(e)) => Err(TokenError::Store(e)),
            Err(StepError::Engine(e)) => Err(TokenError::Other(e.into())),
        }
    }

    /// Every token, newest first.
    pub fn tokens(&self) -> Result<Vec<WaitToken>, TokenError> {
        let mut all = self.shared.store.tokens()?;
        all.reverse();
        Ok(all)
    }
}

impl AttemptSink {
    /// Creates a token from inside a task, journaled with its id.
    pub(crate) fn make_token(&mut self, options: String) -> TokenFuture {
        let writer = self.writer.clone();
        let executor = self.executor.clone();
        Box::pin(async move {
            let parsed: Result<TokenOptions, String> = if options.trim().is_empty() {
                Ok(TokenOptions::default())
            } else {
                serde_json::from_str(&options).map_err(|e| format!("invalid token options: {e}"))
            };
            let mut batch = Batch::default();
            let made = parsed
                .and_then(|o| {
                    writer.usage().check_token(writer.budgets())?;
                    Ok(o)
                })
                .and_then(|o| executor.new_token(o, &mut batch));
            let (token, _) = match made {
                Ok(made) => made,
                Err(error) => {
                    writer.append(JournalEntry::HostCall(HostCall::CreateToken {
                        result: None,
                        url: None,
                        error: Some(error.clone()),
                    }));
                    return Err(error);
                }
            };
            let url = executor.token_url(&token.id);
            writer.append_to(
                &mut batch,
                JournalEntry::HostCall(HostCall::CreateToken {
                    result: Some(token.id.clone()),
                    url: Some(url.clone()),
                    error: None,
                }),
            );
            executor
                .shared
                .store
                .commit(batch)
                .await
                .map_err(|e| e.to_string())?;
            Ok((token.id, url))
        })
    }
}
