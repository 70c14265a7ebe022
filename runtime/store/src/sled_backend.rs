//! The sled backend, made durable by a group committer and Kiln's own
//! write-ahead log.
//!
//! sled 0.34's `flush()` is not durable on Linux (it uses `sync_file_range`),
//! and its `flush_async()` deadlocks under concurrent callers. So:
//! - a commit is numbered and kept in memory ([`crate::sled_unapplied`]):
//!   every later read in this process sees it at once (read-your-writes, in
//!   the order commits were made), through the writes not yet in the tree
//!   laid over the tree;
//! - one committer thread makes groups durable: it gathers what every
//!   commit made since the last group wrote, numbers it as the next group,
//!   writes it as one record to Kiln's write-ahead log
//!   ([`crate::sled_wal`]), durably, and only then acknowledges
//!   each writer (group commit). Commits made during a sync wait for the
//!   next group, so under load a group holds everything committed during
//!   the last sync. It hands each durable group to the tree's thread
//!   (`kiln-tree`), which holds them, merged key by key, until no group has
//!   come for a millisecond or it has held them 100 ms (or 8,192 keys, or
//!   16 MiB of values), then applies them to the tree as single writes of
//!   each key's newest value, a slice of 64 keys (or 256 KiB) at a time
//!   (larger slices if it falls behind), followed by the last group's
//!   number; the committer meanwhile syncs the next groups. Kiln flushes
//!   sled and `fdatasync`s its data file at
//!   a checkpoint: when the log is full, at a clean close, and when the
//!   store is opened (after the log's round, every group since the last
//!   checkpoint, is applied again). sled is neither flushed nor given a
//!   batch per group because both are costly: a batch rolls sled's log
//!   buffer twice and a flush once more, each roll a write from its I/O
//!   threads (which it wakes all at once) and a wait on `sync_file_range`.
//! - the committer publishes the number of the last commit each durable
//!   group covered, so [`Backend::settled`] can wait for exactly the
//!   commits a reader may have seen.
//! - values are kept small enough that sled never writes them to its
//!   unsynced `blobs/` files ([`crate::sled_chunks`]).
//! - writes nothing waits on and nothing reads soon (a live run's journal
//!   entries) may be deferred ([`Backend::defer`]): they join the next
//!   commit, ahead of its own writes, so they keep their place in the order
//!   of commits. The committer commits what is still deferred after
//!   [`crate::group_commit::DEFER_AT_MOST`]; [`Backend::settled`] does not wait for it (no reader
//!   has seen it).
//! - a write, flush or apply that fails stops the server (fail-stop):
//!   nothing written after it could be acknowledged truthfully, since what
//!   the failed write covered may be lost and later writes cannot tell.

use crate::backend::{Backend, Commit, Op, Order};
use crate::group_commit::{Front, Gatherer, Pending, Request, acknowledge, fail_stop, lock};
use crate::sled_chunks::{CHUNK_SPACE, Chunker, chunk_size, is_manifest, resolve, segment_size};
use crate::sled_unapplied::{Entry, merge, merge_rev, prefix_end};
use crate::sled_wal::{BOOKKEEPING, CHUNKS, MARK, Wal};
use crate::{Result, StoreError};
use std::path::Path;
use std::sync::{Arc, mpsc};

/// A sled database in a directory, with group-committed durable writes.
pub struct SledBackend {
    tree: sled::Db,
    /// The store's directory.
    dir: std::path::PathBuf,
    /// Kiln's lock on the directory (sled's own lock is inside it, and the
    /// directory is renamed when it is compacted).
    _lock: crate::sled_compact::DirLock,
    /// Commits not yet applied to the tree, and the committer's requests.
    front: Front,
    /// The committer thread, joined when the backend is dropped.
    committing: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for SledBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledBackend").finish_non_exhaustive()
    }
}

