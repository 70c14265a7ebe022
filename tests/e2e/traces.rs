//! Traces: `kiln serve --otlp-endpoint` exports a finished run's trace to
//! an OTLP/HTTP collector, here a receiver in the test process that decodes
//! what it gets with OpenTelemetry's own protobuf types.

use crate::harness::{KEY, Kiln, data_dir};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What the receiver was sent: spans, and the resources' service names.
#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    services: Vec<String>,
    content_types: Vec<String>,
}

/// An OTLP/HTTP receiver on a loopback port.
struct Receiver {
    url: String,
    received: Arc<Mutex<Received>>,
    arrived: Arc<Notify>,
}

fn attribute(span: &Span, key: &str) -> Option<Any> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.clone())
}

fn text(span: &Span, key: &str) -> Option<String> {
    match attribute(span, key) {
        Some(Any::StringValue(s)) => Some(s),
        _ => None,
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let received = Arc::new(Mutex::new(Received::default()));
        let arrived = Arc::new(Notify::new());
        let (r, a) = (received.clone(), arrived.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let (received, arrived) = (r.clone(), a.clone());
                    async move {
                        let request = ExportTraceServiceRequest::decode(body)
                            .expect("the body is an OTLP trace export in protobuf");
                        {
                            let mut received = received.lock().unwrap();
                            received.content_types.push(
                                headers
                                    .get("content-type")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_string(),
                            );
                            for resource in request.resource_spans {
                                if let Some(service) = resource.resource.as_ref().and_then(|r| {
                                    r.attributes.iter().find(|a| a.key == "service.name")
                                }) && let Some(Any::StringValue(name)) =
                                    service.value.as_ref().and_then(|v| v.value.clone())
                                {
                                    received.services.push(name);
                                }
                                for scope in resource.scope_spans {
                                    received.spans.extend(scope.spans);
                                }
                            }
                        }
                        arrived.notify_waiters();
                        (
                            [("content-type", "application/x-protobuf")],
                            Vec::<u8>::new(),
                        )
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url,
            received,
            arrived,
        }
    }

    /// The spans received once those of every run in `runs` are there
    /// (each run's own span carries `kiln.run.id`); fails after a deadline.
    async fn spans_of(&self, runs: &[&str]) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let arrived = self.arrived.notified();
            {
                let received = self.received.lock().unwrap();
                let has = |run: &str| {
                    received
                        .spans
                        .iter()
                        .any(|s| text(s, "kiln.run.id").as_deref() == Some(run))
                };
                if runs.iter().all(|run| has(run)) {
                    return received.spans.clone();
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the traces of {runs:?} never arrived");
            let _ = tokio::time::timeout(left, arrived).await;
        }
    }
}

/// Triggers `task` with a `traceparent` header; returns the run's id.
async fn trigger(kiln: &Kiln, task: &str, payload: serde_json::Value, traceparent: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/tasks/{task}/trigger", kiln.url))
        .bearer_auth(KEY)
        .header("traceparent", traceparent)
        .json(&json!({ "payload": payload }))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(response.status(), 200);
    response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .expect("an id")
        .to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn one<'a>(spans: &'a [Span], what: &str, pick: impl Fn(&Span) -> bool) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "one {what} span, in {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

#[tokio::test]
async fn a_runs_trace_with_a_child_and_a_wait_continues_the_triggers_traceparent() {
    let receiver = Receiver::start().await;
    let dir = data_dir();
    let kiln = Kiln::start_with(
        dir.path(),
        &["--warm-wait-ms", "0", "--otlp-endpoint", &receiver.url],
    );
    // Triggered before any deploy has its task: the run waits as
    // PENDING_VERSION, and keeps its caller's trace until it runs.
    let pending_trace = "0af7651916cd43dd8448eb211c80319c";
    let pending = trigger(
        &kiln,
        "echo",
        json!({"n": 1}),
        &format!("00-{pending_trace}-b7ad6b7169203331-01"),
    )
    .await;
    assert_eq!(kiln.run(&pending).await["status"], "PENDING_VERSION");
    kiln.deploy(kiln_fixtures::PROBE).await;
    // A caller that does not record its trace (flags 00) gets no spans.
    let unsampled = trigger(
        &kiln,
        "echo",
        json!({"n": 2}),
        "00-11111111111111111111111111111111-2222222222222222-00",
    )
    .await;
    assert_eq!(kiln.finished(&unsampled).await["status"], "COMPLETED");

    // A backend's trace: the run continues it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let id = trigger(
        &kiln,
        "parent",
        json!({ "mode": "sleepy", "sleep_ms": 200 }),
        &format!("00-{trace_id}-{caller_span}-01"),
    )
    .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let child = run["output"]["child"].as_str().expect("the child's id");
    assert_eq!(kiln.finished(&pending).await["status"], "COMPLETED");

    // A replay continues the trace its own request names.
    let replay_trace = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";
    let replayed = reqwest::Client::new()
        .post(format!("{}/api/v1/runs/{id}/replay", kiln.url))
        .bearer_auth(KEY)
        .header(
            "traceparent",
            format!("00-{replay_trace}-3333333333333333-01"),
        )
        .json(&json!({}))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(replayed.status(), 200);
    let replay = replayed.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .expect("an id")
        .to_string();
    kiln.finished(&replay).await;

    let everything = receiver.spans_of(&[&id, child, &pending, &replay]).await;
    let run_span = |run: &str| {
        one(&everything, "a run", |s| {
            text(s, "kiln.run.id").as_deref() == Some(run)
        })
    };
    let pending_span = run_span(&pending);
    assert_eq!(hex(&pending_span.trace_id), pending_trace);
    assert_eq!(hex(&pending_span.parent_span_id), "b7ad6b7169203331");
    assert_eq!(hex(&run_span(&replay).trace_id), replay_trace);
    // Traces go out in the order runs end: the unrecorded run ended first.
    assert!(
        !everything
            .iter()
            .any(|s| text(s, "kiln.run.id").as_deref() == Some(&unsampled)
                || hex(&s.trace_id) == "11111111111111111111111111111111"),
        "an unrecorded trace was exported"
    );

    // The run, its child and everything under them are one trace: the
    // caller's.
    let spans: Vec<Span> = everything
        .iter()
        .filter(|s| hex(&s.trace_id) == trace_id)
        .cloned()
        .collect();
    let ours = |s: &Span| text(s, "kiln.run.id").is_none_or(|run| run == id || run == child);
    assert!(
        spans.iter().all(ours),
        "only the parent's and child's runs are in the caller's trace"
    );

    let parent_run = one(&spans, "parent run", |s| {
        text(s, "kiln.run.id").as_deref() == Some(&id)
    });
    assert_eq!(parent_run.name, "parent");
    assert_eq!(hex(&parent_run.parent_span_id), caller_span);
    let parent_attempt = one(&spans, "parent attempt", |s| {
        s.parent_span_id == parent_run.span_id && s.name == "attempt 1"
    });
    let under_parent: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == parent_attempt.span_id)
        .collect();
    let names: Vec<&str> = under_parent.iter().map(|s| s.name.as_str()).collect();
    let trigger = one(&spans, "trigger", |s| {
        s.parent_span_id == parent_attempt.span_id && s.name == "trigger"
    });
    assert_eq!(text(trigger, "kiln.child.run_id").as_deref(), Some(child));
    let waited = one(&spans, "wait for the child", |s| {
        s.parent_span_id == parent_attempt.span_id && s.name == "wait for run"
    });
    assert_eq!(text(waited, "kiln.wait.run_id").as_deref(), Some(child));

    // The child's run sits under the parent's attempt that triggered it.
    let child_run = one(&spans, "child run", |s| {
        text(s, "kiln.run.id").as_deref() == Some(child)
    });
    assert_eq!(child_run.name, "sleep");
    assert_eq!(
        child_run.parent_span_id, parent_attempt.span_id,
        "{names:?}"
    );
    let child_attempt = one(&spans, "child attempt", |s| {
        s.parent_span_id == child_run.span_id && s.name == "attempt 1"
    });
    let timer = one(&spans, "the child's timer wait", |s| {
        s.parent_span_id == child_attempt.span_id && s.name == "wait.until"
    });
    // Spans carry the times the journal kept: the child slept 200 ms, and
    // the parent's wait outlasted the child's.
    let lasted = |s: &Span| s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano);
    assert!(lasted(timer) >= 200_000_000, "{} ns", lasted(timer));
    assert!(waited.end_time_unix_nano >= timer.end_time_unix_nano);
    assert!(child_run.start_time_unix_nano >= parent_run.start_time_unix_nano);
    assert!(child_run.end_time_unix_nano <= parent_run.end_time_unix_nano);
    // The child suspended at its wait: a snapshot event on its attempt.
    assert!(
        child_attempt.events.iter().any(|e| e.name == "suspended"),
        "{:?}",
        child_attempt.events
    );

    let received = receiver.received.lock().unwrap();
    assert!(received.services.iter().all(|s| s == "kiln"));
    assert!(
        received
            .content_types
            .iter()
            .all(|c| c == "application/x-protobuf"),
        "{:?}",
        received.content_types
    );
}
