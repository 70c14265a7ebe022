//! Appending to a run's journal.

use super::budgets::{Budgets, Usage};
use kiln_sandbox::JournalSink;
use kiln_store::{Batch, EncodedEntry, Store};
use kiln_types::{HostCall, JournalEntry, JournalRecord, RunId, Timestamp};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Appends entries to one run's journal, numbering them. An entry made
/// without a commit of its own is held, for about [`HOLD_FOR`], until the
/// slice's next commit and written with it, with the entries held before
/// it, as one key (see
/// [`Batch::append_journal_run`]): every commit of a slice that journals
/// takes what the writer holds first, so entries become durable in their
/// order and before anything the slice commits after them. Whoever must not
/// go on before an entry is durable awaits a commit that holds it.
#[derive(Clone)]
pub(crate) struct JournalWriter {
    next: Arc<AtomicU64>,
    /// What the run has used of its budgets, this writer's entries included.
    usage: Arc<Usage>,
    budgets: Budgets,
    /// Entries made since the last commit that journaled, shared by the
    /// writer's clones (the attempt's host calls hold one).
    held: Arc<Held>,
}

/// How long a writer holds entries, from the first, before it leaves them
/// to the next commit made in the store: a slice that calls the host in a
/// loop shows its journal as it goes, as the API and the dashboard read it.
const HOLD_FOR: Duration = Duration::from_millis(10);

/// How many entries a writer holds at most before it leaves them to the next
/// commit made in the store.
const HOLD_AT_MOST: usize = 256;

/// A writer's entries not yet in a commit.
struct Held {
    store: Store,
    run: RunId,
    entries: Mutex<Entries>,
}

/// Entries held, and when the first of them was.
#[derive(Default)]
struct Entries {
    list: Vec<EncodedEntry>,
    since: Option<Instant>,
    /// Whether the writer holds nothing (see [`JournalWriter::hold_none`]).
    never: bool,
}

impl Entries {
    fn push(&mut self, entry: EncodedEntry) {
        self.since.get_or_insert_with(Instant::now);
        self.list.push(entry);
    }

    fn take(&mut self) -> Vec<EncodedEntry> {
        self.since = None;
        std::mem::take(&mut self.list)
    }

    /// Whether they have been held long enough, or are enough of them.
    fn due(&self) -> bool {
        self.never
            || self.list.len() >= HOLD_AT_MOST
            || self.since.is_some_and(|s| s.elapsed() >= HOLD_FOR)
    }
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leaves what it holds to the next commit made in the store.
    fn defer(&self) {
        let mut held = self.lock();
        self.defer_these(held.take());
    }

    /// Leaves `entries` to the next commit made in the store; called with
    /// the entries' lock held, so that no commit of the writer's takes later
    /// entries before them.
    fn defer_these(&self, entries: Vec<EncodedEntry>) {
        if !entries.is_empty() {
            let mut batch = Batch::default();
            batch.append_journal_run(&self.run, entries);
            self.store.defer(batch);
        }
    }
}

impl Drop for Held {
    /// A slice that ends without another commit of its journal leaves what
    /// it held to the next commit made in the store, as entries were left
    /// before writers held them.
    fn drop(&mut self) {
        self.defer();
    }
}

impl JournalWriter {
    /// A writer whose next entry is number `next`, for a run that has used
    /// `usage` of its `budgets` so far.
    pub(crate) fn new(store: Store, run: RunId, next: u64, usage: Usage, budgets: Budgets) -> Self {
        JournalWriter {
            held: Arc::new(Held {
                store,
                run,
                entries: Mutex::new(Entries::default()),
            }),
            next: Arc::new(AtomicU64::new(next)),
            usage: Arc::new(usage),
            budgets,
        }
    }

    /// What the run has used of its budgets.
    pub(crate) fn usage(&self) -> &Usage {
        &self.usage
    }

    /// The budgets the run has.
    pub(crate) fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// `Err` naming the limit once the run's journal is past its budget.
    pub(crate) fn check(&self) -> Result<(), String> {
        self.usage.check_journal(&self.budgets)
    }

    /// What the run's journal holds and may hold, for a guest on another
    /// node to check its host calls against.
    pub(crate) fn room(&self) -> crate::cluster::Room {
        let (entries, bytes) = self.usage.journal();
        crate::cluster::Room {
            entries,
            bytes,
            max_entries: self.budgets.journal_entries,
            max_bytes: self.budgets.journal_bytes,
        }
    }

    /// The number of the last entry written (0 if none).
    pub(crate) fn last_seq(&self) -> u64 {
        self.next.load(Ordering::SeqCst) - 1
    }

    fn record(&self, entry: JournalEntry) -> JournalRecord {
        JournalRecord {
            seq: self.next.fetch_add(1, Ordering::SeqCst),
            at: Timestamp::now(),
            entry,
        }
    }