/// How long [`SledBackend::open`] waits for the directory's lock to be let
/// go of.
pub(crate) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) fn backend_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SledBackend {
    /// Opens (or creates) the database in `dir` and starts its committer.
    ///
    /// sled holds the directory's lock until the last of its own background
    /// threads lets go of the database, which can be a moment after the
    /// handle that opened it was dropped (or after a server on the directory
    /// exited). A lock still held is waited for, up to five seconds; one
    /// held longer (another server runs on the directory) is refused with
    /// sled's error.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self::open_with(dir, None)?.0)
    }

    /// Opens the store in `dir` as [`SledBackend::open`] does, first
    /// compacting it if [`Backend::suggest_compaction`] asked for it and
    /// sled's data file is still at least `min_len` bytes and four times or
    /// more what its entries hold: every entry is copied into a new
    /// database that takes the store's place, crash-safely (see
    /// `sled_compact`). Returns what the compaction did, if there was one.
    /// A compaction that fails is logged and given up (the store opens as
    /// it is), so a full disk never keeps the server from starting.
    pub fn open_compacting(dir: &Path, min_len: u64) -> Result<(Self, Option<crate::Compacted>)> {
        Self::open_with(dir, Some(min_len))
    }

    fn open_with(
        dir: &Path,
        compact_from: Option<u64>,
    ) -> Result<(Self, Option<crate::Compacted>)> {
        // Held for the backend's life: no other process recovers, compacts
        // or opens the store meanwhile.
        let lock = crate::sled_compact::DirLock::take(dir)?;
        crate::sled_compact::recover(dir)?;
        std::fs::create_dir_all(dir).map_err(backend_error)?;
        let segment = segment_size(dir);
        let mut db = open_sled(dir, segment)?;
        let (last_group, last_generation) = recover(dir, &db, segment)?;
        let mut compacted = None;
        if let Some(min_len) = compact_from {
            (db, compacted) = crate::sled_compact::on_open(dir, db, min_len, segment)?;
        }
        let data_file = data_file(dir)?;
        // Every group the log holds is in the tree, durably: the log may be
        // written from its start.
        let wal = Wal::open(dir, last_group + 1)?;
        let (tx, rx) = mpsc::channel::<Request>();
        let (durable_tx, durable) = crate::durability::channel();
        // Generations are never used twice: not even one a recovery deleted.
        let chunker = Chunker::new(
            chunk_size(segment),
            last_generation.max(Chunker::last_generation(&db)?),
        );
        let pending = Arc::new(Pending::default());
        let durable_tx = Arc::new(durable_tx);
        let tree = TreeWriter {
            db: db.clone(),
            data_file,
            chunker,
            pending: pending.clone(),
            durable: durable_tx.clone(),
            behind: Behind::default(),
            applying: Applying::default(),
        };
        let inbox = Arc::new(std::sync::Mutex::new(Inbox::default()));
        let applying = {
            let inbox = inbox.clone();
            std::thread::Builder::new()
                .name("kiln-tree".into())
                .spawn(move || tree.run(inbox))
                .map_err(backend_error)?
        };
        let committer = Committer {
            wal,
            last_group,
            pending: pending.clone(),
            durable: durable_tx,
            tree: TreeLine {
                inbox,
                thread: Some(applying),
            },
        };
        let committing = std::thread::Builder::new()
            .name("kiln-committer".into())
            .spawn(move || committer.run(rx))
            .map_err(backend_error)?;
        let backend = SledBackend {
            _lock: lock,
            dir: dir.to_path_buf(),
            front: Front::new(pending, tx, durable),
            tree: db,
            committing: Some(committing),
        };
        Ok((backend, compacted))
    }

    /// A scanned entry, its value put back together if it was chunked
    /// (`None` if it was deleted while being read). The chunk keyspace
    /// itself is returned as stored.
    fn entry(&self, entry: sled::Result<(sled::IVec, sled::IVec)>) -> Result<Option<Entry>> {
        let (k, v) = entry.map_err(backend_error)?;
        if k.starts_with(BOOKKEEPING) {
            // The log's bookkeeping, not a key of the store's.
            return Ok(None);
        }
        if k.starts_with(CHUNK_SPACE) {
            return Ok(Some((k.to_vec(), v.to_vec())));
        }
        Ok(resolve(&self.tree, &k, v.to_vec())?.map(|v| (k.to_vec(), v)))
    }
}

/// sled's data file in `dir`, to `fdatasync` it.
fn data_file(dir: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .open(dir.join("db"))
        .map_err(|e| StoreError::Backend(format!("opening sled's data file: {e}")))
}

/// Makes everything sled has applied durable, saying that chunk
/// generations up to `chunks` are among it: a flush, then an `fdatasync`
/// of its data file (which also writes what its page cache holds of
/// earlier writes).
fn checkpoint(db: &sled::Db, data_file: &std::fs::File, chunks: u64) -> Result<()> {
    db.insert(CHUNKS, &chunks.to_be_bytes()[..])
        .map_err(backend_error)?;
    db.flush().map_err(backend_error)?;
    data_file.sync_data().map_err(backend_error)
}

