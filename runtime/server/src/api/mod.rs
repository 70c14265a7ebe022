//! The HTTP API: Trigger.dev's wire format plus Kiln's deployments.
//!
//! | route | what |
//! |---|---|
//! | `POST /api/v1/tasks/{taskId}/trigger` | trigger a run |
//! | `GET /api/v3/runs/{runId}` | retrieve a run (`?wait=MS` waits for it to finish, at most 60 s) |
//! | `POST /api/v2/runs/{runId}/cancel` | cancel a run (interrupts it if executing) |
//! | `GET /api/v1/runs` | list runs, newest first, with filters and cursors |
//! | `GET /api/v1/runs/{runId}/journal` | the run's journal (Kiln's own) |
//! | `POST /api/v1/schedules`, `GET` | create (upsert by `deduplicationKey`), list |
//! | `GET`/`PUT`/`DELETE /api/v1/schedules/{id}` | retrieve, update, delete a schedule |
//! | `POST /api/v1/schedules/{id}/activate`, `/deactivate` | turn a schedule on or off |
//! | `GET /api/v1/timezones` | IANA time zones, no auth |
//! | `POST`/`GET /api/v1/waitpoints/tokens` | create, list wait tokens |
//! | `GET /api/v1/waitpoints/tokens/{id}`, `POST .../complete` | retrieve, complete a token |
//! | `POST /api/v1/waitpoints/tokens/{id}/callback/{signature}` | complete through its URL, no auth |
//! | `PUT`/`GET /api/v1/packets/{path}` (and `/api/v2/...`) | a presigned URL to upload or download a large payload |
//! | `PUT`/`GET /packets/{path}?expires=..&signature=..` | the presigned URL itself, no auth |
//! | `GET /api/v1/queues`, `GET /api/v1/queues/{queue}` | list queues, retrieve one (queued, running, limits, paused, busiest keys) |
//! | `POST /api/v1/queues/{queue}/pause` | `{action: "pause"\|"resume"}` |
//! | `POST /api/v1/deployments` | deploy a bundle (the body is its bytes) |
//! | `GET /api/v1/deployments` | list deployments |
//! | `GET /realtime/v1/runs/{runId}`, `/realtime/v1/runs?tags=`, `/realtime/v1/batches/{batchId}` | realtime subscriptions (Electric's shape protocol, as the SDK's `runs.subscribeTo*` speak it) |
//! | `GET /realtime/v1/streams/{runId}/{key}` | server-sent events: the chunks a task appends to a realtime stream (`streams.read`) |
//! | `GET /realtime/v1/events/runs/{runId}` | server-sent events: the run after each change, until it finishes |
//! | `POST /api/v1/auth/public-tokens` | mint a public access token `{scopes, expirationTime?, oneTimeUse?}` |
//! | `POST /api/v1/auth/jwt/claims` | the claims the SDK signs a public token with itself |
//! | `POST`/`GET /api/v1/projects` | create, list projects (the server's own key only) |
//! | `POST`/`GET /api/v1/projects/{ref}/keys`, `DELETE .../keys/{keyId}` | create, list, revoke a project's keys (the server's own key only) |
//! | `GET /healthz` | liveness, no auth |
//!
//! Every route but the ones marked "no auth" takes the environment's secret
//! key; the few a frontend needs also take a public access token (see
//! [`access`]).

mod access;
mod annotations;
mod auth_tokens;
mod batches;
mod deployments;
mod error;
mod packets;
mod projects;
mod queues;
mod realtime;
mod realtime_rows;
mod realtime_streams;
mod run_list;
mod runs;
mod schedules;
mod tokens;

pub use error::ApiError;

use crate::deployments::Deployments;
use crate::environments::Hub;
use crate::executor::Executor;
use crate::notify::Notifier;
use crate::schedules::Schedules;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use kiln_store::Store;
use std::sync::Arc;

/// The largest bundle a deploy accepts.
pub const MAX_BUNDLE_BYTES: usize = 64 * 1024 * 1024;
/// The largest trigger body accepted (a 10 MB payload plus its envelope).
pub const MAX_TRIGGER_BYTES: usize = 11 * 1024 * 1024;

/// One environment of one project: what every handler of a request works
/// with (see [`Env`]).
#[derive(Clone)]
pub struct AppState {
    pub(crate) store: Store,
    pub(crate) deployments: Arc<Deployments>,
    pub(crate) executor: Executor,
    pub(crate) schedules: Schedules,
    pub(crate) notifier: Arc<Notifier>,
    /// Which runs changed, for realtime subscriptions.
    pub(crate) feed: Arc<crate::feed::Feed>,
    /// Which runs' realtime streams grew.
    pub(crate) stream_feed: Arc<crate::feed::Feed>,
    /// Signs the environment's callback and packet URLs and the public
    /// access tokens it mints.
    pub(crate) signing_secret: Arc<str>,
    /// The environment's name (`dev`, `staging`, `prod`, `preview`).
    pub(crate) environment: Arc<str>,
    /// `<project>/<environment>`.
    pub(crate) env_id: Arc<str>,
    /// The URL clients reach the server at (for presigned packet URLs).
    pub(crate) public_url: Arc<str>,
}

/// The environment a request works in, as its key or token named it.
pub(crate) struct Env(pub(crate) AppState);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Env {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<AppState>()
            .cloned()
            .map(Env)
            .ok_or_else(|| ApiError::internal("No environment was resolved for this route"))
    }
}

