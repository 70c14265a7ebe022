//! A run's journal: the append-only record of everything an attempt did that
//! the host answered, every wait and its wake, snapshot markers and attempt
//! boundaries.
//!
//! Replaying a journal reproduces an attempt: host calls are answered from
//! it, waits are matched against it, wakes are delivered from it. A call that
//! differs from its entry is a non-determinism error.

use crate::{AttemptOutcome, RunId, Timestamp, TokenId};
use serde::{Deserialize, Serialize};

/// What a run carried when one of its attempts started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedWith {
    /// The run's metadata, as JSON.
    pub metadata: String,
    /// The run's tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// One host call and what the host answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "kebab-case")]
pub enum HostCall {
    /// `now-ms()`.
    NowMs {
        /// The time returned.
        result: u64,
    },
    /// `random-bytes(len)`.
    RandomBytes {
        /// How many bytes were asked for.
        len: u32,
        /// The bytes returned, in hex.
        result: String,
    },
    /// WASI clock reads (`wasi:clocks`) a guest that imports WASI made one
    /// after another, with no other host call between them: a JavaScript
    /// engine reads its clocks dozens of times a step.
    Clocks {
        /// Each read in order: whether it was the monotonic clock (else the
        /// wall clock), and the reading in nanoseconds (since the Unix
        /// epoch for the wall clock).
        reads: Vec<(bool, u64)>,
    },
    /// `log(level, message)`, as journals written before log lines were
    /// kept apart hold it (replay skips it).
    Log {
        /// The level.
        level: String,
        /// The message.
        message: String,
    },
    /// `trigger(task, ...)`: the child run it created, in the same commit,
    /// or why none was.
    Trigger {
        /// The child's task.
        task: String,
        /// The child run's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<RunId>,
        /// Why the trigger was refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// `create-token(options)`: the token it created, in the same commit, or
    /// why none was.
    CreateToken {
        /// The token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<TokenId>,
        /// Its callback URL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        /// Why it was refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// `batch-trigger(items)`: the batch and runs it created, in the same
    /// commit, or why none were.
    BatchTrigger {
        /// How many items it had.
        items: u32,
        /// The batch's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch: Option<String>,
        /// The child runs, in item order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        runs: Vec<RunId>,
        /// Why the batch was refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// `update-metadata(target, operations)`: the target's metadata after
    /// the operations, committed with this entry, or why they were refused.
    UpdateMetadata {
        /// `current`, `parent` or `root`.
        target: String,
        /// The metadata object afterwards, as JSON.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<String>,
        /// Why the operations were refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// `add-tags(tags)`, committed with this entry, or why it was refused.
    AddTags {
        /// The tags added.
        tags: Vec<String>,
        /// Why they were refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// `stream-append(key, chunk)`: the chunk's number in the stream,
    /// appended in the commit of this entry, or why it was refused.
    StreamAppend {
        /// The stream's key.
        key: String,
        /// The chunk's number (from 0).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u64>,
        /// Why it was refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// `env-var(name)`: the value read, sealed with the server's master
    /// key (never in plain text), or none when the variable was not set.
    EnvVar {
        /// The variable's name.
        name: String,
        /// The value, sealed and hex-encoded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sealed: Option<String>,
        /// Whether the variable was a secret (masked from what the run
        /// leaves behind).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        secret: bool,
        /// Why it could not be read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl HostCall {
    /// The call as a task author would write it, for error messages.
    pub fn describe(&self) -> String {
        match self {
            HostCall::NowMs { .. } => "now-ms()".into(),
            HostCall::RandomBytes { len, .. } => format!("random-bytes({len})"),
            HostCall::Clocks { reads } => format!("{} clock reads", reads.len()),
            HostCall::Log { level, message } => {
                let short: String = message.chars().take(60).collect();
                format!("log({level}, {short:?})")
            }
            HostCall::Trigger { task, .. } => format!("trigger({task})"),
            HostCall::CreateToken { .. } => "create-token()".into(),
            HostCall::BatchTrigger { items, .. } => format!("batch-trigger({items} items)"),
            HostCall::UpdateMetadata { target, .. } => format!("update-metadata({target})"),
            HostCall::AddTags { tags, .. } => format!("add-tags({})", tags.join(", ")),
            HostCall::StreamAppend { key, .. } => format!("stream-append({key})"),
            HostCall::EnvVar { name, .. } => format!("env-var({name})"),
        }
    }
}

/// What a wait waits on, with everything a replay needs to see it the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WaitOn {
    /// A timer (`wait::for_duration` or `wait::until`), due at this time.
    Timer {
        /// When it fires.
        #[serde(rename = "dueAt")]
        due_at: Timestamp,
    },
    /// A child run to finish.
    Run {
        /// The child.
        #[serde(rename = "runId")]
        run_id: RunId,
    },
    /// A wait token to be completed, or to time out.
    Token {
        /// The token.
        #[serde(rename = "tokenId")]
        token_id: TokenId,
        /// When it times out.
        #[serde(rename = "timeoutAt", default, skip_serializing_if = "Option::is_none")]
        timeout_at: Option<Timestamp>,
    },
    /// Every run of a batch to finish.
    Batch {
        /// The batch.
        #[serde(rename = "batchId")]
        batch_id: String,
        /// Its runs, in item order.
        runs: Vec<RunId>,
    },
    /// An HTTP request the host performs for the task; its response is
    /// journaled as the wake, so a replay never sends it again.
    Fetch {
        /// The request.
        request: FetchRequest,
    },
}

/// An HTTP request of a durable fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchRequest {
    /// `GET`, `POST`...
    pub method: String,
    /// The URL.
    pub url: String,
    /// Header names and values, in order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Give up after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// When the request held a secret value (which the fields above show
    /// masked): the request as the task made it, as JSON sealed with the
    /// server's master key and hex-encoded, for the host to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

/// The response of a durable fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResponse {
    /// The HTTP status.
    pub status: u16,
    /// Header names and values, in order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body, base64.
    pub body: String,
    /// When the response quoted a secret value (which the fields above show
    /// masked): the response as received, as JSON sealed with the server's
    /// master key and hex-encoded, for the task (and its replays) to get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

/// How a child run ended, as its waiting parent is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunOutcome {
    /// The child.
    pub run_id: RunId,
    /// Whether it completed.
    pub ok: bool,
    /// Its output (when `ok`) or its error, as JSON.
    pub value: String,
}

/// A wait the task registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitRecord {
    /// The id the guest gave it, unique within the attempt.
    pub id: u64,
    /// What it waits on.
    #[serde(flatten)]
    pub on: WaitOn,
}

/// What a wait woke with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WakeValue {
    /// The timer is due.
    Timer,
    /// A child run finished.
    Run {
        /// How.
        outcome: RunOutcome,
    },
    /// Every run of a batch finished.
    Batch {
        /// How, in item order.
        outcomes: Vec<RunOutcome>,
    },
    /// A token was completed (with `data`, JSON) or timed out (`error`).
    Token {
        /// The data it was completed with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
        /// Why it did not complete (it timed out).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A fetch got a response, or failed (refused by the allowlist, a
    /// network error, a timeout).
    Fetch {
        /// The response.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        response: Option<FetchResponse>,
        /// Why there is none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JournalEntry {
    /// An attempt began on a fresh instance.
    AttemptStarted {
        /// Its number, from 1.
        attempt: u32,
        /// The run's metadata and tags the attempt started with: a replay
        /// from the attempt's start is given these, not what they became
        /// since (absent in journals written before Kiln kept them).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started: Option<StartedWith>,
    },
    /// The guest called the host.
    HostCall(HostCall),
    /// A step ended with the guest waiting on these new waits.
    Waits {
        /// The new waits.
        waits: Vec<WaitRecord>,
    },
    /// A wake was delivered (or, while the run is suspended, is due to be).
    Wake {
        /// The wait it wakes.
        id: u64,
        /// With what.
        value: WakeValue,
    },
    /// The guest was snapshotted and its instance dropped: the run waits
    /// holding no memory and no slot.
    Suspended {
        /// The snapshot layer written.
        layer: u32,
        /// Bytes written for it (compressed).
        bytes: u64,
        /// How many log calls the attempt had made: the lines before it
        /// were saved with the suspension, so a replay does not keep them
        /// again.
        #[serde(default, rename = "logCalls")]
        log_calls: u64,
    },
    /// The attempt ended.
    AttemptEnded {
        /// Its number.
        attempt: u32,
        /// How.
        outcome: AttemptOutcome,
    },
}

impl JournalEntry {
    /// A short name of the entry's kind, for error messages.
    pub fn describe(&self) -> String {
        match self {
            JournalEntry::AttemptStarted { attempt, .. } => format!("attempt {attempt} started"),
            JournalEntry::HostCall(call) => call.describe(),
            JournalEntry::Waits { waits } => {
                format!("a step waiting on {} new wait(s)", waits.len())
            }
            JournalEntry::Wake { id, .. } => format!("the wake of wait {id}"),
            JournalEntry::Suspended { .. } => "a suspension".into(),
            JournalEntry::AttemptEnded { attempt, .. } => format!("attempt {attempt} ended"),
        }
    }
}

/// A journal entry as stored: its position and time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// Its position in the run's journal, from 1.
    pub seq: u64,
    /// When it was written.
    pub at: Timestamp,
    /// The entry.
    #[serde(flatten)]
    pub entry: JournalEntry,
}
