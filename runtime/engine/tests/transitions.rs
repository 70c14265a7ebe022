//! The run state machine, event by event and over every (status, event) pair.

use kiln_engine::{Action, Event, FailureKind, apply_event as apply};
use kiln_types::{AttemptOutcome, DeploymentId, Run, RunError, RunId, RunStatus, Timestamp};

fn run(status: RunStatus, max_attempts: u32) -> Run {
    Run {
        status,
        max_attempts,
        ..Run::queued(
            RunId::generate(1),
            "t",
            DeploymentId::generate(1),
            "20261122.1",
            "{}",
            Timestamp(1),
        )
    }
}

fn failed(kind: FailureKind) -> Event {
    Event::AttemptFailed {
        kind,
        error: RunError::new("Error", "boom"),
        usage_ms: 5,
        random: 0.0,
    }
}

fn every_event() -> Vec<Event> {
    vec![
        Event::Dequeued,
        Event::AttemptStarted,
        Event::AttemptSucceeded {
            output: "1".into(),
            usage_ms: 1,
        },
        failed(FailureKind::Error {
            abort: false,
            retry_delay_ms: None,
        }),
        failed(FailureKind::OutOfMemory),
        failed(FailureKind::TimedOut),
        failed(FailureKind::System),
        Event::Suspended { usage_ms: 3 },
        Event::Woken,
        Event::Cancel,
        Event::Recovered,
        Event::DelayElapsed,
        Event::Expire,
    ]
}

/// Drives a queued run into `EXECUTING`.
fn executing(max_attempts: u32) -> Run {
    let r = run(RunStatus::Queued, max_attempts);
    let r = apply(&r, Event::Dequeued, Timestamp(2)).unwrap().run;
    apply(&r, Event::AttemptStarted, Timestamp(3)).unwrap().run
}

#[test]
fn a_run_completes_with_its_output() {
    let r = executing(3);
    assert_eq!(r.status, RunStatus::Executing);
    assert_eq!(r.started_at, Some(Timestamp(3)));
    let t = apply(
        &r,
        Event::AttemptSucceeded {
            output: "{\"ok\":true}".into(),
            usage_ms: 7,
        },
        Timestamp(10),
    )
    .unwrap();
    assert_eq!(t.run.status, RunStatus::Completed);
    assert_eq!(t.run.output.as_deref(), Some("{\"ok\":true}"));
    assert_eq!(t.run.finished_at, Some(Timestamp(10)));
    assert_eq!(t.run.attempts[0].outcome, Some(AttemptOutcome::Succeeded));
    assert_eq!(t.run.usage_ms(), 7);
    assert_eq!(t.actions, vec![Action::NotifyFinished]);
}

#[test]
fn an_error_is_retried_until_attempts_run_out() {
    let r = executing(2);
    let t = apply(
        &r,
        failed(FailureKind::Error {
            abort: false,
            retry_delay_ms: Some(50),
        }),
        Timestamp(10),
    )
    .unwrap();
    assert_eq!(t.run.status, RunStatus::Queued);
    assert_eq!(
        t.actions,
        vec![Action::Enqueue {
            not_before: Some(Timestamp(60))
        }]
    );
    let r = apply(&t.run, Event::Dequeued, Timestamp(60)).unwrap().run;
    let r = apply(&r, Event::AttemptStarted, Timestamp(61)).unwrap().run;
    assert_eq!(r.attempts.len(), 2);
    assert_eq!(r.attempts[1].number, 2);
    let t = apply(
        &r,
        failed(FailureKind::Error {
            abort: false,
            retry_delay_ms: None,
        }),
        Timestamp(70),
    )
    .unwrap();
    assert_eq!(t.run.status, RunStatus::Failed);
    assert_eq!(t.run.error.as_ref().unwrap().message, "boom");
    assert_eq!(t.actions, vec![Action::NotifyFinished]);
}

#[test]
fn an_abort_fails_at_once() {
    let t = apply(
        &executing(5),
        failed(FailureKind::Error {
            abort: true,
            retry_delay_ms: None,
        }),
        Timestamp(10),
    )
    .unwrap();
    assert_eq!(t.run.status, RunStatus::Failed);
}

