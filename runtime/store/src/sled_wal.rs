//! Kiln's write-ahead log in front of sled: what makes a group of commits
//! durable on the default store.
//!
//! Making a group durable through sled itself costs a `flush()` (sled
//! seals its log buffer and writes it from its own I/O threads, waking
//! them all, then waits on `sync_file_range`) and an `fdatasync` of its
//! data file. Measured under load, sled's I/O threads took a third of a
//! run's CPU. So each group is instead written once to this log, a file
//! `kiln-wal` in the store's directory, and made durable by that one
//! write; only then does sled get the group's writes, in memory and in
//! its page cache. Kiln makes sled durable at a checkpoint: when the log
//! is full (every [`CAPACITY`] bytes of groups), when the store is
//! opened, and at a clean close.
//!
//! - **A record's write** goes past the page cache (`O_DIRECT |
//!   O_DSYNC`) as the whole blocks it spans, and returns once they are on
//!   the disk: the bytes of its first block before it (the records before
//!   it, or the round's header) are written again with it, unchanged, and
//!   the rest of its last block with zeroes. That is one write and a
//!   flush of the disk's cache (or one write that bypasses it, where the
//!   disk can), where a buffered write and an `fdatasync` first write the
//!   dirty page back (`docs/BENCHMARKS.md` has the
//!   numbers). Where the filesystem refuses direct writes (at
//!   open, or at the first write), records are written to the page cache
//!   and the log `fdatasync`ed.
//! - **A record** is a group: a magic number, the payload's length, an
//!   XXH3 checksum of the group number and payload seeded with the round's
//!   salt, the group number, and the payload (each key's newest value or
//!   its deletion). Groups are numbered without gaps for the store's life.
//!   Each round has a random salt, in the round's header at the start of
//!   the file (with the round's first group and a checksum), written only
//!   after the checkpoint that ends the round before, so no record of an
//!   earlier round, nor bytes inside a value, can pass for a record of
//!   this one.
//! - **A round** of the log is every record written since the tree's last
//!   checkpoint, from the start of the file. Recovery `fdatasync`s the file
//!   (so nothing it applies is a record a crash left only in the page
//!   cache), reads the records from its start while each is whole (magic,
//!   length, checksum) and numbered one after the one before (the first
//!   that is not ends the log: a torn or never-synced tail, zeroes, or a
//!   record of an earlier round), and applies the whole round to the tree
//!   again, in order, over whatever part of it sled kept: each group
//!   writes its keys' newest values, so every key ends as the round left
//!   it. The tree is then checkpointed, and only then is the log written
//!   from its start again.
//! - **Which group sled holds** is written after the writes of each set
//!   of groups the committer applies together, under [`MARK`]: the last
//!   of them; a round whose first group comes after the one
//!   following it has lost groups, and one that ends before it has a
//!   damaged record: the store refuses to open either. A
//!   checkpoint also writes the last chunk generation it covers under
//!   [`CHUNKS`]: recovery deletes the chunks of later generations before it
//!   applies the round, which writes those values again under new
//!   generations.
//! - **A checkpoint** flushes sled and `fdatasync`s its data file, which
//!   makes durable every group sled has applied: every group before the
//!   one whose record is about to be written (the committer applies every
//!   group it holds, in order, before the checkpoint). The log then starts a new round
//!   at its beginning with that record, overwriting records the tree now
//!   holds. A clean close checkpoints and clears the start of the file, so
//!   the next open has no round to apply.
//! - **Growing the file** writes zeroes up to the next mebibyte and syncs
//!   them, so that records' writes write data only, neither the file's
//!   size nor new blocks.

use crate::sled_unapplied::ToApply;
use crate::{Result, StoreError};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// The start of the sled keys that are the log's bookkeeping, not the
/// store's: scans leave them out.
pub(crate) const BOOKKEEPING: &[u8] = b"\xff\xffkiln-wal";

/// The sled key under which the tree says the last group it holds whole.
pub(crate) const MARK: &[u8] = b"\xff\xffkiln-wal-group";

/// The sled key under which a checkpoint says the last chunk generation
/// it made durable: chunks of later generations were written by groups the
/// log holds.
pub(crate) const CHUNKS: &[u8] = b"\xff\xffkiln-wal-chunks";

