//! The executor inside the guest: it turns a task's `async fn` into the
//! poll-style `start` / `resume` steps of the Kiln world.
//!
//! The attempt's future lives in guest memory between calls. Each call polls
//! it until it is either ready or pending on host waits only; then the call
//! returns, so no guest frame is on the stack while the run waits and the host
//! may snapshot the guest's memory and drop the instance. Several waits may be
//! pending at once (`join!` of two waits): the host delivers their wakes one by
//! one through `resume`.

use crate::__private::TaskEntry;
use crate::bindings::kiln::task::{host, types as wit};
use crate::hooks::{Hooks, Retry, WaitInfo};
use crate::{Context, TaskError};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// The future of one attempt: the task's output as JSON, or its error.
pub type TaskFuture = Pin<Box<dyn Future<Output = Result<String, TaskError>>>>;

#[derive(Default)]
struct Waits {
    next_id: u64,
    /// Waits created since the last step, to report to the host.
    new: Vec<wit::Wait>,
    /// Waits reported to the host and not woken yet.
    pending: BTreeSet<u64>,
    /// Wakes delivered and not yet taken by their future.
    woken: BTreeMap<u64, wit::WakeValue>,
    /// What each pending wait waits on, for the hooks.
    info: BTreeMap<u64, WaitInfo>,
}

/// The attempt's context and hooks, for the hooks that run outside the task.
struct Current {
    ctx: Context,
    hooks: Option<&'static Hooks>,
}

thread_local! {
    static ATTEMPT: RefCell<Option<TaskFuture>> = const { RefCell::new(None) };
    static WAITS: RefCell<Waits> = RefCell::new(Waits::default());
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// Calls a hook with the attempt's context, if the task has that hook.
fn with_hooks(call: impl FnOnce(&Context, &Hooks)) {
    let current = CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .and_then(|c| c.hooks.map(|h| (c.ctx.clone(), h)))
    });
    if let Some((ctx, hooks)) = current {
        call(&ctx, hooks);
    }
}

/// Starts an attempt of the task named in `ctx`. Called by the bundle's
/// `start` export.
pub fn start(tasks: &[TaskEntry], ctx: wit::StartContext) -> wit::Step {
    install_panic_hook();
    reset();
    let Some(entry) = tasks.iter().find(|t| t.id == ctx.task_id) else {
        return wit::Step::Failed(
            TaskError::abort(format!("this bundle has no task `{}`", ctx.task_id)).into_wit(),
        );
    };
    let context = Context::from_wit(&ctx);
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Current {
            ctx: context.clone(),
            hooks: entry.hooks,
        })
    });
    with_hooks(|ctx, hooks| {
        if let Some(hook) = hooks.on_start_attempt {
            hook(ctx);
        }
    });
    let future = (entry.start)(&ctx.payload, context);
    ATTEMPT.with(|a| *a.borrow_mut() = Some(future));
    drive()
}

/// Delivers a wake to the attempt in progress. Called by the bundle's
/// `resume` export.
pub fn resume(wake: wit::Wake) -> wit::Step {
    let known = WAITS.with(|w| {
        let mut w = w.borrow_mut();
        if w.pending.remove(&wake.id) {
            w.woken.insert(wake.id, wake.value);
            Some(w.info.remove(&wake.id).unwrap_or(WaitInfo::Other))
        } else {
            None
        }
    });
    if let Some(info) = known {
        with_hooks(|ctx, hooks| {
            if let Some(hook) = hooks.on_resume {
                hook(ctx, info);
            }
        });
    }
    let known = known.is_some();
    if !known {
        return wit::Step::Failed(
            TaskError::new(format!(
                "the host woke wait {} which is not pending",
                wake.id
            ))
            .with_name("KilnProtocolError")
            .into_wit(),
        );
    }
    drive()
}

/// Drops the attempt in progress. Called by the bundle's `cancel` export.
pub fn cancel(reason: String) {
    host::log(wit::LogLevel::Info, &format!("run canceled: {reason}"), &[]);
    with_hooks(|ctx, hooks| {
        if let Some(hook) = hooks.on_cancel {
            hook(ctx, &reason);
        }
    });
    reset();
}

/// Grows linear memory to at least `pages` pages before the host restores a
/// snapshot into it. Called by the bundle's `snapshot-grow` export.
pub fn snapshot_grow(pages: u32) -> u32 {
    #[cfg(target_arch = "wasm32")]
    {
        let current = core::arch::wasm32::memory_size(0);
        let wanted = pages as usize;
        if wanted > current {
            core::arch::wasm32::memory_grow(0, wanted - current);
        }
        core::arch::wasm32::memory_size(0) as u32
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = pages;
        0
    }
}

