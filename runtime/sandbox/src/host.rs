//! The host side of the world: what a guest's imports do, and the per-store
//! state that limits and observes an attempt.

use crate::bindings::wit::kiln::task::{host, types};
use crate::bindings::wit::{HostError, LogLevel};
use crate::redact::Redactor;
use kiln_types::{HostCall, JournalEntry, LogLine, Logs, Run, RunId, Timestamp, TokenId};
use rand::RngCore;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wasmtime::ResourceLimiter;

/// Largest `random-bytes` request.
pub(crate) const MAX_RANDOM_BYTES: u32 = 65_536;
/// Largest log message kept, in bytes.
pub(crate) const MAX_LOG_MESSAGE: usize = 16 * 1024;

/// Counts of host calls an attempt made (for tests and the journal to come).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCallStats {
    /// `now-ms` calls.
    pub clock: u32,
    /// `random-bytes` calls.
    pub random: u32,
    /// `random-bytes` calls the host answered live (not from the journal).
    pub random_live: u32,
    /// `log` calls.
    pub log: u32,
}

/// A child run a guest asks for.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChildRequest {
    /// The task to run.
    pub task: String,
    /// The payload, as JSON.
    pub payload: String,
    /// Trigger options, as a JSON object (Trigger.dev's).
    pub options: String,
}

/// The child runs a spawn created.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Spawned {
    /// The batch, for a batch trigger.
    pub batch: Option<String>,
    /// The runs, in request order.
    pub runs: Vec<RunId>,
}

/// What a spawn returns.
pub type SpawnFuture = Pin<Box<dyn Future<Output = Result<Spawned, String>> + Send>>;

/// A token a run created: its id and callback URL.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<(TokenId, String), String>> + Send>>;

/// Where an attempt's live host calls are journaled. The executor writes
/// each one to the store as it happens (in order with everything else the
/// run commits).
pub trait JournalSink: Send {
    /// Journals one host call and its answer.
    fn record(&mut self, call: HostCall);

    /// Called at each epoch tick while the guest runs (every 10 ms of wall
    /// time while it computes): a sink that holds entries for its next
    /// commit lets those it has held long enough go on, so a guest that
    /// computes for long after a host call does not keep its journal's last
    /// entries back.
    fn tick(&mut self) {}

    /// `Err` naming the limit once the run's journal is past its budget:
    /// the next live host call ends the attempt instead of being made.
    fn budget(&self) -> Result<(), String> {
        Ok(())
    }

    /// Creates child runs and journals the call that made them, in one
    /// durable commit, so a replay answers the call from the journal and no
    /// child is created twice. A refusal (unknown task, invalid payload) is
    /// journaled too. `batch` makes them one batch.
    fn spawn(&mut self, children: Vec<ChildRequest>, batch: bool) -> SpawnFuture {
        let _ = (children, batch);
        Box::pin(std::future::ready(Err(
            "child runs are not available here".to_string()
        )))
    }

    /// Creates a wait token (options as Trigger.dev's `wait.createToken`)
    /// and journals the call with its id, in one durable commit.
    fn create_token(&mut self, options: String) -> TokenFuture {
        let _ = options;
        Box::pin(std::future::ready(Err(
            "wait tokens are not available here".to_string(),
        )))
    }

    /// Applies metadata operations (JSON) to the run named by `target`
    /// (`current`, `parent`, `root`) and journals the call with the result,
    /// in one durable commit. Resolves to the metadata afterwards (JSON).
    fn update_metadata(&mut self, target: &'static str, operations: String) -> HostFuture<String> {
        let _ = (target, operations);
        Box::pin(std::future::ready(Err(
            "metadata is not available here".to_string()
        )))
    }

    /// Adds tags to the current run and journals the call, in one durable
    /// commit.
    fn add_tags(&mut self, tags: Vec<String>) -> HostFuture<()> {
        let _ = tags;
        Box::pin(std::future::ready(Err(
            "tags are not available here".to_string()
        )))
    }

    /// Appends a chunk (JSON) to the current run's realtime stream `key` and
    /// journals the call with the chunk's number, in one durable commit.
    fn stream_append(&mut self, key: String, chunk: String) -> HostFuture<u64> {
        let _ = (key, chunk);
        Box::pin(std::future::ready(Err(
            "realtime streams are not available here".to_string(),
        )))
    }

