//! The interpreter of the engine's commands.
//!
//! Every change the engine decides goes through [`Executor::step`]: under
//! the gate, the engine reads what it needs and answers with commands; the
//! interpreter turns every write among them (plus the caller's own writes,
//! such as a snapshot layer) into one [`Batch`] and applies it before the
//! gate opens again, so no other input decides on state that is about to
//! change. Once the batch is durable, it performs the effects: queue a run,
//! deliver a run's inbox, interrupt a guest, cancel children. Telling
//! pollers a run finished is the store's listener's, once the batch that
//! wrote the end is durable (see [`kiln_store::Changes::finished`]).

use super::{Executor, waits};
use crate::metrics::Before;
use futures_util::FutureExt;
use kiln_engine::cursor::{self, Cursor};
use kiln_engine::{Command, EngineError, Input, Outcome, View, ViewError, ViewResult};
use kiln_store::{Batch, Store, StoreError, TimerKey};
use kiln_types::{
    Arrival, Run, RunId, RunOutcome, RunStatus, Timestamp, TokenId, WaitRecord, WaitToken, Waiter,
};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// Why an input could not be carried out.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    /// The engine refused it; nothing was written.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Its commit failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The store, as the engine reads it; remembers what it read of each run,
/// so the metrics can tell what a write changed. Knows which runs may be
/// waited on, so the end of one that is not reads no waiters.
struct StoreView<'a>(
    &'a Store,
    std::cell::RefCell<Vec<(RunId, Before)>>,
    &'a waits::WaitedOn,
);

impl StoreView<'_> {
    /// What the engine read of `run` first, before it decided.
    fn before(&self, run: &RunId) -> Option<Before> {
        self.1
            .borrow()
            .iter()
            .find(|(id, _)| id == run)
            .map(|(_, before)| *before)
    }
}

fn view_error(error: StoreError) -> ViewError {
    ViewError(error.to_string())
}

impl View for StoreView<'_> {
    fn run(&self, id: &RunId) -> ViewResult<Option<Run>> {
        let run = self.0.run(id).map_err(view_error)?;
        if let Some(run) = &run
            && self.before(id).is_none()
        {
            self.1.borrow_mut().push((id.clone(), Before::of(run)));
        }
        Ok(run)
    }

    fn outcome(&self, run: &Run) -> ViewResult<RunOutcome> {
        super::children::outcome_of(self.0, run).map_err(view_error)
    }

    fn waiters(&self, child: &RunId) -> ViewResult<Vec<Waiter>> {
        if !self.2.may_be_waited_on(child) {
            return Ok(Vec::new());
        }
        self.0.waiters(child).map_err(view_error)
    }

    fn waits(&self, run: &RunId) -> ViewResult<Vec<WaitRecord>> {
        let armed = self.0.armed_waits(run).map_err(view_error)?;
        if !armed.is_empty() {
            return Ok(armed);
        }
        // A run that suspended before Kiln kept a waits table: its pending
        // waits are in its journal. The run's status as the engine read it
        // tells whether it waits (it is not read again).
        let before = match self.before(run) {
            Some(before) => Some(before),
            None => self.0.run(run).map_err(view_error)?.map(|r| Before::of(&r)),
        };
        match before {
            Some(before) if before.status == RunStatus::Waiting => {
                let attempt = before.attempt.map_or(1, |(number, _)| number);
                let journal = self.0.journal(run).map_err(view_error)?;
                let records = cursor::attempt_records(journal, attempt).unwrap_or_default();
                Ok(Cursor::at_end(&records).pending().cloned().collect())
            }
            _ => Ok(Vec::new()),
        }
    }

    fn inbox(&self, run: &RunId) -> ViewResult<Vec<Arrival>> {
        self.0.inbox(run).map_err(view_error)
    }

    fn token(&self, id: &TokenId) -> ViewResult<Option<WaitToken>> {
        self.0.token(id).map_err(view_error)
    }

    fn token_waiters(&self, id: &TokenId) -> ViewResult<Vec<Waiter>> {
        self.0.token_waiters(id).map_err(view_error)
    }

    fn last_journal_seq(&self, run: &RunId) -> ViewResult<u64> {
        self.0.last_journal_seq(run).map_err(view_error)
    }
}