    /// Appends an entry without a commit of its own: the writer holds it
    /// until the slice's next commit that journals (an entry added with
    /// [`JournalWriter::append_to`], or [`JournalWriter::take_held`]), which
    /// writes it first. Entries are left to the next commit made in the
    /// store instead (see [`Store::defer`]), as every entry was before
    /// writers held them, once held for [`HOLD_FOR`] (checked as the next
    /// entry comes and at the guest's epoch ticks, every 10 ms) or
    /// [`HOLD_AT_MOST`] of them, before a warm wait, before a host call
    /// that commits on its own, and for a guest on another node.
    /// Whatever must not go on before the entry is durable awaits a commit
    /// that holds it, or one made after it was left. The run's own end, wait
    /// or fetch always journals after it.
    pub(crate) fn append(&self, entry: JournalEntry) {
        let mut held = self.held.lock();
        match self.encode(entry) {
            Ok(encoded) => {
                held.push(encoded);
                if held.due() {
                    self.held.defer_these(held.take());
                }
            }
            Err(record) => {
                // What is held goes on; the entry fails a commit of its own.
                self.held.defer_these(held.take());
                let mut failing = Batch::default();
                self.append_failing(&mut failing, &record);
                self.store().defer(failing);
            }
        }
    }

    /// Adds an entry to a batch the caller commits, after the entries the
    /// writer holds.
    pub(crate) fn append_to(&self, batch: &mut Batch, entry: JournalEntry) {
        let mut held = self.held.lock();
        let mut entries = held.take();
        match self.encode(entry) {
            Ok(encoded) => {
                entries.push(encoded);
                batch.append_journal_run(&self.held.run, entries);
            }
            Err(record) => {
                batch.append_journal_run(&self.held.run, entries);
                self.append_failing(batch, &record);
            }
        }
    }

    /// Numbers and encodes `entry`, counting it against the run's budgets;
    /// the record, if it cannot be encoded. Called with the entries' lock
    /// held, so that entries are held in their order.
    fn encode(&self, entry: JournalEntry) -> Result<EncodedEntry, Box<JournalRecord>> {
        let record = self.record(entry);
        match EncodedEntry::new(&record) {
            Ok(encoded) => {
                self.usage.count(&record.entry, encoded.len() as u64);
                Ok(encoded)
            }
            Err(_) => Err(Box::new(record)),
        }
    }

    /// Adds a record that cannot be encoded to `batch`, which fails the
    /// batch's commit, as such an entry did before writers held entries.
    fn append_failing(&self, batch: &mut Batch, record: &JournalRecord) {
        let bytes = batch.append_journal_sized(&self.held.run, record);
        self.usage.count(&record.entry, bytes);
    }

    /// Adds the entries the writer holds to a batch the caller commits
    /// (nothing if it holds none).
    pub(crate) fn take_held(&self, batch: &mut Batch) {
        batch.append_journal_run(&self.held.run, self.held.lock().take());
    }

    /// Leaves the entries the writer holds to the next commit made in the
    /// store (see [`Store::defer`]).
    pub(crate) fn defer_held(&self) {
        self.held.defer();
    }

    /// As [`JournalWriter::defer_held`], once entries have been held for
    /// [`HOLD_FOR`].
    pub(crate) fn defer_due(&self) {
        let mut held = self.held.lock();
        if held.due() {
            self.held.defer_these(held.take());
        }
    }

    /// Holds no entry from now on: each is left to the next commit made in
    /// the store at once. For a guest on another node, whose epoch ticks
    /// this process does not see.
    pub(crate) fn hold_none(&self) {
        self.held.lock().never = true;
        self.held.defer();
    }

    /// As [`JournalWriter::append_to`], for a commit the engine may refuse
    /// (an attempt's end, a suspension): returns a copy of the entries the
    /// writer held, which [`JournalWriter::defer_entries`] leaves to the
    /// next commit if the engine refused it.
    pub(crate) fn append_ending(
        &self,
        batch: &mut Batch,
        entry: JournalEntry,
    ) -> Vec<EncodedEntry> {
        let held = self.held.lock().list.clone();
        self.append_to(batch, entry);
        held
    }

    /// Leaves `entries`, taken by [`JournalWriter::append_ending`] for a
    /// commit that was refused, to the next commit made in the store,
    /// before anything held since.
    pub(crate) fn defer_entries(&self, entries: Vec<EncodedEntry>) {
        let mut held = self.held.lock();
        let mut all = entries;
        all.extend(held.take());
        self.held.defer_these(all);
    }

    fn store(&self) -> &Store {
        &self.held.store
    }
}

impl JournalSink for JournalWriter {
    fn record(&mut self, call: HostCall) {
        self.append(JournalEntry::HostCall(call));
    }

    fn tick(&mut self) {
        self.defer_due();
    }

    fn budget(&self) -> Result<(), String> {
        self.check()
    }
}
