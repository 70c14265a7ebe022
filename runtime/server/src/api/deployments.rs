//! `POST /api/v1/deployments` and `GET /api/v1/deployments`.

use super::{ApiError, Env};
use crate::deployments::DeployError;
use axum::Json;
use axum::body::Bytes;
use axum::extract::Query;
use kiln_sandbox::BundleError;
use kiln_types::Deployment;
use serde_json::{Value, json};
use std::collections::HashMap;

fn view(d: &Deployment) -> Value {
    json!({
        "id": d.id,
        "version": d.version,
        "contentHash": d.content_hash,
        "sizeBytes": d.size_bytes,
        "createdAt": d.created_at.to_iso(),
        "tasks": d.tasks(),
        "retiredAt": d.retired_at.map(|at| at.to_iso()),
        "collected": d.collected,
    })
}

/// What a deploy to `state`'s environment lacks: one line for each
/// variable the bundle's tasks declare (`#[task(env = [...])]`) that the
/// environment does not set.
fn missing_env_vars(
    state: &crate::api::AppState,
    manifest: &kiln_manifest::Manifest,
) -> Result<Vec<String>, ApiError> {
    let needed = manifest.env_vars();
    if needed.is_empty() {
        return Ok(Vec::new());
    }
    let set: std::collections::BTreeSet<String> = state
        .store
        .env_vars()?
        .into_iter()
        .map(|v| v.name)
        .collect();
    Ok(needed
        .into_iter()
        .filter(|(name, _)| !set.contains(*name))
        .map(|(name, tasks)| {
            format!(
                "the environment variable `{name}` (needed by {}) is not set in `{}`",
                tasks
                    .iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                state.env_id
            )
        })
        .collect())
}

/// Splits a body of several bundles, one after another, by `sizes` (their
/// lengths in bytes, comma-separated).
fn split<'a>(body: &'a [u8], sizes: &str) -> Result<Vec<&'a [u8]>, ApiError> {
    let mut parts = Vec::new();
    let mut at = 0usize;
    for size in sizes.split(',') {
        let size: usize = size.trim().parse().map_err(|_| {
            ApiError::bad_request(format!(
                "`sizes` lists the bundles' lengths in bytes, comma-separated; `{size}` is not one"
            ))
        })?;
        let end = at
            .checked_add(size)
            .filter(|end| *end <= body.len())
            .ok_or_else(|| {
                ApiError::bad_request("`sizes` adds up to more than the body's length")
            })?;
        if size == 0 {
            return Err(ApiError::bad_request("`sizes` lists an empty bundle"));
        }
        parts.push(&body[at..end]);
        at = end;
    }
    if at != body.len() {
        return Err(ApiError::bad_request(
            "`sizes` adds up to less than the body's length",
        ));
    }
    if parts.len() > MAX_BUNDLES {
        return Err(ApiError::bad_request(format!(
            "a deployment holds at most {MAX_BUNDLES} bundles"
        )));
    }
    Ok(parts)
}

/// The most bundles one deployment holds.
const MAX_BUNDLES: usize = 16;

/// Deploys the bundle in the body as the new current version, or, with
/// `?sizes=`, the bundles in it one after another as one version. A bundle
/// whose tasks need variables the environment lacks deploys with
/// `warnings`, or with `?strict=true` is refused (422).
pub(super) async fn create(
    Env(state): Env,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "The body must be the bundle's bytes (build one with `kiln build`)",
        ));
    }
    let strict = query.get("strict").is_some_and(|v| v == "true" || v == "1");
    let bundles = match query.get("sizes") {
        Some(sizes) => split(&body, sizes)?,
        None => vec![&body[..]],
    };
    let mut warnings = Vec::new();
    let deploying = state.deployments.deploy(&bundles, |manifest| {
        warnings = missing_env_vars(&state, manifest).map_err(|e| e.message)?;
        if strict && !warnings.is_empty() {
            return Err(format!(
                "The deploy is strict and {}; set them with `kiln env set` first",
                warnings.join("; ")
            ));
        }
        Ok(())
    });
    match deploying.await {
        Ok(deployed) => {
            for warning in &warnings {
                tracing::info!(environment = %state.env_id, "{warning}");
            }
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
            body["warnings"] = json!(warnings);
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
        Err(error @ (DeployError::Refused(_) | DeployError::Retired(_))) => {
            Err(ApiError::unprocessable(error.to_string()))
        }
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
