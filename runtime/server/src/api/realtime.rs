//! Realtime: run subscriptions over ElectricSQL's HTTP shape protocol (what
//! the official SDK's `runs.subscribeToRun`, `subscribeToRunsWithTag` and
//! `subscribeToBatch` speak), and a plain server-sent-events stream of a
//! run's updates for other clients.
//!
//! A shape is a set of runs: one run, the runs carrying some tags (created
//! in a window, 24 hours by default), or a batch's runs. The first request
//! (`offset=-1`) answers with every row of the shape and `up-to-date`; each
//! later one (`live=true`) waits, up to [`LIVE_POLL`], for a change to a run
//! of the shape after its offset, and answers with the changed rows. The
//! server keeps nothing per subscriber: offsets are positions in the
//! [`Feed`](crate::feed::Feed), and a live poll is a task parked on the
//! feed's watch channel, not a thread or a loop over the store.

use super::access::Caller;
use super::realtime_rows::row;
use super::{ApiError, AppState, Env};
use crate::feed::Since;
use axum::extract::{Extension, Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use kiln_types::{BatchId, Run, RunId, Timestamp};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// How long a live poll waits for a change (Electric's is about 20 s).
pub(crate) const LIVE_POLL: Duration = Duration::from_secs(20);
/// The window of `subscribeToRunsWithTag` when `createdAt` is not given.
const DEFAULT_TAG_WINDOW_MS: u64 = 86_400_000;
/// The widest window `createdAt` may ask for: a week.
const MAX_TAG_WINDOW_MS: u64 = 7 * 86_400_000;

/// What a subscription selects.
#[derive(Debug, Clone)]
enum Shape {
    Run(RunId),
    Tagged { tags: Vec<String>, since: Timestamp },
    Batch(String),
}

impl Shape {
    fn selects(&self, run: &Run) -> bool {
        match self {
            Shape::Run(id) => run.id == *id,
            Shape::Tagged { tags, since } => {
                run.created_at >= *since && tags.iter().all(|t| run.tags.contains(t))
            }
            Shape::Batch(id) => run.batch.as_deref() == Some(id.as_str()),
        }
    }

    /// Every run of the shape now.
    fn runs(&self, state: &AppState) -> Result<Vec<Run>, ApiError> {
        Ok(match self {
            Shape::Run(id) => state.store.run(id)?.into_iter().collect(),
            // The window is the newest end of the run index, read from
            // there back to its start.
            Shape::Tagged { since, .. } => {
                let walk = crate::run_walk::Walk {
                    from: Some(*since),
                    to: None,
                    chunk: 500,
                    limit: usize::MAX,
                    matches: |run: &Run| self.selects(run),
                };
                let mut runs = walk.older(&state.store, None, usize::MAX)?.runs;
                runs.sort_by_key(|r| r.created_at);
                runs
            }
            Shape::Batch(id) => {
                let batch_id =
                    BatchId::parse(id).map_err(|_| ApiError::not_found("Batch not found"))?;
                let record = state
                    .store
                    .batch(&batch_id)?
                    .ok_or_else(|| ApiError::not_found("Batch not found"))?;
                // An unsealed v3 batch lists its runs as items.
                let ids: Vec<RunId> = match (record.expected, record.sealed_at) {
                    (Some(_), None) => state
                        .store
                        .batch_items(&batch_id)?
                        .into_values()
                        .flatten()
                        .collect(),
                    _ => record.runs.clone(),
                };
                let mut runs = Vec::new();
                for id in &ids {
                    if let Some(run) = state.store.run(id)? {
                        runs.push(run);
                    }
                }
                runs
            }
        })
    }
}

/// The Electric query parameters.
struct Poll {
    offset: Option<u64>,
    handle: Option<String>,
    live: bool,
    skip: Vec<String>,
}

impl Poll {
    fn parse(query: &HashMap<String, String>) -> Result<Poll, ApiError> {
        let offset = match query.get("offset").map(String::as_str) {
            None | Some("-1") => None,
            Some(text) => Some(
                text.split('_')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("offset `{text}` is not valid"))
                    })?,
            ),
        };
        Ok(Poll {
            offset,
            handle: query.get("handle").cloned(),
            live: query.get("live").is_some_and(|v| v == "true"),
            skip: list(query.get("skipColumns")),
        })
    }
}

