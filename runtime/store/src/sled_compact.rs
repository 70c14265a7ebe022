//! Giving a sled store's space back to the file system.
//!
//! sled reuses the segments that deleted data leaves free for new writes,
//! so a store whose runs expire stops growing; but it shortens its file
//! only while the file's last segment is free, and any live page there
//! (a tree node written late, say) keeps the whole file at its high-water
//! mark. After retention deleted 100,000 runs the file stayed near 200 MiB
//! holding well under 1 MiB. So after large deletions the running server
//! reads whether the file is mostly free ([`sparse`]: entries are read only
//! until they show it is not) and, if it is, leaves a request in the
//! store's directory ([`mark`]); the next time the store is opened, before
//! anything else reads it, every entry is copied, as sled stores it, into
//! a new database beside it, which then takes the store's place. A start
//! without a request reads nothing more than sled does.
//!
//! The swap survives a crash at any point. The copy is built in
//! `<store>.compact`, made durable, and marked complete; then `<store>`
//! is renamed to `<store>.old` and the copy to `<store>`. [`recover`],
//! which every open runs first, finishes or undoes what a crash
//! interrupted: with no `<store>`, a complete copy takes its place (else
//! the old store goes back); then any copy or old store left beside a
//! `<store>` is deleted.

use crate::sled_backend::{LOCK_WAIT, open_sled};
use crate::sled_chunks::segment_size;
use crate::{Result, StoreError};
use std::fs;
use std::path::{Path, PathBuf};

/// The size from which a store's file is worth compacting, if it is
/// mostly free space.
pub const COMPACT_FROM: u64 = 64 << 20;

/// A file at least this many times the bytes its entries hold is
/// compacted.
const SPARSE: u64 = 4;

/// Bytes counted for an entry besides its key and value.
const ENTRY_OVERHEAD: usize = 32;

/// Entries copied per sled batch.
const COPY_BATCH: usize = 10_000;

/// The file in a complete copy that says it is complete.
const COMPLETE: &str = "kiln-compact-complete";

/// The file in a store that asks for it to be compacted at the next open.
const REQUESTED: &str = "kiln-compact-requested";

/// Asks for the store in `dir` to be compacted the next time it is
/// opened.
pub(crate) fn mark(dir: &Path) -> Result<()> {
    let marker = dir.join(REQUESTED);
    fs::File::create(&marker)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error("marking", &marker, e))?;
    sync_parent(&marker)
}

/// Whether the store in `dir` was asked to be compacted.
pub(crate) fn marked(dir: &Path) -> bool {
    dir.join(REQUESTED).exists()
}

/// Takes the request back (once the store was compacted or found compact).
pub(crate) fn unmark(dir: &Path) -> Result<()> {
    let marker = dir.join(REQUESTED);
    match fs::remove_file(&marker) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("unmarking", &marker, e)),
    }
}

/// What a compaction did: the size of sled's data file before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Bytes of the data file before.
    pub before: u64,
    /// Bytes of the data file after.
    pub after: u64,
    /// Bytes the entries hold (keys and values as sled stores them, and 32
    /// bytes an entry besides).
    pub live: u64,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("{what} {}: {e}", path.display()))
}

/// `dir` with `.suffix` added to its last component.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".");
    name.push(suffix);
    dir.with_file_name(name)
}

/// `fsync`s the directory holding `path`, so a rename or a new file in it
/// is durable.
fn sync_parent(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("syncing the directory", parent, e))
}

/// Kiln's exclusive lock on a store's directory, held by a file beside it
/// (`<store>.lock`; the directory itself is renamed when it is compacted,
/// and sled's own lock is inside it). Another process that opens the store
/// waits for it, up to [`LOCK_WAIT`]. The file is deleted when the lock is
/// let go of; one that takes the lock checks that the file it locked is
/// still the one at the path, so a lock on a deleted file never counts.
#[derive(Debug)]
pub(crate) struct DirLock {
    path: PathBuf,
    file: fs::File,
}

