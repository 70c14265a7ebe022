//! Realtime streams: chunks a task sends to clients while it runs (an answer
//! token by token, progress lines), read live with the official SDK's
//! `streams.read(runId, key)` or as server-sent events from
//! `GET /realtime/v1/streams/{runId}/{key}`.
//!
//! Each append is journaled with the chunk's number and stored in the same
//! commit, so a replay after a crash never sends a chunk twice.
//!
//! ```ignore
//! use kiln_sdk::streams;
//!
//! for word in ["Kiln", "streams", "words"] {
//!     streams::append("answer", &word)?;
//! }
//! ```
//!
//! A chunk is at most 64 KiB of JSON; a key is 1 to 128 characters.

use crate::TaskError;
use crate::bindings::kiln::task::host;
use serde::Serialize;

/// The key `streams.read(runId)` reads when it is given none.
pub const DEFAULT_KEY: &str = "default";

/// Appends `chunk` to the current run's stream `key`; returns its number in
/// the stream (from 0).
pub fn append(key: &str, chunk: &impl Serialize) -> Result<u64, TaskError> {
    let json = serde_json::to_string(chunk)
        .map_err(|e| TaskError::abort(format!("a stream chunk could not be serialized: {e}")))?;
    host::stream_append(key, &json)
        .map_err(|e| TaskError::from_host("appending to a stream", "StreamError", e))
}

/// Appends every item of `chunks` to the stream `key`, in order; returns how
/// many it appended.
pub fn pipe<T: Serialize>(
    key: &str,
    chunks: impl IntoIterator<Item = T>,
) -> Result<u64, TaskError> {
    let mut n = 0;
    for chunk in chunks {
        append(key, &chunk)?;
        n += 1;
    }
    Ok(n)
}
