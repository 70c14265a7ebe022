//! The dispatcher: which queued run starts next, and when.
//!
//! Queued runs wait in a [`kiln_queues::Scheduler`] (queues, one lane per
//! `concurrencyKey`, fairness, priority, pause, rate limits, the
//! environment's base and burst limits). One task takes what may start and
//! hands each run to the driver, and so does a slot given back at an
//! attempt's end. A slice gives its slot back when it ends: the run
//! suspended at a wait (a `WAITING` run holds no slot; it queues again when
//! woken) or could not be claimed, and the dispatcher's task is woken; or,
//! for an attempt that ended, as soon as the commit that ends it is handed
//! to the store, and the slot starts the runs it lets start itself (see
//! [`Slot::release`]). The scheduler lives in memory; after a restart
//! recovery queues every `QUEUED` run again.

use super::{Executor, driver};
use kiln_manifest::{Manifest, QueueManifest};
use kiln_queues::{Entry, LaneKey, QueueLimits, QueueStats, RateLimit, Scheduler, Started};
use kiln_types::{Run, RunId, Timestamp};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// The scheduler, and the signal that wakes the dispatcher's task when
/// something in it changed that the task must act on.
pub(crate) struct Dispatch {
    scheduler: Mutex<Scheduler<RunId>>,
    changed: Notify,
    /// Set when the server drains: nothing more starts.
    draining: AtomicBool,
    /// Slices under way, counted until they end (a slice gives its slot
    /// back a little before, see [`Slot::release`]).
    slices: AtomicUsize,
}

/// A queue as the API shows it.
#[derive(Debug, Clone)]
pub struct QueueView {
    /// Its name (`emails`, or `task/<id>` for a task's own queue).
    pub name: String,
    /// What it holds and allows now.
    pub stats: QueueStats,
    /// The busiest lanes: `(concurrencyKey, queued, running)`.
    pub lanes: Vec<(LaneKey, usize, u32)>,
}

/// The limits of a declared queue.
fn limits(queue: &QueueManifest) -> QueueLimits {
    QueueLimits {
        concurrency: queue.concurrency_limit,
        total: queue.concurrency_limit_total,
        rate: queue.rate_limit.map(|r| RateLimit {
            limit: r.limit,
            period_ms: r.period_ms,
            per_key: r.per_key,
        }),
    }
}

impl Dispatch {
    /// A dispatcher for an environment running at most `base` runs of one
    /// queue and `burst` runs in all.
    pub(crate) fn new(base: usize, burst: usize) -> Self {
        let clamp = |n: usize| n.min(u32::MAX as usize) as u32;
        Dispatch {
            scheduler: Mutex::new(Scheduler::new(clamp(base), clamp(burst))),
            changed: Notify::new(),
            draining: AtomicBool::new(false),
            slices: AtomicUsize::new(0),
        }
    }