/// How long a step spins for the gate before it sleeps on it. A step
/// holds the gate for microseconds (the engine's reads and decision, the
/// batch's encoding, the hand-over to the store). The standard mutex spins
/// only briefly, and not at all once a thread sleeps on it, and a thread
/// that sleeps must be woken by the next to open it: sampled under load on
/// two cores, opening the gate made about 4,700 of the 5,450 wake-ups a
/// second between the guests' two threads. Spinning first ran 1.04–1.08
/// times the `engine` group's `hello-world` runs a second, at less CPU a
/// run in each of three rounds (30 µs of spin: 1.03–1.10 times, five
/// rounds); over HTTP, where the bench's clients share the cores, 0.87–1.04
/// times in seven rounds, 0.99 at the median (`docs/BENCHMARKS.md`).
const GATE_SPIN: Duration = Duration::from_micros(10);

/// Takes the gate: spins for it for up to [`GATE_SPIN`] first where
/// another core may be opening it meanwhile (not on one core, where the
/// holder cannot run while a step spins), then sleeps on it. As the plain
/// lock every step took before, it takes a poisoned gate all the same.
fn take_gate<T>(gate: &Mutex<T>) -> MutexGuard<'_, T> {
    static SEVERAL_CORES: OnceLock<bool> = OnceLock::new();
    let several = *SEVERAL_CORES
        .get_or_init(|| std::thread::available_parallelism().is_ok_and(|cores| cores.get() > 1));
    let spin = if several { GATE_SPIN } else { Duration::ZERO };
    take_gate_within(gate, spin, || {})
}

