//! The sled backend, made durable by a group committer.
//!
//! sled 0.34's `flush()` is not durable on Linux (it uses `sync_file_range`),
//! and its `flush_async()` deadlocks under concurrent callers. So:
//! - a commit applies its writes to the tree at once, as one atomic sled
//!   batch, so every later read in this process sees them (read-your-writes,
//!   in the order commits were made);
//! - one committer thread owns durability: it drains every pending
//!   acknowledgement, calls `flush()` once, `fdatasync`s sled's data file,
//!   and only then acknowledges each writer (group commit). sled's log keeps
//!   batches in order, so what survives a crash is a prefix of the commits.
//! - commits are numbered as they are applied; the committer publishes the
//!   highest number each flush covered, so [`Backend::settled`] can wait for
//!   exactly the commits a reader may have seen.
//! - values are kept small enough that sled never writes them to its
//!   unsynced `blobs/` files ([`crate::sled_chunks`]).
//! - a flush that fails stops the server (fail-stop): nothing written after
//!   it could be acknowledged truthfully, since what the failed flush
//!   covered may be lost and later flushes cannot tell.

use crate::backend::{Backend, Commit, Op};
use crate::sled_chunks::{CHUNK_SPACE, Chunker, chunk_size, resolve, segment_size};
use crate::{Result, StoreError};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use tokio::sync::{oneshot, watch};

/// How many commits one group takes at most.
const MAX_GROUP: usize = 4_096;

type Request = oneshot::Sender<Result<()>>;

/// A key and its value.
type Entry = (Vec<u8>, Vec<u8>);

/// How far commits have become durable: the number of the last commit the
/// latest flush covered, or why flushing failed.
type Durable = std::result::Result<u64, StoreError>;

/// A sled database in a directory, with group-committed durable writes.
pub struct SledBackend {
    tree: sled::Db,
    /// The store's directory.
    dir: std::path::PathBuf,
    /// Kiln's lock on the directory (sled's own lock is inside it, and the
    /// directory is renamed when it is compacted).
    _lock: crate::sled_compact::DirLock,
    /// Splits large values; held while a commit reads what it replaces and
    /// is applied.
    chunker: Mutex<Chunker>,
    /// The committer's requests; `None` only while the backend is dropped.
    committer: Option<mpsc::Sender<Request>>,
    /// The committer thread, joined when the backend is dropped.
    committing: Option<std::thread::JoinHandle<()>>,
    /// The number of commits applied so far. Held while a batch is applied,
    /// so a reader that takes the count after reading waits for a commit in
    /// progress to be counted.
    applied: Arc<Mutex<u64>>,
    durable: watch::Receiver<Durable>,
}

impl std::fmt::Debug for SledBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledBackend").finish_non_exhaustive()
    }
}

