//! Making a run from a trigger: the options of Trigger.dev's wire format that
//! Kiln acts on, checked against the task, for backends (the trigger route)
//! and for tasks triggering child runs alike.

use crate::deployments::Deployed;
use kiln_manifest::Machine;
use kiln_types::{Run, RunId, Timestamp};
use serde::Deserialize;
use serde_json::Value;

/// The trigger options this server acts on; the others of the wire format
/// are accepted and ignored until their issue lands.
#[derive(Debug, Default, Deserialize)]
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
}

/// The user's idempotency key as the SDK sends it beside its hash.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct IdempotencyKeyOptions {
    /// The key as the user wrote it.
    pub(crate) key: Option<String>,
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
    let machine = match options.machine.as_deref() {
        Some(name) => name
            .parse::<Machine>()
            .map_err(|e| TriggerError::BadRequest(e.to_string()))?,
        None => task.machine,
    };
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
    let idempotency_key = options
        .idempotency_key_options
        .as_ref()
        .and_then(|o| o.key.clone())
        .or_else(|| options.idempotency_key.clone());
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