#[test]
fn limits_end_the_run_with_their_own_status() {
    for (kind, status, outcome) in [
        (
            FailureKind::OutOfMemory,
            RunStatus::Crashed,
            AttemptOutcome::Crashed,
        ),
        (
            FailureKind::TimedOut,
            RunStatus::TimedOut,
            AttemptOutcome::TimedOut,
        ),
        (
            FailureKind::System,
            RunStatus::SystemFailure,
            AttemptOutcome::SystemFailure,
        ),
    ] {
        let t = apply(&executing(5), failed(kind), Timestamp(10)).unwrap();
        assert_eq!(t.run.status, status);
        assert_eq!(t.run.attempts[0].outcome, Some(outcome));
    }
}

#[test]
fn recovery_requeues_and_keeps_the_attempt_open() {
    let t = apply(&executing(1), Event::Recovered, Timestamp(10)).unwrap();
    assert_eq!(t.run.status, RunStatus::Queued);
    assert_eq!(t.actions, vec![Action::Enqueue { not_before: None }]);
    // The next start continues attempt 1 (it replays its journal).
    let r = apply(&t.run, Event::Dequeued, Timestamp(11)).unwrap().run;
    let r = apply(&r, Event::AttemptStarted, Timestamp(12)).unwrap().run;
    assert_eq!(r.attempts.len(), 1);
    assert_eq!(r.status, RunStatus::Executing);
}

#[test]
fn a_suspended_run_waits_then_resumes_the_same_attempt() {
    let t = apply(
        &executing(3),
        Event::Suspended { usage_ms: 40 },
        Timestamp(10),
    )
    .unwrap();
    assert_eq!(t.run.status, RunStatus::Waiting);
    assert!(
        t.actions.is_empty(),
        "waiting holds no slot and needs no action"
    );
    assert_eq!(t.run.attempts[0].usage_ms, 40);
    let t = apply(&t.run, Event::Woken, Timestamp(20)).unwrap();
    assert_eq!(t.run.status, RunStatus::Queued);
    assert_eq!(t.actions, vec![Action::Enqueue { not_before: None }]);
    let r = apply(&t.run, Event::Dequeued, Timestamp(21)).unwrap().run;
    let r = apply(&r, Event::AttemptStarted, Timestamp(22)).unwrap().run;
    assert_eq!(r.attempts.len(), 1, "a wake continues the attempt");
    let t = apply(
        &r,
        Event::AttemptSucceeded {
            output: "7".into(),
            usage_ms: 50,
        },
        Timestamp(30),
    )
    .unwrap();
    assert_eq!(t.run.status, RunStatus::Completed);
    assert_eq!(t.run.attempts[0].usage_ms, 50);
}

#[test]
fn cancel_of_a_waiting_run_ends_it_in_place() {
    let r = apply(
        &executing(3),
        Event::Suspended { usage_ms: 1 },
        Timestamp(10),
    )
    .unwrap()
    .run;
    let t = apply(&r, Event::Cancel, Timestamp(11)).unwrap();
    assert_eq!(t.run.status, RunStatus::Canceled);
    assert_eq!(t.actions, vec![Action::NotifyFinished]);
    assert_eq!(t.run.attempts[0].outcome, Some(AttemptOutcome::Canceled));
}

#[test]
fn out_of_memory_retries_on_the_larger_machine_when_the_policy_says_so() {
    let mut r = executing(3);
    r.retry.out_of_memory_machine = Some(kiln_manifest::Machine::Medium2x);
    let t = apply(&r, failed(FailureKind::OutOfMemory), Timestamp(10)).unwrap();
    assert_eq!(t.run.status, RunStatus::Queued);
    assert_eq!(t.run.machine, kiln_manifest::Machine::Medium2x);
    assert_eq!(t.run.attempts[0].outcome, Some(AttemptOutcome::Crashed));
    // On the larger machine, running out again ends the run CRASHED.
    let r = apply(&t.run, Event::Dequeued, Timestamp(11)).unwrap().run;
    let r = apply(&r, Event::AttemptStarted, Timestamp(12)).unwrap().run;
    assert_eq!(r.attempts[1].machine, kiln_manifest::Machine::Medium2x);
    let t = apply(&r, failed(FailureKind::OutOfMemory), Timestamp(13)).unwrap();
    assert_eq!(t.run.status, RunStatus::Crashed);
}

