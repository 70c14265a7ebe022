//! Triggering and awaiting runs from inside the process, without HTTP.
//!
//! [`LocalRuns`] works on the server's default environment with the trigger
//! route's schema check, its stated 10 MiB payload limit (on the payload's
//! JSON text), admission and executor, minus the
//! request: no socket, no HTTP parsing, no JSON response. What it leaves
//! out: trigger options (every run gets the task's defaults), and runs of
//! a task no deployment has yet (the route keeps those `PENDING_VERSION`;
//! here they are refused). Programs that embed Kiln use it, and so does the
//! engine-only bench, which measures what a run costs the engine, the
//! store and the sandbox with the API taken out.

use crate::api::AppState;
use crate::executor::MAX_OUTPUT_BYTES;
use crate::executor::admission::AdmissionKeys;
use crate::trigger::{TriggerError, TriggerOptions};
use kiln_types::{RunId, RunStatus, Timestamp};
use std::time::Duration;

/// Why a local trigger or wait failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// No deployed version has the task.
    #[error("{0}")]
    NotFound(String),
    /// The payload fails the task's schema, or is larger than a run's
    /// payload may be.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error("the store failed: {0}")]
    Store(String),
}

impl From<TriggerError> for LocalError {
    fn from(error: TriggerError) -> Self {
        match error {
            TriggerError::NotFound(m) => LocalError::NotFound(m),
            TriggerError::BadRequest(m) | TriggerError::Unprocessable(m) => LocalError::Invalid(m),
        }
    }
}

impl From<kiln_store::StoreError> for LocalError {
    fn from(error: kiln_store::StoreError) -> Self {
        LocalError::Store(error.to_string())
    }
}

/// Triggers runs of the server's default environment and waits for them,
/// in-process. Cheap to clone.
#[derive(Clone)]
pub struct LocalRuns {
    state: AppState,
}

impl LocalRuns {
    pub(crate) fn new(state: AppState) -> Self {
        LocalRuns { state }
    }

    /// Triggers `task` on the current deployment with a JSON payload and
    /// default options; returns the new run's id once the run is durable
    /// and queued. The payload is checked against the task's schema first.
    pub async fn trigger(
        &self,
        task: &str,
        payload: &serde_json::Value,
    ) -> Result<String, LocalError> {
        let stored = payload.to_string();
        if stored.len() > MAX_OUTPUT_BYTES {
            return Err(LocalError::Invalid(format!(
                "The payload is {} bytes; payloads are limited to {MAX_OUTPUT_BYTES} bytes",
                stored.len()
            )));
        }
        let deployed = self
            .state
            .deployments
            .current()
            .filter(|d| d.record.manifest.task(task).is_some())
            .ok_or_else(|| LocalError::NotFound(format!("Task `{task}` is not deployed")))?;
        let now = Timestamp::now();
        let run = crate::trigger::new_run(
            &deployed,
            task,
            payload,
            stored,
            "application/json".into(),
            TriggerOptions::default(),
            now,
        )?;
        let (id, _) = self
            .state
            .executor
            .admit_new(run, AdmissionKeys::default(), now)
            .await
            .map_err(|e| LocalError::Store(e.to_string()))?;
        Ok(id.to_string())
    }

    /// Waits up to `timeout` for run `id` to reach a final status; returns
    /// its status then (not final if the time ran out), or `None` if there
    /// is no such run (or `id` is not a run id). A status it returns is
    /// durable, as the retrieve route's answers are.
    pub async fn wait_final(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<RunStatus>, LocalError> {
        let Ok(id) = RunId::parse(id) else {
            return Ok(None);
        };
        let status = |state: &AppState| -> Result<Option<RunStatus>, LocalError> {
            Ok(state.store.run_status(&id)?)
        };
        let settled = |status: Option<RunStatus>| async move {
            // Reads see commits before they are on disk; what is reported
            // waits until they are.
            self.state.store.settled().await?;
            Ok::<_, LocalError>(status)
        };
        // Subscribed before the read, so a finish after it is not missed.
        let finished = self.state.notifier.subscribe(&id);
        match status(&self.state)? {
            Some(s) if !s.is_final() => {}
            other => return settled(other).await,
        }
        let _ = tokio::time::timeout(timeout, finished).await;
        settled(status(&self.state)?).await
    }
}
