//! The wait/wake machine, input by input: what each input writes, and that
//! a fact always comes with the inbox entry that wakes its waiting run.

#[path = "sim/store.rs"]
mod store;

use kiln_engine::{Command, EngineError, Event, Input, Outcome, View, ViewResult, apply, wakes};
use kiln_types::{
    Arrival, DeploymentId, JournalEntry, Logs, Run, RunId, RunOutcome, RunStatus, Timestamp,
    TokenId, TokenStatus, WaitOn, WaitRecord, WaitToken, Waiter, WakeValue,
};
use store::State;

/// A status of every kind: queued, running, waiting, final.
const STATUSES: [RunStatus; 6] = [
    RunStatus::Queued,
    RunStatus::Dequeued,
    RunStatus::Executing,
    RunStatus::Waiting,
    RunStatus::Completed,
    RunStatus::Canceled,
];

fn id(n: u64) -> RunId {
    RunId::parse(&format!("run_{n:025}")).unwrap()
}

fn token_id(n: u64) -> TokenId {
    TokenId::parse(&format!("waitpoint_{n:025}")).unwrap()
}

fn run(n: u64, status: RunStatus) -> Run {
    let deployment = DeploymentId::parse(&format!("deploy_{:025}", 1)).unwrap();
    let mut run = Run::queued(id(n), "t", deployment, "1", "{}", Timestamp(1));
    run.status = status;
    if status != RunStatus::Queued {
        let r = Run::queued(
            id(n),
            "t",
            run.deployment_id.clone(),
            "1",
            "{}",
            Timestamp(1),
        );
        let r = kiln_engine::apply_event(&r, Event::Dequeued, Timestamp(2))
            .unwrap()
            .run;
        let r = kiln_engine::apply_event(&r, Event::AttemptStarted, Timestamp(2))
            .unwrap()
            .run;
        run.attempts = r.attempts;
        // A waiting run has suspended.
        if status == RunStatus::Waiting {
            run.attempts[0].suspended = true;
        }
    }
    run
}

fn child_wait(wait: u64, child: u64) -> WaitRecord {
    WaitRecord {
        id: wait,
        on: WaitOn::Run { run_id: id(child) },
    }
}

fn token_wait(wait: u64, token: u64, timeout: Option<u64>) -> WaitRecord {
    WaitRecord {
        id: wait,
        on: WaitOn::Token {
            token_id: token_id(token),
            timeout_at: timeout.map(Timestamp),
        },
    }
}

fn token(n: u64, timeout: Option<u64>) -> WaitToken {
    WaitToken {
        id: token_id(n),
        status: TokenStatus::Waiting,
        tags: Vec::new(),
        timeout_at: timeout.map(Timestamp),
        idempotency_key: None,
        idempotency_key_expires_at: None,
        output: None,
        created_at: Timestamp(1),
        completed_at: None,
    }
}

/// Applies an input and its writes to `state`; returns the commands.
fn step(state: &mut State, input: Input, now: u64) -> Result<(Vec<Command>, Outcome), EngineError> {
    let applied = apply(state, input, Timestamp(now))?;
    for c in applied.commands.iter().filter(|c| c.is_write()) {
        state.write(c);
    }
    Ok((applied.commands, applied.outcome))
}

fn put(state: &mut State, run: Run) {
    state.write(&Command::PutRun(run));
}

/// A parent suspended on a child (`wait` 1), and the child executing.
fn parent_waiting_on_child() -> State {
    let mut state = State::default();
    put(&mut state, run(1, RunStatus::Executing));
    put(&mut state, run(2, RunStatus::Executing));
    let input = suspend(1, vec![child_wait(1, 2)]);
    step(&mut state, input, 10).unwrap();
    state
}

/// Run `n` suspends on `waits`.
fn suspend(n: u64, waits: Vec<WaitRecord>) -> Input {
    Input::Suspend {
        run: id(n),
        usage_ms: 0,
        waits,
        logs: Logs::default(),
    }
}

fn succeed(n: u64) -> Input {
    Input::Run {
        run: id(n),
        event: Event::AttemptSucceeded {
            output: "7".into(),
            usage_ms: 1,
        },
        logs: Logs::default(),
    }
}

