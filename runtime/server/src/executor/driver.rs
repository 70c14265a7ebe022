//! One slice of a run: from being dequeued to finishing or waiting.
//!
//! 1. Claim the run (`QUEUED` → `EXECUTING`) under its lock.
//! 2. Read the attempt's journal (not in the first slice of a run's first
//!    attempt, when it is empty: see `kiln_engine::Outcome::Claimed`). A new
//!    attempt journals `ATTEMPT_STARTED` and starts a fresh instance. An
//!    attempt that was woken or interrupted restores its last snapshot (or,
//!    with none, starts fresh) and replays the entries after it: host calls
//!    are answered from the journal, waits
//!    are checked against it and wakes are delivered from it.
//! 3. Then live: a finished task ends the attempt through the engine; a task
//!    that waits on a timer due within the warm threshold sleeps in-process;
//!    otherwise the guest is snapshotted (a page delta when it can be), the
//!    instance dropped, and the run marked `WAITING` with durable timers, all
//!    in one commit.

use super::budgets::{self, Usage};
use super::dispatch::Slot;
use super::guest::Guest;
use super::interpreter::StepError;
use super::journal::JournalWriter;
use super::{Executor, LiveRun, MAX_OUTPUT_BYTES};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kiln_engine::cursor::{self, Cursor, Rest, Resume, Stepped, WaitRequest};
use kiln_engine::{EngineError, Event, FailureKind, Input};
use kiln_sandbox::Limits;
use kiln_sandbox::wit::kiln::task::types::{self as wit, StartContext, Step};
use kiln_sandbox::{LoadedBundle, LogCounts, Redactor, StepOutcome, TrapKind};
use kiln_store::{Batch, EncodedEntry, LayerKind, SnapshotLayer, StoredLayer};
use kiln_types::{
    AttemptOutcome, JournalEntry, JournalRecord, Logs, Run, RunError, RunId, RunStatus,
    StartedWith, Timestamp, WaitOn, WaitRecord, WakeValue,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Deltas after a full layer before the next snapshot is full again.
const MAX_DELTAS: usize = 8;

/// How many times a slice's guest may be lost with the node it ran on
/// before the slice runs its guest here.
const LOSSES_BEFORE_HERE: u32 = 3;

/// A call on a remote guest's answer, or the slice's end if its node was
/// lost.
macro_rules! or_lost {
    ($call:expr) => {
        match $call {
            Ok(value) => value,
            Err(crate::cluster::Lost) => return Ok(End::Lost),
        }
    };
}

/// Runs one slice of `run_id`, holding `slot` until the commit that ends
/// the attempt is handed to the store (or the slice ends).
pub(crate) async fn execute(
    executor: &Executor,
    run_id: &RunId,
    slot: &Slot,
) -> anyhow::Result<()> {
    let live = Arc::new(LiveRun {
        interrupt: std::sync::Mutex::new(None),
        canceled: tokio::sync::Notify::new(),
        is_canceled: AtomicBool::new(false),
    });
    let Some((mut run, first)) = claim(executor, run_id, &live).await? else {
        return Ok(());
    };
    let mut losses = 0;
    // A run whose first attempt the claim started has an empty journal
    // (see `Outcome::Claimed`): its first slice does not read it.
    let mut unread = first;
    let result = loop {
        let journal = if std::mem::take(&mut unread) {
            Ok((Vec::new(), 0))
        } else {
            executor.shared.store.journal_sized(run_id)
        };
        let ran = match journal {
            Ok((records, bytes)) => {
                let next_seq = records.last().map(|r| r.seq + 1).unwrap_or(1);
                let usage = Usage::of_journal(&records, bytes);
                let here = losses >= LOSSES_BEFORE_HERE;
                Slice::new(executor, slot, run, live.clone(), next_seq, usage, here)
                    .run(records)
                    .await
            }
            Err(e) => Err(e.into()),
        };
        match ran {
            Ok(Ran::Lost { node, refused }) => {
                // The node running the guest is gone with everything it
                // held. The slice starts again from the run's snapshot and
                // journal: what the lost guest's calls journaled is made
                // durable first (the slice left the entries its journal
                // held to the next commit: an empty one takes them), so the
                // next guest replays them.
                losses += 1;
                if let Some(workers) = &executor.shared.config.workers
                    && !refused
                {
                    workers.count_lost();
                    tracing::warn!(run = %run_id, %node, losses, "the node running a run's guest was lost; its slice starts again");
                }
                if let Err(error) = executor.shared.store.commit(Batch::default()).await {
                    break Err(error.into());
                }
                match executor.shared.store.run(run_id) {
                    Ok(Some(again)) if again.status == RunStatus::Executing => run = again,
                    Ok(_) => break Ok(()),
                    Err(error) => break Err(error.into()),
                }
            }
            Ok(Ran::Ended) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    executor
        .shared
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(run_id);
    result
}

/// `QUEUED` → `DEQUEUED` → `EXECUTING`, under the run's lock, registering
/// the run as live. A run already live in this process is never claimed
/// again: two slices of one run would journal over each other. The run as
/// claimed, and whether the claim started its first attempt (then its
/// journal is empty).
async fn claim(
    executor: &Executor,
    run_id: &RunId,
    live: &Arc<LiveRun>,
) -> anyhow::Result<Option<(Run, bool)>> {
    let shared = &executor.shared;
    let _guard = shared.locks.lock(run_id).await;
    {
        let mut running = shared.live.lock().unwrap_or_else(|p| p.into_inner());
        if running.contains_key(run_id) {
            drop(running);
            // The previous slice is still winding down (it suspended and a
            // timer woke the run at once): try again shortly.
            if let Some(run) = shared.store.run(run_id)?
                && run.status == RunStatus::Queued
            {
                executor.enqueue_at(&run, Timestamp(Timestamp::now().as_millis() + 20));
            }
            return Ok(None);
        }
        running.insert(run_id.clone(), live.clone());
    }
    // Not awaited: a crash before it is durable leaves the run QUEUED, and
    // it is simply claimed again. A run that is not `QUEUED` (any more) is
    // refused by the engine, and the slice has nothing to do.
    let claimed = match executor.step_now(Input::Claim {
        run: run_id.clone(),
    }) {
        Ok(kiln_engine::Outcome::Claimed { run, first }) => return Ok(Some((*run, first))),
        Ok(_)
        | Err(StepError::Engine(EngineError::Transition(_) | EngineError::RunNotFound(_))) => {
            Ok(None)
        }
        Err(error) => Err(error.into()),
    };
    shared
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(run_id);
    claimed
}

/// How a slice ended.
enum End {
    /// The attempt ended with this event.
    Event(Event),
    /// The run now waits, suspended.
    Suspended,
    /// The run was canceled while the slice ran.
    Canceled,
    /// The node running the guest was lost.
    Lost,
}

/// How a slice ran.
enum Ran {
    /// To its end.
    Ended,
    /// Until the node running its guest was lost, or `refused` to start
    /// it (it drains, or could not instantiate the bundle).
    Lost {
        /// The node.
        node: String,
        /// Whether the node refused the guest rather than lost it.
        refused: bool,
    },
}

struct Slice<'a> {
    executor: &'a Executor,
    slot: &'a Slot,
    run: Run,
    attempt_no: u32,
    live: Arc<LiveRun>,
    journal: JournalWriter,
    /// Where the attempt stands in its journal, and its pending waits.
    cursor: Cursor,
    /// The snapshot layers of this attempt, and the page hashes of the last.
    layers: Vec<StoredLayer>,
    /// Log lines of the slice, kept when it ends.
    logs: Logs,
    /// Whether the attempt ran in an earlier slice (and so may have stored
    /// snapshot layers).
    resumed: bool,
    /// The secret values masked from what the slice stores.
    redactor: Redactor,
    /// Whether the run's bundle resumes by replay, never from a snapshot.
    replays: bool,
    /// The metadata and tags the attempt started with.
    started: Option<StartedWith>,
    /// Whether the guest must run in this process.
    here: bool,
    /// The place the guest holds here, or the node it runs on.
    place: Option<crate::cluster::LocalPlace>,
    node: String,
    /// Whether the node the guest was placed on refused it.
    refused: bool,
}

impl<'a> Slice<'a> {
    fn new(
        executor: &'a Executor,
        slot: &'a Slot,
        run: Run,
        live: Arc<LiveRun>,
        next_seq: u64,
        usage: Usage,
        here: bool,
    ) -> Self {
        let attempt_no = run.attempts.last().map(|a| a.number).unwrap_or(1);
        let journal = JournalWriter::new(
            executor.shared.store.clone(),
            run.id.clone(),
            next_seq,
            usage,
            executor.shared.config.budgets,
        );
        Slice {
            executor,
            slot,
            run,
            attempt_no,
            live,
            journal,
            cursor: Cursor::default(),
            layers: Vec::new(),
            logs: Logs::default(),
            resumed: false,
            redactor: Redactor::default(),
            replays: false,
            started: None,
            here,
            place: None,
            node: String::new(),
            refused: false,
        }
    }

    async fn run(mut self, records: Vec<JournalRecord>) -> anyhow::Result<Ran> {
        let end = match self.drive(records).await {
            Ok(end) => end,
            Err(message) => End::Event(failure(
                FailureKind::System,
                RunError::new("SystemFailure", message),
                0,
            )),
        };
        match end {
            End::Event(event) => self.finish(event).await.map(|()| Ran::Ended),
            End::Canceled => {
                // The canceled run's journal shows what the slice held.
                self.journal.defer_held();
                self.keep_logs_of_canceled().await.map(|()| Ran::Ended)
            }
            End::Suspended => Ok(Ran::Ended),
            End::Lost => {
                // The empty commit `execute` makes next takes them.
                self.journal.defer_held();
                Ok(Ran::Lost {
                    node: std::mem::take(&mut self.node),
                    refused: self.refused,
                })
            }
        }
    }

    /// Everything up to the end of the slice, given the run's journal. `Err`
    /// is a system failure.
    async fn drive(&mut self, records: Vec<JournalRecord>) -> Result<End, String> {
        let shared = &self.executor.shared;
        let deployed = match shared.deployments.get(&self.run.deployment_id).await {
            Ok(Some(d)) => d,
            Ok(None) => return Err("the run's deployment is missing".into()),
            Err(error) => return Err(format!("loading the run's bundle failed: {error}")),
        };

        let bundle = deployed.bundle_for(&self.run.task_id);
        self.replays = bundle.resumes_by_replay();
        // What the attempt started with, when it started in an earlier
        // slice: a replay from the start is given the same.
        self.started = records.iter().rev().find_map(|r| match &r.entry {
            JournalEntry::AttemptStarted {
                attempt,
                started: Some(started),
            } if *attempt == self.attempt_no => Some(started.clone()),
            _ => None,
        });
        // The journal of this attempt, and where replay starts.
        let attempt_records = cursor::attempt_records(records, self.attempt_no);
        self.resumed = attempt_records.is_some();
        self.redactor = self.executor.redactor(
            &self.run.id,
            self.attempt_no,
            attempt_records.as_deref().unwrap_or_default(),
        )?;
        if !self.resumed {
            let started = StartedWith {
                metadata: self.metadata_json(),
                tags: self.run.tags.clone(),
            };
            self.journal.append(JournalEntry::AttemptStarted {
                attempt: self.attempt_no,
                started: Some(started.clone()),
            });
            self.started = Some(started);
        }
        let restoring = std::time::Instant::now();
        let mut image = None;
        if self.resumed {
            // Reading, verifying, decompressing and composing the layers
            // takes a while for a large memory: on the blocking pool.
            let (store, run, attempt_no) =
                (shared.store.clone(), self.run.id.clone(), self.attempt_no);
            let read = tokio::task::spawn_blocking(move || {
                kiln_sandbox::cpu::blocking(|| {
                    let layers = store.layers(&run, attempt_no).map_err(|e| e.to_string())?;
                    if layers.is_empty() {
                        return Ok((layers, None));
                    }
                    let refs: Vec<&SnapshotLayer> = layers.iter().map(|l| &l.layer).collect();
                    match kiln_store::snapshot::compose(&refs) {
                        Ok(composed) => Ok((layers, Some(composed))),
                        Err(error) => Err(error.to_string()),
                    }
                })
            })
            .await
            .map_err(|e| format!("reading the snapshot failed: {e}"))?;
            match read {
                Ok((layers, composed)) => {
                    self.layers = layers;
                    image = composed;
                }
                Err(error) => tracing::warn!(
                    run = %self.run.id, %error,
                    "a snapshot could not be read; replaying the attempt's whole journal instead"
                ),
            }
        }
        let snapshot = self.layers.last().map(|l| (l.number, l.layer.journal_seq));
        let resume = Resume::new(attempt_records.unwrap_or_default(), snapshot);
        self.cursor = resume.cursor;

        let current = self.run.attempts.last();
        let limits = Limits {
            used: Duration::from_millis(current.map(|a| a.usage_ms).unwrap_or(0)),
            ..Limits::for_machine(
                self.run.machine,
                Some(
                    self.run
                        .max_duration_secs
                        .map(Duration::from_secs)
                        .unwrap_or(shared.config.default_max_duration),
                ),
            )
        };
        let Some(mut attempt) = self.instantiate(bundle, limits).await? else {
            return Ok(End::Lost);
        };
        *self
            .live
            .interrupt
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(attempt.cancel_flag());
        if self.live.is_canceled.load(Ordering::SeqCst) {
            return Ok(End::Canceled);
        }
        let depth = self.run.parent.as_ref().map_or(0, |p| p.depth);
        let (root, own_parent) = (
            self.run.root_or_self().clone(),
            self.run.parent_or_self().clone(),
        );
        if let Guest::Remote(remote) = &mut attempt {
            // The guest's node checks its host calls against the run's
            // journal budget as it stands at each call and answer. Its
            // epoch ticks are not seen here: the journal holds nothing.
            self.journal.hold_none();
            let writer = self.journal.clone();
            remote.set_room(Box::new(move || writer.room()));
        }
        attempt.set_journal(Box::new(super::children::AttemptSink {
            writer: self.journal.clone(),
            executor: self.executor.clone(),
            own_parent,
            parent: self.run.id.clone(),
            deployment: self.run.deployment_id.clone(),
            root,
            depth,
            attempt: self.attempt_no,
            redactor: self.redactor.clone(),
            run_trace: self.run.trace.clone(),
        }));
        attempt.set_redactor(self.redactor.clone());
        let mut replay = resume.replay;
        super::fetch::unmask_replay(&mut replay, &shared.store, &self.run.id, self.attempt_no)?;
        attempt.replay_mut().extend(replay);
        let kept = self
            .run
            .attempts
            .last()
            .map_or(&[][..], |a| a.logs.as_slice());
        attempt.resume_logs(LogCounts::of(
            resume.restored_log_calls,
            resume.saved_log_calls,
            kept,
        ));

        let mut outcome = match image {
            Some(image) => {
                if let Err(trap) = or_lost!(attempt.restore(image).await) {
                    return Err(format!("restoring the run's snapshot failed: {trap}"));
                }
                crate::metrics::metrics()
                    .snapshot_restore_seconds
                    .observe(restoring.elapsed().as_secs_f64());
                None
            }
            None => Some(or_lost!(attempt.start(&self.start_context()?).await)),
        };
        loop {
            if let Some(step) = outcome.take()
                && let Some(end) = self.take_step(&mut attempt, step)?
            {
                self.logs = attempt.take_logs();
                return Ok(end);
            }
            let warm_ms = shared.config.warm_wait.as_millis() as u64;
            match self
                .cursor
                .at_rest(attempt.replay_mut(), Timestamp::now(), warm_ms)
            {
                Rest::Wake { id, value } => {
                    outcome = Some(or_lost!(attempt.resume(&wake(id, value)).await));
                }
                Rest::Diverged(message) => {
                    return Ok(End::Event(nondeterminism(message, &attempt)));
                }
                Rest::Broken(message) => return Err(message),
                Rest::Fetch { id, request } => {
                    // Made while the guest stays warm. Everything journaled
                    // up to the request is durable before it is sent, so a
                    // replay after a crash reaches the same request at the
                    // same place, with the same key; its response is
                    // journaled before the guest sees it.
                    // The commit takes the entries the journal holds (and
                    // any left to the next commit) with it.
                    let mut held = Batch::default();
                    self.journal.take_held(&mut held);
                    shared.store.commit(held).await.map_err(|e| e.to_string())?;
                    let key = super::fetch::idempotency_key(&self.run.id, self.attempt_no, id);
                    let sent = super::fetch::unsealed(
                        &shared.store,
                        &self.run.id,
                        self.attempt_no,
                        id,
                        request,
                    );
                    let value = tokio::select! {
                        value = super::fetch::perform_sealed(&shared.http, &shared.config.fetch, sent, &key) => value,
                        _ = self.live.canceled.notified() => {
                            return Ok(self.canceled_at_rest(&mut attempt).await);
                        }
                    };
                    let ids = (&self.run.id, self.attempt_no, id);
                    let journaled = super::fetch::journaled_wake(
                        value.clone(),
                        &self.redactor,
                        &shared.store,
                        ids,
                    )?;
                    // The task gets the response as received; only its
                    // error (which quotes the URL) as journaled.
                    let value = match value {
                        WakeValue::Fetch { response, .. } => match &journaled {
                            WakeValue::Fetch { error, .. } => WakeValue::Fetch {
                                response,
                                error: error.clone(),
                            },
                            other => other.clone(),
                        },
                        other => other,
                    };
                    self.cursor.woke(id);
                    let mut batch = Batch::default();
                    let entry = JournalEntry::Wake {
                        id,
                        value: journaled,
                    };
                    self.journal.append_to(&mut batch, entry);
                    shared
                        .store
                        .commit(batch)
                        .await
                        .map_err(|e| e.to_string())?;
                    outcome = Some(or_lost!(attempt.resume(&wake(id, value)).await));
                }
                Rest::Warm { id, due } => {
                    let delay = due.as_millis().saturating_sub(Timestamp::now().as_millis());
                    // The journal shows the wait while the guest sleeps.
                    self.journal.defer_held();
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
                        _ = self.live.canceled.notified() => {
                            return Ok(self.canceled_at_rest(&mut attempt).await);
                        }
                    }
                    // A durable timer for this wait (from an earlier
                    // suspension) must not fire again.
                    let mut batch = Batch::default();
                    if let Some(wait) = self.cursor.woke(id) {
                        super::waits::disarm(&mut batch, &self.run.id, &wait);
                    }
                    let entry = JournalEntry::Wake {
                        id,
                        value: WakeValue::Timer,
                    };
                    self.journal.append_to(&mut batch, entry);
                    drop(shared.store.commit(batch));
                    outcome = Some(or_lost!(attempt.resume(&wake(id, WakeValue::Timer)).await));
                }
                Rest::Suspend => return self.suspend(attempt).await,
                Rest::Deadlock => {
                    return Ok(End::Event(failure(
                        FailureKind::Error {
                            abort: true,
                            retry_delay_ms: None,
                        },
                        RunError::new("KilnDeadlock", "the task waits on nothing that can wake it"),
                        attempt.used().as_millis() as u64,
                    )));
                }
            }
        }
    }

    /// The slice's guest, placed on the node with the most room (this one
    /// on a single server); `None` if the node it was placed on was lost
    /// before it started.
    async fn instantiate(
        &mut self,
        bundle: &LoadedBundle,
        limits: Limits,
    ) -> Result<Option<Guest>, String> {
        let shared = &self.executor.shared;
        let placement = match &shared.config.workers {
            Some(workers) => workers.place(self.here),
            None => crate::cluster::Placement::Here,
        };
        let place = match placement {
            crate::cluster::Placement::Remote(place) => place,
            local => {
                if let crate::cluster::Placement::Local(place) = local {
                    self.place = Some(place);
                }
                let attempt = bundle
                    .instantiate(limits)
                    .await
                    .map_err(|e| format!("instantiating the bundle failed: {e:#}"))?;
                return Ok(Some(Guest::Local(Box::new(attempt))));
            }
        };
        let Some(workers) = shared.config.workers.as_ref() else {
            return Ok(None);
        };
        self.node = place.node().to_string();
        let (store, hash) = (shared.store.clone(), bundle.content_hash().to_string());
        let bytes = || match store.bundle(&hash) {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(format!("the bundle `{hash}` is not in the store")),
            Err(error) => Err(format!("reading the bundle failed: {error}")),
        };
        match workers
            .open(place, bundle.content_hash(), limits, bytes)
            .await
        {
            Ok(Ok(remote)) => Ok(Some(Guest::Remote(Box::new(remote)))),
            Ok(Err(error)) => {
                // Treated as lost: the slice starts again, and after a few
                // such tries runs here, where a bundle that cannot start
                // fails the attempt with the reason.
                tracing::info!(run = %self.run.id, node = %self.node, %error, "a node did not start a run's guest; placing it again");
                self.refused = true;
                Ok(None)
            }
            Err(crate::cluster::Lost) => Ok(None),
        }
    }

    /// `Err` naming the limit if a step's new `waits` would take the run
    /// past a budget: its journal, waits per step, fetches, or the size of
    /// a fetch request.
    fn within_budgets(&self, waits: &[wit::Wait]) -> Result<(), String> {
        self.journal.check()?;
        let budgets = self.journal.budgets();
        let count = waits.len() as u64;
        if count > budgets.waits_per_step {
            return Err(budgets::exceeded(
                "waits in one step",
                count,
                budgets.waits_per_step,
                "waits-per-step",
            ));
        }
        let mut fetches = 0;
        for wait in waits {
            if let wit::WaitKind::Fetch(request) = &wait.kind {
                fetches += 1;
                let size = request.url.len()
                    + request.method.len()
                    + request
                        .headers
                        .iter()
                        .map(|(k, v)| k.len() + v.len() + 4)
                        .sum::<usize>()
                    + request.body.as_ref().map_or(0, Vec::len);
                if size as u64 > budgets.fetch_request_bytes {
                    return Err(budgets::exceeded(
                        "bytes in a fetch request",
                        size as u64,
                        budgets.fetch_request_bytes,
                        "fetch-request-bytes",
                    ));
                }
            }
        }
        if fetches > 0 {
            self.journal.usage().check_fetches(budgets, fetches)?;
        }
        Ok(())
    }

    /// Runs the cancel hooks of a guest canceled while at rest (in a warm
    /// wait or a fetch). Cancel set the interrupt meant for a running
    /// guest; it is lifted first, or it would stop the hooks at the next tick.
    async fn canceled_at_rest(&mut self, attempt: &mut Guest) -> End {
        attempt
            .cancel_flag()
            .store(false, std::sync::atomic::Ordering::SeqCst);
        // A guest lost with its node runs no hooks; the run is canceled
        // all the same.
        let _ = attempt.cancel("the run was canceled").await;
        self.logs = attempt.take_logs();
        End::Canceled
    }

    /// Handles a step. `Some` ends the slice; `None` goes on to the next wake.
    fn take_step(&mut self, attempt: &mut Guest, step: StepOutcome) -> Result<Option<End>, String> {
        let usage_ms = attempt.used().as_millis() as u64;
        let leftover = self.cursor.finished(attempt.replay_mut());
        let event = match step {
            StepOutcome::Step(Step::Waiting(waits)) => {
                let requested: Vec<(u64, WaitRequest)> =
                    waits.iter().map(|w| (w.id, request(&w.kind))).collect();
                match self.cursor.waits(attempt.replay_mut(), &requested) {
                    Stepped::Known => return Ok(None),
                    Stepped::Diverged(message) => {
                        return Ok(Some(End::Event(nondeterminism(message, attempt))));
                    }
                    Stepped::Live => {}
                }
                if let Err(limit) = self.within_budgets(&waits) {
                    return Ok(Some(End::Event(failure(
                        FailureKind::Error {
                            abort: true,
                            retry_delay_ms: None,
                        },
                        RunError::new("LimitExceeded", limit),
                        usage_ms,
                    ))));
                }
                let now = Timestamp::now();
                let mut records = Vec::with_capacity(waits.len());
                for wait in &waits {
                    let sealing = Sealing {
                        redactor: &self.redactor,
                        run: &self.run.id,
                        attempt: self.attempt_no,
                    };
                    match wait_record(wait, now, &self.executor.shared.store, sealing) {
                        Ok(record) => records.push(record),
                        Err(message) => {
                            return Ok(Some(End::Event(failure(
                                FailureKind::Error {
                                    abort: true,
                                    retry_delay_ms: None,
                                },
                                RunError::new("Unsupported", message),
                                usage_ms,
                            ))));
                        }
                    }
                }
                self.journal.append(JournalEntry::Waits {
                    waits: records.clone(),
                });
                self.cursor.armed(records);
                return Ok(None);
            }
            StepOutcome::Step(_) if leftover.is_some() => {
                nondeterminism(leftover.unwrap_or_default(), attempt)
            }
            StepOutcome::Step(Step::Completed(output)) if output.len() > MAX_OUTPUT_BYTES => {
                failure(
                    FailureKind::Error {
                        abort: true,
                        retry_delay_ms: None,
                    },
                    RunError::new(
                        "OutputTooLarge",
                        format!(
                            "the task's output is {} bytes, over the limit of {MAX_OUTPUT_BYTES}",
                            output.len()
                        ),
                    ),
                    usage_ms,
                )
            }
            StepOutcome::Step(Step::Completed(output)) => Event::AttemptSucceeded {
                output: self.redactor.redact_json(output),
                usage_ms,
            },
            StepOutcome::Step(Step::Failed(e)) => failure(
                FailureKind::Error {
                    abort: e.abort,
                    retry_delay_ms: e.retry_delay_ms,
                },
                RunError {
                    name: Some(budgets::cut(self.redactor.redact_owned(e.name), 256)),
                    message: budgets::cut(
                        self.redactor.redact_owned(e.message),
                        self.journal.budgets().error_bytes,
                    ),
                    stack_trace: e.stack.map(|s| {
                        budgets::cut(
                            self.redactor.redact_owned(s),
                            self.journal.budgets().error_bytes,
                        )
                    }),
                },
                usage_ms,
            ),
            StepOutcome::Trap(TrapKind::Canceled)
                if self.live.is_canceled.load(Ordering::SeqCst) =>
            {
                return Ok(Some(End::Canceled));
            }
            StepOutcome::Trap(trap) => trap_event(trap, usage_ms),
        };
        Ok(Some(End::Event(event)))
    }

    /// Snapshots the guest, drops the instance and marks the run `WAITING`,
    /// with its timers, in one commit.
    async fn suspend(&mut self, mut attempt: Guest) -> Result<End, String> {
        if self.replays {
            return self.suspend_for_replay(attempt).await;
        }
        let shared = &self.executor.shared;
        let capturing = std::time::Instant::now();
        let image = match or_lost!(attempt.capture().await) {
            Ok(image) => image,
            Err(trap) => {
                return Ok(End::Event(trap_event(
                    trap,
                    attempt.used().as_millis() as u64,
                )));
            }
        };
        let usage_ms = attempt.used().as_millis() as u64;
        let logs = attempt.take_logs();
        let log_calls = attempt.log_calls();
        let journal_seq = self.journal.last_seq();
        let deltas = self
            .layers
            .iter()
            .rev()
            .take_while(|l| l.layer.kind == LayerKind::Delta)
            .count();
        let previous = self
            .layers
            .last()
            .filter(|_| deltas < MAX_DELTAS)
            .map(|l| l.layer.hashes.clone());
        let number = self.layers.last().map(|l| l.number + 1).unwrap_or(1);
        // Hashing, compressing and sealing a large memory takes a while
        // (0.1 s for 50 MiB): on the blocking pool, not a runtime worker
        // that other requests are waiting for.
        let (store, run, attempt_no) = (shared.store.clone(), self.run.id.clone(), self.attempt_no);
        // The instance and the layer's pages are dropped there too: giving
        // a large guest's memory back (resetting its pool slot, returning
        // the pages to the system) takes milliseconds.
        let (kind, bytes) = tokio::task::spawn_blocking(move || {
            kiln_sandbox::cpu::blocking(|| {
                drop(attempt);
                let mut layer = SnapshotLayer::capture(&image, previous.as_deref(), journal_seq);
                if layer.kind == LayerKind::Delta && layer.pages.len() * 2 > layer.hashes.len() {
                    layer = SnapshotLayer::capture(&image, None, journal_seq);
                }
                kiln_sandbox::recycle_capture(image);
                let bytes = store.seal_layer(&run, attempt_no, number, layer.encode());
                (layer.kind, bytes)
            })
        })
        .await
        .map_err(|e| format!("taking the snapshot failed: {e}"))?;
        let bytes = bytes.map_err(|e| e.to_string())?;
        let stored_bytes = bytes.len() as u64;
        let metrics = crate::metrics::metrics();
        metrics
            .snapshot_capture_seconds
            .observe(capturing.elapsed().as_secs_f64());
        metrics.snapshot_bytes.observe(stored_bytes as f64);

        let mut batch = Batch::default();
        if kind == LayerKind::Full {
            let keys = shared
                .store
                .layer_keys(&self.run.id)
                .map_err(|e| e.to_string())?;
            batch.delete_keys(keys);
        }
        batch.put_layer(&self.run.id, self.attempt_no, number, bytes);
        let held = self.journal.append_ending(
            &mut batch,
            JournalEntry::Suspended {
                layer: number,
                bytes: stored_bytes,
                log_calls,
            },
        );
        self.commit_suspension(batch, held, usage_ms, logs).await
    }

    /// Suspends an attempt of a bundle that resumes by replay (one that
    /// imports WASI): no snapshot, only the marker, so the next slice runs
    /// the attempt again from its start with the journal answering.
    async fn suspend_for_replay(&mut self, mut attempt: Guest) -> Result<End, String> {
        let usage_ms = attempt.used().as_millis() as u64;
        let logs = attempt.take_logs();
        let log_calls = attempt.log_calls();
        // Dropping a large instance takes a while: off the runtime's workers.
        tokio::task::spawn_blocking(move || drop(attempt))
            .await
            .map_err(|e| format!("dropping the instance failed: {e}"))?;
        let mut batch = Batch::default();
        let held = self.journal.append_ending(
            &mut batch,
            JournalEntry::Suspended {
                layer: 0,
                bytes: 0,
                log_calls,
            },
        );
        self.commit_suspension(batch, held, usage_ms, logs).await
    }

    /// Commits a suspension: `batch` (the snapshot layer, the journal's
    /// marker) with the run marked `WAITING`.
    async fn commit_suspension(
        &mut self,
        batch: Batch,
        held: Vec<EncodedEntry>,
        usage_ms: u64,
        logs: Logs,
    ) -> Result<End, String> {
        let shared = &self.executor.shared;
        // The engine arms the waits, and puts in the same commit whatever
        // they wait on that is already true (a child that finished first).
        let input = Input::Suspend {
            run: self.run.id.clone(),
            usage_ms,
            waits: self.cursor.pending().cloned().collect(),
            logs: logs.clone(),
        };
        let _guard = shared.locks.lock(&self.run.id).await;
        match self.executor.step(input, batch).await {
            Ok(_) => Ok(End::Suspended),
            // Canceled meanwhile: the run is no longer executing, and the
            // slice's lines go to the canceled attempt.
            Err(StepError::Engine(EngineError::Transition(_))) => {
                // The entries it held are not lost with the refused commit.
                self.journal.defer_entries(held);
                self.logs = logs;
                Ok(End::Canceled)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Keeps the log lines of an attempt that was canceled while it ran
    /// (its cancel hooks' among them).
    async fn keep_logs_of_canceled(&mut self) -> anyhow::Result<()> {
        if self.logs.lines.is_empty() && self.logs.dropped == 0 {
            return Ok(());
        }
        let shared = &self.executor.shared;
        let _guard = shared.locks.lock(&self.run.id).await;
        let Some(mut run) = shared.store.run(&self.run.id)? else {
            return Ok(());
        };
        if let Some(attempt) = run
            .attempts
            .iter_mut()
            .find(|a| a.number == self.attempt_no)
        {
            attempt.logs.append(&mut self.logs.lines);
            let over = attempt.logs.len().saturating_sub(Run::MAX_LOG_LINES);
            attempt.logs.truncate(Run::MAX_LOG_LINES);
            attempt.logs_dropped += self.logs.dropped + over as u64;
            shared.store.put_run(&run).await?;
        }
        Ok(())
    }

    /// Ends the attempt with `event`, under the run's lock: a run canceled
    /// meanwhile stays canceled.
    async fn finish(&mut self, event: Event) -> anyhow::Result<()> {
        let shared = &self.executor.shared;
        let mut batch = Batch::default();
        let held = self.journal.append_ending(
            &mut batch,
            JournalEntry::AttemptEnded {
                attempt: self.attempt_no,
                outcome: event
                    .attempt_outcome()
                    .unwrap_or(AttemptOutcome::SystemFailure),
            },
        );
        // Snapshots of this attempt are of no further use. An attempt that
        // never left its first slice never suspended, so it has none.
        if self.resumed {
            batch.delete_keys(shared.store.layer_keys(&self.run.id)?);
        }
        let input = Input::Run {
            run: self.run.id.clone(),
            event,
            logs: self.logs.clone(),
        };
        // The guest is gone: its place on this node is free again, and the
        // queue slot goes back as soon as the commit is handed over (see
        // `Slot::release`).
        self.place = None;
        let ended = {
            let _guard = shared.locks.lock(&self.run.id).await;
            self.executor
                .step_ending(input, batch, || self.slot.release())
                .await
        };
        match ended {
            Ok(_) => Ok(()),
            Err(StepError::Engine(EngineError::RunNotFound(_))) => {
                self.journal.defer_entries(held);
                Ok(())
            }
            // Not executing any more (canceled meanwhile): nothing to end,
            // but the slice's lines go to the canceled attempt, and the
            // entries it held are not lost with the refused commit.
            Err(StepError::Engine(EngineError::Transition(_))) => {
                self.journal.defer_entries(held);
                self.keep_logs_of_canceled().await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// What a first attempt starts with (the payload read from the store
    /// when the run's record keeps it apart).
    fn start_context(&self) -> Result<StartContext, String> {
        let run = &self.run;
        let payload = self
            .executor
            .shared
            .store
            .payload_of(run)
            .map_err(|e| format!("reading the run's payload failed: {e}"))?;
        Ok(StartContext {
            run_id: run.id.to_string(),
            task_id: run.task_id.clone(),
            attempt: self.attempt_no,
            max_attempts: run.max_attempts,
            environment: self.executor.shared.config.environment.clone(),
            version: run.version.clone(),
            machine: run.machine.to_string(),
            tags: match &self.started {
                Some(started) => started.tags.clone(),
                None => run.tags.clone(),
            },
            // Stored as JSON at trigger time; only text needs quoting.
            payload: if run.payload_type == "text/plain" {
                serde_json::Value::String(payload).to_string()
            } else {
                payload
            },
            metadata: match &self.started {
                Some(started) => started.metadata.clone(),
                None => self.metadata_json(),
            },
            created_at_ms: run.created_at.as_millis(),
        })
    }

    /// The run's metadata now, as JSON.
    fn metadata_json(&self) -> String {
        match &self.run.metadata {
            Some(metadata) => metadata.to_string(),
            None => "{}".into(),
        }
    }
}

/// What a fetch's journaled request is masked and sealed for.
struct Sealing<'a> {
    redactor: &'a Redactor,
    run: &'a RunId,
    attempt: u32,
}

/// The journal record of a new wait.
fn wait_record(
    wait: &wit::Wait,
    now: Timestamp,
    store: &kiln_store::Store,
    sealing: Sealing<'_>,
) -> Result<WaitRecord, String> {
    let on = match &wait.kind {
        wit::WaitKind::Duration(ms) => WaitOn::Timer {
            due_at: Timestamp(now.as_millis().saturating_add(*ms)),
        },
        wit::WaitKind::Until(at) => WaitOn::Timer {
            due_at: Timestamp(*at),
        },
        wit::WaitKind::Run(id) => {
            let run_id = RunId::parse(id).map_err(|e| format!("waiting on run `{id}`: {e}"))?;
            WaitOn::Run { run_id }
        }
        wit::WaitKind::Token(id) => {
            let token_id = kiln_types::TokenId::parse(id)
                .map_err(|e| format!("waiting on token `{id}`: {e}"))?;
            let token = store
                .token(&token_id)
                .ok()
                .flatten()
                .ok_or_else(|| format!("waiting on token `{id}`, which does not exist"))?;
            WaitOn::Token {
                token_id,
                timeout_at: token.timeout_at,
            }
        }
        wit::WaitKind::Batch(id) => {
            let batch = kiln_types::BatchId::parse(id)
                .ok()
                .and_then(|b| store.batch(&b).ok().flatten())
                .ok_or_else(|| format!("waiting on batch `{id}`, which does not exist"))?;
            // The wait keeps the batch's runs as they are now. A batch of
            // the v3 API has none until its last item is streamed in (it is
            // sealed then, and never changes again), and one whose items all
            // failed has none at all: either would wait for ever.
            if let (Some(expected), None) = (batch.expected, batch.sealed_at) {
                return Err(format!(
                    "waiting on batch `{id}`, whose {expected} items are still being \
                     streamed in: a run can wait on a batch once it is sealed"
                ));
            }
            if batch.runs.is_empty() {
                return Err(format!(
                    "waiting on batch `{id}`, which has no runs (none of its items was triggered)"
                ));
            }
            WaitOn::Batch {
                batch_id: id.clone(),
                runs: batch.runs,
            }
        }
        wit::WaitKind::Fetch(request) => WaitOn::Fetch {
            request: super::fetch::journaled(
                kiln_types::FetchRequest {
                    method: request.method.clone(),
                    url: request.url.clone(),
                    headers: request.headers.clone(),
                    body: request.body.as_ref().map(|b| BASE64.encode(b)),
                    timeout_ms: request.timeout_ms,
                    sealed: None,
                },
                sealing.redactor,
                store,
                (sealing.run, sealing.attempt, wait.id),
            )?,
        },
    };
    Ok(WaitRecord { id: wait.id, on })
}

/// A wait as the guest asked for it, for the cursor to check against the
/// journal (whose fetch URLs [`super::fetch::unmask_replay`] gave back).
fn request(kind: &wit::WaitKind) -> WaitRequest {
    match kind {
        wit::WaitKind::Duration(ms) => WaitRequest::Duration(*ms),
        wit::WaitKind::Until(at) => WaitRequest::Until(Timestamp(*at)),
        wit::WaitKind::Run(id) => WaitRequest::Run(id.clone()),
        wit::WaitKind::Batch(id) => WaitRequest::Batch(id.clone()),
        wit::WaitKind::Token(id) => WaitRequest::Token(id.clone()),
        wit::WaitKind::Fetch(request) => WaitRequest::Fetch {
            method: request.method.clone(),
            url: request.url.clone(),
        },
    }
}

fn wake(id: u64, value: WakeValue) -> wit::Wake {
    wit::Wake {
        id,
        value: match value {
            WakeValue::Timer => wit::WakeValue::Timer,
            WakeValue::Run { outcome } => wit::WakeValue::Run(run_outcome(outcome)),
            WakeValue::Batch { outcomes } => {
                wit::WakeValue::Batch(outcomes.into_iter().map(run_outcome).collect())
            }
            WakeValue::Token { data, error } => wit::WakeValue::Token(match (data, error) {
                (Some(data), _) => Ok(data),
                (None, error) => Err(error.unwrap_or_else(|| "the token timed out".into())),
            }),
            WakeValue::Fetch { response, error } => wit::WakeValue::Fetch(match response {
                Some(response) => match BASE64.decode(&response.body) {
                    Ok(body) => Ok(wit::HttpResponse {
                        status: response.status,
                        headers: response.headers,
                        body,
                    }),
                    Err(e) => Err(format!("the journaled response body is corrupt: {e}")),
                },
                None => Err(error.unwrap_or_else(|| "the fetch failed".into())),
            }),
        },
    }
}

fn run_outcome(outcome: kiln_types::RunOutcome) -> wit::RunOutcome {
    wit::RunOutcome {
        run_id: outcome.run_id.to_string(),
        ok: outcome.ok,
        value: outcome.value,
    }
}

fn nondeterminism(message: String, attempt: &Guest) -> Event {
    failure(
        FailureKind::System,
        RunError::new("NonDeterminism", message),
        attempt.used().as_millis() as u64,
    )
}

fn trap_event(trap: TrapKind, usage_ms: u64) -> Event {
    let (kind, name) = match &trap {
        TrapKind::OutOfMemory { .. } => (FailureKind::OutOfMemory, "OutOfMemory"),
        TrapKind::TimedOut(_) => (FailureKind::TimedOut, "MaxDurationExceeded"),
        TrapKind::NonDeterminism(_) => (FailureKind::System, "NonDeterminism"),
        TrapKind::LimitExceeded(_) => (
            FailureKind::Error {
                abort: true,
                retry_delay_ms: None,
            },
            "LimitExceeded",
        ),
        TrapKind::Canceled => (
            FailureKind::Error {
                abort: true,
                retry_delay_ms: None,
            },
            "Canceled",
        ),
        TrapKind::Panic(_) => (
            FailureKind::Error {
                abort: false,
                retry_delay_ms: None,
            },
            "Panic",
        ),
        TrapKind::Other(_) => (
            FailureKind::Error {
                abort: false,
                retry_delay_ms: None,
            },
            "Trap",
        ),
    };
    failure(kind, RunError::new(name, trap.to_string()), usage_ms)
}

pub(crate) fn failure(kind: FailureKind, error: RunError, usage_ms: u64) -> Event {
    Event::AttemptFailed {
        kind,
        error,
        usage_ms,
        random: rand::random::<f64>(),
    }
}
