//! Child runs: creating them from inside a task, exactly once, and waking
//! the parent that waits on them.
//!
//! - A task's `trigger` or `batch-trigger` call becomes one commit holding
//!   the child runs, the parent→child index, the batch (if any) and the
//!   journal entry of the call with the ids it returned. A replay answers
//!   the call from that entry, so a crash anywhere never makes a child twice.
//! - A parent that waits on a child (or a batch) is suspended like any
//!   waiting run, holding no slot, with a waiter entry per child. The
//!   engine wakes it: a child's end puts its outcome in the parent's inbox
//!   in the commit that ends the child, and a child that ended before its
//!   parent suspended is put there by the suspension's own commit.
//! - Canceling a run cancels its children that have not finished.

use super::Executor;
use super::journal::JournalWriter;
use crate::trigger::{TriggerOptions, new_run};
use kiln_sandbox::{ChildRequest, JournalSink, SpawnFuture, Spawned};
use kiln_store::{Batch, BatchRecord};
use kiln_types::{
    BatchId, DeploymentId, HostCall, JournalEntry, ParentRun, Run, RunId, RunOutcome, RunStatus,
    Timestamp,
};
use std::collections::HashMap;

/// The most child runs one batch may hold.
pub(crate) const MAX_BATCH: usize = 1_000;

/// The journal sink of an attempt: journals host calls, and creates child
/// runs with the call that made them.
pub(crate) struct AttemptSink {
    pub(crate) writer: JournalWriter,
    pub(crate) executor: Executor,
    /// The run that triggered the attempt's run (the run itself for a root).
    pub(crate) own_parent: RunId,
    /// The attempt's run: the parent of the children it triggers.
    pub(crate) parent: RunId,
    pub(crate) deployment: DeploymentId,
    pub(crate) root: RunId,
    pub(crate) depth: u32,
    /// The attempt's number (scopes idempotency keys of scope `attempt`).
    pub(crate) attempt: u32,
    /// The secret values masked from metadata and stream chunks; secret
    /// reads add theirs.
    pub(crate) redactor: kiln_sandbox::Redactor,
    /// The trace the attempt's run continues, if its trigger named one:
    /// its children continue the run's trace, under the attempt's span.
    pub(crate) run_trace: Option<kiln_types::TraceContext>,
}

impl JournalSink for AttemptSink {
    fn record(&mut self, call: HostCall) {
        self.writer.record(call);
    }

    fn tick(&mut self) {
        self.writer.defer_due();
    }

    fn budget(&self) -> Result<(), String> {
        self.writer.check()
    }

    // Each call below may commit something of its own (a debounced
    // child's delay moved, a token, a stream's chunk) before or without its
    // journal entry: what the writer holds goes first, to the next commit
    // made in the store, as every entry went before writers held them.

    fn create_token(&mut self, options: String) -> kiln_sandbox::TokenFuture {
        self.writer.defer_held();
        self.make_token(options)
    }

    fn update_metadata(
        &mut self,
        target: &'static str,
        operations: String,
    ) -> kiln_sandbox::HostFuture<String> {
        self.writer.defer_held();
        let operations = self.redactor.redact_json(operations);
        self.metadata_call(target, operations)
    }

    fn add_tags(&mut self, tags: Vec<String>) -> kiln_sandbox::HostFuture<()> {
        self.writer.defer_held();
        self.tags_call(tags)
    }

    fn stream_append(&mut self, key: String, chunk: String) -> kiln_sandbox::HostFuture<u64> {
        self.writer.defer_held();
        let chunk = self.redactor.redact_json(chunk);
        self.stream_call(key, chunk)
    }

    fn env_var(&mut self, name: String) -> kiln_sandbox::HostFuture<Option<(String, bool)>> {
        self.writer.defer_held();
        self.env_call(name)
    }

    fn open_env_var(&self, name: &str, sealed: &str) -> Result<String, String> {
        self.open_env(name, sealed)
    }