#[test]
fn a_childs_end_and_its_parents_inbox_entry_are_one_answer() {
    let mut state = parent_waiting_on_child();
    let (commands, _) = step(&mut state, succeed(2), 20).unwrap();
    let writes: Vec<&Command> = commands.iter().filter(|c| c.is_write()).collect();
    assert!(writes.iter().any(
        |c| matches!(c, Command::PutRun(r) if r.id == id(2) && r.status == RunStatus::Completed)
    ));
    assert!(writes.iter().any(|c| matches!(c, Command::PutArrival { run, arrival } if *run == id(1) && arrival.wait_id == 1)));
    assert!(commands.contains(&Command::Deliver { run: id(1) }));

    // Delivering wakes the parent once: journaled, disarmed, queued.
    let (commands, outcome) = step(&mut state, Input::Deliver { run: id(1) }, 21).unwrap();
    assert!(matches!(outcome, Outcome::Run(r) if r.status == RunStatus::Queued));
    let wake = commands.iter().find_map(|c| match c {
        Command::AppendJournal { record, .. } => Some(record.entry.clone()),
        _ => None,
    });
    assert!(
        matches!(wake, Some(JournalEntry::Wake { id: 1, value: WakeValue::Run { outcome } }) if outcome.ok && outcome.value == "7")
    );
    assert!(
        commands
            .iter()
            .any(|c| matches!(c, Command::Enqueue { .. }))
    );
    assert!(state.inbox.is_empty() && state.waits.is_empty() && state.waiters.is_empty());
    // A second delivery finds nothing.
    let (commands, _) = step(&mut state, Input::Deliver { run: id(1) }, 22).unwrap();
    assert!(commands.is_empty());
}

#[test]
fn a_child_that_ended_first_is_in_the_suspension_commit() {
    let mut state = State::default();
    put(&mut state, run(1, RunStatus::Executing));
    put(&mut state, run(2, RunStatus::Executing));
    step(&mut state, succeed(2), 5).unwrap();
    let input = suspend(1, vec![child_wait(1, 2)]);
    let (commands, _) = step(&mut state, input, 10).unwrap();
    assert!(
        commands
            .iter()
            .any(|c| matches!(c, Command::PutRun(r) if r.status == RunStatus::Waiting))
    );
    assert!(
        commands
            .iter()
            .any(|c| matches!(c, Command::PutArrival { run, .. } if *run == id(1)))
    );
    assert!(commands.contains(&Command::Deliver { run: id(1) }));
}

#[test]
fn delivery_waits_for_a_waiting_run_and_drops_arrivals_of_a_finished_one() {
    for status in STATUSES {
        let mut state = State::default();
        put(&mut state, run(1, status));
        state.write(&Command::Arm {
            run: id(1),
            wait: child_wait(1, 2),
        });
        state.write(&Command::PutArrival {
            run: id(1),
            arrival: Arrival {
                wait_id: 1,
                part: 0,
                value: WakeValue::Timer,
            },
        });
        let (commands, _) = step(&mut state, Input::Deliver { run: id(1) }, 10).unwrap();
        let woke = commands
            .iter()
            .any(|c| matches!(c, Command::AppendJournal { .. }));
        assert_eq!(woke, status == RunStatus::Waiting, "{status}");
        let kept = !state.inbox.is_empty();
        assert_eq!(
            kept,
            !status.is_final() && status != RunStatus::Waiting,
            "{status}"
        );
    }
}