    /// Reads the environment variable `name` of the run's environment and
    /// journals the call with the value sealed (never in plain text).
    /// Resolves to the value, if set, and whether it is a secret.
    fn env_var(&mut self, name: String) -> HostFuture<Option<(String, bool)>> {
        let _ = name;
        Box::pin(std::future::ready(Err(
            "environment variables are not available here".to_string(),
        )))
    }

    /// Opens a value an `env-var` call journaled (sealed), for a replay.
    fn open_env_var(&self, name: &str, sealed: &str) -> Result<String, String> {
        let _ = (name, sealed);
        Err("environment variables are not available here".to_string())
    }
}

/// A host call the server answers asynchronously: the answer or why not.
pub type HostFuture<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send>>;

/// A sink that forgets everything (for `describe` and tests).
pub(crate) struct NoJournal;

impl JournalSink for NoJournal {
    fn record(&mut self, _call: HostCall) {}
}

/// The linear memory every live instance of this process holds, in bytes
/// (see [`guest_memory_bytes`]).
static GUEST_MEMORY: AtomicU64 = AtomicU64::new(0);

/// The linear memory all live guest instances hold now, in bytes: what
/// they were given at instantiation plus what they grew since, until each
/// instance is dropped.
pub fn guest_memory_bytes() -> u64 {
    GUEST_MEMORY.load(Ordering::Relaxed)
}

/// Caps linear memory and remembers when the cap was hit.
pub(crate) struct MemoryCap {
    pub(crate) limit: u64,
    pub(crate) exceeded: Option<u64>,
    /// The linear memory this instance holds (counted in [`GUEST_MEMORY`]).
    pub(crate) held: u64,
    /// How many times the guest grew a memory it already had (what it was
    /// given at instantiation not counted).
    pub(crate) grows: u64,
}

impl Drop for MemoryCap {
    fn drop(&mut self) {
        GUEST_MEMORY.fetch_sub(self.held, Ordering::Relaxed);
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
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
        let grown = desired.saturating_sub(current) as u64;
        self.held += grown;
        if current > 0 {
            self.grows += 1;
        }
        GUEST_MEMORY.fetch_add(grown, Ordering::Relaxed);
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
    /// Execution time already charged to the CPU share.
    pub(crate) charged: Duration,
    /// Pause the CPU share is owed and not yet taken: less than
    /// [`MIN_PAUSE`] is carried to the next tick rather than slept.
    pub(crate) owed: Duration,
}

/// The shortest pause worth a sleep (tokio's timers count whole
/// milliseconds, so a shorter sleep would last a millisecond anyway).
pub(crate) const MIN_PAUSE: Duration = Duration::from_millis(1);

impl Clock {
    /// Execution time so far, the current call included.
    pub(crate) fn used_now(&self) -> Duration {
        let current = self
            .call_started
            .map(|s| s.elapsed().saturating_sub(self.paused))
            .unwrap_or_default();
        self.used + current
    }

    /// Execution time left before `maxDuration` (`None`: no limit).
    pub(crate) fn execution_left(&self) -> Option<Duration> {
        self.max_duration
            .map(|max| max.saturating_sub(self.used_now()))
    }