impl DirLock {
    /// Takes the lock on `dir`, waiting up to [`LOCK_WAIT`]. A directory
    /// given without a name of its own (`.`, `..`, `/`) is refused: its
    /// lock and copies would have to live inside it.
    pub(crate) fn take(dir: &Path) -> Result<DirLock> {
        use std::os::unix::fs::MetadataExt;
        if dir.file_name().is_none() {
            return Err(StoreError::Backend(format!(
                "the store's directory {} needs a name of its own (a path ending in one)",
                dir.display()
            )));
        }
        let path = sibling(dir, "lock");
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            fs::create_dir_all(parent).map_err(|e| io_error("creating", parent, e))?;
        }
        let started = std::time::Instant::now();
        loop {
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| io_error("opening", &path, e))?;
            match file.try_lock() {
                Ok(()) => {
                    let locked = file.metadata().map_err(|e| io_error("reading", &path, e))?;
                    let same = fs::metadata(&path)
                        .is_ok_and(|now| now.ino() == locked.ino() && now.dev() == locked.dev());
                    if same {
                        return Ok(DirLock { path, file });
                    }
                    // The holder deleted it as it let go: lock the new one.
                }
                Err(fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::Backend(format!(
                        "the store in {} is in use by another process (it holds {})",
                        dir.display(),
                        path.display()
                    )));
                }
                Err(fs::TryLockError::Error(e)) => return Err(io_error("locking", &path, e)),
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Deleted while still held, so whoever locks it next finds it gone
        // and makes a new one.
        let _ = fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// Finishes or undoes a compaction that a crash interrupted (see the
/// module's docs). Cheap when there is none: two `stat`s.
pub(crate) fn recover(dir: &Path) -> Result<()> {
    let copy = sibling(dir, "compact");
    let old = sibling(dir, "old");
    if !dir.exists() && old.exists() {
        let back = if copy.join(COMPLETE).exists() {
            &copy
        } else {
            &old
        };
        fs::rename(back, dir).map_err(|e| io_error("putting back the store", back, e))?;
        sync_parent(dir)?;
        tracing::warn!(store = %dir.display(), from = %back.display(), "finished a store compaction a crash interrupted");
    }
    // The store is whole now: a leftover that cannot be deleted is only
    // space, tried again at the next open.
    for leftover in [&copy, &old] {
        if leftover.exists()
            && let Err(error) = fs::remove_dir_all(leftover)
        {
            tracing::warn!(%error, leftover = %leftover.display(), "deleting what a store compaction left failed");
        }
    }
    Ok(())
}

/// Whether the store's directory can be swapped for a copy beside it: not
/// a symbolic link (the rename would move the link and leave the old
/// bytes where it points) and on its parent's file system (not a mount
/// point of its own, which cannot be renamed).
fn swappable(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return false;
    };
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    !meta.file_type().is_symlink() && fs::metadata(parent).is_ok_and(|p| p.dev() == meta.dev())
}

/// What opening a store does about a compaction retention asked for:
/// nothing if none was asked; else takes the request back (so a start
/// killed while compacting does not start over at every start: retention
/// asks again), and if the file is still at least `min_len` bytes and
/// sparse, compacts it and opens the copy. Never fails for the
/// compaction's sake: one that fails is logged, undone, and the store
/// opens as it was.
pub(crate) fn on_open(
    dir: &Path,
    db: sled::Db,
    min_len: u64,
    segment: usize,
) -> Result<(sled::Db, Option<Compacted>)> {
    if !marked(dir) {
        return Ok((db, None));
    }
    if let Err(error) = unmark(dir) {
        tracing::warn!(%error, "taking back the store's compaction request failed; not compacting");
        return Ok((db, None));
    }
    if !swappable(dir) {
        tracing::warn!(store = %dir.display(), "the store is a symbolic link or a mount point: not compacting it");
        return Ok((db, None));
    }
    let (before, live) = match sparse(dir, &db, min_len) {
        Ok(Some(found)) => found,
        Ok(None) => return Ok((db, None)),
        Err(error) => {
            tracing::warn!(%error, "reading whether the store is sparse failed; not compacting");
            return Ok((db, None));
        }
    };
    tracing::info!(before, live, "compacting the store, as retention asked");
    match compact(dir, db, before, live) {
        Ok(done) => Ok((open_sled(dir, segment)?, Some(done))),
        Err(error) => {
            tracing::warn!(%error, "compacting the store failed; it opens as it was");
            let _ = wait_unlocked(&sibling(dir, "compact"));
            recover(dir)?;
            Ok((open_sled(dir, segment)?, None))
        }
    }
}

