//! `GET /readyz`: whether this server can serve, for a load balancer.

use super::ApiError;
use crate::environments::Hub;
use axum::extract::State;
use std::sync::Arc;
use std::time::Duration;

/// How long the store may take to answer before the server is reported
/// not ready.
const STORE_ANSWERS_WITHIN: Duration = Duration::from_secs(2);

/// `GET /readyz`: `ready` once the store answers a read, 503 with the
/// reason when it does not (a PostgreSQL store that cannot be reached).
/// `/healthz` only says the process answers.
pub(super) async fn serve(State(hub): State<Arc<Hub>>) -> Result<&'static str, ApiError> {
    let backend = hub.backend();
    let read = tokio::task::spawn_blocking(move || backend.get(b"seal-check"));
    match tokio::time::timeout(STORE_ANSWERS_WITHIN, read).await {
        Ok(Ok(Ok(_))) => Ok("ready"),
        Ok(Ok(Err(error))) => Err(ApiError::unavailable(format!(
            "the store cannot be read: {error}"
        ))),
        Ok(Err(_)) => Err(ApiError::unavailable("the store read failed")),
        Err(_) => Err(ApiError::unavailable(format!(
            "the store did not answer within {} s",
            STORE_ANSWERS_WITHIN.as_secs()
        ))),
    }
}
