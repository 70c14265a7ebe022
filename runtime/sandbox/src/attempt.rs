//! One attempt: a live instance and the calls that drive it.

use crate::bindings::wit::kiln::task::types::{StartContext, Step, Wake};
use crate::bundle::LoadedBundle;
use crate::host::JournalSink;
use crate::host::{HostCallStats, HostState};
use crate::limits::Limits;
use crate::snapshot::{MemoryImage, MemoryWrite};
use kiln_types::{JournalEntry, LogLine, Logs};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{ComponentNamedList, Instance, Lift, Lower, TypedFunc};
use wasmtime::{Store, UpdateDeadline};

/// Size of a WebAssembly page.
const WASM_PAGE: usize = 65_536;

/// A trap: the guest stopped without returning a step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum TrapKind {
    /// The guest went past its memory cap.
    #[error(
        "out of memory: the guest asked for {requested_mib} MiB, over its cap of {limit_mib} MiB"
    )]
    OutOfMemory {
        /// What it asked for, in MiB.
        requested_mib: u64,
        /// Its cap, in MiB.
        limit_mib: u64,
    },
    /// The run used up its `maxDuration`.
    #[error("the run exceeded its maxDuration of {0:?} of execution time")]
    TimedOut(Duration),
    /// The attempt was canceled.
    #[error("the attempt was canceled")]
    Canceled,
    /// The guest panicked.
    #[error("the task panicked: {0}")]
    Panic(String),
    /// On replay the task did something other than its journal says.
    #[error("{0}")]
    NonDeterminism(String),
    /// The run went past one of its budgets (journal entries or bytes).
    #[error("{0}")]
    LimitExceeded(String),
    /// Any other trap.
    #[error("the guest trapped: {0}")]
    Other(String),
}

/// Where a call left the attempt.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum StepOutcome {
    /// The guest returned a step.
    Step(Step),
    /// The guest trapped.
    Trap(TrapKind),
}

/// Where an attempt's logging stands before a slice runs (see
/// [`Attempt::resume_logs`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogCounts {
    /// Log calls made before the restore point.
    pub calls: u64,
    /// Log calls made before the last saved suspension.
    pub saved_calls: u64,
    /// Lines the attempt kept so far.
    pub kept_lines: usize,
    /// Bytes of those lines, as counted against the caps.
    pub kept_bytes: usize,
}

impl LogCounts {
    /// The counts of `kept` lines, with the calls made so far.
    pub fn of(calls: u64, saved_calls: u64, kept: &[LogLine]) -> Self {
        LogCounts {
            calls,
            saved_calls,
            kept_lines: kept.len(),
            kept_bytes: kept.iter().map(LogLine::size).sum(),
        }
    }
}

/// The task exports an attempt calls (see [`Attempt::export`]).
#[derive(Debug, Clone, Copy)]
enum Export {
    Describe,
    Start,
    Resume,
    Cancel,
}

/// A live instance of a bundle running one attempt.
pub struct Attempt {
    store: Store<HostState>,
    raw: Instance,
    exports: crate::bundle::Exports,
    canceled: Arc<AtomicBool>,
    /// Counts the instance alive until the attempt is dropped (after its
    /// store, so the slot is back in the pool first).
    _live: crate::engine::LiveInstance,
}

impl LoadedBundle {
    /// A fresh instance with these limits.
    pub async fn instantiate(&self, limits: Limits) -> anyhow::Result<Attempt> {
        self.instantiate_as(limits, true).await
    }

    /// A fresh instance; `run` says whether it runs a task (which marks
    /// the sandbox's pool as used, see `Sandbox::renew_if_idle`).
    pub(crate) async fn instantiate_as(
        &self,
        limits: Limits,
        run: bool,
    ) -> anyhow::Result<Attempt> {
        let live = self.sandbox.live_instance(run);
        let engine = &self.sandbox.inner.engine;
        let tick = self.sandbox.inner.config.epoch_tick;
        let mut store = Store::new(engine, HostState::new(&limits));
        store.limiter(|state| &mut state.memory);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            let state = ctx.data_mut();
            state.journal.tick();
            if state.is_canceled() {
                wasmtime::bail!("canceled");
            }
            let clock = &mut state.clock;
            if let Some(max) = clock.max_duration
                && clock.used_now() > max
            {
                clock.timed_out = true;
                wasmtime::bail!("maxDuration exceeded");
            }
            // Hold the CPU share: pause for the rest of the share's period
            // of what the guest ran since the last tick.
            if let Some(pause) = clock.share_pause(tick) {
                // The pause is not execution time: the execution deadline
                // a blocked guest's timers watch moves with it.
                if let Some(wasi) = &state.wasi {
                    wasi.deadline.extend(pause);
                }
                return Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::time::sleep(pause)),
                ));
            }
            Ok(UpdateDeadline::Yield(1))
        });
        if self.sandbox.inner.config.fuel {
            store.set_fuel(u64::MAX).map_err(anyhow::Error::from)?;
        }
        let canceled = store.data().canceled.clone();
        let raw = self
            .pre
            .instance_pre()
            .instantiate_async(&mut store)
            .await
            .map_err(anyhow::Error::from)?;
        Ok(Attempt {
            store,
            raw,
            exports: self.exports.clone(),
            canceled,
            _live: live,
        })
    }
}

