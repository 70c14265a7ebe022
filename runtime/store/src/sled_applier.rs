//! The thread that applies durable groups of commits to sled's tree, apart
//! from the committer that makes them durable.
//!
//! The committer hands each group over once it is durable in the
//! write-ahead log and its writers are acknowledged; the applier merges
//! what it is handed (each key's newest value) and applies it to the tree
//! once it has held it for [`BEHIND_AT_MOST`] (or it holds too much).
//! Reads find a group in the unapplied writes until then. On
//! its own thread the apply, several inserts into sled's tree for every
//! run, runs beside the committer's next write and `fdatasync` instead of
//! between them, so the committer's turn, and with it every commit's wait,
//! is its log write and sync alone (but when the log is full: it then waits
//! for the applier's checkpoint).
//!
//! A checkpoint (the log is full, or the store closes) is asked of the
//! applier: it applies every group handed over before the request, then
//! makes the tree durable, and answers.

use crate::group_commit::{Durable, Pending, fail_stop};
use crate::sled_chunks::Chunker;
use crate::sled_unapplied::ToApply;
use crate::{Result, StoreError};
use std::sync::{Arc, mpsc};
use tokio::sync::watch;

/// How long a durable group waits to be applied to the tree at most, and
/// how many key writes or bytes of values make the applier apply what it
/// holds at once.
const BEHIND_AT_MOST: (std::time::Duration, usize, usize) =
    (std::time::Duration::from_millis(20), 4_096, 16 << 20);

/// What the committer has handed over and the applier has not taken yet.
#[derive(Default)]
struct Handed {
    /// Groups durable in the log: each one's number, the last commit it
    /// covered, and its writes (each key's newest value).
    groups: Vec<(u64, u64, Vec<ToApply>)>,
    /// When the first of `groups` was handed over.
    since: Option<std::time::Instant>,
    /// The keys and the bytes of values `groups` write.
    keys: usize,
    bytes: usize,
    /// Checkpoints asked for: each answered once the tree holds every
    /// group handed over before it and is durable.
    checkpoints: Vec<mpsc::SyncSender<Result<()>>>,
    /// The committer is gone.
    closed: bool,
}

impl Handed {
    /// Whether the applier should take what is handed over now.
    fn due(&self, now: std::time::Instant) -> bool {
        self.closed
            || !self.checkpoints.is_empty()
            || self
                .since
                .is_some_and(|since| now >= since + BEHIND_AT_MOST.0)
            || self.too_much()
    }

    /// Whether the groups handed over write so many keys (counted per
    /// group, before merging) or bytes that they are applied at once.
    fn too_much(&self) -> bool {
        self.keys >= BEHIND_AT_MOST.1 || self.bytes >= BEHIND_AT_MOST.2
    }
}

/// The hand-over between the committer and the applier. The applier is
/// woken only when there is something for it to do (the first group after
/// an apply, so it knows when the next apply is due; too much held; a
/// checkpoint; the close), not for every group.
#[derive(Default)]
struct HandOver {
    handed: std::sync::Mutex<Handed>,
    wake: std::sync::Condvar,
}

impl HandOver {
    fn lock(&self) -> std::sync::MutexGuard<'_, Handed> {
        self.handed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until what is handed over is due, and takes it.
    fn take(&self) -> Handed {
        let mut handed = self.lock();
        loop {
            let now = std::time::Instant::now();
            if handed.due(now) {
                let closed = handed.closed;
                let taken = std::mem::take(&mut *handed);
                handed.closed = closed;
                return taken;
            }
            handed = match handed.since {
                None => self.wake.wait(handed).unwrap_or_else(|p| p.into_inner()),
                Some(since) => {
                    let left = (since + BEHIND_AT_MOST.0).saturating_duration_since(now);
                    match self.wake.wait_timeout(handed, left) {
                        Ok((handed, _)) => handed,
                        Err(poisoned) => poisoned.into_inner().0,
                    }
                }
            };
        }
    }
}

/// The committer's handle on the applier thread.
pub(crate) struct Applier {
    hand_over: Arc<HandOver>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Applier {
    /// Starts the applier thread on `tree`.
    pub(crate) fn start(tree: TreeWriter) -> Result<Self> {
        let hand_over = Arc::new(HandOver::default());
        let taking = hand_over.clone();
        let durable = tree.durable.clone();
        let thread = std::thread::Builder::new()
            .name("kiln-applier".into())
            .spawn(move || {
                // An applier that panicked would leave the committer
                // acknowledging groups nothing applies, and its writers
                // waiting for room for ever: the server stops instead.
                let ran =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tree.run(&taking)));
                if ran.is_err() {
                    let error = StoreError::Backend("the store's applier panicked".into());
                    fail_stop(&error, Vec::new(), &durable, "the disk");
                }
            })
            .map_err(|e| StoreError::Backend(format!("starting the store's applier: {e}")))?;
        Ok(Applier {
            hand_over,
            thread: Some(thread),
        })
    }

    /// Hands over group `number`, durable in the log, which covered the
    /// commits up to `covered`.
    pub(crate) fn hand_over(&self, number: u64, covered: u64, writes: Vec<ToApply>) {
        let mut handed = self.hand_over.lock();
        let first = handed.since.is_none();
        handed.since.get_or_insert_with(std::time::Instant::now);
        handed.keys += writes.len();
        handed.bytes += writes
            .iter()
            .map(|(_, value)| value.as_ref().map_or(0, |v| v.len()))
            .sum::<usize>();
        handed.groups.push((number, covered, writes));
        let wake = first || handed.too_much();
        drop(handed);
        if wake {
            self.hand_over.wake.notify_one();
        }
    }

    /// Applies every group handed over, then makes the tree durable.
    pub(crate) fn checkpoint(&self) -> Result<()> {
        let (answer, answered) = mpsc::sync_channel(1);
        self.hand_over.lock().checkpoints.push(answer);
        self.hand_over.wake.notify_one();
        answered
            .recv()
            .map_err(|_| StoreError::Backend("the store's applier stopped".into()))?
    }
}