    /// Starts nothing more; runs stay queued for the next server. Every
    /// slice started before this returns is counted by
    /// [`Dispatch::running`] until it ends.
    pub(crate) fn drain(&self) {
        // Under the scheduler's lock, which whoever starts runs (the
        // dispatcher, or a slot given back: `take_startable`) holds from
        // its check of the flag to its count of the slices it starts.
        let _scheduler = self.lock();
        self.draining.store(true, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// How many slices are under way, each until it ends: past giving its
    /// slot back, until its last commit is handed to the store (and, when
    /// something follows it, durable and its effects done).
    pub(crate) fn running(&self) -> usize {
        self.slices.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, Scheduler<RunId>> {
        self.scheduler.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the scheduler keeps of a queued run.
    pub(crate) fn entry(run: &Run) -> Entry<RunId> {
        Entry {
            run: run.id.clone(),
            queue: run.queue_name(),
            key: run.concurrency_key.clone(),
            order: run.queue_order(),
            memory_mib: (run.machine.memory_limit_bytes() >> 20) as u32,
        }
    }

    /// Sets the memory all executing runs together may use, in MiB.
    pub(crate) fn set_memory_budget(&self, mib: Option<u64>) {
        self.lock().set_memory_budget(mib);
        self.changed.notify_one();
    }

    /// Queues a run to start as its queue allows. The dispatcher's task is
    /// not woken while the environment runs as many runs as it may (its
    /// burst limit): nothing can start then until a slot is given back, and
    /// a slot given back starts what it lets start itself, or wakes the
    /// task (see [`Slot::release`]). Under load that is most triggers, each
    /// of which woke the task only for it to find no slot.
    pub(crate) fn push(&self, entry: Entry<RunId>) {
        let mut scheduler = self.lock();
        if scheduler.push(entry) && scheduler.running() < scheduler.environment().1 {
            drop(scheduler);
            self.changed.notify_one();
        }
    }

    /// Whether a queue is known.
    pub(crate) fn has_queue(&self, name: &str) -> bool {
        self.lock().has_queue(name)
    }

    /// Takes a queued run out (canceled or expired before it started).
    pub(crate) fn remove(&self, run: &RunId) {
        if self.lock().remove(run) {
            // It may have been the run others waited behind for memory.
            self.changed.notify_one();
        }
    }

    /// Creates or updates the queues a deployment declares.
    pub(crate) fn configure(&self, manifest: &Manifest) {
        let mut scheduler = self.lock();
        for queue in manifest.queues() {
            scheduler.configure(&queue.name, limits(&queue));
        }
        drop(scheduler);
        self.changed.notify_one();
    }

    /// Pauses or resumes a queue; false if there is no such queue.
    pub(crate) fn set_paused(&self, queue: &str, paused: bool) -> bool {
        let known = self.lock().set_paused(queue, paused);
        self.changed.notify_one();
        known
    }

    /// The names of every queue, sorted.
    pub(crate) fn queue_names(&self) -> Vec<String> {
        self.lock().queue_names()
    }

    /// Every queue, by name.
    pub(crate) fn queues(&self) -> Vec<QueueView> {
        let scheduler = self.lock();
        scheduler
            .queue_names()
            .into_iter()
            .filter_map(|name| {
                let stats = scheduler.stats(&name)?;
                Some(QueueView {
                    name,
                    stats,
                    lanes: Vec::new(),
                })
            })
            .collect()
    }

    /// One queue, with its busiest `lanes` lanes.
    pub(crate) fn queue(&self, name: &str, lanes: usize) -> Option<QueueView> {
        let scheduler = self.lock();
        Some(QueueView {
            name: name.to_string(),
            stats: scheduler.stats(name)?,
            lanes: scheduler.lanes(name, lanes),
        })
    }

    /// The environment's base and burst limits.
    pub(crate) fn environment(&self) -> (u32, u32) {
        self.lock().environment()
    }
}

/// A started run's slot: given back once the slice's last commit is on its
/// way to the store (see [`Slot::release`]), or when the slice ends, even
/// if the driver panicked.
pub(crate) struct Slot {
    executor: Executor,
    run: RunId,
    started: Mutex<Option<Started<RunId>>>,
}

impl Slot {
    /// Gives the slot back now; later calls, and the drop, do nothing.
    ///
    /// A slice calls it as soon as the commit that ends its attempt is
    /// handed to the committer, rather than once that commit is durable: the
    /// guest is gone by then, and the store makes commits durable in the
    /// order they were handed over, so whatever the next run of the queue
    /// commits is durable only after the end of this one is, and the next
    /// run's guest makes no effect outside its sandbox before then (a
    /// fetch waits for what came before it to be durable). A crash before
    /// the end is durable loses the next run's start with it. What follows
    /// the end once it is durable (telling pollers, a retry's queueing) may
    /// come after the next run started.
    ///
    /// The runs the slot lets start are handed to the guests' runtime from
    /// here, rather than by the dispatcher's task: waking that task on the
    /// API's runtime, which then handed the next run back to the guests'
    /// runtime, cost every run two wake-ups of another thread. The
    /// dispatcher is still woken while a rate-limited queue or lane waits
    /// for its window (the scheduler then has a time to be called by).
    pub(crate) fn release(&self) {
        self.give_back(true);
    }

    /// Gives the slot back, if it was not yet; starts the runs this lets
    /// start if `start_next`, or else leaves them to the dispatcher's task.
    fn give_back(&self, start_next: bool) {
        let started = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(started) = started else {
            return;
        };
        let dispatch = &self.executor.shared.dispatch;
        let (next, wakeup) = {
            let mut scheduler = dispatch.lock();
            scheduler.release(&started);
            let next = if start_next {
                take_startable(dispatch, &mut scheduler)
            } else {
                Vec::new()
            };
            (next, scheduler.next_wakeup())
        };
        start_all(&self.executor, next);
        if !start_next || wakeup.is_some() {
            dispatch.changed.notify_one();
        }
    }

    /// The slot of a run the scheduler just started.
    fn new(executor: &Executor, started: Started<RunId>) -> Self {
        Slot {
            executor: executor.clone(),
            run: started.run.clone(),
            started: Mutex::new(Some(started)),
        }
    }
}

impl Drop for Slot {
    /// A slot not given back yet (a slice that suspended, was not claimed,
    /// whose end the engine refused, or that panicked) goes back through
    /// the dispatcher's task: a slice dropped by a runtime shutting down
    /// would otherwise start the next run on it, which would be dropped at
    /// once, and so on through the queue.
    fn drop(&mut self) {
        self.give_back(false);
        self.executor
            .shared
            .dispatch
            .slices
            .fetch_sub(1, Ordering::SeqCst);
    }
}

/// Takes every run the scheduler lets start now, none once the server
/// drains; each is counted as a slice under the scheduler's lock, as the
/// drain expects (see [`Dispatch::drain`]), and its slot uncounts it when
/// dropped.
fn take_startable(dispatch: &Dispatch, scheduler: &mut Scheduler<RunId>) -> Vec<Started<RunId>> {
    let mut startable = Vec::new();
    if dispatch.draining.load(Ordering::SeqCst) {
        return startable;
    }
    let now = Timestamp::now().as_millis();
    while let Some(started) = scheduler.next(now) {
        dispatch.slices.fetch_add(1, Ordering::SeqCst);
        startable.push(started);
    }
    startable
}

/// Hands started runs to the driver on the guests' runtime, each with its
/// slot. Every slot is made before any run is handed over, so that none is
/// left uncounted if handing one over fails.
fn start_all(executor: &Executor, startable: Vec<Started<RunId>>) {
    let slots: Vec<Slot> = startable
        .into_iter()
        .map(|started| Slot::new(executor, started))
        .collect();
    for slot in slots {
        // Boxed: a slice's future is several KiB, which spawning it
        // unboxed would copy more than once for every run.
        super::guests::spawn(Box::pin(async move {
            if let Err(error) = driver::execute(&slot.executor, &slot.run, &slot).await {
                tracing::error!(run = %slot.run, %error, "executing a run failed");
            }
            drop(slot);
        }));
    }
}

/// Starts queued runs as the scheduler allows, for as long as the server
/// runs (a slot given back starts the runs it lets start itself, see
/// [`Slot::release`]).
pub(crate) async fn run(executor: Executor) {
    let dispatch = executor.shared.dispatch.clone();
    loop {
        let (startable, wakeup) = {
            let mut scheduler = dispatch.lock();
            if dispatch.draining.load(Ordering::SeqCst) {
                return;
            }
            (
                take_startable(&dispatch, &mut scheduler),
                scheduler.next_wakeup(),
            )
        };
        if !startable.is_empty() {
            start_all(&executor, startable);
            continue;
        }
        match wakeup {
            Some(at) => {
                let wait = at.saturating_sub(Timestamp::now().as_millis()).max(1);
                tokio::select! {
                    _ = dispatch.changed.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                }
            }
            None => dispatch.changed.notified().await,
        }
    }
}