#[test]
fn a_batch_wakes_when_its_last_child_arrives_with_outcomes_in_item_order() {
    let outcome = |n: u64| RunOutcome {
        run_id: id(n),
        ok: true,
        value: n.to_string(),
    };
    let wait = WaitRecord {
        id: 3,
        on: WaitOn::Batch {
            batch_id: "b".into(),
            runs: vec![id(5), id(6)],
        },
    };
    let arrival = |part: u32, n: u64| Arrival {
        wait_id: 3,
        part,
        value: WakeValue::Run {
            outcome: outcome(n),
        },
    };
    let (wakes, stale) = wakes::complete(std::slice::from_ref(&wait), &[arrival(1, 6)]);
    assert!(wakes.is_empty() && stale.is_empty());
    let stray = Arrival {
        wait_id: 9,
        part: 0,
        value: WakeValue::Timer,
    };
    let (wakes, stale) = wakes::complete(&[wait], &[arrival(1, 6), arrival(0, 5), stray]);
    assert_eq!(stale, vec![(9, 0)]);
    assert_eq!(
        wakes[0].value,
        WakeValue::Batch {
            outcomes: vec![outcome(5), outcome(6)]
        }
    );
    assert_eq!(wakes[0].parts, vec![0, 1]);
}

/// A run suspended on token 1 (timing out at 100) as wait 1.
fn waiting_on_token() -> State {
    let mut state = State::default();
    put(&mut state, run(1, RunStatus::Executing));
    state.write(&Command::PutToken(token(1, Some(100))));
    let input = suspend(1, vec![token_wait(1, 1, Some(100))]);
    step(&mut state, input, 10).unwrap();
    state
}

#[test]
fn a_token_completed_first_ignores_its_timeout() {
    let mut state = waiting_on_token();
    let complete = Input::CompleteToken {
        token: token_id(1),
        data: "\"yes\"".into(),
    };
    let (commands, outcome) = step(&mut state, complete, 50).unwrap();
    assert!(matches!(outcome, Outcome::Token(t) if t.status == TokenStatus::Completed));
    assert!(
        commands
            .iter()
            .any(|c| matches!(c, Command::PutArrival { .. }))
    );
    let due = Input::TimerDue {
        run: id(1),
        wait: 1,
        due: Timestamp(100),
    };
    let (commands, _) = step(&mut state, due, 100).unwrap();
    assert!(
        commands
            .iter()
            .all(|c| matches!(c, Command::DeleteTimer { .. })),
        "{commands:?}"
    );
    assert_eq!(state.tokens[&token_id(1)].status, TokenStatus::Completed);
}

#[test]
fn a_token_timed_out_first_refuses_its_completion() {
    let mut state = waiting_on_token();
    let due = Input::TimerDue {
        run: id(1),
        wait: 1,
        due: Timestamp(100),
    };
    let (commands, _) = step(&mut state, due, 100).unwrap();
    assert!(
        commands
            .iter()
            .any(|c| matches!(c, Command::PutToken(t) if t.status == TokenStatus::TimedOut))
    );
    assert!(
        commands
            .iter()
            .any(|c| matches!(c, Command::PutArrival { .. }))
    );
    let complete = Input::CompleteToken {
        token: token_id(1),
        data: "1".into(),
    };
    let (commands, outcome) = step(&mut state, complete, 101).unwrap();
    assert!(matches!(outcome, Outcome::TokenTimedOut(_)));
    assert!(commands.is_empty());
}

#[test]
fn a_completion_after_the_timeout_but_before_its_timer_times_the_token_out() {
    let mut state = waiting_on_token();
    let complete = Input::CompleteToken {
        token: token_id(1),
        data: "1".into(),
    };
    let (commands, outcome) = step(&mut state, complete, 150).unwrap();
    assert!(matches!(outcome, Outcome::TokenTimedOut(_)));
    let arrival = commands.iter().find_map(|c| match c {
        Command::PutArrival { arrival, .. } => Some(arrival.value.clone()),
        _ => None,
    });
    assert!(matches!(
        arrival,
        Some(WakeValue::Token {
            data: None,
            error: Some(_)
        })
    ));
    assert_eq!(state.tokens[&token_id(1)].status, TokenStatus::TimedOut);
}

