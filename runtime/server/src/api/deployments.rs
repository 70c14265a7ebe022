//! `POST /api/v1/deployments` and `GET /api/v1/deployments`.

use super::{ApiError, Env};
use crate::deployments::DeployError;
use axum::Json;
use axum::body::Bytes;
use kiln_sandbox::BundleError;
use kiln_types::Deployment;
use serde_json::{Value, json};

fn view(d: &Deployment) -> Value {
    json!({
        "id": d.id,
        "version": d.version,
        "contentHash": d.content_hash,
        "sizeBytes": d.size_bytes,
        "createdAt": d.created_at.to_iso(),
        "tasks": d.tasks(),
    })
}

/// Deploys the bundle in the body as the new current version.
pub(super) async fn create(Env(state): Env, body: Bytes) -> Result<Json<Value>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "The body must be the bundle's bytes (build one with `kiln build`)",
        ));
    }
    match state.deployments.deploy(&body).await {
        Ok(deployed) => {
            // Queues are declared in the bundle: create or update them.
            state.executor.sync_queues(&deployed.record.manifest);
            // The deployment is stored; if this sync is cut short, the next
            // start-up finishes it.
            let synced = state.schedules.sync().await?;
            // Runs triggered before their task was deployed start now, in a
            // task of its own that a client going away cannot cut short.
            let executor = state.executor.clone();
            let releasing = deployed.clone();
            let released = tokio::spawn(async move { executor.release_pending(&releasing).await })
                .await
                .map_err(|e| ApiError::internal(format!("releasing pending runs failed: {e}")))??;
            tracing::info!(version = %deployed.record.version, tasks = deployed.record.manifest.tasks.len(), schedules_created = synced.created, schedules_updated = synced.updated, schedules_deleted = synced.deleted, "deployed");
            let mut body = view(&deployed.record);
            body["queues"] = json!(
                deployed
                    .record
                    .manifest
                    .queues()
                    .iter()
                    .map(|q| q.name.clone())
                    .collect::<Vec<_>>()
            );
            body["pendingRunsReleased"] = json!(released);
            body["schedules"] = json!({
                "created": synced.created,
                "updated": synced.updated,
                "deleted": synced.deleted,
            });
            Ok(Json(body))
        }
        Err(DeployError::Bundle(error @ (BundleError::NotWasm(_) | BundleError::CoreModule))) => {
            Err(ApiError::bad_request(error.to_string()))
        }
        Err(DeployError::Bundle(error)) => Err(ApiError::unprocessable(error.to_string())),
        Err(DeployError::Store(error)) => Err(error.into()),
    }
}

/// Lists deployments, newest first.
pub(super) async fn list(Env(state): Env) -> Result<Json<Value>, ApiError> {
    let mut all = state.deployments.list()?;
    all.reverse();
    Ok(Json(
        json!({ "data": all.iter().map(view).collect::<Vec<_>>() }),
    ))
}
