//! A slice's guest, wherever it runs: an instance in this process, or one
//! on another node of the cluster ([`crate::cluster::RemoteAttempt`]). The
//! driver calls both the same way; only a remote one can be [`Lost`].

use crate::cluster::{Lost, RemoteAttempt};
use kiln_sandbox::wit::kiln::task::types::{StartContext, Wake};
use kiln_sandbox::{Attempt, JournalSink, LogCounts, Redactor, StepOutcome, TrapKind};
use kiln_types::{JournalEntry, Logs};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// A slice's guest.
pub(crate) enum Guest {
    /// In this process.
    Local(Box<Attempt>),
    /// On another node.
    Remote(Box<RemoteAttempt>),
}

impl Guest {
    /// The flag that interrupts the guest at its next epoch tick.
    pub(crate) fn cancel_flag(&self) -> Arc<AtomicBool> {
        match self {
            Guest::Local(a) => a.cancel_flag(),
            Guest::Remote(r) => r.cancel_flag(),
        }
    }

    /// Journals the guest's host calls into `sink`.
    pub(crate) fn set_journal(&mut self, sink: Box<dyn JournalSink>) {
        match self {
            Guest::Local(a) => a.set_journal(sink),
            Guest::Remote(r) => r.set_journal(sink),
        }
    }

    /// Masks what `redactor` masks.
    pub(crate) fn set_redactor(&mut self, redactor: Redactor) {
        match self {
            Guest::Local(a) => a.set_redactor(redactor),
            Guest::Remote(r) => r.set_redactor(redactor),
        }
    }

    /// The journal entries still to replay.
    pub(crate) fn replay_mut(&mut self) -> &mut VecDeque<JournalEntry> {
        match self {
            Guest::Local(a) => a.replay_mut(),
            Guest::Remote(r) => r.replay_mut(),
        }
    }

    /// Where the attempt's logging stands before the slice.
    pub(crate) fn resume_logs(&mut self, counts: LogCounts) {
        match self {
            Guest::Local(a) => a.resume_logs(counts),
            Guest::Remote(r) => r.resume_logs(counts),
        }
    }

    /// Execution time used so far.
    pub(crate) fn used(&self) -> Duration {
        match self {
            Guest::Local(a) => a.used(),
            Guest::Remote(r) => r.used(),
        }
    }

    /// Log lines kept since the last take.
    pub(crate) fn take_logs(&mut self) -> Logs {
        match self {
            Guest::Local(a) => a.take_logs(),
            Guest::Remote(r) => r.take_logs(),
        }
    }

    /// Log calls made so far.
    pub(crate) fn log_calls(&self) -> u64 {
        match self {
            Guest::Local(a) => a.log_calls(),
            Guest::Remote(r) => r.log_calls(),
        }
    }

    /// Starts the attempt.
    pub(crate) async fn start(&mut self, ctx: &StartContext) -> Result<StepOutcome, Lost> {
        match self {
            Guest::Local(a) => Ok(a.start(ctx).await),
            Guest::Remote(r) => r.start(ctx).await,
        }
    }

    /// Delivers a wake.
    pub(crate) async fn resume(&mut self, wake: &Wake) -> Result<StepOutcome, Lost> {
        match self {
            Guest::Local(a) => Ok(a.resume(wake).await),
            Guest::Remote(r) => r.resume(wake).await,
        }
    }

    /// Runs the cancel hooks.
    pub(crate) async fn cancel(&mut self, reason: &str) -> Result<(), Lost> {
        match self {
            Guest::Local(a) => {
                a.cancel(reason).await;
                Ok(())
            }
            Guest::Remote(r) => r.cancel(reason).await,
        }
    }

    /// Copies the guest's memory.
    pub(crate) async fn capture(&mut self) -> Result<Result<Vec<u8>, TrapKind>, Lost> {
        match self {
            Guest::Local(a) => Ok(a.capture().await),
            Guest::Remote(r) => r.capture().await,
        }
    }

    /// Makes the guest's memory `image`.
    pub(crate) async fn restore(&mut self, image: Vec<u8>) -> Result<Result<(), TrapKind>, Lost> {
        match self {
            Guest::Local(a) => Ok(a.restore(image).await),
            Guest::Remote(r) => r.restore(image).await,
        }
    }
}