#[test]
fn an_ended_attempt_takes_its_armed_waits_and_inbox_with_it() {
    let mut state = parent_waiting_on_child();
    state.write(&Command::PutArrival {
        run: id(1),
        arrival: Arrival {
            wait_id: 7,
            part: 0,
            value: WakeValue::Timer,
        },
    });
    step(
        &mut state,
        Input::Run {
            run: id(1),
            event: Event::Cancel,
            logs: Logs::default(),
        },
        30,
    )
    .unwrap();
    assert!(state.waits.is_empty() && state.inbox.is_empty() && state.waiters.is_empty());
    // The canceled parent's child is told to cancel too.
    let mut state = parent_waiting_on_child();
    let (commands, _) = step(
        &mut state,
        Input::Run {
            run: id(1),
            event: Event::Cancel,
            logs: Logs::default(),
        },
        30,
    )
    .unwrap();
    assert!(commands.contains(&Command::CancelChildren { run: id(1) }));
}

/// The model store, counting how often a run's waits or inbox are read.
struct Counting<'a> {
    state: &'a State,
    reads: std::cell::Cell<u32>,
}

impl<'a> Counting<'a> {
    fn new(state: &'a State) -> Self {
        Counting {
            state,
            reads: std::cell::Cell::new(0),
        }
    }
}

impl View for Counting<'_> {
    fn run(&self, id: &RunId) -> ViewResult<Option<Run>> {
        self.state.run(id)
    }
    fn outcome(&self, run: &Run) -> ViewResult<RunOutcome> {
        self.state.outcome(run)
    }
    fn waiters(&self, child: &RunId) -> ViewResult<Vec<Waiter>> {
        self.state.waiters(child)
    }
    fn waits(&self, run: &RunId) -> ViewResult<Vec<WaitRecord>> {
        self.reads.set(self.reads.get() + 1);
        self.state.waits(run)
    }
    fn inbox(&self, run: &RunId) -> ViewResult<Vec<Arrival>> {
        self.reads.set(self.reads.get() + 1);
        self.state.inbox(run)
    }
    fn token(&self, id: &TokenId) -> ViewResult<Option<WaitToken>> {
        self.state.token(id)
    }
    fn token_waiters(&self, id: &TokenId) -> ViewResult<Vec<Waiter>> {
        self.state.token_waiters(id)
    }
    fn last_journal_seq(&self, run: &RunId) -> ViewResult<u64> {
        self.state.last_journal_seq(run)
    }
}

#[test]
fn an_attempt_reads_its_waits_at_its_end_only_if_it_ever_suspended() {
    // Never suspended: nothing armed, nothing read.
    let mut state = State::default();
    put(&mut state, run(1, RunStatus::Executing));
    let view = Counting::new(&state);
    let applied = apply(&view, succeed(1), Timestamp(20)).unwrap();
    assert_eq!(view.reads.get(), 0);
    assert!(
        !applied
            .commands
            .iter()
            .any(|c| matches!(c, Command::Disarm { .. } | Command::DeleteArrival { .. }))
    );
    // Suspended, then canceled: its waits and inbox are read and dropped.
    let mut state = parent_waiting_on_child();
    assert!(state.run(&id(1)).unwrap().unwrap().attempts[0].suspended);
    let cancel = || Input::Run {
        run: id(1),
        event: Event::Cancel,
        logs: Logs::default(),
    };
    let view = Counting::new(&state);
    apply(&view, cancel(), Timestamp(30)).unwrap();
    assert!(view.reads.get() >= 2);
    step(&mut state, cancel(), 30).unwrap();
    assert!(state.waits.is_empty() && state.inbox.is_empty());
}

#[test]
fn a_woken_attempt_still_drops_the_waits_it_armed_before_when_it_ends() {
    let mut state = State::default();
    put(&mut state, run(1, RunStatus::Executing));
    put(&mut state, run(2, RunStatus::Executing));
    let timer = WaitRecord {
        id: 2,
        on: WaitOn::Timer {
            due_at: Timestamp(50),
        },
    };
    step(&mut state, suspend(1, vec![child_wait(1, 2), timer]), 10).unwrap();
    // The timer wakes the run; the wait on the child stays armed.
    let due = Input::TimerDue {
        run: id(1),
        wait: 2,
        due: Timestamp(50),
    };
    step(&mut state, due, 50).unwrap();
    step(&mut state, Input::Deliver { run: id(1) }, 51).unwrap();
    step(&mut state, Input::Claim { run: id(1) }, 52).unwrap();
    let resumed = state.run(&id(1)).unwrap().unwrap();
    assert_eq!(resumed.status, RunStatus::Executing);
    assert_eq!(resumed.attempts.len(), 1);
    assert!(resumed.attempts[0].suspended);
    assert!(!state.waiters.is_empty(), "the wait on the child is armed");
    // The attempt ends: the wait it armed before it was woken goes too.
    let cancel = Input::Run {
        run: id(1),
        event: Event::Cancel,
        logs: Logs::default(),
    };
    step(&mut state, cancel, 60).unwrap();
    assert!(state.waits.is_empty() && state.inbox.is_empty() && state.waiters.is_empty());
}

