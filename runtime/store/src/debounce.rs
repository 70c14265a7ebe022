//! Debounce windows: which `DELAYED` run a task's debounce key holds.
//!
//! Keys: see [`crate::layout`].
//!
//! The entry is written with the run and removed when its delay ends (or the
//! run ends before that); a trigger that finds an entry whose run is no
//! longer `DELAYED` starts a new window.

use crate::layout::DEBOUNCE;
use crate::records::key;
use crate::{Batch, Op, Result, Store};
use kiln_types::RunId;

fn debounce_key(task: &str, debounce: &str) -> Vec<u8> {
    let mut k = key(DEBOUNCE, task.as_bytes());
    k.push(0);
    k.extend_from_slice(debounce.as_bytes());
    k
}

impl Batch {
    /// Makes `run` the open window of `debounce` on `task`.
    pub fn put_debounce(&mut self, task: &str, debounce: &str, run: &RunId) -> &mut Self {
        self.ops.push(Op::Put(
            debounce_key(task, debounce),
            run.as_str().as_bytes().to_vec(),
        ));
        self
    }

    /// Closes the window of `debounce` on `task`.
    pub fn delete_debounce(&mut self, task: &str, debounce: &str) -> &mut Self {
        self.ops.push(Op::Delete(debounce_key(task, debounce)));
        self
    }
}

impl Store {
    /// The run holding the window of `debounce` on `task`, if one is open.
    pub fn debounced_run(&self, task: &str, debounce: &str) -> Result<Option<RunId>> {
        Ok(self
            .backend
            .get(&debounce_key(task, debounce))?
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| RunId::parse(&s).ok()))
    }
}
