//! Child runs: triggering other tasks from inside a task, and waiting on them.
//!
//! ```ignore
//! use kiln_sdk::tasks;
//!
//! // Fire and forget: a handle to the child.
//! let handle = tasks::trigger("send-email", &Email { to }).await?;
//!
//! // Trigger and wait: the parent is suspended (no memory, no slot) until
//! // the child finishes, and gets its typed output or its error.
//! let receipt: Receipt = tasks::trigger_and_wait("charge", &order).await?.unwrap()?;
//!
//! // A batch of one task, outputs in item order.
//! let results = tasks::batch_trigger_and_wait::<_, Thumb>("thumbnail", &images).await?;
//!
//! // Unlike Trigger.dev, awaiting two children at once works.
//! let (a, b) = futures::join!(
//!     tasks::trigger_and_wait::<_, A>("a", &x),
//!     tasks::trigger_and_wait::<_, B>("b", &y),
//! );
//! ```
//!
//! Each trigger is journaled with the ids it returned, in the same commit
//! that creates the children: after a crash or a retry of the attempt's
//! replay, the call returns the same child instead of making another. No
//! idempotency key is needed.

use crate::TaskError;
use crate::bindings::kiln::task::host;
use crate::bindings::kiln::task::types as wit;
use crate::executor::WaitFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::future::Future;

/// Options for a child run (Trigger.dev's trigger options that Kiln acts on).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerOptions {
    /// Tags for the child (at most 10, each up to 128 characters).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The child's metadata (a JSON object).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Attempts in all, overriding the task's retry policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The most execution time in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<u64>,
    /// The machine preset (`small-2x`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// Return the run this key made (in its scope) instead of a new one,
    /// for `idempotency_key_ttl` (30 days by default).
    #[serde(skip)]
    pub idempotency_key: Option<IdempotencyKey>,
    /// How long the idempotency key counts (`"1h"`, `"7d"`).
    #[serde(rename = "idempotencyKeyTTL", skip_serializing_if = "Option::is_none")]
    pub idempotency_key_ttl: Option<String>,
    /// Start the child no earlier than this: a duration (`"1h30m"`) or an
    /// ISO 8601 date. It is `DELAYED` until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// Expire the child if it has not started this long after it was
    /// queued (`"10m"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Fold a burst of triggers with one key into one run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debounce: Option<Debounce>,
    /// Run on this declared queue instead of the task's (a `Queue`'s name,
    /// or `task/<id>` for another task's own queue).
    #[serde(skip)]
    pub queue: Option<String>,
    /// The lane inside the queue, one per value (a tenant id): each key
    /// gets the queue's concurrency limit, and keys take turns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    /// A head start in the queue, in seconds: the child is ordered as if
    /// triggered this much earlier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u64>,
}

/// An idempotency key for a child trigger: while it counts, triggering with
/// the same key in the same scope returns the run it made instead of making
/// another. The host derives the stored key from the scope, so a key never
/// reaches another run's scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    key: String,
    scope: KeyScope,
}

/// Where an [`IdempotencyKey`] applies (Trigger.dev's scopes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyScope {
    /// Within the triggering run, across its attempts: a retried attempt
    /// gets the child the failed one made.
    Run,
    /// Within one attempt: a retry makes a new child.
    Attempt,
    /// Across every run on the server.
    Global,
}

impl IdempotencyKey {
    /// A key scoped to the triggering run (the default scope).
    pub fn new(key: impl Into<String>) -> Self {
        IdempotencyKey {
            key: key.into(),
            scope: KeyScope::Run,
        }
    }

    /// The same key in another scope.
    pub fn scope(mut self, scope: KeyScope) -> Self {
        self.scope = scope;
        self
    }
}

/// Trigger.dev's `debounce` option: triggers with the same `key` (per task)
/// within `delay` of each other make one run, started `delay` after the
/// last of them (never later than `max_delay` after the first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Debounce {
    /// The key, scoped to the task.
    pub key: String,
    /// How long after the latest trigger the run starts (`"5s"`).
    pub delay: String,
    /// Which trigger's payload runs: the first (`leading`, the default) or
    /// the last (`trailing`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<DebounceMode>,
    /// The longest a steady stream of triggers defers the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<String>,
}

/// Which payload a debounced run keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DebounceMode {
    /// The first trigger's.
    Leading,
    /// The last trigger's.
    Trailing,
}

