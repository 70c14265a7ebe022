//! The HTTP API: Trigger.dev's wire format plus Kiln's deployments,
//! journals, projects and keys.
//!
//! Every route is in [`routes::table`], with who may call it and its
//! request body's type; the router and the OpenAPI document
//! (`GET /api/openapi.json`, `docs/openapi.json`) are both built from it.
//! Routes that are not open take an environment's secret key; the few a
//! frontend needs also take a public access token (see [`access`]).

pub(crate) mod access;
mod annotations;
mod auth_tokens;
mod batches;
mod dashboard;
mod deployments;
mod envvars;
mod error;
mod metrics;
mod openapi;
mod packets;
mod projects;
mod queues;
mod ready;
mod realtime;
mod realtime_rows;
mod realtime_streams;
mod routes;
mod run_list;
mod run_view;
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
use axum::routing::MethodRouter;
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

/// The API's router, built from [`routes::table`]: the routes that take a
/// key or token behind the auth middleware, the others open; every answer
/// held until what it showed is durable.
pub fn router(hub: Arc<Hub>) -> Router {
    let mut open: Router<Arc<Hub>> = Router::new();
    let mut authed: Router<Arc<Hub>> = Router::new();
    let mut by_path: Vec<(&'static str, routes::Caller, MethodRouter<Arc<Hub>>)> = Vec::new();
    for route in routes::table() {
        let handler = (route.handler)();
        match by_path.iter_mut().find(|(path, _, _)| *path == route.path) {
            Some((_, _, methods)) => *methods = std::mem::take(methods).merge(handler),
            None => by_path.push((route.path, route.caller, handler)),
        }
    }
    for (path, caller, methods) in by_path {
        match caller {
            routes::Caller::Anyone => open = open.route(path, methods),
            _ => authed = authed.route(path, methods),
        }
    }
    let authed = authed
        .layer(DefaultBodyLimit::max(MAX_TRIGGER_BYTES))
        .route_layer(axum::middleware::from_fn_with_state(
            hub.clone(),
            access::authenticate,
        ))
        .route_layer(axum::middleware::from_fn(metrics::count));
    let open = open
        .merge(dashboard::router())
        .route_layer(axum::middleware::from_fn(metrics::count));
    open.merge(authed)
        .fallback(|| async { ApiError::not_found("No such route") })
        .layer(axum::middleware::from_fn_with_state(hub.clone(), settle))
        .with_state(hub)
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

/// JSON documents at least this large are parsed, validated and written
/// on the blocking pool (see [`json_work`]).
pub(crate) const LARGE_JSON: usize = 256 * 1024;

/// Runs `work` — parsing, validating or writing a JSON document of `size`
/// bytes — on the blocking pool when the document is large, so that a
/// runtime worker other requests wait for is not held for milliseconds;
/// inline when it is small, where the hand-off would cost more than the
/// work.
pub(crate) async fn json_work<T, F>(size: usize, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if size < LARGE_JSON {
        return Ok(work());
    }
    tokio::task::spawn_blocking(|| kiln_sandbox::cpu::blocking(work))
        .await
        .map_err(|e| ApiError::internal(format!("JSON work was cut short: {e}")))
}

/// A JSON response whose value `view` builds; built and written on the
/// blocking pool when the document is about `size` bytes or more (see
/// [`json_work`]).
pub(crate) async fn json_response<F, T>(size: usize, view: F) -> Result<Response, ApiError>
where
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
    T: serde::Serialize,
{
    let bytes = json_work(size, move || {
        serde_json::to_vec(&view()?)
            .map_err(|e| ApiError::internal(format!("writing the response failed: {e}")))
    })
    .await??;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response())
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
