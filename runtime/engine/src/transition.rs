//! The transition function.

use crate::event::{Action, Event, FailureKind};
use kiln_types::{Attempt, AttemptOutcome, Run, RunStatus, Timestamp};

/// The result of applying an event: the run's next record and what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The run after the event.
    pub run: Run,
    /// What the driver must do.
    pub actions: Vec<Action>,
}

/// An event that does not apply to the run's status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a run in status {status} cannot take the event {event}")]
pub struct TransitionError {
    /// The run's status.
    pub status: RunStatus,
    /// The event's name.
    pub event: &'static str,
}

fn event_name(event: &Event) -> &'static str {
    match event {
        Event::Dequeued => "Dequeued",
        Event::AttemptStarted => "AttemptStarted",
        Event::AttemptSucceeded { .. } => "AttemptSucceeded",
        Event::AttemptFailed { .. } => "AttemptFailed",
        Event::Suspended { .. } => "Suspended",
        Event::Woken => "Woken",
        Event::Cancel => "Cancel",
        Event::Recovered => "Recovered",
        Event::DelayElapsed => "DelayElapsed",
        Event::Expire => "Expire",
    }
}

/// Applies `event` to `run` at time `now`.
pub fn apply(run: &Run, event: Event, now: Timestamp) -> Result<Transition, TransitionError> {
    apply_to(run.clone(), event, now)
}

/// As [`apply`], taking the run rather than a copy of it: the engine's own
/// steps read a run to change it and need the record before no more, and
/// a run's record is copied whole (its payload, output, attempts and their
/// log lines), three times for each `hello-world` run when every step
/// copied it.
pub fn apply_to(run: Run, event: Event, now: Timestamp) -> Result<Transition, TransitionError> {
    use RunStatus as S;
    let status = run.status;
    let invalid = |event: &Event| TransitionError {
        status,
        event: event_name(event),
    };
    let mut next = run;
    next.updated_at = now;
    let mut actions = Vec::new();
    match (status, event) {
        (S::Queued, Event::Dequeued) => {
            next.status = S::Dequeued;
        }
        (S::Dequeued, Event::AttemptStarted) if next.current_attempt_mut().is_some() => {
            // A woken or recovered run continues its open attempt.
            next.status = S::Executing;
        }
        (S::Dequeued, Event::AttemptStarted) => {
            next.status = S::Executing;
            next.next_attempt_at = None;
            next.started_at.get_or_insert(now);
            let number = next.attempts.len() as u32 + 1;
            let machine = next.machine;
            next.attempts.push(Attempt::started(number, machine, now));
        }
        (S::Executing, Event::AttemptSucceeded { output, usage_ms }) => {
            close_attempt(&mut next, now, AttemptOutcome::Succeeded, None, usage_ms);
            next.status = S::Completed;
            next.output = Some(output);
            next.error = None;
            finish(&mut next, now, &mut actions);
        }
        (
            S::Executing,
            Event::AttemptFailed {
                kind,
                error,
                usage_ms,
                random,
            },
        ) => {
            let (outcome, final_status) = match &kind {
                FailureKind::Error { .. } => (AttemptOutcome::Failed, S::Failed),
                FailureKind::OutOfMemory => (AttemptOutcome::Crashed, S::Crashed),
                FailureKind::TimedOut => (AttemptOutcome::TimedOut, S::TimedOut),
                FailureKind::System => (AttemptOutcome::SystemFailure, S::SystemFailure),
            };
            debug_assert_eq!(
                Some(outcome),
                Event::AttemptFailed {
                    kind: kind.clone(),
                    error: error.clone(),
                    usage_ms,
                    random,
                }
                .attempt_outcome()
            );
            close_attempt(&mut next, now, outcome, Some(error.clone()), usage_ms);
            next.error = Some(error);
            let attempts_left = next.counted_attempts() < next.max_attempts;
            let retry_delay = match kind {
                FailureKind::Error {
                    abort: false,
                    retry_delay_ms,
                } if attempts_left => Some(retry_delay_ms),
                FailureKind::OutOfMemory if attempts_left => {
                    match next.retry.out_of_memory_machine {
                        Some(larger)
                            if larger.memory_limit_bytes() > next.machine.memory_limit_bytes() =>
                        {
                            next.machine = larger;
                            Some(None)
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            match retry_delay {
                Some(delay) => {
                    let delay = delay
                        .unwrap_or_else(|| next.retry.delay_ms(next.counted_attempts(), random));
                    let at = Timestamp(now.0.saturating_add(delay));
                    next.status = S::Queued;
                    next.next_attempt_at = Some(at);
                    actions.push(Action::Enqueue {
                        not_before: Some(at),
                    });
                }
                None => {
                    next.status = final_status;
                    finish(&mut next, now, &mut actions);
                }
            }
        }
        (S::Executing, Event::Suspended { usage_ms }) => {
            if let Some(attempt) = next.current_attempt_mut() {
                attempt.usage_ms = attempt.usage_ms.max(usage_ms);
            }
            // Marked on the last attempt whatever it is, so the flag is never
            // false while the run holds waits (see `Attempt::suspended`).
            if let Some(attempt) = next.attempts.last_mut() {
                attempt.suspended = true;
            }
            next.status = S::Waiting;
        }
        (S::Waiting, Event::Woken) => {
            next.status = S::Queued;
            actions.push(Action::Enqueue { not_before: None });
        }
        (S::Dequeued | S::Executing, Event::Recovered) => {
            next.status = S::Queued;
            actions.push(Action::Enqueue {
                not_before: next.next_attempt_at,
            });
        }
        (S::Delayed, Event::DelayElapsed) => {
            next.status = S::Queued;
            next.delayed_until = None;
            next.debounce = None;
            next.expires_at = next
                .ttl
                .as_ref()
                .map(|ttl| Timestamp(now.0.saturating_add(ttl.ms)));
            actions.push(Action::Enqueue { not_before: None });
        }
        (S::Queued | S::Delayed | S::PendingVersion, Event::Expire) if next.attempts.is_empty() => {
            next.status = S::Expired;
            next.expired_at = Some(now);
            next.delayed_until = None;
            next.debounce = None;
            let ttl = next.ttl.as_ref().map_or("", |t| t.text.as_str());
            next.error = Some(kiln_types::RunError::new(
                "Expired",
                format!("the run did not start within its ttl of {ttl}"),
            ));
            finish(&mut next, now, &mut actions);
        }
        (status, Event::Cancel) if !status.is_final() => {
            close_attempt(&mut next, now, AttemptOutcome::Canceled, None, 0);
            if status == S::Executing {
                actions.push(Action::InterruptAttempt);
            }
            next.status = S::Canceled;
            finish(&mut next, now, &mut actions);
        }
        (_, event) => return Err(invalid(&event)),
    }
    Ok(Transition { run: next, actions })
}

fn close_attempt(
    run: &mut Run,
    now: Timestamp,
    outcome: AttemptOutcome,
    error: Option<kiln_types::RunError>,
    usage_ms: u64,
) {
    if let Some(attempt) = run.current_attempt_mut() {
        attempt.finished_at = Some(now);
        attempt.outcome = Some(outcome);
        attempt.error = error;
        attempt.usage_ms = attempt.usage_ms.max(usage_ms);
    }
}

fn finish(run: &mut Run, now: Timestamp, actions: &mut Vec<Action>) {
    run.finished_at = Some(now);
    run.next_attempt_at = None;
    actions.push(Action::NotifyFinished);
}
