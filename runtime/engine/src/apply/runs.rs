//! Status events, and what a run's end owes the runs that wait on it.

use super::{Applied, EngineError, Outcome};
use crate::{Action, Command, Event, View, transition};
use kiln_types::{Arrival, Logs, Run, RunId, Timestamp, WaitOn, WakeValue};

/// A status event: the transition, plus what it implies. An attempt that
/// ends takes its armed waits and its inbox with it; a run that ends puts
/// its outcome in the inbox of every run waiting on it, in the same commit.
pub(super) fn event(
    view: &impl View,
    id: &RunId,
    event: Event,
    logs: Logs,
    now: Timestamp,
) -> Result<Applied, EngineError> {
    let run = with_logs(view, id, logs)?;
    let ends_attempt = matches!(
        event,
        Event::AttemptSucceeded { .. } | Event::AttemptFailed { .. } | Event::Cancel
    );
    let canceled = matches!(event, Event::Cancel);
    let drops_waits = ends_attempt && may_have_waits(&run);
    let t = transition::apply_to(run, event, now)?;
    let mut commands = vec![Command::PutRun(t.run.clone())];
    if drops_waits {
        drop_waits(view, id, &mut commands)?;
    }
    for action in &t.actions {
        match action {
            Action::Enqueue { not_before } => commands.push(Command::Enqueue {
                run: t.run.clone(),
                not_before: *not_before,
            }),
            Action::InterruptAttempt => commands.push(Command::Interrupt { run: id.clone() }),
            Action::NotifyFinished => finished(view, &t.run, &mut commands)?,
        }
    }
    if canceled {
        commands.push(Command::CancelChildren { run: id.clone() });
    }
    Ok(Applied::new(commands, Outcome::Run(Box::new(t.run))))
}

/// `QUEUED` → `DEQUEUED` → `EXECUTING`, as one write.
pub(super) fn claim(view: &impl View, id: &RunId, now: Timestamp) -> Result<Applied, EngineError> {
    let run = view
        .run(id)?
        .ok_or_else(|| EngineError::RunNotFound(id.clone()))?;
    let first = run.attempts.is_empty();
    let run = transition::apply_to(run, Event::Dequeued, now)?.run;
    let run = transition::apply_to(run, Event::AttemptStarted, now)?.run;
    Ok(Applied::new(
        vec![Command::PutRun(run.clone())],
        Outcome::Claimed {
            run: Box::new(run),
            first,
        },
    ))
}

/// The run's record with a slice's log lines added.
pub(super) fn with_logs(view: &impl View, id: &RunId, logs: Logs) -> Result<Run, EngineError> {
    let mut run = view
        .run(id)?
        .ok_or_else(|| EngineError::RunNotFound(id.clone()))?;
    keep_logs(&mut run, logs);
    Ok(run)
}

/// Adds a slice's log lines (kept under the attempt's caps by the host)
/// to the run's record, and counts the ones it dropped.
fn keep_logs(run: &mut Run, mut logs: Logs) {
    if logs.lines.is_empty() && logs.dropped == 0 {
        return;
    }
    if let Some(current) = run.current_attempt_mut() {
        current.logs.append(&mut logs.lines);
        let over = current.logs.len().saturating_sub(Run::MAX_LOG_LINES);
        current.logs.truncate(Run::MAX_LOG_LINES);
        current.logs_dropped += logs.dropped + over as u64;
    }
}

/// Whether a run's last attempt may have armed waits or arrivals in its
/// inbox: one that never suspended has neither (see
/// [`kiln_types::Attempt::suspended`]), so its end need not read them. A
/// run with no attempt is read all the same.
fn may_have_waits(run: &Run) -> bool {
    run.attempts.last().is_none_or(|a| a.suspended)
}

/// Disarms every wait the run armed and empties its inbox: an attempt that
/// ended waits on nothing, and a later attempt numbers its waits anew.
fn drop_waits(
    view: &impl View,
    id: &RunId,
    commands: &mut Vec<Command>,
) -> Result<(), EngineError> {
    for wait in view.waits(id)? {
        commands.push(Command::Disarm {
            run: id.clone(),
            wait,
        });
    }
    for arrival in view.inbox(id)? {
        commands.push(Command::DeleteArrival {
            run: id.clone(),
            wait: arrival.wait_id,
            part: arrival.part,
        });
    }
    Ok(())
}

/// A run reached a final status: its outcome goes to the inbox of each run
/// waiting on it (a run wait, or its part of a batch wait).
fn finished(view: &impl View, run: &Run, commands: &mut Vec<Command>) -> Result<(), EngineError> {
    commands.push(Command::Finished {
        run: run.id.clone(),
    });
    let waiters = view.waiters(&run.id)?;
    if waiters.is_empty() {
        return Ok(());
    }
    let outcome = view.outcome(run)?;
    for waiter in waiters {
        let Some(wait) = view
            .waits(&waiter.parent)?
            .into_iter()
            .find(|w| w.id == waiter.wait_id)
        else {
            continue;
        };
        let parts: Vec<u32> = match &wait.on {
            WaitOn::Run { run_id } if *run_id == run.id => vec![0],
            WaitOn::Batch { runs, .. } => runs
                .iter()
                .enumerate()
                .filter(|(_, r)| **r == run.id)
                .map(|(i, _)| i as u32)
                .collect(),
            _ => Vec::new(),
        };
        if parts.is_empty() {
            continue;
        }
        for part in parts {
            commands.push(Command::PutArrival {
                run: waiter.parent.clone(),
                arrival: Arrival {
                    wait_id: wait.id,
                    part,
                    value: WakeValue::Run {
                        outcome: outcome.clone(),
                    },
                },
            });
        }
        commands.push(Command::Deliver {
            run: waiter.parent.clone(),
        });
    }
    Ok(())
}