#[test]
fn cancel_interrupts_an_executing_attempt() {
    let t = apply(&executing(1), Event::Cancel, Timestamp(10)).unwrap();
    assert_eq!(t.run.status, RunStatus::Canceled);
    assert_eq!(
        t.actions,
        vec![Action::InterruptAttempt, Action::NotifyFinished]
    );
    let t = apply(&run(RunStatus::Queued, 1), Event::Cancel, Timestamp(10)).unwrap();
    assert_eq!(t.actions, vec![Action::NotifyFinished]);
}

/// Every (status, event) pair either transitions as the table says or is
/// refused, and a refusal never changes the run.
#[test]
fn a_delayed_run_is_queued_when_its_delay_ends_and_its_ttl_starts_then() {
    let mut r = run(RunStatus::Delayed, 3);
    r.delayed_until = Some(Timestamp(50));
    r.ttl = Some(kiln_types::RunTtl {
        text: "10s".into(),
        ms: 10_000,
    });
    let t = apply(&r, Event::DelayElapsed, Timestamp(50)).unwrap();
    assert_eq!(t.run.status, RunStatus::Queued);
    assert_eq!(t.run.delayed_until, None);
    assert_eq!(t.run.expires_at, Some(Timestamp(10_050)));
    assert_eq!(t.actions, vec![Action::Enqueue { not_before: None }]);
}

#[test]
fn a_run_expires_only_before_its_first_attempt() {
    let t = apply(&run(RunStatus::Queued, 3), Event::Expire, Timestamp(9)).unwrap();
    assert_eq!(t.run.status, RunStatus::Expired);
    assert_eq!(t.run.expired_at, Some(Timestamp(9)));
    assert!(t.actions.contains(&Action::NotifyFinished));
    // A run queued for its retry has started once: its ttl no longer counts.
    let retrying = apply(
        &executing(3),
        failed(FailureKind::Error {
            abort: false,
            retry_delay_ms: Some(10),
        }),
        Timestamp(5),
    )
    .unwrap()
    .run;
    assert_eq!(retrying.status, RunStatus::Queued);
    assert!(apply(&retrying, Event::Expire, Timestamp(9)).is_err());
}

#[test]
fn every_status_event_pair_has_a_defined_answer() {
    use RunStatus as S;
    for status in RunStatus::ALL {
        for event in every_event() {
            let r = if status == S::Executing {
                executing(3)
            } else {
                run(status, 3)
            };
            let expected_ok = match (&event, status) {
                (Event::Dequeued, S::Queued) => true,
                (Event::AttemptStarted, S::Dequeued) => true,
                (Event::AttemptSucceeded { .. } | Event::AttemptFailed { .. }, S::Executing) => {
                    true
                }
                (Event::Recovered, S::Dequeued | S::Executing) => true,
                (Event::Suspended { .. }, S::Executing) => true,
                (Event::Woken, S::Waiting) => true,
                (Event::DelayElapsed, S::Delayed) => true,
                // `executing` has an attempt; the others have none.
                (Event::Expire, S::Queued | S::Delayed | S::PendingVersion) => true,
                (Event::Cancel, s) => !s.is_final(),
                _ => false,
            };
            let result = apply(&r, event.clone(), Timestamp(100));
            assert_eq!(
                result.is_ok(),
                expected_ok,
                "status {status} event {event:?}: {result:?}"
            );
            match result {
                Ok(t) => {
                    assert_eq!(t.run.updated_at, Timestamp(100));
                    if t.run.status.is_final() {
                        assert_eq!(t.run.finished_at, Some(Timestamp(100)));
                        assert!(t.actions.contains(&Action::NotifyFinished));
                    }
                }
                Err(e) => assert_eq!(e.status, status),
            }
        }
    }
}
