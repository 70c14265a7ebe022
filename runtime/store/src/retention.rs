//! Retention: deleting what a finished run leaves behind once it is old.
//!
//! A run's keys are found from the run: everything under its id in the
//! keyspaces a run owns (journal, snapshot layers, stored payload and
//! output, child index, streams, waits, inbox, waiters), its own record and
//! index entries, and its entries in its parent's and schedule's indexes.
//! Keys that outlive their run are swept by age apart from runs:
//! idempotency keys (of runs and of v3 batches) past their lifetime,
//! debounce windows whose run is gone, wait tokens finished before the cutoff,
//! batches made before it whose runs are all gone, and uploaded packets
//! (which a trigger copies into its run) older than the cutoff.
//!
//! Every sweep reads and deletes at most a page of keys, so it never holds
//! the store for long, and returns where the next page starts.
//!
//! Expired runs are found two ways. A run that finished more than
//! [`UNINDEXED_WITHIN_MS`] after it was made (by its id's time) has an entry
//! in the `finished/` index at its finish time, which
//! [`Store::expired_runs`] reads. Most runs finish sooner than that, and
//! for them the index entry would be one more key written with every run
//! (a fifth of the tree's work for a short run). They are found in the
//! runs' own keyspace instead, which sorts by creation time:
//! [`Store::expired_unindexed`] reads the runs made before the cutoff less
//! that margin, every one of which finished before the cutoff if it
//! finished within the margin. A run read there that had not finished
//! within the margin gets an index entry when it finishes (by then it is
//! older than the margin), so a sweeper can go on from where it stopped
//! without reading those runs again.

use crate::layout::{
    ACTIVE, BATCH, BATCH_ITEM, BATCH_KEY, CHILD, DEBOUNCE, FINISHED, IDEM, INBOX, JOURNAL, OPEN,
    PACKET, PACKET_AT, PACKETS_DATED, PENDING, RUN, RUN_BLOB, RUNS_INDEXED, SCHED_RUN, SNAP,
    STREAM, STREAM_KEY, TOKEN, TOKEN_KEY, TOKEN_WAITER, WAIT, WAITER,
};
use crate::records::{decode, key};
use crate::{Batch, BatchKey, BatchRecord, IdempotentRun, Op, Result, Store};
use kiln_types::{DeploymentId, Run, RunId, Timestamp, TokenStatus, WaitToken};
use std::collections::BTreeSet;

/// What a page of a sweep found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Records deleted (runs, keys, tokens, batches or packets).
    pub deleted: usize,
    /// Keys deleted with them.
    pub keys: usize,
    /// Where the next page starts; `None` once the keyspace is done.
    pub next: Option<Vec<u8>>,
}

/// A page of runs as retention reads them.
#[derive(Debug, Default)]
pub struct RunPage {
    /// Runs that finished before the cutoff, oldest first.
    pub expired: Vec<Run>,
    /// Index entries that no longer match their run (the run is gone, or
    /// its finish time moved): to delete.
    pub stale: Vec<Vec<u8>>,
    /// Where the next page starts; `None` once no more runs expired.
    pub next: Option<Vec<u8>>,
    /// The last key the page read ([`Store::expired_unindexed`] only):
    /// where a later pass goes on from.
    pub last: Option<Vec<u8>>,
}

/// How long after it was made a run may finish and still have no entry in
/// the `finished/` index (see the module's docs): a second, so a short
/// run writes one key fewer, and a run is deleted at most this long after
/// it expired.
pub const UNINDEXED_WITHIN_MS: u64 = 1_000;

/// The start of the `finished/` entries of runs that finished at `at`: every
/// entry of a run that finished earlier sorts before it.
fn finished_from(at: Timestamp) -> Vec<u8> {
    let mut k = FINISHED.to_vec();
    k.extend_from_slice(&at.as_millis().to_be_bytes());
    k
}

/// The `finished/` index entry of a run that finished at `at`.
fn finished_key(at: Timestamp, run: &RunId) -> Vec<u8> {
    let mut k = finished_from(at);
    k.extend_from_slice(run.as_str().as_bytes());
    k
}

