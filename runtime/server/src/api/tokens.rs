//! Wait tokens in Trigger.dev's wire format (`/api/v1/waitpoints/tokens`).

use super::{ApiError, AppState, Env};
use crate::executor::{MAX_TOKEN_DATA, TokenError, TokenOptions};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use kiln_types::{Timestamp, TokenId, WaitToken};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::NotFound => ApiError::not_found("Waitpoint token not found"),
            TokenError::Invalid(m) => ApiError::unprocessable(m),
            TokenError::Store(e) => e.into(),
            TokenError::Other(e) => ApiError::internal(e.to_string()),
        }
    }
}

pub(super) fn token_id(id: &str) -> Result<TokenId, ApiError> {
    TokenId::parse(id).map_err(|_| ApiError::not_found("Waitpoint token not found"))
}

pub(super) fn view(state: &AppState, token: &WaitToken) -> Value {
    let mut map = Map::new();
    map.insert("id".into(), json!(token.id));
    map.insert("url".into(), json!(state.executor.token_url(&token.id)));
    map.insert(
        "status".into(),
        json!(token.status_at(Timestamp::now()).as_str()),
    );
    map.insert("tags".into(), json!(token.tags));
    map.insert("createdAt".into(), json!(token.created_at.to_iso()));
    if let Some(t) = token.completed_at {
        map.insert("completedAt".into(), json!(t.to_iso()));
    }
    if let Some(t) = token.timeout_at {
        map.insert("timeoutAt".into(), json!(t.to_iso()));
    }
    if let Some(k) = &token.idempotency_key {
        map.insert("idempotencyKey".into(), json!(k));
    }
    if let Some(t) = token.idempotency_key_expires_at {
        map.insert("idempotencyKeyExpiresAt".into(), json!(t.to_iso()));
    }
    if let Some(output) = &token.output {
        map.insert("output".into(), json!(output));
        map.insert("outputType".into(), json!("application/json"));
        map.insert("outputIsError".into(), json!(false));
    }
    Value::Object(map)
}

/// `POST /api/v1/waitpoints/tokens`.
pub(super) async fn create(Env(state): Env, bytes: Bytes) -> Result<impl IntoResponse, ApiError> {
    let options: TokenOptions = super::json_body_or_default(&bytes)?;
    let (token, cached) = state.executor.create_token(options).await?;
    let jwt = crate::jwt::sign(
        &state.signing_secret,
        &state.env_id,
        &[format!("write:waitpoints:{}", token.id)],
        Timestamp::now().as_millis() / 1000,
    );
    let mut headers = HeaderMap::new();
    if let Ok(value) = jwt.parse() {
        headers.insert("x-trigger-jwt", value);
    }
    Ok((
        headers,
        Json(json!({
            "id": token.id,
            "isCached": cached,
            "url": state.executor.token_url(&token.id),
        })),
    ))
}

/// `GET /api/v1/waitpoints/tokens/{id}`.
pub(super) async fn retrieve(
    Env(state): Env,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let token = state.executor.token(&token_id(&id)?)?;
    Ok(Json(view(&state, &token)))
}

/// The completion data of a request body: `{data}` for the API, the whole
/// body for a callback.
fn data_of(bytes: &Bytes, whole: bool) -> Result<String, ApiError> {
    if bytes.len() > MAX_TOKEN_DATA {
        return Err(ApiError::too_large(format!(
            "The data is {} bytes; wait token data is limited to {MAX_TOKEN_DATA} bytes",
            bytes.len()
        )));
    }
    let body: Value = super::json_body_or_default(bytes)?;
    Ok(if whole {
        body.to_string()
    } else {
        body.get("data").cloned().unwrap_or(Value::Null).to_string()
    })
}

/// `POST /api/v1/waitpoints/tokens/{id}/complete` `{data?}`.
pub(super) async fn complete(
    Env(state): Env,
    Path(id): Path<String>,
    axum::extract::Extension(caller): axum::extract::Extension<super::access::Caller>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    caller.may_complete_token(&id)?;
    let data = data_of(&bytes, false)?;
    state.executor.complete_token(&token_id(&id)?, data).await?;
    Ok(Json(json!({ "success": true })))
}

/// `POST /api/v1/waitpoints/tokens/{id}/callback/{signature}`: completes the
/// token with the request's JSON body, without an API key.
pub(super) async fn callback(
    axum::extract::State(hub): axum::extract::State<std::sync::Arc<crate::environments::Hub>>,
    Path((id, signature)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = token_id(&id)?;
    // The environment whose secret signed the URL: token ids are unique
    // across environments, so at most one matches.
    let state = hub
        .all()
        .into_iter()
        .find(|state| {
            let expected = crate::jwt::token_signature(&state.signing_secret, id.as_str());
            super::constant_time_eq(signature.as_bytes(), expected.as_bytes())
        })
        .ok_or_else(|| ApiError::unauthorized("Invalid callback signature"))?;
    let data = data_of(&bytes, true)?;
    state.executor.complete_token(&id, data).await?;
    Ok(Json(json!({ "success": true })))
}

/// `GET /api/v1/waitpoints/tokens`, newest first, with `page[size]`,
/// `page[after]` and `filter[status]`, `filter[idempotencyKey]`,
/// `filter[tags]`.
pub(super) async fn list(
    Env(state): Env,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let size = match q.get("page[size]") {
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::bad_request("page[size] must be 1 to 100"))?,
        None => 25,
    };
    let now = Timestamp::now();
    let statuses: Option<Vec<String>> = q
        .get("filter[status]")
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let tags: Option<Vec<String>> = q
        .get("filter[tags]")
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let key = q.get("filter[idempotencyKey]");
    let after = q.get("page[after]");
    let mut matching: Vec<WaitToken> = state
        .executor
        .tokens()?
        .into_iter()
        .filter(|t| {
            statuses
                .as_ref()
                .is_none_or(|s| s.iter().any(|x| x == t.status_at(now).as_str()))
                && tags
                    .as_ref()
                    .is_none_or(|tags| t.tags.iter().any(|x| tags.contains(x)))
                && key.is_none_or(|k| t.idempotency_key.as_ref() == Some(k))
                && after.is_none_or(|a| t.id.as_str() < a.as_str())
        })
        .collect();
    let more = matching.len() > size;
    matching.truncate(size);
    let mut pagination = Map::new();
    if more && let Some(last) = matching.last() {
        pagination.insert("next".into(), json!(last.id));
    }
    Ok(Json(json!({
        "data": matching.iter().map(|t| view(&state, t)).collect::<Vec<_>>(),
        "pagination": pagination,
    })))
}
