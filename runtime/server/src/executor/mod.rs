//! The executor: takes queued runs, runs their attempts in the sandbox, and
//! drives each run through the engine's transitions.
//!
//! - [`dispatch`] starts queued runs as their queues allow (limits, lanes
//!   per `concurrencyKey`, fairness, priority, pause, rate limits, the
//!   environment's limit); a waiting run holds no slot.
//! - [`driver`] runs one slice of a run: it restores the run's last snapshot
//!   (or starts a fresh instance), replays the journal after it, then runs
//!   live until the task finishes or waits. A short timer wait is slept warm
//!   in-process; a longer one snapshots the guest, drops the instance and
//!   marks the run `WAITING` with durable timers.
//! - [`interpreter`] feeds inputs to the engine (`kiln-engine`) and carries
//!   out its commands: the writes of one input in one atomic commit, then
//!   the effects. Every status change, suspension, due timer, token
//!   completion and wake delivery goes through it; a fact (a child's end, a
//!   token's resolution, a due timer) is committed with the inbox entry
//!   that wakes the run waiting on it, and one path delivers every inbox.
//! - [`timers`] fires durable timers (through the engine).
//! - [`children`] creates child runs exactly once; cancel cascades to
//!   unfinished children.
//! - Every read-modify-write of a run record happens under the run's lock
//!   ([`locks`]), so a cancel, a timer and the end of an attempt never
//!   overwrite one another.

pub(crate) mod admission;
mod annotations;
mod budgets;
mod children;
mod delays;
mod dispatch;
mod driver;
mod env;
mod fetch;
mod guest;
mod guests;
mod interpreter;
mod journal;
mod locks;
pub(crate) mod pending;
mod retention;
mod timers;
mod tokens;
mod waits;

pub use annotations::AnnotationError;
pub(crate) use budgets::journal_within;
pub use budgets::{BUDGET_NAMES, Budgets, parse_size_bytes};
pub use delays::RescheduleError;
pub use dispatch::QueueView;
pub use fetch::{FetchPolicy, MAX_FETCH_BODY};
pub(crate) use guests::spawn as spawn_guest;
pub use interpreter::engine_writes;
pub use retention::Pass;
pub use tokens::{MAX_TOKEN_DATA, TokenError, TokenOptions};

use crate::deployments::Deployments;
use interpreter::StepError;
use kiln_engine::{EngineError, Event, Input, Outcome};
use kiln_store::{Batch, Store, TimerKey};
use kiln_types::{Logs, Run, RunId, RunStatus, Timestamp};
use locks::RunLocks;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use timers::{Fired, Timers};
use tokio::sync::Notify;

/// The largest output a run may return, in bytes.
pub const MAX_OUTPUT_BYTES: usize = 10 * 1024 * 1024;

/// How the executor behaves.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// How many runs of one queue execute at once (the environment's base
    /// limit).
    pub concurrency: usize,
    /// How many runs execute at once in all (base × burst factor).
    pub burst: usize,
    /// The environment runs belong to.
    pub environment: String,
    /// Timer waits at most this long are slept with the instance kept warm
    /// (journaled the same); longer ones snapshot the guest and free its slot.
    pub warm_wait: Duration,
    /// The server's base URL, for wait tokens' callback URLs.
    pub public_url: String,
    /// The secret key, which signs callback URLs.
    pub secret: String,
    /// Which hosts tasks may fetch from.
    pub fetch: FetchPolicy,
    /// The `maxDuration` of runs that set none.
    pub default_max_duration: Duration,
    /// What one run may use of the server.
    pub budgets: Budgets,
    /// The memory all executing runs together may use, in MiB, counted by
    /// their machines' caps (`None`: no budget).
    pub memory_budget_mib: Option<u64>,
    /// The nodes of the cluster that run guests for this leader (`None` on
    /// a single server).
    pub(crate) workers: Option<Arc<crate::cluster::Workers>>,
}

/// Hands runs to the executor and controls them.
#[derive(Clone)]
pub struct Executor {
    shared: Arc<Shared>,
}

/// A run executing now: how to interrupt it.
pub(crate) struct LiveRun {
    /// Interrupts the guest at the next epoch tick.
    pub(crate) interrupt: Mutex<Option<Arc<AtomicBool>>>,
    /// Wakes a warm wait.
    pub(crate) canceled: Notify,
    pub(crate) is_canceled: AtomicBool,
}

