//! Triggering and retrieving runs.

use super::access::Caller;
use super::{ApiError, AppState, Env};
use crate::executor::admission::{self, AdmissionKeys, AdmitError, Admitted};
use crate::executor::pending::PendingTrigger;
use crate::executor::{CancelError, MAX_OUTPUT_BYTES, RescheduleError};
use crate::trigger::{TriggerError, TriggerOptions};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use kiln_types::{RunId, Timestamp};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

/// The longest a retrieve waits for a run to finish.
const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct TriggerBody {
    payload: Option<Value>,
    #[serde(default)]
    options: TriggerOptions,
}

impl From<TriggerError> for ApiError {
    fn from(error: TriggerError) -> Self {
        match error {
            TriggerError::NotFound(m) => ApiError::not_found(m),
            TriggerError::BadRequest(m) => ApiError::bad_request(m),
            TriggerError::Unprocessable(m) => ApiError::unprocessable(m),
        }
    }
}

impl From<AdmitError> for ApiError {
    fn from(error: AdmitError) -> Self {
        match error {
            AdmitError::Store(e) => e.into(),
            AdmitError::TokenUsed => ApiError::unauthorized(error.to_string()),
        }
    }
}

/// `POST /api/v1/tasks/{taskId}/trigger`.
pub(super) async fn trigger(
    Env(state): Env,
    Path(task_id): Path<String>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    caller.may_trigger(&task_id)?;
    let request = request_key(&state, &headers)?;
    if body.len() > MAX_OUTPUT_BYTES + 64 * 1024 {
        return Err(ApiError::too_large(format!(
            "The request is {} bytes; payloads are limited to {MAX_OUTPUT_BYTES} bytes",
            body.len()
        )));
    }
    // A large payload is parsed, decoded and validated off the runtime.
    let size = body.len();
    let store = state.store.clone();
    let (options, incoming) = super::json_work(size, move || {
        let body: TriggerBody = super::json_body_or_default(&body)?;
        let mut options = body.options;
        let incoming = incoming_payload(&store, body.payload, &mut options)?;
        Ok::<_, ApiError>((options, incoming))
    })
    .await??;
    let options = TriggerOptions {
        trace: crate::trigger::traceparent(&headers),
        ..options
    };
    let now = Timestamp::now();
    let key = options.backend_key()?;
    let deployed =
        match options.lock_to_version.clone() {
            Some(version) => Some(state.deployments.by_version(&version).await?.ok_or_else(
                || {
                    ApiError::unprocessable(format!(
                        "lockToVersion: version `{version}` is not deployed"
                    ))
                },
            )?),
            None => state.deployments.current(),
        };
    // Held until the run is stored: retention does not collect a version
    // something holds.
    let _holding = deployed.clone();
    let (run, pending_trigger) = match deployed {
        Some(deployed) if deployed.record.manifest.task(&task_id).is_some() => {
            let task = task_id.clone();
            let run = super::json_work(size, move || {
                crate::trigger::new_run(
                    &deployed,
                    &task,
                    &incoming.json,
                    incoming.stored,
                    incoming.stored_type,
                    options,
                    now,
                )
            })
            .await??;
            (run, None)
        }
        Some(deployed) if options.lock_to_version.is_some() => {
            return Err(ApiError::not_found(format!(
                "Task `{task_id}` not found in version {}",
                deployed.record.version
            )));
        }
        // No deployment has the task yet: the run waits as PENDING_VERSION
        // for the deploy that brings it.
        _ => {
            let run = crate::trigger::pending_run(
                &task_id,
                incoming.stored,
                incoming.stored_type,
                &options,
                now,
            )?;
            let trigger = PendingTrigger {
                payload: incoming.json,
                options,
                triggered_at: Some(now),
            };
            (run, Some(trigger.encode()))
        }
    };
    let one_time = caller.public().filter(|token| token.one_time).map(|token| {
        let left_secs = token.expires_secs.saturating_sub(now.as_millis() / 1000);
        admission::one_time_key(&token.token, (left_secs + 60) * 1000)
    });
    let keys = AdmissionKeys {
        key,
        request,
        one_time,
        pending_trigger,
    };
    let pending = run.status == kiln_types::RunStatus::PendingVersion;
    let (id, found) = state.executor.admit_new(run, keys, now).await?;
    // A deploy that brought the task while this trigger was being admitted
    // may have released the pending runs before this one was stored.
    if pending
        && found.is_none()
        && let Some(current) = state.deployments.current()
        && current.record.manifest.task(&task_id).is_some()
    {
        let executor = state.executor.clone();
        tokio::spawn(async move { executor.release_pending(&current).await })
            .await
            .map_err(|e| ApiError::internal(format!("releasing pending runs failed: {e}")))??;
    }
    let cached = matches!(found, Some(Admitted::Cached(_)));
    Ok(respond(&state, &id, cached, now))
}