/// A child run's error, as the parent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChildError {
    /// The error's kind (`Error`, `OutOfMemory`, `CANCELED`...).
    #[serde(default)]
    pub name: Option<String>,
    /// What went wrong.
    pub message: String,
    /// A stack trace or chain of causes.
    #[serde(default)]
    pub stack_trace: Option<String>,
}

impl std::fmt::Display for ChildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// How a child run ended: its typed output, or its error.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult<O> {
    /// The child's run id.
    pub id: String,
    /// Its output, or why it failed.
    pub outcome: Result<O, ChildError>,
}

impl<O> RunResult<O> {
    /// Whether the child completed.
    pub fn ok(&self) -> bool {
        self.outcome.is_ok()
    }

    /// The output, or the child's failure as this task's error (so `?`
    /// fails the parent with the child's message).
    pub fn unwrap(self) -> Result<O, TaskError> {
        self.outcome.map_err(|e| {
            TaskError::new(format!("child run {} failed: {e}", self.id)).with_name("ChildRunFailed")
        })
    }
}

/// A child run that was triggered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunHandle {
    /// The child's run id.
    pub id: String,
}

impl RunHandle {
    /// Waits for the child to finish (the parent is suspended meanwhile).
    pub async fn wait<O: DeserializeOwned>(&self) -> Result<RunResult<O>, TaskError> {
        match WaitFuture::new(wit::WaitKind::Run(self.id.clone())).await {
            wit::WakeValue::Run(outcome) => Ok(result_of(outcome)),
            _ => Err(protocol("a child-run wait woke with something else")),
        }
    }
}

/// A batch of child runs that was triggered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHandle {
    /// The batch's id.
    pub id: String,
    /// Its runs, in item order.
    pub runs: Vec<String>,
}

impl BatchHandle {
    /// Waits for every run of the batch; results in item order.
    pub async fn wait<O: DeserializeOwned>(&self) -> Result<Vec<RunResult<O>>, TaskError> {
        match WaitFuture::new(wit::WaitKind::Batch(self.id.clone())).await {
            wit::WakeValue::Batch(outcomes) => Ok(outcomes.into_iter().map(result_of).collect()),
            _ => Err(protocol("a batch wait woke with something else")),
        }
    }
}

/// One item of a batch over different tasks.
#[derive(Debug, Clone)]
pub struct BatchItem {
    /// The task to run.
    pub task: String,
    /// Its payload as JSON.
    pub payload: serde_json::Value,
    /// Its options.
    pub options: TriggerOptions,
}

impl BatchItem {
    /// An item with default options.
    pub fn new(task: impl Into<String>, payload: impl Serialize) -> Result<Self, TaskError> {
        Ok(BatchItem {
            task: task.into(),
            payload: serde_json::to_value(payload).map_err(payload_error)?,
            options: TriggerOptions::default(),
        })
    }
}

fn protocol(message: &str) -> TaskError {
    TaskError::new(message).with_name("KilnProtocolError")
}

fn payload_error(e: serde_json::Error) -> TaskError {
    TaskError::abort(format!("a child's payload cannot be serialised: {e}"))
        .with_name("PayloadError")
}

fn host_error(e: wit::HostError) -> TaskError {
    TaskError::from_host("triggering a child run", "TriggerError", e)
}

fn result_of<O: DeserializeOwned>(outcome: wit::RunOutcome) -> RunResult<O> {
    let outcome_value = if outcome.ok {
        serde_json::from_str::<O>(&outcome.value).map_err(|e| ChildError {
            name: Some("OutputError".into()),
            message: format!("the child's output does not fit the expected type: {e}"),
            stack_trace: None,
        })
    } else {
        Err(
            serde_json::from_str::<ChildError>(&outcome.value).unwrap_or_else(|_| ChildError {
                name: None,
                message: outcome.value.clone(),
                stack_trace: None,
            }),
        )
    };
    RunResult {
        id: outcome.run_id,
        outcome: outcome_value,
    }
}

fn options_json(options: &TriggerOptions, function: &'static str) -> String {
    let mut json = serde_json::to_value(options).unwrap_or_else(|_| serde_json::json!({}));
    json["triggerFunction"] = serde_json::json!(function);
    if let Some(queue) = &options.queue {
        json["queue"] = serde_json::json!({ "name": queue });
    }
    if let Some(key) = &options.idempotency_key {
        json["idempotencyKey"] = serde_json::json!(key.key);
        json["idempotencyKeyOptions"] = serde_json::json!({ "key": key.key, "scope": key.scope });
    }
    json.to_string()
}