pub(crate) struct Shared {
    store: Store,
    deployments: Arc<Deployments>,
    config: ExecutorConfig,
    locks: RunLocks,
    /// Serialises triggers that carry an idempotency key or a debounce key
    /// (see [`admission`]), and v3 batch item streams.
    trigger_lock: tokio::sync::Mutex<()>,
    /// Serialise one request idempotency key's triggers, one batch's items.
    pub(crate) key_locks: locks::RunLocks,
    /// One release of `PENDING_VERSION` runs at a time.
    pub(crate) pending_lock: tokio::sync::Mutex<()>,
    /// The batches whose items are being streamed in now.
    pub(crate) item_streams: Arc<Mutex<std::collections::HashSet<String>>>,
    live: Mutex<HashMap<RunId, Arc<LiveRun>>>,
    timers: std::sync::OnceLock<Timers>,
    /// The client durable fetches go through.
    http: reqwest::Client,
    /// Queued runs and what may start next.
    dispatch: Arc<dispatch::Dispatch>,
    /// Held while the engine reads and the batch it decided is applied, so
    /// no other input decides on state about to change (never across an
    /// await); holds the runs suspended runs may wait on, which decisions
    /// read and change.
    gate: Mutex<waits::WaitedOn>,
    /// Runs whose inbox is to be delivered.
    deliveries: tokio::sync::mpsc::UnboundedSender<RunId>,
    /// The environment's secrets, ready to mask, as of a version of its
    /// variables ([`kiln_store::Store::env_version`]).
    secrets: Mutex<Option<(u64, kiln_sandbox::Redactor)>>,
}

/// Why a cancel was refused.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// No such run.
    #[error("run not found")]
    NotFound,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
}

impl From<StepError> for CancelError {
    fn from(error: StepError) -> Self {
        match error {
            StepError::Engine(EngineError::RunNotFound(_)) => CancelError::NotFound,
            StepError::Engine(e) => {
                CancelError::Store(kiln_store::StoreError::Backend(e.to_string()))
            }
            StepError::Store(e) => CancelError::Store(e),
        }
    }
}

impl Executor {
    /// Starts the dispatcher and the timer service.
    pub(crate) fn start(
        store: Store,
        deployments: Arc<Deployments>,
        config: ExecutorConfig,
    ) -> Self {
        let dispatch = Arc::new(dispatch::Dispatch::new(
            config.concurrency.max(1),
            config.burst.max(config.concurrency).max(1),
        ));
        dispatch.set_memory_budget(config.memory_budget_mib);
        if let Some(current) = deployments.current() {
            dispatch.configure(&current.record.manifest);
        }
        let (deliveries, delivery_rx) = tokio::sync::mpsc::unbounded_channel();
        let http = fetch::client(&config.fetch);
        let shared = Arc::new(Shared {
            store: store.clone(),
            deployments,
            config,
            locks: RunLocks::default(),
            trigger_lock: tokio::sync::Mutex::new(()),
            key_locks: locks::RunLocks::default(),
            pending_lock: tokio::sync::Mutex::new(()),
            item_streams: Arc::default(),
            live: Mutex::new(HashMap::new()),
            timers: std::sync::OnceLock::new(),
            http,
            secrets: Mutex::new(None),
            dispatch,
            gate: Mutex::new(waits::WaitedOn::read(&store)),
            deliveries,
        });
        let executor = Executor { shared };
        tokio::spawn(dispatch::run(executor.clone()));
        tokio::spawn(interpreter::deliveries(executor.clone(), delivery_rx));
        executor
    }

    /// Queues a run to start as its queue allows.
    pub fn enqueue(&self, run: &Run) {
        self.shared.dispatch.push(dispatch::Dispatch::entry(run));
    }

    /// Creates or updates the queues a deployment declares.
    pub(crate) fn sync_queues(&self, manifest: &kiln_manifest::Manifest) {
        self.shared.dispatch.configure(manifest);
    }

    /// Pauses or resumes a queue (kept across restarts). Returns false,
    /// changing nothing, if there is no such queue.
    pub async fn set_queue_paused(
        &self,
        queue: &str,
        paused: bool,
    ) -> Result<bool, kiln_store::StoreError> {
        if !self.shared.dispatch.has_queue(queue) {
            return Ok(false);
        }
        let mut batch = Batch::default();
        batch.set_queue_paused(queue, paused);
        self.shared.store.commit(batch).await?;
        Ok(self.shared.dispatch.set_paused(queue, paused))
    }