/// Applies to the tree, in order, every group of the write-ahead log's
/// current round (all written since the tree's last checkpoint), then
/// makes the tree durable. Returns the number of the last group the store
/// holds and the last chunk generation made.
///
/// Every group of the round is applied again, not only those after the
/// group the tree says it holds: each writes its keys' newest values, so
/// applying them in order leaves every key as the round left it, whatever
/// part of the round sled kept. Chunks of generations after the last
/// checkpoint's are deleted first: the round's groups write those values
/// again, under new generations, and one a crash cut off before its manifest would otherwise
/// be left behind.
fn recover(dir: &Path, db: &sled::Db, segment: usize) -> Result<(u64, u64)> {
    let applied = crate::sled_wal::number(db, MARK)?.unwrap_or(0);
    let groups = crate::sled_wal::round(dir, applied)?;
    let mut last = applied;
    let checkpointed = crate::sled_wal::number(db, CHUNKS)?;
    let last_generation = Chunker::last_generation(db)?.max(checkpointed.unwrap_or(0));
    if !groups.is_empty() {
        tracing::info!(
            groups = groups.len(),
            "applying again the groups of commits the store's write-ahead log holds"
        );
        if let Some(checkpointed) = checkpointed {
            let mut from = CHUNK_SPACE.to_vec();
            from.extend_from_slice(&(checkpointed + 1).to_be_bytes());
            for entry in db.range(from..).keys() {
                let key = entry.map_err(backend_error)?;
                if !key.starts_with(CHUNK_SPACE) {
                    break;
                }
                db.remove(key).map_err(backend_error)?;
            }
        }
    }
    // Generations are never used twice, even those just deleted.
    let mut chunker = Chunker::new(chunk_size(segment), last_generation);
    for group in groups {
        apply(db, &mut chunker, group.number, group.writes)?;
        last = last.max(group.number);
    }
    let generation = chunker.last_generation_made();
    checkpoint(db, &data_file(dir)?, generation)?;
    Ok((last, generation))
}

/// Applies `writes`, the newest values of groups up to `number`, whose
/// records are durable in the write-ahead log, to the tree: one by one,
/// then `number` under [`MARK`]. Whatever part of them a crash takes from sled's page cache
/// is in the log's round, which the next open applies again.
/// Single writes rather than one sled batch: each batch rolls sled's log
/// buffer twice (a write and a `sync_file_range` each, on its I/O threads).
fn apply(
    db: &sled::Db,
    chunker: &mut Chunker,
    number: u64,
    writes: Vec<crate::sled_unapplied::ToApply>,
) -> Result<()> {
    // Nothing reads the tree while a store opens.
    chunker.apply(db, &writes, || ())?;
    mark(db, number)
}

/// Says in the tree that it holds every group up to `number`.
fn mark(db: &sled::Db, number: u64) -> Result<()> {
    db.insert(MARK, &number.to_be_bytes()[..])
        .map_err(backend_error)?;
    Ok(())
}

/// Opens sled's database in `dir` with Kiln's settings, waiting up to
/// [`LOCK_WAIT`] for a lock sled's own threads still hold.
pub(crate) fn open_sled(dir: &Path, segment: usize) -> Result<sled::Db> {
    let started = std::time::Instant::now();
    loop {
        let opened = sled::Config::new()
            .segment_size(segment)
            .path(dir)
            .cache_capacity(64 << 20)
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            opened => {
                return opened.map_err(|e| {
                    StoreError::Backend(format!("opening the store in {}: {e}", dir.display()))
                });
            }
        }
    }
}