/// How long [`SledBackend::open`] waits for the directory's lock to be let
/// go of.
pub(crate) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn backend_error(e: impl std::fmt::Display) -> StoreError {
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
        let mut compacted = None;
        if let Some(min_len) = compact_from {
            (db, compacted) = crate::sled_compact::on_open(dir, db, min_len, segment)?;
        }
        let data_file = std::fs::OpenOptions::new()
            .read(true)
            .open(dir.join("db"))
            .map_err(|e| StoreError::Backend(format!("opening sled's data file: {e}")))?;
        let (tx, rx) = mpsc::channel::<Request>();
        let applied = Arc::new(Mutex::new(0));
        let (durable_tx, durable) = watch::channel(Ok(0));
        let committer = Committer {
            db: db.clone(),
            data_file,
            applied: applied.clone(),
            durable: durable_tx,
        };
        let committing = std::thread::Builder::new()
            .name("kiln-committer".into())
            .spawn(move || committer.run(rx))
            .map_err(backend_error)?;
        let chunker = Chunker::new(chunk_size(segment), Chunker::last_generation(&db)?);
        let backend = SledBackend {
            _lock: lock,
            dir: dir.to_path_buf(),
            chunker: Mutex::new(chunker),
            tree: db,
            committer: Some(tx),
            committing: Some(committing),
            applied,
            durable,
        };
        Ok((backend, compacted))
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, u64> {
        lock(&self.applied)
    }

    /// A scanned entry, its value put back together if it was chunked
    /// (`None` if it was deleted while being read). The chunk keyspace
    /// itself is returned as stored.
    fn entry(&self, entry: sled::Result<(sled::IVec, sled::IVec)>) -> Result<Option<Entry>> {
        let (k, v) = entry.map_err(backend_error)?;
        if k.starts_with(CHUNK_SPACE) {
            return Ok(Some((k.to_vec(), v.to_vec())));
        }
        Ok(resolve(&self.tree, &k, v.to_vec())?.map(|v| (k.to_vec(), v)))
    }
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

impl Drop for SledBackend {
    /// Closes the committer's channel and waits for it to finish the
    /// commits in flight, so that once a dropped backend is gone the store
    /// is closed and its lock free (a server or tool opening the same
    /// directory next does not find it still held).
    fn drop(&mut self) {
        drop(self.committer.take());
        if let Some(committing) = self.committing.take()
            && committing.join().is_err()
        {
            tracing::error!("the store's committer thread panicked");
        }
    }
}

fn lock(counter: &Mutex<u64>) -> std::sync::MutexGuard<'_, u64> {
    counter
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The thread that makes commits durable, a group at a time.
struct Committer {
    db: sled::Db,
    data_file: std::fs::File,
    applied: Arc<Mutex<u64>>,
    durable: watch::Sender<Durable>,
}

impl Committer {
    fn run(self, requests: mpsc::Receiver<Request>) {
        let Committer {
            db,
            data_file,
            applied,
            durable,
        } = self;
        while let Ok(first) = requests.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match requests.try_recv() {
                    Ok(more) => group.push(more),
                    Err(_) => break,
                }
            }
            // Every commit counted here was applied before the flush starts,
            // so the flush covers it.
            let covered = *lock(&applied);
            let result = db
                .flush()
                .map(|_| ())
                .map_err(backend_error)
                .and_then(|()| data_file.sync_data().map_err(backend_error));
            match &result {
                Ok(()) => {
                    durable.send_modify(|d| {
                        if let Ok(n) = d {
                            *n = (*n).max(covered);
                        }
                    });
                }
                Err(error) => {
                    let _ = durable.send_replace(Err(error.clone()));
                    for ack in group {
                        let _ = ack.send(result.clone());
                    }
                    // Fail-stop: what this flush covered may be lost, and no
                    // later flush could prove otherwise, so nothing more is
                    // acknowledged. Restarting recovers from what is on disk.
                    tracing::error!(%error, "a group commit failed to reach the disk; Kiln stops");
                    std::process::exit(74);
                }
            }
            for ack in group {
                let _ = ack.send(result.clone());
            }
        }
    }
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.tree.get(key).map_err(backend_error)? {
            Some(v) => resolve(&self.tree, key, v.to_vec()),
            None => Ok(None),
        }
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.tree
            .scan_prefix(prefix)
            .filter_map(|entry| self.entry(entry).transpose())
            .collect()
    }

    fn scan_range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.tree
            .range(start..end)
            .filter_map(|entry| self.entry(entry).transpose())
            .take(limit)
            .collect()
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        for entry in self.tree.scan_prefix(prefix).rev() {
            if let Some(found) = self.entry(entry)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    fn commit(&self, ops: Vec<Op>) -> Commit {
        {
            let mut chunker = self
                .chunker
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let batch = match chunker.batch(&self.tree, ops) {
                Ok(batch) => batch,
                Err(error) => return Box::pin(std::future::ready(Err(error))),
            };
            let mut applied = self.applied();
            if let Err(error) = self.tree.apply_batch(batch) {
                let error = backend_error(error);
                return Box::pin(std::future::ready(Err(error)));
            }
            *applied += 1;
        }
        let (ack, done) = oneshot::channel();
        let sent = match &self.committer {
            Some(committer) => committer.send(ack).map_err(|_| ()),
            None => Err(()),
        };
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            done.await.map_err(|_| StoreError::Closed)?
        })
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

    fn settled(&self) -> Commit {
        let seen = *self.applied();
        let mut durable = self.durable.clone();
        Box::pin(async move {
            let reached = durable
                .wait_for(|d| d.as_ref().map_or(true, |n| *n >= seen))
                .await
                .map_err(|_| StoreError::Closed)?;
            match &*reached {
                Ok(_) => Ok(()),
                Err(error) => Err(error.clone()),
            }
        })
    }
}