/// A new round's salt.
fn new_salt() -> u64 {
    let mut random = [0; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random).is_err() {
        // No randomness: the time still differs from every earlier round's.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return now;
    }
    u64::from_le_bytes(random)
}

/// The log's file in the store's directory.
pub(crate) const FILE: &str = "kiln-wal";

/// How many bytes of records the log holds before a checkpoint starts it
/// again from its beginning.
pub(crate) const CAPACITY: u64 = 64 << 20;

/// How far ahead of the records the file is filled with zeroes.
const GROW: u64 = 1 << 20;

/// The first bytes of every record.
const MAGIC: u32 = 0x4b4c_5732;

/// The first bytes of a round's header.
const ROUND_MAGIC: u32 = 0x4b4c_5752;

/// A round's header, at the start of the file: magic, salt, the round's
/// first group, and a checksum of the two.
const ROUND: usize = 4 + 8 + 8 + 8;

/// A round's header for `salt` and first group `first`.
fn round_header(salt: u64, first: u64) -> [u8; ROUND] {
    let mut header = [0; ROUND];
    header[..4].copy_from_slice(&ROUND_MAGIC.to_le_bytes());
    header[4..12].copy_from_slice(&salt.to_le_bytes());
    header[12..20].copy_from_slice(&first.to_le_bytes());
    let sum = checksum(&header[4..20], ROUND_MAGIC.into());
    header[20..].copy_from_slice(&sum.to_le_bytes());
    header
}

/// The salt and first group of the round whose header `bytes` begin with
/// (`None`: no whole header: a new or cleared log, or one whose header
/// was torn, which is only written after a checkpoint).
fn parse_round(bytes: &[u8]) -> Option<(u64, u64)> {
    let header = bytes.get(..ROUND)?;
    if header[..4] != ROUND_MAGIC.to_le_bytes()
        || checksum(&header[4..20], ROUND_MAGIC.into()) != u64_at(header, 20)
    {
        return None;
    }
    Some((u64_at(header, 4), u64_at(header, 12)))
}

/// Magic, payload length, checksum, group number.
const HEADER: usize = 4 + 8 + 8 + 8;

/// Where the checksummed part of a record begins.
const SUMMED: usize = 20;

fn checksum(bytes: &[u8], salt: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, salt)
}

/// Sets `record`'s checksum for a round salted with `salt`.
fn seal(record: &mut [u8], salt: u64) {
    let sum = checksum(&record[SUMMED..], salt);
    record[12..SUMMED].copy_from_slice(&sum.to_le_bytes());
}

/// A put in a payload; a deletion is `DELETE`.
const PUT: u8 = 1;
const DELETE: u8 = 0;

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("{what} {}: {e}", path.display()))
}

/// One group read back from the log: its number and its writes.
#[derive(Debug, PartialEq)]
pub(crate) struct Group {
    pub(crate) number: u64,
    pub(crate) writes: Vec<ToApply>,
}

/// Encodes group `number`, made of `writes`, as a record (its checksum is
/// set when it is written, with the salt of the round it is written in).
pub(crate) fn encode(number: u64, writes: &[ToApply]) -> Vec<u8> {
    let payload_len: usize = writes
        .iter()
        .map(|(k, v)| 1 + 8 + k.len() + v.as_ref().map_or(0, |v| 8 + v.len()))
        .sum();
    let mut record = Vec::with_capacity(HEADER + payload_len);
    record.extend_from_slice(&MAGIC.to_le_bytes());
    record.extend_from_slice(&(payload_len as u64).to_le_bytes());
    record.extend_from_slice(&[0; 8]);
    record.extend_from_slice(&number.to_le_bytes());
    for (key, value) in writes {
        record.push(if value.is_some() { PUT } else { DELETE });
        record.extend_from_slice(&(key.len() as u64).to_le_bytes());
        record.extend_from_slice(key);
        if let Some(value) = value {
            record.extend_from_slice(&(value.len() as u64).to_le_bytes());
            record.extend_from_slice(value);
        }
    }
    record
}

