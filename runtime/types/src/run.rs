//! The run record: everything the server keeps about one run.

use crate::{DeploymentId, RunId, RunSchedule, RunStatus, Timestamp};
use kiln_manifest::Machine;
use serde::{Deserialize, Serialize};

/// A run's error, in Trigger.dev's shape (`{message, name?, stackTrace?}`).
///
/// Stored in a run's record by field number (see `kiln_store`'s
/// `numbered`): a new field goes after the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunError {
    /// The error's kind (`Error`, `OutOfMemory`, `Panic`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What went wrong.
    pub message: String,
    /// A stack trace or chain of causes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_trace: Option<String>,
}

impl RunError {
    /// An error with a kind and a message.
    pub fn new(name: &str, message: impl Into<String>) -> Self {
        RunError {
            name: Some(name.to_string()),
            message: message.into(),
            stack_trace: None,
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AttemptOutcome {
    /// The task returned its output.
    Succeeded,
    /// The task returned an error or panicked.
    Failed,
    /// The guest went past its memory cap.
    Crashed,
    /// The run went past its `maxDuration`.
    TimedOut,
    /// The run was canceled during the attempt.
    Canceled,
    /// The server stopped during the attempt; the run was queued again.
    Interrupted,
    /// Kiln failed the attempt.
    SystemFailure,
}

/// One log line written by a task.
///
/// Stored in a run's record by field number (see `kiln_store`'s
/// `numbered`): a new field goes after the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When it was written.
    pub at: Timestamp,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// The message.
    pub message: String,
    /// Structured fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<(String, String)>,
}

/// One attempt of a run.
///
/// Stored in a run's record by field number (see `kiln_store`'s
/// `numbered`): a new field goes after the last one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// The attempt number, from 1.
    pub number: u32,
    /// The machine it ran on.
    pub machine: Machine,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// How it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<AttemptOutcome>,
    /// Its error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    /// Execution time in milliseconds.
    #[serde(default)]
    pub usage_ms: u64,
    /// The task's log lines: the first [`Run::MAX_LOG_LINES`], up to
    /// [`Run::MAX_LOG_BYTES`] of messages and fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogLine>,
    /// How many lines the attempt logged past those caps, not kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub logs_dropped: u64,
    /// Whether the attempt has suspended at least once. Waits are armed
    /// only when a run suspends, arrivals reach only armed waits, and every
    /// attempt's end drops what it armed in the same commit, so an attempt
    /// that never suspended has nothing to disarm when it ends (the engine's
    /// simulation checks this at every such end). Records written before
    /// Kiln kept this read back as `true`.
    #[serde(default = "unknown_is_suspended", skip_serializing_if = "is_true")]
    pub suspended: bool,
}

impl Attempt {
    /// Attempt `number`, starting now on `machine`: not ended, no logs.
    pub fn started(number: u32, machine: Machine, started_at: Timestamp) -> Self {
        Attempt {
            number,
            machine,
            started_at,
            finished_at: None,
            outcome: None,
            error: None,
            usage_ms: 0,
            logs: Vec::new(),
            logs_dropped: 0,
            suspended: false,
        }
    }
}

/// Log lines a slice of an attempt wrote, and how many it dropped past the
/// attempt's caps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logs {
    /// The lines kept.
    pub lines: Vec<LogLine>,
    /// The lines dropped.
    pub dropped: u64,
}