impl Drop for Applier {
    /// Stops the applier (groups it did not apply are in the log's round)
    /// and waits for it, so that no write to the tree outlives the backend.
    fn drop(&mut self) {
        self.hand_over.lock().closed = true;
        self.hand_over.wake.notify_one();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the store's applier thread panicked");
        }
    }
}

/// The applier's side of the tree: it alone writes it.
pub(crate) struct TreeWriter {
    pub(crate) db: sled::Db,
    pub(crate) data_file: std::fs::File,
    /// Splits large values.
    pub(crate) chunker: Chunker,
    pub(crate) pending: Arc<Pending>,
    pub(crate) durable: Arc<watch::Sender<Durable>>,
    /// Groups durable in the log and not yet applied to the tree.
    pub(crate) behind: Behind,
}

impl TreeWriter {
    /// Applies what the committer hands over, once it is due, until the
    /// committer is gone. Held as long as allowed, so that a key several
    /// groups wrote (a run's record, its index entries) goes to the tree
    /// once: an apply delays no commit now that it has a thread of its own.
    fn run(mut self, hand_over: &HandOver) {
        loop {
            let taken = hand_over.take();
            for (number, covered, writes) in taken.groups {
                self.behind.merge(number, covered, writes);
            }
            if !taken.checkpoints.is_empty() {
                let checkpointed = self.checkpoint();
                for answer in taken.checkpoints {
                    let _ = answer.send(checkpointed.clone());
                }
            } else if !taken.closed {
                self.apply_behind();
            }
            if taken.closed {
                return;
            }
        }
    }

    /// Applies the groups held to the tree as one (each key's newest value,
    /// then the last group's number), and forgets them in the unapplied
    /// writes.
    fn apply_behind(&mut self) {
        let Some((number, covered)) = self.behind.last else {
            return;
        };
        let writes = std::mem::take(&mut self.behind)
            .writes
            .into_iter()
            .collect();
        let applied = {
            let _moving = self.pending.moving();
            crate::sled_backend::apply(&self.db, &mut self.chunker, number, writes)
        };
        if let Err(error) = applied {
            fail_stop(&error, Vec::new(), &self.durable, "the disk");
        }
        self.pending.applied(covered);
    }

    /// Applies every group held, then makes the tree durable: afterwards
    /// the tree holds every group handed over so far.
    fn checkpoint(&mut self) -> Result<()> {
        self.apply_behind();
        crate::sled_backend::checkpoint(
            &self.db,
            &self.data_file,
            self.chunker.last_generation_made(),
        )
    }
}

/// Groups made durable and not applied to the tree yet, merged: each key's
/// newest value. Reads find them in the unapplied writes meanwhile.
/// Applied together, a key several of them wrote (a run's record, written
/// when it is triggered, claimed and finished; the index entries a run
/// holds while it is active) goes to the tree once.
#[derive(Default)]
pub(crate) struct Behind {
    writes: std::collections::BTreeMap<Vec<u8>, Option<Arc<Vec<u8>>>>,
    /// The number of the last group merged, and the last commit it covered.
    last: Option<(u64, u64)>,
}

impl Behind {
    fn merge(&mut self, number: u64, covered: u64, writes: Vec<ToApply>) {
        self.writes.extend(writes);
        self.last = Some((number, covered));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(bytes: &[u8]) -> Option<Arc<Vec<u8>>> {
        Some(Arc::new(bytes.to_vec()))
    }

    #[test]
    fn groups_held_behind_keep_each_keys_newest_value_and_the_last_group() {
        let mut behind = Behind::default();
        behind.merge(
            7,
            20,
            vec![
                (b"run/a".to_vec(), value(b"queued")),
                (b"active/a".to_vec(), value(b"1")),
            ],
        );
        behind.merge(8, 23, vec![(b"run/a".to_vec(), value(b"done!!"))]);
        behind.merge(9, 25, vec![(b"active/a".to_vec(), None)]);
        assert_eq!(behind.last, Some((9, 25)));
        assert_eq!(
            behind.writes.into_iter().collect::<Vec<_>>(),
            vec![
                (b"active/a".to_vec(), None),
                (b"run/a".to_vec(), value(b"done!!"))
            ]
        );
    }

    #[test]
    fn groups_handed_over_are_due_after_a_while_or_once_they_hold_too_many_keys() {
        let now = std::time::Instant::now();
        let mut handed = Handed::default();
        assert!(!handed.due(now));
        handed.since = Some(now);
        handed.keys = BEHIND_AT_MOST.1 - 1;
        assert!(!handed.due(now));
        assert!(handed.due(now + BEHIND_AT_MOST.0));
        handed.keys += 1;
        assert!(handed.due(now));
    }

    #[test]
    fn a_checkpoint_or_the_close_is_due_at_once() {
        let now = std::time::Instant::now();
        let mut handed = Handed::default();
        handed.checkpoints.push(mpsc::sync_channel(1).0);
        assert!(handed.due(now));
        let closed = Handed {
            closed: true,
            ..Handed::default()
        };
        assert!(closed.due(now));
    }
}
