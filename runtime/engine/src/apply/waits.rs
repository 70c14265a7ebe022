//! Suspending a run, due timers, and delivering wakes: the one path by
//! which a wake reaches a suspended run.

use super::runs::with_logs;
use super::{Applied, EngineError, Outcome, tokens};
use crate::{Command, Event, View, transition};
use kiln_types::{
    Arrival, JournalEntry, JournalRecord, Logs, RunId, RunStatus, Timestamp, TokenStatus, WaitOn,
    WaitRecord, WakeValue,
};
use std::collections::BTreeMap;

/// A run suspends: `WAITING`, its waits armed, and whatever they wait on
/// that is already true (a child that finished first, a token completed
/// first) put in its inbox in the same commit, then delivered.
pub(super) fn suspend(
    view: &impl View,
    id: &RunId,
    usage_ms: u64,
    waits: Vec<WaitRecord>,
    logs: Logs,
    now: Timestamp,
) -> Result<Applied, EngineError> {
    let run = with_logs(view, id, logs)?;
    let t = transition::apply(&run, Event::Suspended { usage_ms }, now)?;
    let mut commands = vec![Command::PutRun(t.run.clone())];
    let inbox = view.inbox(id)?;
    let mut deliver = !inbox.is_empty();
    let have = arrived(&inbox);
    for wait in waits {
        for arrival in facts(view, &wait, &have, now, &mut commands)? {
            commands.push(Command::PutArrival {
                run: id.clone(),
                arrival,
            });
            deliver = true;
        }
        commands.push(Command::Arm {
            run: id.clone(),
            wait,
        });
    }
    if deliver {
        commands.push(Command::Deliver { run: id.clone() });
    }
    Ok(Applied::new(commands, Outcome::Run(Box::new(t.run))))
}

/// Puts in a `WAITING` run's inbox whatever its armed waits wait on that
/// is true already, and delivers it.
pub(super) fn recheck(
    view: &impl View,
    id: &RunId,
    now: Timestamp,
) -> Result<Applied, EngineError> {
    match view.run(id)? {
        Some(run) if run.status == RunStatus::Waiting => {}
        _ => return Ok(Applied::new(Vec::new(), Outcome::Done)),
    }
    let mut commands = Vec::new();
    let have = arrived(&view.inbox(id)?);
    for wait in view.waits(id)? {
        for arrival in facts(view, &wait, &have, now, &mut commands)? {
            commands.push(Command::PutArrival {
                run: id.clone(),
                arrival,
            });
        }
    }
    if !commands.is_empty() {
        commands.push(Command::Deliver { run: id.clone() });
    }
    Ok(Applied::new(commands, Outcome::Done))
}

/// The parts of waits a run's inbox holds already.
fn arrived(inbox: &[Arrival]) -> std::collections::HashSet<(u64, u32)> {
    inbox.iter().map(|a| (a.wait_id, a.part)).collect()
}

/// What a wait waits on that is true already, leaving out the parts that
/// `have` says are in the inbox (a child's outcome there stays, even once
/// retention has deleted the child).
fn facts(
    view: &impl View,
    wait: &WaitRecord,
    have: &std::collections::HashSet<(u64, u32)>,
    now: Timestamp,
    commands: &mut Vec<Command>,
) -> Result<Vec<Arrival>, EngineError> {
    let arrival = |part: u32, value: WakeValue| Arrival {
        wait_id: wait.id,
        part,
        value,
    };
    let finished = |id: &RunId, part: u32| -> Result<Option<WakeValue>, EngineError> {
        Ok(match view.run(id)? {
            Some(run) if run.status.is_final() => Some(WakeValue::Run {
                outcome: view.outcome(&run)?,
            }),
            Some(_) => None,
            // Its outcome reached the inbox before retention deleted it.
            None if have.contains(&(wait.id, part)) => None,
            // A run is created before anything can wait on it, so one that
            // is not there was deleted by retention: it finished long ago,
            // and the waiter gets a failed outcome instead of waiting for
            // ever.
            None => Some(WakeValue::Run { outcome: gone(id) }),
        })
    };
    Ok(match &wait.on {
        WaitOn::Timer { .. } | WaitOn::Fetch { .. } => Vec::new(),
        WaitOn::Run { run_id } => finished(run_id, 0)?
            .map(|value| arrival(0, value))
            .into_iter()
            .collect(),
        WaitOn::Batch { runs, .. } => {
            let mut arrivals = Vec::new();
            for (part, child) in runs.iter().enumerate() {
                if let Some(value) = finished(child, part as u32)? {
                    arrivals.push(arrival(part as u32, value));
                }
            }
            arrivals
        }
        WaitOn::Token { token_id, .. } => tokens::settled(view, token_id, now, commands)?
            .map(|value| arrival(0, value))
            .into_iter()
            .collect(),
    })
}

/// A wait's durable timer came due: a timer wait's fact is the time, a
/// token wait's timeout resolves the token unless it was completed first.
/// The timer is deleted in the commit that puts the fact in the inbox. A
/// timer that is not the armed wait's (disarmed, or of an earlier attempt
/// whose wait had the same id) only deletes itself.
pub(super) fn timer_due(
    view: &impl View,
    id: &RunId,
    wait_id: u64,
    due: Timestamp,
    now: Timestamp,
) -> Result<Applied, EngineError> {
    let mut commands = vec![Command::DeleteTimer {
        run: id.clone(),
        wait: wait_id,
        due,
    }];
    let Some(wait) = view.waits(id)?.into_iter().find(|w| w.id == wait_id) else {
        return Ok(Applied::new(commands, Outcome::Done));
    };
    let value = match &wait.on {
        WaitOn::Timer { due_at } if *due_at == due => Some(WakeValue::Timer),
        WaitOn::Token {
            token_id,
            timeout_at,
        } if *timeout_at == Some(due) => match view.token(token_id)? {
            // Timed out by another waiter's timer first: this waiter gets
            // the timeout too; completed first: the completion woke it.
            Some(token) if token.status == TokenStatus::TimedOut => {
                Some(tokens::timed_out_value(token_id))
            }
            Some(token) => tokens::time_out(token, now, &mut commands),
            None => None,
        },
        _ => None,
    };
    if let Some(value) = value {
        commands.push(Command::PutArrival {
            run: id.clone(),
            arrival: Arrival {
                wait_id,
                part: 0,
                value,
            },
        });
        commands.push(Command::Deliver { run: id.clone() });
    }
    Ok(Applied::new(commands, Outcome::Done))
}

