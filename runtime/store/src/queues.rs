//! Which queues an operator paused.
//!
//! Keys: see [`crate::layout`].
//!
//! Queue limits come from the current deployment's manifest; only the pause,
//! which an operator sets through the API, is stored.

use crate::layout::PAUSED;
use crate::records::key;
use crate::{Batch, Op, Result, Store};

impl Batch {
    /// Marks a queue paused or resumed.
    pub fn set_queue_paused(&mut self, queue: &str, paused: bool) -> &mut Self {
        let k = key(PAUSED, queue.as_bytes());
        self.ops.push(if paused {
            Op::Put(k, Vec::new())
        } else {
            Op::Delete(k)
        });
        self
    }
}

impl Store {
    /// The paused queues.
    pub fn paused_queues(&self) -> Result<Vec<String>> {
        Ok(self
            .backend
            .scan_prefix(PAUSED)?
            .into_iter()
            .filter_map(|(k, _)| String::from_utf8(k[PAUSED.len()..].to_vec()).ok())
            .collect())
    }
}
