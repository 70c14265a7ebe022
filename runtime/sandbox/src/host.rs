//! The host side of the world: what a guest's imports do, and the per-store
//! state that limits and observes an attempt.

use crate::bindings::wit::kiln::task::{host, types};
use crate::bindings::wit::{HostError, LogLevel};
use kiln_types::{LogLine, Timestamp};
use rand::RngCore;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::ResourceLimiter;

/// Largest `random-bytes` request.
const MAX_RANDOM_BYTES: u32 = 65_536;
/// Largest log message kept, in bytes.
const MAX_LOG_MESSAGE: usize = 16 * 1024;

/// Counts of host calls an attempt made (for tests and the journal to come).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCallStats {
    /// `now-ms` calls.
    pub clock: u32,
    /// `random-bytes` calls.
    pub random: u32,
    /// `log` calls.
    pub log: u32,
}

/// Caps linear memory and remembers when the cap was hit.
pub(crate) struct MemoryCap {
    pub(crate) limit: u64,
    pub(crate) exceeded: Option<u64>,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.limit {
            self.exceeded = Some(desired as u64);
            wasmtime::bail!(
                "out of memory: the guest asked for {} MiB of linear memory, over its cap of {} MiB",
                desired >> 20,
                self.limit >> 20
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Time accounting for an attempt: execution time excludes waits and
/// CPU-share pauses.
pub(crate) struct Clock {
    /// Execution time used before the current call.
    pub(crate) used: Duration,
    /// When the current call began.
    pub(crate) call_started: Option<Instant>,
    /// Pauses inserted during the current call to hold the CPU share.
    pub(crate) paused: Duration,
    /// The `maxDuration`.
    pub(crate) max_duration: Option<Duration>,
    /// The CPU share.
    pub(crate) cpu: f64,
    /// Set when `maxDuration` ran out.
    pub(crate) timed_out: bool,
}

impl Clock {
    /// Execution time so far, the current call included.
    pub(crate) fn used_now(&self) -> Duration {
        let current = self
            .call_started
            .map(|s| s.elapsed().saturating_sub(self.paused))
            .unwrap_or_default();
        self.used + current
    }
}

/// Everything a store holds for one attempt.
pub struct HostState {
    pub(crate) memory: MemoryCap,
    pub(crate) clock: Clock,
    pub(crate) canceled: Arc<AtomicBool>,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) panic: Option<String>,
    pub(crate) stats: HostCallStats,
}

impl HostState {
    pub(crate) fn new(limits: &crate::Limits) -> Self {
        HostState {
            memory: MemoryCap {
                limit: limits.memory_bytes,
                exceeded: None,
            },
            clock: Clock {
                used: limits.used,
                call_started: None,
                paused: Duration::ZERO,
                max_duration: limits.max_duration,
                cpu: limits.cpu,
                timed_out: false,
            },
            canceled: Arc::new(AtomicBool::new(false)),
            logs: Vec::new(),
            panic: None,
            stats: HostCallStats::default(),
        }
    }

    pub(crate) fn is_canceled(&self) -> bool {
        self.canceled.load(Ordering::Relaxed)
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

fn unsupported(what: &str) -> HostError {
    HostError::Unsupported(format!(
        "`{what}` is part of the Kiln world but this server does not support it yet"
    ))
}

impl types::Host for HostState {}

impl host::Host for HostState {
    async fn log(&mut self, level: LogLevel, message: String, fields: Vec<types::Field>) {
        self.stats.log += 1;
        if self.logs.len() >= kiln_types::Run::MAX_LOG_LINES {
            return;
        }
        self.logs.push(LogLine {
            at: Timestamp::now(),
            level: level_name(level).to_string(),
            message: truncate(message, MAX_LOG_MESSAGE),
            fields: fields
                .into_iter()
                .take(64)
                .map(|f| (truncate(f.key, 256), truncate(f.value, 4096)))
                .collect(),
        });
    }

    async fn now_ms(&mut self) -> u64 {
        self.stats.clock += 1;
        Timestamp::now().as_millis()
    }

    async fn random_bytes(&mut self, len: u32) -> Vec<u8> {
        self.stats.random += 1;
        let mut bytes = vec![0u8; len.min(MAX_RANDOM_BYTES) as usize];
        rand::rng().fill_bytes(&mut bytes);
        bytes
    }

    async fn record_panic(&mut self, message: String) {
        self.panic = Some(truncate(message, MAX_LOG_MESSAGE));
    }

    async fn trigger(
        &mut self,
        _task_id: String,
        _payload: String,
        _options: String,
    ) -> Result<String, HostError> {
        Err(unsupported("trigger"))
    }

    async fn batch_trigger(
        &mut self,
        _items: Vec<types::BatchItem>,
    ) -> Result<types::BatchHandle, HostError> {
        Err(unsupported("batch-trigger"))
    }

    async fn create_token(&mut self, _options: String) -> Result<types::TokenHandle, HostError> {
        Err(unsupported("create-token"))
    }

    async fn update_metadata(
        &mut self,
        _target: types::MetadataTarget,
        _operations: String,
    ) -> Result<String, HostError> {
        Err(unsupported("update-metadata"))
    }

    async fn add_tags(&mut self, _tags: Vec<String>) -> Result<(), HostError> {
        Err(unsupported("add-tags"))
    }
}
