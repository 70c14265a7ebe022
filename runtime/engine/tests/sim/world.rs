//! The simulated world: a server loop over the model store, scripted
//! guests, a backend that completes tokens, a receiver that counts fetches,
//! a clock, and crashes at random points. Every choice comes from the seed.

use super::crashing::CrashingStore;
use super::guest::{self, Leaf, Next, Step};
use super::rng::Rng;
use kiln_engine::{Command, EngineError, Event, FailureKind, Input, Outcome};
use kiln_types::{
    AttemptOutcome, BatchId, DeploymentId, FetchResponse, HostCall, JournalEntry, JournalRecord,
    Logs, ParentRun, Run, RunError, RunId, RunStatus, Timestamp, TokenId, TokenStatus, WaitOn,
    WaitToken, WakeValue,
};
use std::collections::{BTreeMap, BTreeSet};

/// The most steps a world may take before it counts as stuck.
const MAX_TICKS: usize = 100_000;

/// An effect held until the commit before it is durable.
#[derive(Debug, Clone)]
enum Effect {
    Engine(Box<Command>),
    Backend(u64, TokenId),
    /// A timer stored: the timer service holds it from now on.
    Timer(Timestamp, RunId, u64),
}

/// An id of the given prefix made from a counter.
fn make_id(prefix: &str, n: u64) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut body = [b'0'; 25];
    let mut n = n;
    for slot in body.iter_mut().rev() {
        *slot = ALPHABET[(n & 31) as usize];
        n >>= 5;
    }
    format!("{prefix}{}", String::from_utf8_lossy(&body))
}

/// A fetch a run's guest sent.
pub struct Sent {
    /// The run that sent it.
    pub run: RunId,
    /// Its idempotency key, which names its journal position.
    pub key: String,
    /// Crashes before it was sent.
    pub crashes: u32,
}

/// One simulated world.
pub struct World {
    rng: Rng,
    now: u64,
    /// The store.
    pub store: CrashingStore,
    /// The scripts of the root runs, by index.
    pub roots: Vec<Vec<Step>>,
    ready: Vec<(u64, RunId)>,
    executing: BTreeSet<RunId>,
    deliveries: Vec<RunId>,
    /// The timers the timer service holds in memory. Like the server's, it
    /// is not told when a wait is disarmed: a timer may fire after its wait
    /// woke another way, or after an attempt whose wait had the same id.
    heap: BTreeSet<(Timestamp, RunId, u64)>,
    effects: Vec<Effect>,
    backend: Vec<(u64, TokenId)>,
    backend_in_flight: Vec<(u64, TokenId)>,
    /// When the backend is to complete each token a guest made for it.
    planned: BTreeMap<TokenId, u64>,
    /// Every fetch sent, in order.
    pub sends: Vec<Sent>,
    /// Crashes so far.
    pub crashes: u32,
    max_crashes: u32,
    next_id: u64,
    /// The durable journals at each crash (each must be a prefix of the
    /// journals at the end).
    pub journals_at_crash: Vec<BTreeMap<RunId, Vec<JournalRecord>>>,
    /// The last actions taken, for a failing seed's report.
    pub trace: Vec<String>,
}

impl World {
    /// A world for `seed`: a few root runs with random scripts, with
    /// `mirror` written beside the model store if given.
    pub fn with_mirror(seed: u64, mirror: Option<Box<dyn super::crashing::Mirror>>) -> Self {
        let mut rng = Rng::new(seed);
        let max_crashes = rng.range(0, 4) as u32;
        let mut world = World {
            rng,
            now: 1_000,
            store: CrashingStore::with_mirror(mirror),
            roots: Vec::new(),
            ready: Vec::new(),
            executing: BTreeSet::new(),
            deliveries: Vec::new(),
            heap: BTreeSet::new(),
            effects: Vec::new(),
            backend: Vec::new(),
            backend_in_flight: Vec::new(),
            planned: BTreeMap::new(),
            sends: Vec::new(),
            crashes: 0,
            max_crashes,
            next_id: 1,
            journals_at_crash: Vec::new(),
            trace: Vec::new(),
        };
        let roots = world.rng.range(1, 4);
        for i in 0..roots {
            let script = world.random_script();
            world.roots.push(script);
            let run = world.new_run(&format!("root-{i}"), None, None);
            world.store.commit(vec![Command::PutRun(run.clone())]);
            // The roots' triggers were answered: their admissions are
            // synced below, before anything runs. (Children, below, are
            // queued as soon as their admission is committed.)
            world.ready.push((0, run.id));
        }
        world.sync();
        world
    }

