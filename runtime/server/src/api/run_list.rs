//! `GET /api/v1/runs`: runs, newest first, filtered and paged with cursors
//! as Trigger.dev's `runs.list`.

use super::runs::common_view;
use super::{ApiError, Env};
use axum::Json;
use axum::extract::Query;
use kiln_types::{Run, RunId, RunStatus, ScheduleId, Timestamp};
use serde_json::{Value, json};
use std::collections::HashMap;

/// The most runs one page lists.
const MAX_PAGE: usize = 100;
/// Runs per page unless `page[size]` says otherwise.
const DEFAULT_PAGE: usize = 25;

/// The filters of a list request.
#[derive(Debug, Default)]
struct Filter {
    status: Option<Vec<RunStatus>>,
    task: Option<Vec<String>>,
    version: Option<Vec<String>>,
    tag: Option<Vec<String>>,
    machine: Option<Vec<String>>,
    queue: Option<Vec<String>>,
    schedule: Option<ScheduleId>,
    batch: Option<String>,
    is_test: Option<bool>,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
}

fn list_of(q: &HashMap<String, String>, name: &str) -> Option<Vec<String>> {
    q.get(name).map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    })
}

impl Filter {
    fn parse(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let status = match list_of(q, "filter[status]") {
            Some(names) => Some(
                names
                    .iter()
                    .map(|n| {
                        RunStatus::parse(n).ok_or_else(|| {
                            ApiError::bad_request(format!("filter[status]: unknown status `{n}`"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let ms = |name: &str| -> Result<Option<Timestamp>, ApiError> {
            q.get(name)
                .map(|v| {
                    v.parse::<u64>().map(Timestamp).map_err(|_| {
                        ApiError::bad_request(format!(
                            "{name} must be milliseconds since the epoch"
                        ))
                    })
                })
                .transpose()
        };
        let mut from = ms("filter[createdAt][from]")?;
        if let Some(period) = q.get("filter[createdAt][period]") {
            let span = crate::duration::parse_ms(period)
                .map_err(|e| ApiError::bad_request(format!("filter[createdAt][period]: {e}")))?;
            from = Some(Timestamp(Timestamp::now().as_millis().saturating_sub(span)));
        }
        let is_test = match q.get("filter[isTest]").map(String::as_str) {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "filter[isTest] must be true or false, not `{other}`"
                )));
            }
        };
        // An id that cannot exist matches no run.
        let schedule = q
            .get("filter[schedule]")
            .map(|id| ScheduleId::parse(id).unwrap_or_else(|_| ScheduleId::generate(0)));
        Ok(Filter {
            status,
            task: list_of(q, "filter[taskIdentifier]"),
            version: list_of(q, "filter[version]"),
            tag: list_of(q, "filter[tag]"),
            machine: list_of(q, "filter[machine]"),
            queue: list_of(q, "filter[queue]"),
            schedule,
            batch: q.get("filter[batch]").cloned(),
            is_test,
            from,
            to: ms("filter[createdAt][to]")?,
        })
    }

    fn matches(&self, run: &Run) -> bool {
        fn any<T: PartialEq>(list: &Option<Vec<T>>, value: &T) -> bool {
            list.as_ref().is_none_or(|l| l.contains(value))
        }
        any(&self.status, &run.status)
            && any(&self.task, &run.task_id)
            && any(&self.version, &run.version)
            && any(&self.machine, &run.machine.name().to_string())
            && self.queue.as_ref().is_none_or(|queues| {
                let name = run.queue_name();
                // A task's own queue may be named `task/<id>` or by the id.
                queues.iter().any(|q| {
                    *q == name || name.strip_prefix(kiln_manifest::TASK_QUEUE_PREFIX) == Some(q)
                })
            })
            && self
                .tag
                .as_ref()
                .is_none_or(|tags| run.tags.iter().any(|t| tags.contains(t)))
            && self
                .schedule
                .as_ref()
                .is_none_or(|s| run.schedule.as_ref().is_some_and(|rs| &rs.id == s))
            && self
                .batch
                .as_ref()
                .is_none_or(|b| run.batch.as_ref() == Some(b))
            && self.is_test.is_none_or(|t| run.is_test == t)
            && self.from.is_none_or(|f| run.created_at >= f)
            && self.to.is_none_or(|t| run.created_at <= t)
    }
}

/// `GET /api/v1/runs`.
pub(super) async fn list(
    Env(state): Env,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let filter = Filter::parse(&q)?;
    let size = match q.get("page[size]") {
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("page[size] must be 1 to {MAX_PAGE}")))?,
        None => DEFAULT_PAGE,
    };
    let cursor = |name: &str| -> Result<Option<RunId>, ApiError> {
        q.get(name)
            .map(|id| {
                RunId::parse(id)
                    .map_err(|_| ApiError::bad_request(format!("{name}: `{id}` is not a run id")))
            })
            .transpose()
    };
    let after = cursor("page[after]")?;
    let before = cursor("page[before]")?;
    // Newest first. A schedule filter reads the schedule's run index
    // rather than every run.
    let mut runs: Vec<Run> = match &filter.schedule {
        Some(schedule) => {
            let mut runs = Vec::new();
            for id in state.store.schedule_runs(schedule)? {
                if let Some(run) = state.store.run(&id)? {
                    runs.push(run);
                }
            }
            runs
        }
        None => state.store.runs()?,
    };
    runs.retain(|r| filter.matches(r));
    runs.reverse();
    let (page, has_newer, has_older) = match (&after, &before) {
        (Some(after), _) => {
            let older: Vec<Run> = runs.into_iter().filter(|r| r.id < *after).collect();
            let more = older.len() > size;
            (older.into_iter().take(size).collect::<Vec<_>>(), true, more)
        }
        (None, Some(before)) => {
            let newer: Vec<Run> = runs.into_iter().filter(|r| r.id > *before).collect();
            let skip = newer.len().saturating_sub(size);
            (newer.into_iter().skip(skip).collect(), skip > 0, true)
        }
        (None, None) => {
            let more = runs.len() > size;
            runs.truncate(size);
            (runs, false, more)
        }
    };
    let mut pagination = serde_json::Map::new();
    if has_older && let Some(last) = page.last() {
        pagination.insert("next".into(), json!(last.id));
    }
    if has_newer && let Some(first) = page.first() {
        pagination.insert("previous".into(), json!(first.id));
    }
    let env = json!({ "id": &*state.env_id, "name": &*state.environment });
    let data: Vec<Value> = page
        .iter()
        .map(|run| {
            let mut item = common_view(run);
            item.insert("env".into(), env.clone());
            Value::Object(item)
        })
        .collect();
    Ok(Json(json!({ "data": data, "pagination": pagination })))
}