/// Waits until no thread of sled's holds the lock on the database in
/// `dir` (its last thread lets go of it a moment after the handle is
/// dropped): nothing writes to the files after this returns.
fn wait_unlocked(dir: &Path) -> Result<()> {
    let path = dir.join("db");
    let file = fs::File::open(&path).map_err(|e| io_error("opening", &path, e))?;
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                return Ok(());
            }
            Err(_) if started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(io_error("waiting for sled to let go of", &path, e.into())),
        }
    }
}

/// `fsync`s every file in `dir` and its subdirectories, then `dir`.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| io_error("reading", dir, e))? {
        let path = entry.map_err(|e| io_error("reading", dir, e))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| io_error("syncing", &path, e))?;
        }
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("syncing", dir, e))
}

fn sled_error(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The size of sled's data file in `dir` and what the entries of `db` (open
/// on it) hold, if the file is at least `min_len` bytes and at least four
/// times that: a store to compact. Reads entries only until they show the
/// file is not sparse, so a full store is read in part.
pub(crate) fn sparse(dir: &Path, db: &sled::Db, min_len: u64) -> Result<Option<(u64, u64)>> {
    let data = dir.join("db");
    let before = fs::metadata(&data)
        .map_err(|e| io_error("reading", &data, e))?
        .len();
    if before < min_len {
        return Ok(None);
    }
    let mut live = 0u64;
    for entry in db.iter() {
        let (k, v) = entry.map_err(sled_error)?;
        // What sled spends on an entry besides its bytes, about: so a store
        // of many tiny entries does not look sparse right after compaction.
        live += (k.len() + v.len() + ENTRY_OVERHEAD) as u64;
        if live.saturating_mul(SPARSE) > before {
            return Ok(None);
        }
    }
    Ok(Some((before, live)))
}

/// Copies every entry of `db`, the store in `dir`, into a new database
/// that then takes the store's place (see the module's docs); `before` and
/// `live` are what [`sparse`] found. `db` is closed when this returns.
pub(crate) fn compact(dir: &Path, db: sled::Db, before: u64, live: u64) -> Result<Compacted> {
    let copy = sibling(dir, "compact");
    let into = open_sled(&copy, segment_size(dir))?;
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    for entry in db.iter() {
        let (k, v) = entry.map_err(sled_error)?;
        batch.insert(k, v);
        in_batch += 1;
        if in_batch == COPY_BATCH {
            into.apply_batch(std::mem::take(&mut batch))
                .map_err(sled_error)?;
            in_batch = 0;
        }
    }
    into.apply_batch(batch).map_err(sled_error)?;
    into.flush().map_err(sled_error)?;
    drop(into);
    drop(db);
    wait_unlocked(&copy)?;
    sync_tree(&copy)?;
    let marker = copy.join(COMPLETE);
    fs::File::create(&marker)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error("marking", &marker, e))?;
    sync_parent(&marker)?;

    // From here a crash leaves a state `recover` completes.
    wait_unlocked(dir)?;
    let old = sibling(dir, "old");
    fs::rename(dir, &old).map_err(|e| io_error("moving aside", dir, e))?;
    fs::rename(&copy, dir).map_err(|e| io_error("moving into place", &copy, e))?;
    sync_parent(dir)?;
    // The swap is done: an old store left behind is deleted by the next
    // open.
    if let Err(error) = fs::remove_dir_all(&old) {
        tracing::warn!(%error, old = %old.display(), "deleting the store before compaction failed");
    }
    let _ = fs::remove_file(dir.join(COMPLETE));
    let data = dir.join("db");
    let after = fs::metadata(&data)
        .map_err(|e| io_error("reading", &data, e))?
        .len();
    Ok(Compacted {
        before,
        after,
        live,
    })
}