/// The request idempotency key the official SDK sends with every call and
/// keeps across its automatic retries of it, so that a trigger retried after
/// a lost response answers with the run the first attempt made.
pub(super) fn request_key(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<crate::executor::admission::IdempotencyKey>, ApiError> {
    let Some(value) = headers.get("x-trigger-request-idempotency-key") else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| {
        ApiError::bad_request("x-trigger-request-idempotency-key must be visible ASCII")
    })?;
    if value.is_empty() || value.len() > 256 {
        return Err(ApiError::bad_request(
            "x-trigger-request-idempotency-key must be 1 to 256 characters",
        ));
    }
    Ok(Some(crate::executor::admission::request_key(
        &state.env_id,
        value,
    )))
}

/// A payload as a trigger gives it: its plain JSON value, and what the run
/// stores.
pub(super) struct Incoming {
    pub(super) json: Value,
    pub(super) stored: String,
    pub(super) stored_type: String,
}

/// Reads a trigger's payload. The SDK sends it as a string packet with
/// `payloadType`; plain JSON values are accepted too, for curl users. Text
/// stays as sent; everything else is stored as its plain JSON value
/// (SuperJSON unwrapped), so attempts hand it to the guest as it is.
pub(super) fn incoming_payload(
    store: &kiln_store::Store,
    payload: Option<Value>,
    options: &mut TriggerOptions,
) -> Result<Incoming, ApiError> {
    let declared = options
        .payload_type
        .take()
        .unwrap_or_else(|| "application/json".into());
    // A large payload uploaded beforehand through the packets flow.
    let (payload, declared) = if declared == "application/store" {
        let (text, content_type) = super::packets::resolve(store, payload.as_ref())?;
        (Some(Value::String(text)), content_type)
    } else {
        (payload, declared)
    };
    let (text, payload_type) = match payload {
        None | Some(Value::Null) => (None, declared),
        Some(Value::String(s)) => (Some(s), declared),
        Some(other) => (Some(other.to_string()), "application/json".into()),
    };
    let json =
        crate::payload::to_json(text.as_deref(), &payload_type).map_err(ApiError::bad_request)?;
    let (stored, stored_type) = match text {
        Some(text) if payload_type == "text/plain" => (text, payload_type),
        _ => (json.to_string(), "application/json".to_string()),
    };
    Ok(Incoming {
        json,
        stored,
        stored_type,
    })
}

/// The trigger response: `{id, isCached}` and the run's public token.
fn respond(state: &AppState, id: &RunId, cached: bool, now: Timestamp) -> (HeaderMap, Json<Value>) {
    let headers = jwt_header(state, &format!("read:runs:{id}"), now);
    (headers, Json(json!({ "id": id, "isCached": cached })))
}

/// An `x-trigger-jwt` header: a public access token with one scope.
pub(super) fn jwt_header(state: &AppState, scope: &str, now: Timestamp) -> HeaderMap {
    let jwt = crate::jwt::sign(
        &state.signing_secret,
        &state.env_id,
        &[scope.to_string()],
        now.as_millis() / 1000,
    );
    let mut headers = HeaderMap::new();
    if let Ok(value) = jwt.parse() {
        headers.insert("x-trigger-jwt", value);
    }
    headers
}

#[derive(Debug, Deserialize)]
pub(super) struct RetrieveQuery {
    /// Wait up to this many milliseconds for the run to finish.
    wait: Option<u64>,
}