impl LogLine {
    /// Its size as counted against [`Run::MAX_LOG_BYTES`].
    pub fn size(&self) -> usize {
        self.message.len()
            + self
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// Where a child run sits in its tree of runs.
///
/// Stored in a run's record by field number (see `kiln_store`'s
/// `numbered`): a new field goes after the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRun {
    /// The run that triggered it.
    pub parent: RunId,
    /// The root of the tree.
    pub root: RunId,
    /// Its depth: 1 for a child of a root run.
    pub depth: u32,
    /// How it was triggered (`trigger`, `triggerAndWait`, `batchTrigger`...).
    pub trigger_function: String,
}

/// Everything the server keeps about a run.
///
/// Stored in a run's record by field number (see `kiln_store`'s
/// `numbered`): a new field goes after the last one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    /// The run's id.
    pub id: RunId,
    /// The task it runs.
    pub task_id: String,
    /// Where it stands.
    pub status: RunStatus,
    /// The deployment it is pinned to.
    pub deployment_id: DeploymentId,
    /// That deployment's version.
    pub version: String,
    /// The payload as the client sent it (a JSON document, or text).
    pub payload: String,
    /// The payload's type (`application/json`, `text/plain`...).
    pub payload_type: String,
    /// Set when the payload is too large to keep in the run's record: its
    /// length in bytes. The store then keeps it apart and `payload` is empty
    /// in the record (read it through the store's `payload_of`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_blob: Option<u64>,
    /// The output as JSON, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// As `payload_blob`, for the output (read it through `output_of`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_blob: Option<u64>,
    /// The error of the last attempt, once failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Metadata, a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// The machine preset attempts run on.
    pub machine: Machine,
    /// Attempts in all, the first included (the task's policy, or the
    /// trigger's `maxAttempts`).
    pub max_attempts: u32,
    /// The backoff between attempts.
    #[serde(default)]
    pub retry: kiln_manifest::RetryPolicy,
    /// The most execution time in seconds, waits excluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_secs: Option<u64>,
    /// The attempts so far.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// When the next attempt may start (a retry's backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Timestamp>,
    /// The user's idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Whether this is a test run.
    #[serde(default)]
    pub is_test: bool,
    /// The schedule that fired the run, for runs of scheduled tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<RunSchedule>,
    /// The run that triggered this one, for child runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRun>,
    /// The batch it was triggered in: a task's batch trigger, or a
    /// backend's v3 batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// Until when a `DELAYED` run waits before it is queued (its `delay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delayed_until: Option<Timestamp>,
    /// The run's `ttl`: how long it may stay queued before it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<RunTtl>,
    /// When a run that has not started expires (its ttl counted from when it
    /// was queued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// When it expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<Timestamp>,
    /// The debounce that holds this run while it is `DELAYED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce: Option<RunDebounce>,
    /// The queue it runs on; empty means its task's own queue
    /// (`task/<task id>`), see [`Run::queue_name`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub queue: String,
    /// Its lane in the queue (Trigger.dev's `concurrencyKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    /// Its head start in the queue, in milliseconds (`priority` seconds).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority_ms: u64,
    /// When it was triggered.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// When its first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it reached a final status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// The distributed trace it continues (a trigger's `traceparent`, or
    /// its parent run's); `None`: its span starts a trace of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::TraceContext>,
    /// Its journal's last entries as the store keeps them (one entry or a
    /// run of them, in JSON), when they were written with this record
    /// rather than under a key of their own: the store does that for the
    /// commit that finishes a run, so a short run writes one key fewer.
    /// Read a run's journal through the store, which joins them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<String>,
}

/// A run's time to live, as given and in milliseconds.
///
/// Stored in a run's record by field number (see `kiln_store`'s
/// `numbered`): a new field goes after the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTtl {
    /// As the trigger gave it (`"10m"`, or seconds as `"600"`).
    pub text: String,
    /// In milliseconds.
    pub ms: u64,
}

/// Leading: the first trigger's payload runs; trailing: the last one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DebounceMode {
    /// The first trigger's payload and options run (Trigger.dev's default).
    Leading,
    /// Each trigger in the window replaces the payload; the last one runs.
    Trailing,
}

/// The debounce window a `DELAYED` run belongs to.
///
/// Stored in a run's record by field number (see `kiln_store`'s
/// `numbered`): a new field goes after the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunDebounce {
    /// The key, scoped to the run's task.
    pub key: String,
    /// Which trigger's payload runs.
    pub mode: DebounceMode,
    /// How long after the latest trigger the run starts.
    pub delay_ms: u64,
    /// The latest start, counted from the first trigger (`maxDelay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
}

impl RunDebounce {
    /// When the window's run starts if its latest trigger came at `now`:
    /// `delay_ms` later, but no later than the deadline.
    pub fn due(&self, now: Timestamp) -> Timestamp {
        let due = Timestamp(now.as_millis().saturating_add(self.delay_ms));
        match self.deadline {
            Some(deadline) => due.min(deadline),
            None => due,
        }
    }
}