    /// At an epoch tick: the pause that holds the CPU share for the
    /// execution time since the last tick, once it is worth a sleep.
    ///
    /// Each tick charges what the guest ran since the one before, at most
    /// two `tick`s: a short guest that happens to straddle a tick owes a
    /// fraction of a millisecond (carried, not slept), while a guest that
    /// ran the whole tick pauses `tick × (1/cpu − 1)` as it always did (and
    /// a little more when the tick came late). Execution time counts a host
    /// call's wait too (a trigger's commit), so a long wait is charged as
    /// two ticks, never more.
    pub(crate) fn share_pause(&mut self, tick: Duration) -> Option<Duration> {
        if !(self.cpu > 0.0 && self.cpu < 1.0) {
            return None;
        }
        let used = self.used_now();
        let ran = used.saturating_sub(self.charged).min(tick * 2);
        self.charged = used;
        self.owed += ran.mul_f64(1.0 / self.cpu - 1.0);
        if self.owed < MIN_PAUSE {
            return None;
        }
        let pause = std::mem::take(&mut self.owed);
        self.paused += pause;
        Some(pause)
    }
}

/// The log lines of a slice, kept apart from the journal: a log call is
/// not journaled (it is no input to the task), only counted, so a replay
/// that makes it again is recognised by its number.
#[derive(Debug, Default)]
pub(crate) struct LogBuffer {
    /// Lines kept since the last take, and lines dropped past the caps.
    pub(crate) slice: Logs,
    /// Log calls the attempt has made, replayed ones included.
    pub(crate) calls: u64,
    /// Calls up to this number were kept already (saved with an earlier
    /// suspension): a replay that makes them again keeps nothing.
    pub(crate) saved_calls: u64,
    /// Lines and bytes the attempt keeps so far.
    pub(crate) kept_lines: usize,
    pub(crate) kept_bytes: usize,
}

impl LogBuffer {
    /// Keeps a line unless a replay made it again or the attempt is past
    /// its caps (the first [`Run::MAX_LOG_LINES`] lines, up to
    /// [`Run::MAX_LOG_BYTES`], are kept; later ones are counted).
    pub(crate) fn push(&mut self, line: LogLine) {
        self.calls += 1;
        if self.calls <= self.saved_calls {
            return;
        }
        let size = line.size();
        if self.kept_lines >= Run::MAX_LOG_LINES || self.kept_bytes + size > Run::MAX_LOG_BYTES {
            self.slice.dropped += 1;
            return;
        }
        self.kept_lines += 1;
        self.kept_bytes += size;
        self.slice.lines.push(line);
    }
}

/// Everything a store holds for one attempt.
pub struct HostState {
    pub(crate) memory: MemoryCap,
    pub(crate) clock: Clock,
    pub(crate) canceled: Arc<AtomicBool>,
    pub(crate) logs: LogBuffer,
    pub(crate) panic: Option<String>,
    pub(crate) stats: HostCallStats,
    /// Journal entries still to replay: host calls are answered from the
    /// front while it holds a host call.
    pub(crate) replay: VecDeque<JournalEntry>,
    /// Where live calls are journaled.
    pub(crate) journal: Box<dyn JournalSink>,
    /// Set when a call did not match the journal.
    pub(crate) nondeterminism: Option<String>,
    /// Set when a live call found the run past a budget.
    pub(crate) limit: Option<String>,
    /// The secret values masked from log lines and panic messages.
    pub(crate) redactor: Redactor,
    /// WASI's state, for a guest that imports WASI (made at its first
    /// WASI call).
    pub(crate) wasi: Option<Box<crate::wasi::WasiState>>,
    /// WASI clock reads not journaled yet (see `flush_clocks`).
    pub(crate) pending_clocks: Vec<(bool, u64)>,
    /// Reads of the `clocks` entry at the front of `replay` already
    /// answered.
    pub(crate) clocks_replayed: usize,
}

impl HostState {
    pub(crate) fn new(limits: &crate::Limits) -> Self {
        HostState {
            memory: MemoryCap {
                limit: limits.memory_bytes,
                exceeded: None,
                held: 0,
                grows: 0,
            },
            clock: Clock {
                used: limits.used,
                call_started: None,
                paused: Duration::ZERO,
                max_duration: limits.max_duration,
                cpu: limits.cpu,
                timed_out: false,
                charged: limits.used,
                owed: Duration::ZERO,
            },
            canceled: Arc::new(AtomicBool::new(false)),
            logs: LogBuffer::default(),
            panic: None,
            stats: HostCallStats::default(),
            replay: VecDeque::new(),
            journal: Box::new(NoJournal),
            nondeterminism: None,
            limit: None,
            redactor: Redactor::default(),
            wasi: None,
            pending_clocks: Vec::new(),
            clocks_replayed: 0,
        }
    }

