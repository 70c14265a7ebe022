//! Making a run from a trigger: the options of Trigger.dev's wire format that
//! Kiln acts on, checked against the task, for backends (the trigger route)
//! and for tasks triggering child runs alike.

use crate::deployments::Deployed;
use crate::executor::admission::{DEFAULT_KEY_TTL_MS, IdempotencyKey, KeyScope, scoped_key_hash};
use kiln_manifest::Machine;
use kiln_types::{DebounceMode, Run, RunDebounce, RunId, RunStatus, RunTtl, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The trigger options this server acts on; the others of the wire format
/// are accepted and ignored until their issue lands.
#[derive(Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TriggerOptions {
    pub(crate) payload_type: Option<String>,
    pub(crate) tags: Option<Value>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) max_duration: Option<u64>,
    pub(crate) machine: Option<String>,
    pub(crate) metadata: Option<Value>,
    #[serde(default)]
    pub(crate) test: bool,
    /// Kiln's guest SDK says how a child was triggered (`triggerAndWait`...).
    pub(crate) trigger_function: Option<String>,
    /// The SDK's SHA-256 of the user's idempotency key.
    pub(crate) idempotency_key: Option<String>,
    /// The user's key as given, and its scope.
    pub(crate) idempotency_key_options: Option<IdempotencyKeyOptions>,
    /// How long the key deduplicates (`"1h"`; 30 days by default).
    #[serde(rename = "idempotencyKeyTTL")]
    pub(crate) idempotency_key_ttl: Option<String>,
    /// Start no earlier than this: a duration (`"1h52m18s"`) or a date.
    pub(crate) delay: Option<Value>,
    /// Expire the run if it has not started this long after it was queued:
    /// a duration or whole seconds.
    pub(crate) ttl: Option<Value>,
    /// Fold a burst of triggers with one key into one run.
    pub(crate) debounce: Option<DebounceOptions>,
    /// A declared queue to run on instead of the task's: `{name}` (or the
    /// name as a string).
    pub(crate) queue: Option<Value>,
    /// The run's lane in its queue (a tenant id).
    pub(crate) concurrency_key: Option<String>,
    /// A head start in the queue, in seconds.
    pub(crate) priority: Option<Value>,
    /// Run on this deployed version rather than the current one.
    pub(crate) lock_to_version: Option<String>,
    /// The trace the run continues: set from the trigger's `traceparent`
    /// header, never read from a request's body (see [`traceparent`]), and
    /// kept with a pending trigger until its deploy.
    #[serde(default, rename = "kilnTrace", skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub(crate) trace: Option<kiln_types::TraceContext>,
}

/// The trace context of a request's W3C `traceparent` header, if it has a
/// valid one.
pub(crate) fn traceparent(headers: &axum::http::HeaderMap) -> Option<kiln_types::TraceContext> {
    headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(kiln_types::TraceContext::from_traceparent)
}

/// The longest `concurrencyKey`.
const MAX_CONCURRENCY_KEY: usize = 512;

/// The largest `priority`: a year, in seconds.
const MAX_PRIORITY_SECS: u64 = 365 * 24 * 60 * 60;

/// The queue a trigger picks, checked against the deployment: a trigger
/// never creates a queue (Trigger.dev v4), so an undeclared name is refused.
fn queue(
    value: Option<&Value>,
    task: &kiln_manifest::TaskManifest,
    manifest: &kiln_manifest::Manifest,
    version: &str,
) -> Result<String, TriggerError> {
    let shape = || TriggerError::BadRequest("queue must be {\"name\": \"...\"}".into());
    let name = match value {
        None | Some(Value::Null) => return Ok(task.queue.clone().unwrap_or_default()),
        Some(Value::String(name)) => name.clone(),
        Some(Value::Object(fields)) if fields.contains_key("concurrencyLimit") => {
            return Err(TriggerError::BadRequest(
                "queue.concurrencyLimit: queues and their limits are declared in the bundle (kiln_sdk::Queue), not at trigger time".into(),
            ));
        }
        Some(Value::Object(fields)) => match fields.get("name") {
            Some(Value::String(name)) => name.clone(),
            _ => return Err(shape()),
        },
        Some(_) => return Err(shape()),
    };
    if !manifest.has_queue(&name) {
        return Err(TriggerError::Unprocessable(format!(
            "queue `{name}` is not declared in version {version}; a trigger cannot create a queue, declare it in the bundle with kiln_sdk::Queue (a task's own queue is `task/<task id>`)"
        )));
    }
    // The task's own queue is stored as empty.
    Ok(if name == task.own_queue() {
        String::new()
    } else {
        name
    })
}

