//! `GET /realtime/v1/streams/{runId}/{key}`: the chunks a task appends to a
//! realtime stream (`kiln_sdk::streams`), as server-sent events in the
//! format the official SDK's `streams.read` reads (`X-Stream-Version: v1`:
//! one event per chunk, its number as the event id, the chunk's JSON as
//! data).
//!
//! The response sends what the stream holds after `Last-Event-ID` (all of
//! it without one; only what comes next with `X-Trigger-Stream-Start:
//! latest`), then waits on the environment's stream feed for more. It ends
//! once the run has finished and every chunk is sent, or after
//! `Timeout-Seconds` (60 by default) without a new chunk.

use super::access::Caller;
use super::{ApiError, AppState, Env};
use axum::extract::{Extension, Path};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use kiln_types::RunId;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::watch;

/// How long a reader waits when it does not say (`Timeout-Seconds`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a reader may ask to wait.
const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// Chunks read from the store at a time.
const PAGE: usize = 256;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

struct Reader {
    state: AppState,
    run: RunId,
    key: String,
    /// The number of the last chunk sent.
    after: Option<u64>,
    ready: VecDeque<Event>,
    streams: watch::Receiver<u64>,
    runs: watch::Receiver<u64>,
    /// How long to wait for the next chunk.
    timeout: Duration,
    deadline: tokio::time::Instant,
}

impl Reader {
    /// The next event, waiting for one; `None` ends the response.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            self.streams.mark_unchanged();
            self.runs.mark_unchanged();
            // Read whether the run has finished before its chunks: a chunk
            // appended before the finish is then read below.
            let finished = match self.state.store.run(&self.run) {
                Ok(Some(run)) => run.status.is_final(),
                _ => return None,
            };
            let chunks = self
                .state
                .store
                .stream_chunks(&self.run, &self.key, self.after, PAGE)
                .ok()?;
            if let Some((last, _)) = chunks.last() {
                // Chunks are sent once they are durable, as every answer is,
                // and each one restarts the wait for the next.
                self.state.store.settled().await.ok()?;
                self.deadline = tokio::time::Instant::now() + self.timeout;
                self.after = Some(*last);
                self.ready.extend(chunks.into_iter().map(|(n, bytes)| {
                    Event::default()
                        .id(n.to_string())
                        .data(String::from_utf8_lossy(&bytes))
                }));
                continue;
            }
            if finished {
                return None;
            }
            tokio::select! {
                _ = self.streams.changed() => {}
                _ = self.runs.changed() => {}
                _ = tokio::time::sleep_until(self.deadline) => return None,
            }
        }
    }
}

/// `GET /realtime/v1/streams/{runId}/{key}`.
pub(super) async fn read(
    Env(state): Env,
    Path((run_id, key)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let found = super::stored_run(&state, &run_id)?;
    caller.may_read_run(&found)?;
    let run = found.id;
    let after = match header(&headers, "last-event-id") {
        Some(id) => Some(id.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("Last-Event-ID `{id}` is not a chunk number"))
        })?),
        None if header(&headers, "x-trigger-stream-start") == Some("latest") => {
            state.store.stream_len(&run, &key)?.checked_sub(1)
        }
        None => None,
    };
    let timeout = header(&headers, "timeout-seconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
        .min(MAX_TIMEOUT);
    let reader = Reader {
        streams: state.stream_feed.watch(),
        runs: state.feed.watch(),
        state,
        run,
        key,
        after,
        ready: VecDeque::new(),
        timeout,
        deadline: tokio::time::Instant::now() + timeout,
    };
    let events = futures_util::stream::unfold(reader, |mut reader| async move {
        let event = reader.next().await?;
        Some((Ok::<_, std::convert::Infallible>(event), reader))
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert("x-stream-version", HeaderValue::from_static("v1"));
    Ok(response)
}