    /// The names of every queue, sorted.
    pub fn queue_names(&self) -> Vec<String> {
        self.shared.dispatch.queue_names()
    }

    /// Every queue and what it holds.
    pub fn queues(&self) -> Vec<QueueView> {
        self.shared.dispatch.queues()
    }

    /// One queue, with its busiest `lanes` lanes (`concurrencyKey` values).
    pub fn queue(&self, name: &str, lanes: usize) -> Option<QueueView> {
        self.shared.dispatch.queue(name, lanes)
    }

    /// The environment's base limit (per queue) and burst limit (in all).
    pub fn environment_limits(&self) -> (u32, u32) {
        self.shared.dispatch.environment()
    }

    /// Sets a run that was just committed (with [`Batch::put_new_run`]) on
    /// its way: a queued run is queued, a delayed one's timers are armed.
    pub(crate) fn admit(&self, run: &Run) {
        if run.status == RunStatus::Queued {
            self.enqueue(run);
        }
        self.arm(TimerKey::of_run(run));
    }

    /// Hands timers that were just stored to the timer service (before it
    /// starts, its first scan finds them).
    pub(crate) fn arm(&self, timers: Vec<TimerKey>) {
        if let Some(service) = self.shared.timers.get() {
            for timer in timers {
                service.add(timer);
            }
        }
    }

