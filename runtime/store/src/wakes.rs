//! The waits a suspended run has armed, and its inbox.
//!
//! Keys: see [`crate::layout`].
//!
//! A wait is armed in the commit that suspends its run and disarmed in the
//! commit that delivers its wake. An arrival is written in the commit that
//! makes it true and deleted in the commit that delivers it, so recovery
//! finds every wake not yet delivered by reading `inbox/`.

use crate::layout::{INBOX, TOKEN_WAITER, WAIT, WAITER};
use crate::records::{decode, encode, key};
use crate::{Batch, Op, Result, Store};
use kiln_types::{Arrival, RunId, WaitRecord};

fn run_prefix(space: &[u8], run: &RunId) -> Vec<u8> {
    let mut k = key(space, run.as_str().as_bytes());
    k.push(b'/');
    k
}

fn wait_key(run: &RunId, wait: u64) -> Vec<u8> {
    let mut k = run_prefix(WAIT, run);
    k.extend_from_slice(&wait.to_be_bytes());
    k
}

fn arrival_key(run: &RunId, wait: u64, part: u32) -> Vec<u8> {
    let mut k = run_prefix(INBOX, run);
    k.extend_from_slice(&wait.to_be_bytes());
    k.push(b'/');
    k.extend_from_slice(&part.to_be_bytes());
    k
}

impl Batch {
    /// Records a wait a suspending run arms.
    pub fn put_wait(&mut self, run: &RunId, wait: &WaitRecord) -> &mut Self {
        match encode(wait) {
            Ok(v) => self.ops.push(Op::Put(wait_key(run, wait.id), v)),
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Removes an armed wait.
    pub fn delete_wait(&mut self, run: &RunId, wait: u64) -> &mut Self {
        self.ops.push(Op::Delete(wait_key(run, wait)));
        self
    }

    /// Puts a fact in a run's inbox.
    pub fn put_arrival(&mut self, run: &RunId, arrival: &Arrival) -> &mut Self {
        match encode(arrival) {
            Ok(v) => self
                .ops
                .push(Op::Put(arrival_key(run, arrival.wait_id, arrival.part), v)),
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Takes a fact out of a run's inbox.
    pub fn delete_arrival(&mut self, run: &RunId, wait: u64, part: u32) -> &mut Self {
        self.ops.push(Op::Delete(arrival_key(run, wait, part)));
        self
    }
}

impl Store {
    /// The waits a run has armed, by wait id.
    pub fn armed_waits(&self, run: &RunId) -> Result<Vec<WaitRecord>> {
        self.backend
            .scan_prefix(&run_prefix(WAIT, run))?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// A run's inbox, by wait id and part.
    pub fn inbox(&self, run: &RunId) -> Result<Vec<Arrival>> {
        self.backend
            .scan_prefix(&run_prefix(INBOX, run))?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// Every run suspended on a child run or a wait token (from the waiter
    /// indexes), each once.
    pub fn runs_waiting_on_others(&self) -> Result<Vec<RunId>> {
        let mut runs = std::collections::BTreeSet::new();
        for space in [WAITER, TOKEN_WAITER] {
            for (k, v) in self.backend.scan_prefix(space)? {
                let waiter: kiln_types::Waiter = decode(&k, &v)?;
                runs.insert(waiter.parent);
            }
        }
        Ok(runs.into_iter().collect())
    }

    /// Every run with something in its inbox (read at start-up, to deliver
    /// what a crash interrupted).
    pub fn runs_with_arrivals(&self) -> Result<Vec<RunId>> {
        let mut runs: Vec<RunId> = Vec::new();
        for (k, _) in self.backend.scan_prefix(INBOX)? {
            let rest = &k[INBOX.len()..];
            let end = rest.iter().position(|b| *b == b'/').unwrap_or(rest.len());
            let Some(id) = std::str::from_utf8(&rest[..end])
                .ok()
                .and_then(|s| RunId::parse(s).ok())
            else {
                continue;
            };
            if runs.last() != Some(&id) {
                runs.push(id);
            }
        }
        Ok(runs)
    }
}