/// `priority` in seconds, as milliseconds.
fn priority_ms(value: Option<&Value>) -> Result<u64, TriggerError> {
    match value {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(secs) if (0.0..=MAX_PRIORITY_SECS as f64).contains(&secs) => {
                Ok((secs * 1000.0) as u64)
            }
            _ => Err(TriggerError::BadRequest(format!(
                "priority must be 0 to {MAX_PRIORITY_SECS} seconds"
            ))),
        },
        Some(_) => Err(TriggerError::BadRequest(
            "priority must be a number of seconds".into(),
        )),
    }
}

/// Trigger.dev's `debounce` option.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DebounceOptions {
    /// The key, scoped to the task (at most 512 characters).
    pub(crate) key: String,
    /// How long after the latest trigger the run starts.
    pub(crate) delay: String,
    /// `leading` (the default: the first payload runs) or `trailing`.
    pub(crate) mode: Option<String>,
    /// The latest start, counted from the first trigger of the window.
    pub(crate) max_delay: Option<String>,
}

/// The longest debounce key.
const MAX_DEBOUNCE_KEY: usize = 512;

/// `ttl` as Trigger.dev gives it: a duration string or whole seconds.
fn ttl(value: &Value) -> Result<RunTtl, String> {
    let ms = match value {
        Value::Number(n) => n
            .as_u64()
            .map(|secs| secs.saturating_mul(1000))
            .ok_or_else(|| format!("ttl `{n}` is not a whole number of seconds"))?,
        Value::String(s) => crate::duration::parse_ms(s).map_err(|e| format!("ttl: {e}"))?,
        _ => return Err("ttl must be a duration like \"10m\" or a number of seconds".into()),
    };
    if ms < 1000 {
        return Err("ttl must be at least 1 second".into());
    }
    let text = match value {
        Value::String(s) => s.clone(),
        other => format!("{other}s"),
    };
    Ok(RunTtl { text, ms })
}

/// The debounce window a trigger opens, checked.
fn debounce(options: &DebounceOptions, now: Timestamp) -> Result<RunDebounce, String> {
    if options.key.is_empty() || options.key.len() > MAX_DEBOUNCE_KEY {
        return Err(format!(
            "debounce.key must be 1 to {MAX_DEBOUNCE_KEY} characters"
        ));
    }
    let delay_ms =
        crate::duration::parse_ms(&options.delay).map_err(|e| format!("debounce.delay: {e}"))?;
    let mode = match options.mode.as_deref() {
        None | Some("leading") => DebounceMode::Leading,
        Some("trailing") => DebounceMode::Trailing,
        Some(other) => {
            return Err(format!(
                "debounce.mode `{other}` is neither \"leading\" nor \"trailing\""
            ));
        }
    };
    let deadline = match &options.max_delay {
        Some(max) => {
            let ms =
                crate::duration::parse_ms(max).map_err(|e| format!("debounce.maxDelay: {e}"))?;
            Some(Timestamp(now.as_millis().saturating_add(ms)))
        }
        None => None,
    };
    Ok(RunDebounce {
        key: options.key.clone(),
        mode,
        delay_ms,
        deadline,
    })
}

/// The user's idempotency key as the SDK sends it beside its hash.
#[derive(Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub(crate) struct IdempotencyKeyOptions {
    /// The key as the user wrote it.
    pub(crate) key: Option<String>,
    /// `run` (the default), `attempt` or `global`.
    pub(crate) scope: Option<String>,
}

impl TriggerOptions {
    /// The user's idempotency key as they gave it (what a run shows), if
    /// the trigger has one.
    pub(crate) fn user_key(&self) -> Option<String> {
        self.idempotency_key_options
            .as_ref()
            .and_then(|o| o.key.clone())
            .or_else(|| self.idempotency_key.clone())
    }

    /// The run's `ttl`, if the trigger gives one.
    fn run_ttl(&self) -> Result<Option<RunTtl>, TriggerError> {
        self.ttl
            .as_ref()
            .filter(|v| !v.is_null())
            .map(ttl)
            .transpose()
            .map_err(TriggerError::BadRequest)
    }

