//! The packets flow of the official SDK for payloads too large to send
//! inline: the SDK asks `PUT /api/v1/packets/{path}` for a presigned URL,
//! PUTs the data there without an API key, and triggers with
//! `payload: <path>, payloadType: "application/store"`. The trigger reads
//! the packet back from the store ([`resolve`]), so the run's payload is
//! validated against the task's schema like any other.
//!
//! A presigned URL carries its method, expiry and an HMAC of both with the
//! path under the server's key; it works for one hour.

use super::{ApiError, AppState, Env};
use crate::environments::Hub;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_store::{Batch, Packet, Store};
use kiln_types::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// How long a presigned URL works.
const PRESIGNED_FOR_MS: u64 = 60 * 60 * 1000;
/// The longest packet path accepted.
const MAX_PATH: usize = 1024;
/// The largest packet accepted (Trigger.dev's 10 MB payload cap).
pub(crate) const MAX_PACKET_BYTES: usize = 10 * 1024 * 1024;

/// A packet path: letters, digits and `-_.~/`, no `..` segment.
fn checked_path(path: &str) -> Result<&str, ApiError> {
    let ok = !path.is_empty()
        && path.len() <= MAX_PATH
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~/".contains(&b))
        && !path.split('/').any(|s| s == ".." || s == ".");
    if ok {
        Ok(path)
    } else {
        Err(ApiError::bad_request(format!(
            "Invalid packet path `{path}`: use 1 to {MAX_PATH} letters, digits and -_.~/ without `.` or `..` segments"
        )))
    }
}

fn presigned_url(state: &AppState, method: &str, path: &str) -> String {
    let expires = Timestamp::now().as_millis() + PRESIGNED_FOR_MS;
    let signature = crate::jwt::packet_signature(&state.signing_secret, method, path, expires);
    // The environment the packet belongs to; its secret signed the URL.
    let env = state.env_id.replace('/', "%2F");
    format!(
        "{}/packets/{path}?expires={expires}&signature={signature}&env={env}",
        state.public_url
    )
}

/// What a run packet URL's signature covers besides its path: not `GET`,
/// so that a packet URL for the path `runs/...` never reads a run's payload.
const RUN_PACKET: &str = "GET run-packet";

/// A signed GET URL for `path` under `/{base}/` (what is signed is
/// `{base}/{path}`, so it serves no other route).
fn presigned_url_at(state: &AppState, base: &str, path: &str) -> String {
    let expires = Timestamp::now().as_millis() + PRESIGNED_FOR_MS;
    let signed = format!("{base}/{path}");
    let signature =
        crate::jwt::packet_signature(&state.signing_secret, RUN_PACKET, &signed, expires);
    let env = state.env_id.replace('/', "%2F");
    format!(
        "{}/{signed}?expires={expires}&signature={signature}&env={env}",
        state.public_url
    )
}

/// The environment a presigned URL names (the default one when it names
/// none, as URLs made before projects existed).
fn environment_of(hub: &Hub, query: &Presigned) -> Result<AppState, ApiError> {
    match &query.env {
        None => Ok(hub.default_environment().clone()),
        Some(id) => hub
            .opened(id)
            .ok_or_else(|| ApiError::unauthorized("Invalid packet URL: unknown environment")),
    }
}

/// `PUT /api/v1/packets/{path}`: a presigned URL to upload the packet to.
pub(super) async fn presign_upload(
    Env(state): Env,
    Path(path): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let path = checked_path(&path)?;
    Ok(Json(json!({
        "presignedUrl": presigned_url(&state, "PUT", path),
        "storagePath": path,
    })))
}

/// `GET /api/v1/packets/{path}`: a presigned URL to download the packet from.
pub(super) async fn presign_download(
    Env(state): Env,
    Path(path): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let path = checked_path(&path)?;
    if state.store.packet(path)?.is_none() {
        return Err(ApiError::not_found(format!("No packet at `{path}`")));
    }
    Ok(Json(
        json!({ "presignedUrl": presigned_url(&state, "GET", path) }),
    ))
}

/// The query of a presigned URL.
#[derive(Debug, Deserialize)]
pub(super) struct Presigned {
    expires: u64,
    signature: String,
    env: Option<String>,
}

fn check_signature(
    state: &AppState,
    method: &str,
    path: &str,
    query: &Presigned,
) -> Result<(), ApiError> {
    let expected = crate::jwt::packet_signature(&state.signing_secret, method, path, query.expires);
    if !super::constant_time_eq(expected.as_bytes(), query.signature.as_bytes()) {
        return Err(ApiError::unauthorized("Invalid packet URL signature"));
    }
    if query.expires < Timestamp::now().as_millis() {
        return Err(ApiError::unauthorized("The packet URL has expired"));
    }
    Ok(())
}

