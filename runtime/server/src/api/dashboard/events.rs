//! `GET /events`: the signed-in environment's run changes as server-sent
//! events, for the pages' live statuses.
//!
//! Each durable commit that wrote runs is one `runs` event: a JSON array
//! of `{id, status}`, read after the commit was durable (the realtime
//! feed's order). A client that fell further behind than the feed
//! remembers gets `refresh` and reloads its page.

use super::Session;
use crate::feed::Since;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use std::convert::Infallible;

/// `GET /events`.
pub(super) async fn stream(
    Session(state): Session,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let feed = state.feed.clone();
    let store = state.store.clone();
    // Subscribed before the offset is read: a change after it wakes the
    // stream.
    let watch = feed.watch();
    let offset = feed.last();
    let events = futures_util::stream::unfold((watch, offset), move |(mut watch, mut offset)| {
        let (feed, store) = (feed.clone(), store.clone());
        async move {
            loop {
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
                            return Some((Ok(event), (watch, offset)));
                        }
                    }
                    Since::Forgotten => {
                        offset = feed.last();
                        let event = Event::default().event("refresh").data("{}");
                        return Some((Ok(event), (watch, offset)));
                    }
                }
                // The server is shutting down when the feed is gone.
                watch.changed().await.ok()?;
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
