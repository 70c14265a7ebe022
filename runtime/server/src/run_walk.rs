//! Walking the run index from a cursor, for the lists that page through
//! runs (the API's `runs.list` and the dashboard's runs page).
//!
//! Run ids sort by creation time, so a created range's end is where a
//! newest-first walk starts and its start is where it stops (and the other
//! way round for an oldest-first walk). A walk reads the index a chunk at a
//! time and at most `limit` runs: a filter that matches rarely answers a
//! short page and the id to go on from, never a scan of every run.

use kiln_store::{Store, StoreError};
use kiln_types::{Run, RunId, Timestamp};

/// Where and how far a walk goes.
pub(crate) struct Walk<F: Fn(&Run) -> bool> {
    /// Runs created at or after this only.
    pub(crate) from: Option<Timestamp>,
    /// Runs created at or before this only.
    pub(crate) to: Option<Timestamp>,
    /// Runs read from the store at a time.
    pub(crate) chunk: usize,
    /// The most runs one walk reads.
    pub(crate) limit: usize,
    /// Which runs it keeps.
    pub(crate) matches: F,
}

/// What a walk found.
pub(crate) struct Walked {
    /// The matching runs, in the walk's order.
    pub(crate) runs: Vec<Run>,
    /// Whether it stopped at its limit with runs left to read.
    pub(crate) stopped: bool,
    /// The last run it read.
    pub(crate) last: Option<RunId>,
}

impl Walked {
    /// The first `size` runs, and the id a walk onwards starts from: the
    /// page's last run when more matched, the last run read when the walk
    /// stopped at its limit, none when the index ran out.
    pub(crate) fn page(self, size: usize) -> (Vec<Run>, Option<RunId>) {
        let Walked {
            runs,
            stopped,
            last,
        } = self;
        let more = runs.len() > size || stopped;
        let page: Vec<Run> = runs.into_iter().take(size).collect();
        let onward = match page.last() {
            _ if !more => None,
            Some(run) if page.len() == size => Some(run.id.clone()),
            _ => last,
        };
        (page, onward)
    }
}

/// The id below every run created after `at`.
fn after(at: Timestamp) -> RunId {
    RunId::lowest_at(at.as_millis().saturating_add(1))
}

impl<F: Fn(&Run) -> bool> Walk<F> {
    /// Up to `want` matching runs older than `older` (from the newest when
    /// `None`), newest first.
    pub(crate) fn older(
        &self,
        store: &Store,
        older: Option<RunId>,
        want: usize,
    ) -> Result<Walked, StoreError> {
        let mut cursor = match (older, self.to.map(after)) {
            (Some(older), Some(seek)) => Some(older.min(seek)),
            (older, seek) => older.or(seek),
        };
        let mut found = Vec::new();
        let mut walked = 0;
        loop {
            let chunk = store.runs_newest(cursor.as_ref(), self.chunk)?;
            let exhausted = chunk.len() < self.chunk;
            for run in chunk {
                if self.from.is_some_and(|from| run.created_at < from) {
                    return Ok(done(found, false, cursor));
                }
                walked += 1;
                cursor = Some(run.id.clone());
                if (self.matches)(&run) {
                    found.push(run);
                    if found.len() == want {
                        return Ok(done(found, false, cursor));
                    }
                }
            }
            if exhausted || walked >= self.limit {
                return Ok(done(found, !exhausted, cursor));
            }
        }
    }

    /// Up to `want` matching runs newer than `newer`, oldest first.
    pub(crate) fn newer(
        &self,
        store: &Store,
        newer: &RunId,
        want: usize,
    ) -> Result<Walked, StoreError> {
        let mut cursor = match self.from.map(|from| RunId::lowest_at(from.as_millis())) {
            Some(seek) if seek > *newer => seek,
            _ => newer.clone(),
        };
        let end = self.to.map(after);
        let mut found = Vec::new();
        let mut walked = 0;
        loop {
            let chunk = store.runs_oldest_after(&cursor, self.chunk)?;
            let exhausted = chunk.len() < self.chunk;
            for run in chunk {
                if end.as_ref().is_some_and(|end| run.id >= *end) {
                    return Ok(done(found, false, Some(cursor)));
                }
                walked += 1;
                cursor = run.id.clone();
                if (self.matches)(&run) {
                    found.push(run);
                    if found.len() == want {
                        return Ok(done(found, false, Some(cursor)));
                    }
                }
            }
            if exhausted || walked >= self.limit {
                return Ok(done(found, !exhausted, Some(cursor)));
            }
        }
    }
}

fn done(runs: Vec<Run>, stopped: bool, last: Option<RunId>) -> Walked {
    Walked {
        runs,
        stopped,
        last,
    }
}
