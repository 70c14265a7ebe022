//! The change feed realtime subscriptions read: every durable commit that
//! writes runs appends their ids here, numbered, and wakes whoever waits.
//!
//! Subscribers keep no state on the server. A subscription's offset is the
//! feed's number when it last read; a live poll looks at the entries after
//! it, reads the runs they name and keeps those its shape selects. The feed
//! remembers the last [`CAPACITY`] changes: an offset older than that (or
//! from before a restart, told apart by the feed's epoch) gets Electric's
//! `must-refetch`, and the subscriber reads its shape again from scratch.
//! Waiting is one `watch` channel: an idle subscriber costs a parked task
//! and no polling.

use kiln_types::RunId;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::watch;

/// How many changes the feed remembers.
pub(crate) const CAPACITY: usize = 65_536;
/// The most changes one poll walks.
pub(crate) const MAX_DELTA: usize = 4_096;

/// The feed.
pub(crate) struct Feed {
    /// Tells offsets of this process from those of an earlier one.
    epoch: String,
    entries: Mutex<Entries>,
    latest: watch::Sender<u64>,
}

#[derive(Default)]
struct Entries {
    /// The number of the last change (0: none yet).
    last: u64,
    /// The remembered changes, oldest first.
    ring: VecDeque<(u64, RunId)>,
}

/// What changed after an offset.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Since {
    /// These runs (each once), up to `until`.
    Changed { runs: Vec<RunId>, until: u64 },
    /// The offset is older than what the feed remembers.
    Forgotten,
}

impl Feed {
    /// An empty feed with a fresh epoch.
    pub(crate) fn new() -> Self {
        let epoch = format!("{:x}", kiln_types::Timestamp::now().as_millis());
        Feed {
            epoch,
            entries: Mutex::default(),
            latest: watch::channel(0).0,
        }
    }

    /// This process's epoch.
    pub(crate) fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The number of the last change.
    pub(crate) fn last(&self) -> u64 {
        self.lock().last
    }

    /// Appends changes to `runs` and wakes the waiters.
    pub(crate) fn publish(&self, runs: &[RunId]) {
        let last = {
            let mut entries = self.lock();
            for run in runs {
                entries.last += 1;
                let n = entries.last;
                entries.ring.push_back((n, run.clone()));
            }
            while entries.ring.len() > CAPACITY {
                entries.ring.pop_front();
            }
            entries.last
        };
        self.latest.send_replace(last);
    }

    /// The runs changed after `offset`. A subscriber more than
    /// [`MAX_DELTA`] changes behind is told to read its shape again rather
    /// than walk them.
    pub(crate) fn since(&self, offset: u64) -> Since {
        self.read(offset, false)
    }

    /// The first [`MAX_DELTA`] changes after `offset`, for a reader that
    /// goes through every change a stretch at a time (the trace watcher):
    /// `Forgotten` only once the changes after `offset` are no longer
    /// remembered at all.
    pub(crate) fn next_after(&self, offset: u64) -> Since {
        self.read(offset, true)
    }

    fn read(&self, offset: u64, in_stretches: bool) -> Since {
        let (changed, until) = {
            let entries = self.lock();
            let oldest_known = entries.ring.front().map_or(entries.last, |(n, _)| n - 1);
            if offset < oldest_known
                || offset > entries.last
                || (!in_stretches && entries.last - offset > MAX_DELTA as u64)
            {
                return Since::Forgotten;
            }
            let behind = (entries.last - offset) as usize;
            let skip = entries.ring.len() - behind;
            let take = behind.min(MAX_DELTA);
            let changed: Vec<RunId> = entries
                .ring
                .iter()
                .skip(skip)
                .take(take)
                .map(|(_, run)| run.clone())
                .collect();
            (changed, offset + take as u64)
        };
        // Each run once, in the order of its first change, outside the lock.
        let mut seen = std::collections::HashSet::with_capacity(changed.len());
        let runs = changed
            .into_iter()
            .filter(|run| seen.insert(run.clone()))
            .collect();
        Since::Changed { runs, until }
    }

    /// A receiver that wakes on each change.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_after_an_offset_each_once_in_order() {
        let feed = Feed::new();
        let (a, b) = (RunId::generate(1), RunId::generate(2));
        assert_eq!(
            feed.since(0),
            Since::Changed {
                runs: vec![],
                until: 0
            }
        );
        feed.publish(std::slice::from_ref(&a));
        feed.publish(&[b.clone(), a.clone()]);
        assert_eq!(
            feed.since(0),
            Since::Changed {
                runs: vec![a.clone(), b.clone()],
                until: 3
            }
        );
        assert_eq!(
            feed.since(2),
            Since::Changed {
                runs: vec![a.clone()],
                until: 3
            }
        );
        assert_eq!(feed.since(4), Since::Forgotten);
    }

    #[test]
    fn offsets_older_than_the_ring_are_forgotten() {
        let feed = Feed::new();
        let run = RunId::generate(1);
        for _ in 0..CAPACITY + 10 {
            feed.publish(std::slice::from_ref(&run));
        }
        assert_eq!(feed.since(5), Since::Forgotten);
        let last = (CAPACITY + 10) as u64;
        assert!(matches!(feed.since(last - 20), Since::Changed { .. }));
        assert_eq!(feed.since(last - MAX_DELTA as u64 - 1), Since::Forgotten);
        // Read a stretch at a time, what the ring holds is never forgotten.
        let offset = last - MAX_DELTA as u64 - 1;
        assert_eq!(
            feed.next_after(offset),
            Since::Changed {
                runs: vec![run.clone()],
                until: offset + MAX_DELTA as u64
            }
        );
        assert_eq!(
            feed.next_after(last - 3),
            Since::Changed {
                runs: vec![run],
                until: last
            }
        );
        assert_eq!(feed.next_after(5), Since::Forgotten);
    }
}