/// Delivers a run's inbox: each armed wait its arrivals complete is woken
/// (journaled, its arrivals taken out, disarmed) and the run queued, in one
/// commit. Arrivals for a run that is not `WAITING` stay for its next
/// suspension; those for waits it no longer has are dropped. Delivering
/// twice wakes nothing twice: the first delivery emptied the inbox.
pub(super) fn deliver(
    view: &impl View,
    id: &RunId,
    now: Timestamp,
) -> Result<Applied, EngineError> {
    let inbox = view.inbox(id)?;
    if inbox.is_empty() {
        return Ok(Applied::new(Vec::new(), Outcome::Done));
    }
    let drop_all = |inbox: &[Arrival]| {
        inbox
            .iter()
            .map(|a| Command::DeleteArrival {
                run: id.clone(),
                wait: a.wait_id,
                part: a.part,
            })
            .collect::<Vec<_>>()
    };
    let run = match view.run(id)? {
        Some(run) if !run.status.is_final() => run,
        _ => return Ok(Applied::new(drop_all(&inbox), Outcome::Done)),
    };
    if run.status != RunStatus::Waiting {
        return Ok(Applied::new(Vec::new(), Outcome::Done));
    }
    let (wakes, stale) = complete(&view.waits(id)?, &inbox);
    let mut commands: Vec<Command> = stale
        .into_iter()
        .map(|(wait, part)| Command::DeleteArrival {
            run: id.clone(),
            wait,
            part,
        })
        .collect();
    if wakes.is_empty() {
        return Ok(Applied::new(commands, Outcome::Done));
    }
    let first = view.last_journal_seq(id)? + 1;
    for (seq, wake) in (first..).zip(wakes) {
        commands.push(Command::AppendJournal {
            run: id.clone(),
            record: JournalRecord {
                seq,
                at: now,
                entry: JournalEntry::Wake {
                    id: wake.wait.id,
                    value: wake.value,
                },
            },
        });
        for part in wake.parts {
            commands.push(Command::DeleteArrival {
                run: id.clone(),
                wait: wake.wait.id,
                part,
            });
        }
        commands.push(Command::Disarm {
            run: id.clone(),
            wait: wake.wait,
        });
    }
    let t = transition::apply(&run, Event::Woken, now)?;
    commands.push(Command::PutRun(t.run.clone()));
    commands.push(Command::Enqueue {
        run: t.run.clone(),
        not_before: None,
    });
    Ok(Applied::new(commands, Outcome::Run(Box::new(t.run))))
}

/// A wait that its arrivals complete.
#[derive(Debug, Clone, PartialEq)]
pub struct Wake {
    /// The wait.
    pub wait: WaitRecord,
    /// What it wakes with.
    pub value: WakeValue,
    /// The parts of the inbox it takes.
    pub parts: Vec<u32>,
}

/// Which armed waits the inbox completes (in wait id order), and which
/// arrivals are for no armed wait (`(wait, part)`).
pub fn complete(waits: &[WaitRecord], inbox: &[Arrival]) -> (Vec<Wake>, Vec<(u64, u32)>) {
    let mut by_wait: BTreeMap<u64, BTreeMap<u32, &WakeValue>> = BTreeMap::new();
    for arrival in inbox {
        by_wait
            .entry(arrival.wait_id)
            .or_default()
            .insert(arrival.part, &arrival.value);
    }
    let mut wakes = Vec::new();
    let mut sorted: Vec<&WaitRecord> = waits.iter().collect();
    sorted.sort_by_key(|w| w.id);
    for wait in sorted {
        let Some(parts) = by_wait.remove(&wait.id) else {
            continue;
        };
        let value = match &wait.on {
            WaitOn::Batch { runs, .. } => {
                let outcomes: Option<Vec<_>> = (0..runs.len() as u32)
                    .map(|i| match parts.get(&i) {
                        Some(WakeValue::Run { outcome }) => Some(outcome.clone()),
                        _ => None,
                    })
                    .collect();
                outcomes.map(|outcomes| WakeValue::Batch { outcomes })
            }
            _ => parts.get(&0).map(|v| (*v).clone()),
        };
        if let Some(value) = value {
            wakes.push(Wake {
                wait: wait.clone(),
                value,
                parts: parts.keys().copied().collect(),
            });
        }
    }
    let stale = by_wait
        .into_iter()
        .flat_map(|(wait, parts)| parts.into_keys().map(move |part| (wait, part)))
        .collect();
    (wakes, stale)
}

/// The outcome of a run that is gone (deleted by retention).
fn gone(id: &RunId) -> kiln_types::RunOutcome {
    let error = kiln_types::RunError::new(
        "RunDeleted",
        format!("the run {id} is gone: it finished longer ago than the server keeps runs"),
    );
    kiln_types::RunOutcome {
        run_id: id.clone(),
        ok: false,
        value: serde_json::to_string(&error).unwrap_or_else(|_| "{}".into()),
    }
}
