//! The replay cursor of an attempt: where a slice resumes in the attempt's
//! journal, which waits are pending, how a step's waits are checked
//! against the journal, and what the host does with a guest at rest.
//!
//! The server's driver runs the guest (wasmtime) and performs what the
//! cursor decides; the rules are here, free of I/O.

use kiln_types::{
    FetchRequest, HostCall, JournalEntry, JournalRecord, Timestamp, WaitOn, WaitRecord, WakeValue,
};
use std::collections::{BTreeMap, VecDeque};

/// The entries of attempt `attempt` in a run's journal (after its
/// `AttemptStarted`), or `None` if the attempt has not started.
pub fn attempt_records(
    mut records: Vec<JournalRecord>,
    attempt: u32,
) -> Option<Vec<JournalRecord>> {
    let started = records.iter().rposition(
        |r| matches!(r.entry, JournalEntry::AttemptStarted { attempt: a, .. } if a == attempt),
    )?;
    Some(records.split_off(started + 1))
}

/// Where a slice of a started attempt resumes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resume {
    /// The entries after the restore point, to replay (suspension markers
    /// and the log calls older journals hold left out).
    pub replay: VecDeque<JournalEntry>,
    /// The cursor at the restore point.
    pub cursor: Cursor,
    /// Log calls the attempt had made at the restore point.
    pub restored_log_calls: u64,
    /// Log calls the attempt had made at its last suspension (their lines
    /// are saved; a replay keeps none of them again).
    pub saved_log_calls: u64,
}

impl Resume {
    /// Resumes from the snapshot `layer` taken at journal entry `seq`, or
    /// from the attempt's start with `None`.
    pub fn new(records: Vec<JournalRecord>, snapshot: Option<(u32, u64)>) -> Self {
        let log_calls = |wanted: Option<u32>| {
            records
                .iter()
                .rev()
                .find_map(|r| match r.entry {
                    JournalEntry::Suspended {
                        layer, log_calls, ..
                    } if wanted.is_none_or(|w| w == layer) => Some(log_calls),
                    _ => None,
                })
                .unwrap_or(0)
        };
        let saved_log_calls = log_calls(None);
        let restored_log_calls = snapshot.map_or(0, |(layer, _)| log_calls(Some(layer)));
        let snapshot_seq = snapshot.map_or(0, |(_, seq)| seq);
        let mut resume = Resume {
            restored_log_calls,
            saved_log_calls,
            ..Resume::default()
        };
        for record in records {
            if record.seq <= snapshot_seq {
                // In the snapshot already: only the pending waits matter.
                match record.entry {
                    JournalEntry::Waits { waits } => resume.cursor.armed(waits),
                    JournalEntry::Wake { id, .. } => {
                        resume.cursor.woke(id);
                    }
                    _ => {}
                }
            } else if !matches!(
                record.entry,
                JournalEntry::Suspended { .. } | JournalEntry::HostCall(HostCall::Log { .. })
            ) {
                resume.replay.push_back(record.entry);
            }
        }
        resume
    }
}

/// A wait as the guest asked for it, before the host makes its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitRequest {
    /// A timer after this many milliseconds.
    Duration(u64),
    /// A timer at this time.
    Until(Timestamp),
    /// A child run.
    Run(String),
    /// A batch.
    Batch(String),
    /// A wait token.
    Token(String),
    /// A durable fetch.
    Fetch {
        /// Its method.
        method: String,
        /// Its URL.
        url: String,
    },
}

/// What a guest's step with new waits came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stepped {
    /// Nothing new to journal: no new waits, or the journal holds them
    /// (they are pending now).
    Known,
    /// Live: the host makes their records, journals them and hands them to
    /// [`Cursor::armed`].
    Live,
    /// The waits are not the journaled ones.
    Diverged(String),
}

/// What to do with a guest at rest.
#[derive(Debug, Clone, PartialEq)]
pub enum Rest {
    /// Replaying: resume the guest with this journaled wake.
    Wake {
        /// The wait.
        id: u64,
        /// Its value.
        value: WakeValue,
    },
    /// The journal and the guest disagree: the attempt fails.
    Diverged(String),
    /// The journal wakes a wait that is not pending: it is corrupt.
    Broken(String),
    /// Perform this fetch, journal its response, resume the guest with it.
    Fetch {
        /// The wait.
        id: u64,
        /// The request.
        request: FetchRequest,
    },
    /// Sleep until `due` with the guest warm (a short timer).
    Warm {
        /// The wait.
        id: u64,
        /// When it is due.
        due: Timestamp,
    },
    /// Snapshot the guest and suspend the run.
    Suspend,
    /// The guest waits on nothing that can wake it.
    Deadlock,
}

/// The waits of an attempt that are pending.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cursor {
    pending: BTreeMap<u64, WaitRecord>,
}

