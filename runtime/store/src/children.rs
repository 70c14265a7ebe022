//! Child runs: which runs a run triggered, batches, and which parent waits
//! on which child.
//!
//! Keys: see [`crate::layout`].
//!
//! A waiter entry is written when the parent suspends on a child (or on a
//! batch holding it) and removed when the wake is delivered, so a child that
//! finishes reads one short prefix to learn whom to wake. Usually that is
//! its parent alone; a run returned for an idempotency key or a debounce
//! window can be waited on by runs that did not trigger it.

use crate::layout::{BATCH, BATCH_ITEM, BATCH_KEY, CHILD, WAITER};
use crate::records::{decode, encode, key};
use crate::{Batch, Op, Result, Store};
use kiln_types::{BatchId, RunId, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The v3 batch an idempotency key made, until when the key counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchKey {
    /// The batch.
    pub batch: BatchId,
    /// When the key stops deduplicating.
    pub expires_at: Timestamp,
    /// The key as the user wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_key: Option<String>,
}

fn batch_item_prefix(batch: &BatchId) -> Vec<u8> {
    let mut k = key(BATCH_ITEM, batch.as_str().as_bytes());
    k.push(b'/');
    k
}

/// A batch of child runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchRecord {
    /// The batch's id.
    pub id: BatchId,
    /// The run that triggered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<RunId>,
    /// Its runs, in item order.
    pub runs: Vec<RunId>,
    /// When it was created.
    pub created_at: Timestamp,
    /// For a batch made through the v3 batch API: how many items it takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<u32>,
    /// Items that made no run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<BatchItemError>,
    /// When every item of a v3 batch had been processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_at: Option<Timestamp>,
    /// For a v3 batch a public access token created: the token's SHA-256
    /// (hex), the only public token that may send its items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// An item of a v3 batch that made no run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchItemError {
    /// The item's index.
    pub index: u32,
    /// Its task.
    pub task: String,
    /// Why it made no run.
    pub error: String,
}

pub use kiln_types::Waiter;

fn child_prefix(parent: &RunId) -> Vec<u8> {
    let mut k = key(CHILD, parent.as_str().as_bytes());
    k.push(b'/');
    k
}

fn waiters_prefix(child: &RunId) -> Vec<u8> {
    let mut k = key(WAITER, child.as_str().as_bytes());
    k.push(b'/');
    k
}

fn waiter_key(child: &RunId, waiting: &RunId, wait_id: u64) -> Vec<u8> {
    let mut k = waiters_prefix(child);
    k.extend_from_slice(waiting.as_str().as_bytes());
    k.push(b'/');
    k.extend_from_slice(&wait_id.to_be_bytes());
    k
}

impl Batch {
    /// Records that `parent` triggered `child`.
    pub fn put_child(&mut self, parent: &RunId, child: &RunId) -> &mut Self {
        let mut k = child_prefix(parent);
        k.extend_from_slice(child.as_str().as_bytes());
        self.ops.push(Op::Put(k, Vec::new()));
        self
    }

    /// Saves a batch.
    pub fn put_batch(&mut self, batch: &BatchRecord) -> &mut Self {
        match encode(batch) {
            Ok(v) => self
                .ops
                .push(Op::Put(key(BATCH, batch.id.as_str().as_bytes()), v)),
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Records that item `index` of a v3 batch was processed: the run it
    /// made, or none (it failed).
    pub fn put_batch_item(
        &mut self,
        batch: &BatchId,
        index: u32,
        run: Option<&RunId>,
    ) -> &mut Self {
        let mut k = batch_item_prefix(batch);
        k.extend_from_slice(&index.to_be_bytes());
        let value = run
            .map(|r| r.as_str().as_bytes().to_vec())
            .unwrap_or_default();
        self.ops.push(Op::Put(k, value));
        self
    }

    /// Records that a suspended parent waits on `child`.
    pub fn put_waiter(&mut self, child: &RunId, waiter: &Waiter) -> &mut Self {
        match encode(waiter) {
            Ok(v) => self.ops.push(Op::Put(
                waiter_key(child, &waiter.parent, waiter.wait_id),
                v,
            )),
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Records the v3 batch an idempotency key made.
    pub fn put_batch_key(&mut self, key_hash: &str, entry: &BatchKey) -> &mut Self {
        match encode(entry) {
            Ok(v) => self
                .ops
                .push(Op::Put(key(BATCH_KEY, key_hash.as_bytes()), v)),
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Removes the entry of wait `wait_id` of `waiting` on `child`.
    pub fn delete_waiter(&mut self, child: &RunId, waiting: &RunId, wait_id: u64) -> &mut Self {
        self.ops
            .push(Op::Delete(waiter_key(child, waiting, wait_id)));
        self
    }
}

impl Store {
    /// The runs `parent` triggered, oldest first.
    pub fn children(&self, parent: &RunId) -> Result<Vec<RunId>> {
        let prefix = child_prefix(parent);
        Ok(self
            .backend
            .scan_prefix(&prefix)?
            .iter()
            .filter_map(|(k, _)| {
                std::str::from_utf8(&k[prefix.len()..])
                    .ok()
                    .and_then(|s| RunId::parse(s).ok())
            })
            .collect())
    }

    /// A batch by id.
    pub fn batch(&self, id: &BatchId) -> Result<Option<BatchRecord>> {
        let k = key(BATCH, id.as_str().as_bytes());
        self.backend.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// The processed items of a v3 batch by index: the run each made, or
    /// none.
    pub fn batch_items(&self, batch: &BatchId) -> Result<BTreeMap<u32, Option<RunId>>> {
        let prefix = batch_item_prefix(batch);
        Ok(self
            .backend
            .scan_prefix(&prefix)?
            .iter()
            .filter_map(|(k, v)| {
                let index = u32::from_be_bytes(k.get(prefix.len()..)?.try_into().ok()?);
                let run = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| RunId::parse(s).ok());
                Some((index, run))
            })
            .collect())
    }

    /// The v3 batch an idempotency key made, if the key is recorded.
    pub fn batch_by_key(&self, key_hash: &str) -> Result<Option<BatchKey>> {
        let k = key(BATCH_KEY, key_hash.as_bytes());
        self.backend.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// The suspended runs' waits on `child` (usually its parent's one).
    pub fn waiters(&self, child: &RunId) -> Result<Vec<Waiter>> {
        self.backend
            .scan_prefix(&waiters_prefix(child))?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// Every run a suspended run waits on: the children named by the
    /// `waiter/` entries.
    pub fn waited_on(&self) -> Result<std::collections::HashSet<RunId>> {
        Ok(self
            .backend
            .scan_prefix(WAITER)?
            .iter()
            .filter_map(|(k, _)| {
                let rest = &k[WAITER.len()..];
                let end = rest.iter().position(|b| *b == b'/')?;
                std::str::from_utf8(&rest[..end])
                    .ok()
                    .and_then(|s| RunId::parse(s).ok())
            })
            .collect())
    }

    /// Whether wait `wait_id` of `waiting` still waits on `child`.
    pub fn is_waiting_on(&self, child: &RunId, waiting: &RunId, wait_id: u64) -> Result<bool> {
        Ok(self
            .backend
            .get(&waiter_key(child, waiting, wait_id))?
            .is_some())
    }
}
