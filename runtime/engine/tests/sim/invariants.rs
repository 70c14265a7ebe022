//! What must hold once a simulated world is quiet.

use super::world::{Sent, World};
use kiln_types::{
    HostCall, JournalEntry, JournalRecord, RunId, RunStatus, TokenStatus, WaitOn, WakeValue,
};
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
    let mut children: BTreeMap<_, usize> = BTreeMap::new();
    for (run, journal) in &state.journal {
        let mut waits: BTreeMap<u64, WaitOn> = BTreeMap::new();
        let mut woken: BTreeSet<u64> = BTreeSet::new();
        for record in journal {
            match &record.entry {
                JournalEntry::AttemptStarted { .. } => {
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
    // each position that was sent has its response journaled, unless its
    // run was canceled after a crash that came after the send (a canceled
    // run sends nothing again). A fetch is sent again only after a crash
    // that lost its response.
    let fetched = fetched_in(&state.journal);
    let fetched_at_crash: Vec<BTreeSet<String>> =
        world.journals_at_crash.iter().map(fetched_in).collect();
    let mut last_sent: BTreeMap<&String, u32> = BTreeMap::new();
    for Sent { run, key, crashes } in &world.sends {
        let canceled = || {
            world
                .store
                .applied
                .runs
                .get(run)
                .is_some_and(|r| r.status == RunStatus::Canceled)
        };
        let answered = fetched.contains(key) || (world.crashes > *crashes && canceled());
        if !answered {
            return Err(format!(
                "a fetch was sent with key {key}, which no journal holds"
            ));
        }
        if let Some(before) = last_sent.insert(key, *crashes) {
            let lost = before < *crashes
                && fetched_at_crash
                    .get(*crashes as usize - 1)
                    .is_some_and(|kept| !kept.contains(key));
            if !lost {
                return Err(format!(
                    "the fetch with key {key} was sent again after crash {crashes}, \
                     which did not lose its response"
                ));
            }
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

/// The keys (`{run}-{attempt}-{wait}`) of the fetches whose responses
/// `journals` hold.
fn fetched_in(journals: &BTreeMap<RunId, Vec<JournalRecord>>) -> BTreeSet<String> {
    let mut fetched = BTreeSet::new();
    for (run, journal) in journals {
        let mut attempt = 0;
        let mut fetches: BTreeSet<u64> = BTreeSet::new();
        for record in journal {
            match &record.entry {
                JournalEntry::AttemptStarted { attempt: a, .. } => {
                    attempt = *a;
                    fetches.clear();
                }
                JournalEntry::Waits { waits } => fetches.extend(
                    waits
                        .iter()
                        .filter(|w| matches!(w.on, WaitOn::Fetch { .. }))
                        .map(|w| w.id),
                ),
                JournalEntry::Wake { id, .. } if fetches.contains(id) => {
                    fetched.insert(format!("{run}-{attempt}-{id}"));
                }
                _ => {}
            }
        }
    }
    fetched
}
