//! Lifecycle hooks of a task, as Trigger.dev's `onStartAttempt`,
//! `onSuccess`, `onFailure`, `onComplete`, `onWait`, `onResume`,
//! `onCancel` and `catchError`.
//!
//! Hooks are plain functions set on a [`Hooks`] value and named in the task's
//! attribute:
//!
//! ```ignore
//! use kiln_sdk::{hooks::{Hooks, Retry}, task, Context, TaskError};
//!
//! const HOOKS: Hooks = Hooks::new()
//!     .on_start_attempt(|ctx| ctx.log.info("attempt", &[]))
//!     .catch_error(|_ctx, error| {
//!         if error.message.contains("invalid") { Retry::Skip } else { Retry::Default }
//!     });
//!
//! #[task(id = "sync", hooks = HOOKS)]
//! async fn sync(payload: serde_json::Value, ctx: &Context) -> Result<(), TaskError> { Ok(()) }
//! ```
//!
//! Hooks run inside the guest like the task, so their host calls are
//! journaled and replayed as the task's are. They cannot wait.

use crate::{Context, TaskError};

/// What `catch_error` decides about a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Follow the task's retry policy.
    Default,
    /// Do not retry: the run fails now (Trigger.dev's `skipRetrying`).
    Skip,
    /// Retry after this many milliseconds instead of the policy's backoff.
    AfterMs(u64),
}

/// What a task waits on, as hooks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitInfo {
    /// `wait::for_duration`, in milliseconds.
    Duration(u64),
    /// `wait::until`, in milliseconds since the Unix epoch.
    Until(u64),
    /// Something else (a child run, a token, a fetch).
    Other,
}

/// An `on_complete` hook: the output as JSON, or the error.
pub type CompleteHook = fn(&Context, Result<&str, &TaskError>);

/// The hooks of a task. Build one with [`Hooks::new`] and its setters in a
/// `const`, and name it in `#[task(hooks = ...)]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hooks {
    pub(crate) on_start_attempt: Option<fn(&Context)>,
    pub(crate) on_success: Option<fn(&Context, &str)>,
    pub(crate) on_failure: Option<fn(&Context, &TaskError)>,
    pub(crate) on_complete: Option<CompleteHook>,
    pub(crate) on_wait: Option<fn(&Context, WaitInfo)>,
    pub(crate) on_resume: Option<fn(&Context, WaitInfo)>,
    pub(crate) on_cancel: Option<fn(&Context, &str)>,
    pub(crate) catch_error: Option<fn(&Context, &TaskError) -> Retry>,
}

impl Hooks {
    /// No hooks.
    pub const fn new() -> Self {
        Hooks {
            on_start_attempt: None,
            on_success: None,
            on_failure: None,
            on_complete: None,
            on_wait: None,
            on_resume: None,
            on_cancel: None,
            catch_error: None,
        }
    }

    /// Runs at the start of every attempt, before the task.
    pub const fn on_start_attempt(mut self, hook: fn(&Context)) -> Self {
        self.on_start_attempt = Some(hook);
        self
    }

    /// Runs when the task succeeds, with its output as JSON.
    pub const fn on_success(mut self, hook: fn(&Context, &str)) -> Self {
        self.on_success = Some(hook);
        self
    }

    /// Runs when the run fails for good: no retry follows.
    pub const fn on_failure(mut self, hook: fn(&Context, &TaskError)) -> Self {
        self.on_failure = Some(hook);
        self
    }

    /// Runs when the run ends, after `on_success` or `on_failure`.
    pub const fn on_complete(mut self, hook: CompleteHook) -> Self {
        self.on_complete = Some(hook);
        self
    }

    /// Runs when the task starts to wait.
    pub const fn on_wait(mut self, hook: fn(&Context, WaitInfo)) -> Self {
        self.on_wait = Some(hook);
        self
    }

    /// Runs when a wait is over, before the task goes on.
    pub const fn on_resume(mut self, hook: fn(&Context, WaitInfo)) -> Self {
        self.on_resume = Some(hook);
        self
    }

    /// Runs when the run is canceled while its guest is at hand.
    pub const fn on_cancel(mut self, hook: fn(&Context, &str)) -> Self {
        self.on_cancel = Some(hook);
        self
    }

    /// Decides about a failed attempt: retry by the policy, skip retrying, or
    /// retry after a given delay.
    pub const fn catch_error(mut self, hook: fn(&Context, &TaskError) -> Retry) -> Self {
        self.catch_error = Some(hook);
        self
    }
}