impl SledBackend {
    /// Stops as a killed process would, for the engine's simulation: the
    /// group being written (if any) is finished, to the log; no later
    /// commit is written, and durable groups not yet applied to the tree
    /// may stay so. Reopened in the same process, the store holds what it
    /// applied, synced or not, and what the log holds beyond (applied
    /// again at the open), so this shows that after the open the store
    /// holds whole groups, in order, whatever part of them the tree's
    /// thread had applied, not what a lost page cache takes (the
    /// simulation's model store and `tests/lost_page_cache.rs` show that).
    #[doc(hidden)]
    pub fn halt_as_if_killed(&self) {
        self.front
            .pending
            .halted
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for SledBackend {
    /// Closes the committer's channel and waits for it to finish the
    /// commits in flight, so that once a dropped backend is gone the store
    /// is closed and its lock free (a server or tool opening the same
    /// directory next does not find it still held).
    fn drop(&mut self) {
        // Deferred writes go with the last group.
        self.front.close();
        if let Some(committing) = self.committing.take()
            && committing.join().is_err()
        {
            tracing::error!("the store's committer thread panicked");
        }
    }
}

/// The thread that makes commits durable: it gathers a group of them
/// (everything committed since the last group, which under load is
/// everything committed during the last sync), numbers it, writes it as
/// one record to the write-ahead log, durably, acknowledges its
/// writers, and hands the durable group to the tree's thread
/// ([`TreeWriter::run`]), which applies it to the tree.
struct Committer {
    wal: Wal,
    /// The number of the last group the store holds.
    last_group: u64,
    pending: Arc<Pending>,
    durable: Arc<crate::durability::Reached>,
    tree: TreeLine,
}

/// What the committer hands the tree's thread, in the order it happened.
enum ToTree {
    /// A group durable in the log: its number, the number of the last
    /// commit it covered, and each key's newest value.
    Group(u64, u64, Vec<crate::sled_unapplied::ToApply>),
    /// Apply every group handed so far, make the tree durable, and answer
    /// how that went (the log is full, or the store closes).
    Checkpoint(mpsc::SyncSender<Result<()>>),
}

/// What the committer and the tree's thread share.
#[derive(Default)]
struct Inbox {
    /// Handed and not yet taken by the tree's thread.
    items: Vec<ToTree>,
    /// The committer has stopped: the tree's thread ends.
    closed: bool,
    /// The tree's thread holds nothing and waits for the committer to wake
    /// it; otherwise it looks again on its own within [`IDLE`], so a group
    /// handed under load costs no wake-up.
    sleeping: bool,
}

/// The committer's end of the tree's thread. Dropping it ends that thread
/// and waits for it, so that sled's database is let go of with the
/// committer's.
struct TreeLine {
    inbox: Arc<std::sync::Mutex<Inbox>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TreeLine {
    fn send(&self, item: ToTree) {
        let urgent = matches!(item, ToTree::Checkpoint(_));
        let sleeping = {
            let mut inbox = lock(&self.inbox);
            inbox.items.push(item);
            inbox.sleeping
        };
        if (sleeping || urgent)
            && let Some(thread) = &self.thread
        {
            thread.thread().unpark();
        }
    }

    /// Has the tree's thread apply every group handed to it so far, then
    /// make the tree durable.
    fn checkpoint(&self) -> Result<()> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(ToTree::Checkpoint(reply));
        answer.recv().unwrap_or_else(|_| {
            Err(StoreError::Backend(
                "the thread that applies the store's log to its tree has stopped".into(),
            ))
        })
    }
}

impl Drop for TreeLine {
    fn drop(&mut self) {
        lock(&self.inbox).closed = true;
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            if thread.join().is_err() {
                tracing::error!("the thread that applies the store's log to its tree panicked");
            }
        }
    }
}

/// The tree's writer: it alone writes the tree, on a thread of its own
/// (`kiln-tree`), from the durable groups the committer hands it.
struct TreeWriter {
    db: sled::Db,
    data_file: std::fs::File,
    /// Splits large values.
    chunker: Chunker,
    pending: Arc<Pending>,
    durable: Arc<crate::durability::Reached>,
    /// Groups durable in the log and not yet applied to the tree.
    behind: Behind,
    /// Groups taken from `behind` and being applied, a slice at a time.
    applying: Applying,
}

/// Held groups the tree's writer applies a slice at a time, taking the
/// groups the committer handed it between two slices, so that the
/// unapplied writes a slice covered are forgotten as it ends: each key's
/// newest value, in key order, the number of the last group and the last
/// commit it covered, and the size of the next slice.
#[derive(Default)]
struct Applying {
    writes: std::collections::VecDeque<crate::sled_unapplied::ToApply>,
    last: Option<(u64, u64)>,
    /// The next slice's most keys and bytes of values: [`APPLY_SLICE`],
    /// doubled at every slice while the groups held since are due before
    /// this set is applied, so that the tree's writer catches up.
    slice: (usize, usize),
}

/// Groups the committer made durable and the tree's writer has not applied
/// yet, merged: each key's newest value. Reads find them in the unapplied
/// writes meanwhile. Applied together, a key several of them wrote (a
/// run's record, written when it is triggered, claimed and finished; the
/// index entries a run holds while it is active) goes to the tree once.
#[derive(Default)]
struct Behind {
    writes: std::collections::BTreeMap<Vec<u8>, Option<Arc<Vec<u8>>>>,
    /// The number of the last group merged, and the last commit it covered.
    last: Option<(u64, u64)>,
    /// When the oldest group merged was made durable.
    since: Option<std::time::Instant>,
    /// The bytes of the values merged.
    bytes: usize,
}

/// How long durable groups are held at most before the tree's writer takes
/// them to apply, and how many keys or bytes of values make it take them
/// sooner. The longer they are held, the more of a run's writes meet before
/// they reach sled (its record written once, the index keys it holds while
/// active not at all); the slices ([`APPLY_SLICE`]) keep a long hold from
/// becoming a long pause.
const BEHIND_AT_MOST: (std::time::Duration, usize, usize) =
    (std::time::Duration::from_millis(100), 8_192, 16 << 20);

/// How many keys, and bytes of their values, the tree's writer applies at
/// most before it takes the groups handed to it since, unless it is
/// falling behind (see [`Applying::slice`]). Each slice's keys are
/// forgotten in the unapplied writes as it ends, which keeps reads' merge
/// of them with the tree short. (When the committer applied the slices
/// itself, between two groups, 64 keys carried 1.12 times the runs a
/// second of an apply of everything at once after 20 ms:
/// `docs/BENCHMARKS.md`.)
const APPLY_SLICE: (usize, usize) = (64, 256 << 10);

/// A slice of everything left.
const ALL: (usize, usize) = (usize::MAX, usize::MAX);

/// How long the tree's writer waits for the next group before it takes what
/// it holds to apply (the server is quiet: nothing more would meet it
/// soon), and how often it looks for groups handed to it while it holds
/// some, without being woken for each.
const IDLE: std::time::Duration = std::time::Duration::from_millis(1);

impl Behind {
    fn merge(&mut self, number: u64, covered: u64, writes: Vec<crate::sled_unapplied::ToApply>) {
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

impl Committer {
    /// Makes groups durable, in order, until the backend is closed: waits
    /// for a group, takes what its commits wrote (each key's newest value),
    /// writes it as one record to the write-ahead log, durably
    /// (after a checkpoint of the tree when the log is full), acknowledges
    /// its writers, and hands it to the tree's thread. Applying groups to
    /// the tree took the committer more than half of its time between two
    /// syncs under load (a slice of 64 sled writes after each), during
    /// which every commit waited; on a thread of its own it overlaps the
    /// syncs.
    fn run(mut self, requests: mpsc::Receiver<Request>) {
        let mut gatherer = Gatherer::new(requests);
        let pending = self.pending.clone();
        let halted = || pending.halted.load(std::sync::atomic::Ordering::Acquire);
        while let Some(acks) = gatherer.next(&pending, || !halted()) {
            // Every commit whose acknowledgement is in the group was made
            // before this, so this group and the ones before cover it.
            let (written, covered) = lock(&pending.unapplied).take_new();
            // Sorted once the lock every read takes is released.
            let writes = crate::sled_unapplied::in_key_order(written);
            if writes.is_empty() {
                // Nothing new: the records before it, all durable by now,
                // cover its commits.
                acknowledge(&self.durable, covered, acks);
                continue;
            }
            self.last_group += 1;
            let number = self.last_group;
            let mut record = crate::sled_wal::encode(number, &writes);
            let started = std::time::Instant::now();
            let tree = &self.tree;
            let written = self.wal.append(number, &mut record, || tree.checkpoint());
            let metrics = crate::stats::metrics();
            metrics
                .sync_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.syncs.inc();
            metrics.group_commits.observe(acks.len() as f64);
            if let Err(error) = &written {
                fail_stop(error, acks, &self.durable, "the disk");
            }
            acknowledge(&self.durable, covered, acks);
            self.tree.send(ToTree::Group(number, covered, writes));
        }
        // A clean close: the tree is made durable and the log's round
        // ended, so the next open applies nothing again. After a simulated
        // crash, as after a real one, the log stays as it is, and what was
        // not applied to the tree is applied from it at the next open.
        if !halted() {
            let closed = self.tree.checkpoint().and_then(|()| self.wal.clear());
            if let Err(error) = closed {
                tracing::warn!(%error, "the store's last checkpoint failed; its next open applies its log again");
            }
        }
    }
}

/// Stops Kiln if the tree's thread panics: without it the committer would
/// wait for a checkpoint no one does, and writers for room no one frees.
/// Restarting applies the log again.
struct StopOnPanic<'a>(&'a crate::durability::Reached);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let error = StoreError::Backend(
                "the thread that applies the store's log to its tree panicked".into(),
            );
            fail_stop(&error, Vec::new(), self.0, "sled's tree");
        }
    }
}

