//! A run's metadata and tags from a backend: `GET`/`PUT
//! /api/v1/runs/{id}/metadata` and `POST /api/v1/runs/{id}/tags`.

use super::{ApiError, Env};
use crate::executor::AnnotationError;
use crate::metadata::{self, Operation};
use axum::Json;
use axum::body::Bytes;
use axum::extract::Path;
use serde::Deserialize;
use serde_json::{Value, json};

impl From<AnnotationError> for ApiError {
    fn from(error: AnnotationError) -> Self {
        match error {
            AnnotationError::NotFound => ApiError::not_found("Run not found"),
            AnnotationError::Invalid(m) if m.contains("256 KiB") => ApiError::too_large(m),
            AnnotationError::Invalid(m) => ApiError::unprocessable(m),
            AnnotationError::Store(e) => e.into(),
        }
    }
}

/// `GET /api/v1/runs/{id}/metadata` -> `{metadata}`.
pub(super) async fn get_metadata(
    Env(state): Env,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let run = super::stored_run(&state, &run_id)?;
    Ok(Json(
        json!({ "metadata": run.metadata.unwrap_or_else(|| json!({})) }),
    ))
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct MetadataBody {
    /// A whole new metadata object.
    metadata: Option<Value>,
    #[serde(default)]
    operations: Value,
    #[serde(default)]
    parent_operations: Value,
    #[serde(default)]
    root_operations: Value,
}

/// `PUT /api/v1/runs/{id}/metadata` `{metadata?, operations?,
/// parentOperations?, rootOperations?}` -> `{metadata}`: the run's metadata
/// after its operations, which are applied after the parent's and root's.
pub(super) async fn put_metadata(
    Env(state): Env,
    Path(run_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let run = super::stored_run(&state, &run_id)?;
    let body: MetadataBody = super::json_body_or_default(&body)?;
    let parse = |ops: Value| metadata::operations(ops).map_err(ApiError::unprocessable);
    let mut own: Vec<Operation> = Vec::new();
    if let Some(value) = body.metadata {
        own.push(Operation::Update { value });
    }
    own.extend(parse(body.operations)?);
    let parent_ops = parse(body.parent_operations)?;
    let root_ops = parse(body.root_operations)?;
    for (target, ops) in [
        (run.parent_or_self(), parent_ops),
        (run.root_or_self(), root_ops),
    ] {
        if !ops.is_empty() {
            state.executor.update_metadata(target, &ops).await?;
        }
    }
    // The run's own operations go last, so what they return is its
    // metadata even when the run is its own parent or root.
    let metadata = state.executor.update_metadata(&run.id, &own).await?;
    Ok(Json(json!({ "metadata": metadata })))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(super) struct TagsBody {
    tags: Value,
}

/// `POST /api/v1/runs/{id}/tags` `{tags}` -> `{message}`.
pub(super) async fn add_tags(
    Env(state): Env,
    Path(run_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let run = super::stored_run(&state, &run_id)?;
    let body: TagsBody = super::json_body(&body)?;
    let tags = crate::trigger::tags(Some(body.tags)).map_err(ApiError::unprocessable)?;
    state.executor.add_tags(&run.id, &tags).await?;
    Ok(Json(json!({
        "message": format!("Successfully set {} new tags.", tags.len())
    })))
}
