//! What a run carries besides its payload: metadata and tags, changed from
//! a backend (`PUT /api/v1/runs/{id}/metadata`, `POST .../tags`) or from
//! inside a task (`update-metadata`, `add-tags`).
//!
//! Every change is a read-modify-write of the run's record under its lock.
//! From a task, the change is committed with the journal entry of the call,
//! so a replay answers from the journal and an `increment` is never applied
//! twice. A task may change its own metadata, its parent's or its root's
//! (for a run with no parent, both are the run itself).

use super::Executor;
use super::children::AttemptSink;
use crate::metadata::{self, Operation};
use kiln_store::Batch;
use kiln_types::{HostCall, JournalEntry, Run, RunId, Timestamp};
use serde_json::Value;

/// Why a metadata or tags change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    /// No such run.
    #[error("Run not found")]
    NotFound,
    /// Bad operations, too much metadata, too many tags.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
}

/// The most tags a run may carry (Trigger.dev's limit).
const MAX_TAGS: usize = 10;

/// Applies `ops` to `run`'s metadata; returns the new metadata.
fn set_metadata(run: &mut Run, ops: &[Operation]) -> Result<Value, String> {
    let updated = metadata::apply(run.metadata.as_ref(), ops)?;
    run.metadata = Some(updated.clone());
    Ok(updated)
}

/// Adds `tags` to `run`'s (each once), or says why not.
fn set_tags(run: &mut Run, tags: &[String]) -> Result<(), String> {
    run.tags = with_tags(run, tags)?;
    Ok(())
}

/// `run`'s tags with `tags` added (each once), or why not.
fn with_tags(run: &Run, tags: &[String]) -> Result<Vec<String>, String> {
    let mut all = run.tags.clone();
    for tag in crate::trigger::tags(Some(Value::from(tags.to_vec())))? {
        if !all.contains(&tag) {
            all.push(tag);
        }
    }
    if all.len() > MAX_TAGS {
        return Err(format!(
            "a run may have at most {MAX_TAGS} tags; this would make {}",
            all.len()
        ));
    }
    Ok(all)
}

impl Executor {
    /// Applies metadata operations to `run_id`; returns the new metadata.
    pub(crate) async fn update_metadata(
        &self,
        run_id: &RunId,
        ops: &[Operation],
    ) -> Result<Value, AnnotationError> {
        self.annotate(run_id, |run| set_metadata(run, ops), |_, _| {})
            .await
    }

    /// Adds tags to `run_id`.
    pub(crate) async fn add_tags(
        &self,
        run_id: &RunId,
        tags: &[String],
    ) -> Result<(), AnnotationError> {
        self.annotate(run_id, |run| set_tags(run, tags), |_, _| {})
            .await
    }

    /// Changes `run_id`'s record with `change` under its lock and commits it
    /// together with what `also` adds (a journal entry), which is told the
    /// outcome. A refused change commits only what `also` adds.
    async fn annotate<T>(
        &self,
        run_id: &RunId,
        change: impl FnOnce(&mut Run) -> Result<T, String>,
        also: impl FnOnce(&mut Batch, Result<&T, &str>),
    ) -> Result<T, AnnotationError> {
        let shared = &self.shared;
        let _guard = shared.locks.lock(run_id).await;
        let Some(mut run) = shared.store.run(run_id)? else {
            // Journaled like any refusal, so a replay is refused the same.
            let mut batch = Batch::default();
            also(&mut batch, Err("Run not found"));
            shared.store.commit(batch).await?;
            return Err(AnnotationError::NotFound);
        };
        let mut batch = Batch::default();
        let outcome = change(&mut run);
        match &outcome {
            Ok(value) => {
                run.updated_at = Timestamp::now();
                batch.put_run(&run);
                also(&mut batch, Ok(value));
            }
            Err(error) => also(&mut batch, Err(error)),
        }
        shared.store.commit(batch).await?;
        outcome.map_err(AnnotationError::Invalid)
    }
}

