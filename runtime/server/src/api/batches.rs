//! Backend batches through Trigger.dev's two-phase v3 batch API:
//! `POST /api/v3/batches` opens a batch for `runCount` items, `POST
//! /api/v3/batches/{id}/items` streams them as NDJSON (`{index, task,
//! payload?, options?}` per line), and `GET /api/v2/batches/{id}` reads it.
//!
//! Items are read one line at a time as the body streams in, so a batch of
//! thousands of items never sits in memory whole. Each index makes at most
//! one run: an index already stored is counted as deduplicated, which is
//! what makes the SDK's re-sends of an unsealed stream safe. Runs are
//! committed with their item entries in chunks, and queued as each chunk is
//! handed to the store (they execute while it is made durable; the stream
//! is answered once every chunk is).
//! An item that makes no run (unknown task, invalid payload) is recorded
//! with its index and reason. Once every index is processed the batch is
//! sealed: `COMPLETED`, or `PARTIAL_FAILED` if any item failed.

use super::access::Caller;
use super::runs::incoming_payload;
use super::{ApiError, AppState, Env};
use crate::deployments::Deployed;
use crate::executor::Executor;
use crate::executor::admission::IdempotencyKey;
use crate::trigger::TriggerOptions;
use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path};
use axum::http::{HeaderMap, StatusCode};
use futures_util::StreamExt;
use kiln_store::{BatchItemError, BatchKey, BatchRecord};
use kiln_types::{BatchId, ParentRun, Run, Timestamp};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The most items one v3 batch may hold.
pub(crate) const MAX_V3_BATCH: u32 = 10_000;
/// Items committed together.
const CHUNK: usize = 200;
/// The longest NDJSON line (an item with a payload at the cap).
const MAX_LINE: usize = 10 * 1024 * 1024 + 64 * 1024;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "BatchCreateBody")]
pub(super) struct CreateBody {
    run_count: u32,
    /// The batch's idempotency key (the SDK's hash), its user form and TTL,
    /// read as for a trigger.
    #[serde(flatten)]
    options: TriggerOptions,
    /// The run the batch's runs become children of.
    parent_run_id: Option<String>,
    #[serde(default)]
    resume_parent_on_completion: bool,
    /// The tasks the items will trigger (checked against a public token's
    /// scopes).
    #[serde(default)]
    task_identifiers: Vec<String>,
}

