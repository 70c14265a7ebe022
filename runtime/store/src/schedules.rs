//! Schedules in the store, and the indexes that make firing them cheap.
//!
//! Keys: see [`crate::layout`].
//!
//! The due index is ordered by time, so the scheduler finds what is due with
//! one range scan from the start of the index, however many schedules exist,
//! and the next wake-up time from its first key.

use crate::layout::{SCHED, SCHED_DUE, SCHED_KEY, SCHED_OCC, SCHED_RUN};
use crate::records::{decode, encode, key};
use crate::{Batch, Op, Result, Store, StoreError};
use kiln_types::{RunId, Schedule, ScheduleId, ScheduleKind, Timestamp};

/// What makes a schedule unique besides its id: an imperative schedule's
/// deduplication key, or the task of a declarative one (one per task).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScheduleKey {
    /// An imperative schedule's `deduplicationKey`.
    Deduplication(String),
    /// The declarative schedule of a task.
    Declared(String),
}

impl ScheduleKey {
    /// The key of a schedule, if it has one.
    pub fn of(schedule: &Schedule) -> Option<Self> {
        match schedule.kind {
            ScheduleKind::Declarative => Some(ScheduleKey::Declared(schedule.task_id.clone())),
            ScheduleKind::Imperative => schedule
                .deduplication_key
                .clone()
                .map(ScheduleKey::Deduplication),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let (kind, value) = match self {
            ScheduleKey::Deduplication(k) => (b"u/", k),
            ScheduleKey::Declared(task) => (b"d/", task),
        };
        let mut k = key(SCHED_KEY, kind);
        k.extend_from_slice(value.as_bytes());
        k
    }
}

fn sched_key(id: &ScheduleId) -> Vec<u8> {
    key(SCHED, id.as_str().as_bytes())
}

fn due_key(at: Timestamp, id: &ScheduleId) -> Vec<u8> {
    let mut k = key(SCHED_DUE, &at.as_millis().to_be_bytes());
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

fn occurrence_key(id: &ScheduleId, at: Timestamp) -> Vec<u8> {
    let mut k = key(SCHED_OCC, id.as_str().as_bytes());
    k.push(b'/');
    k.extend_from_slice(&at.as_millis().to_be_bytes());
    k
}

fn run_index_prefix(id: &ScheduleId) -> Vec<u8> {
    let mut k = key(SCHED_RUN, id.as_str().as_bytes());
    k.push(b'/');
    k
}

/// The due-index entry of a schedule, if it fires.
fn due_of(schedule: &Schedule) -> Option<Vec<u8>> {
    match (schedule.active, schedule.next_run) {
        (true, Some(at)) => Some(due_key(at, &schedule.id)),
        _ => None,
    }
}

fn corrupt(k: &[u8], reason: &str) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        reason: reason.into(),
    }
}

impl Batch {
    /// Saves a schedule and keeps its indexes in step. `previous` is the
    /// stored version it replaces (its due entry and key are moved).
    pub fn put_schedule(&mut self, schedule: &Schedule, previous: Option<&Schedule>) -> &mut Self {
        let record = match encode(schedule) {
            Ok(record) => record,
            Err(e) => {
                self.error = Some(e);
                return self;
            }
        };
        if let Some(old) = previous {
            if let Some(due) = due_of(old).filter(|d| Some(d) != due_of(schedule).as_ref()) {
                self.ops.push(Op::Delete(due));
            }
            if let Some(old_key) = ScheduleKey::of(old)
                && Some(&old_key) != ScheduleKey::of(schedule).as_ref()
            {
                self.ops.push(Op::Delete(old_key.encode()));
            }
        }
        self.ops.push(Op::Put(sched_key(&schedule.id), record));
        if let Some(due) = due_of(schedule) {
            self.ops.push(Op::Put(due, Vec::new()));
        }
        if let Some(k) = ScheduleKey::of(schedule) {
            self.ops.push(Op::Put(
                k.encode(),
                schedule.id.as_str().as_bytes().to_vec(),
            ));
        }
        self
    }

    /// Deletes a schedule with its indexes and its occurrence record. The
    /// runs it fired keep their record of it.
    pub fn delete_schedule(&mut self, schedule: &Schedule) -> &mut Self {
        self.ops.push(Op::Delete(sched_key(&schedule.id)));
        if let Some(due) = due_of(schedule) {
            self.ops.push(Op::Delete(due));
        }
        if let Some(k) = ScheduleKey::of(schedule) {
            self.ops.push(Op::Delete(k.encode()));
        }
        if let Some(at) = schedule.last_timestamp {
            self.ops.push(Op::Delete(occurrence_key(&schedule.id, at)));
        }
        self
    }

    /// Removes one due-index entry (one that no longer matches its schedule).
    pub fn delete_due(&mut self, at: Timestamp, schedule: &ScheduleId) -> &mut Self {
        self.ops.push(Op::Delete(due_key(at, schedule)));
        self
    }

