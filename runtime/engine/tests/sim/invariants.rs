//! What must hold once a simulated world is quiet.

use super::world::World;
use kiln_types::{HostCall, JournalEntry, RunStatus, TokenStatus, WaitOn, WakeValue};
use std::collections::{BTreeMap, BTreeSet};

/// Checks every invariant; the first broken one is the error.
pub fn check(world: &World) -> Result<(), String> {
    let state = &world.store.applied;
    // Quiet means durable: nothing was left unsynced at the end.
    if state.runs != world.store.durable.runs {
        return Err("the world ended with writes not durable".into());
    }
    // Every run reaches a final status: roots complete, children complete
    // or were canceled. Nothing stays armed or undelivered.
    for run in state.runs.values() {
        let ok = match run.task_id.starts_with("root-") {
            true => run.status == RunStatus::Completed,
            false => matches!(run.status, RunStatus::Completed | RunStatus::Canceled),
        };
        if !ok {
            return Err(format!(
                "run {} ({}) ended {}",
                run.id, run.task_id, run.status
            ));
        }
    }
    if let Some((run, inbox)) = state.inbox.iter().next() {
        return Err(format!("run {run} has undelivered arrivals: {inbox:?}"));
    }
    if let Some((run, waits)) = state.waits.iter().next() {
        return Err(format!("run {run} still has armed waits: {waits:?}"));
    }
    if let Some(timer) = state.timers.iter().next() {
        return Err(format!("a timer is left: {timer:?}"));
    }
    if !state.waiters.is_empty() || !state.token_waiters.is_empty() {
        return Err("waiter entries are left".into());
    }
    // Journals are append-only: what was durable at each crash is a prefix
    // of the journal at the end.
    for (i, journals) in world.journals_at_crash.iter().enumerate() {
        for (run, before) in journals {
            let after = state.journal.get(run).map(Vec::as_slice).unwrap_or(&[]);
            if after.len() < before.len() || after[..before.len()] != before[..] {
                return Err(format!(
                    "the journal of {run} was rewritten after crash {}",
                    i + 1
                ));
            }
        }
    }
    let mut fetched: BTreeSet<String> = BTreeSet::new();
    let mut children: BTreeMap<_, usize> = BTreeMap::new();
    for (run, journal) in &state.journal {
        let mut attempt = 0;
        let mut waits: BTreeMap<u64, WaitOn> = BTreeMap::new();
        let mut woken: BTreeSet<u64> = BTreeSet::new();
        for record in journal {
            match &record.entry {
                JournalEntry::AttemptStarted { attempt: a, .. } => {
                    attempt = *a;
                    waits.clear();
                    woken.clear();
                }
                JournalEntry::Waits { waits: new } => {
                    waits.extend(new.iter().map(|w| (w.id, w.on.clone())));
                }
                JournalEntry::HostCall(HostCall::Trigger {
                    result: Some(id), ..
                }) => *children.entry(id.clone()).or_default() += 1,
                JournalEntry::HostCall(HostCall::BatchTrigger { runs, .. }) => {
                    for id in runs {
                        *children.entry(id.clone()).or_default() += 1;
                    }
                }
                JournalEntry::Wake { id, value } => {
                    // No wake lost (every run finished) and none twice.
                    if !woken.insert(*id) {
                        return Err(format!("run {run} got wait {id} woken twice"));
                    }
                    let Some(on) = waits.get(id) else {
                        return Err(format!(
                            "run {run} got a wake of wait {id}, never waited on"
                        ));
                    };
                    check_wake(world, on, value).map_err(|e| format!("run {run}: {e}"))?;
                    // A timer wakes no earlier than it is due, and a token
                    // times out no earlier than its timeout.
                    let early = match (on, value) {
                        (WaitOn::Timer { due_at }, _) => record.at < *due_at,
                        (
                            WaitOn::Token {
                                timeout_at: Some(t),
                                ..
                            },
                            WakeValue::Token { error: Some(_), .. },
                        ) => record.at < *t,
                        _ => false,
                    };
                    if early {
                        return Err(format!("run {run}: wait {id} woke before it was due"));
                    }
                    if matches!(on, WaitOn::Fetch { .. }) {
                        fetched.insert(format!("{run}-{attempt}-{id}"));
                    }
                }
                _ => {}
            }
        }
    }
    // No child created twice: every child is named by exactly one trigger
    // of its parent's journal.
    for run in state.runs.values() {
        if let Some(parent) = &run.parent {
            let named = children.get(&run.id).copied().unwrap_or(0);
            if named != 1 {
                return Err(format!(
                    "child {} of {} is named by {named} triggers",
                    run.id, parent.parent
                ));
            }
        }
    }
    // Each fetch is sent with a key that names its journal position, and
    // each position that was sent has its response journaled once, unless
    // its run was canceled after a crash lost the response (a canceled run
    // sends nothing again).
    for (key, _) in &world.sends {
        let canceled = || {
            let run = key.split('-').next().unwrap_or_default();
            world
                .store
                .applied
                .runs
                .values()
                .any(|r| r.id.to_string() == run && r.status == RunStatus::Canceled)
        };
        if !fetched.contains(key) && !canceled() {
            return Err(format!(
                "a fetch was sent with key {key}, which no journal holds"
            ));
        }
    }
    // A fetch is sent again only after a crash lost its response: never
    // twice between two crashes.
    let mut sent: BTreeSet<&(String, u32)> = BTreeSet::new();
    for send in &world.sends {
        if !sent.insert(send) {
            return Err(format!(
                "the fetch with key {} was sent twice after crash {}",
                send.0, send.1
            ));
        }
    }
    Ok(())
}

/// A wake's value fits what it waited on.
fn check_wake(world: &World, on: &WaitOn, value: &WakeValue) -> Result<(), String> {
    let state = &world.store.applied;
    match (on, value) {
        (WaitOn::Timer { .. }, WakeValue::Timer)
        | (WaitOn::Fetch { .. }, WakeValue::Fetch { .. }) => Ok(()),
        (WaitOn::Run { run_id }, WakeValue::Run { outcome }) if outcome.run_id == *run_id => Ok(()),
        (WaitOn::Batch { runs, .. }, WakeValue::Batch { outcomes })
            if outcomes.iter().map(|o| &o.run_id).eq(runs.iter()) =>
        {
            Ok(())
        }
        (WaitOn::Token { token_id, .. }, WakeValue::Token { data, error }) => {
            // A token resolves once: the wake says what the token says.
            let token = state
                .tokens
                .get(token_id)
                .ok_or("a token wake for no token")?;
            match (token.status, data, error) {
                (TokenStatus::Completed, Some(_), None)
                | (TokenStatus::TimedOut, None, Some(_)) => Ok(()),
                _ => Err(format!(
                    "token {token_id} is {:?} but its wake was {value:?}",
                    token.status
                )),
            }
        }
        _ => Err(format!("a wake {value:?} does not fit its wait {on:?}")),
    }
}