/// [`take_gate`] spinning for up to `spin`; `sleeping` is called when it
/// gives up spinning and sleeps on the gate. Each try is a
/// compare-and-swap on the gate's word, so tries are spaced by a few
/// pause instructions rather than back to back.
fn take_gate_within<T>(
    gate: &Mutex<T>,
    spin: Duration,
    sleeping: impl FnOnce(),
) -> MutexGuard<'_, T> {
    let mut since = None;
    loop {
        match gate.try_lock() {
            Ok(guard) => return guard,
            Err(TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {}
        }
        if since.get_or_insert_with(Instant::now).elapsed() >= spin {
            break;
        }
        for _ in 0..16 {
            std::hint::spin_loop();
        }
    }
    sleeping();
    gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An input's answer, its commit in flight, and the timers it stored.
type Decided = (
    kiln_engine::Applied,
    Option<kiln_store::Commit>,
    Vec<TimerKey>,
);

/// Adds the writes among `commands` to `batch`; returns the timers they
/// set, to hand to the timer service once the batch is durable. Every step
/// of the executor writes through this; the engine's simulation on a real
/// store (`runtime/server/tests/simulation.rs`) writes through it too, and
/// checks what it stored against the simulation's model.
pub fn engine_writes(batch: &mut Batch, commands: &[Command]) -> Vec<TimerKey> {
    let mut timers = Vec::new();
    for command in commands {
        match command {
            Command::PutRun(run) => {
                batch.put_new_run(run);
                timers.extend(TimerKey::of_run(run));
            }
            Command::AppendJournal { run, record } => {
                batch.append_journal(run, record);
            }
            Command::Arm { run, wait } => timers.extend(waits::arm(batch, run, wait)),
            Command::Disarm { run, wait } => waits::disarm(batch, run, wait),
            Command::PutArrival { run, arrival } => {
                batch.put_arrival(run, arrival);
            }
            Command::DeleteArrival { run, wait, part } => {
                batch.delete_arrival(run, *wait, *part);
            }
            Command::DeleteTimer { run, wait, due } => {
                batch.delete_timer(&TimerKey {
                    due: *due,
                    run_id: run.clone(),
                    wait_id: *wait,
                });
            }
            Command::PutToken(token) => {
                batch.put_token(token);
            }
            Command::Enqueue { .. }
            | Command::Deliver { .. }
            | Command::Finished { .. }
            | Command::Interrupt { .. }
            | Command::CancelChildren { .. } => {}
        }
    }
    timers
}

impl Executor {
    /// Under the gate, has the engine decide on `input` and applies its
    /// writes with `extra` as one batch; returns the answer, the commit (if
    /// anything was written, and `awaited`: a commit no one waits for is
    /// made without one, see [`Store::commit_unawaited`]) and the timers it
    /// stored.
    fn decide(&self, input: Input, extra: Batch, awaited: bool) -> Result<Decided, StepError> {
        let store = &self.shared.store;
        let mut waited_on = take_gate(&self.shared.gate);
        let view = StoreView(store, Default::default(), &waited_on);
        let applied = kiln_engine::apply(&view, input, Timestamp::now())?;
        for command in &applied.commands {
            if let Command::PutRun(run) = command {
                crate::metrics::observe_run(view.before(&run.id), run);
            }
        }
        let mut batch = extra;
        let timers = engine_writes(&mut batch, &applied.commands);
        let encoded = batch.encoded();
        let commit = match (batch.is_empty(), awaited) {
            (true, _) => None,
            (false, true) => Some(store.commit(batch)),
            (false, false) => {
                store.commit_unawaited(batch)?;
                None
            }
        };
        if encoded {
            waited_on.decided(&applied.commands, store);
        }
        Ok((applied, commit, timers))
    }

    /// Applies `input`: the engine's writes and `extra` in one atomic
    /// commit, then, once it is durable, the effects. A refused input
    /// writes nothing, `extra` included.
    pub(crate) async fn step(&self, input: Input, extra: Batch) -> Result<Outcome, StepError> {
        self.step_then(input, extra, || {}).await
    }

    /// As [`Executor::step`], calling `handed` once the engine has decided
    /// and the input's commit, if it writes anything, is handed to the store
    /// (it becomes durable in that order with every other commit), before
    /// it is durable. Not called for a refused input.
    pub(crate) async fn step_then(
        &self,
        input: Input,
        extra: Batch,
        handed: impl FnOnce(),
    ) -> Result<Outcome, StepError> {
        self.carry_out(input, extra, handed, true).await
    }

    /// As [`Executor::step_then`], for an attempt's end: when nothing
    /// follows the commit once it is durable but telling whoever waits for
    /// the run's end (which the store's listener does), the commit is not
    /// awaited, so the slice is done, and its thread free for the next run,
    /// as soon as the commit is handed to the store. A retry to queue, a
    /// parent to wake, children to cancel or timers to set are done once it
    /// is durable, as `step_then` does. A commit that fails at once (the
    /// batch could not be encoded) fails the step either way.
    pub(crate) async fn step_ending(
        &self,
        input: Input,
        extra: Batch,
        handed: impl FnOnce(),
    ) -> Result<Outcome, StepError> {
        self.carry_out(input, extra, handed, false).await
    }

    /// [`Executor::step_then`], and with `always_await` false
    /// [`Executor::step_ending`].
    async fn carry_out(
        &self,
        input: Input,
        extra: Batch,
        handed: impl FnOnce(),
        always_await: bool,
    ) -> Result<Outcome, StepError> {
        let (applied, commit, timers) = self.decide(input, extra, true)?;
        handed();
        if let Some(commit) = commit {
            let followed = !timers.is_empty()
                || applied
                    .commands
                    .iter()
                    .any(|c| !c.is_write() && !matches!(c, Command::Finished { .. }));
            if always_await || followed {
                commit.await?;
            } else if let Some(Err(failed)) = commit.now_or_never() {
                return Err(failed.into());
            }
        }
        self.arm(timers);
        for command in &applied.commands {
            self.perform(command);
        }
        Ok(applied.outcome)
    }

    /// Applies an input whose answer has no effects and whose loss in a
    /// crash is harmless, without waiting for it to be durable: a claim (a
    /// run whose `EXECUTING` record is lost is simply claimed again). Its
    /// commit asks the committer for no group of its own: the slice's next
    /// commit, or anyone's, takes it (see [`Store::commit_unawaited`]). A
    /// commit that fails at once (the batch could not be encoded, the store
    /// is closed) is a failed step.
    pub(crate) fn step_now(&self, input: Input) -> Result<Outcome, StepError> {
        let (applied, _, timers) = self.decide(input, Batch::default(), false)?;
        debug_assert!(applied.commands.iter().all(Command::is_write) && timers.is_empty());
        Ok(applied.outcome)
    }

    /// Performs an effect (writes were committed already).
    fn perform(&self, command: &Command) {
        match command {
            Command::Enqueue {
                run,
                not_before: None,
            } => self.enqueue(run),
            Command::Enqueue {
                run,
                not_before: Some(at),
            } => self.enqueue_at(run, *at),
            Command::Deliver { run } => self.deliver_later(run.clone()),
            // Whoever waits for the run's end is told by the store's
            // listener, once the commit that wrote it is durable (see
            // `Changes::finished`), whether or not its writer awaits it.
            Command::Finished { .. } => {}
            Command::Interrupt { run } => {
                if let Some(live) = self.shared.live_run(run) {
                    live.is_canceled.store(true, Ordering::SeqCst);
                    if let Some(flag) = &*live.interrupt.lock().unwrap_or_else(|p| p.into_inner()) {
                        flag.store(true, Ordering::SeqCst);
                    }
                    live.canceled.notify_one();
                }
            }
            Command::CancelChildren { run } => self.cancel_children(run.clone()),
            _ => {}
        }
    }

    /// Hands a run to the delivery worker, which delivers its inbox.
    pub(crate) fn deliver_later(&self, run: RunId) {
        let _ = self.shared.deliveries.send(run);
    }

    /// Delivers a run's inbox now, under the run's lock (the API and the
    /// executor change run records under it too).
    pub(crate) async fn deliver(&self, run: &RunId) -> Result<(), StepError> {
        let _guard = self.shared.locks.lock(run).await;
        self.step(Input::Deliver { run: run.clone() }, Batch::default())
            .await
            .map(|_| ())
    }
}

/// The delivery worker: delivers each run's inbox it is handed, each on its
/// own task.
pub(crate) async fn deliveries(
    executor: Executor,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<RunId>,
) {
    while let Some(run) = rx.recv().await {
        let executor = executor.clone();
        tokio::spawn(async move {
            if let Err(error) = executor.deliver(&run).await {
                tracing::error!(%run, %error, "delivering a wake failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{take_gate, take_gate_within};
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// How long a test waits for the other thread before it fails.
    const DEADLINE: Duration = Duration::from_secs(30);

    #[test]
    fn steps_from_several_threads_each_take_the_gate() {
        let gate = Arc::new(Mutex::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let gate = gate.clone();
                std::thread::spawn(move || {
                    for _ in 0..2_000 {
                        *take_gate(&gate) += 1;
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(*take_gate(&gate), 8_000);
    }

    /// Takes the gate while another thread holds it until the taker says
    /// it sleeps on it; returns what the holder left in the gate.
    fn taken_after_the_spin(spin: Duration) -> u32 {
        let gate = Arc::new(Mutex::new(0u32));
        let (held_tx, held_rx) = mpsc::channel();
        let (sleeping_tx, sleeping_rx) = mpsc::channel::<()>();
        let holder = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let mut held = gate.lock().unwrap();
                held_tx.send(()).unwrap();
                // Opened only once the taker gave up spinning: a taker that
                // never sleeps on the gate leaves this to time out.
                sleeping_rx
                    .recv_timeout(DEADLINE)
                    .expect("the taker never slept on the gate");
                *held = 1;
            })
        };
        held_rx.recv_timeout(DEADLINE).unwrap();
        let taken = *take_gate_within(&gate, spin, || sleeping_tx.send(()).unwrap());
        holder.join().unwrap();
        taken
    }

    #[test]
    fn a_step_sleeps_on_a_gate_held_past_the_spin() {
        assert_eq!(taken_after_the_spin(Duration::from_micros(10)), 1);
    }

    #[test]
    fn a_step_on_one_core_sleeps_at_once() {
        assert_eq!(taken_after_the_spin(Duration::ZERO), 1);
    }

    #[test]
    fn a_step_takes_an_open_gate_without_sleeping() {
        let gate = Mutex::new(3u32);
        let taken = take_gate_within(&gate, Duration::from_micros(10), || {
            panic!("slept on an open gate")
        });
        assert_eq!(*taken, 3);
    }

    #[test]
    fn a_poisoned_gate_is_taken_all_the_same() {
        let gate = Arc::new(Mutex::new(7u32));
        let poisoner = gate.clone();
        let _ = std::thread::spawn(move || {
            let _held = poisoner.lock().unwrap();
            panic!("a step panicked under the gate");
        })
        .join();
        assert!(gate.is_poisoned());
        assert_eq!(*take_gate(&gate), 7);
    }
}
