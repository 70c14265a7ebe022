//! Projects and their keys, administered with the server's own key (the one
//! `kiln serve` prints or reads from `KILN_SECRET_KEY`).

use super::ApiError;
use super::access::Caller;
use crate::environments::{DEFAULT_PROJECT, ENVIRONMENTS, Hub};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use kiln_store::{ApiKey, Project};
use kiln_types::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

fn admin_only(caller: &Caller) -> Result<(), ApiError> {
    if caller.admin {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "Only the server's own key (the one `kiln serve` started with) administers projects and keys",
        ))
    }
}

fn project_view(project: &Project) -> Value {
    json!({
        "ref": project.reference,
        "name": project.name,
        "createdAt": project.created_at.to_iso(),
        "environments": ENVIRONMENTS.iter().map(|(name, _)| name).collect::<Vec<_>>(),
    })
}

/// A key as listings show it: masked, with the id that revokes it.
fn key_view(key: &ApiKey) -> Value {
    let mut view = json!({
        "id": crate::secret::key_id(&key.key),
        "key": crate::secret::masked(&key.key),
        "project": key.project,
        "environment": key.environment,
        "createdAt": key.created_at.to_iso(),
    });
    if let Some(at) = key.revoked_at {
        view["revokedAt"] = json!(at.to_iso());
    }
    view
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub(super) struct CreateProject {
    name: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<String>,
}

/// `POST /api/v1/projects` `{name, ref?}`.
pub(super) async fn create(
    State(hub): State<Arc<Hub>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    admin_only(&caller)?;
    let body: CreateProject = super::json_body_or_default(&body)?;
    let name = body
        .name
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty() && n.len() <= 128)
        .ok_or_else(|| ApiError::bad_request("A project needs a `name` of 1 to 128 characters"))?;
    let reference = match body.reference {
        Some(r) => {
            let ok = r.len() <= 64
                && r.strip_prefix("proj_").is_some_and(|rest| {
                    !rest.is_empty()
                        && rest
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                });
            if !ok {
                return Err(ApiError::bad_request(format!(
                    "`{r}` is not a project ref: `proj_` then lowercase letters, digits and dashes"
                )));
            }
            r
        }
        None => crate::secret::generate_project_ref(),
    };
    if reference == DEFAULT_PROJECT || hub.project(&reference)?.is_some() {
        return Err(ApiError::conflict(format!(
            "A project `{reference}` exists already"
        )));
    }
    let project = Project {
        reference,
        name,
        created_at: Timestamp::now(),
    };
    hub.create_project(&project).await?;
    Ok(Json(project_view(&project)))
}

/// `GET /api/v1/projects`.
pub(super) async fn list(
    State(hub): State<Arc<Hub>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    admin_only(&caller)?;
    let projects = hub.projects()?;
    Ok(Json(json!({
        "data": projects.iter().map(project_view).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub(super) struct CreateKey {
    environment: Option<String>,
}

fn existing_project(hub: &Hub, reference: &str) -> Result<Project, ApiError> {
    hub.project(reference)?
        .ok_or_else(|| ApiError::not_found(format!("No project `{reference}`")))
}

/// `POST /api/v1/projects/{ref}/keys` `{environment}`: a new secret key,
/// shown in full this once.
pub(super) async fn create_key(
    State(hub): State<Arc<Hub>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    admin_only(&caller)?;
    let project = existing_project(&hub, &reference)?;
    let body: CreateKey = super::json_body_or_default(&body)?;
    let environment = body.environment.unwrap_or_else(|| "dev".into());
    if !ENVIRONMENTS.iter().any(|(name, _)| *name == environment) {
        return Err(ApiError::bad_request(format!(
            "`{environment}` is not an environment: use dev, staging, prod or preview"
        )));
    }
    let key = hub
        .create_key(&project.reference, &environment)
        .await
        .map_err(|e| ApiError::internal(format!("The key could not be made: {e}")))?;
    let mut view = key_view(&key);
    view["key"] = json!(key.key);
    Ok(Json(view))
}

/// `GET /api/v1/projects/{ref}/keys[?environment=]`: masked.
pub(super) async fn list_keys(
    State(hub): State<Arc<Hub>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    admin_only(&caller)?;
    let project = existing_project(&hub, &reference)?;
    let keys: Vec<Value> = hub
        .keys_of(&project.reference)
        .iter()
        .filter(|k| query.get("environment").is_none_or(|e| *e == k.environment))
        .map(key_view)
        .collect();
    Ok(Json(json!({ "data": keys })))
}

/// `DELETE /api/v1/projects/{ref}/keys/{keyId}`: revokes a key (by its id,
/// or the key itself). Requests made with it fail at once.
pub(super) async fn revoke_key(
    State(hub): State<Arc<Hub>>,
    Extension(caller): Extension<Caller>,
    Path((reference, key_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    admin_only(&caller)?;
    let project = existing_project(&hub, &reference)?;
    let revoked = hub
        .revoke(&project.reference, &key_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("No key `{key_id}` in `{reference}`")))?;
    Ok(Json(key_view(&revoked)))
}
