//! Wait tokens in the store.
//!
//! Keys: see [`crate::layout`].

use crate::layout::{TOKEN, TOKEN_KEY, TOKEN_WAITER};
use crate::records::{decode, encode, key};
use crate::{Batch, Op, Result, Store, StoreError, Waiter};
use kiln_types::{TokenId, WaitToken};

fn parse_token(k: &[u8], v: &[u8]) -> Result<TokenId> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| TokenId::parse(s).ok())
        .ok_or_else(|| StoreError::Corrupt {
            key: String::from_utf8_lossy(k).into_owned(),
            reason: "not a token id".into(),
        })
}

impl Batch {
    /// Saves a token (and its idempotency key, if it has one).
    pub fn put_token(&mut self, token: &WaitToken) -> &mut Self {
        match encode(token) {
            Ok(v) => self
                .ops
                .push(Op::Put(key(TOKEN, token.id.as_str().as_bytes()), v)),
            Err(e) => self.error = Some(e),
        }
        if let Some(k) = &token.idempotency_key {
            self.ops.push(Op::Put(
                key(TOKEN_KEY, k.as_bytes()),
                token.id.as_str().as_bytes().to_vec(),
            ));
        }
        self
    }

    /// Records that a suspended run waits on a token.
    pub fn put_token_waiter(&mut self, token: &TokenId, waiter: &Waiter) -> &mut Self {
        match encode(waiter) {
            Ok(v) => self
                .ops
                .push(Op::Put(key(TOKEN_WAITER, token.as_str().as_bytes()), v)),
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Removes a token's waiter entry.
    pub fn delete_token_waiter(&mut self, token: &TokenId) -> &mut Self {
        self.ops
            .push(Op::Delete(key(TOKEN_WAITER, token.as_str().as_bytes())));
        self
    }
}

impl Store {
    /// A token by id.
    pub fn token(&self, id: &TokenId) -> Result<Option<WaitToken>> {
        let k = key(TOKEN, id.as_str().as_bytes());
        self.backend.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// The token created with an idempotency key.
    pub fn token_by_key(&self, idempotency_key: &str) -> Result<Option<WaitToken>> {
        let k = key(TOKEN_KEY, idempotency_key.as_bytes());
        match self.backend.get(&k)? {
            Some(id) => self.token(&parse_token(&k, &id)?),
            None => Ok(None),
        }
    }

    /// Every token, oldest first.
    pub fn tokens(&self) -> Result<Vec<WaitToken>> {
        self.backend
            .scan_prefix(TOKEN)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// Who waits on a token, if a suspended run does.
    pub fn token_waiter(&self, token: &TokenId) -> Result<Option<Waiter>> {
        let k = key(TOKEN_WAITER, token.as_str().as_bytes());
        self.backend.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }
}