fn reset() {
    ATTEMPT.with(|a| a.borrow_mut().take());
    WAITS.with(|w| *w.borrow_mut() = Waits::default());
    CURRENT.with(|c| c.borrow_mut().take());
}

/// Runs the end-of-attempt hooks: `catch_error` may turn a failure into no
/// retry or a retry at a set time; then `on_success` or, when no retry
/// follows, `on_failure`; then `on_complete` when the run ends.
fn finish_hooks(result: Result<String, TaskError>) -> Result<String, TaskError> {
    let mut result = result;
    with_hooks(|ctx, hooks| match &mut result {
        Ok(output) => {
            if let Some(hook) = hooks.on_success {
                hook(ctx, output);
            }
            if let Some(hook) = hooks.on_complete {
                hook(ctx, Ok(output));
            }
        }
        Err(error) => {
            if let Some(catch) = hooks.catch_error
                && !error.abort
            {
                match catch(ctx, error) {
                    Retry::Default => {}
                    Retry::Skip => error.abort = true,
                    Retry::AfterMs(ms) => error.retry_delay_ms = Some(ms),
                }
            }
            if error.abort || ctx.is_last_attempt() {
                if let Some(hook) = hooks.on_failure {
                    hook(ctx, error);
                }
                if let Some(hook) = hooks.on_complete {
                    hook(ctx, Err(error));
                }
            }
        }
    });
    result
}

/// Polls the attempt's future once and reports where it stands.
fn drive() -> wit::Step {
    let Some(mut future) = ATTEMPT.with(|a| a.borrow_mut().take()) else {
        return wit::Step::Failed(
            TaskError::new("no attempt is in progress")
                .with_name("KilnProtocolError")
                .into_wit(),
        );
    };
    let mut cx = std::task::Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(result) => {
            let result = finish_hooks(result);
            reset();
            match result {
                Ok(output) => wit::Step::Completed(output),
                Err(error) => wit::Step::Failed(error.into_wit()),
            }
        }
        Poll::Pending => {
            let (new, waiting) = WAITS.with(|w| {
                let mut w = w.borrow_mut();
                let new = std::mem::take(&mut w.new);
                let ids: Vec<u64> = new.iter().map(|n| n.id).collect();
                w.pending.extend(ids);
                (new, !w.pending.is_empty())
            });
            if !waiting {
                reset();
                return wit::Step::Failed(
                    TaskError::abort(
                        "the task is pending on something that is not a Kiln wait, so it can never resume",
                    )
                    .with_name("KilnDeadlock")
                    .into_wit(),
                );
            }
            ATTEMPT.with(|a| *a.borrow_mut() = Some(future));
            wit::Step::Waiting(new)
        }
    }
}

/// A future that resolves when the host wakes the wait it registered.
pub struct WaitFuture {
    id: u64,
    kind: Option<wit::WaitKind>,
}

impl WaitFuture {
    /// A wait of this kind, registered with the host the first time it is
    /// polled.
    pub fn new(kind: wit::WaitKind) -> Self {
        let id = WAITS.with(|w| {
            let mut w = w.borrow_mut();
            w.next_id += 1;
            w.next_id
        });
        WaitFuture {
            id,
            kind: Some(kind),
        }
    }
}

impl Future for WaitFuture {
    type Output = wit::WakeValue;

    fn poll(mut self: Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let id = self.id;
        if let Some(kind) = self.kind.take() {
            let info = match kind {
                wit::WaitKind::Duration(ms) => WaitInfo::Duration(ms),
                wit::WaitKind::Until(at) => WaitInfo::Until(at),
                _ => WaitInfo::Other,
            };
            with_hooks(|ctx, hooks| {
                if let Some(hook) = hooks.on_wait {
                    hook(ctx, info);
                }
            });
            WAITS.with(|w| {
                let mut w = w.borrow_mut();
                w.info.insert(id, info);
                w.new.push(wit::Wait { id, kind })
            });
            return Poll::Pending;
        }
        match WAITS.with(|w| w.borrow_mut().woken.remove(&id)) {
            Some(value) => Poll::Ready(value),
            None => Poll::Pending,
        }
    }
}

/// A shared flag so the panic hook is installed once per instance.
fn install_panic_hook() {
    thread_local! {
        static INSTALLED: Rc<RefCell<bool>> = Rc::new(RefCell::new(false));
    }
    INSTALLED.with(|installed| {
        if !*installed.borrow() {
            std::panic::set_hook(Box::new(|info| host::record_panic(&info.to_string())));
            *installed.borrow_mut() = true;
        }
    });
}
