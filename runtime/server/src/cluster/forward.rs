//! Forwarding a standby's requests to the node that leads.
//!
//! The request goes on as it came — method, path, query, headers, body,
//! streamed both ways, so realtime subscriptions and long `?wait=` polls
//! work through any node. While no node leads (the moments after the leader
//! died, before a standby took over), the answer is a 503 with
//! `Retry-After`, which clients retry. A leader that stops answering
//! without dying is given up once another node leads: a read is sent to
//! the new leader, anything else answered 502, and a streamed answer ends.

use super::{Cluster, FORWARDED_BY};
use crate::api::ApiError;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, Method, header};
use axum::response::{IntoResponse, Response};
use kiln_store::Node;
use std::sync::Arc;
use std::time::Duration;

/// Bodies up to this size are read before they are forwarded, so they can
/// be sent again to a node that took over.
const RESENDABLE: usize = 1 << 20;

/// A forwarded request's body: read whole (sent as often as needed), or
/// streamed through once.
enum Outgoing {
    Bytes(axum::body::Bytes),
    Stream(Option<Body>),
}

impl Outgoing {
    /// The body for the next send; `None` once a stream went.
    fn next(&mut self) -> Option<reqwest::Body> {
        match self {
            Outgoing::Bytes(bytes) => Some(reqwest::Body::from(bytes.clone())),
            Outgoing::Stream(body) => body
                .take()
                .map(|b| reqwest::Body::wrap_stream(b.into_data_stream())),
        }
    }
}

/// Headers that belong to one connection, not to the request. `Host` goes
/// on as the client sent it, so the leader sees the origin the client
/// used.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `name` belongs to the connection: a hop-by-hop header, or one
/// the `Connection` header of `headers` names.
fn hop_by_hop(name: &HeaderName, headers: &axum::http::HeaderMap) -> bool {
    HOP_BY_HOP.contains(name)
        || name.as_str() == "keep-alive"
        || headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
}