impl AttemptSink {
    /// `update-metadata` from the task: applied and journaled in one commit.
    pub(crate) fn metadata_call(
        &self,
        target: &'static str,
        operations: String,
    ) -> kiln_sandbox::HostFuture<String> {
        let executor = self.executor.clone();
        let writer = self.writer.clone();
        let run_id = match target {
            "parent" => self.own_parent.clone(),
            "root" => self.root.clone(),
            _ => self.parent.clone(),
        };
        Box::pin(async move {
            let journal = |batch: &mut Batch, outcome: Result<&Value, &str>| {
                let call = HostCall::UpdateMetadata {
                    target: target.to_string(),
                    result: outcome.ok().map(|v| v.to_string()),
                    error: outcome.err().map(str::to_string),
                };
                writer.append_to(batch, JournalEntry::HostCall(call));
            };
            // Operations that do not parse are refused and journaled like
            // any other refusal.
            let ops = metadata::parse(&operations);
            let result = executor
                .annotate(
                    &run_id,
                    |run| set_metadata(run, ops.as_ref().map_err(Clone::clone)?),
                    journal,
                )
                .await;
            result.map(|v| v.to_string()).map_err(|e| e.to_string())
        })
    }

    /// `add-tags` from the task: applied and journaled in one commit.
    pub(crate) fn tags_call(&self, tags: Vec<String>) -> kiln_sandbox::HostFuture<()> {
        let executor = self.executor.clone();
        let writer = self.writer.clone();
        let run_id = self.parent.clone();
        Box::pin(async move {
            let journal = |batch: &mut Batch, outcome: Result<&(), &str>| {
                let call = HostCall::AddTags {
                    tags: tags.clone(),
                    error: outcome.err().map(str::to_string),
                };
                writer.append_to(batch, JournalEntry::HostCall(call));
            };
            executor
                .annotate(&run_id, |run| set_tags(run, &tags), journal)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The largest chunk a task may append to a realtime stream.
pub(crate) const MAX_STREAM_CHUNK: usize = 64 * 1024;
/// The longest stream key.
const MAX_STREAM_KEY: usize = 128;

impl AttemptSink {
    /// `stream-append` from the task: the chunk is stored and the call
    /// journaled with its number, in one commit.
    pub(crate) fn stream_call(&self, key: String, chunk: String) -> kiln_sandbox::HostFuture<u64> {
        let executor = self.executor.clone();
        let writer = self.writer.clone();
        let run_id = self.parent.clone();
        Box::pin(async move {
            let store = &executor.shared.store;
            let checked = if key.is_empty() || key.chars().count() > MAX_STREAM_KEY {
                Err(format!(
                    "a stream key must be 1 to {MAX_STREAM_KEY} characters"
                ))
            } else if key.contains(['/', '\0']) {
                Err("a stream key must not contain `/`".to_string())
            } else if chunk.len() > MAX_STREAM_CHUNK {
                Err(format!(
                    "a stream chunk is at most {MAX_STREAM_CHUNK} bytes; this one is {}",
                    chunk.len()
                ))
            } else {
                serde_json::from_str::<Value>(&chunk)
                    .map(|_| ())
                    .map_err(|e| format!("a stream chunk must be JSON: {e}"))
            };
            let mut batch = Batch::default();
            let outcome = match checked {
                Ok(()) => {
                    let index = store.stream_len(&run_id, &key).map_err(|e| e.to_string())?;
                    batch.put_stream_chunk(&run_id, &key, index, chunk.into_bytes());
                    if index == 0 {
                        batch.put_stream_key(&run_id, &key);
                    }
                    Ok(index)
                }
                Err(error) => Err(error),
            };
            let call = HostCall::StreamAppend {
                key,
                index: outcome.as_ref().ok().copied(),
                error: outcome.as_ref().err().cloned(),
            };
            writer.append_to(&mut batch, JournalEntry::HostCall(call));
            store.commit(batch).await.map_err(|e| e.to_string())?;
            outcome
        })
    }
}
