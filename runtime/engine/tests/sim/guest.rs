//! Scripted guests. A run follows the script its task names; what it does
//! next is a function of its journal alone (as a replayed Wasm guest's is),
//! so a crash loses nothing a guest knows.

use kiln_types::{HostCall, JournalEntry, RunId, Timestamp, TokenId, WaitOn, WaitRecord};

/// A leaf task: a child run that waits on nothing but a timer or a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// Completes at once.
    Quick,
    /// Sleeps this many milliseconds, then completes.
    Sleepy(u64),
    /// Fails its first attempt, then completes.
    Flaky,
    /// Sends a durable fetch, then completes: a run that reaches an effect
    /// outside its sandbox while its admission may not yet be synced.
    Fetching,
}

impl Leaf {
    /// Its task id.
    pub fn task(self) -> String {
        match self {
            Leaf::Quick => "leaf-quick".into(),
            Leaf::Sleepy(ms) => format!("leaf-sleepy-{ms}"),
            Leaf::Flaky => "leaf-flaky".into(),
            Leaf::Fetching => "leaf-fetching".into(),
        }
    }
}

/// One step of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Wait on a timer.
    Sleep(u64),
    /// Trigger a child and wait on it.
    Child(Leaf),
    /// Trigger a batch and wait on all of it.
    Batch(Vec<Leaf>),
    /// Create a token and wait on it; a backend completes it after
    /// `complete_after` ms (or never), and it times out after `timeout` ms.
    Token {
        /// When the backend completes it.
        complete_after: Option<u64>,
        /// Its timeout.
        timeout: Option<u64>,
    },
    /// A durable fetch.
    Fetch,
    /// Trigger a child and wait on it and on a timer at once.
    Join(Leaf, u64),
    /// The first attempt fails here (and is retried).
    Fail,
}

/// The script of a task.
pub fn script(task: &str, roots: &[Vec<Step>]) -> Vec<Step> {
    if let Some(i) = task.strip_prefix("root-") {
        return roots[i.parse::<usize>().unwrap_or(0)].clone();
    }
    if let Some(ms) = task.strip_prefix("leaf-sleepy-") {
        return vec![Step::Sleep(ms.parse().unwrap_or(1))];
    }
    if task == "leaf-flaky" {
        return vec![Step::Fail];
    }
    if task == "leaf-fetching" {
        return vec![Step::Fetch];
    }
    Vec::new()
}

/// What a run does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Journal the start of the attempt.
    Start,
    /// Trigger children (one call, journaled with their ids).
    Spawn {
        /// The children.
        children: Vec<Leaf>,
        /// As a batch.
        batch: bool,
    },
    /// Create a token.
    CreateToken {
        /// When the backend completes it.
        complete_after: Option<u64>,
        /// Its timeout.
        timeout: Option<u64>,
    },
    /// Journal new waits.
    Waits(Vec<WaitRecord>),
    /// Send a fetch and journal its response.
    Fetch(u64),
    /// A pending timer is due: wake it in place (a warm wait).
    WarmWake(WaitRecord),
    /// Suspend on the pending waits.
    Suspend(Vec<WaitRecord>),
    /// Fail the attempt.
    Fail,
    /// Complete.
    Complete,
    /// The journal does not fit the script: replay diverged.
    Diverged(String),
}