/// The whole records at the start of `bytes`, each numbered one after the
/// one before; the first record that is torn, corrupt or out of sequence
/// ends the log.
pub(crate) fn decode(bytes: &[u8], salt: u64) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut at = ROUND;
    while let Some(header) = bytes.get(at..at + HEADER) {
        if header[..4] != MAGIC.to_le_bytes() {
            break;
        }
        let Ok(len) = usize::try_from(u64_at(header, 4)) else {
            break;
        };
        let Some(body) = (at + HEADER)
            .checked_add(len)
            .and_then(|end| bytes.get(at + SUMMED..end))
        else {
            break;
        };
        if checksum(body, salt) != u64_at(header, 12) {
            break;
        }
        let number = u64_at(body, 0);
        if groups
            .last()
            .is_some_and(|last| last.number.checked_add(1) != Some(number))
        {
            break;
        }
        let Some(writes) = payload(&body[8..]) else {
            break;
        };
        groups.push(Group { number, writes });
        at += HEADER + len;
    }
    groups
}

/// A record's writes (`None` if they do not parse, which a record whose
/// checksum matched never is).
fn payload(mut bytes: &[u8]) -> Option<Vec<ToApply>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = bytes.split_at_checked(n)?;
        *bytes = rest;
        Some(head)
    }
    fn length(bytes: &mut &[u8]) -> Option<usize> {
        usize::try_from(u64_at(take(bytes, 8)?, 0)).ok()
    }
    let mut writes = Vec::new();
    while let Some(&tag) = bytes.first() {
        bytes = &bytes[1..];
        let key_len = length(&mut bytes)?;
        let key = take(&mut bytes, key_len)?.to_vec();
        let value = match tag {
            PUT => {
                let value_len = length(&mut bytes)?;
                Some(Arc::new(take(&mut bytes, value_len)?.to_vec()))
            }
            DELETE => None,
            _ => return None,
        };
        writes.push((key, value));
    }
    Some(writes)
}

/// The little-endian `u64` at `at` in `bytes` (which holds it).
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut n = [0; 8];
    n.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(n)
}

/// Every group of the log's current round in `dir`: all written since the
/// tree's last checkpoint, in order. The file is synced first, so no group
/// read here (and applied to the tree) can be one a crash had left only in
/// the page cache. An error if the round begins after group `applied + 1`
/// (`applied`: the last group the tree says it holds: the groups between
/// are lost), or a record of it is damaged: its first record is not the
/// group its header names, or the records end before `applied` while the
/// round began at or before it (the tree holds a group whose record the
/// log does not give back).
pub(crate) fn round(dir: &Path, applied: u64) -> Result<Vec<Group>> {
    let path = dir.join(FILE);
    let mut bytes = Vec::new();
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(mut file) => {
            file.sync_data()
                .and_then(|()| file.read_to_end(&mut bytes))
                .map_err(|e| io_error("reading", &path, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("opening", &path, e)),
    }
    let Some((salt, first)) = parse_round(&bytes) else {
        return Ok(Vec::new());
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        key: FILE.into(),
        reason,
    };
    if first == 0 {
        return Err(corrupt(
            "the write-ahead log's round begins at group 0, but groups are numbered from 1: \
             its header is damaged"
                .into(),
        ));
    }
    if first > applied.saturating_add(1) {
        return Err(corrupt(format!(
            "the write-ahead log's round begins at group {first} but the store holds groups up \
             to {applied}: the groups between are lost"
        )));
    }
    let groups = decode(&bytes, salt);
    if groups.first().is_some_and(|g| g.number != first) {
        return Err(corrupt(format!(
            "the write-ahead log's round begins at group {first} but its first record is not \
             that group's: the record is damaged"
        )));
    }
    let last = groups.last().map_or(first - 1, |g| g.number);
    if last < applied {
        return Err(corrupt(format!(
            "the write-ahead log ends at group {last} but the store holds groups up to \
             {applied}: a record after it is damaged"
        )));
    }
    Ok(groups)
}

/// The number the tree holds under `key` (`None`: none).
pub(crate) fn number(tree: &sled::Db, key: &[u8]) -> Result<Option<u64>> {
    let mark = tree
        .get(key)
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    Ok(match mark {
        Some(v) if v.len() == 8 => {
            let mut n = [0; 8];
            n.copy_from_slice(&v);
            Some(u64::from_be_bytes(n))
        }
        _ => None,
    })
}

/// The log, open for writing records from its start.
pub(crate) struct Wal {
    file: File,
    path: std::path::PathBuf,
    /// Where the next record goes.
    at: u64,
    /// The current round's salt.
    salt: u64,
    /// How far the file is filled (records, then zeroes).
    filled: u64,
    /// Records written past the page cache, where the filesystem allows it.
    direct: Option<Direct>,
}

/// How the log writes its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writes {
    /// Past the page cache where the filesystem allows it (else buffered).
    Direct,
    /// Into the page cache, then `fdatasync` (what a filesystem that
    /// refuses direct writes gets; tests ask for it to cover that path).
    #[cfg(test)]
    Buffered,
}