impl Cursor {
    /// The cursor at the end of an attempt's journal entries: the waits
    /// journaled and not woken.
    pub fn at_end(records: &[JournalRecord]) -> Self {
        let mut cursor = Cursor::default();
        for record in records {
            match &record.entry {
                JournalEntry::Waits { waits } => cursor.armed(waits.clone()),
                JournalEntry::Wake { id, .. } => {
                    cursor.woke(*id);
                }
                _ => {}
            }
        }
        cursor
    }

    /// The pending waits, by id.
    pub fn pending(&self) -> impl Iterator<Item = &WaitRecord> {
        self.pending.values()
    }

    /// Waits journaled (live or on replay) are pending.
    pub fn armed(&mut self, waits: Vec<WaitRecord>) {
        self.pending.extend(waits.into_iter().map(|w| (w.id, w)));
    }

    /// A wait woke; it is no longer pending.
    pub fn woke(&mut self, id: u64) -> Option<WaitRecord> {
        self.pending.remove(&id)
    }

    /// The guest stepped, waiting on `requested` new waits; `replay` is what
    /// is left of the journal to replay.
    pub fn waits(
        &mut self,
        replay: &mut VecDeque<JournalEntry>,
        requested: &[(u64, WaitRequest)],
    ) -> Stepped {
        if requested.is_empty() {
            return Stepped::Known;
        }
        match replay.front() {
            Some(JournalEntry::Waits { waits }) => {
                if let Some(message) = compare(requested, waits) {
                    return Stepped::Diverged(message);
                }
                if let Some(JournalEntry::Waits { waits }) = replay.pop_front() {
                    self.armed(waits);
                }
                Stepped::Known
            }
            Some(other) => Stepped::Diverged(format!(
                "non-determinism: on replay the task waited where its journal has {}",
                other.describe()
            )),
            None => Stepped::Live,
        }
    }

    /// The guest finished: an error if the journal holds more.
    pub fn finished(&self, replay: &VecDeque<JournalEntry>) -> Option<String> {
        replay.front().map(|next| {
            format!(
                "non-determinism: on replay the task finished where its journal has {}",
                next.describe()
            )
        })
    }

    /// What to do with the guest at rest, at `now`, keeping timers due
    /// within `warm_ms` warm. A child, batch or token wait always suspends
    /// the run: it holds no slot while others work.
    pub fn at_rest(
        &mut self,
        replay: &mut VecDeque<JournalEntry>,
        now: Timestamp,
        warm_ms: u64,
    ) -> Rest {
        match replay.pop_front() {
            Some(JournalEntry::Wake { id, value }) => {
                return match self.woke(id) {
                    Some(_) => Rest::Wake { id, value },
                    None => {
                        Rest::Broken(format!("the journal wakes wait {id}, which is not pending"))
                    }
                };
            }
            Some(other) => {
                return Rest::Diverged(format!(
                    "non-determinism: on replay the task waited where its journal has {}",
                    other.describe()
                ));
            }
            None => {}
        }
        if let Some((id, request)) = self.pending.values().find_map(|w| match &w.on {
            WaitOn::Fetch { request } => Some((w.id, request.clone())),
            _ => None,
        }) {
            return Rest::Fetch { id, request };
        }
        if self
            .pending
            .values()
            .any(|w| !matches!(w.on, WaitOn::Timer { .. }))
        {
            return Rest::Suspend;
        }
        let next = self
            .pending
            .values()
            .filter_map(|w| match w.on {
                WaitOn::Timer { due_at } => Some((w.id, due_at)),
                _ => None,
            })
            .min_by_key(|(_, due)| *due);
        match next {
            None => Rest::Deadlock,
            Some((id, due)) if due.as_millis().saturating_sub(now.as_millis()) <= warm_ms => {
                Rest::Warm { id, due }
            }
            Some(_) => Rest::Suspend,
        }
    }
}

/// Why a replayed step's waits are not the journaled ones, if they are not.
fn compare(requested: &[(u64, WaitRequest)], journaled: &[WaitRecord]) -> Option<String> {
    let fits = requested.len() == journaled.len()
        && requested.iter().zip(journaled).all(|((id, request), j)| {
            *id == j.id
                && match (request, &j.on) {
                    (WaitRequest::Duration(_), WaitOn::Timer { .. }) => true,
                    (WaitRequest::Until(at), WaitOn::Timer { due_at }) => at == due_at,
                    (WaitRequest::Run(id), WaitOn::Run { run_id }) => id == run_id.as_str(),
                    (WaitRequest::Batch(id), WaitOn::Batch { batch_id, .. }) => id == batch_id,
                    (WaitRequest::Token(id), WaitOn::Token { token_id, .. }) => {
                        id == token_id.as_str()
                    }
                    (WaitRequest::Fetch { method, url }, WaitOn::Fetch { request }) => {
                        *method == request.method && *url == request.url
                    }
                    _ => false,
                }
        });
    (!fits).then(|| {
        format!(
            "non-determinism: on replay the task waited on {} wait(s) (ids {:?}) where its journal has {} (ids {:?})",
            requested.len(),
            requested.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            journaled.len(),
            journaled.iter().map(|w| w.id).collect::<Vec<_>>(),
        )
    })
}