fn trigger_raw(
    task: &str,
    payload: &impl Serialize,
    options: &TriggerOptions,
    function: &'static str,
) -> Result<RunHandle, TaskError> {
    let payload = serde_json::to_string(payload).map_err(payload_error)?;
    host::trigger(task, &payload, &options_json(options, function))
        .map(|id| RunHandle { id })
        .map_err(host_error)
}

/// Triggers a child run of `task` and returns its handle. The child is
/// created when this is called (the future only hands over the result), so
/// children are created in call order and nothing is borrowed across awaits.
pub fn trigger(
    task: &str,
    payload: &impl Serialize,
) -> impl Future<Output = Result<RunHandle, TaskError>> + 'static {
    std::future::ready(trigger_raw(
        task,
        payload,
        &TriggerOptions::default(),
        "trigger",
    ))
}

/// [`trigger`] with options.
pub fn trigger_with(
    task: &str,
    payload: &impl Serialize,
    options: &TriggerOptions,
) -> impl Future<Output = Result<RunHandle, TaskError>> + 'static {
    std::future::ready(trigger_raw(task, payload, options, "trigger"))
}

/// Triggers a child run and waits for it; the parent holds no slot while it
/// waits. The child is created when this is called.
pub fn trigger_and_wait<P: Serialize, O: DeserializeOwned>(
    task: &str,
    payload: &P,
) -> impl Future<Output = Result<RunResult<O>, TaskError>> + 'static {
    let handle = trigger_raw(task, payload, &TriggerOptions::default(), "triggerAndWait");
    async move { handle?.wait().await }
}

/// [`trigger_and_wait`] with options. With an idempotency key or a debounce
/// key the run waited on may be one that an earlier trigger made.
pub fn trigger_and_wait_with<P: Serialize, O: DeserializeOwned>(
    task: &str,
    payload: &P,
    options: &TriggerOptions,
) -> impl Future<Output = Result<RunResult<O>, TaskError>> + 'static {
    let handle = trigger_raw(task, payload, options, "triggerAndWait");
    async move { handle?.wait().await }
}

fn batch_raw(items: Vec<BatchItem>, function: &'static str) -> Result<BatchHandle, TaskError> {
    let items: Vec<wit::BatchItem> = items
        .into_iter()
        .map(|i| wit::BatchItem {
            task_id: i.task,
            payload: i.payload.to_string(),
            options: options_json(&i.options, function),
        })
        .collect();
    host::batch_trigger(&items)
        .map(|h| BatchHandle {
            id: h.batch_id,
            runs: h.run_ids,
        })
        .map_err(host_error)
}

fn items_of<P: Serialize>(task: &str, payloads: &[P]) -> Result<Vec<BatchItem>, TaskError> {
    payloads.iter().map(|p| BatchItem::new(task, p)).collect()
}

/// Triggers one child run of `task` per payload, as one batch.
pub fn batch_trigger<P: Serialize>(
    task: &str,
    payloads: &[P],
) -> impl Future<Output = Result<BatchHandle, TaskError>> + 'static {
    std::future::ready(items_of(task, payloads).and_then(|i| batch_raw(i, "batchTrigger")))
}

/// Triggers a batch of `task` and waits for all of it; results in payload
/// order.
pub fn batch_trigger_and_wait<P: Serialize, O: DeserializeOwned>(
    task: &str,
    payloads: &[P],
) -> impl Future<Output = Result<Vec<RunResult<O>>, TaskError>> + 'static {
    let handle = items_of(task, payloads).and_then(|i| batch_raw(i, "batchTriggerAndWait"));
    async move { handle?.wait().await }
}

/// Triggers a batch over different tasks.
pub fn batch_trigger_by_task(
    items: Vec<BatchItem>,
) -> impl Future<Output = Result<BatchHandle, TaskError>> + 'static {
    std::future::ready(batch_raw(items, "batchTrigger"))
}

/// Triggers a batch over different tasks and waits for all of it; outputs
/// as JSON, in item order.
pub fn batch_trigger_by_task_and_wait(
    items: Vec<BatchItem>,
) -> impl Future<Output = Result<Vec<RunResult<serde_json::Value>>, TaskError>> + 'static {
    let handle = batch_raw(items, "batchTriggerAndWait");
    async move { handle?.wait().await }
}
