//! `GET /events`: the signed-in environment's run changes as server-sent
//! events, for the pages' live statuses.
//!
//! Each durable commit that wrote runs is one `runs` event: a JSON array
//! of `{id, status}`, read after the commit was durable (the realtime
//! feed's order). A client that fell further behind than the feed
//! remembers gets `refresh` and reloads its page; so does one whose key is
//! revoked while it listens (checked at each change and every
//! [`RECHECK`]), and the reload sends it to sign in.

use super::{Session, session_key, signed_in};
use crate::environments::Hub;
use crate::feed::Since;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// How often a quiet stream checks that its key still signs in.
const RECHECK: Duration = Duration::from_secs(15);

/// `GET /events`.
pub(super) async fn stream(
    Session(state): Session,
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let key: Arc<str> = session_key(&headers).unwrap_or_default().into();
    let feed = state.feed.clone();
    let store = state.store.clone();
    // Subscribed before the offset is read: a change after it wakes the
    // stream.
    let watch = feed.watch();
    let offset = feed.last();
    // `None` once the stream has said its last.
    let start = Some((watch, offset));
    let events = futures_util::stream::unfold(start, move |state| {
        let (feed, store) = (feed.clone(), store.clone());
        let (hub, key) = (hub.clone(), key.clone());
        async move {
            let (mut watch, mut offset) = state?;
            loop {
                if !signed_in(&hub, &key) {
                    // The last event: the reload finds no session.
                    let event = Event::default().event("refresh").data("{}");
                    return Some((Ok(event), None));
                }
                // Whatever arrives from here on wakes the next wait.
                watch.mark_unchanged();
                match feed.since(offset) {
                    Since::Changed { runs, until } => {
                        offset = until;
                        let changed: Vec<_> = runs
                            .iter()
                            .filter_map(|id| store.run(id).ok().flatten())
                            .map(|run| json!({ "id": run.id, "status": run.status.as_str() }))
                            .collect();
                        // What an event shows is durable first, as every
                        // answer is; if the store cannot say so, the page
                        // reads everything again.
                        if !changed.is_empty() {
                            let event = match store.settled().await {
                                Ok(()) => Event::default()
                                    .event("runs")
                                    .data(json!(changed).to_string()),
                                Err(_) => Event::default().event("refresh").data("{}"),
                            };
                            return Some((Ok(event), Some((watch, offset))));
                        }
                    }
                    Since::Forgotten => {
                        offset = feed.last();
                        let event = Event::default().event("refresh").data("{}");
                        return Some((Ok(event), Some((watch, offset))));
                    }
                }
                // The server is shutting down when the feed is gone.
                if let Ok(changed) = tokio::time::timeout(RECHECK, watch.changed()).await {
                    changed.ok()?;
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