/// The block size direct writes are aligned to, in the file and in memory
/// (a multiple of every common logical block size).
const BLOCK: u64 = 4096;

/// Largest write buffer the log keeps between records.
const KEPT_BUFFER: usize = 1 << 20;

/// The log's file opened with `O_DIRECT | O_DSYNC`: a record is written as
/// the whole blocks it spans, straight to the disk, and the write returns
/// once it is durable. A buffered write and an `fdatasync` cost more: the
/// sync writes the dirty page back first, then flushes.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct Direct {
    file: File,
    /// Bytes of the file from the start of the block that holds the next
    /// record up to it: what the next write must write again in front of it.
    tail: Vec<u8>,
    /// Memory for a write, a block larger than the largest so far, so that
    /// an aligned part of it can be used.
    buffer: Vec<u8>,
    /// Whether a direct write has succeeded: after one, a refused write is
    /// an error, not a filesystem without direct writes.
    wrote: bool,
    /// Tests: the next write is refused as a filesystem without direct
    /// writes refuses it.
    #[cfg(test)]
    refuse: bool,
}

impl Direct {
    /// Direct writes to `file`, whose block that holds the next record
    /// begins with `tail`.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn over(file: File, tail: Vec<u8>) -> Direct {
        Direct {
            file,
            tail,
            buffer: Vec::new(),
            wrote: false,
            #[cfg(test)]
            refuse: false,
        }
    }

    /// The log's file at `path` opened for direct, synchronous writes
    /// (`None` where the filesystem refuses them, as tmpfs may).
    fn open(path: &Path) -> Option<Direct> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::OpenOptionsExt;
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
                .open(path);
            let file = match opened {
                Ok(file) => file,
                Err(error) => {
                    tracing::info!(
                        path = %path.display(),
                        %error,
                        "the write-ahead log cannot be opened for direct writes; \
                         writing it through the page cache"
                    );
                    return None;
                }
            };
            Some(Direct::over(file, Vec::new()))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = path;
            None
        }
    }

    /// Writes `record` at `at` (where the last write ended, whose block's
    /// bytes before `at` are `self.tail`), as whole aligned blocks, and
    /// returns once it is durable.
    fn write(&mut self, record: &[u8], at: u64) -> std::io::Result<()> {
        let start = at - at % BLOCK;
        let prefix = self.tail.len();
        if start + prefix as u64 != at {
            // Writing would put wrong bytes in front of the record, over
            // records already durable.
            return Err(std::io::Error::other(format!(
                "the log's last block holds {prefix} bytes before {at}"
            )));
        }
        #[cfg(test)]
        if std::mem::take(&mut self.refuse) {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let len = prefix + record.len();
        let block = BLOCK as usize;
        let padded = len.div_ceil(block) * block;
        if self.buffer.len() < padded + block {
            self.buffer = vec![0; padded + block];
        }
        let offset = (block - self.buffer.as_ptr() as usize % block) % block;
        let Some(blocks) = self.buffer.get_mut(offset..offset + padded) else {
            return Err(std::io::Error::other("no aligned buffer"));
        };
        blocks[..prefix].copy_from_slice(&self.tail);
        blocks[prefix..len].copy_from_slice(record);
        // What follows in the last block is read as the end of the log.
        blocks[len..].fill(0);
        self.file.write_all_at(blocks, start)?;
        self.wrote = true;
        let end = at + record.len() as u64;
        let last = (end - end % BLOCK - start) as usize;
        self.tail.clear();
        self.tail.extend_from_slice(&blocks[last..len]);
        if self.buffer.len() > KEPT_BUFFER {
            self.buffer = Vec::new();
        }
        Ok(())
    }
}