    /// The journaled answer to a call while replaying, `None` once live. A
    /// call that does not fit the next entry is a non-determinism error,
    /// which traps.
    /// `what` describes the call, and is only made for the error.
    pub(crate) fn replayed(
        &mut self,
        what: impl FnOnce() -> String,
        fits: impl Fn(&HostCall) -> bool,
    ) -> wasmtime::Result<Option<HostCall>> {
        match self.replay.front() {
            None => match self.journal.budget() {
                Ok(()) => {
                    // Clock reads made before this call are journaled
                    // before it.
                    self.flush_clocks();
                    Ok(None)
                }
                Err(message) => {
                    self.limit = Some(message.clone());
                    wasmtime::bail!(message)
                }
            },
            Some(JournalEntry::HostCall(call)) if fits(call) => {
                let call = call.clone();
                self.replay.pop_front();
                Ok(Some(call))
            }
            Some(other) => {
                let message = format!(
                    "non-determinism: on replay the task called `{}` where its journal has {}",
                    what(),
                    other.describe()
                );
                self.nondeterminism = Some(message.clone());
                wasmtime::bail!(message)
            }
        }
    }

    pub(crate) fn push_log(&mut self, level: &str, message: String, fields: Vec<(String, String)>) {
        self.logs.push(LogLine {
            at: Timestamp::now(),
            level: level.to_string(),
            message,
            fields,
        });
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

pub(crate) fn truncate(mut text: String, max: usize) -> String {
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

impl types::Host for HostState {}

impl host::Host for HostState {
    async fn log(
        &mut self,
        level: LogLevel,
        message: String,
        fields: Vec<types::Field>,
    ) -> wasmtime::Result<()> {
        self.stats.log += 1;
        // What the guest printed before this call comes first.
        self.drain_output(false);
        let level = level_name(level);
        // Masked before it is cut, so no part of a secret survives a cut.
        let redactor = &self.redactor;
        let message = truncate(redactor.redact_owned(message), MAX_LOG_MESSAGE);
        let fields = fields
            .into_iter()
            .take(64)
            .map(|f| {
                (
                    truncate(redactor.redact_owned(f.key), 256),
                    truncate(redactor.redact_owned(f.value), 4096),
                )
            })
            .collect();
        self.push_log(level, message, fields);
        Ok(())
    }

    async fn now_ms(&mut self) -> wasmtime::Result<u64> {
        self.stats.clock += 1;
        if let Some(HostCall::NowMs { result }) = self.replayed(
            || "now-ms()".into(),
            |c| matches!(c, HostCall::NowMs { .. }),
        )? {
            return Ok(result);
        }
        let result = Timestamp::now().as_millis();
        self.journal.record(HostCall::NowMs { result });
        Ok(result)
    }

    async fn random_bytes(&mut self, len: u32) -> wasmtime::Result<Vec<u8>> {
        self.stats.random += 1;
        self.random(len.min(MAX_RANDOM_BYTES), "random-bytes")
    }

    async fn record_panic(&mut self, message: String) -> wasmtime::Result<()> {
        self.panic = Some(truncate(
            self.redactor.redact_owned(message),
            MAX_LOG_MESSAGE,
        ));
        Ok(())
    }

    async fn trigger(
        &mut self,
        task_id: String,
        payload: String,
        options: String,
    ) -> wasmtime::Result<Result<String, HostError>> {
        let fits = |c: &HostCall| matches!(c, HostCall::Trigger { task, .. } if *task == task_id);
        if let Some(HostCall::Trigger { result, error, .. }) =
            self.replayed(|| format!("trigger({task_id})"), fits)?
        {
            return Ok(match (result, error) {
                (Some(run), _) => Ok(run.to_string()),
                (None, error) => Err(HostError::Invalid(error.unwrap_or_default())),
            });
        }
        let request = ChildRequest {
            task: task_id,
            payload,
            options,
        };
        Ok(match self.journal.spawn(vec![request], false).await {
            Ok(spawned) => match spawned.runs.into_iter().next() {
                Some(run) => Ok(run.to_string()),
                None => Err(HostError::Internal("no run was created".into())),
            },
            Err(error) => Err(HostError::Invalid(error)),
        })
    }

    async fn batch_trigger(
        &mut self,
        items: Vec<types::BatchItem>,
    ) -> wasmtime::Result<Result<types::BatchHandle, HostError>> {
        let count = items.len() as u32;
        let fits =
            |c: &HostCall| matches!(c, HostCall::BatchTrigger { items, .. } if *items == count);
        if let Some(HostCall::BatchTrigger {
            batch, runs, error, ..
        }) = self.replayed(|| format!("batch-trigger({count} items)"), fits)?
        {
            return Ok(match batch {
                Some(batch_id) => Ok(types::BatchHandle {
                    batch_id,
                    run_ids: runs.iter().map(|r| r.to_string()).collect(),
                }),
                None => Err(HostError::Invalid(error.unwrap_or_default())),
            });
        }
        let requests = items
            .into_iter()
            .map(|i| ChildRequest {
                task: i.task_id,
                payload: i.payload,
                options: i.options,
            })
            .collect();
        Ok(match self.journal.spawn(requests, true).await {
            Ok(spawned) => Ok(types::BatchHandle {
                batch_id: spawned.batch.unwrap_or_default(),
                run_ids: spawned.runs.iter().map(|r| r.to_string()).collect(),
            }),
            Err(error) => Err(HostError::Invalid(error)),
        })
    }

    async fn create_token(
        &mut self,
        options: String,
    ) -> wasmtime::Result<Result<types::TokenHandle, HostError>> {
        let fits = |c: &HostCall| matches!(c, HostCall::CreateToken { .. });
        if let Some(HostCall::CreateToken { result, url, error }) =
            self.replayed(|| "create-token()".into(), fits)?
        {
            return Ok(match result {
                Some(id) => Ok(types::TokenHandle {
                    id: id.to_string(),
                    url: url.unwrap_or_default(),
                }),
                None => Err(HostError::Invalid(error.unwrap_or_default())),
            });
        }
        Ok(match self.journal.create_token(options).await {
            Ok((id, url)) => Ok(types::TokenHandle {
                id: id.to_string(),
                url,
            }),
            Err(error) => Err(HostError::Invalid(error)),
        })
    }

    async fn update_metadata(
        &mut self,
        target: types::MetadataTarget,
        operations: String,
    ) -> wasmtime::Result<Result<String, HostError>> {
        let target = match target {
            types::MetadataTarget::Current => "current",
            types::MetadataTarget::Parent => "parent",
            types::MetadataTarget::Root => "root",
        };
        let fits =
            |c: &HostCall| matches!(c, HostCall::UpdateMetadata { target: t, .. } if t == target);
        if let Some(HostCall::UpdateMetadata { result, error, .. }) =
            self.replayed(|| format!("update-metadata({target})"), fits)?
        {
            return Ok(result.ok_or_else(|| HostError::Invalid(error.unwrap_or_default())));
        }
        Ok(self
            .journal
            .update_metadata(target, operations)
            .await
            .map_err(HostError::Invalid))
    }

    async fn add_tags(&mut self, tags: Vec<String>) -> wasmtime::Result<Result<(), HostError>> {
        let fits = |c: &HostCall| matches!(c, HostCall::AddTags { tags: t, .. } if *t == tags);
        if let Some(HostCall::AddTags { error, .. }) =
            self.replayed(|| format!("add-tags({})", tags.join(", ")), fits)?
        {
            return Ok(match error {
                Some(error) => Err(HostError::Invalid(error)),
                None => Ok(()),
            });
        }
        Ok(self
            .journal
            .add_tags(tags)
            .await
            .map_err(HostError::Invalid))
    }

    async fn stream_append(
        &mut self,
        key: String,
        chunk: String,
    ) -> wasmtime::Result<Result<u64, HostError>> {
        let fits = |c: &HostCall| matches!(c, HostCall::StreamAppend { key: k, .. } if *k == key);
        if let Some(HostCall::StreamAppend { index, error, .. }) =
            self.replayed(|| format!("stream-append({key})"), fits)?
        {
            return Ok(index.ok_or_else(|| HostError::Invalid(error.unwrap_or_default())));
        }
        Ok(self
            .journal
            .stream_append(key, chunk)
            .await
            .map_err(HostError::Invalid))
    }

    async fn env_var(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Option<String>, HostError>> {
        self.read_env_var(name).await
    }
}

impl HostState {
    /// `len` random bytes (`name` is the call, for a replay's error): from
    /// the journal while replaying, else drawn from the CSPRNG and
    /// journaled.
    pub(crate) fn random(&mut self, len: u32, name: &str) -> wasmtime::Result<Vec<u8>> {
        let fits = |c: &HostCall| matches!(c, HostCall::RandomBytes { len: l, .. } if *l == len);
        if let Some(HostCall::RandomBytes { result, .. }) =
            self.replayed(|| format!("{name}({len})"), fits)?
        {
            return hex::decode(&result)
                .map_err(|e| wasmtime::format_err!("the journal's random bytes are not hex: {e}"));
        }
        self.stats.random_live += 1;
        let mut bytes = vec![0u8; len as usize];
        rand::rng().fill_bytes(&mut bytes);
        self.journal.record(HostCall::RandomBytes {
            len,
            result: hex::encode(&bytes),
        });
        Ok(bytes)
    }

    /// `env-var(name)`: answered from the journal while replaying (the
    /// value the call first read, opened again), else read live.
    async fn read_env_var(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Option<String>, HostError>> {
        let fits = |c: &HostCall| matches!(c, HostCall::EnvVar { name: n, .. } if *n == name);
        if let Some(HostCall::EnvVar {
            sealed,
            secret,
            error,
            ..
        }) = self.replayed(|| format!("env-var({name})"), fits)?
        {
            if let Some(error) = error {
                return Ok(Err(HostError::Internal(error)));
            }
            let Some(sealed) = sealed else {
                return Ok(Ok(None));
            };
            return Ok(match self.journal.open_env_var(&name, &sealed) {
                Ok(value) => {
                    if secret {
                        self.redactor.add(&value);
                    }
                    Ok(Some(value))
                }
                Err(error) => Err(HostError::Internal(error)),
            });
        }
        Ok(match self.journal.env_var(name).await {
            Ok(Some((value, secret))) => {
                if secret {
                    self.redactor.add(&value);
                }
                Ok(Some(value))
            }
            Ok(None) => Ok(None),
            Err(error) => Err(HostError::Internal(error)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Clock, LogBuffer, MemoryCap};
    use kiln_types::{LogLine, Run, Timestamp};
    use std::time::{Duration, Instant};
    use wasmtime::ResourceLimiter;

    fn line(n: usize, bytes: usize) -> LogLine {
        LogLine {
            at: Timestamp(n as u64),
            level: "info".into(),
            message: "x".repeat(bytes),
            fields: vec![("n".into(), n.to_string())],
        }
    }

    #[test]
    fn a_replay_keeps_no_line_saved_before_and_the_caps_count_the_rest() {
        // Resumed by a full replay after a suspension that saved 3 lines:
        // the first 3 calls are the saved lines made again.
        let mut logs = LogBuffer {
            saved_calls: 3,
            kept_lines: 3,
            kept_bytes: 30,
            ..LogBuffer::default()
        };
        for n in 0..5 {
            logs.push(line(n, 9));
        }
        let kept: Vec<_> = logs
            .slice
            .lines
            .iter()
            .map(|l| l.fields[0].1.clone())
            .collect();
        assert_eq!(kept, vec!["3", "4"], "only the lines after the saved ones");
        assert_eq!(logs.calls, 5);

        // Past the byte cap, lines are counted, not kept.
        let mut logs = LogBuffer::default();
        let per_line = line(0, 1000).size();
        let fit = Run::MAX_LOG_BYTES / per_line;
        for n in 0..fit + 10 {
            logs.push(line(n, 1000));
        }
        assert_eq!(logs.slice.lines.len(), fit);
        assert_eq!(logs.slice.dropped, 10);

        // Past the line cap too.
        let mut logs = LogBuffer::default();
        for n in 0..Run::MAX_LOG_LINES + 5 {
            logs.push(line(n, 1));
        }
        assert_eq!(logs.slice.lines.len(), Run::MAX_LOG_LINES);
        assert_eq!(logs.slice.dropped, 5);
    }

    /// The epoch tick the sandbox runs with by default.
    const TICK: Duration = Duration::from_millis(10);

    /// A clock at a CPU share whose current call just began.
    fn clock(cpu: f64) -> Clock {
        Clock {
            used: Duration::ZERO,
            call_started: Some(Instant::now()),
            paused: Duration::ZERO,
            max_duration: None,
            cpu,
            timed_out: false,
            charged: Duration::ZERO,
            owed: Duration::ZERO,
        }
    }

    /// Moves the current call's start back by `by`, as if it ran that long.
    fn run_for(clock: &mut Clock, by: Duration) {
        clock.call_started = clock.call_started.and_then(|s| s.checked_sub(by));
    }

    #[test]
    fn a_guest_that_ran_a_whole_tick_pauses_for_the_rest_of_its_share() {
        let mut c = clock(0.5);
        run_for(&mut c, TICK);
        let pause = c.share_pause(TICK).expect("a pause");
        assert!(pause >= Duration::from_millis(9), "{pause:?}");
        assert!(pause < TICK + Duration::from_millis(1), "{pause:?}");
        // The pause is not execution time: after sleeping it, the guest has
        // run about one tick, not two.
        std::thread::sleep(pause);
        assert!(
            c.used_now() < Duration::from_millis(15),
            "{:?}",
            c.used_now()
        );
        let mut quarter = clock(0.25);
        run_for(&mut quarter, TICK);
        let pause = quarter.share_pause(TICK).expect("a pause");
        assert!(pause >= Duration::from_millis(27), "{pause:?}");
        assert!(pause < TICK * 3 + Duration::from_millis(3), "{pause:?}");
    }

    #[test]
    fn a_short_guest_that_straddles_a_tick_is_not_paused_a_whole_tick() {
        let mut c = clock(0.5);
        run_for(&mut c, Duration::from_micros(300));
        assert_eq!(
            c.share_pause(TICK),
            None,
            "0.3 ms owed is carried, not slept"
        );
        // What it owes adds up, and is paid once it is worth a sleep.
        run_for(&mut c, Duration::from_micros(800));
        let pause = c.share_pause(TICK).expect("1.1 ms owed in all");
        assert!(pause >= Duration::from_micros(1_100), "{pause:?}");
        assert!(pause < Duration::from_millis(2), "{pause:?}");
        assert_eq!(c.owed, Duration::ZERO);
    }

    #[test]
    fn a_whole_core_or_more_is_never_paused() {
        for cpu in [1.0, 2.0] {
            let mut c = clock(cpu);
            run_for(&mut c, Duration::from_millis(50));
            assert_eq!(c.share_pause(TICK), None);
        }
    }

    #[test]
    fn a_long_wait_in_a_host_call_is_charged_as_two_ticks_at_most() {
        let mut c = clock(0.25);
        // 200 ms inside one call, most of it waiting for a commit.
        run_for(&mut c, Duration::from_millis(200));
        let pause = c.share_pause(TICK).expect("a pause");
        assert!(pause <= TICK * 2 * 3, "{pause:?}");
    }

    #[test]
    fn time_used_in_earlier_steps_is_not_charged_again() {
        let limits = crate::Limits {
            memory_bytes: 64 << 20,
            cpu: 0.5,
            max_duration: None,
            used: Duration::from_secs(5),
        };
        let mut c = super::HostState::new(&limits).clock;
        c.call_started = Some(Instant::now());
        run_for(&mut c, Duration::from_micros(500));
        assert_eq!(c.share_pause(TICK), None, "only 0.5 ms ran in this step");
    }

    #[test]
    fn an_instance_holds_what_it_grew_until_it_is_dropped() {
        let mut cap = MemoryCap {
            limit: 1 << 20,
            exceeded: None,
            held: 0,
            grows: 0,
        };
        assert!(cap.memory_growing(0, 65_536, None).unwrap());
        assert!(cap.memory_growing(65_536, 196_608, None).unwrap());
        assert_eq!(cap.held, 196_608);
        // Instantiation is not a growth; the second call is.
        assert_eq!(cap.grows, 1);
        // A growth past the cap is refused and not counted.
        assert!(cap.memory_growing(196_608, 2 << 20, None).is_err());
        assert_eq!(cap.held, 196_608);
        assert_eq!(cap.exceeded, Some(2 << 20));
        // Other tests' instances count too: the gauge holds at least this
        // one's memory while it lives.
        assert!(super::guest_memory_bytes() >= 196_608);
    }
}
