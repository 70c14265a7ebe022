//! Queues: list, retrieve, pause and resume (Trigger.dev's `queues.*`).
//!
//! A queue is named by its id (`queue_...`), or by `type` and name: `task`
//! and a task id for a task's own queue, `custom` and the declared name.
//! Kiln also takes a queue's full name with the default `type=id`
//! (`emails`, `task/send-email`; the SDK sends `/` as `%2F`).

use super::{ApiError, AppState, Env};
use crate::executor::QueueView;
use axum::Json;
use axum::extract::{Path, Query};
use kiln_manifest::TASK_QUEUE_PREFIX;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The most queues on one page.
const MAX_PER_PAGE: usize = 100;
/// How many of a queue's busiest `concurrencyKey` lanes retrieve shows.
const LANES_SHOWN: usize = 20;

/// A queue's stable id: derived from its name.
fn queue_id(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    format!("queue_{}", &hex::encode(digest)[..20])
}

/// The queue as Trigger.dev's `QueueItem`, plus Kiln's limits and lanes.
fn view(queue: &QueueView) -> Value {
    let stats = &queue.stats;
    let (kind, name) = match queue.name.strip_prefix(TASK_QUEUE_PREFIX) {
        Some(task) => ("task", task),
        None => ("custom", queue.name.as_str()),
    };
    let mut body = json!({
        "id": queue_id(&queue.name),
        "name": name,
        "type": kind,
        "running": stats.running,
        "queued": stats.queued,
        "concurrencyLimit": stats.limits.concurrency,
        "paused": stats.paused,
        "releaseConcurrencyOnWaitpoint": true,
        "queueName": queue.name,
        "concurrencyLimitTotal": stats.limits.total,
        "effectiveConcurrencyLimit": stats.lane_cap,
        "effectiveTotalLimit": stats.queue_cap,
        "rateLimit": stats.limits.rate.map(|r| json!({
            "limit": r.limit,
            "periodMs": r.period_ms,
            "perKey": r.per_key,
        })),
        "concurrencyKeys": stats.lanes,
    });
    if !queue.lanes.is_empty() {
        body["keys"] = queue
            .lanes
            .iter()
            .map(|(key, queued, running)| json!({"key": key, "queued": queued, "running": running}))
            .collect();
    }
    body
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListQuery {
    page: Option<usize>,
    per_page: Option<usize>,
}

/// `GET /api/v1/queues?page=N&perPage=M`.
pub(super) async fn list(Env(state): Env, Query(query): Query<ListQuery>) -> Json<Value> {
    let page = query.page.unwrap_or(1).max(1);
    let per_page = query.per_page.unwrap_or(20).clamp(1, MAX_PER_PAGE);
    let queues = state.executor.queues();
    let count = queues.len();
    let data: Vec<Value> = queues
        .iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .map(view)
        .collect();
    Json(json!({
        "data": data,
        "pagination": {
            "currentPage": page,
            "totalPages": count.div_ceil(per_page),
            "count": count,
        },
    }))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Named {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// The full queue name a request means.
fn resolve(state: &AppState, param: &str, kind: Option<&str>) -> Result<String, ApiError> {
    match kind.unwrap_or("id") {
        "task" => Ok(format!("{TASK_QUEUE_PREFIX}{param}")),
        "custom" => Ok(param.to_string()),
        "id" => {
            if param.starts_with("queue_") {
                state
                    .executor
                    .queue_names()
                    .into_iter()
                    .find(|name| queue_id(name) == param)
                    .ok_or_else(|| ApiError::not_found(format!("queue {param} not found")))
            } else {
                Ok(param.to_string())
            }
        }
        other => Err(ApiError::bad_request(format!(
            "type `{other}` is not one of id, task, custom"
        ))),
    }
}

fn found(state: &AppState, name: &str) -> Result<QueueView, ApiError> {
    state
        .executor
        .queue(name, LANES_SHOWN)
        .ok_or_else(|| ApiError::not_found(format!("queue `{name}` not found")))
}

/// `GET /api/v1/queues/{queue}?type=id|task|custom`.
pub(super) async fn retrieve(
    Env(state): Env,
    Path(param): Path<String>,
    Query(query): Query<Named>,
) -> Result<Json<Value>, ApiError> {
    let name = resolve(&state, &param, query.kind.as_deref())?;
    Ok(Json(view(&found(&state, &name)?)))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(super) struct PauseBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    action: String,
}

/// `POST /api/v1/queues/{queue}/pause` `{action: "pause"|"resume", type?}`:
/// a paused queue starts no runs (they stay queued); executing runs go on.
/// Kept across restarts.
pub(super) async fn pause(
    Env(state): Env,
    Path(param): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: PauseBody = super::json_body(&body)?;
    let paused = match body.action.as_str() {
        "pause" => true,
        "resume" => false,
        other => {
            return Err(ApiError::bad_request(format!(
                "action `{other}` is neither \"pause\" nor \"resume\""
            )));
        }
    };
    let name = resolve(&state, &param, body.kind.as_deref())?;
    if !state.executor.set_queue_paused(&name, paused).await? {
        return Err(ApiError::not_found(format!("queue `{name}` not found")));
    }
    Ok(Json(view(&found(&state, &name)?)))
}