    fn random_leaf(&mut self) -> Leaf {
        match self.rng.below(4) {
            0 => Leaf::Quick,
            1 => Leaf::Sleepy(self.rng.range(1, 40)),
            2 => Leaf::Fetching,
            _ => Leaf::Flaky,
        }
    }

    fn random_script(&mut self) -> Vec<Step> {
        let steps = self.rng.range(1, 5);
        (0..steps)
            .map(|_| match self.rng.below(7) {
                0 => Step::Sleep(self.rng.range(1, 60)),
                1 => Step::Child(self.random_leaf()),
                2 => {
                    let n = self.rng.range(2, 4);
                    Step::Batch((0..n).map(|_| self.random_leaf()).collect())
                }
                3 => {
                    // A token nobody completes must time out, or its run
                    // would rightly wait forever.
                    let complete_after = (!self.rng.chance(20)).then(|| self.rng.range(1, 80));
                    let timeout = (complete_after.is_none() || !self.rng.chance(30))
                        .then(|| self.rng.range(1, 100));
                    Step::Token {
                        complete_after,
                        timeout,
                    }
                }
                4 => Step::Fetch,
                5 => Step::Join(self.random_leaf(), self.rng.range(1, 60)),
                _ => Step::Fail,
            })
            .collect()
    }

