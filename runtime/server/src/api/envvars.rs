//! Environment variables, through the official SDK's `envvars` routes:
//! `/api/v1/projects/{projectRef}/envvars/{env}[/{name}|/import]`.
//!
//! An environment's secret key manages its own environment's variables;
//! the server's own key manages any project's. A secret's value is
//! write-only: listings and reads show `<redacted>`, as Trigger.dev's do.

use super::ApiError;
use super::access::Caller;
use crate::api::AppState;
use crate::environments::{DEFAULT_PROJECT, ENVIRONMENTS, Hub, environment_id};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use kiln_store::EnvVar;
use kiln_store::envvars::{MAX_VALUE_LEN, valid_name};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The most variables one import sets.
const MAX_IMPORT: usize = 1_000;

/// The environment `project`/`environment` names, if the caller may manage
/// its variables.
async fn target(
    hub: &Hub,
    caller: &Caller,
    project: &str,
    environment: &str,
) -> Result<AppState, ApiError> {
    let id = environment_id(project, environment);
    if *caller.environment == *id {
        return hub
            .opened(&id)
            .ok_or_else(|| ApiError::internal(format!("The environment `{id}` is not open")));
    }
    if !caller.admin {
        return Err(ApiError::forbidden(format!(
            "This key belongs to `{}`; it manages that environment's variables only",
            caller.environment
        )));
    }
    if !ENVIRONMENTS.iter().any(|(name, _)| *name == environment) {
        return Err(ApiError::not_found(format!(
            "`{environment}` is not an environment: use dev, staging, prod or preview"
        )));
    }
    if project == DEFAULT_PROJECT {
        return Err(ApiError::not_found(format!(
            "The default project has one environment, `{}`",
            hub.default_environment().environment
        )));
    }
    if hub.project(project)?.is_none() {
        return Err(ApiError::not_found(format!("No project `{project}`")));
    }
    hub.environment(project, environment)
        .await
        .map_err(|e| ApiError::internal(format!("Opening `{id}` failed: {e}")))
}

/// A variable as the API shows it: a secret's value masked.
fn view(var: &EnvVar) -> Value {
    json!({
        "name": var.name,
        "value": if var.secret { kiln_sandbox::MASK } else { var.value.as_str() },
        "isSecret": var.secret,
        "createdAt": var.created_at.to_iso(),
        "updatedAt": var.updated_at.to_iso(),
    })
}

fn check(name: &str, value: &str) -> Result<(), ApiError> {
    valid_name(name).map_err(ApiError::bad_request)?;
    if value.len() > MAX_VALUE_LEN {
        return Err(ApiError::bad_request(format!(
            "The value of `{name}` is {} bytes, over the limit of {MAX_VALUE_LEN}",
            value.len()
        )));
    }
    Ok(())
}

/// `GET .../envvars/{env}`: every variable, secrets masked.
pub(super) async fn list(
    State(hub): State<Arc<Hub>>,
    Extension(caller): Extension<Caller>,
    Path((project, environment)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let state = target(&hub, &caller, &project, &environment).await?;
    let vars = state.store.env_vars()?;
    Ok(Json(Value::Array(vars.iter().map(view).collect())))
}

/// The body of `POST .../envvars/{env}` (the SDK's `envvars.create`).
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct CreateBody {
    /// The variable's name.
    name: String,
    /// Its value.
    value: String,
    /// Whether it is a secret: write-only through the API, redacted from
    /// what runs leave behind.
    #[serde(default)]
    is_secret: bool,
}

/// `POST .../envvars/{env}` `{name, value, isSecret?}`: sets a variable
/// (replacing its value if it exists).
pub(super) async fn create(
    State(hub): State<Arc<Hub>>,
    Extension(caller): Extension<Caller>,
    Path((project, environment)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let state = target(&hub, &caller, &project, &environment).await?;
    let body: CreateBody = super::json_body(&body)?;
    check(&body.name, &body.value)?;
    state
        .store
        .set_env_vars(&[(body.name, body.value, body.is_secret)])
        .await?;
    Ok(Json(json!({ "success": true })))
}

/// The body of `POST .../envvars/{env}/import` (the SDK's
/// `envvars.upload`).
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ImportBody {
    /// Names and values.
    variables: BTreeMap<String, String>,
    /// Whether existing variables take the new values (they are kept
    /// otherwise).
    #[serde(default)]
    r#override: bool,
    /// Whether the variables are secrets.
    #[serde(default)]
    is_secret: bool,
}

/// `POST .../envvars/{env}/import` `{variables, override?, isSecret?}`:
/// sets many variables in one commit.
pub(super) async fn import(
    State(hub): State<Arc<Hub>>,
    Extension(caller): Extension<Caller>,
    Path((project, environment)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let state = target(&hub, &caller, &project, &environment).await?;
    let body: ImportBody = super::json_body(&body)?;
    if body.variables.len() > MAX_IMPORT {
        return Err(ApiError::bad_request(format!(
            "An import sets at most {MAX_IMPORT} variables"
        )));
    }
    let mut vars = Vec::with_capacity(body.variables.len());
    for (name, value) in body.variables {
        check(&name, &value)?;
        if !body.r#override && state.store.env_var(&name)?.is_some() {
            continue;
        }
        vars.push((name, value, body.is_secret));
    }
    state.store.set_env_vars(&vars).await?;
    Ok(Json(json!({ "success": true })))
}

fn existing(state: &AppState, name: &str) -> Result<EnvVar, ApiError> {
    state
        .store
        .env_var(name)?
        .ok_or_else(|| ApiError::not_found(format!("Environment variable `{name}` not found")))
}

/// `GET .../envvars/{env}/{name}`: one variable, a secret masked.
pub(super) async fn retrieve(
    State(hub): State<Arc<Hub>>,
    Extension(caller): Extension<Caller>,
    Path((project, environment, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let state = target(&hub, &caller, &project, &environment).await?;
    Ok(Json(view(&existing(&state, &name)?)))
}

/// The body of `PUT .../envvars/{env}/{name}`.
#[derive(Deserialize, schemars::JsonSchema)]
pub(super) struct UpdateBody {
    /// The new value.
    value: String,
}

/// `PUT .../envvars/{env}/{name}` `{value}`: a new value for a variable
/// that exists (a secret stays secret).
pub(super) async fn update(
    State(hub): State<Arc<Hub>>,
    Extension(caller): Extension<Caller>,
    Path((project, environment, name)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let state = target(&hub, &caller, &project, &environment).await?;
    let body: UpdateBody = super::json_body(&body)?;
    let var = existing(&state, &name)?;
    check(&name, &body.value)?;
    state
        .store
        .set_env_vars(&[(name, body.value, var.secret)])
        .await?;
    Ok(Json(json!({ "success": true })))
}

/// `DELETE .../envvars/{env}/{name}`.
pub(super) async fn delete(
    State(hub): State<Arc<Hub>>,
    Extension(caller): Extension<Caller>,
    Path((project, environment, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let state = target(&hub, &caller, &project, &environment).await?;
    if !state.store.delete_env_var(&name).await? {
        return Err(ApiError::not_found(format!(
            "Environment variable `{name}` not found"
        )));
    }
    Ok(Json(json!({ "success": true })))
}