fn list(value: Option<&String>) -> Vec<String> {
    value
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /realtime/v1/runs/{runId}`: one run.
pub(super) async fn run(
    Env(state): Env,
    Path(run_id): Path<String>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let run = super::stored_run(&state, &run_id)?;
    caller.may_read_run(&run)?;
    let id = run.id;
    subscribe(state, Shape::Run(id), 0, &query).await
}

/// `GET /realtime/v1/runs?tags=a,b[&createdAt=1h]`: runs carrying every tag.
pub(super) async fn tagged(
    Env(state): Env,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let tags = list(query.get("tags"));
    if tags.is_empty() {
        return Err(ApiError::bad_request("`tags` names no tag"));
    }
    caller.may_read_tagged(&tags)?;
    // The window's start is fixed when the subscription starts, and kept in
    // its handle.
    let since = match query
        .get("handle")
        .and_then(|h| h.rsplit('-').next())
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(since) => since,
        None => {
            let window = match query.get("createdAt") {
                Some(text) => crate::duration::parse_ms(text)
                    .map_err(|e| ApiError::bad_request(format!("createdAt: {e}")))?
                    .min(MAX_TAG_WINDOW_MS),
                None => DEFAULT_TAG_WINDOW_MS,
            };
            Timestamp::now().as_millis().saturating_sub(window)
        }
    };
    // However the handle came, the window is at most a week; the handle
    // stays as the subscription began (so it keeps matching).
    let window_start = since.max(
        Timestamp::now()
            .as_millis()
            .saturating_sub(MAX_TAG_WINDOW_MS),
    );
    let shape = Shape::Tagged {
        tags,
        since: Timestamp(window_start),
    };
    subscribe(state, shape, since, &query).await
}

/// `GET /realtime/v1/batches/{batchId}`: a batch's runs.
pub(super) async fn batch(
    Env(state): Env,
    Path(batch_id): Path<String>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.may_read_batch(&batch_id)?;
    subscribe(state, Shape::Batch(batch_id), 0, &query).await
}

/// Answers one request of a subscription.
async fn subscribe(
    state: AppState,
    shape: Shape,
    since: u64,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let poll = Poll::parse(query)?;
    let handle = format!("{}-{since}", state.feed.epoch());
    let Some(offset) = poll.offset else {
        // The whole shape, as it is now. The offset is read first, so a
        // change made while the rows are read is sent again, never missed.
        let offset = state.feed.last();
        let mut messages = Vec::new();
        for run in shape.runs(&state)? {
            messages.push(change(&state, &run, "insert", &poll.skip)?);
        }
        return Ok(answer(messages, &handle, offset, false));
    };
    if poll.handle.as_deref() != Some(handle.as_str()) {
        return Ok(must_refetch(&handle));
    }
    let deadline = tokio::time::Instant::now() + LIVE_POLL;
    let mut watch = state.feed.watch();
    let mut offset = offset;
    loop {
        watch.mark_unchanged();
        let (runs, until) = match state.feed.since(offset) {
            Since::Forgotten => return Ok(must_refetch(&handle)),
            Since::Changed { runs, until } => (runs, until),
        };
        let mut messages = Vec::new();
        for id in runs {
            // A one-run shape reads only its run.
            if let Shape::Run(own) = &shape
                && *own != id
            {
                continue;
            }
            if let Some(run) = state.store.run(&id)?
                && shape.selects(&run)
            {
                messages.push(change(&state, &run, "update", &poll.skip)?);
            }
        }
        offset = until;
        if !messages.is_empty() || !poll.live {
            return Ok(answer(messages, &handle, offset, poll.live));
        }
        match tokio::time::timeout_at(deadline, watch.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Ok(answer(Vec::new(), &handle, offset, true)),
        }
    }
}

/// A change message for `run`.
fn change(
    state: &AppState,
    run: &Run,
    operation: &str,
    skip: &[String],
) -> Result<Value, ApiError> {
    let streams = state.store.stream_keys(&run.id)?;
    Ok(json!({
        "key": run.id,
        "value": row(run, &streams, skip),
        "headers": { "operation": operation },
    }))
}

/// A 200 with `messages` and `up-to-date`, and Electric's headers.
fn answer(mut messages: Vec<Value>, handle: &str, offset: u64, live: bool) -> Response {
    messages.push(json!({ "headers": { "control": "up-to-date" } }));
    let mut headers = electric_headers(handle, offset);
    if !live {
        headers.insert("electric-schema", HeaderValue::from_static("{}"));
    }
    headers.insert("electric-up-to-date", HeaderValue::from_static("true"));
    (StatusCode::OK, headers, axum::Json(Value::Array(messages))).into_response()
}

/// Electric's 409: the subscriber starts again from the whole shape.
fn must_refetch(handle: &str) -> Response {
    let headers = electric_headers(handle, 0);
    (
        StatusCode::CONFLICT,
        headers,
        axum::Json(json!([{ "headers": { "control": "must-refetch" } }])),
    )
        .into_response()
}

fn electric_headers(handle: &str, offset: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    put("electric-handle", handle.to_string());
    put("electric-offset", format!("{offset}_0"));
    put("electric-cursor", offset.to_string());
    put(
        "access-control-expose-headers",
        "electric-offset, electric-handle, electric-schema, electric-cursor, electric-up-to-date"
            .into(),
    );
    put("cache-control", "no-store".into());
    headers
}

/// `GET /realtime/v1/events/runs/{runId}`: server-sent events, one `run`
/// event (the run as `GET /api/v3/runs/{id}` shows it, without its related
/// runs) now and after each change, until the run finishes.
pub(super) async fn run_events(
    Env(state): Env,
    Path(run_id): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let run = super::stored_run(&state, &run_id)?;
    caller.may_read_run(&run)?;
    let id = run.id;
    struct Cursor {
        state: AppState,
        id: RunId,
        watch: tokio::sync::watch::Receiver<u64>,
        offset: Option<u64>,
        done: bool,
    }
    let cursor = Cursor {
        watch: state.feed.watch(),
        offset: None,
        state,
        id,
        done: false,
    };
    let stream = futures_util::stream::unfold(cursor, |mut c| async move {
        if c.done {
            return None;
        }
        loop {
            c.watch.mark_unchanged();
            let changed = match c.offset {
                None => {
                    c.offset = Some(c.state.feed.last());
                    true
                }
                Some(offset) => match c.state.feed.since(offset) {
                    Since::Forgotten => {
                        c.offset = Some(c.state.feed.last());
                        true
                    }
                    Since::Changed { runs, until } => {
                        c.offset = Some(until);
                        runs.contains(&c.id)
                    }
                },
            };
            if changed {
                let run = match c.state.store.run(&c.id) {
                    Ok(Some(run)) => run,
                    _ => return None,
                };
                c.done = run.status.is_final();
                // What an event shows is durable first, as every answer is.
                if c.state.store.settled().await.is_err() {
                    return None;
                }
                let view = super::run_view::full_view(&c.state, &run).unwrap_or(Value::Null);
                let event = Event::default().event("run").data(view.to_string());
                return Some((Ok::<_, std::convert::Infallible>(event), c));
            }
            if c.watch.changed().await.is_err() {
                return None;
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// `GET /realtime/v1/events/runs`: server-sent events, one `run` event (the
/// run as a list item shows it) for every change to any run of the
/// environment from now on, for dashboards and other watchers. A watcher
/// that falls more than the feed remembers behind gets a `reset` event:
/// what it holds may be stale, and it should list the runs again.
pub(super) async fn all_run_events(Env(state): Env) -> Response {
    struct Watcher {
        state: AppState,
        watch: tokio::sync::watch::Receiver<u64>,
        offset: u64,
        ready: std::collections::VecDeque<Event>,
    }
    let watcher = Watcher {
        watch: state.feed.watch(),
        offset: state.feed.last(),
        state,
        ready: std::collections::VecDeque::new(),
    };
    let stream = futures_util::stream::unfold(watcher, |mut w| async move {
        loop {
            if let Some(event) = w.ready.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(event), w));
            }
            w.watch.mark_unchanged();
            match w.state.feed.since(w.offset) {
                Since::Forgotten => {
                    w.offset = w.state.feed.last();
                    w.ready
                        .push_back(Event::default().event("reset").data("{}"));
                }
                Since::Changed { runs, until } => {
                    w.offset = until;
                    for id in runs {
                        if let Ok(Some(run)) = w.state.store.run(&id) {
                            let view = Value::Object(super::run_view::common_view(&run));
                            w.ready
                                .push_back(Event::default().event("run").data(view.to_string()));
                        }
                    }
                }
            }
            if !w.ready.is_empty() {
                // What an event shows is durable first, as every answer is.
                w.state.store.settled().await.ok()?;
                continue;
            }
            w.watch.changed().await.ok()?;
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