/// `PUT /packets/{path}?expires=..&signature=..`: stores a packet.
pub(super) async fn upload(
    State(hub): State<Arc<Hub>>,
    Path(path): Path<String>,
    Query(query): Query<Presigned>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let state = environment_of(&hub, &query)?;
    let path = checked_path(&path)?;
    check_signature(&state, "PUT", path, &query)?;
    if body.len() > MAX_PACKET_BYTES {
        return Err(ApiError::too_large(format!(
            "The packet is {} bytes; the most is {MAX_PACKET_BYTES}",
            body.len()
        )));
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let mut batch = Batch::default();
    batch.put_packet(
        path,
        &Packet {
            content_type,
            data: body.to_vec(),
        },
    );
    state.store.commit(batch).await?;
    Ok(StatusCode::OK)
}

/// `GET /packets/{path}?expires=..&signature=..`: a stored packet's bytes.
pub(super) async fn download(
    State(hub): State<Arc<Hub>>,
    Path(path): Path<String>,
    Query(query): Query<Presigned>,
) -> Result<Response, ApiError> {
    let state = environment_of(&hub, &query)?;
    let path = checked_path(&path)?;
    check_signature(&state, "GET", path, &query)?;
    let packet = state
        .store
        .packet(path)?
        .ok_or_else(|| ApiError::not_found(format!("No packet at `{path}`")))?;
    let content_type = HeaderValue::from_str(&packet.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    Ok(([(CONTENT_TYPE, content_type)], packet.data).into_response())
}

/// For a trigger whose `payloadType` is `application/store`: the uploaded
/// packet the payload names, as the payload text and its type.
pub(crate) fn resolve(
    store: &Store,
    payload: Option<&Value>,
) -> Result<(String, String), ApiError> {
    let Some(Value::String(path)) = payload else {
        return Err(ApiError::bad_request(
            "payloadType application/store needs the packet's path as the payload",
        ));
    };
    let packet = store.packet(checked_path(path)?)?.ok_or_else(|| {
        ApiError::bad_request(format!(
            "No packet was uploaded at `{path}`: PUT it to the URL from PUT /api/v1/packets/{path} first"
        ))
    })?;
    // `application/json; charset=utf-8` is `application/json`.
    let content_type = packet
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let text = String::from_utf8(packet.data)
        .map_err(|_| ApiError::bad_request(format!("The packet at `{path}` is not UTF-8 text")))?;
    Ok((text, content_type))
}

/// The signed URL a run's payload or output (`field`) is read from.
pub(crate) fn run_packet_url(state: &AppState, run: &kiln_types::RunId, field: &str) -> String {
    presigned_url_at(state, "runs", &format!("{run}/{field}"))
}

/// `GET /api/v1/runs/{runId}/packets/{field}`: `{presignedUrl}` of a run's
/// payload or output (what the SDK asks for a realtime row's stored packet).
pub(super) async fn presign_run_packet(
    Env(state): Env,
    Path((run_id, field)): Path<(String, String)>,
    axum::extract::Extension(caller): axum::extract::Extension<super::access::Caller>,
) -> Result<Json<Value>, ApiError> {
    let run = super::stored_run(&state, &run_id)?;
    caller.may_read_run(&run)?;
    if !matches!(field.as_str(), "payload" | "output") {
        return Err(ApiError::not_found(format!(
            "No packet `{field}`: use payload or output"
        )));
    }
    Ok(Json(
        json!({ "presignedUrl": run_packet_url(&state, &run.id, &field) }),
    ))
}

/// `GET /runs/{runId}/{field}?expires=..&signature=..`: a run's payload or
/// output through a signed URL, no key needed.
pub(super) async fn download_run_packet(
    State(hub): State<Arc<Hub>>,
    Path((run_id, field)): Path<(String, String)>,
    Query(query): Query<Presigned>,
) -> Result<Response, ApiError> {
    let state = environment_of(&hub, &query)?;
    check_signature(
        &state,
        RUN_PACKET,
        &format!("runs/{run_id}/{field}"),
        &query,
    )?;
    let run = super::stored_run(&state, &run_id)?;
    let (data, content_type) = match field.as_str() {
        "payload" => (state.store.payload_of(&run)?, run.payload_type.clone()),
        "output" => (
            state
                .store
                .output_of(&run)?
                .ok_or_else(|| ApiError::not_found("The run has no output"))?,
            "application/json".to_string(),
        ),
        _ => return Err(ApiError::not_found(format!("No packet `{field}`"))),
    };
    let content_type = HeaderValue::from_str(&content_type)
        .unwrap_or(HeaderValue::from_static("application/json"));
    Ok(([(CONTENT_TYPE, content_type)], data).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_paths_stay_inside_their_keyspace() {
        assert!(checked_path("batch_1/item_0/payload.json").is_ok());
        assert!(checked_path("payloads/run_abc.json").is_ok());
        for bad in ["", "../x", "a/../b", "a/./b", "a b", "a?b", "ü"] {
            assert!(checked_path(bad).is_err(), "{bad}");
        }
        assert!(checked_path(&"a".repeat(MAX_PATH + 1)).is_err());
    }
}