/// A 503 the client should retry in a second.
fn retry_soon(message: String) -> Response {
    let mut response = ApiError::unavailable(message).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

/// Resolves once a node other than `node` leads (as this node's watch of
/// the leader reads it, every 200 ms): the node that leads then.
async fn moved_from(cluster: &Cluster, node: &str) -> Node {
    loop {
        if let Some(now) = cluster.leader()
            && now.node != node
        {
            return now;
        }
        tokio::time::sleep(super::WATCH_LEADER).await;
    }
}

/// Sends `request` to the node that leads and answers with its answer.
pub(super) async fn to_leader(cluster: &Arc<Cluster>, request: Request) -> Response {
    if request.headers().contains_key(FORWARDED_BY) {
        // The sender took this node for the leader: it no longer is, or
        // is still taking over.
        return retry_soon(format!(
            "node {} does not lead the cluster (yet); retry",
            cluster.node()
        ));
    }
    let Some(leader) = cluster.leader_now().await else {
        return retry_soon("no node leads the cluster right now; retry".into());
    };
    if leader.node == cluster.node() {
        return retry_soon(format!(
            "node {} is taking over the cluster; retry",
            cluster.node()
        ));
    }
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    // A small body is read first, so the request can be sent again if the
    // node it went to turns out to be gone (the lead moved meanwhile); a
    // large one is streamed through.
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let bodiless = length.is_none()
        && !parts.headers.contains_key(header::TRANSFER_ENCODING)
        && matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
        );
    let mut body = if bodiless || length.is_some_and(|n| n <= RESENDABLE) {
        match axum::body::to_bytes(body, RESENDABLE).await {
            Ok(bytes) => Outgoing::Bytes(bytes),
            Err(error) => {
                return ApiError::bad_request(format!("reading the request failed: {error}"))
                    .into_response();
            }
        }
    } else {
        Outgoing::Stream(Some(body))
    };
    let mut leader = leader;
    let mut tries = 0;
    let answer = loop {
        tries += 1;
        // The lead may have moved while the body was read, or before a
        // try again: nothing went yet, so the request goes to the node
        // that leads now.
        if let Some(now) = cluster.leader()
            && now.node != leader.node
        {
            if now.node == cluster.node() {
                return retry_soon(format!(
                    "node {} is taking over the cluster; retry",
                    cluster.node()
                ));
            }
            leader = now;
        }
        let url = format!("{}{path}", leader.url.trim_end_matches('/'));
        let mut outgoing = cluster.http.request(parts.method.clone(), &url);
        for (name, value) in &parts.headers {
            if !hop_by_hop(name, &parts.headers) {
                outgoing = outgoing.header(name, value);
            }
        }
        let Some(payload) = body.next() else {
            return retry_soon(format!(
                "the node that leads the cluster ({}) could not be reached; retry",
                leader.node
            ));
        };
        let sending = outgoing
            .header(FORWARDED_BY, cluster.node())
            .body(payload)
            .send();
        // A leader that stops answering (paused, cut off) keeps the
        // connection open; once another node leads, it is given up.
        // Watched only once a connection is surely made (the client's
        // connect timeout has passed, with a margin): a request still
        // unsent goes to the new leader by the connect error's path below.
        let given_up = async {
            tokio::time::sleep(super::CONNECT_TIMEOUT + Duration::from_millis(500)).await;
            moved_from(cluster, &leader.node).await
        };
        let sent = tokio::select! {
            biased;
            sent = sending => sent,
            now = given_up => {
                tracing::warn!(leader = %leader.node, now = %now.node, "the leader stopped answering a forwarded request and another node leads");
                // A read changes nothing: the new leader answers it (this
                // node, once it serves: the client sends it again).
                if matches!(parts.method, Method::GET | Method::HEAD)
                    && matches!(body, Outgoing::Bytes(_))
                    && tries < 3
                {
                    if now.node == cluster.node() {
                        return retry_soon(format!(
                            "node {} is taking over the cluster; retry",
                            cluster.node()
                        ));
                    }
                    leader = now;
                    continue;
                }
                return ApiError::bad_gateway(format!(
                    "the node that led the cluster ({}) stopped answering and node {} leads \
                     now; the request may have been applied",
                    leader.node, now.node
                ))
                .into_response();
            }
        };
        match sent {
            Ok(answer) => break answer,
            Err(error) => {
                tracing::warn!(leader = %leader.node, url = %leader.url, %error, "forwarding to the leader failed");
                // Nothing reached a node that is gone: if another leads
                // now, send it there.
                if error.is_connect()
                    && tries == 1
                    && let Some(now) = cluster.read_leader().await
                    && now.node != leader.node
                    && now.node != cluster.node()
                {
                    leader = now;
                    continue;
                }
                if error.is_connect() {
                    return retry_soon(format!(
                        "the node that leads the cluster ({}) could not be reached; retry",
                        leader.node
                    ));
                }
                // The request may have reached the leader, and been
                // applied: the client decides whether to send it again.
                return ApiError::bad_gateway(format!(
                    "the node that leads the cluster ({}) failed while answering; the \
                     request may have been applied",
                    leader.node
                ))
                .into_response();
            }
        }
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !hop_by_hop(name, answer.headers()) {
            response = response.header(name, value);
        }
    }
    // A stream (realtime, a long poll) from a leader that stops answering
    // ends once another node leads, so the client reconnects there.
    let leader = leader.node;
    let watching = cluster.clone();
    let chunks =
        futures_util::stream::unfold(Some(Box::pin(answer.bytes_stream())), move |chunks| {
            let watching = watching.clone();
            let leader = leader.clone();
            async move {
                let mut chunks = chunks?;
                tokio::select! {
                    chunk = futures_util::StreamExt::next(&mut chunks) => {
                        chunk.map(|chunk| (chunk.map_err(std::io::Error::other), Some(chunks)))
                    }
                    now = moved_from(&watching, &leader) => Some((
                        Err(std::io::Error::other(format!(
                            "the node that led the cluster ({leader}) stopped answering and \
                             node {} leads now",
                            now.node
                        ))),
                        None,
                    )),
                }
            }
        });
    response
        .body(Body::from_stream(chunks))
        .unwrap_or_else(|e| {
            ApiError::internal(format!("forwarding the answer: {e}")).into_response()
        })
}