/// `POST /api/v3/batches` `{runCount, ...}` -> 202 `{id, runCount,
/// isCached}`. A public access token may create a batch of the tasks its
/// `batchTrigger` scopes name; a one-time token creates one batch.
pub(super) async fn create(
    Env(state): Env,
    Extension(caller): Extension<Caller>,
    request_headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, HeaderMap, Json<Value>), ApiError> {
    // The SDK's retry of a create whose answer it lost finds the batch the
    // first attempt made.
    let request = super::runs::request_key(&state, &request_headers)?;
    let body: CreateBody = super::json_work(body.len(), move || super::json_body(&body)).await??;
    for task in &body.task_identifiers {
        caller.may_batch_trigger(task)?;
    }
    if caller.public().is_some() && body.task_identifiers.is_empty() {
        caller.may_batch_trigger_some()?;
    }
    if body.run_count == 0 || body.run_count > MAX_V3_BATCH {
        return Err(ApiError::bad_request(format!(
            "runCount must be 1 to {MAX_V3_BATCH}, not {}",
            body.run_count
        )));
    }
    if body.resume_parent_on_completion {
        return Err(ApiError::unprocessable(
            "resumeParentOnCompletion is for runs inside Trigger.dev's workers; a Kiln task waits on a batch with kiln_sdk's batch_trigger_and_wait",
        ));
    }
    let parent = match &body.parent_run_id {
        Some(id) => Some(super::stored_run(&state, id)?.id),
        None => None,
    };
    let now = Timestamp::now();
    let key = body.options.backend_key()?;
    let user_key = body
        .options
        .idempotency_key_options
        .as_ref()
        .and_then(|o| o.key.clone());
    let _request = match &request {
        Some(request) => Some(state.executor.lock_key(&request.hash).await),
        None => None,
    };
    // A one-time token is used up by the batch it creates, in the batch's
    // own commit.
    let one_time = caller.public().filter(|t| t.one_time).map(|token| {
        let left_secs = token.expires_secs.saturating_sub(now.as_millis() / 1000);
        crate::executor::admission::one_time_key(&token.token, (left_secs + 60) * 1000)
    });
    let _serial = state
        .executor
        .serialize_triggers(key.is_some() || one_time.is_some())
        .await;
    if let Some(request) = &request
        && let Some(entry) = state.store.batch_by_key(&request.hash)?
        && entry.expires_at > now
        && let Some(record) = state.store.batch(&entry.batch)?
    {
        let headers = super::runs::jwt_header(&state, &format!("read:batch:{}", record.id), now);
        let answer = json!({
            "id": record.id,
            "runCount": record.expected.unwrap_or(record.runs.len() as u32),
            "isCached": false,
        });
        return Ok((StatusCode::ACCEPTED, headers, Json(answer)));
    }
    if let Some(key) = &key
        && let Some(entry) = state.store.batch_by_key(&key.hash)?
        && entry.expires_at > now
        && let Some(record) = state.store.batch(&entry.batch)?
    {
        let headers = super::runs::jwt_header(&state, &format!("read:batch:{}", record.id), now);
        let mut answer = json!({
            "id": record.id,
            "runCount": record.expected.unwrap_or(record.runs.len() as u32),
            "isCached": true,
        });
        if let Some(k) = entry.user_key {
            answer["idempotencyKey"] = json!(k);
        }
        return Ok((StatusCode::OK, headers, Json(answer)));
    }
    if let Some(used) = &one_time
        && (state.store.batch_by_key(&used.hash)?.is_some()
            || state.store.idempotent_run(&used.hash)?.is_some())
    {
        return Err(ApiError::unauthorized(
            "this one-time public access token has already been used",
        ));
    }
    let record = BatchRecord {
        id: BatchId::generate(now.as_millis()),
        parent,
        runs: Vec::new(),
        created_at: now,
        expected: Some(body.run_count),
        errors: Vec::new(),
        sealed_at: None,
        // Only the token that made it may send its items.
        token: caller.public().map(|t| token_hash(&t.token)),
    };
    let mut batch = kiln_store::Batch::default();
    batch.put_batch(&record);
    if let Some(key) = &key {
        batch.put_batch_key(
            &key.hash,
            &BatchKey {
                batch: record.id.clone(),
                expires_at: Timestamp(now.as_millis().saturating_add(key.ttl_ms)),
                user_key: user_key.clone(),
            },
        );
    }
    for used in [&one_time, &request].into_iter().flatten() {
        batch.put_batch_key(
            &used.hash,
            &BatchKey {
                batch: record.id.clone(),
                expires_at: Timestamp(now.as_millis().saturating_add(used.ttl_ms)),
                user_key: None,
            },
        );
    }
    state.store.commit(batch).await?;
    let headers = super::runs::jwt_header(&state, &format!("read:batch:{}", record.id), now);
    let mut answer = json!({ "id": record.id, "runCount": body.run_count, "isCached": false });
    if let Some(k) = user_key {
        answer["idempotencyKey"] = json!(k);
    }
    Ok((StatusCode::ACCEPTED, headers, Json(answer)))
}

#[derive(Debug, Deserialize)]
struct Item {
    index: u32,
    task: String,
    payload: Option<Value>,
    #[serde(default)]
    options: TriggerOptions,
}

/// How a batch remembers the public token that created it.
fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// An item read but not yet committed: its index, task, and its run with
/// its idempotency key (or why it makes none).
type PendingItem = (u32, String, Result<(Run, Option<IdempotencyKey>), String>);

/// What one items request did.
#[derive(Default)]
struct Tally {
    accepted: u32,
    deduplicated: u32,
    /// The versions the request's runs were made on, held until they are
    /// stored.
    holding: Vec<Arc<Deployed>>,
    /// The trace the request's `traceparent` header names, which its runs
    /// continue.
    trace: Option<kiln_types::TraceContext>,
}