    fn key_ttl_ms(&self) -> Result<u64, TriggerError> {
        match &self.idempotency_key_ttl {
            Some(ttl) => crate::duration::parse_ms(ttl)
                .map_err(|e| TriggerError::BadRequest(format!("idempotencyKeyTTL: {e}"))),
            None => Ok(DEFAULT_KEY_TTL_MS),
        }
    }

    /// The idempotency key of a backend's trigger: the hash the SDK sends
    /// (already scoped by the SDK when it runs inside a task).
    pub(crate) fn backend_key(&self) -> Result<Option<IdempotencyKey>, TriggerError> {
        match self.idempotency_key.as_deref().filter(|k| !k.is_empty()) {
            Some(hash) => Ok(Some(IdempotencyKey {
                hash: hash.to_string(),
                ttl_ms: self.key_ttl_ms()?,
            })),
            None => Ok(None),
        }
    }

    /// The idempotency key of a child trigger from attempt `attempt` of run
    /// `parent`: Kiln's guest SDK sends the user's key and its scope, and
    /// the host derives the hash, so a guest cannot reach another run's
    /// scoped keys.
    pub(crate) fn task_key(
        &self,
        parent: &RunId,
        attempt: u32,
    ) -> Result<Option<IdempotencyKey>, TriggerError> {
        let options = self.idempotency_key_options.as_ref();
        let Some(key) = options
            .and_then(|o| o.key.as_deref())
            .or(self.idempotency_key.as_deref())
            .filter(|k| !k.is_empty())
        else {
            return Ok(None);
        };
        let scope = KeyScope::parse(options.and_then(|o| o.scope.as_deref()))
            .map_err(TriggerError::BadRequest)?;
        Ok(Some(IdempotencyKey {
            hash: scoped_key_hash(key, scope, parent, attempt),
            ttl_ms: self.key_ttl_ms()?,
        }))
    }
}

/// Why a trigger was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TriggerError {
    /// No such task in the deployment (404).
    NotFound(String),
    /// A malformed option (400).
    BadRequest(String),
    /// The payload fails the task's schema (422).
    Unprocessable(String),
}

impl TriggerError {
    /// The message.
    pub(crate) fn message(&self) -> &str {
        match self {
            TriggerError::NotFound(m)
            | TriggerError::BadRequest(m)
            | TriggerError::Unprocessable(m) => m,
        }
    }
}