/// `GET /api/v3/runs/{runId}`.
pub(super) async fn retrieve(
    Env(state): Env,
    Path(run_id): Path<String>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<RetrieveQuery>,
) -> Result<axum::response::Response, ApiError> {
    let id = RunId::parse(&run_id).map_err(|_| ApiError::not_found("Run not found"))?;
    let wait = query
        .wait
        .map(Duration::from_millis)
        .unwrap_or_default()
        .min(MAX_WAIT);
    // Subscribed before the read, so a finish after it is not missed.
    let finished = (!wait.is_zero()).then(|| state.notifier.subscribe(&id));
    let mut run = state
        .store
        .run(&id)?
        .ok_or_else(|| ApiError::not_found("Run not found"))?;
    caller.may_read_run(&run)?;
    if let Some(finished) = finished
        && !run.status.is_final()
    {
        let _ = tokio::time::timeout(wait, finished).await;
        run = state
            .store
            .run(&id)?
            .ok_or_else(|| ApiError::not_found("Run not found"))?;
    }
    // A run with a large payload or output is written off the runtime.
    let size = run.payload.len() + run.output.as_ref().map_or(0, String::len);
    super::json_response(size, move || super::run_view::full(&state, run)).await
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ReplayBody {
    /// A new payload (as the SDK sends it: a string packet, or JSON).
    payload: Option<Value>,
    /// The deployed version to replay on (the current one by default).
    version: Option<String>,
    /// Overrides of the trigger options.
    #[serde(flatten)]
    options: TriggerOptions,
}

/// `POST /api/v1/runs/{runId}/replay` -> `{id}`: a new run of the same task
/// on the current deployment (or the `version` given), with the original payload, tags and metadata
/// unless the body overrides them.
pub(super) async fn replay(
    Env(state): Env,
    Path(run_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let request = request_key(&state, &headers)?;
    let original = super::stored_run(&state, &run_id)?;
    let body: ReplayBody = super::json_body_or_default(&body)?;
    let version = body.version;
    let mut options = body.options;
    options.trace = crate::trigger::traceparent(&headers);
    let incoming = match body.payload {
        Some(payload) => incoming_payload(&state.store, Some(payload), &mut options)?,
        None => {
            let stored = state.store.payload_of(&original)?;
            Incoming {
                json: crate::payload::to_json(Some(&stored), &original.payload_type)
                    .map_err(ApiError::bad_request)?,
                stored,
                stored_type: original.payload_type.clone(),
            }
        }
    };
    if options.tags.is_none() && !original.tags.is_empty() {
        options.tags = Some(json!(original.tags));
    }
    if options.metadata.is_none() {
        options.metadata = original.metadata.clone();
    }
    if options.machine.is_none() {
        options.machine = Some(original.machine.name().to_string());
    }
    if options.queue.is_none() && !original.queue.is_empty() {
        options.queue = Some(json!({ "name": original.queue }));
    }
    if options.concurrency_key.is_none() {
        options.concurrency_key = original.concurrency_key.clone();
    }
    let locked = version.or_else(|| options.lock_to_version.clone());
    let deployed = match locked {
        Some(version) => state
            .deployments
            .by_version(&version)
            .await?
            .ok_or_else(|| {
                ApiError::unprocessable(format!("version `{version}` is not deployed"))
            })?,
        None => state
            .deployments
            .current()
            .ok_or_else(|| ApiError::not_found("Nothing is deployed to replay the run on"))?,
    };
    let now = Timestamp::now();
    let key = options.backend_key()?;
    let run = crate::trigger::new_run(
        &deployed,
        &original.task_id,
        &incoming.json,
        incoming.stored,
        incoming.stored_type,
        options,
        now,
    )?;
    // Admitted like any trigger: a replay with an idempotency key is
    // answered by the run the key made.
    let keys = AdmissionKeys {
        key,
        request,
        ..AdmissionKeys::default()
    };
    let (id, _) = state.executor.admit_new(run, keys, now).await?;
    Ok(Json(json!({ "id": id })))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(super) struct RescheduleBody {
    delay: Value,
}

/// `POST /api/v1/runs/{runId}/reschedule` `{delay}`: moves a `DELAYED`
/// run's start; 422 for any other status.
pub(super) async fn reschedule(
    Env(state): Env,
    Path(run_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = RunId::parse(&run_id).map_err(|_| ApiError::not_found("Run not found"))?;
    let body: RescheduleBody = super::json_body(&body)?;
    let at = crate::duration::parse_instant(&body.delay, Timestamp::now())
        .map_err(|e| ApiError::bad_request(format!("delay: {e}")))?;
    match state.executor.reschedule(&id, at).await {
        Ok(run) => Ok(Json(super::run_view::full_view(&state, &run)?)),
        Err(RescheduleError::NotFound) => Err(ApiError::not_found("Run not found")),
        Err(e @ RescheduleError::NotDelayed(_)) => Err(ApiError::unprocessable(e.to_string())),
        Err(RescheduleError::Store(e)) => Err(e.into()),
    }
}

/// `POST /api/v2/runs/{runId}/cancel`: `{id}`, also for a finished run.
pub(super) async fn cancel(
    Env(state): Env,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = RunId::parse(&run_id).map_err(|_| ApiError::not_found("Run not found"))?;
    match state.executor.cancel(&id).await {
        Ok(run) => Ok(Json(json!({ "id": run.id }))),
        Err(CancelError::NotFound) => Err(ApiError::not_found("Run not found")),
        Err(CancelError::Store(e)) => Err(e.into()),
    }
}

/// `GET /api/v1/runs/{runId}/journal`: the run's journal, oldest first
/// (Kiln's own route).
pub(super) async fn journal(
    Env(state): Env,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = RunId::parse(&run_id).map_err(|_| ApiError::not_found("Run not found"))?;
    if state.store.run(&id)?.is_none() {
        return Err(ApiError::not_found("Run not found"));
    }
    let entries: Vec<Value> = state
        .store
        .journal(&id)?
        .into_iter()
        .map(|record| {
            let at = record.at.to_iso();
            let mut value = json!(record);
            value["at"] = json!(at);
            value
        })
        .collect();
    Ok(Json(json!({ "runId": id, "entries": entries })))
}

/// `POST /api/v1/idempotencyKeys/{key}/reset` `{taskIdentifier}`
/// (`idempotencyKeys.reset`): forgets the key on that task; `{id}` of the
/// run it had made, 404 if it made none.
pub(super) async fn reset_idempotency_key(
    Env(state): Env,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: ResetKeyBody = super::json_body(&body)?;
    match state
        .executor
        .reset_idempotency_key(&body.task_identifier, &key)
        .await?
    {
        Some(run) => Ok(Json(json!({ "id": run }))),
        None => Err(ApiError::not_found(format!(
            "No idempotency key `{key}` on task `{}`",
            body.task_identifier
        ))),
    }
}

/// The body of `idempotencyKeys.reset`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ResetKeyBody {
    task_identifier: String,
}