/// The index entries a run's record calls for, written with it: `open/`
/// while it has not finished, and once it has (a run never becomes
/// unfinished again) `finished/` at its finish time, unless it finished
/// within [`UNINDEXED_WITHIN_MS`] of being made.
pub(crate) fn index_ops(run: &Run) -> Vec<Op> {
    let id = run.id.as_str().as_bytes();
    match finished_at(run) {
        Some(at) if finished_soon(run, at) => vec![Op::Delete(key(OPEN, id))],
        Some(at) => vec![
            Op::Delete(key(OPEN, id)),
            Op::Put(finished_key(at, &run.id), Vec::new()),
        ],
        None => vec![Op::Put(key(OPEN, id), Vec::new())],
    }
}

/// Whether `run`, finished at `at`, finished within [`UNINDEXED_WITHIN_MS`]
/// of the time in its id. A run whose id holds no time is always indexed.
fn finished_soon(run: &Run, at: Timestamp) -> bool {
    run.id
        .made_ms()
        .is_some_and(|made| at.as_millis() <= made.saturating_add(UNINDEXED_WITHIN_MS))
}

/// The end of a keyspace: every key with `prefix` sorts before it.
fn end_of(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// The prefix of the keys a run (or token) owns in `space`: `<space><id>/`.
fn owned_prefix(space: &[u8], id: &str) -> Vec<u8> {
    let mut k = key(space, id.as_bytes());
    k.push(b'/');
    k
}

/// A page of rows, and the key the next page goes on after.
type PageOf = (Vec<(Vec<u8>, Vec<u8>)>, Option<Vec<u8>>);

/// The finished time of a run: when it finished, or its last change.
pub fn finished_at(run: &Run) -> Option<Timestamp> {
    run.status
        .is_final()
        .then(|| run.finished_at.unwrap_or(run.updated_at))
}

impl Store {
    /// One page of the runs after `after` (in id order, so creation order);
    /// returns the page and the key to go on from.
    fn page(&self, space: &[u8], after: Option<&[u8]>, limit: usize) -> Result<PageOf> {
        self.page_until(space, &end_of(space), after, limit)
    }

    /// One page of the keys of `space` below `end`, after `after`; returns
    /// the page and the key to go on from.
    fn page_until(
        &self,
        space: &[u8],
        end: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<PageOf> {
        let start = match after {
            Some(after) => {
                let mut start = after.to_vec();
                start.push(0);
                start
            }
            None => space.to_vec(),
        };
        let rows = self.backend.scan_range(&start, end, limit)?;
        let next = (rows.len() == limit)
            .then(|| rows.last().map(|(k, _)| k.clone()))
            .flatten();
        Ok((rows, next))
    }

    /// Up to `limit` runs that finished before `cutoff`, oldest first, from
    /// after the `finished/` entry `after`, and where the next page starts.
    /// Reads the `finished/` index, not every run: a pass that finds nothing
    /// expired reads one key. Call [`Store::index_runs`] once first. The
    /// runs that finished soon after they were made are not in the index:
    /// [`Store::expired_unindexed`] finds them.
    pub fn expired_runs(
        &self,
        after: Option<&[u8]>,
        limit: usize,
        cutoff: Timestamp,
    ) -> Result<RunPage> {
        let (rows, next) = self.page_until(FINISHED, &finished_from(cutoff), after, limit)?;
        let mut page = RunPage {
            next,
            ..RunPage::default()
        };
        for (k, _) in rows {
            let Some(id) = k.get(FINISHED.len() + 8..) else {
                page.stale.push(k);
                continue;
            };
            let run_key = key(RUN, id);
            // A record that does not decode is left alone (and reported by
            // whatever reads it), not allowed to stop every pass.
            let run = match self.backend.get(&run_key)? {
                Some(bytes) => match decode::<Run>(&run_key, &bytes) {
                    Ok(run) => run,
                    Err(_) => continue,
                },
                None => {
                    page.stale.push(k);
                    continue;
                }
            };
            match finished_at(&run) {
                Some(at) if finished_key(at, &run.id) == k => page.expired.push(run),
                _ => page.stale.push(k),
            }
        }
        Ok(page)
    }

    /// Up to `limit` runs that finished before `cutoff`, in the order they
    /// were made, read from the runs' keyspace after the run key `after`
    /// (from its start if `None`) up to the runs made
    /// [`UNINDEXED_WITHIN_MS`] before `cutoff`: among them, every run that
    /// has no `finished/` entry and has finished, finished before `cutoff`.
    /// Returns where the next page starts and the last key read, which a
    /// later pass may go on from: a run read that had not finished within
    /// the margin gets its `finished/` entry when it finishes.
    pub fn expired_unindexed(
        &self,
        after: Option<&[u8]>,
        limit: usize,
        cutoff: Timestamp,
    ) -> Result<RunPage> {
        let made_before = RunId::lowest_at(cutoff.as_millis().saturating_sub(UNINDEXED_WITHIN_MS));
        let end = key(RUN, made_before.as_str().as_bytes());
        let (rows, next) = self.page_until(RUN, &end, after, limit)?;
        let mut page = RunPage {
            next,
            last: rows.last().map(|(k, _)| k.clone()),
            ..RunPage::default()
        };
        for (k, v) in rows {
            // A record that does not decode is left alone, as above.
            if let Ok(run) = decode::<Run>(&k, &v)
                && finished_at(&run).is_some_and(|at| at < cutoff)
            {
                page.expired.push(run);
            }
        }
        Ok(page)
    }

    /// The deployments that runs which have not finished are on (a version
    /// such a run is on is never collected). Reads the `open/` index.
    pub fn open_versions(&self) -> Result<BTreeSet<DeploymentId>> {
        let mut versions = BTreeSet::new();
        for (k, _) in self.backend.scan_prefix(OPEN)? {
            let run_key = key(RUN, &k[OPEN.len()..]);
            let Some(bytes) = self.backend.get(&run_key)? else {
                continue;
            };
            // One that does not decode keeps nothing from being collected
            // here; whatever reads it reports it.
            if let Ok(run) = decode::<Run>(&run_key, &bytes)
                && finished_at(&run).is_none()
            {
                versions.insert(run.deployment_id);
            }
        }
        Ok(versions)
    }

    /// After `deleted` keys were deleted, whether the store's file is at
    /// least `min_len` bytes and mostly space deleted data left; if it is,
    /// it is compacted the next time it is opened. `None` when too few keys
    /// were deleted to look (see [`crate::Backend::suggest_compaction`]).
    /// Reads the store: call it off the async runtime.
    pub fn suggest_compaction(&self, min_len: u64, deleted: usize) -> Result<Option<bool>> {
        self.backend.suggest_compaction(min_len, deleted)
    }

    /// Gives runs stored by a Kiln before the `open/` and `finished/`
    /// indexes their entries; returns how many. Done once per store (a
    /// marker records it): every run stored since is indexed as it is
    /// written.
    pub async fn index_runs(&self) -> Result<usize> {
        if self.backend.get(RUNS_INDEXED)?.is_some() {
            return Ok(0);
        }
        let mut count = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            // A page at a time, so a store of millions of runs is never one
            // commit.
            let (rows, next) = self.page(RUN, after.as_deref(), 10_000)?;
            let mut batch = Batch::default();
            for (k, v) in rows {
                if let Ok(run) = decode::<Run>(&k, &v) {
                    batch.ops.extend(index_ops(&run));
                    count += 1;
                }
            }
            if next.is_none() {
                batch.ops.push(Op::Put(RUNS_INDEXED.to_vec(), Vec::new()));
            }
            self.commit(batch).await?;
            match next {
                Some(next) => after = Some(next),
                None => return Ok(count),
            }
        }
    }

    /// Adds the deletion of `run` and every key that belongs to it to
    /// `batch`; returns how many keys that is.
    pub fn delete_run(&self, batch: &mut Batch, run: &Run) -> Result<usize> {
        let id = run.id.as_str().as_bytes();
        let mut keys = vec![
            key(RUN, id),
            key(ACTIVE, id),
            key(PENDING, id),
            key(OPEN, id),
        ];
        if let Some(at) = finished_at(run) {
            // A run that finished soon has an entry only if an earlier Kiln
            // wrote it.
            let entry = finished_key(at, &run.id);
            if !finished_soon(run, at) || self.backend.get(&entry)?.is_some() {
                keys.push(entry);
            }
        }
        for space in [
            JOURNAL, SNAP, RUN_BLOB, CHILD, STREAM, STREAM_KEY, WAIT, INBOX, WAITER,
        ] {
            for (k, _) in self
                .backend
                .scan_prefix(&owned_prefix(space, run.id.as_str()))?
            {
                keys.push(k);
            }
        }
        if let Some(parent) = &run.parent {
            let mut k = owned_prefix(CHILD, parent.parent.as_str());
            k.extend_from_slice(id);
            keys.push(k);
        }
        if let Some(schedule) = &run.schedule {
            let mut k = key(SCHED_RUN, schedule.id.as_str().as_bytes());
            k.push(b'/');
            k.extend_from_slice(id);
            keys.push(k);
        }
        let count = keys.len();
        batch.ops.extend(keys.into_iter().map(Op::Delete));
        Ok(count)
    }

    /// Deletes a page of idempotency keys past their lifetime at `now` (a
    /// key whose run is gone makes a new run anyway; a one-time token's use
    /// is kept under this keyspace too, for the token's lifetime).
    pub async fn sweep_idempotency_keys(
        &self,
        after: Option<Vec<u8>>,
        limit: usize,
        now: Timestamp,
    ) -> Result<Swept> {
        self.sweep_expired(IDEM, after, limit, now, |e: &IdempotentRun| e.expires_at)
            .await
    }

    /// Deletes a page of v3 batch idempotency keys past their lifetime.
    pub async fn sweep_batch_keys(
        &self,
        after: Option<Vec<u8>>,
        limit: usize,
        now: Timestamp,
    ) -> Result<Swept> {
        self.sweep_expired(BATCH_KEY, after, limit, now, |e: &BatchKey| e.expires_at)
            .await
    }

    /// Deletes a page of the records in `space` whose lifetime
    /// (`expires_at`) ended by `now`; records that do not decode are left.
    async fn sweep_expired<T: serde::de::DeserializeOwned>(
        &self,
        space: &[u8],
        after: Option<Vec<u8>>,
        limit: usize,
        now: Timestamp,
        expires_at: impl Fn(&T) -> Timestamp,
    ) -> Result<Swept> {
        let (rows, next) = self.page(space, after.as_deref(), limit)?;
        let mut batch = Batch::default();
        for (k, v) in rows {
            if decode::<T>(&k, &v).is_ok_and(|entry| expires_at(&entry) <= now) {
                batch.ops.push(Op::Delete(k));
            }
        }
        self.commit_swept(batch, next).await
    }

    /// Deletes a page of debounce windows whose run is gone.
    pub async fn sweep_debounce_keys(&self, after: Option<Vec<u8>>, limit: usize) -> Result<Swept> {
        let (rows, next) = self.page(DEBOUNCE, after.as_deref(), limit)?;
        let mut batch = Batch::default();
        for (k, v) in rows {
            let gone = match std::str::from_utf8(&v).ok().map(RunId::parse) {
                Some(Ok(run)) => self.run(&run)?.is_none(),
                _ => true,
            };
            if gone {
                batch.ops.push(Op::Delete(k));
            }
        }
        self.commit_swept(batch, next).await
    }

    /// Deletes a page of wait tokens that completed or timed out before
    /// `cutoff` and that no run waits on, with their idempotency keys.
    pub async fn sweep_tokens(
        &self,
        after: Option<Vec<u8>>,
        limit: usize,
        cutoff: Timestamp,
    ) -> Result<Swept> {
        let (rows, next) = self.page(TOKEN, after.as_deref(), limit)?;
        let mut batch = Batch::default();
        let mut deleted = 0;
        for (k, v) in rows {
            let token: WaitToken = match decode(&k, &v) {
                Ok(token) => token,
                Err(_) => continue,
            };
            let ended = match token.status_at(cutoff) {
                TokenStatus::Waiting => None,
                TokenStatus::Completed => token.completed_at,
                TokenStatus::TimedOut => token.timeout_at,
            };
            if ended.is_none_or(|at| at >= cutoff) {
                continue;
            }
            let waiters = self
                .backend
                .scan_prefix(&owned_prefix(TOKEN_WAITER, token.id.as_str()))?;
            if !waiters.is_empty() {
                continue;
            }
            batch.ops.push(Op::Delete(k));
            if let Some(idempotency) = &token.idempotency_key {
                let key_entry = key(TOKEN_KEY, idempotency.as_bytes());
                if self.backend.get(&key_entry)?.as_deref() == Some(token.id.as_str().as_bytes()) {
                    batch.ops.push(Op::Delete(key_entry));
                }
            }
            deleted += 1;
        }
        let mut swept = self.commit_swept(batch, next).await?;
        swept.deleted = deleted;
        Ok(swept)
    }

    /// Deletes a page of batches made before `cutoff` whose runs are all
    /// gone, with their item records.
    pub async fn sweep_batches(
        &self,
        after: Option<Vec<u8>>,
        limit: usize,
        cutoff: Timestamp,
    ) -> Result<Swept> {
        let (rows, next) = self.page(BATCH, after.as_deref(), limit)?;
        let mut batch = Batch::default();
        let mut deleted = 0;
        for (k, v) in rows {
            let record: BatchRecord = match decode(&k, &v) {
                Ok(record) => record,
                Err(_) => continue,
            };
            if record.created_at >= cutoff {
                continue;
            }
            let mut alive = false;
            for run in &record.runs {
                if self.run(run)?.is_some() {
                    alive = true;
                    break;
                }
            }
            if alive {
                continue;
            }
            batch.ops.push(Op::Delete(k));
            let mut items = key(BATCH_ITEM, record.id.as_str().as_bytes());
            items.push(b'/');
            for (item, _) in self.backend.scan_prefix(&items)? {
                batch.ops.push(Op::Delete(item));
            }
            deleted += 1;
        }
        let mut swept = self.commit_swept(batch, next).await?;
        swept.deleted = deleted;
        Ok(swept)
    }

    /// Deletes a page of uploaded packets older than `cutoff`. A packet
    /// uploaded before Kiln kept upload times is given one now, so it goes
    /// a retention period later.
    pub async fn sweep_packets(
        &self,
        after: Option<Vec<u8>>,
        limit: usize,
        cutoff: Timestamp,
    ) -> Result<Swept> {
        let (rows, next) = self.page(PACKET_AT, after.as_deref(), limit)?;
        let mut batch = Batch::default();
        for (k, v) in rows {
            let at = v.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0);
            if at < cutoff.as_millis() {
                let path = &k[PACKET_AT.len()..];
                batch.ops.push(Op::Delete(key(PACKET, path)));
                batch.ops.push(Op::Delete(k));
            }
        }
        let mut swept = self.commit_swept(batch, next).await?;
        swept.deleted = swept.keys / 2;
        Ok(swept)
    }

    /// Gives packets stored without an upload time (by a Kiln before
    /// retention) the time `now`; returns how many. Done once per store:
    /// every packet stored since has its time, so later starts read no
    /// packet.
    pub async fn date_undated_packets(&self, now: Timestamp) -> Result<usize> {
        if self.backend.get(PACKETS_DATED)?.is_some() {
            return Ok(0);
        }
        let mut batch = Batch::default();
        for (k, _) in self.backend.scan_prefix(PACKET)? {
            let path = &k[PACKET.len()..];
            let dated = key(PACKET_AT, path);
            if self.backend.get(&dated)?.is_none() {
                batch
                    .ops
                    .push(Op::Put(dated, now.as_millis().to_be_bytes().to_vec()));
            }
        }
        let count = batch.ops.len();
        batch.ops.push(Op::Put(PACKETS_DATED.to_vec(), Vec::new()));
        self.commit(batch).await?;
        Ok(count)
    }

    async fn commit_swept(&self, batch: Batch, next: Option<Vec<u8>>) -> Result<Swept> {
        let keys = batch.ops.len();
        if keys > 0 {
            self.commit(batch).await?;
        }
        Ok(Swept {
            deleted: keys,
            keys,
            next,
        })
    }
}