/// What the run of `script` does next, given its attempt's journal (the
/// entries after `AttemptStarted`, `None` if the attempt has not started).
pub fn next(
    script: &[Step],
    attempt: u32,
    entries: Option<&[JournalEntry]>,
    now: Timestamp,
    token_timeout: impl Fn(&TokenId) -> Option<Timestamp>,
) -> Next {
    let Some(entries) = entries else {
        return Next::Start;
    };
    let mut cur = entries
        .iter()
        .filter(|e| !matches!(e, JournalEntry::Suspended { .. }))
        .peekable();
    let mut wait_id = 0u64;
    let diverged = |what: &str, found: Option<&&JournalEntry>| {
        Next::Diverged(format!(
            "expected {what}, found {}",
            found.map_or("the end".into(), |e| e.describe())
        ))
    };
    for step in script {
        // The host call of the step, if it makes one.
        let mut children: Vec<RunId> = Vec::new();
        let mut batch_id = None;
        let mut token = None;
        match step {
            Step::Fail if attempt == 1 => return Next::Fail,
            Step::Fail | Step::Sleep(_) | Step::Fetch => {}
            Step::Child(leaf) | Step::Join(leaf, _) => match cur.peek() {
                Some(JournalEntry::HostCall(HostCall::Trigger {
                    result: Some(id), ..
                })) => {
                    children.push(id.clone());
                    cur.next();
                }
                None => {
                    return Next::Spawn {
                        children: vec![*leaf],
                        batch: false,
                    };
                }
                found => return diverged("a trigger", found),
            },
            Step::Batch(leaves) => match cur.peek() {
                Some(JournalEntry::HostCall(HostCall::BatchTrigger {
                    batch: Some(id),
                    runs,
                    ..
                })) => {
                    children = runs.clone();
                    batch_id = Some(id.clone());
                    cur.next();
                }
                None => {
                    return Next::Spawn {
                        children: leaves.clone(),
                        batch: true,
                    };
                }
                found => return diverged("a batch trigger", found),
            },
            Step::Token {
                complete_after,
                timeout,
            } => match cur.peek() {
                Some(JournalEntry::HostCall(HostCall::CreateToken {
                    result: Some(id), ..
                })) => {
                    token = Some(id.clone());
                    cur.next();
                }
                None => {
                    return Next::CreateToken {
                        complete_after: *complete_after,
                        timeout: *timeout,
                    };
                }
                found => return diverged("a token", found),
            },
        }
        if matches!(step, Step::Fail) {
            continue;
        }
        // The step's waits.
        let mut wait = |on: WaitOn| {
            wait_id += 1;
            WaitRecord { id: wait_id, on }
        };
        let fresh: Vec<WaitRecord> = match step {
            Step::Sleep(ms) => vec![wait(WaitOn::Timer {
                due_at: Timestamp(now.0 + ms),
            })],
            Step::Fetch => vec![wait(WaitOn::Fetch {
                request: kiln_types::FetchRequest {
                    method: "POST".into(),
                    url: "http://counter/effect".into(),
                    headers: Vec::new(),
                    body: None,
                    timeout_ms: None,
                    sealed: None,
                },
            })],
            Step::Child(_) => vec![wait(WaitOn::Run {
                run_id: children[0].clone(),
            })],
            Step::Join(_, ms) => vec![
                wait(WaitOn::Run {
                    run_id: children[0].clone(),
                }),
                wait(WaitOn::Timer {
                    due_at: Timestamp(now.0 + ms),
                }),
            ],
            Step::Batch(_) => vec![wait(WaitOn::Batch {
                batch_id: batch_id.clone().unwrap_or_default(),
                runs: children.clone(),
            })],
            Step::Token { .. } => {
                let token_id = token.clone().expect("a token step has its token");
                let timeout_at = token_timeout(&token_id);
                vec![wait(WaitOn::Token {
                    token_id,
                    timeout_at,
                })]
            }
            Step::Fail => Vec::new(),
        };
        let mut pending: Vec<WaitRecord> = match cur.peek() {
            Some(JournalEntry::Waits { waits }) => {
                let same = waits.len() == fresh.len()
                    && waits.iter().zip(&fresh).all(|(a, b)| {
                        a.id == b.id
                            && std::mem::discriminant(&a.on) == std::mem::discriminant(&b.on)
                    });
                if !same {
                    return Next::Diverged(format!(
                        "the journal's waits {waits:?} are not the script's {fresh:?}"
                    ));
                }
                let waits = waits.clone();
                cur.next();
                waits
            }
            None => return Next::Waits(fresh),
            found => return diverged("waits", found),
        };
        // Their wakes, in any order.
        while !pending.is_empty() {
            match cur.peek() {
                Some(JournalEntry::Wake { id, .. }) => {
                    let Some(i) = pending.iter().position(|w| w.id == *id) else {
                        return Next::Diverged(format!(
                            "a wake of wait {id}, which is not pending"
                        ));
                    };
                    pending.remove(i);
                    cur.next();
                }
                None => {
                    if let Some(fetch) = pending
                        .iter()
                        .find(|w| matches!(w.on, WaitOn::Fetch { .. }))
                    {
                        return Next::Fetch(fetch.id);
                    }
                    if let Some(due) = pending
                        .iter()
                        .find(|w| matches!(w.on, WaitOn::Timer { due_at } if due_at <= now))
                    {
                        return Next::WarmWake(due.clone());
                    }
                    return Next::Suspend(pending);
                }
                found => return diverged("a wake", found),
            }
        }
    }
    match cur.peek() {
        None => Next::Complete,
        found => diverged("the end of the attempt", found),
    }
}
