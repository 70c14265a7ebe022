//! Appending to a run's journal.

use super::budgets::{Budgets, Usage};
use kiln_sandbox::JournalSink;
use kiln_store::{Batch, Store};
use kiln_types::{HostCall, JournalEntry, JournalRecord, RunId, Timestamp};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Appends entries to one run's journal, numbering them. Entries are handed
/// to the group committer as they are made, so they become durable in order
/// with everything else the run commits; whoever must not go on before an
/// entry is durable awaits the commit.
#[derive(Clone)]
pub(crate) struct JournalWriter {
    store: Store,
    run: RunId,
    next: Arc<AtomicU64>,
    /// What the run has used of its budgets, this writer's entries included.
    usage: Arc<Usage>,
    budgets: Budgets,
}

impl JournalWriter {
    /// A writer whose next entry is number `next`, for a run that has used
    /// `usage` of its `budgets` so far.
    pub(crate) fn new(store: Store, run: RunId, next: u64, usage: Usage, budgets: Budgets) -> Self {
        JournalWriter {
            store,
            run,
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

    /// Appends an entry without a commit of its own: it joins the next
    /// commit made in the store (see [`Store::defer`]), keeping its place
    /// in the order of commits. Whatever must not go on before the entry is
    /// durable awaits a commit made after it (an empty one will do);
    /// [`Store::settled`] is not enough, since it waits only for commits
    /// already made. The run's own end, wait or fetch always commits after
    /// it.
    pub(crate) fn append(&self, entry: JournalEntry) {
        let mut batch = Batch::default();
        self.append_to(&mut batch, entry);
        self.store.defer(batch);
    }

    /// Adds an entry to a batch the caller commits.
    pub(crate) fn append_to(&self, batch: &mut Batch, entry: JournalEntry) {
        let record = self.record(entry);
        let bytes = batch.append_journal_sized(&self.run, &record);
        self.usage.count(&record.entry, bytes);
    }
}

impl JournalSink for JournalWriter {
    fn record(&mut self, call: HostCall) {
        self.append(JournalEntry::HostCall(call));
    }

    fn budget(&self) -> Result<(), String> {
        self.check()
    }
}
