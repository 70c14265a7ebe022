//! Wait tokens in the store.
//!
//! Keys: see [`crate::layout`].

use crate::layout::{TOKEN, TOKEN_KEY, TOKEN_WAITER};
use crate::records::{decode, encode, key};
use crate::{Batch, Op, Result, Store, StoreError, Waiter};
use kiln_types::{RunId, TokenId, WaitToken};

fn token_waiter_key(token: &TokenId, run: &RunId, wait: u64) -> Vec<u8> {
    let mut k = key(TOKEN_WAITER, token.as_str().as_bytes());
    k.push(b'/');
    k.extend_from_slice(run.as_str().as_bytes());
    k.push(b'/');
    k.extend_from_slice(&wait.to_be_bytes());
    k
}

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

    /// Records that a suspended run waits on a token (several runs may).
    pub fn put_token_waiter(&mut self, token: &TokenId, waiter: &Waiter) -> &mut Self {
        match encode(waiter) {
            Ok(v) => self.ops.push(Op::Put(
                token_waiter_key(token, &waiter.parent, waiter.wait_id),
                v,
            )),
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Removes a run's waiter entry of a token.
    pub fn delete_token_waiter(&mut self, token: &TokenId, run: &RunId, wait: u64) -> &mut Self {
        self.ops
            .push(Op::Delete(token_waiter_key(token, run, wait)));
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

    /// The newest `limit` wait tokens, newest first (token ids sort by
    /// creation time): reads only those, not every token.
    pub fn tokens_newest(&self, limit: usize) -> Result<Vec<WaitToken>> {
        let end = crate::sled_unapplied::prefix_end(TOKEN).unwrap_or_default();
        self.backend
            .scan_range_rev(TOKEN, &end, limit)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// Every wait token, oldest first.
    pub fn tokens(&self) -> Result<Vec<WaitToken>> {
        self.backend
            .scan_prefix(TOKEN)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// Rewrites the single waiter entry per token that an older Kiln kept
    /// (`token-waiter/<token>`) into the entry per waiting run; returns how
    /// many it rewrote. Run once at start-up, before anything reads them.
    pub async fn migrate_token_waiters(&self) -> Result<usize> {
        let mut batch = Batch::default();
        let mut moved = 0;
        for (k, v) in self.backend.scan_prefix(TOKEN_WAITER)? {
            let rest = &k[TOKEN_WAITER.len()..];
            if rest.contains(&b'/') {
                continue;
            }
            let token = match std::str::from_utf8(rest).ok().map(TokenId::parse) {
                Some(Ok(token)) => token,
                _ => continue,
            };
            let waiter: Waiter = decode(&k, &v)?;
            batch.put_token_waiter(&token, &waiter);
            batch.ops.push(Op::Delete(k.clone()));
            moved += 1;
        }
        if moved > 0 {
            self.commit(batch).await?;
        }
        Ok(moved)
    }

    /// The suspended runs that wait on a token.
    pub fn token_waiters(&self, token: &TokenId) -> Result<Vec<Waiter>> {
        self.backend
            .scan_prefix(&key(TOKEN_WAITER, token.as_str().as_bytes()))?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }
}