    fn spawn(&mut self, children: Vec<ChildRequest>, batch: bool) -> SpawnFuture {
        self.writer.defer_held();
        let writer = self.writer.clone();
        let executor = self.executor.clone();
        let parent = self.parent.clone();
        let deployment = self.deployment.clone();
        let (root, depth) = (self.root.clone(), self.depth + 1);
        let attempt = self.attempt;
        let trace = crate::traces::child_context(&parent, self.run_trace.as_ref(), attempt);
        Box::pin(async move {
            let count = children.len() as u32;
            let first_task = children.first().map(|c| c.task.clone()).unwrap_or_default();
            let refuse = |error: String| {
                let call = if batch {
                    HostCall::BatchTrigger {
                        items: count,
                        batch: None,
                        runs: Vec::new(),
                        error: Some(error.clone()),
                    }
                } else {
                    HostCall::Trigger {
                        task: first_task.clone(),
                        result: None,
                        error: Some(error.clone()),
                    }
                };
                writer.append(JournalEntry::HostCall(call));
                Err(error)
            };
            if batch && (children.is_empty() || children.len() > MAX_BATCH) {
                return refuse(format!(
                    "a batch holds 1 to {MAX_BATCH} items, not {}",
                    children.len()
                ));
            }
            if let Err(limit) =
                writer
                    .usage()
                    .check_children(writer.budgets(), u64::from(count), batch)
            {
                return refuse(limit);
            }
            let shared = &executor.shared;
            let deployed = match shared.deployments.get(&deployment).await {
                Ok(Some(d)) => d,
                Ok(None) => return refuse("the run's deployment is missing".into()),
                Err(e) => return refuse(format!("loading the run's deployment failed: {e}")),
            };
            let now = Timestamp::now();
            let batch_id = batch.then(|| BatchId::generate(now.as_millis()));
            let mut items = Vec::with_capacity(children.len());
            for (index, child) in children.into_iter().enumerate() {
                let payload: serde_json::Value = match serde_json::from_str(&child.payload) {
                    Ok(p) => p,
                    Err(e) => {
                        return refuse(format!("item {index}: the payload is not JSON: {e}"));
                    }
                };
                let options: TriggerOptions = if child.options.trim().is_empty() {
                    TriggerOptions::default()
                } else {
                    match serde_json::from_str(&child.options) {
                        Ok(o) => o,
                        Err(e) => return refuse(format!("item {index}: invalid options: {e}")),
                    }
                };
                let trigger_function = options
                    .trigger_function
                    .clone()
                    .unwrap_or_else(|| if batch { "batchTrigger" } else { "trigger" }.to_string());
                let key = options.task_key(&parent, attempt);
                let run = new_run(
                    &deployed,
                    &child.task,
                    &payload,
                    payload.to_string(),
                    "application/json".into(),
                    options,
                    now,
                );
                let (run, key) = match (run, key) {
                    (Ok(run), Ok(key)) => (run, key),
                    (Err(e), _) | (_, Err(e)) if batch => {
                        return refuse(format!("item {index}: {}", e.message()));
                    }
                    (Err(e), _) | (_, Err(e)) => return refuse(e.message().to_string()),
                };
                let run = Run {
                    parent: Some(ParentRun {
                        parent: parent.clone(),
                        root: root.clone(),
                        depth,
                        trigger_function,
                    }),
                    batch: batch_id.as_ref().map(|b| b.to_string()),
                    trace: Some(trace.clone()),
                    ..run
                };
                items.push((run, key));
            }
            // A child with an idempotency key or a debounce key may be
            // answered by a run that already holds the key.
            let keyed = items
                .iter()
                .any(|(run, key)| key.is_some() || run.debounce.is_some());
            let _serial = executor.serialize_triggers(keyed).await;
            let mut commit = Batch::default();
            let mut ids = Vec::with_capacity(items.len());
            let mut fresh = Vec::new();
            // Keys taken by earlier items of this call, not yet committed.
            let mut taken: HashMap<String, RunId> = HashMap::new();
            for (run, key) in items {
                let claims = [
                    key.as_ref()
                        .map(|k| format!("key:{}\0{}", run.task_id, k.hash)),
                    run.debounce
                        .as_ref()
                        .map(|d| format!("debounce:{}\0{}", run.task_id, d.key)),
                ];
                if let Some(id) = claims.iter().flatten().find_map(|c| taken.get(c)) {
                    ids.push(id.clone());
                    continue;
                }
                if keyed {
                    match executor.existing(&run, key.as_ref(), now).await {
                        Ok(Some(found)) => {
                            ids.push(found.run_id().clone());
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => return refuse(format!("reading idempotency keys failed: {e}")),
                    }
                }
                for claim in claims.into_iter().flatten() {
                    taken.insert(claim, run.id.clone());
                }
                Executor::stage_new(&mut commit, &run, key.as_ref(), now);
                commit.put_child(&parent, &run.id);
                ids.push(run.id.clone());
                fresh.push(run);
            }
            let call = match &batch_id {
                Some(id) => {
                    commit.put_batch(&BatchRecord {
                        id: id.clone(),
                        parent: Some(parent.clone()),
                        runs: ids.clone(),
                        created_at: now,
                        expected: None,
                        errors: Vec::new(),
                        sealed_at: None,
                        token: None,
                    });
                    HostCall::BatchTrigger {
                        items: count,
                        batch: Some(id.to_string()),
                        runs: ids.clone(),
                        error: None,
                    }
                }
                None => HostCall::Trigger {
                    task: first_task,
                    result: ids.first().cloned(),
                    error: None,
                },
            };
            writer.append_to(&mut commit, JournalEntry::HostCall(call));
            // The children execute while the commit is made durable (see
            // `commit_admitting`); the parent has its answer once it is.
            executor
                .commit_admitting(commit, &fresh)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Spawned {
                batch: batch_id.map(|b| b.to_string()),
                runs: ids,
            })
        })
    }
}

/// How a finished run ended, as its parent is told.
pub(crate) fn outcome_of(store: &kiln_store::Store, run: &Run) -> kiln_store::Result<RunOutcome> {
    let ok = run.status == RunStatus::Completed;
    let value = if ok {
        store.output_of(run)?.unwrap_or_else(|| "null".into())
    } else {
        let error = run.error.clone().unwrap_or_else(|| {
            kiln_types::RunError::new(
                run.status.as_str(),
                format!("the run ended {}", run.status.as_str()),
            )
        });
        serde_json::to_string(&error).unwrap_or_else(|_| "{}".into())
    };
    Ok(RunOutcome {
        run_id: run.id.clone(),
        ok,
        value,
    })
}

impl Executor {
    /// Cancels the unfinished children of a canceled run (and theirs).
    pub(crate) fn cancel_children(&self, parent: RunId) {
        let this = self.clone();
        tokio::spawn(async move {
            let children = match this.shared.store.children(&parent) {
                Ok(children) => children,
                Err(error) => {
                    tracing::error!(run = %parent, %error, "reading a canceled run's children failed");
                    return;
                }
            };
            for child in children {
                if let Err(error) = this.cancel(&child).await {
                    tracing::error!(run = %child, %error, "canceling a child run failed");
                }
            }
        });
    }
}