#[test]
fn only_an_executing_run_suspends() {
    for status in STATUSES.into_iter().filter(|s| *s != RunStatus::Executing) {
        let mut state = State::default();
        put(&mut state, run(1, status));
        let input = suspend(1, vec![child_wait(1, 2)]);
        assert!(
            matches!(step(&mut state, input, 10), Err(EngineError::Transition(_))),
            "{status}"
        );
        assert!(state.waits.is_empty(), "a refused input writes nothing");
    }
}

#[test]
fn a_recheck_finds_a_child_that_ended_without_waking_its_parent() {
    // As an older Kiln could leave it: the child ended, the parent's wake
    // was never written.
    let mut state = parent_waiting_on_child();
    let mut child = state.runs[&id(2)].clone();
    child.status = RunStatus::Completed;
    child.output = Some("7".into());
    put(&mut state, child);
    assert!(state.inbox.is_empty());
    let (commands, _) = step(&mut state, Input::Recheck { run: id(1) }, 30).unwrap();
    assert!(commands.contains(&Command::Deliver { run: id(1) }));
    let (_, outcome) = step(&mut state, Input::Deliver { run: id(1) }, 31).unwrap();
    assert!(matches!(outcome, Outcome::Run(r) if r.status == RunStatus::Queued));
    // Nothing to find for a run that is not waiting.
    let (commands, _) = step(&mut state, Input::Recheck { run: id(1) }, 32).unwrap();
    assert!(commands.is_empty());
}

#[test]
fn a_token_completion_wakes_every_run_waiting_on_it() {
    let mut state = State::default();
    state.write(&Command::PutToken(token(1, None)));
    for n in [1, 2] {
        put(&mut state, run(n, RunStatus::Executing));
        let input = suspend(n, vec![token_wait(3, 1, None)]);
        step(&mut state, input, 10).unwrap();
    }
    let complete = Input::CompleteToken {
        token: token_id(1),
        data: "1".into(),
    };
    let (commands, _) = step(&mut state, complete, 20).unwrap();
    for n in [1, 2] {
        assert!(commands.contains(&Command::Deliver { run: id(n) }), "{n}");
        let (_, outcome) = step(&mut state, Input::Deliver { run: id(n) }, 21).unwrap();
        assert!(matches!(outcome, Outcome::Run(r) if r.status == RunStatus::Queued));
    }
    assert!(state.token_waiters.is_empty());
}

#[test]
fn a_token_timeout_wakes_every_run_waiting_on_it() {
    let mut state = State::default();
    state.write(&Command::PutToken(token(1, Some(100))));
    for n in [1, 2] {
        put(&mut state, run(n, RunStatus::Executing));
        let input = suspend(n, vec![token_wait(4, 1, Some(100))]);
        step(&mut state, input, 10).unwrap();
    }
    // Each waiter's own timer fires; the first times the token out.
    for n in [1, 2] {
        let due = Input::TimerDue {
            run: id(n),
            wait: 4,
            due: Timestamp(100),
        };
        let (commands, _) = step(&mut state, due, 100).unwrap();
        assert!(commands.contains(&Command::Deliver { run: id(n) }), "{n}");
        let (_, outcome) = step(&mut state, Input::Deliver { run: id(n) }, 101).unwrap();
        assert!(
            matches!(outcome, Outcome::Run(r) if r.status == RunStatus::Queued),
            "{n}"
        );
    }
}
