//! The model store's state, and the engine's write commands over it.

use kiln_engine::{Command, View, ViewResult};
use kiln_types::{
    Arrival, JournalRecord, Run, RunId, RunOutcome, RunStatus, Timestamp, TokenId, WaitOn,
    WaitRecord, WaitToken, Waiter,
};
use std::collections::{BTreeMap, BTreeSet};

/// Everything the store holds.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub runs: BTreeMap<RunId, Run>,
    pub journal: BTreeMap<RunId, Vec<JournalRecord>>,
    pub waits: BTreeMap<RunId, BTreeMap<u64, WaitRecord>>,
    pub waiters: BTreeMap<RunId, BTreeMap<(RunId, u64), Waiter>>,
    pub token_waiters: BTreeMap<TokenId, BTreeMap<(RunId, u64), Waiter>>,
    pub inbox: BTreeMap<RunId, BTreeMap<(u64, u32), Arrival>>,
    pub tokens: BTreeMap<TokenId, WaitToken>,
    pub timers: BTreeSet<(Timestamp, RunId, u64)>,
}

impl State {
    /// Applies one write command. Journals are append-only: an entry whose
    /// number does not follow the last one is a bug, caught here.
    pub fn write(&mut self, command: &Command) {
        match command {
            Command::PutRun(run) => {
                self.runs.insert(run.id.clone(), run.clone());
            }
            Command::AppendJournal { run, record } => {
                let journal = self.journal.entry(run.clone()).or_default();
                let last = journal.last().map_or(0, |r| r.seq);
                assert_eq!(
                    record.seq,
                    last + 1,
                    "journal of {run} is not append-only: entry {} after {last}",
                    record.seq
                );
                journal.push(record.clone());
            }
            Command::Arm { run, wait } => {
                self.waits
                    .entry(run.clone())
                    .or_default()
                    .insert(wait.id, wait.clone());
                let waiter = Waiter {
                    parent: run.clone(),
                    wait_id: wait.id,
                    batch: None,
                };
                match &wait.on {
                    WaitOn::Timer { due_at } => {
                        self.timers.insert((*due_at, run.clone(), wait.id));
                    }
                    WaitOn::Run { run_id } => {
                        self.waiters
                            .entry(run_id.clone())
                            .or_default()
                            .insert((run.clone(), wait.id), waiter);
                    }
                    WaitOn::Batch { runs, .. } => {
                        for child in runs {
                            self.waiters
                                .entry(child.clone())
                                .or_default()
                                .insert((run.clone(), wait.id), waiter.clone());
                        }
                    }
                    WaitOn::Token {
                        token_id,
                        timeout_at,
                    } => {
                        self.token_waiters
                            .entry(token_id.clone())
                            .or_default()
                            .insert((run.clone(), wait.id), waiter);
                        if let Some(due) = timeout_at {
                            self.timers.insert((*due, run.clone(), wait.id));
                        }
                    }
                    WaitOn::Fetch { .. } => {}
                }
            }
            Command::Disarm { run, wait } => {
                if let Some(waits) = self.waits.get_mut(run) {
                    waits.remove(&wait.id);
                    if waits.is_empty() {
                        self.waits.remove(run);
                    }
                }
                let mut unwait = |child: &RunId| {
                    if let Some(w) = self.waiters.get_mut(child) {
                        w.remove(&(run.clone(), wait.id));
                        if w.is_empty() {
                            self.waiters.remove(child);
                        }
                    }
                };
                match &wait.on {
                    WaitOn::Timer { due_at } => {
                        self.timers.remove(&(*due_at, run.clone(), wait.id));
                    }
                    WaitOn::Run { run_id } => unwait(run_id),
                    WaitOn::Batch { runs, .. } => runs.iter().for_each(unwait),
                    WaitOn::Token {
                        token_id,
                        timeout_at,
                    } => {
                        if let Some(w) = self.token_waiters.get_mut(token_id) {
                            w.remove(&(run.clone(), wait.id));
                            if w.is_empty() {
                                self.token_waiters.remove(token_id);
                            }
                        }
                        if let Some(due) = timeout_at {
                            self.timers.remove(&(*due, run.clone(), wait.id));
                        }
                    }
                    WaitOn::Fetch { .. } => {}
                }
            }
            Command::PutArrival { run, arrival } => {
                self.inbox
                    .entry(run.clone())
                    .or_default()
                    .insert((arrival.wait_id, arrival.part), arrival.clone());
            }
            Command::DeleteArrival { run, wait, part } => {
                if let Some(inbox) = self.inbox.get_mut(run) {
                    inbox.remove(&(*wait, *part));
                    if inbox.is_empty() {
                        self.inbox.remove(run);
                    }
                }
            }
            Command::DeleteTimer { run, wait, due } => {
                self.timers.remove(&(*due, run.clone(), *wait));
            }
            Command::PutToken(token) => {
                self.tokens.insert(token.id.clone(), token.clone());
            }
            _ => {}
        }
    }
}

impl View for State {
    fn run(&self, id: &RunId) -> ViewResult<Option<Run>> {
        Ok(self.runs.get(id).cloned())
    }

    fn outcome(&self, run: &Run) -> ViewResult<RunOutcome> {
        let ok = run.status == RunStatus::Completed;
        Ok(RunOutcome {
            run_id: run.id.clone(),
            ok,
            value: if ok {
                run.output.clone().unwrap_or_else(|| "null".into())
            } else {
                format!("\"{}\"", run.status.as_str())
            },
        })
    }

    fn waiters(&self, child: &RunId) -> ViewResult<Vec<Waiter>> {
        Ok(self
            .waiters
            .get(child)
            .map(|w| w.values().cloned().collect())
            .unwrap_or_default())
    }

    fn waits(&self, run: &RunId) -> ViewResult<Vec<WaitRecord>> {
        Ok(self
            .waits
            .get(run)
            .map(|w| w.values().cloned().collect())
            .unwrap_or_default())
    }

    fn inbox(&self, run: &RunId) -> ViewResult<Vec<Arrival>> {
        Ok(self
            .inbox
            .get(run)
            .map(|i| i.values().cloned().collect())
            .unwrap_or_default())
    }

    fn token(&self, id: &TokenId) -> ViewResult<Option<WaitToken>> {
        Ok(self.tokens.get(id).cloned())
    }

    fn token_waiters(&self, id: &TokenId) -> ViewResult<Vec<Waiter>> {
        Ok(self
            .token_waiters
            .get(id)
            .map(|w| w.values().cloned().collect())
            .unwrap_or_default())
    }

    fn last_journal_seq(&self, run: &RunId) -> ViewResult<u64> {
        Ok(self
            .journal
            .get(run)
            .and_then(|j| j.last())
            .map_or(0, |r| r.seq))
    }
}
