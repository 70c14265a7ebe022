//! Runs waiting for a deployment: a `PENDING_VERSION` run's trigger, kept
//! until a deploy brings its task and the run is made from it.
//!
//! Keys: see [`crate::layout`]. The entry is written with the run and
//! removed in the batch that queues (or fails) it.

use crate::layout::PENDING;
use crate::records::key;
use crate::{Batch, Op, Result, Store};
use kiln_types::RunId;

impl Batch {
    /// Keeps `trigger` (the server's record of the trigger, JSON) for the
    /// pending run `run`.
    pub fn put_pending(&mut self, run: &RunId, trigger: Vec<u8>) -> &mut Self {
        self.ops
            .push(Op::Put(key(PENDING, run.as_str().as_bytes()), trigger));
        self
    }

    /// Forgets the trigger of `run`.
    pub fn delete_pending(&mut self, run: &RunId) -> &mut Self {
        self.ops
            .push(Op::Delete(key(PENDING, run.as_str().as_bytes())));
        self
    }
}

impl Store {
    /// Every pending run with its trigger, oldest id first.
    pub fn pending(&self) -> Result<Vec<(RunId, Vec<u8>)>> {
        Ok(self
            .backend
            .scan_prefix(PENDING)?
            .into_iter()
            .filter_map(|(k, v)| {
                let id = std::str::from_utf8(k.get(PENDING.len()..)?).ok()?;
                Some((RunId::parse(id).ok()?, v))
            })
            .collect())
    }
}
