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
//! is its log write and sync alone.
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
/// how many keys or bytes of values make the applier apply what it holds
/// at once.
pub(crate) const BEHIND_AT_MOST: (std::time::Duration, usize, usize) =
    (std::time::Duration::from_millis(20), 4_096, 16 << 20);

/// How many groups the committer may hand over before it waits for the
/// applier to take them.
const HANDED_AT_MOST: usize = 1_024;

/// What the committer asks of the applier.
enum Ask {
    /// A group durable in the log: its number, the last commit it covered,
    /// and its writes (each key's newest value).
    Apply(u64, u64, Vec<ToApply>),
    /// Apply every group handed over so far and make the tree durable.
    Checkpoint(mpsc::SyncSender<Result<()>>),
}

/// The committer's handle on the applier thread.
pub(crate) struct Applier {
    asks: Option<mpsc::SyncSender<Ask>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Applier {
    /// Starts the applier thread on `tree`.
    pub(crate) fn start(tree: TreeWriter) -> Result<Self> {
        let (asks, received) = mpsc::sync_channel(HANDED_AT_MOST);
        let thread = std::thread::Builder::new()
            .name("kiln-applier".into())
            .spawn(move || tree.run(received))
            .map_err(|e| StoreError::Backend(format!("starting the store's applier: {e}")))?;
        Ok(Applier {
            asks: Some(asks),
            thread: Some(thread),
        })
    }

    /// Hands over group `number`, durable in the log, which covered the
    /// commits up to `covered`.
    pub(crate) fn apply(&self, number: u64, covered: u64, writes: Vec<ToApply>) {
        if let Some(asks) = &self.asks {
            // The applier stops only once this handle is dropped.
            let _ = asks.send(Ask::Apply(number, covered, writes));
        }
    }

    /// Applies every group handed over, then makes the tree durable.
    pub(crate) fn checkpoint(&self) -> Result<()> {
        let gone = || StoreError::Backend("the store's applier stopped".into());
        let asks = self.asks.as_ref().ok_or_else(gone)?;
        let (answer, answered) = mpsc::sync_channel(1);
        asks.send(Ask::Checkpoint(answer)).map_err(|_| gone())?;
        answered.recv().map_err(|_| gone())?
    }
}

impl Drop for Applier {
    /// Stops the applier once it has taken what was handed over (applied or
    /// not: groups it did not apply are in the log's round), and waits for
    /// it, so that no write to the tree outlives the backend.
    fn drop(&mut self) {
        drop(self.asks.take());
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
    /// Takes what the committer asks until it drops its handle.
    fn run(mut self, asks: mpsc::Receiver<Ask>) {
        loop {
            // Held as long as allowed, so that a key several groups wrote
            // (a run's record, its index entries) goes to the tree once:
            // an apply delays no commit now that it has a thread of its own.
            let ask = if let Some(since) = self.behind.since {
                let due = since + BEHIND_AT_MOST.0;
                match asks.recv_timeout(due.saturating_duration_since(std::time::Instant::now())) {
                    Ok(ask) => ask,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.apply_behind();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match asks.recv() {
                    Ok(ask) => ask,
                    Err(_) => return,
                }
            };
            match ask {
                Ask::Apply(number, covered, writes) => {
                    self.behind.merge(number, covered, writes);
                    if self.behind.due() {
                        self.apply_behind();
                    }
                }
                Ask::Checkpoint(answer) => {
                    let _ = answer.send(self.checkpoint());
                }
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
    /// When the oldest group merged was made durable.
    since: Option<std::time::Instant>,
    /// The bytes of the values merged.
    bytes: usize,
}

impl Behind {
    fn merge(&mut self, number: u64, covered: u64, writes: Vec<ToApply>) {
        for (key, value) in writes {
            self.bytes += value.as_ref().map_or(0, |v| v.len());
            if let Some(Some(old)) = self.writes.insert(key, value) {
                self.bytes -= old.len();
            }
        }
        self.last = Some((number, covered));
        self.since.get_or_insert_with(std::time::Instant::now);
    }

    /// Whether what is held should be applied now rather than after the
    /// next group.
    fn due(&self) -> bool {
        self.since
            .is_some_and(|since| since.elapsed() >= BEHIND_AT_MOST.0)
            || self.writes.len() >= BEHIND_AT_MOST.1
            || self.bytes >= BEHIND_AT_MOST.2
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
        assert!(!behind.due());
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
        assert_eq!(behind.bytes, 6);
        assert_eq!(
            behind.writes.into_iter().collect::<Vec<_>>(),
            vec![
                (b"active/a".to_vec(), None),
                (b"run/a".to_vec(), value(b"done!!"))
            ]
        );
    }

    #[test]
    fn groups_held_behind_are_due_once_they_hold_too_many_keys() {
        let mut behind = Behind::default();
        let keys = (0..BEHIND_AT_MOST.1 as u32)
            .map(|i| (i.to_be_bytes().to_vec(), value(b"v")))
            .collect::<Vec<_>>();
        behind.merge(1, 1, keys[1..].to_vec());
        assert!(!behind.due());
        behind.merge(2, 2, keys[..1].to_vec());
        assert!(behind.due());
    }
}
