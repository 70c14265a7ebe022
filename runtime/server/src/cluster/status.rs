//! `GET /api/v1/cluster`: the cluster's nodes, answered by any node.

use super::Cluster;
use crate::api::{ApiError, access};
use axum::Json;
use axum::extract::{Request, State};
use serde_json::{Value, json};
use std::sync::Arc;

/// `GET /api/v1/cluster` (the API key): which node answered, whether it
/// leads, and every node with its URL, whether it leads and how long ago
/// it was last seen.
pub(super) async fn serve(
    State(cluster): State<Arc<Cluster>>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let given = access::bearer(&request).unwrap_or_default();
    if !crate::api::constant_time_eq(given.as_bytes(), cluster.admin_key.as_bytes()) {
        return Err(ApiError::unauthorized(
            "The cluster's status needs the API key: send `Authorization: Bearer <secret key>`",
        ));
    }
    let nodes = cluster.membership.nodes().await?;
    Ok(Json(json!({
        "node": cluster.node(),
        "leads": cluster.leads(),
        "nodes": nodes,
    })))
}