/// `POST /api/v3/batches/{id}/items`, NDJSON -> `{id, itemsAccepted,
/// itemsDeduplicated, sealed, enqueuedCount, expectedCount}`.
pub(super) async fn items(
    Env(state): Env,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::not_found("Batch not found");
    let batch_id = BatchId::parse(&id).map_err(|_| not_found())?;
    // One stream of a batch at a time: a re-send racing the first cannot
    // make an index twice. Other triggers wait only while a chunk of items
    // is admitted (in `flush`), not while the stream is read.
    let Some(_one_stream) = state.executor.begin_item_stream(batch_id.as_str()) else {
        return Err(ApiError::conflict(
            "The items of this batch are being sent already: send them again once that stream ends",
        ));
    };
    let mut record = state.store.batch(&batch_id)?.ok_or_else(not_found)?;
    if let Some(token) = caller.public()
        && record.token.as_deref() != Some(token_hash(&token.token).as_str())
    {
        return Err(ApiError::forbidden(
            "Only the public access token that created this batch may send its items",
        ));
    }
    let Some(expected) = record.expected else {
        return Err(ApiError::unprocessable(
            "This batch was made by a task, not through the batch API",
        ));
    };
    let mut done = state.store.batch_items(&batch_id)?;
    let mut tally = Tally {
        trace: crate::trigger::traceparent(&headers),
        ..Tally::default()
    };
    let mut pending: Vec<PendingItem> = Vec::new();
    let mut stream = body.into_data_stream();
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let chunk = stream.next().await;
        let finished = chunk.is_none();
        if let Some(chunk) = chunk {
            let chunk = chunk
                .map_err(|e| ApiError::bad_request(format!("reading the items failed: {e}")))?;
            buffer.extend_from_slice(&chunk);
        } else if !buffer.is_empty() && buffer.len() <= MAX_LINE {
            // The last line needs no newline of its own.
            buffer.push(b'\n');
        }
        let mut lines = Vec::new();
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            lines.push(buffer.drain(..=end).collect::<Vec<u8>>());
        }
        // Lines are parsed and their payloads validated off the runtime
        // when there is much to read.
        let size: usize = lines.iter().map(Vec::len).sum();
        if size < super::LARGE_JSON {
            for line in &lines {
                take_line(
                    &state,
                    &caller,
                    &record,
                    line,
                    &mut done,
                    &mut pending,
                    &mut tally,
                )?;
            }
        } else {
            let (s, c, r) = (state.clone(), caller.clone(), record.clone());
            let (mut d, mut p, mut t) = (
                std::mem::take(&mut done),
                std::mem::take(&mut pending),
                std::mem::take(&mut tally),
            );
            let taken;
            (taken, done, pending, tally) = super::json_work(size, move || {
                let taken = lines
                    .iter()
                    .try_for_each(|line| take_line(&s, &c, &r, line, &mut d, &mut p, &mut t));
                (taken, d, p, t)
            })
            .await?;
            taken?;
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
    caller: &Caller,
    record: &BatchRecord,
    line: &[u8],
    done: &mut BTreeMap<u32, Option<kiln_types::RunId>>,
    pending: &mut Vec<PendingItem>,
    tally: &mut Tally,
) -> Result<(), ApiError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let item: Item = serde_json::from_slice(line)
        .map_err(|e| ApiError::bad_request(format!("an item line is not an item: {e}")))?;
    let expected = record.expected.unwrap_or_default();
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
    // An item a public token may not trigger fails alone, as an item
    // naming an unknown task does.
    let made = match caller.may_batch_trigger(&task) {
        Ok(()) => make_run(state, record, item, tally),
        Err(refused) => Err(refused.message),
    };
    pending.push((index, task, made));
    Ok(())
}

