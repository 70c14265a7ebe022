//! `GET /api/v1/runs`: runs, newest first, filtered and paged with cursors
//! as Trigger.dev's `runs.list`.

use super::run_view::common_view;
use super::{ApiError, Env};
use crate::run_walk::Walk;
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
    let (page, next, previous) = list_page(&state.store, &filter, after, before, size)?;
    let mut pagination = serde_json::Map::new();
    if let Some(next) = next {
        pagination.insert("next".into(), json!(next));
    }
    if let Some(previous) = previous {
        pagination.insert("previous".into(), json!(previous));
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

/// A page of runs, newest first, and the ids to go on from: `next` (older
/// runs) and `previous` (newer runs).
type Page = (Vec<Run>, Option<RunId>, Option<RunId>);

/// One page of the list, newest first, with the cursors to go on from:
/// `next` (older runs) and `previous` (newer runs). Reads the run index
/// from the cursor, never every run.
fn list_page(
    store: &kiln_store::Store,
    filter: &Filter,
    after: Option<RunId>,
    before: Option<RunId>,
    size: usize,
) -> Result<Page, ApiError> {
    // Newest first. `next` and `previous` are the ids to go on from: the
    // page's last and first, or where a walk stopped short.
    let page = match (&filter.schedule, &after, &before) {
        // A schedule filter reads the schedule's run index.
        (Some(schedule), _, _) => {
            let mut runs = Vec::new();
            for id in store.schedule_runs(schedule)? {
                if let Some(run) = store.run(&id)? {
                    runs.push(run);
                }
            }
            runs.retain(|r| filter.matches(r));
            runs.reverse();
            in_memory(runs, after.as_ref(), before.as_ref(), size)
        }
        (None, _, Some(before)) if after.is_none() => {
            let (mut page, previous) = walk(filter).newer(store, before, size + 1)?.page(size);
            page.reverse();
            // Older runs exist: `before` itself, at least.
            let next = page.last().map(|r| r.id.clone());
            (page, next, previous)
        }
        (None, _, _) => {
            let (page, next) = walk(filter)
                .older(store, after.clone(), size + 1)?
                .page(size);
            // Newer runs exist when the page starts after one.
            let previous = after.as_ref().and(page.first()).map(|r| r.id.clone());
            (page, next, previous)
        }
    };
    Ok(page)
}

/// The most runs one list request reads; a filter that selects few runs
/// among many answers a short page with a `next` cursor where it stopped.
const MAX_WALK: usize = 10_000;
/// Runs read from the index at a time.
const CHUNK: usize = 200;

/// A walk of the run index for a list request.
fn walk(filter: &Filter) -> Walk<impl Fn(&Run) -> bool + '_> {
    Walk {
        from: filter.from,
        to: filter.to,
        chunk: CHUNK,
        limit: MAX_WALK,
        matches: move |run: &Run| filter.matches(run),
    }
}

/// A page of runs already read (newest first), with its cursors.
fn in_memory(runs: Vec<Run>, after: Option<&RunId>, before: Option<&RunId>, size: usize) -> Page {
    let (page, has_newer, has_older) = match (after, before) {
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
            (runs.into_iter().take(size).collect(), false, more)
        }
    };
    let next = page.last().filter(|_| has_older).map(|r| r.id.clone());
    let previous = page.first().filter(|_| has_newer).map(|r| r.id.clone());
    (page, next, previous)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_store::{MemoryBackend, Store};
    use kiln_types::DeploymentId;
    use std::sync::Arc;

    /// A store with `n` runs made a millisecond apart from 1,000; every
    /// even one tagged `even`, the very first tagged `first`.
    async fn store_with(n: u64) -> (Store, Vec<RunId>) {
        let store = Store::new(Arc::new(MemoryBackend::new()));
        let mut ids = Vec::new();
        let mut batch = kiln_store::Batch::default();
        for i in 0..n {
            let mut run = Run::queued(
                RunId::generate(1_000 + i),
                "task",
                DeploymentId::none(),
                "1",
                "{}",
                Timestamp(1_000 + i),
            );
            if i % 2 == 0 {
                run.tags.push("even".into());
            }
            if i == 0 {
                run.tags.push("first".into());
            }
            batch.put_run(&run);
            ids.push(run.id);
        }
        store.commit(batch).await.expect("stored");
        (store, ids)
    }

    fn filter(pairs: &[(&str, &str)]) -> Filter {
        let q: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Filter::parse(&q).expect("a valid filter")
    }

    fn ids(page: &[Run]) -> Vec<RunId> {
        page.iter().map(|r| r.id.clone()).collect()
    }

    #[tokio::test]
    async fn pages_walk_the_index_both_ways() {
        let (store, all) = store_with(30).await;
        let at = |i: usize| all[i].clone();
        let none = filter(&[]);
        let (page, next, previous) = list_page(&store, &none, None, None, 3).unwrap();
        assert_eq!(ids(&page), [at(29), at(28), at(27)]);
        assert_eq!((next, previous), (Some(at(27)), None));

        let (page, next, previous) = list_page(&store, &none, Some(at(27)), None, 3).unwrap();
        assert_eq!(ids(&page), [at(26), at(25), at(24)]);
        assert_eq!((next, previous), (Some(at(24)), Some(at(26))));

        // Back again: the newest page has nothing newer.
        let (page, next, previous) = list_page(&store, &none, None, Some(at(26)), 3).unwrap();
        assert_eq!(ids(&page), [at(29), at(28), at(27)]);
        assert_eq!((next, previous), (Some(at(27)), None));
        let (page, _, previous) = list_page(&store, &none, None, Some(at(20)), 3).unwrap();
        assert_eq!(ids(&page), [at(23), at(22), at(21)]);
        assert_eq!(previous, Some(at(23)));

        // The oldest page has nothing older.
        let (page, next, _) = list_page(&store, &none, Some(at(2)), None, 3).unwrap();
        assert_eq!(ids(&page), [at(1), at(0)]);
        assert_eq!(next, None);

        // A created range seeks its end and stops at its start.
        let range = filter(&[
            ("filter[createdAt][from]", "1010"),
            ("filter[createdAt][to]", "1012"),
        ]);
        let (page, next, _) = list_page(&store, &range, None, None, 5).unwrap();
        assert_eq!(ids(&page), [at(12), at(11), at(10)]);
        assert_eq!(next, None);
        let (page, _, previous) = list_page(&store, &range, None, Some(at(9)), 2).unwrap();
        assert_eq!(ids(&page), [at(11), at(10)]);
        assert_eq!(previous, Some(at(11)));

        let even = filter(&[("filter[tag]", "even")]);
        let (page, next, _) = list_page(&store, &even, None, None, 3).unwrap();
        assert_eq!(ids(&page), [at(28), at(26), at(24)]);
        assert_eq!(next, Some(at(24)));
    }

    #[tokio::test]
    async fn a_sparse_filter_answers_a_short_page_where_its_walk_stopped() {
        let (store, all) = store_with(MAX_WALK as u64 + 50).await;
        let first = filter(&[("filter[tag]", "first")]);
        let (page, next, _) = list_page(&store, &first, None, None, 10).unwrap();
        assert!(page.is_empty(), "the match is past the walk's limit");
        let next = next.expect("a cursor to go on from");
        let (page, next, _) = list_page(&store, &first, Some(next), None, 10).unwrap();
        assert_eq!(ids(&page), [all[0].clone()]);
        assert_eq!(next, None);
    }
}