impl Wal {
    /// Opens (or creates) the log in `dir` and begins a round whose first
    /// group will be `first`, writing records past the page cache where
    /// the filesystem allows it. Only call this once the tree holds,
    /// durably, every group the log holds: the round overwrites them.
    pub(crate) fn open(dir: &Path, first: u64) -> Result<Wal> {
        Wal::open_writing(dir, first, Writes::Direct)
    }

    /// [`Wal::open`], writing records as `writes` says.
    pub(crate) fn open_writing(dir: &Path, first: u64, writes: Writes) -> Result<Wal> {
        let path = dir.join(FILE);
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error("opening", &path, e))?;
        if !existed {
            file.sync_all()
                .and_then(|()| File::open(dir)?.sync_all())
                .map_err(|e| io_error("creating", &path, e))?;
        }
        let filled = file
            .metadata()
            .map_err(|e| io_error("reading", &path, e))?
            .len();
        let direct = match writes {
            Writes::Direct => Direct::open(&path),
            #[cfg(test)]
            Writes::Buffered => None,
        };
        let mut wal = Wal {
            file,
            path,
            at: ROUND as u64,
            salt: 0,
            filled: filled.max(ROUND as u64),
            direct,
        };
        wal.begin_round(first)?;
        Ok(wal)
    }

    /// How this log writes its records now.
    #[cfg(test)]
    fn writes(&self) -> Writes {
        if self.direct.is_some() {
            Writes::Direct
        } else {
            Writes::Buffered
        }
    }

    /// Begins a round, with a new salt, whose first group will be `first`:
    /// its header is durable at the start of the file before any record of
    /// it is written over the last round's, so a record never sits under
    /// another round's header.
    fn begin_round(&mut self, first: u64) -> Result<()> {
        self.salt = new_salt();
        let header = round_header(self.salt, first);
        self.file
            .write_all_at(&header, 0)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io_error("beginning a round of", &self.path, e))?;
        self.at = ROUND as u64;
        if let Some(direct) = &mut self.direct {
            direct.tail.clear();
            direct.tail.extend_from_slice(&header);
        }
        Ok(())
    }

    /// Writes `record`, group `number`, and makes it durable. If the log is
    /// full, calls `checkpoint` first (which must make every group written
    /// so far durable in the tree) and begins a new round, with a new salt,
    /// at the start of the file.
    pub(crate) fn append(
        &mut self,
        number: u64,
        record: &mut [u8],
        checkpoint: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let len = record.len() as u64;
        if self.at > ROUND as u64 && self.at + len > CAPACITY {
            checkpoint()?;
            self.begin_round(number)?;
        }
        seal(record, self.salt);
        let end = self.at + len;
        // The whole blocks a direct write covers.
        let covered = end.div_ceil(BLOCK) * BLOCK;
        if covered > self.filled {
            // Zeroes ahead, synced, so that the next records' writes need
            // neither change the file's size nor allocate its blocks: they
            // only write data.
            let to = covered.div_ceil(GROW) * GROW;
            let zeroes = vec![0; (to - self.filled) as usize];
            self.file
                .write_all_at(&zeroes, self.filled)
                .and_then(|()| self.file.sync_data())
                .map_err(|e| io_error("growing", &self.path, e))?;
            self.filled = to;
        }
        if let Some(direct) = &mut self.direct {
            match direct.write(record, self.at) {
                Ok(()) => {
                    self.at = end;
                    return Ok(());
                }
                // The filesystem took the file open for direct writes but
                // refuses them: buffered from now on.
                Err(e) if !direct.wrote && e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(
                        path = %self.path.display(),
                        error = %e,
                        "the write-ahead log's filesystem refuses direct writes; \
                         writing it through the page cache"
                    );
                    self.direct = None;
                }
                Err(e) => return Err(io_error("writing", &self.path, e)),
            }
        }
        self.file
            .write_all_at(record, self.at)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io_error("writing", &self.path, e))?;
        self.at = end;
        Ok(())
    }

    /// Ends the round: the log holds no group any more. Only call this once
    /// the tree holds every group durably (a clean close, after a
    /// checkpoint), so that the next open has nothing to apply again.
    pub(crate) fn clear(&mut self) -> Result<()> {
        self.file
            .write_all_at(&[0; ROUND], 0)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io_error("clearing", &self.path, e))?;
        if let Some(direct) = &mut self.direct {
            // The next direct write of the first block writes it cleared.
            if self.at < BLOCK {
                direct.tail[..ROUND].fill(0);
            }
        }
        Ok(())
    }

    /// Where the next record goes (for tests).
    #[cfg(test)]
    fn position(&self) -> u64 {
        self.at
    }
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").field("at", &self.at).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes_of(items: &[(&str, Option<&str>)]) -> Vec<ToApply> {
        items
            .iter()
            .map(|(k, v)| {
                (
                    k.as_bytes().to_vec(),
                    v.map(|v| Arc::new(v.as_bytes().to_vec())),
                )
            })
            .collect()
    }

    /// A directory for a log under the build's `target/` (on disk, where
    /// direct writes are taken, rather than a `/tmp` that may be tmpfs),
    /// or the system's temporary directory without one.
    fn test_dir() -> tempfile::TempDir {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
        tempfile::tempdir_in(&target)
            .or_else(|_| tempfile::tempdir())
            .unwrap()
    }

    /// The writes of each group of the round the log in `dir` holds.
    fn writes_in(dir: &Path) -> Vec<Vec<ToApply>> {
        let groups = round(dir, 0).unwrap();
        groups.into_iter().map(|g| g.writes).collect()
    }

    /// Appends `group` as group `number` to a log just begun (or reopened)
    /// in `dir`, and checks that the round holds it alone.
    fn append_alone(wal: &mut Wal, dir: &Path, number: u64, group: Vec<ToApply>) {
        wal.append(number, &mut encode(number, &group), || Ok(()))
            .unwrap();
        let groups = round(dir, number - 1).unwrap();
        assert_eq!(
            groups,
            [Group {
                number,
                writes: group
            }],
            "{:?}",
            wal.writes()
        );
    }

    /// Whether the filesystem of `dir` takes direct writes.
    fn takes_direct(dir: &Path) -> bool {
        std::fs::write(dir.join("probe"), [0; 8]).unwrap();
        Direct::open(&dir.join("probe")).is_some()
    }

    /// A record whose write the filesystem refuses before any direct
    /// write succeeded is written through the page cache, and so is every
    /// record after it; once a direct write succeeded, a refused one is an
    /// error (the committer stops), not a reason to change how it writes.
    #[test]
    fn a_refused_direct_write_falls_back_only_before_the_first() {
        // A log opened for direct writes; where the filesystem refuses
        // them at open, one whose "direct" writes go through the page
        // cache, which is enough to follow what a refusal does.
        let open = |dir: &Path| {
            let mut wal = Wal::open(dir, 1).unwrap();
            if wal.direct.is_none() {
                let path = dir.join(FILE);
                let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                let tail = std::fs::read(&path).unwrap()[..ROUND].to_vec();
                wal.direct = Some(Direct::over(file, tail));
            }
            wal
        };
        let dir = test_dir();
        let mut wal = open(dir.path());
        assert_eq!(wal.writes(), Writes::Direct);
        if let Some(direct) = &mut wal.direct {
            direct.refuse = true;
        }
        let first = writes_of(&[("a", Some("1"))]);
        wal.append(1, &mut encode(1, &first), || Ok(())).unwrap();
        assert_eq!(wal.writes(), Writes::Buffered);
        let second = writes_of(&[("b", Some("2"))]);
        wal.append(2, &mut encode(2, &second), || Ok(())).unwrap();
        assert_eq!(writes_in(dir.path()), [first.clone(), second]);

        let dir = test_dir();
        let mut wal = open(dir.path());
        wal.append(1, &mut encode(1, &first), || Ok(())).unwrap();
        if let Some(direct) = &mut wal.direct {
            direct.refuse = true;
        }
        let refused = wal.append(2, &mut encode(2, &first), || Ok(()));
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(wal.writes(), Writes::Direct);
        // The record it could not write is not in the log, and the next
        // is written where it would have gone.
        assert_eq!(round(dir.path(), 0).unwrap().len(), 1);
        wal.append(2, &mut encode(2, &first), || Ok(())).unwrap();
        assert_eq!(round(dir.path(), 0).unwrap().len(), 2);
    }

    #[test]
    fn records_round_trip_and_the_first_bad_one_ends_the_log() {
        let a = writes_of(&[("a", Some("1")), ("b", None)]);
        let b = writes_of(&[("c", Some("")), ("d", Some("4"))]);
        let sealed = |number, writes: &[ToApply], salt| {
            let mut record = encode(number, writes);
            seal(&mut record, salt);
            record
        };
        // A round's header, then its records.
        let log_of = |records: &[Vec<u8>]| {
            let mut log = round_header(1, 7).to_vec();
            for record in records {
                log.extend_from_slice(record);
            }
            log
        };
        let second = sealed(8, &b, 1);
        let log = log_of(&[sealed(7, &a, 1), second.clone()]);
        assert_eq!(parse_round(&log), Some((1, 7)));
        let groups = decode(&log, 1);
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[0].number, &groups[0].writes), (7, &a));
        assert_eq!((groups[1].number, &groups[1].writes), (8, &b));

        // A torn tail: the second record cut anywhere is not read.
        for cut in 1..second.len() {
            let torn = &log[..log.len() - cut];
            assert_eq!(decode(torn, 1).len(), 1, "cut {cut}");
        }
        // A flipped byte anywhere in the second record ends the log there.
        for i in 0..second.len() {
            let mut bad = log.clone();
            let at = log.len() - second.len() + i;
            bad[at] ^= 0x20;
            assert_eq!(decode(&bad, 1).len(), 1, "byte {i}");
        }
        // A flipped byte in the round's header: no round.
        for i in 0..ROUND {
            let mut bad = log.clone();
            bad[i] ^= 0x20;
            assert_eq!(parse_round(&bad), None, "byte {i}");
        }
        // A record out of sequence (left by an earlier round of the file)
        // ends it too, and zeroes end it.
        let stale = log_of(&[sealed(7, &a, 1), sealed(3, &b, 1)]);
        assert_eq!(decode(&stale, 1).len(), 1);
        let zeroed = log_of(&[sealed(7, &a, 1), vec![0; 64]]);
        assert_eq!(decode(&zeroed, 1).len(), 1);
        // A record of another round's salt, even numbered next, ends it.
        let salted = log_of(&[sealed(7, &a, 1), sealed(8, &b, 2)]);
        assert_eq!(decode(&salted, 1).len(), 1);
        // Numbers at the end of their range end the log, not wrap.
        let wrapped = log_of(&[sealed(u64::MAX, &a, 1), sealed(0, &b, 1)]);
        assert_eq!(decode(&wrapped, 1).len(), 1);
        // A round said to begin at group 0, which no group is, is refused
        // rather than read (whatever the tree holds).
        let dir = test_dir();
        std::fs::write(dir.path().join(FILE), round_header(1, 0)).unwrap();
        for applied in [0, u64::MAX] {
            let refused = round(dir.path(), applied).unwrap_err();
            assert!(refused.to_string().contains("damaged"), "{refused}");
        }
        // A tree that says it holds the last group there can be: the log
        // does not give it back, so a record is damaged (not a wrapped sum).
        std::fs::write(dir.path().join(FILE), round_header(1, 1)).unwrap();
        let refused = round(dir.path(), u64::MAX).unwrap_err();
        assert!(refused.to_string().contains("damaged"), "{refused}");
    }

    #[test]
    fn rounds_begin_after_checkpoints_and_damage_is_refused() {
        for writes in [Writes::Direct, Writes::Buffered] {
            rounds_begin_after_checkpoints_and_damage_is_refused_writing(writes);
        }
    }

    /// Records of every size, across block boundaries, read back whole
    /// however the log writes them, in a round and the next.
    #[test]
    fn records_of_any_size_read_back_written_either_way() {
        for writes in [Writes::Direct, Writes::Buffered] {
            let dir = test_dir();
            let mut wal = Wal::open_writing(dir.path(), 1, writes).unwrap();
            let mut expected = Vec::new();
            let mut size = 1usize;
            for number in 1..=200u64 {
                // Sizes from a few bytes to several blocks.
                size = (size * 7 + 13) % 9_000;
                let value = vec![number as u8; size];
                let group = vec![(format!("k{number}").into_bytes(), Some(Arc::new(value)))];
                wal.append(number, &mut encode(number, &group), || Ok(()))
                    .unwrap();
                expected.push(group);
                if number % 50 == 0 {
                    let read = writes_in(dir.path());
                    assert_eq!(read, expected, "{writes:?}, after group {number}");
                }
            }
            // A record that ends on a block's edge, and one that begins on
            // it (no bytes written again in front of it).
            let room = BLOCK - wal.position() % BLOCK;
            for number in [201, 202] {
                // Magic, length, checksum, group, tag, two lengths, the key.
                let overhead = (HEADER + 1 + 8 + 8 + 4) as u64;
                let value = vec![7; (room + BLOCK - overhead) as usize];
                let group = vec![(b"edge".to_vec(), Some(Arc::new(value)))];
                wal.append(number, &mut encode(number, &group), || Ok(()))
                    .unwrap();
                let edge = if number == 201 { 0 } else { room % BLOCK };
                assert_eq!(wal.position() % BLOCK, edge, "{writes:?}");
                expected.push(group);
            }
            let read = writes_in(dir.path());
            assert_eq!(read, expected, "{writes:?}, records on a block's edge");
            if writes == Writes::Direct && takes_direct(dir.path()) {
                assert_eq!(
                    wal.writes(),
                    Writes::Direct,
                    "the filesystem took the file open for direct writes and wrote them"
                );
            }
            // A new round, begun where the last one's records are, reads
            // only its own.
            wal.begin_round(203).unwrap();
            append_alone(
                &mut wal,
                dir.path(),
                203,
                writes_of(&[("after", Some("the round"))]),
            );
            // Cleared, nothing is read; a closed and reopened log begins again.
            wal.clear().unwrap();
            assert!(round(dir.path(), 0).unwrap().is_empty(), "{writes:?}");
            drop(wal);
            let mut wal = Wal::open_writing(dir.path(), 204, writes).unwrap();
            append_alone(&mut wal, dir.path(), 204, writes_of(&[("reopened", None)]));
        }
    }

    fn rounds_begin_after_checkpoints_and_damage_is_refused_writing(writes: Writes) {
        let dir = test_dir();
        let mut wal = Wal::open_writing(dir.path(), 1, writes).unwrap();
        let numbers = |applied| -> Vec<u64> {
            round(dir.path(), applied)
                .unwrap()
                .iter()
                .map(|g| g.number)
                .collect()
        };
        // A round begun and empty.
        assert!(numbers(0).is_empty());
        let big = writes_of(&[("k", Some(&"x".repeat((CAPACITY / 3) as usize - 100)))]);
        let mut checkpoints = 0;
        for number in 1..=3 {
            wal.append(number, &mut encode(number, &big), || {
                checkpoints += 1;
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(checkpoints, 0);
        assert_eq!(numbers(0), [1, 2, 3]);
        assert_eq!(numbers(2), [1, 2, 3]);
        // The fourth does not fit: a checkpoint, then a new round begins
        // with it, and the first round's records after it are not read.
        wal.append(4, &mut encode(4, &big), || {
            checkpoints += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(checkpoints, 1);
        assert!(wal.position() < CAPACITY);
        assert_eq!(numbers(3), [4]);
        // A tree that holds fewer groups than the round's first is missing
        // some: refused.
        let refused = round(dir.path(), 2).unwrap_err();
        assert!(refused.to_string().contains("lost"), "{refused}");
        wal.append(5, &mut encode(5, &big), || Ok(())).unwrap();
        wal.append(6, &mut encode(6, &big), || Ok(())).unwrap();
        // A tree that holds a group the log does not give back: a record
        // is damaged.
        let damaged = round(dir.path(), 7).unwrap_err();
        assert!(damaged.to_string().contains("damaged"), "{damaged}");
        // A checkpoint that fails writes no record.
        assert!(
            wal.append(7, &mut encode(7, &big), || Err(StoreError::Closed))
                .is_err()
        );
        assert_eq!(numbers(3), [4, 5, 6]);
        // The round's first record damaged, while the tree holds it.
        {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join(FILE))
                .unwrap();
            file.write_all_at(&[0xff], (ROUND + HEADER + 3) as u64)
                .unwrap();
        }
        let damaged = round(dir.path(), 4).unwrap_err();
        assert!(damaged.to_string().contains("damaged"), "{damaged}");
        // While the tree does not hold it, it is a torn, never acknowledged
        // record.
        assert!(numbers(3).is_empty());
        // A clean close ends the round.
        wal.clear().unwrap();
        assert!(numbers(0).is_empty());
    }
}
