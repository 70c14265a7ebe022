//! A run's journal as the store keeps it.
//!
//! Each key `journal/<run>/<seq>` holds either one entry (a JSON object)
//! or, since entries a slice makes between two of its commits are written
//! together, a run of entries with consecutive numbers from `seq` on (a
//! JSON array of them). A finished `hello-world` run's start and end are
//! one key instead of two, and a task's journaled host calls join the
//! commit that follows them: fewer keys for the log's records and for
//! sled's tree. Readers see single entries either way: a store written
//! before runs of entries existed reads as it did.
//!
//! The commit that finishes a run keeps the entries it writes in the run's
//! record ([`Run::journal`]) instead of under a key of their own, when they
//! are at most [`IN_RECORD_LIMIT`] bytes: a short run (its attempt's start
//! and end, written together) then writes one key, its record, where it
//! wrote two. Entries written after the run finished (those a slice held
//! when a cancel refused its end, a cancel hook's calls) go under keys as
//! before; [`Store::journal`](crate::Store::journal) and
//! [`Store::last_journal_seq`](crate::Store::last_journal_seq) read the
//! record's entries with the keys, in the order of their numbers. The
//! record of a run that has not finished is not read for them (its status
//! alone is).

use crate::backend::Op;
use crate::layout::JOURNAL;
use crate::records::{decode, encode, key};
use crate::{Batch, Result};
use kiln_types::{JournalRecord, Run, RunId};
use std::borrow::Cow;

/// The prefix of a run's journal keys.
pub(crate) fn journal_prefix(run: &RunId) -> Vec<u8> {
    let mut k = key(JOURNAL, run.as_str().as_bytes());
    k.push(b'/');
    k
}

/// The key of a run's journal entry `seq` (or of a run of entries from it).
fn journal_key(run: &RunId, seq: u64) -> Vec<u8> {
    let mut k = journal_prefix(run);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// A journal entry encoded as the store keeps it, not yet in a batch: a
/// writer holds entries until its next commit, then writes them together
/// ([`Batch::append_journal_run`]).
#[derive(Debug, Clone)]
pub struct EncodedEntry {
    seq: u64,
    bytes: Vec<u8>,
}

impl EncodedEntry {
    /// Encodes `record`.
    pub fn new(record: &JournalRecord) -> Result<Self> {
        Ok(EncodedEntry {
            seq: record.seq,
            bytes: encode(record)?,
        })
    }

    /// Its number in the run's journal.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Its size as stored alone, in bytes (what a live slice counts against
    /// the run's journal budget; a key holding several entries adds a byte
    /// each, counted when the next slice reads the journal).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it is empty (it never is: an entry encodes to an object).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl Batch {
    /// Appends a journal entry.
    pub fn append_journal(&mut self, run: &RunId, record: &JournalRecord) -> &mut Self {
        self.append_journal_sized(run, record);
        self
    }

    /// Appends an entry to a run's journal; returns its size as stored, in
    /// bytes (0 if it could not be encoded, which fails the commit).
    pub fn append_journal_sized(&mut self, run: &RunId, record: &JournalRecord) -> u64 {
        // Only the last journal write of a batch can go into a record.
        self.journal_put = None;
        match encode(record) {
            Ok(value) => {
                let size = value.len() as u64;
                self.ops.push(Op::Put(journal_key(run, record.seq), value));
                size
            }
            Err(e) => {
                self.error = Some(e);
                0
            }
        }
    }

    /// Appends entries with consecutive numbers to a run's journal, as one
    /// key when there are several (see the module's docs). Entries out of
    /// order or with a gap are written a key each.
    pub fn append_journal_run(&mut self, run: &RunId, entries: Vec<EncodedEntry>) -> &mut Self {
        let consecutive = entries.windows(2).all(|w| w[1].seq == w[0].seq + 1);
        let Some(first) = entries.first().map(|e| e.seq) else {
            return self;
        };
        if !consecutive {
            self.journal_put = None;
            for entry in entries {
                self.ops
                    .push(Op::Put(journal_key(run, entry.seq), entry.bytes));
            }
            return self;
        }
        let value = match <[EncodedEntry; 1]>::try_from(entries) {
            Ok([one]) => one.bytes,
            Err(entries) => {
                let size = entries.iter().map(|e| e.bytes.len() + 1).sum::<usize>() + 1;
                let mut value = Vec::with_capacity(size);
                value.push(b'[');
                for (i, entry) in entries.iter().enumerate() {
                    if i > 0 {
                        value.push(b',');
                    }
                    value.extend_from_slice(&entry.bytes);
                }
                value.push(b']');
                value
            }
        };
        self.journal_put = Some((run.clone(), self.ops.len()));
        self.ops.push(Op::Put(journal_key(run, first), value));
        self
    }
}

/// The most bytes of journal entries a run's record takes in; more are
/// written under a key of their own, so a record stays small.
pub const IN_RECORD_LIMIT: usize = 2048;

/// `run` as [`Batch::put_run`] writes it: if it has finished and the
/// batch's last journal key, put by [`Batch::append_journal_run`], is one
/// of its own of at most [`IN_RECORD_LIMIT`] bytes, with those entries in
/// [`Run::journal`], the key taken out of the batch. Otherwise as it is.
pub(crate) fn with_journal_taken<'a>(run: &'a Run, batch: &mut Batch) -> Cow<'a, Run> {
    if !run.status.is_final() || run.journal.is_some() {
        return Cow::Borrowed(run);
    }
    let Some((journaled, at)) = batch.journal_put.take() else {
        return Cow::Borrowed(run);
    };
    let fits = |k: &[u8], v: &[u8]| {
        journaled == run.id && k.starts_with(&journal_prefix(&run.id)) && v.len() <= IN_RECORD_LIMIT
    };
    let text = match batch.ops.get_mut(at) {
        Some(Op::Put(k, v)) if fits(k, v) => match String::from_utf8(std::mem::take(v)) {
            Ok(text) => Some(text),
            Err(not_text) => {
                *v = not_text.into_bytes();
                None
            }
        },
        _ => None,
    };
    let Some(text) = text else {
        batch.journal_put = Some((journaled, at));
        return Cow::Borrowed(run);
    };
    batch.ops.remove(at);
    let mut run = run.clone();
    run.journal = Some(text);
    Cow::Owned(run)
}

/// The entries a journal key holds: one, or a run of them.
pub(crate) fn entries_of(key: &[u8], value: &[u8]) -> Result<Vec<JournalRecord>> {
    if value.first() == Some(&b'[') {
        decode(key, value)
    } else {
        Ok(vec![decode(key, value)?])
    }
}

/// The number of the last entry a journal key holds, read from its key when
/// it holds one entry.
pub(crate) fn last_seq_of(key: &[u8], value: &[u8]) -> Result<u64> {
    if value.first() == Some(&b'[') {
        let entries: Vec<JournalRecord> = decode(key, value)?;
        if let Some(last) = entries.last() {
            return Ok(last.seq);
        }
    }
    Ok(key
        .get(key.len().saturating_sub(8)..)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}