    /// Records that the occurrence `at` of a schedule made `run` (and that
    /// the run belongs to the schedule), replacing the record of the
    /// schedule's previous occurrence.
    pub fn put_occurrence(
        &mut self,
        schedule: &ScheduleId,
        at: Timestamp,
        previous: Option<Timestamp>,
        run: &RunId,
    ) -> &mut Self {
        if let Some(previous) = previous.filter(|p| *p != at) {
            self.ops
                .push(Op::Delete(occurrence_key(schedule, previous)));
        }
        self.ops.push(Op::Put(
            occurrence_key(schedule, at),
            run.as_str().as_bytes().to_vec(),
        ));
        let mut k = run_index_prefix(schedule);
        k.extend_from_slice(run.as_str().as_bytes());
        self.ops.push(Op::Put(k, Vec::new()));
        self
    }
}

impl Store {
    /// A schedule by id.
    pub fn schedule(&self, id: &ScheduleId) -> Result<Option<Schedule>> {
        let k = sched_key(id);
        self.backend.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// The schedule under a key (a deduplication key, or a task's
    /// declarative schedule).
    pub fn schedule_by_key(&self, schedule_key: &ScheduleKey) -> Result<Option<Schedule>> {
        let k = schedule_key.encode();
        let Some(id) = self.backend.get(&k)? else {
            return Ok(None);
        };
        let id = std::str::from_utf8(&id)
            .ok()
            .and_then(|s| ScheduleId::parse(s).ok())
            .ok_or_else(|| corrupt(&k, "not a schedule id"))?;
        self.schedule(&id)
    }

    /// Every schedule, oldest first (ids sort by creation time).
    pub fn schedules(&self) -> Result<Vec<Schedule>> {
        self.backend
            .scan_prefix(SCHED)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// Every declarative schedule.
    pub fn declarative_schedules(&self) -> Result<Vec<Schedule>> {
        let mut prefix = SCHED_KEY.to_vec();
        prefix.extend_from_slice(b"d/");
        let mut out = Vec::new();
        for (k, id) in self.backend.scan_prefix(&prefix)? {
            let id = std::str::from_utf8(&id)
                .ok()
                .and_then(|s| ScheduleId::parse(s).ok())
                .ok_or_else(|| corrupt(&k, "not a schedule id"))?;
            if let Some(schedule) = self.schedule(&id)? {
                out.push(schedule);
            }
        }
        Ok(out)
    }

    /// Active schedules whose next occurrence is before `until`, earliest
    /// first, at most `limit`. Reads only that part of the due index.
    pub fn due_schedules(
        &self,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<(Timestamp, ScheduleId)>> {
        let start = key(SCHED_DUE, &0u64.to_be_bytes());
        let end = key(SCHED_DUE, &until.as_millis().to_be_bytes());
        self.backend
            .scan_range(&start, &end, limit)?
            .iter()
            .map(|(k, _)| decode_due(k))
            .collect()
    }

    /// The earliest next occurrence of any active schedule.
    pub fn next_schedule_due(&self) -> Result<Option<Timestamp>> {
        let start = key(SCHED_DUE, &0u64.to_be_bytes());
        let end = key(SCHED_DUE, &u64::MAX.to_be_bytes());
        Ok(self
            .backend
            .scan_range(&start, &end, 1)?
            .first()
            .map(|(k, _)| decode_due(k))
            .transpose()?
            .map(|(at, _)| at))
    }

    /// The run made for occurrence `at` of a schedule, if that is the
    /// schedule's latest occurrence.
    pub fn occurrence(&self, schedule: &ScheduleId, at: Timestamp) -> Result<Option<RunId>> {
        let k = occurrence_key(schedule, at);
        let Some(run) = self.backend.get(&k)? else {
            return Ok(None);
        };
        std::str::from_utf8(&run)
            .ok()
            .and_then(|s| RunId::parse(s).ok())
            .map(Some)
            .ok_or_else(|| corrupt(&k, "not a run id"))
    }

    /// The runs a schedule fired, oldest first.
    pub fn schedule_runs(&self, schedule: &ScheduleId) -> Result<Vec<RunId>> {
        let prefix = run_index_prefix(schedule);
        self.backend
            .scan_prefix(&prefix)?
            .iter()
            .map(|(k, _)| {
                std::str::from_utf8(&k[prefix.len()..])
                    .ok()
                    .and_then(|s| RunId::parse(s).ok())
                    .ok_or_else(|| corrupt(k, "not a run index key"))
            })
            .collect()
    }
}

fn decode_due(k: &[u8]) -> Result<(Timestamp, ScheduleId)> {
    let rest = k
        .strip_prefix(SCHED_DUE)
        .filter(|r| r.len() > 8)
        .ok_or_else(|| corrupt(k, "not a due key"))?;
    let at = u64::from_be_bytes(
        rest[..8]
            .try_into()
            .map_err(|_| corrupt(k, "not a due key"))?,
    );
    let id = std::str::from_utf8(&rest[8..])
        .ok()
        .and_then(|s| ScheduleId::parse(s).ok())
        .ok_or_else(|| corrupt(k, "not a due key"))?;
    Ok((Timestamp(at), id))
}