impl Run {
    /// Log lines kept per attempt.
    pub const MAX_LOG_LINES: usize = 1_000;
    /// The most bytes of log lines kept per attempt (messages and fields);
    /// later lines are counted in [`Attempt::logs_dropped`].
    pub const MAX_LOG_BYTES: usize = 64 * 1024;

    /// A new `QUEUED` run of `task_id` on a deployment, with the default
    /// machine and retry policy, no tags, metadata or attempts. Callers set
    /// the rest with struct update syntax.
    pub fn queued(
        id: RunId,
        task_id: impl Into<String>,
        deployment_id: DeploymentId,
        version: impl Into<String>,
        payload: impl Into<String>,
        now: Timestamp,
    ) -> Self {
        let retry = kiln_manifest::RetryPolicy::default();
        Run {
            id,
            task_id: task_id.into(),
            status: RunStatus::Queued,
            deployment_id,
            version: version.into(),
            payload: payload.into(),
            payload_type: "application/json".into(),
            payload_blob: None,
            output: None,
            output_blob: None,
            error: None,
            tags: Vec::new(),
            metadata: None,
            machine: Machine::default(),
            max_attempts: retry.max_attempts,
            retry,
            max_duration_secs: None,
            attempts: Vec::new(),
            next_attempt_at: None,
            idempotency_key: None,
            is_test: false,
            schedule: None,
            parent: None,
            batch: None,
            delayed_until: None,
            ttl: None,
            expires_at: None,
            expired_at: None,
            debounce: None,
            queue: String::new(),
            concurrency_key: None,
            priority_ms: 0,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            trace: None,
            journal: None,
        }
    }

    /// The queue the run waits in: its own `queue`, or its task's own queue.
    pub fn queue_name(&self) -> String {
        if self.queue.is_empty() {
            format!("{}{}", kiln_manifest::TASK_QUEUE_PREFIX, self.task_id)
        } else {
            self.queue.clone()
        }
    }

    /// Its place in its queue's lane: creation time minus the priority head
    /// start, so a resumed or retried run keeps its place ahead of newer
    /// runs and a prioritised run goes ahead of older ones.
    pub fn queue_order(&self) -> i64 {
        self.created_at.as_millis() as i64 - self.priority_ms.min(i64::MAX as u64) as i64
    }

    /// The run that triggered this one, or the run itself if no task did.
    pub fn parent_or_self(&self) -> &RunId {
        self.parent.as_ref().map_or(&self.id, |p| &p.parent)
    }

    /// The root of this run's tree (the run itself for a root).
    pub fn root_or_self(&self) -> &RunId {
        self.parent.as_ref().map_or(&self.id, |p| &p.root)
    }

    /// Execution time over all attempts, in milliseconds.
    pub fn usage_ms(&self) -> u64 {
        self.attempts.iter().map(|a| a.usage_ms).sum()
    }

    /// Attempts that count against `max_attempts` (not those interrupted by a
    /// server restart).
    pub fn counted_attempts(&self) -> u32 {
        self.attempts
            .iter()
            .filter(|a| a.outcome != Some(AttemptOutcome::Interrupted))
            .count() as u32
    }

    /// The attempt in progress, if any.
    pub fn current_attempt_mut(&mut self) -> Option<&mut Attempt> {
        self.attempts.last_mut().filter(|a| a.outcome.is_none())
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_true(b: &bool) -> bool {
    *b
}

fn unknown_is_suspended() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_is_suspended_once_it_suspends_and_old_records_read_as_suspended() {
        let fresh = Attempt::started(1, Machine::Small1x, Timestamp(1));
        assert!(!fresh.suspended);
        let text = serde_json::to_string(&fresh).unwrap();
        assert!(text.contains(r#""suspended":false"#), "{text}");
        let back: Attempt = serde_json::from_str(&text).unwrap();
        assert_eq!(back, fresh);
        // Once it suspended, the field is left out: a record without it
        // (any record an earlier Kiln wrote) reads back as suspended.
        let mut waited = fresh.clone();
        waited.suspended = true;
        let text = serde_json::to_string(&waited).unwrap();
        assert!(!text.contains("suspended"), "{text}");
        let back: Attempt = serde_json::from_str(&text).unwrap();
        assert!(back.suspended);
    }
}
