//! `GET /readyz`: whether this server can serve, for a load balancer.

use super::ApiError;
use crate::environments::Hub;
use axum::extract::State;
use std::sync::Arc;
use std::time::Duration;

/// How long the store may take to answer before the server is reported
/// not ready.
const STORE_ANSWERS_WITHIN: Duration = Duration::from_secs(2);

/// `GET /readyz`: `ready` once the store answers a read, 503 when it does
/// not (a PostgreSQL store that cannot be reached) or when the server
/// drains on its way to stopping; the reason goes to the server's log, not
/// to this unauthenticated route. `/healthz` only says
/// the process answers.
pub(super) async fn serve(State(hub): State<Arc<Hub>>) -> Result<&'static str, ApiError> {
    if hub.draining() {
        // Stopping: a load balancer should send new work elsewhere.
        return Err(ApiError::unavailable("not ready: this server is stopping"));
    }
    let backend = hub.backend();
    let read = tokio::task::spawn_blocking(move || backend.get(kiln_store::layout::SEAL_CHECK));
    let why = match tokio::time::timeout(STORE_ANSWERS_WITHIN, read).await {
        Ok(Ok(Ok(_))) => return Ok("ready"),
        Ok(Ok(Err(error))) => error.to_string(),
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!(
            "the store did not answer within {} s",
            STORE_ANSWERS_WITHIN.as_secs()
        ),
    };
    tracing::warn!(%why, "not ready: the store cannot be read");
    Err(ApiError::unavailable("not ready: the store cannot be read"))
}

/// `GET /api/v1/cluster` on a server on sled, which is no cluster (on
/// PostgreSQL every node answers it before the API sees it).
pub(super) async fn not_a_cluster() -> ApiError {
    ApiError::not_found(
        "This server is not part of a cluster: its store is sled (several nodes share a \
         PostgreSQL store, `kiln serve --store postgres://…`)",
    )
}
