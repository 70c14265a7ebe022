//! `GET /api/v1/cluster`: the cluster's nodes, answered by any node;
//! `GET /api/v1/cluster/work`: each node's share of the work, answered by
//! the leader; and the route a standby connects to, to run guests.

use super::Cluster;
use crate::api::{ApiError, access};
use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

/// Refuses a request without the cluster's API key.
fn authorize(cluster: &Cluster, request: &Request, what: &str) -> Result<(), ApiError> {
    let given = access::bearer(request).unwrap_or_default();
    if !crate::api::constant_time_eq(given.as_bytes(), cluster.admin_key.as_bytes()) {
        return Err(ApiError::unauthorized(format!(
            "{what} needs the API key: send `Authorization: Bearer <secret key>`"
        )));
    }
    Ok(())
}

/// `GET /api/v1/cluster/work` (the API key): the guests each node runs now,
/// how many it takes at once and how many slices it ran, and how many
/// slices started again because the node running their guest was lost
/// (killed, cut off, silent, or stopped without draining). The leader
/// answers; another node forwards the call to it.
pub(super) async fn work(State(cluster): State<Arc<Cluster>>, request: Request) -> Response {
    if !cluster.leads() {
        return super::forward::to_leader(&cluster, request).await;
    }
    if let Err(error) = authorize(&cluster, &request, "The cluster's work") {
        return error.into_response();
    }
    Json(json!({
        "node": cluster.node(),
        "work": cluster.workers.shares(),
        "lost": cluster.workers.lost(),
    }))
    .into_response()
}

/// `GET /internal/v1/workers` upgraded to Kiln's worker protocol (the API
/// key): a standby offering to run guests for this node, which must lead.
pub(super) async fn connect_worker(
    State(cluster): State<Arc<Cluster>>,
    mut request: Request,
) -> Response {
    if let Err(error) = authorize(&cluster, &request, "Running guests for the leader") {
        return error.into_response();
    }
    if !cluster.leads() {
        return ApiError::unavailable("this node does not lead the cluster").into_response();
    }
    let asked = request
        .headers()
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok());
    if asked != Some(super::wire::PROTOCOL) {
        return ApiError::bad_request(format!(
            "this route takes an upgrade to `{}`",
            super::wire::PROTOCOL
        ))
        .into_response();
    }
    let upgrade = hyper::upgrade::on(&mut request);
    let workers = cluster.workers.clone();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => workers.serve(hyper_util::rt::TokioIo::new(upgraded)).await,
            Err(error) => tracing::warn!(%error, "a worker's connection failed to upgrade"),
        }
    });
    Response::builder()
        .status(axum::http::StatusCode::SWITCHING_PROTOCOLS)
        .header(axum::http::header::CONNECTION, "upgrade")
        .header(axum::http::header::UPGRADE, super::wire::PROTOCOL)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| ApiError::internal("upgrade failed").into_response())
}

/// `GET /api/v1/cluster` (the API key): which node answered, whether it
/// leads, and every node with its URL, whether it leads and how long ago
/// it was last seen.
pub(super) async fn serve(
    State(cluster): State<Arc<Cluster>>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    authorize(&cluster, &request, "The cluster's status")?;
    let nodes = cluster.membership.nodes().await?;
    Ok(Json(json!({
        "node": cluster.node(),
        "leads": cluster.leads(),
        "nodes": nodes,
    })))
}
