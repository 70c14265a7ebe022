//! Schedules in Trigger.dev's wire format (`/api/v1/schedules`) and the time
//! zone list.

use super::{ApiError, AppState, Env};
use crate::schedules::{ScheduleError, ScheduleInput};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query};
use kiln_types::{Schedule, ScheduleId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The most schedules one page lists.
const MAX_PER_PAGE: usize = 100;

impl From<ScheduleError> for ApiError {
    fn from(error: ScheduleError) -> Self {
        match error {
            ScheduleError::NotFound => ApiError::not_found("Schedule not found"),
            ScheduleError::Invalid(message) => ApiError::unprocessable(message),
            ScheduleError::Store(e) => e.into(),
        }
    }
}

pub(super) fn schedule_id(id: &str) -> Result<ScheduleId, ApiError> {
    ScheduleId::parse(id).map_err(|_| ApiError::not_found("Schedule not found"))
}

/// The wire name of an environment's type.
pub(super) fn environment_type(name: &str) -> &'static str {
    match name {
        "prod" | "production" => "PRODUCTION",
        "staging" => "STAGING",
        "preview" => "PREVIEW",
        _ => "DEVELOPMENT",
    }
}

/// The `generator` of a cron expression.
pub(super) fn generator(cron: &str) -> Value {
    let description = kiln_cron::CronSchedule::parse(cron, "UTC")
        .map(|c| c.describe())
        .unwrap_or_default();
    json!({ "type": "CRON", "expression": cron, "description": description })
}

/// A schedule as the SDK's `ScheduleObject`.
pub(super) fn view(schedule: &Schedule, state: &AppState) -> Value {
    let environment: &str = &state.environment;
    let mut map = Map::new();
    map.insert("id".into(), json!(schedule.id));
    map.insert("type".into(), json!(schedule.kind.as_str()));
    map.insert("task".into(), json!(schedule.task_id));
    map.insert("active".into(), json!(schedule.active));
    map.insert("generator".into(), generator(&schedule.cron));
    map.insert("timezone".into(), json!(schedule.timezone));
    map.insert(
        "environments".into(),
        json!([{ "id": &*state.env_id, "type": environment_type(environment) }]),
    );
    if let Some(key) = &schedule.deduplication_key {
        map.insert("deduplicationKey".into(), json!(key));
    }
    if let Some(external) = &schedule.external_id {
        map.insert("externalId".into(), json!(external));
    }
    if let Some(next) = schedule.next_run {
        map.insert("nextRun".into(), json!(next.to_iso()));
    }
    if let Some(last) = schedule.last_timestamp {
        map.insert("lastRun".into(), json!(last.to_iso()));
    }
    map.insert("createdAt".into(), json!(schedule.created_at.to_iso()));
    map.insert("updatedAt".into(), json!(schedule.updated_at.to_iso()));
    Value::Object(map)
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "ScheduleCreateBody")]
pub(super) struct CreateBody {
    task: String,
    cron: String,
    deduplication_key: Option<String>,
    external_id: Option<String>,
    timezone: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "ScheduleUpdateBody")]
pub(super) struct UpdateBody {
    task: String,
    cron: String,
    external_id: Option<String>,
    timezone: Option<String>,
}

/// `POST /api/v1/schedules`: create, or update the schedule with the same
/// `deduplicationKey`.
pub(super) async fn create(Env(state): Env, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    let b: CreateBody = super::json_body(&bytes)?;
    let schedule = state
        .schedules
        .create(ScheduleInput {
            task: b.task,
            cron: b.cron,
            timezone: b.timezone,
            external_id: b.external_id,
            deduplication_key: b.deduplication_key,
        })
        .await?;
    Ok(Json(view(&schedule, &state)))
}

/// `GET /api/v1/schedules/{id}`.
pub(super) async fn retrieve(
    Env(state): Env,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let schedule = state.schedules.get(&schedule_id(&id)?)?;
    Ok(Json(view(&schedule, &state)))
}

/// `PUT /api/v1/schedules/{id}`.
pub(super) async fn update(
    Env(state): Env,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = schedule_id(&id)?;
    let b: UpdateBody = super::json_body(&bytes)?;
    let schedule = state
        .schedules
        .update(
            &id,
            ScheduleInput {
                task: b.task,
                cron: b.cron,
                timezone: b.timezone,
                external_id: b.external_id,
                deduplication_key: None,
            },
        )
        .await?;
    Ok(Json(view(&schedule, &state)))
}

/// `POST /api/v1/schedules/{id}/activate`.
pub(super) async fn activate(
    Env(state): Env,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let schedule = state.schedules.activate(&schedule_id(&id)?).await?;
    Ok(Json(view(&schedule, &state)))
}

/// `POST /api/v1/schedules/{id}/deactivate`.
pub(super) async fn deactivate(
    Env(state): Env,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let schedule = state.schedules.deactivate(&schedule_id(&id)?).await?;
    Ok(Json(view(&schedule, &state)))
}

/// `DELETE /api/v1/schedules/{id}` -> `{id}`.
pub(super) async fn delete(
    Env(state): Env,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let schedule = state.schedules.delete(&schedule_id(&id)?).await?;
    Ok(Json(json!({ "id": schedule.id })))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListQuery {
    page: Option<usize>,
    per_page: Option<usize>,
    external_id: Option<String>,
}

/// `GET /api/v1/schedules?page=N&perPage=M` (Kiln also takes
/// `externalId=...`).
pub(super) async fn list(
    Env(state): Env,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = query.page.unwrap_or(1).max(1);
    let per_page = query.per_page.unwrap_or(20).clamp(1, MAX_PER_PAGE);
    let (schedules, count) = state
        .schedules
        .list(page, per_page, query.external_id.as_deref())?;
    Ok(Json(json!({
        "data": schedules.iter().map(|s| view(s, &state)).collect::<Vec<_>>(),
        "pagination": {
            "currentPage": page,
            "totalPages": count.div_ceil(per_page),
            "count": count,
        },
    })))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TimezonesQuery {
    #[serde(default)]
    exclude_utc: bool,
}

/// `GET /api/v1/timezones[?excludeUtc=true]`, without auth.
pub(super) async fn timezones(Query(query): Query<TimezonesQuery>) -> Json<Value> {
    let zones: Vec<&str> = kiln_cron::timezones()
        .into_iter()
        .filter(|z| !(query.exclude_utc && *z == "UTC"))
        .collect();
    Json(json!({ "timezones": zones }))
}
