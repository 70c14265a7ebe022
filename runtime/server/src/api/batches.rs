//! Backend batches through Trigger.dev's two-phase v3 batch API:
//! `POST /api/v3/batches` opens a batch for `runCount` items, `POST
//! /api/v3/batches/{id}/items` streams them as NDJSON (`{index, task,
//! payload?, options?}` per line), and `GET /api/v2/batches/{id}` reads it.
//!
//! Items are read one line at a time as the body streams in, so a batch of
//! thousands of items never sits in memory whole. Each index makes at most
//! one run: an index already stored is counted as deduplicated, which is
//! what makes the SDK's re-sends of an unsealed stream safe. Runs are
//! committed with their item entries in chunks and queued once durable.
//! An item that makes no run (unknown task, invalid payload) is recorded
//! with its index and reason. Once every index is processed the batch is
//! sealed: `COMPLETED`, or `PARTIAL_FAILED` if any item failed.

use super::runs::incoming_payload;
use super::{ApiError, AppState};
use crate::trigger::TriggerOptions;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use futures_util::StreamExt;
use kiln_store::{BatchItemError, BatchRecord};
use kiln_types::{BatchId, Run, Timestamp};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The most items one v3 batch may hold.
pub(crate) const MAX_V3_BATCH: u32 = 10_000;
/// Items committed together.
const CHUNK: usize = 200;
/// The longest NDJSON line (an item with a payload at the cap).
const MAX_LINE: usize = 10 * 1024 * 1024 + 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    run_count: u32,
}

/// `POST /api/v3/batches` `{runCount, ...}` -> 202 `{id, runCount,
/// isCached}`.
pub(super) async fn create(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, HeaderMap, Json<Value>), ApiError> {
    let body: CreateBody = super::json_body(&body)?;
    if body.run_count == 0 || body.run_count > MAX_V3_BATCH {
        return Err(ApiError::bad_request(format!(
            "runCount must be 1 to {MAX_V3_BATCH}, not {}",
            body.run_count
        )));
    }
    let now = Timestamp::now();
    let record = BatchRecord {
        id: BatchId::generate(now.as_millis()),
        parent: None,
        runs: Vec::new(),
        created_at: now,
        expected: Some(body.run_count),
        errors: Vec::new(),
        sealed_at: None,
    };
    let mut batch = kiln_store::Batch::default();
    batch.put_batch(&record);
    state.store.commit(batch).await?;
    let headers = super::runs::jwt_header(&state, &format!("read:batch:{}", record.id), now);
    Ok((
        StatusCode::ACCEPTED,
        headers,
        Json(json!({ "id": record.id, "runCount": body.run_count, "isCached": false })),
    ))
}

#[derive(Debug, Deserialize)]
struct Item {
    index: u32,
    task: String,
    payload: Option<Value>,
    #[serde(default)]
    options: TriggerOptions,
}

/// What one items request did.
#[derive(Default)]
struct Tally {
    accepted: u32,
    deduplicated: u32,
}

/// `POST /api/v3/batches/{id}/items`, NDJSON -> `{id, itemsAccepted,
/// itemsDeduplicated, sealed, enqueuedCount, expectedCount}`.
pub(super) async fn items(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::not_found("Batch not found");
    let batch_id = BatchId::parse(&id).map_err(|_| not_found())?;
    // One stream at a time: a re-send racing the first cannot make an
    // index twice.
    let _serial = state.idempotency.lock().await;
    let mut record = state.store.batch(&batch_id)?.ok_or_else(not_found)?;
    let Some(expected) = record.expected else {
        return Err(ApiError::unprocessable(
            "This batch was made by a task, not through the batch API",
        ));
    };
    let mut done = state.store.batch_items(&batch_id)?;
    let mut tally = Tally::default();
    let mut pending: Vec<(u32, String, Result<Run, String>)> = Vec::new();
    let mut stream = body.into_data_stream();
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let chunk = stream.next().await;
        let finished = chunk.is_none();
        if let Some(chunk) = chunk {
            let chunk = chunk
                .map_err(|e| ApiError::bad_request(format!("reading the items failed: {e}")))?;
            buffer.extend_from_slice(&chunk);
        }
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            take_line(&state, &line, expected, &mut done, &mut pending, &mut tally)?;
        }
        if buffer.len() > MAX_LINE {
            return Err(ApiError::too_large(format!(
                "an item line is over {MAX_LINE} bytes"
            )));
        }
        if pending.len() >= CHUNK || finished {
            flush(&state, &batch_id, &mut pending, &mut record, &mut done).await?;
        }
        if finished {
            break;
        }
    }
    if !buffer.is_empty() {
        let line = std::mem::take(&mut buffer);
        take_line(&state, &line, expected, &mut done, &mut pending, &mut tally)?;
        flush(&state, &batch_id, &mut pending, &mut record, &mut done).await?;
    }
    let processed = done.len() as u32;
    if processed == expected && record.sealed_at.is_none() {
        let now = Timestamp::now();
        record.sealed_at = Some(now);
        record.runs = done.values().flatten().cloned().collect();
        let mut batch = kiln_store::Batch::default();
        batch.put_batch(&record);
        state.store.commit(batch).await?;
    }
    Ok(Json(json!({
        "id": batch_id,
        "itemsAccepted": tally.accepted,
        "itemsDeduplicated": tally.deduplicated,
        "sealed": record.sealed_at.is_some(),
        "enqueuedCount": processed,
        "expectedCount": expected,
    })))
}