impl TreeWriter {
    /// The tree's thread: takes what the committer hands it through
    /// `inbox`, in order, until the committer has stopped. It holds durable
    /// groups, merged, and takes them to apply when none has come for
    /// [`IDLE`] or it has held them long enough ([`BEHIND_AT_MOST`]), then
    /// applies them a slice at a time ([`APPLY_SLICE`]), taking the groups
    /// handed to it meanwhile between two slices. A checkpoint is done when
    /// asked, after every group handed before it. When the committer stops,
    /// what this thread has not applied is left to the log (a clean close
    /// checkpoints first).
    fn run(mut self, inbox: Arc<std::sync::Mutex<Inbox>>) {
        let durable = self.durable.clone();
        let _stop = StopOnPanic(&durable);
        // When a group was last handed over.
        let mut last_came = std::time::Instant::now();
        loop {
            let (items, closed) = {
                let mut inbox = lock(&inbox);
                (std::mem::take(&mut inbox.items), inbox.closed)
            };
            if !items.is_empty() {
                last_came = std::time::Instant::now();
            }
            for item in items {
                match item {
                    ToTree::Group(number, covered, writes) => {
                        self.behind.merge(number, covered, writes)
                    }
                    ToTree::Checkpoint(reply) => {
                        let _ = reply.send(self.checkpoint());
                    }
                }
            }
            if closed {
                return;
            }
            if self.behind.due() {
                if self.applying.last.is_some() {
                    // Behind: the next slices are larger until this set is
                    // applied.
                    let (keys, bytes) = self.applying.slice;
                    self.applying.slice = (keys.saturating_mul(2), bytes.saturating_mul(2));
                } else {
                    self.take_behind();
                }
            }
            if self.applying.last.is_some() {
                self.apply_slice();
            } else if self.behind.last.is_some() {
                if last_came.elapsed() >= IDLE {
                    self.take_behind();
                } else {
                    std::thread::park_timeout(IDLE);
                }
            } else {
                // Nothing held: sleep until the committer hands something.
                {
                    let mut inbox = lock(&inbox);
                    if !inbox.items.is_empty() || inbox.closed {
                        continue;
                    }
                    inbox.sleeping = true;
                }
                std::thread::park();
                lock(&inbox).sleeping = false;
            }
        }
    }

