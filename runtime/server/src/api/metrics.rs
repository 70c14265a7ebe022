//! `GET /metrics` and the middleware that counts HTTP requests for it.

use super::ApiError;
use super::access::Caller;
use crate::environments::Hub;
use axum::extract::{Extension, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// `GET /metrics`: every metric in Prometheus's text format, for the
/// server's own key (a scrape config's `authorization: credentials`).
pub(super) async fn serve(
    State(hub): State<Arc<Hub>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    if !caller.admin {
        return Err(ApiError::forbidden(
            "Only the server's own key (the one `kiln serve` started with) reads its metrics",
        ));
    }
    let page = crate::metrics::render(&hub)
        .map_err(|e| ApiError::internal(format!("writing the metrics failed: {e}")))?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            prometheus::TEXT_FORMAT.to_string(),
        )],
        page,
    )
        .into_response())
}

/// Counts a request by the route it matched (its path with `:param`s, so
/// run ids do not make a series each), its method and its status.
pub(super) async fn count(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| route_label(p.as_str()));
    // Any token is a method to hyper: others share one series.
    let method = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
        .into_iter()
        .find(|m| *m == request.method().as_str())
        .unwrap_or("OTHER");
    let response = next.run(request).await;
    crate::metrics::metrics()
        .http_requests
        .with_label_values(&[route.as_str(), method, response.status().as_str()])
        .inc();
    response
}

/// A route's path as its label: `/api/v3/runs/{run_id}` is
/// `/api/v3/runs/:run_id` (braces in label values trip some parsers).
fn route_label(path: &str) -> String {
    path.replace("{*", "*").replace('{', ":").replace('}', "")
}

#[cfg(test)]
mod tests {
    #[test]
    fn route_labels_name_parameters_with_colons() {
        assert_eq!(
            super::route_label("/api/v3/runs/{run_id}"),
            "/api/v3/runs/:run_id"
        );
        assert_eq!(super::route_label("/packets/{*path}"), "/packets/*path");
        assert_eq!(super::route_label("/healthz"), "/healthz");
    }
}