/// An item's run (and its idempotency key), a child of the batch's parent
/// run if the batch has one.
fn make_run(
    state: &AppState,
    record: &BatchRecord,
    item: Item,
    tally: &mut Tally,
) -> Result<(Run, Option<IdempotencyKey>), String> {
    let holding = &mut tally.holding;
    let deployed = state
        .deployments
        .current()
        .ok_or_else(|| "nothing is deployed".to_string())?;
    // Held until the request ends, after its runs are stored: retention
    // does not collect a version something holds.
    if !holding.iter().any(|held| Arc::ptr_eq(held, &deployed)) {
        holding.push(deployed.clone());
    }
    let mut options = item.options;
    options.trace = tally.trace.clone();
    let incoming =
        incoming_payload(&state.store, item.payload, &mut options).map_err(|e| e.message)?;
    let key = options.backend_key().map_err(|e| e.message().to_string())?;
    let run = crate::trigger::new_run(
        &deployed,
        &item.task,
        &incoming.json,
        incoming.stored,
        incoming.stored_type,
        options,
        Timestamp::now(),
    )
    .map_err(|e| e.message().to_string())?;
    let parent = match &record.parent {
        Some(id) => state.store.run(id).map_err(|e| e.to_string())?,
        None => None,
    };
    Ok((
        Run {
            parent: parent.map(|p| ParentRun {
                parent: p.id.clone(),
                root: p.root_or_self().clone(),
                depth: p.parent.as_ref().map_or(0, |pp| pp.depth) + 1,
                trigger_function: "batchTrigger".into(),
            }),
            batch: Some(record.id.to_string()),
            ..run
        },
        key,
    ))
}

/// Commits pending items (runs, item entries, errors), counts them as
/// done, and queues the runs. An item with an idempotency key or a
/// debounce key is answered by an existing run when one holds the key; it
/// is checked after what came before it is committed, so two items with
/// one key make one run.
async fn flush(
    state: &AppState,
    batch_id: &BatchId,
    pending: &mut Vec<PendingItem>,
    record: &mut BatchRecord,
    done: &mut BTreeMap<u32, Option<kiln_types::RunId>>,
) -> Result<(), ApiError> {
    if pending.is_empty() {
        return Ok(());
    }
    let serial = state.executor.serialize_triggers(true).await;
    let mut batch = kiln_store::Batch::default();
    let mut runs = Vec::new();
    // Each commit is seen by the next reader at once; their durability is
    // awaited after the trigger lock is released, so other triggers do not
    // wait on this stream's syncs.
    let mut durable = Vec::new();
    for (index, task, outcome) in pending.drain(..) {
        match outcome {
            Ok((run, key)) => {
                let now = Timestamp::now();
                if key.is_some() || run.debounce.is_some() {
                    durable.push(commit_chunk(state, record, &mut batch, &mut runs));
                    if let Some(found) = state.executor.existing(&run, key.as_ref(), now).await? {
                        batch.put_batch_item(batch_id, index, Some(found.run_id()));
                        done.insert(index, Some(found.run_id().clone()));
                        continue;
                    }
                }
                Executor::stage_new(&mut batch, &run, key.as_ref(), now);
                if let Some(parent) = &record.parent {
                    batch.put_child(parent, &run.id);
                }
                batch.put_batch_item(batch_id, index, Some(&run.id));
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
    durable.push(commit_chunk(state, record, &mut batch, &mut runs));
    drop(serial);
    for commit in durable {
        commit.await?;
    }
    Ok(())
}

/// Commits what `flush` gathered, with the batch record, and queues the
/// new runs at once (see `Executor::commit_admitting`); returns the commit,
/// which resolves once it is durable.
fn commit_chunk(
    state: &AppState,
    record: &BatchRecord,
    batch: &mut kiln_store::Batch,
    runs: &mut Vec<Run>,
) -> kiln_store::Commit {
    let mut chunk = std::mem::take(batch);
    chunk.put_batch(record);
    let durable = state.executor.commit_admitting(chunk, runs);
    runs.clear();
    durable
}

/// `GET /api/v2/batches/{id}`.
pub(super) async fn retrieve(
    Env(state): Env,
    Path(id): Path<String>,
    axum::extract::Extension(caller): axum::extract::Extension<super::access::Caller>,
) -> Result<Json<Value>, ApiError> {
    caller.may_read_batch(&id)?;
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