    fn fresh(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn new_run(&mut self, task: &str, parent: Option<&Run>, batch: Option<&BatchId>) -> Run {
        let n = self.fresh();
        let id = RunId::parse(&make_id(RunId::PREFIX, n)).expect("a valid run id");
        let deployment = DeploymentId::parse(&make_id(DeploymentId::PREFIX, 1)).expect("an id");
        let mut run = Run::queued(id, task, deployment, "1", "{}", Timestamp(self.now));
        run.parent = parent.map(|p| ParentRun {
            parent: p.id.clone(),
            root: p.root_or_self().clone(),
            depth: p.parent.as_ref().map_or(1, |pp| pp.depth + 1),
            trigger_function: "triggerAndWait".into(),
        });
        run.batch = batch.map(|b| b.to_string());
        run
    }

    fn note(&mut self, what: String) {
        if self.trace.len() >= 60 {
            self.trace.remove(0);
        }
        self.trace.push(format!("t={} {what}", self.now));
    }

    /// An attempt that never suspended holds no waits and no arrivals: the
    /// engine relies on it to skip reading them when such an attempt ends,
    /// and the model store can check it at no cost to Kiln.
    fn check_unsuspended_end(&self, input: &Input) {
        let Input::Run {
            run,
            event: Event::AttemptSucceeded { .. } | Event::AttemptFailed { .. } | Event::Cancel,
            ..
        } = input
        else {
            return;
        };
        let state = &self.store.applied;
        let unsuspended = state
            .runs
            .get(run)
            .and_then(|r| r.attempts.last())
            .is_some_and(|a| !a.suspended);
        if unsuspended {
            assert!(
                state.waits.get(run).is_none_or(|w| w.is_empty())
                    && state.inbox.get(run).is_none_or(|i| i.is_empty()),
                "run {run}'s attempt never suspended but holds waits or arrivals\n{}",
                self.trace.join("\n")
            );
        }
    }

    /// Feeds an input to the engine; its writes (after `extra`) commit as
    /// one batch, its effects wait for the next sync.
    fn input(&mut self, input: Input, extra: Vec<Command>) -> Result<Outcome, EngineError> {
        self.check_unsuspended_end(&input);
        let applied = kiln_engine::apply(&self.store.applied, input, Timestamp(self.now))?;
        let (writes, effects): (Vec<Command>, Vec<Command>) =
            applied.commands.into_iter().partition(Command::is_write);
        for write in &writes {
            if let Command::Arm { run, wait } = write {
                let due = match &wait.on {
                    WaitOn::Timer { due_at } => Some(*due_at),
                    WaitOn::Token { timeout_at, .. } => *timeout_at,
                    _ => None,
                };
                if let Some(due) = due {
                    self.effects.push(Effect::Timer(due, run.clone(), wait.id));
                }
            }
        }
        let mut batch = extra;
        batch.extend(writes);
        self.store.commit(batch);
        self.effects
            .extend(effects.into_iter().map(|c| Effect::Engine(Box::new(c))));
        Ok(applied.outcome)
    }

    fn journal_entry(&self, run: &RunId, entry: JournalEntry) -> Command {
        let seq = self
            .store
            .applied
            .journal
            .get(run)
            .and_then(|j| j.last())
            .map_or(0, |r| r.seq)
            + 1;
        Command::AppendJournal {
            run: run.clone(),
            record: JournalRecord {
                seq,
                at: Timestamp(self.now),
                entry,
            },
        }
    }

    /// One group commit: everything applied becomes durable, then the
    /// effects waiting on it are performed.
    fn sync(&mut self) {
        self.store.sync();
        self.backend_in_flight.clear();
        for effect in std::mem::take(&mut self.effects) {
            let command = match effect {
                Effect::Backend(at, token) => {
                    self.backend.push((at, token));
                    continue;
                }
                Effect::Timer(due, run, wait) => {
                    self.heap.insert((due, run, wait));
                    continue;
                }
                Effect::Engine(command) => *command,
            };
            match command {
                Command::Enqueue { run, not_before } => {
                    self.ready.push((not_before.map_or(0, |t| t.0), run.id))
                }
                Command::Deliver { run } => self.deliveries.push(run),
                Command::Interrupt { run } => {
                    self.executing.remove(&run);
                }
                Command::CancelChildren { run } => {
                    let children: Vec<RunId> = self
                        .store
                        .applied
                        .runs
                        .values()
                        .filter(|r| {
                            !r.status.is_final()
                                && r.parent.as_ref().is_some_and(|p| p.parent == run)
                        })
                        .map(|r| r.id.clone())
                        .collect();
                    for child in children {
                        let _ = self.cancel(&child);
                    }
                }
                _ => {}
            }
        }
    }

    fn cancel(&mut self, run: &RunId) -> Result<Outcome, EngineError> {
        self.note(format!("cancel {run}"));
        let input = Input::Run {
            run: run.clone(),
            event: Event::Cancel,
            logs: Logs::default(),
        };
        self.input(input, Vec::new())
    }

    /// A crash: everything not synced is lost, and so is everything the
    /// server held in memory. Then recovery, from durable state alone.
    fn crash(&mut self) {
        self.crashes += 1;
        let kept = self.store.crash();
        self.note(format!("CRASH (the store kept {kept} unsynced commits)"));
        self.journals_at_crash
            .push(self.store.durable.journal.clone());
        self.ready.clear();
        self.executing.clear();
        self.deliveries.clear();
        self.effects.clear();
        // The timer service starts again from the stored timers.
        self.heap = self.store.applied.timers.clone();
        self.backend.append(&mut self.backend_in_flight);
        // A token whose creation outlived the crash without its effect (a
        // real store can keep commits not yet synced) is still handed to
        // the backend: the guest's replay will not make it again.
        for (token, at) in &self.planned {
            let waiting = self
                .store
                .durable
                .tokens
                .get(token)
                .is_some_and(|t| t.status == TokenStatus::Waiting);
            if waiting && !self.backend.iter().any(|(_, t)| t == token) {
                self.backend.push((*at, token.clone()));
            }
        }
        let runs: Vec<Run> = self.store.applied.runs.values().cloned().collect();
        for run in runs {
            match run.status {
                RunStatus::Queued => self
                    .ready
                    .push((run.next_attempt_at.map_or(0, |t| t.0), run.id)),
                RunStatus::Dequeued | RunStatus::Executing => {
                    let input = Input::Run {
                        run: run.id.clone(),
                        event: Event::Recovered,
                        logs: Logs::default(),
                    };
                    self.input(input, Vec::new()).expect("recovering a run");
                }
                _ => {}
            }
        }
        // The server also rechecks runs suspended on children and tokens at
        // start-up, a repair for stores an older Kiln wrote. The simulation
        // leaves it out on purpose: it proves that no wake ever needs it.
        let inboxes: Vec<RunId> = self.store.applied.inbox.keys().cloned().collect();
        for run in inboxes {
            self.input(Input::Deliver { run }, Vec::new())
                .expect("delivering an inbox at recovery");
        }
        self.sync();
    }

    /// One step of an executing run's guest.
    fn step_run(&mut self, id: &RunId) {
        let Some(run) = self.store.applied.runs.get(id).cloned() else {
            self.executing.remove(id);
            return;
        };
        if run.status != RunStatus::Executing {
            self.executing.remove(id);
            return;
        }
        let attempt = run.attempts.len() as u32;
        let journal = self
            .store
            .applied
            .journal
            .get(id)
            .cloned()
            .unwrap_or_default();
        let start = journal.iter().rposition(
            |r| matches!(r.entry, JournalEntry::AttemptStarted { attempt: a, .. } if a == attempt),
        );
        let entries: Option<Vec<JournalEntry>> =
            start.map(|i| journal[i + 1..].iter().map(|r| r.entry.clone()).collect());
        let script = guest::script(&run.task_id, &self.roots);
        let tokens = &self.store.applied.tokens;
        let next = guest::next(
            &script,
            attempt,
            entries.as_deref(),
            Timestamp(self.now),
            |t| tokens.get(t).and_then(|t| t.timeout_at),
        );
        self.note(format!("{id} attempt {attempt}: {next:?}"));
        match next {
            Next::Start => {
                let entry = self.journal_entry(
                    id,
                    JournalEntry::AttemptStarted {
                        attempt,
                        started: None,
                    },
                );
                self.store.commit(vec![entry]);
            }
            Next::Spawn { children, batch } => {
                let batch_id = batch.then(|| {
                    let n = self.fresh();
                    BatchId::parse(&make_id(BatchId::PREFIX, n)).expect("a batch id")
                });
                let mut writes = Vec::new();
                let mut ids = Vec::new();
                for leaf in &children {
                    let child = self.new_run(&leaf.task(), Some(&run), batch_id.as_ref());
                    ids.push(child.id.clone());
                    // As the server does: queued as soon as its admission
                    // is committed, so it may execute and end, and reach a
                    // fetch (which waits for it), while that commit is not
                    // yet synced.
                    self.ready.push((0, child.id.clone()));
                    writes.push(Command::PutRun(child));
                }
                let call = match &batch_id {
                    Some(b) => HostCall::BatchTrigger {
                        items: ids.len() as u32,
                        batch: Some(b.to_string()),
                        runs: ids,
                        error: None,
                    },
                    None => HostCall::Trigger {
                        task: children[0].task(),
                        result: ids.first().cloned(),
                        error: None,
                    },
                };
                writes.push(self.journal_entry(id, JournalEntry::HostCall(call)));
                self.store.commit(writes);
            }
            Next::CreateToken {
                complete_after,
                timeout,
            } => {
                let n = self.fresh();
                let token = WaitToken {
                    id: TokenId::parse(&make_id(TokenId::PREFIX, n)).expect("a token id"),
                    status: TokenStatus::Waiting,
                    tags: Vec::new(),
                    timeout_at: timeout.map(|t| Timestamp(self.now + t)),
                    idempotency_key: None,
                    idempotency_key_expires_at: None,
                    output: None,
                    created_at: Timestamp(self.now),
                    completed_at: None,
                };
                if let Some(after) = complete_after {
                    self.effects
                        .push(Effect::Backend(self.now + after, token.id.clone()));
                    self.planned.insert(token.id.clone(), self.now + after);
                }
                let call = HostCall::CreateToken {
                    result: Some(token.id.clone()),
                    url: None,
                    error: None,
                };
                let entry = self.journal_entry(id, JournalEntry::HostCall(call));
                self.store.commit(vec![Command::PutToken(token), entry]);
            }
            Next::Waits(waits) => {
                let entry = self.journal_entry(id, JournalEntry::Waits { waits });
                self.store.commit(vec![entry]);
            }
            Next::Fetch(wait) => {
                // As the server does: the journal up to the request is
                // durable before it is sent.
                let durable = self.store.durable.journal.get(id).map_or(0, Vec::len);
                if durable < journal.len() {
                    return;
                }
                self.sends.push(Sent {
                    run: id.clone(),
                    key: format!("{id}-{attempt}-{wait}"),
                    crashes: self.crashes,
                });
                let value = WakeValue::Fetch {
                    response: Some(FetchResponse {
                        status: 200,
                        headers: Vec::new(),
                        body: String::new(),
                        sealed: None,
                    }),
                    error: None,
                };
                let entry = self.journal_entry(id, JournalEntry::Wake { id: wait, value });
                self.store.commit(vec![entry]);
            }
            Next::WarmWake(wait) => {
                let entry = self.journal_entry(
                    id,
                    JournalEntry::Wake {
                        id: wait.id,
                        value: WakeValue::Timer,
                    },
                );
                self.store.commit(vec![
                    Command::Disarm {
                        run: id.clone(),
                        wait,
                    },
                    entry,
                ]);
            }
            Next::Suspend(pending) => {
                let entry = self.journal_entry(
                    id,
                    JournalEntry::Suspended {
                        layer: 0,
                        bytes: 0,
                        log_calls: 0,
                    },
                );
                let input = Input::Suspend {
                    run: id.clone(),
                    usage_ms: 0,
                    waits: pending,
                    logs: Logs::default(),
                };
                let _ = self.input(input, vec![entry]);
                self.executing.remove(id);
            }
            Next::Fail | Next::Complete => {
                let (event, outcome) = if next == Next::Fail {
                    let retry_delay_ms = Some(self.rng.range(1, 50));
                    let event = Event::AttemptFailed {
                        kind: FailureKind::Error {
                            abort: false,
                            retry_delay_ms,
                        },
                        error: RunError::new("Error", "the script fails its first attempt"),
                        usage_ms: 0,
                        random: 0.5,
                    };
                    (event, AttemptOutcome::Failed)
                } else {
                    let output = format!("\"{}\"", run.task_id);
                    let event = Event::AttemptSucceeded {
                        output,
                        usage_ms: 0,
                    };
                    (event, AttemptOutcome::Succeeded)
                };
                let entry = self.journal_entry(id, JournalEntry::AttemptEnded { attempt, outcome });
                let input = Input::Run {
                    run: id.clone(),
                    event,
                    logs: Logs::default(),
                };
                let _ = self.input(input, vec![entry]);
                self.executing.remove(id);
            }
            Next::Diverged(why) => panic!("replay of {id} diverged: {why}"),
        }
    }

    /// Runs the world until nothing is left to happen.
    pub fn run(&mut self) {
        for _ in 0..MAX_TICKS {
            if self.rng.chance(10) {
                self.now += self.rng.range(1, 3);
            }
            let now = self.now;
            let mut choices: Vec<u8> = Vec::new();
            if self.store.has_unsynced() || !self.effects.is_empty() {
                choices.push(0);
            }
            if self.ready.iter().any(|(at, _)| *at <= now) {
                choices.push(1);
            }
            if !self.executing.is_empty() {
                choices.extend([2, 2, 2]);
            }
            if !self.deliveries.is_empty() {
                choices.push(3);
            }
            let due = self.heap.iter().find(|(at, _, _)| at.0 <= now).cloned();
            if due.is_some() {
                choices.push(4);
            }
            if self.backend.iter().any(|(at, _)| *at <= now) {
                choices.push(5);
            }
            if choices.is_empty() {
                // Nothing to do now: move the clock to the next thing due.
                let next = self
                    .ready
                    .iter()
                    .map(|(at, _)| *at)
                    .chain(self.heap.iter().map(|(at, _, _)| at.0))
                    .chain(self.backend.iter().map(|(at, _)| *at))
                    .filter(|at| *at > now)
                    .min();
                match next {
                    Some(at) => {
                        self.now = at;
                        continue;
                    }
                    None => return,
                }
            }
            if self.crashes < self.max_crashes && self.rng.chance(2) {
                self.crash();
                continue;
            }
            if self.rng.chance(1) {
                let leaves: Vec<RunId> = self
                    .store
                    .applied
                    .runs
                    .values()
                    .filter(|r| !r.status.is_final() && r.task_id.starts_with("leaf-"))
                    .map(|r| r.id.clone())
                    .collect();
                if !leaves.is_empty() {
                    let pick = leaves[self.rng.below(leaves.len() as u64) as usize].clone();
                    let _ = self.cancel(&pick);
                    continue;
                }
            }
            match choices[self.rng.below(choices.len() as u64) as usize] {
                0 => {
                    self.note("sync".into());
                    self.sync();
                }
                1 => {
                    let ready: Vec<usize> = (0..self.ready.len())
                        .filter(|i| self.ready[*i].0 <= now)
                        .collect();
                    let i = ready[self.rng.below(ready.len() as u64) as usize];
                    let (_, run) = self.ready.remove(i);
                    self.dequeue(&run);
                }
                2 => {
                    let runs: Vec<RunId> = self.executing.iter().cloned().collect();
                    let run = runs[self.rng.below(runs.len() as u64) as usize].clone();
                    self.step_run(&run);
                }
                3 => {
                    let i = self.rng.below(self.deliveries.len() as u64) as usize;
                    let run = self.deliveries.remove(i);
                    self.note(format!("deliver {run}"));
                    self.input(Input::Deliver { run }, Vec::new())
                        .expect("a delivery");
                }
                4 => {
                    let (due, run, wait) = due.expect("a due timer");
                    self.heap.remove(&(due, run.clone(), wait));
                    self.note(format!("timer {run}/{wait}"));
                    self.input(Input::TimerDue { run, wait, due }, Vec::new())
                        .expect("a due timer");
                }
                _ => {
                    let i = self
                        .backend
                        .iter()
                        .position(|(at, _)| *at <= now)
                        .expect("a due completion");
                    let (at, token) = self.backend.remove(i);
                    self.note(format!("complete {token}"));
                    let input = Input::CompleteToken {
                        token: token.clone(),
                        data: "\"done\"".into(),
                    };
                    self.input(input, Vec::new()).expect("a token completion");
                    self.backend_in_flight.push((at, token));
                }
            }
        }
        panic!("the world did not settle within {MAX_TICKS} steps");
    }

    fn dequeue(&mut self, run: &RunId) {
        if self.executing.contains(run) {
            return;
        }
        let journal_empty = self
            .store
            .applied
            .journal
            .get(run)
            .is_none_or(|j| j.is_empty());
        if let Ok(outcome) = self.input(Input::Claim { run: run.clone() }, Vec::new()) {
            // Kiln skips reading the journal of a run whose first attempt
            // a claim started: it must be empty.
            if let Outcome::Claimed { first: true, .. } = outcome {
                assert!(
                    journal_empty,
                    "run {run}'s first claim found a journal\n{}",
                    self.trace.join("\n")
                );
            }
            self.note(format!("dequeue {run}"));
            self.executing.insert(run.clone());
        }
    }
}