    /// Queues a run to start at `at` (a retry's backoff).
    pub fn enqueue_at(&self, run: &Run, at: Timestamp) {
        let delay = at.as_millis().saturating_sub(Timestamp::now().as_millis());
        if delay == 0 {
            return self.enqueue(run);
        }
        let this = self.clone();
        let entry = dispatch::Dispatch::entry(run);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            this.shared.dispatch.push(entry);
        });
    }

    /// Re-queues every queued or executing run after a restart, delivers
    /// every inbox a crash left undelivered, then starts the timer service.
    /// Waiting runs are not read: what wakes them is in their inbox or in
    /// their timers. The timer service starts only afterwards, so no run has
    /// been claimed in this process while recovery reads which runs were
    /// executing.
    pub(crate) async fn recover(&self) -> anyhow::Result<usize> {
        for queue in self.shared.store.paused_queues()? {
            self.shared.dispatch.set_paused(&queue, true);
        }
        self.shared.store.migrate_token_waiters().await?;
        let runs = self.shared.store.active_runs()?;
        let count = runs.len();
        for run in runs {
            if self.shared.live_run(&run.id).is_some() {
                // Executing in this process: not an interrupted run.
                continue;
            }
            match run.status {
                RunStatus::Queued => match run.next_attempt_at {
                    Some(at) => self.enqueue_at(&run, at),
                    None => self.enqueue(&run),
                },
                RunStatus::Dequeued | RunStatus::Executing => {
                    let _guard = self.shared.locks.lock(&run.id).await;
                    let input = Input::Run {
                        run: run.id.clone(),
                        event: Event::Recovered,
                        logs: Logs::default(),
                    };
                    skip_refused(&run.id, self.step(input, Batch::default()).await)?;
                }
                _ => {}
            }
        }
        // Runs suspended on children or tokens: anything already true that
        // an older Kiln never delivered goes to their inbox.
        // A run the engine refuses is logged and does not keep the others
        // from starting; a store that fails stops the start.
        for run in self.shared.store.runs_waiting_on_others()? {
            let _guard = self.shared.locks.lock(&run).await;
            let recheck = Input::Recheck { run: run.clone() };
            skip_refused(&run, self.step(recheck, Batch::default()).await)?;
        }
        for run in self.shared.store.runs_with_arrivals()? {
            skip_refused(&run, self.deliver(&run).await.map(|()| Outcome::Done))?;
        }
        self.start_timers();
        Ok(count)
    }

    fn start_timers(&self) {
        let firing = self.clone();
        let timers = Timers::start(self.shared.store.clone(), move |timer| {
            let executor = firing.clone();
            async move { executor.fire_timer(timer).await }
        });
        let _ = self.shared.timers.set(timers);
    }

    /// Starts no more runs; queued runs stay queued, for the server that
    /// comes next.
    pub(crate) fn stop_starting(&self) {
        self.shared.dispatch.drain();
    }

    /// Waits until no slice is under way (each finished, its last commit
    /// handed to the store, or suspended at a wait) or `until` passes;
    /// returns how many were still under way. The drain then waits until
    /// every commit handed to the store is durable.
    pub(crate) async fn idle(&self, until: std::time::Instant) -> usize {
        loop {
            let running = self.shared.dispatch.running();
            if running == 0 || std::time::Instant::now() >= until {
                return running;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Cancels a run: an executing guest is interrupted at the next epoch
    /// tick, a waiting or queued run is canceled in place. Canceling a
    /// finished run changes nothing. Returns the run afterwards.
    pub async fn cancel(&self, run_id: &RunId) -> Result<Run, CancelError> {
        let shared = &self.shared;
        let _guard = shared.locks.lock(run_id).await;
        let run = shared.store.run(run_id)?.ok_or(CancelError::NotFound)?;
        if run.status.is_final() {
            return Ok(run);
        }
        let input = Input::Run {
            run: run_id.clone(),
            event: Event::Cancel,
            logs: Logs::default(),
        };
        let canceled = match self.step(input, Batch::default()).await {
            Ok(Outcome::Run(canceled)) => *canceled,
            Ok(_) | Err(StepError::Engine(EngineError::Transition(_))) => return Ok(run),
            Err(e) => return Err(e.into()),
        };
        if run.status == RunStatus::Queued {
            shared.dispatch.remove(run_id);
        }
        Ok(canceled)
    }

    /// Fires a durable timer through the engine: a wait's timer puts its
    /// fact in the run's inbox and deletes the timer in one commit; a run's
    /// own delay or ttl timer moves the run on.
    async fn fire_timer(&self, timer: TimerKey) -> Fired {
        let fired = if timer.wait_id == TimerKey::DELAY || timer.wait_id == TimerKey::TTL {
            self.fire_run_timer(&timer).await
        } else {
            let input = Input::TimerDue {
                run: timer.run_id.clone(),
                wait: timer.wait_id,
                due: timer.due,
            };
            self.step(input, Batch::default()).await.map(|_| ())
        };
        match fired {
            Ok(()) => Fired::Done,
            Err(error) => {
                tracing::error!(run = %timer.run_id, %error, "firing a timer failed");
                Fired::Busy
            }
        }
    }

    /// Fires a timer of the run itself: a delay that ends (the run is queued
    /// and its ttl starts) or a ttl that runs out (the run expires). A timer
    /// that no longer matches the run (rescheduled, started, ended) is
    /// deleted and does nothing.
    async fn fire_run_timer(&self, timer: &TimerKey) -> Result<(), StepError> {
        let store = &self.shared.store;
        let _guard = self.shared.locks.lock(&timer.run_id).await;
        let mut batch = Batch::default();
        batch.delete_timer(timer);
        let run = store.run(&timer.run_id)?;
        let event = match &run {
            Some(run)
                if timer.wait_id == TimerKey::DELAY
                    && run.status == RunStatus::Delayed
                    && run.delayed_until == Some(timer.due) =>
            {
                Some(Event::DelayElapsed)
            }
            Some(run)
                if timer.wait_id == TimerKey::TTL
                    && matches!(
                        run.status,
                        RunStatus::Queued | RunStatus::Delayed | RunStatus::PendingVersion
                    )
                    && run.attempts.is_empty() =>
            {
                Some(Event::Expire)
            }
            _ => None,
        };
        let (Some(run), Some(event)) = (run, event) else {
            store.commit(batch).await?;
            return Ok(());
        };
        if let Some(debounce) = &run.debounce {
            batch.delete_debounce(&run.task_id, &debounce.key);
        }
        let input = Input::Run {
            run: run.id.clone(),
            event,
            logs: Logs::default(),
        };
        if let Outcome::Run(after) = self.step(input, batch).await?
            && after.status == RunStatus::Expired
        {
            self.shared.dispatch.remove(&run.id);
        }
        Ok(())
    }
}

/// Recovery's answer to one run's step: the engine refusing it (a run
/// whose record no longer fits) is logged and skipped; a store failure is
/// an error.
fn skip_refused(run: &RunId, result: Result<Outcome, StepError>) -> Result<(), StepError> {
    match result {
        Err(StepError::Engine(error)) => {
            tracing::error!(%run, %error, "recovery skipped a run the engine refused");
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

impl Shared {
    fn live_run(&self, run: &RunId) -> Option<Arc<LiveRun>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run)
            .cloned()
    }
}