    /// Takes the groups held to be applied a slice at a time, after
    /// finishing the groups taken before.
    fn take_behind(&mut self) {
        self.apply_taken(ALL);
        let Some(last) = self.behind.last else {
            return;
        };
        // A scan reads the unapplied writes, then the tree: keys the groups
        // taken write start changing in the tree only after every scan
        // reading now has ended (a barrier: later scans read unapplied
        // writes that hold them), so none finds in the tree a commit newer
        // than the unapplied writes it read.
        drop(self.pending.moving());
        self.applying = Applying {
            writes: std::mem::take(&mut self.behind)
                .writes
                .into_iter()
                .collect(),
            last: Some(last),
            slice: APPLY_SLICE,
        };
    }

    /// Applies the next slice of the groups taken, if any.
    fn apply_slice(&mut self) {
        self.apply_taken(self.applying.slice);
    }

    /// Applies the next keys of the groups taken to the tree (each key's
    /// newest value), at least one and at most `keys`, or fewer once they
    /// hold `bytes` of values, and forgets them in the unapplied writes;
    /// once all are applied, says in the tree that it holds the last group.
    fn apply_taken(&mut self, (keys, bytes): (usize, usize)) {
        let Some((number, covered)) = self.applying.last else {
            return;
        };
        let mut take = 0;
        let mut held = 0;
        for (_, value) in self.applying.writes.iter().take(keys.max(1)) {
            if take > 0 && held >= bytes {
                break;
            }
            held += value.as_ref().map_or(0, |v| v.len());
            take += 1;
        }
        let slice: Vec<_> = self.applying.writes.drain(..take).collect();
        let done = self.applying.writes.is_empty();
        // Reads are not held off for the whole slice, only while a chunked
        // value is replaced or deleted: a scan waiting a slice's length (64
        // tree writes) held every engine decision waiting behind it. Every
        // key of the groups taken is in the unapplied writes from before a
        // scan begins (groups are taken while none reads) until the tree
        // holds it and the rest of its slice, and reads find it there first,
        // so a scan between two keys of a slice reads what it would have
        // read before the slice or after it.
        let pending = &self.pending;
        let applied = self
            .chunker
            .apply(&self.db, &slice, || pending.moving())
            .and_then(|()| if done { mark(&self.db, number) } else { Ok(()) });
        match applied {
            Ok(()) => self
                .pending
                .applied_keys(slice.iter().map(|(k, _)| k.as_slice()), covered),
            Err(error) => fail_stop(&error, Vec::new(), &self.durable, "the disk"),
        }
        if done {
            self.applying.last = None;
        }
    }

    /// Applies every group held to the tree, the groups taken first.
    fn apply_behind(&mut self) {
        self.take_behind();
        self.apply_taken(ALL);
    }