/// Reads one NDJSON line into a run (or an item error), unless its index
/// was already taken.
fn take_line(
    state: &AppState,
    line: &[u8],
    expected: u32,
    done: &mut BTreeMap<u32, Option<kiln_types::RunId>>,
    pending: &mut Vec<(u32, String, Result<Run, String>)>,
    tally: &mut Tally,
) -> Result<(), ApiError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let item: Item = serde_json::from_slice(line)
        .map_err(|e| ApiError::bad_request(format!("an item line is not an item: {e}")))?;
    if item.index >= expected {
        return Err(ApiError::bad_request(format!(
            "item index {} is outside the batch's runCount of {expected}",
            item.index
        )));
    }
    if done.contains_key(&item.index) || pending.iter().any(|(i, _, _)| *i == item.index) {
        tally.deduplicated += 1;
        return Ok(());
    }
    tally.accepted += 1;
    let (index, task) = (item.index, item.task.clone());
    pending.push((index, task, make_run(state, item)));
    Ok(())
}

fn make_run(state: &AppState, item: Item) -> Result<Run, String> {
    let deployed = state
        .deployments
        .current()
        .ok_or_else(|| "nothing is deployed".to_string())?;
    let mut options = item.options;
    let incoming =
        incoming_payload(&state.store, item.payload, &mut options).map_err(|e| e.message)?;
    crate::trigger::new_run(
        &deployed,
        &item.task,
        &incoming.json,
        incoming.stored,
        incoming.stored_type,
        options,
        Timestamp::now(),
    )
    .map_err(|e| e.message().to_string())
}

/// Commits pending items (runs, item entries, errors), counts them as
/// done, and queues the runs.
async fn flush(
    state: &AppState,
    batch_id: &BatchId,
    pending: &mut Vec<(u32, String, Result<Run, String>)>,
    record: &mut BatchRecord,
    done: &mut BTreeMap<u32, Option<kiln_types::RunId>>,
) -> Result<(), ApiError> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut batch = kiln_store::Batch::default();
    let mut runs = Vec::new();
    for (index, task, outcome) in pending.drain(..) {
        match outcome {
            Ok(run) => {
                batch
                    .put_new_run(&run)
                    .put_batch_item(batch_id, index, Some(&run.id));
                done.insert(index, Some(run.id.clone()));
                runs.push(run);
            }
            Err(error) => {
                batch.put_batch_item(batch_id, index, None);
                done.insert(index, None);
                record.errors.push(BatchItemError { index, task, error });
            }
        }
    }
    batch.put_batch(record);
    state.store.commit(batch).await?;
    for run in &runs {
        state.executor.admit(run);
    }
    Ok(())
}

/// `GET /api/v2/batches/{id}`.
pub(super) async fn retrieve(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::not_found("Batch not found");
    let batch_id = BatchId::parse(&id).map_err(|_| not_found())?;
    let record = state.store.batch(&batch_id)?.ok_or_else(not_found)?;
    let run_count = record.expected.unwrap_or(record.runs.len() as u32);
    let runs: Vec<String> = match record.expected {
        Some(_) if record.sealed_at.is_none() => state
            .store
            .batch_items(&batch_id)?
            .into_values()
            .flatten()
            .map(|r| r.to_string())
            .collect(),
        _ => record.runs.iter().map(|r| r.to_string()).collect(),
    };
    let status = match (record.expected, record.sealed_at) {
        (Some(_), None) => "PENDING",
        _ if record.errors.is_empty() => "COMPLETED",
        _ => "PARTIAL_FAILED",
    };
    let mut processing = serde_json::Map::new();
    if let Some(at) = record
        .sealed_at
        .or((record.expected.is_none()).then_some(record.created_at))
    {
        processing.insert("completedAt".into(), json!(at.to_iso()));
    }
    processing.insert(
        "errors".into(),
        json!(
            record
                .errors
                .iter()
                .map(|e| json!({"index": e.index, "taskIdentifier": e.task, "error": e.error}))
                .collect::<Vec<_>>()
        ),
    );
    Ok(Json(json!({
        "id": record.id,
        "status": status,
        "createdAt": record.created_at.to_iso(),
        "updatedAt": record.sealed_at.unwrap_or(record.created_at).to_iso(),
        "runCount": run_count,
        "runs": runs,
        "processing": processing,
    })))
}