/// Tags as Trigger.dev's options give them (a string or a list), at most
/// 10, each 1 to 128 characters.
pub(crate) fn tags(value: Option<Value>) -> Result<Vec<String>, String> {
    let tags = match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|t| match t {
                Value::String(s) => Ok(s),
                _ => Err("tags must be strings".to_string()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("tags must be a string or an array of strings".into()),
    };
    if tags.len() > 10 {
        return Err("a run may have at most 10 tags".into());
    }
    if let Some(long) = tags.iter().find(|t| t.is_empty() || t.len() > 128) {
        return Err(format!("tag `{long}` must be 1 to 128 characters"));
    }
    Ok(tags)
}

/// A new `QUEUED` run of `task_id` on `deployed`. `payload` is the plain JSON
/// value (checked against the task's schema); `stored` and `stored_type` are
/// what the run keeps (text stays text).
/// The machine a trigger names, if it names one.
fn machine_of(options: &TriggerOptions) -> Result<Option<Machine>, TriggerError> {
    options
        .machine
        .as_deref()
        .map(|name| {
            name.parse::<Machine>()
                .map_err(|e| TriggerError::BadRequest(e.to_string()))
        })
        .transpose()
}

/// The checks of `maxAttempts`, `maxDuration` and `metadata` that need no
/// task.
fn check_limits(options: &TriggerOptions) -> Result<(), TriggerError> {
    if options.max_attempts == Some(0) {
        return Err(TriggerError::BadRequest(
            "maxAttempts must be at least 1".into(),
        ));
    }
    if options.max_duration == Some(0) {
        return Err(TriggerError::BadRequest(
            "maxDuration must be at least 1 second".into(),
        ));
    }
    if let Some(metadata) = &options.metadata
        && !metadata.is_object()
    {
        return Err(TriggerError::BadRequest(
            "metadata must be a JSON object".into(),
        ));
    }
    Ok(())
}

/// A `PENDING_VERSION` run: triggered for a task no deployment of its
/// environment has yet. The options that need no task are checked now, so a
/// bad trigger fails at once; the rest (schema, queue, machine and retry
/// defaults) wait for the deploy that brings the task, which makes the run
/// from the trigger kept beside it ([`new_run`]).
pub(crate) fn pending_run(
    task_id: &str,
    stored: String,
    stored_type: String,
    options: &TriggerOptions,
    now: Timestamp,
) -> Result<Run, TriggerError> {
    machine_of(options)?;
    check_limits(options)?;
    let delayed = match options.delay.as_ref().filter(|d| !d.is_null()) {
        Some(delay) => {
            crate::duration::parse_instant(delay, now)
                .map_err(|e| TriggerError::BadRequest(format!("delay: {e}")))?
                > now
        }
        None => false,
    };
    let ttl = options.run_ttl()?;
    priority_ms(options.priority.as_ref())?;
    let idempotency_key = options.user_key();
    let mut run = Run::queued(
        RunId::generate(now.as_millis()),
        task_id,
        kiln_types::DeploymentId::none(),
        String::new(),
        stored,
        now,
    );
    run.status = RunStatus::PendingVersion;
    // A ttl counts while the run waits for its deploy too (from the end of
    // its delay when it has one, which starts with the deploy).
    if !delayed && let Some(ttl) = &ttl {
        run.expires_at = Some(Timestamp(now.as_millis().saturating_add(ttl.ms)));
    }
    run.ttl = ttl;
    run.payload_type = stored_type;
    run.tags = tags(options.tags.clone()).map_err(TriggerError::BadRequest)?;
    run.metadata = options.metadata.clone();
    run.idempotency_key = idempotency_key;
    run.is_test = options.test;
    run.trace = options.trace.clone();
    Ok(run)
}

pub(crate) fn new_run(
    deployed: &Deployed,
    task_id: &str,
    payload: &Value,
    stored: String,
    stored_type: String,
    options: TriggerOptions,
    now: Timestamp,
) -> Result<Run, TriggerError> {
    let Some(task) = deployed.record.manifest.task(task_id) else {
        return Err(TriggerError::NotFound(format!(
            "Task `{task_id}` not found in version {}",
            deployed.record.version
        )));
    };
    deployed
        .validate_payload(task_id, payload)
        .map_err(TriggerError::Unprocessable)?;
    let machine = machine_of(&options)?.unwrap_or(task.machine);
    check_limits(&options)?;
    let ttl = options.run_ttl()?;
    let debounce = options
        .debounce
        .as_ref()
        .map(|d| debounce(d, now))
        .transpose()
        .map_err(TriggerError::BadRequest)?;
    let delayed_until = match (&debounce, &options.delay) {
        (Some(window), _) => Some(window.due(now)),
        (None, Some(delay)) if !delay.is_null() => Some(
            crate::duration::parse_instant(delay, now)
                .map_err(|e| TriggerError::BadRequest(format!("delay: {e}")))?,
        ),
        _ => None,
    }
    .filter(|at| *at > now || debounce.is_some());
    // A delayed run's ttl counts from the end of its delay.
    let (status, expires_at) = match delayed_until {
        Some(_) => (RunStatus::Delayed, None),
        None => (
            RunStatus::Queued,
            ttl.as_ref()
                .map(|t| Timestamp(now.as_millis().saturating_add(t.ms))),
        ),
    };
    let queue = queue(
        options.queue.as_ref(),
        task,
        &deployed.record.manifest,
        &deployed.record.version,
    )?;
    if let Some(key) = &options.concurrency_key
        && (key.is_empty() || key.len() > MAX_CONCURRENCY_KEY)
    {
        return Err(TriggerError::BadRequest(format!(
            "concurrencyKey must be 1 to {MAX_CONCURRENCY_KEY} characters"
        )));
    }
    let priority_ms = priority_ms(options.priority.as_ref())?;
    let idempotency_key = options.user_key();
    Ok(Run {
        payload_type: stored_type,
        idempotency_key,
        tags: tags(options.tags).map_err(TriggerError::BadRequest)?,
        metadata: options.metadata,
        machine,
        max_attempts: options.max_attempts.unwrap_or(task.retry.max_attempts),
        retry: task.retry.clone(),
        max_duration_secs: options.max_duration.or(task.max_duration_secs),
        is_test: options.test,
        status,
        delayed_until,
        ttl,
        expires_at,
        debounce,
        queue,
        concurrency_key: options.concurrency_key,
        priority_ms,
        trace: options.trace,
        ..Run::queued(
            RunId::generate(now.as_millis()),
            task_id,
            deployed.record.id.clone(),
            deployed.record.version.clone(),
            stored,
            now,
        )
    })
}