    /// Applies every group held, then makes the tree durable: afterwards
    /// the tree holds every group written to the log so far.
    fn checkpoint(&mut self) -> Result<()> {
        self.apply_behind();
        checkpoint(
            &self.db,
            &self.data_file,
            self.chunker.last_generation_made(),
        )
    }
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        // A key no unapplied commit wrote holds in the tree what the last
        // commit that wrote it left (or something newer, applied since).
        if let Some(written) = lock(&self.front.pending.unapplied).get(key) {
            return Ok(written);
        }
        match self.tree.get(key).map_err(backend_error)? {
            Some(v) if is_manifest(&v) => {}
            Some(v) => return Ok(Some(v.to_vec())),
            None => return Ok(None),
        }
        // A chunked value: its chunks are read while the tree's thread
        // replaces or deletes no chunked value (it deletes the chunks of a value it
        // replaces before it writes the new manifest), from what the tree
        // holds then.
        let _reading = self.front.pending.reading();
        if let Some(written) = lock(&self.front.pending.unapplied).get(key) {
            return Ok(written);
        }
        match self.tree.get(key).map_err(backend_error)? {
            Some(v) => resolve(&self.tree, key, v.to_vec()),
            None => Ok(None),
        }
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let _reading = self.front.pending.reading();
        let end = prefix_end(prefix);
        let unapplied = lock(&self.front.pending.unapplied).range(prefix, end.as_deref());
        let tree = self
            .tree
            .scan_prefix(prefix)
            .filter_map(|entry| self.entry(entry).transpose());
        merge(tree, unapplied).collect()
    }

    fn scan_range_in(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        order: Order,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let _reading = self.front.pending.reading();
        let unapplied = lock(&self.front.pending.unapplied).range(start, Some(end));
        let entries = self.tree.range(start..end);
        let resolved = |entry| self.entry(entry).transpose();
        match order {
            Order::Ascending => merge(entries.filter_map(resolved), unapplied)
                .take(limit)
                .collect(),
            Order::Descending => merge_rev(entries.rev().filter_map(resolved), unapplied)
                .take(limit)
                .collect(),
        }
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let _reading = self.front.pending.reading();
        let end = prefix_end(prefix);
        let unapplied = lock(&self.front.pending.unapplied).range(prefix, end.as_deref());
        let written = |k: &[u8]| {
            unapplied
                .binary_search_by(|(u, _)| u.as_slice().cmp(k))
                .is_ok()
        };
        let mut in_tree = None;
        for entry in self.tree.scan_prefix(prefix).rev() {
            if let Ok((k, _)) = &entry
                && written(k.as_ref())
            {
                continue;
            }
            if let Some(found) = self.entry(entry)? {
                in_tree = Some(found);
                break;
            }
        }
        let last_written = unapplied
            .into_iter()
            .rev()
            .find_map(|(k, v)| v.map(|v| (k, v)));
        Ok(match (in_tree, last_written) {
            (Some(t), Some(u)) => Some(if t.0 > u.0 { t } else { u }),
            (t, u) => t.or(u),
        })
    }

    fn commit(&self, ops: Vec<Op>) -> Commit {
        self.front.commit(ops)
    }

    fn commit_unawaited(&self, ops: Vec<Op>) -> Result<()> {
        self.front.commit_unawaited(ops)
    }

    fn suggest_compaction(&self, min_len: u64, deleted: usize) -> Result<Option<bool>> {
        let data = self.dir.join("db");
        let len = std::fs::metadata(&data).map_err(backend_error)?.len();
        // Deletions too few to have freed a noticeable part of the file
        // are not worth reading a quarter of it for.
        if (deleted as u64) < len / 1024 {
            return Ok(None);
        }
        if crate::sled_compact::sparse(&self.dir, &self.tree, min_len)?.is_none() {
            return Ok(Some(false));
        }
        crate::sled_compact::mark(&self.dir)?;
        Ok(Some(true))
    }

    fn defer(&self, ops: Vec<Op>) {
        self.front.defer(ops);
    }

    fn settled(&self) -> Commit {
        self.front.settled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(bytes: &[u8]) -> Option<Arc<Vec<u8>>> {
        Some(Arc::new(bytes.to_vec()))
    }

    /// The tree's writer on a fresh store in `dir`.
    fn tree_writer(dir: &Path) -> TreeWriter {
        let db = open_sled(dir, segment_size(dir)).unwrap();
        TreeWriter {
            data_file: data_file(dir).unwrap(),
            chunker: Chunker::new(chunk_size(segment_size(dir)), 0),
            db,
            pending: Arc::new(Pending::default()),
            durable: Arc::new(crate::durability::channel().0),
            behind: Behind::default(),
            applying: Applying::default(),
        }
    }

    /// Makes a commit of `ops` and holds it, as durable group `number`.
    fn commit_and_hold(tree: &mut TreeWriter, number: u64, ops: Vec<Op>) {
        lock(&tree.pending.unapplied).commit(ops);
        let (writes, covered) = lock(&tree.pending.unapplied).take_new();
        let writes = crate::sled_unapplied::in_key_order(writes);
        tree.behind.merge(number, covered, writes);
    }

    /// A key's value as the backend's reads answer: its unapplied write,
    /// else the tree's.
    fn read(tree: &TreeWriter, key: &[u8]) -> Option<Vec<u8>> {
        if let Some(written) = lock(&tree.pending.unapplied).get(key) {
            return written;
        }
        let value = tree.db.get(key).unwrap()?.to_vec();
        resolve(&tree.db, key, value).unwrap()
    }

    #[test]
    fn reads_between_two_keys_of_a_slice_find_every_key_as_committed() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = tree_writer(dir.path());
        let chunk = chunk_size(segment_size(dir.path()));
        let big = |fill: u8| vec![fill; chunk * 2 + 7];
        let key = |i: usize| format!("k/{i}").into_bytes();
        let put = |i: usize, v: Vec<u8>| Op::Put(key(i), v);
        // A first group, applied whole: small values and chunked ones.
        commit_and_hold(
            &mut tree,
            1,
            vec![
                put(0, b"a".to_vec()),
                put(1, big(1)),
                put(2, big(2)),
                put(3, b"d".to_vec()),
            ],
        );
        tree.apply_behind();
        // A second replaces a chunked value with another, a small one with
        // a chunked one, deletes a chunked one and adds a key.
        commit_and_hold(
            &mut tree,
            2,
            vec![
                put(1, big(11)),
                put(3, big(13)),
                Op::Delete(key(2)),
                put(4, b"e".to_vec()),
            ],
        );
        let expected = [
            Some(b"a".to_vec()),
            Some(big(11)),
            None,
            Some(big(13)),
            Some(b"e".to_vec()),
        ];
        tree.take_behind();
        let slice: Vec<_> = tree.applying.writes.drain(..).collect();
        let (db, pending) = (tree.db.clone(), tree.pending.clone());
        let checks = std::cell::Cell::new(0);
        // Whenever the committer would hold reads off (before it replaces or
        // deletes a chunked value), and after the last key, a read of every
        // key finds what the second group left, and the tree holds every
        // chunk of each manifest it holds (a scan puts the tree's values
        // together before it lays the unapplied writes over them).
        let check = || {
            for (i, expected) in expected.iter().enumerate() {
                let k = key(i);
                if let Some(v) = db.get(&k).unwrap() {
                    resolve(&db, &k, v.to_vec()).expect("the tree's value reads whole");
                }
                let read = match lock(&pending.unapplied).get(&k) {
                    Some(written) => written,
                    None => db
                        .get(&k)
                        .unwrap()
                        .and_then(|v| resolve(&db, &k, v.to_vec()).unwrap()),
                };
                assert_eq!(&read, expected, "key {i} at hold {}", checks.get());
            }
            checks.set(checks.get() + 1);
        };
        tree.chunker.apply(&db, &slice, check).unwrap();
        check();
        assert_eq!(checks.get(), 3, "held for the two chunked values replaced");
        // Once the slice's keys are forgotten in the unapplied writes, the
        // tree alone answers the same, and no chunk of a replaced or deleted
        // value is left.
        pending.applied(2);
        for (i, expected) in expected.iter().enumerate() {
            assert_eq!(&read(&tree, &key(i)), expected, "key {i}");
        }
        let chunks = db.scan_prefix(CHUNK_SPACE).count();
        assert_eq!(chunks, 2 * 3, "two chunked values of three chunks each");
    }

    #[test]
    fn groups_applied_a_slice_at_a_time_read_as_committed_throughout() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = tree_writer(dir.path());
        let keys: Vec<Vec<u8>> = (0..200).map(|i| format!("k/{i:03}").into_bytes()).collect();
        let put = |k: &Vec<u8>, v: &[u8]| Op::Put(k.clone(), v.to_vec());
        commit_and_hold(&mut tree, 1, keys.iter().map(|k| put(k, b"1")).collect());
        tree.take_behind();
        tree.apply_slice();
        // The first slice is in the tree, and the tree does not say it
        // holds the group.
        assert_eq!(tree.db.get(&keys[63]).unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(tree.db.get(&keys[64]).unwrap(), None);
        assert_eq!(crate::sled_wal::number(&tree.db, MARK).unwrap(), None);
        assert_eq!(lock(&tree.pending.unapplied).get(&keys[63]), None);
        // A later commit writes again a key applied and one not yet, and
        // deletes one not yet applied.
        lock(&tree.pending.unapplied).commit(vec![
            put(&keys[0], b"2"),
            put(&keys[150], b"2"),
            Op::Delete(keys[199].clone()),
        ]);
        let expected = |i: usize| match i {
            0 | 150 => Some(b"2".to_vec()),
            199 => None,
            _ => Some(b"1".to_vec()),
        };
        let mut slices = 1;
        loop {
            for (i, key) in keys.iter().enumerate() {
                assert_eq!(
                    read(&tree, key),
                    expected(i),
                    "key {i} after {slices} slices"
                );
            }
            if tree.applying.last.is_none() {
                break;
            }
            tree.apply_slice();
            slices += 1;
        }
        assert_eq!(slices, 4);
        assert_eq!(crate::sled_wal::number(&tree.db, MARK).unwrap(), Some(1));
        // The later commit's writes are still laid over the tree, and
        // nothing else is.
        assert_eq!(tree.db.get(&keys[150]).unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(
            lock(&tree.pending.unapplied).get(&keys[150]),
            Some(Some(b"2".to_vec()))
        );
        assert_eq!(lock(&tree.pending.unapplied).get(&keys[1]), None);
    }

    #[test]
    fn a_slice_ends_once_it_holds_its_bytes_and_takes_a_larger_value_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = tree_writer(dir.path());
        let value = vec![7u8; 100 << 10];
        let ops = (0..5)
            .map(|i| Op::Put(format!("big/{i}").into_bytes(), value.clone()))
            .chain([Op::Put(b"a-huge".to_vec(), vec![9u8; 300 << 10])])
            .collect();
        commit_and_hold(&mut tree, 1, ops);
        tree.take_behind();
        let left = |tree: &TreeWriter| tree.applying.writes.len();
        tree.apply_slice();
        assert_eq!(
            left(&tree),
            5,
            "a value larger than a slice is applied alone"
        );
        tree.apply_slice();
        assert_eq!(
            left(&tree),
            2,
            "three values of 100 KiB reach the slice's 256 KiB"
        );
        tree.apply_slice();
        assert_eq!(left(&tree), 0);
        assert!(tree.applying.last.is_none());
        assert_eq!(read(&tree, b"a-huge"), Some(vec![9u8; 300 << 10]));
        assert_eq!(read(&tree, b"big/4"), Some(value));
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