impl Attempt {
    /// A flag that, once set, interrupts the attempt at the next epoch tick.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.canceled.clone()
    }

    /// Calls `describe`.
    pub(crate) async fn describe(&mut self) -> Result<String, TrapKind> {
        let describe = self.export::<(), (String,)>(Export::Describe)?;
        self.begin();
        let result = crate::cpu::Background::new(describe.call_async(&mut self.store, ())).await;
        self.end();
        result
            .map(|(manifest,)| manifest)
            .map_err(|e| self.classify(e))
    }

    /// Starts the attempt.
    pub async fn start(&mut self, ctx: &StartContext) -> StepOutcome {
        let start = match self.export::<(&StartContext,), (Step,)>(Export::Start) {
            Ok(start) => start,
            Err(trap) => return StepOutcome::Trap(trap),
        };
        self.begin();
        let result = crate::cpu::Background::new(start.call_async(&mut self.store, (ctx,))).await;
        self.end();
        self.outcome(result.map(|(step,)| step))
    }

    /// Delivers a wake.
    pub async fn resume(&mut self, wake: &Wake) -> StepOutcome {
        let resume = match self.export::<(&Wake,), (Step,)>(Export::Resume) {
            Ok(resume) => resume,
            Err(trap) => return StepOutcome::Trap(trap),
        };
        self.begin();
        let result = crate::cpu::Background::new(resume.call_async(&mut self.store, (wake,))).await;
        self.end();
        self.outcome(result.map(|(step,)| step))
    }

    /// Tells the guest its run was canceled, so its cancel hooks run.
    pub async fn cancel(&mut self, reason: &str) {
        let Ok(cancel) = self.export::<(&str,), ()>(Export::Cancel) else {
            return;
        };
        self.begin();
        let _ = crate::cpu::Background::new(cancel.call_async(&mut self.store, (reason,))).await;
        self.end();
    }

    /// One of the task exports, typed as the bindings type it. Its type is
    /// not checked again: `BundleIndices::new` checked every export's type
    /// against the bundle when it was loaded (a bundle whose exports do not
    /// fit is refused then), which is what the generated bindings' own
    /// calls rely on too. Checking it at every call would check `resume`'s
    /// wake type again for every wake a replaying guest is given.
    fn export<P, R>(&mut self, which: Export) -> Result<TypedFunc<P, R>, TrapKind>
    where
        P: ComponentNamedList + Lower,
        R: ComponentNamedList + Lift,
    {
        let index = match which {
            Export::Describe => &self.exports.describe,
            Export::Start => &self.exports.start,
            Export::Resume => &self.exports.resume,
            Export::Cancel => &self.exports.cancel,
        };
        let func = self
            .raw
            .get_func(&mut self.store, index)
            .ok_or_else(|| TrapKind::Other(format!("the bundle has no {which:?} export")))?;
        // SAFETY: each call site names the types the bindings generate for
        // `which` (`describe: () -> (String,)`, `start: (&StartContext,) ->
        // (Step,)`, `resume: (&Wake,) -> (Step,)`, `cancel: (&str,) -> ()`),
        // the types `BundleIndices::new` checked this bundle's exports
        // against when the bundle was loaded.
        Ok(unsafe { TypedFunc::new_unchecked(func) })
    }

    /// Journals live host calls into `sink` from now on.
    pub fn set_journal(&mut self, sink: Box<dyn JournalSink>) {
        self.store.data_mut().journal = sink;
    }

    /// Masks the values `redactor` holds from log lines and panic messages
    /// from now on; env-var calls add the secrets they read to it.
    pub fn set_redactor(&mut self, redactor: crate::Redactor) {
        self.store.data_mut().redactor = redactor;
    }

    /// The journal entries still to replay. Host calls at the front are
    /// answered from here; the executor takes the waits and wakes between
    /// steps.
    pub fn replay_mut(&mut self) -> &mut VecDeque<JournalEntry> {
        &mut self.store.data_mut().replay
    }

    /// Copies the guest's linear memory. Call only between steps.
    pub async fn capture(&mut self) -> Result<Vec<u8>, TrapKind> {
        let read = self
            .raw
            .get_typed_func::<(), (MemoryImage,)>(&mut self.store, &self.exports.read)
            .map_err(|e| TrapKind::Other(format!("{e:#}")))?;
        self.begin();
        let result = crate::cpu::Background::new(read.call_async(&mut self.store, ())).await;
        self.end();
        result.map(|(image,)| image.0).map_err(|e| self.classify(e))
    }

    /// Makes the guest's linear memory exactly `image` (a [`capture`] of an
    /// instance of the same bundle). Call on a fresh instance.
    ///
    /// [`capture`]: Attempt::capture
    pub async fn restore(&mut self, image: Vec<u8>) -> Result<(), TrapKind> {
        if !image.len().is_multiple_of(WASM_PAGE) {
            return Err(TrapKind::Other(format!(
                "a snapshot of {} bytes is not a whole number of pages",
                image.len()
            )));
        }
        let pages = (image.len() / WASM_PAGE) as u32;
        let grow = self
            .raw
            .get_typed_func::<(u32,), (u32,)>(&mut self.store, &self.exports.grow)
            .map_err(|e| TrapKind::Other(format!("{e:#}")))?;
        let write = self
            .raw
            .get_typed_func::<(MemoryWrite,), ()>(&mut self.store, &self.exports.write)
            .map_err(|e| TrapKind::Other(format!("{e:#}")))?;
        self.begin();
        let grown = crate::cpu::Background::new(grow.call_async(&mut self.store, (pages,))).await;
        let result = match grown {
            Ok((now,)) if now == pages => crate::cpu::Background::new(
                write.call_async(&mut self.store, (MemoryWrite(image),)),
            )
            .await
            .map_err(|e| self.classify(e)),
            Ok((now,)) => Err(TrapKind::Other(format!(
                "the snapshot has {pages} pages of memory but a fresh instance has {now}"
            ))),
            Err(e) => Err(self.classify(e)),
        };
        self.end();
        result
    }

    /// Fuel used so far (when the sandbox meters fuel; otherwise 0).
    pub fn fuel_used(&self) -> u64 {
        self.store
            .get_fuel()
            .map(|left| u64::MAX - left)
            .unwrap_or(0)
    }

    /// How many times the guest has grown its linear memory since it was
    /// instantiated (a snapshot restore's growth included).
    pub fn memory_grows(&self) -> u64 {
        self.store.data().memory.grows
    }

    /// Execution time used so far, waits excluded.
    pub fn used(&self) -> Duration {
        self.store.data().clock.used
    }

    /// Takes the log lines kept since the last call, and the count of
    /// those dropped past the attempt's caps.
    pub fn take_logs(&mut self) -> Logs {
        std::mem::take(&mut self.store.data_mut().logs.slice)
    }

    /// How many log calls the attempt has made (replayed ones included).
    pub fn log_calls(&self) -> u64 {
        self.store.data().logs.calls
    }

    /// Where the attempt's logging stands before this slice runs (see
    /// [`LogCounts`]): log calls made before the restore point and before
    /// the last saved suspension (a replay keeps none of those again), and
    /// the lines and bytes kept so far, against the caps.
    pub fn resume_logs(&mut self, counts: LogCounts) {
        let logs = &mut self.store.data_mut().logs;
        logs.calls = counts.calls;
        logs.saved_calls = counts.saved_calls;
        logs.kept_lines = counts.kept_lines;
        logs.kept_bytes = counts.kept_bytes;
    }

    /// Host calls made so far.
    pub fn stats(&self) -> HostCallStats {
        self.store.data().stats
    }

    fn begin(&mut self) {
        let state = self.store.data_mut();
        let clock = &mut state.clock;
        clock.call_started = Some(Instant::now());
        clock.paused = Duration::ZERO;
        if let Some(wasi) = &state.wasi {
            wasi.deadline.start(state.clock.execution_left());
        }
        self.store.set_epoch_deadline(1);
    }

    fn end(&mut self) {
        let state = self.store.data_mut();
        state.flush_clocks();
        state.drain_output(true);
        if let Some(wasi) = &state.wasi {
            wasi.deadline.stop();
        }
        let clock = &mut self.store.data_mut().clock;
        clock.used = clock.used_now();
        clock.call_started = None;
        clock.paused = Duration::ZERO;
    }

    fn outcome(&mut self, result: wasmtime::Result<Step>) -> StepOutcome {
        match result {
            Ok(step) => StepOutcome::Step(step),
            Err(error) => StepOutcome::Trap(self.classify(error)),
        }
    }

    /// Names a trap from what the host saw, not by parsing the error.
    fn classify(&mut self, error: wasmtime::Error) -> TrapKind {
        let state = self.store.data_mut();
        if let Some(requested) = state.memory.exceeded {
            return TrapKind::OutOfMemory {
                requested_mib: requested >> 20,
                limit_mib: state.memory.limit >> 20,
            };
        }
        if state.clock.timed_out {
            return TrapKind::TimedOut(state.clock.max_duration.unwrap_or_default());
        }
        if self.canceled.load(Ordering::Relaxed) {
            return TrapKind::Canceled;
        }
        if let Some(message) = state.nondeterminism.take() {
            return TrapKind::NonDeterminism(message);
        }
        if let Some(message) = state.limit.take() {
            return TrapKind::LimitExceeded(message);
        }
        if let Some(message) = state.panic.take() {
            return TrapKind::Panic(message);
        }
        TrapKind::Other(format!("{error:#}"))
    }
}