/// The API's router.
pub fn router(hub: Arc<Hub>) -> Router {
    let state = hub;
    let authed = Router::new()
        .route("/api/v1/tasks/{task_id}/trigger", post(runs::trigger))
        .route("/api/v3/runs/{run_id}", get(runs::retrieve))
        .route("/api/v2/runs/{run_id}/cancel", post(runs::cancel))
        .route("/api/v1/runs/{run_id}/reschedule", post(runs::reschedule))
        .route("/api/v1/runs/{run_id}/replay", post(runs::replay))
        .route("/api/v3/batches", post(batches::create))
        .route(
            "/api/v3/batches/{batch_id}/items",
            post(batches::items).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v2/batches/{batch_id}", get(batches::retrieve))
        .route(
            "/api/v1/runs/{run_id}/metadata",
            put(annotations::put_metadata).get(annotations::get_metadata),
        )
        .route("/api/v1/runs/{run_id}/tags", post(annotations::add_tags))
        .route(
            "/api/v1/packets/{*path}",
            put(packets::presign_upload).get(packets::presign_download),
        )
        .route(
            "/api/v2/packets/{*path}",
            put(packets::presign_upload).get(packets::presign_download),
        )
        .route("/api/v1/runs", get(run_list::list))
        .route("/api/v1/queues", get(queues::list))
        .route("/api/v1/queues/{queue}", get(queues::retrieve))
        .route("/api/v1/queues/{queue}/pause", post(queues::pause))
        .route("/api/v1/runs/{run_id}/journal", get(runs::journal))
        .route(
            "/api/v1/schedules",
            post(schedules::create).get(schedules::list),
        )
        .route(
            "/api/v1/schedules/{id}",
            put(schedules::update)
                .get(schedules::retrieve)
                .delete(schedules::delete),
        )
        .route("/api/v1/schedules/{id}/activate", post(schedules::activate))
        .route(
            "/api/v1/waitpoints/tokens",
            post(tokens::create).get(tokens::list),
        )
        .route("/api/v1/waitpoints/tokens/{id}", get(tokens::retrieve))
        .route(
            "/api/v1/waitpoints/tokens/{id}/complete",
            post(tokens::complete),
        )
        .route(
            "/api/v1/schedules/{id}/deactivate",
            post(schedules::deactivate),
        )
        .route(
            "/api/v1/deployments",
            post(deployments::create)
                .get(deployments::list)
                .layer(DefaultBodyLimit::max(MAX_BUNDLE_BYTES)),
        )
        .layer(DefaultBodyLimit::max(MAX_TRIGGER_BYTES))
        .route("/realtime/v1/runs/{run_id}", get(realtime::run))
        .route("/realtime/v1/runs", get(realtime::tagged))
        .route("/realtime/v1/batches/{batch_id}", get(realtime::batch))
        .route(
            "/realtime/v1/streams/{run_id}/{key}",
            get(realtime_streams::read),
        )
        .route(
            "/realtime/v1/events/runs/{run_id}",
            get(realtime::run_events),
        )
        .route("/api/v1/auth/jwt/claims", post(auth_tokens::claims))
        .route("/api/v1/auth/public-tokens", post(auth_tokens::create))
        .route(
            "/api/v1/projects",
            post(projects::create).get(projects::list),
        )
        .route(
            "/api/v1/projects/{project}/keys",
            post(projects::create_key).get(projects::list_keys),
        )
        .route(
            "/api/v1/projects/{project}/keys/{key_id}",
            axum::routing::delete(projects::revoke_key),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::authenticate,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/v1/timezones", get(schedules::timezones))
        .route(
            "/api/v1/waitpoints/tokens/{id}/callback/{signature}",
            post(tokens::callback),
        )
        .route(
            "/packets/{*path}",
            put(packets::upload)
                .get(packets::download)
                .layer(DefaultBodyLimit::max(MAX_TRIGGER_BYTES)),
        )
        .merge(authed)
        .fallback(|| async { ApiError::not_found("No such route") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), settle))
        .with_state(state)
}

/// Holds every response until what its handler may have read is durable.
///
/// The store shows a commit to readers as soon as it is applied, a few
/// milliseconds before the group commit puts it on disk. Without this, a
/// client could see a run COMPLETED, the server could crash, and the run
/// would come back EXECUTING. With it, nothing a client was told is lost.
/// When no commit is pending it costs two counter reads.
async fn settle(State(hub): State<Arc<Hub>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    // Every environment's keyspace is in the one backend: settling it
    // settles them all.
    match hub.default_environment().store.settled().await {
        Ok(()) => response,
        Err(e) => ApiError::unavailable(format!("The store could not make data durable: {e}"))
            .into_response(),
    }
}

/// The run named in a path, or a 404.
pub(crate) fn stored_run(state: &AppState, run_id: &str) -> Result<kiln_types::Run, ApiError> {
    let id = kiln_types::RunId::parse(run_id).map_err(|_| ApiError::not_found("Run not found"))?;
    state
        .store
        .run(&id)?
        .ok_or_else(|| ApiError::not_found("Run not found"))
}

/// Parses a JSON request body, with a 400 that says what is wrong.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    bytes: &axum::body::Bytes,
) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("Invalid request body: {e}")))
}

/// [`json_body`], where an empty body (the SDK sends none on some calls)
/// means the defaults.
pub(crate) fn json_body_or_default<T: serde::de::DeserializeOwned + Default>(
    bytes: &axum::body::Bytes,
) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    json_body(bytes)
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
