//! A finished run's spans, built from its record and its journal.
//!
//! Everything a span says comes from what the store kept, with the times it
//! kept: the run from its creation to its end, each attempt, each host call
//! at the moment it was journaled, each wait from the step that registered
//! it to its wake, a durable fetch as a client span from its request to its
//! response. Log lines and suspensions are events on their attempt's span.

use super::ids;
use kiln_types::{
    AttemptOutcome, HostCall, JournalEntry, JournalRecord, Run, RunStatus, Timestamp, WaitOn,
    WakeValue,
};
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The most spans one run's trace holds besides its own and its attempts'
/// (a run may journal thousands of host calls); the rest are counted in
/// the run span's `kiln.spans_dropped`.
pub(crate) const MAX_SPANS: usize = 1_000;

/// The most events (log lines, suspensions) one span holds, as the
/// OpenTelemetry SDK's default limit; the rest are counted as dropped.
pub(crate) const MAX_EVENTS: usize = 128;

fn time(at: Timestamp) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(at.as_millis())
}

/// Builds the spans of one run.
struct Builder<'a> {
    run: &'a Run,
    trace: TraceId,
    scope: &'a InstrumentationScope,
    /// The run's end, where a span the journal never closed ends too.
    end: Timestamp,
}

impl Builder<'_> {
    #[allow(clippy::too_many_arguments)]
    fn span(
        &self,
        id: SpanId,
        parent: SpanId,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        start: Timestamp,
        end: Timestamp,
        attributes: Vec<KeyValue>,
    ) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                self.trace,
                id,
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: parent,
            parent_span_is_remote: false,
            span_kind: kind,
            name: name.into(),
            start_time: time(start),
            end_time: time(end.max(start)),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: self.scope.clone(),
        }
    }
}

fn error(description: impl Into<String>) -> Status {
    Status::Error {
        description: Cow::Owned(description.into()),
    }
}

fn strings(values: &[String]) -> Value {
    Value::Array(Array::String(
        values
            .iter()
            .map(|v| StringValue::from(v.clone()))
            .collect(),
    ))
}

/// Adds an event unless the span holds [`MAX_EVENTS`] already.
fn add_event(span: &mut SpanData, event: Event) {
    if span.events.events.len() < MAX_EVENTS {
        span.events.events.push(event);
    } else {
        span.events.dropped_count += 1;
    }
}

/// The run's own span.
fn run_span(b: &Builder<'_>, labels: &[KeyValue], dropped: usize) -> SpanData {
    let run = b.run;
    let mut attributes = vec![
        KeyValue::new("kiln.run.id", run.id.to_string()),
        KeyValue::new("kiln.task.id", run.task_id.clone()),
        KeyValue::new("kiln.run.status", run.status.as_str()),
        KeyValue::new("kiln.run.attempts", i64::from(run.counted_attempts())),
        KeyValue::new("kiln.version", run.version.clone()),
        KeyValue::new("kiln.queue", run.queue_name()),
    ];
    attributes.extend(labels.iter().cloned());
    if !run.tags.is_empty() {
        attributes.push(KeyValue::new("kiln.run.tags", strings(&run.tags)));
    }
    if let Some(parent) = &run.parent {
        attributes.push(KeyValue::new(
            "kiln.run.parent_id",
            parent.parent.to_string(),
        ));
        attributes.push(KeyValue::new(
            "kiln.run.trigger_function",
            parent.trigger_function.clone(),
        ));
    }
    if let Some(batch) = &run.batch {
        attributes.push(KeyValue::new("kiln.batch.id", batch.clone()));
    }
    if let Some(key) = &run.concurrency_key {
        attributes.push(KeyValue::new("kiln.concurrency_key", key.clone()));
    }
    if dropped > 0 {
        attributes.push(KeyValue::new("kiln.spans_dropped", dropped as i64));
    }
    let mut span = b.span(
        ids::run_span(&run.id),
        ids::parent_span(run),
        run.task_id.clone(),
        SpanKind::Consumer,
        run.created_at,
        b.end,
        attributes,
    );
    // A trigger's `traceparent` names a span of another process; a
    // child's parent span is its parent run's attempt, here.
    span.parent_span_is_remote = run.parent.is_none() && span.parent_span_id != SpanId::INVALID;
    span.status = match run.status {
        RunStatus::Completed => Status::Ok,
        RunStatus::Canceled => Status::Unset,
        status => error(match &run.error {
            Some(e) => format!("{}: {}", status.as_str(), e.message),
            None => status.as_str().to_string(),
        }),
    };
    span
}

/// One span per attempt, with its log lines as events.
fn attempt_spans(b: &Builder<'_>) -> BTreeMap<u32, SpanData> {
    let run = b.run;
    let mut spans = BTreeMap::new();
    for attempt in &run.attempts {
        let mut attributes = vec![
            KeyValue::new("kiln.attempt.number", i64::from(attempt.number)),
            KeyValue::new("kiln.machine", attempt.machine.name().to_string()),
            KeyValue::new("kiln.attempt.usage_ms", attempt.usage_ms as i64),
        ];
        if let Some(outcome) = attempt.outcome {
            attributes.push(KeyValue::new("kiln.attempt.outcome", outcome_name(outcome)));
        }
        let mut span = b.span(
            ids::attempt_span(&run.id, attempt.number),
            ids::run_span(&run.id),
            format!("attempt {}", attempt.number),
            SpanKind::Internal,
            attempt.started_at,
            attempt.finished_at.unwrap_or(b.end),
            attributes,
        );
        span.status = match attempt.outcome {
            Some(AttemptOutcome::Succeeded) => Status::Ok,
            Some(
                AttemptOutcome::Failed
                | AttemptOutcome::Crashed
                | AttemptOutcome::TimedOut
                | AttemptOutcome::SystemFailure,
            ) => error(match &attempt.error {
                Some(e) => e.message.clone(),
                None => outcome_name(attempt.outcome.unwrap_or(AttemptOutcome::Failed)).into(),
            }),
            _ => Status::Unset,
        };
        for line in &attempt.logs {
            let mut attributes = vec![
                KeyValue::new("log.level", line.level.clone()),
                KeyValue::new("log.message", line.message.clone()),
            ];
            attributes.extend(
                line.fields
                    .iter()
                    .map(|(k, v)| KeyValue::new(format!("log.field.{k}"), v.clone())),
            );
            add_event(&mut span, Event::new("log", time(line.at), attributes, 0));
        }
        span.events.dropped_count += attempt.logs_dropped.min(u64::from(u32::MAX)) as u32;
        spans.insert(attempt.number, span);
    }
    spans
}

fn outcome_name(outcome: AttemptOutcome) -> &'static str {
    match outcome {
        AttemptOutcome::Succeeded => "SUCCEEDED",
        AttemptOutcome::Failed => "FAILED",
        AttemptOutcome::Crashed => "CRASHED",
        AttemptOutcome::TimedOut => "TIMED_OUT",
        AttemptOutcome::Canceled => "CANCELED",
        AttemptOutcome::Interrupted => "INTERRUPTED",
        AttemptOutcome::SystemFailure => "SYSTEM_FAILURE",
    }
}

/// A host call's span name and attributes, and its error if it was refused.
fn call_facts(call: &HostCall) -> (&'static str, Vec<KeyValue>, Option<&String>) {
    match call {
        HostCall::NowMs { result } => (
            "now",
            vec![KeyValue::new("kiln.result", *result as i64)],
            None,
        ),
        HostCall::RandomBytes { len, .. } => (
            "random",
            vec![KeyValue::new("kiln.bytes", i64::from(*len))],
            None,
        ),
        HostCall::Log { .. } => ("log", Vec::new(), None),
        HostCall::Clocks { reads } => (
            "clocks",
            vec![KeyValue::new("kiln.reads", reads.len() as i64)],
            None,
        ),
        HostCall::Trigger {
            task,
            result,
            error,
        } => {
            let mut attributes = vec![KeyValue::new("kiln.child.task_id", task.clone())];
            if let Some(child) = result {
                attributes.push(KeyValue::new("kiln.child.run_id", child.to_string()));
            }
            ("trigger", attributes, error.as_ref())
        }
        HostCall::CreateToken { result, error, .. } => (
            "wait.createToken",
            result
                .iter()
                .map(|t| KeyValue::new("kiln.token.id", t.to_string()))
                .collect(),
            error.as_ref(),
        ),
        HostCall::BatchTrigger {
            items,
            batch,
            error,
            ..
        } => {
            let mut attributes = vec![KeyValue::new("kiln.batch.items", i64::from(*items))];
            if let Some(batch) = batch {
                attributes.push(KeyValue::new("kiln.batch.id", batch.clone()));
            }
            ("batchTrigger", attributes, error.as_ref())
        }
        HostCall::UpdateMetadata { target, error, .. } => (
            "metadata",
            vec![KeyValue::new("kiln.metadata.target", target.clone())],
            error.as_ref(),
        ),
        HostCall::AddTags { tags, error } => (
            "tags.add",
            vec![KeyValue::new("kiln.run.tags", strings(tags))],
            error.as_ref(),
        ),
        HostCall::StreamAppend { key, error, .. } => (
            "streams.append",
            vec![KeyValue::new("kiln.stream.key", key.clone())],
            error.as_ref(),
        ),
        HostCall::EnvVar { name, error, .. } => (
            "envvars.get",
            vec![KeyValue::new("kiln.envvar.name", name.clone())],
            error.as_ref(),
        ),
    }
}

/// A wait's span name, kind and attributes.
fn wait_facts(on: &WaitOn) -> (String, SpanKind, Vec<KeyValue>) {
    match on {
        WaitOn::Timer { due_at } => (
            "wait.until".into(),
            SpanKind::Internal,
            vec![KeyValue::new("kiln.wait.due_at", due_at.as_millis() as i64)],
        ),
        WaitOn::Run { run_id } => (
            "wait for run".into(),
            SpanKind::Internal,
            vec![KeyValue::new("kiln.wait.run_id", run_id.to_string())],
        ),
        WaitOn::Token { token_id, .. } => (
            "wait.forToken".into(),
            SpanKind::Internal,
            vec![KeyValue::new("kiln.token.id", token_id.to_string())],
        ),
        WaitOn::Batch { batch_id, runs } => (
            "wait for batch".into(),
            SpanKind::Internal,
            vec![
                KeyValue::new("kiln.batch.id", batch_id.clone()),
                KeyValue::new("kiln.batch.items", runs.len() as i64),
            ],
        ),
        // The request as the journal keeps it: secrets masked, and no
        // credentials of the URL's own.
        WaitOn::Fetch { request } => (
            format!("fetch {}", request.method),
            SpanKind::Client,
            vec![
                KeyValue::new("http.request.method", request.method.clone()),
                KeyValue::new("url.full", without_credentials(&request.url)),
            ],
        ),
    }
}

/// A URL without its `user:password@` (OpenTelemetry's `url.full` must
/// not carry them); one that does not parse is left out.
fn without_credentials(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut url) => {
            if !url.username().is_empty() || url.password().is_some() {
                let _ = url.set_username("REDACTED");
                let _ = url.set_password(Some("REDACTED"));
            }
            url.to_string()
        }
        Err(_) => "(not a URL)".to_string(),
    }
}

/// What a wake adds to its wait's span.
fn apply_wake(span: &mut SpanData, value: &WakeValue) {
    span.attributes.push(KeyValue::new("kiln.wait.woken", true));
    match value {
        WakeValue::Timer => {}
        WakeValue::Run { outcome } => {
            span.attributes
                .push(KeyValue::new("kiln.wait.run_ok", outcome.ok));
        }
        WakeValue::Batch { outcomes } => {
            let ok = outcomes.iter().filter(|o| o.ok).count();
            span.attributes
                .push(KeyValue::new("kiln.batch.ok", ok as i64));
        }
        WakeValue::Token { error, .. } => {
            if let Some(e) = error {
                span.status = error_status(e);
            }
        }
        WakeValue::Fetch { response, error } => {
            if let Some(response) = response {
                span.attributes.push(KeyValue::new(
                    "http.response.status_code",
                    i64::from(response.status),
                ));
                if response.status >= 400 {
                    span.status = error_status(&format!("HTTP {}", response.status));
                }
            }
            if let Some(e) = error {
                span.status = error_status(e);
            }
        }
    }
}

fn error_status(e: &str) -> Status {
    error(e.to_string())
}

/// Every span of a run's trace: its own, its attempts', and those of the
/// host calls and waits its journal holds. `labels` go on the run's span
/// (its project and environment).
pub(crate) fn spans_of(
    run: &Run,
    journal: &[JournalRecord],
    scope: &InstrumentationScope,
    labels: &[KeyValue],
) -> Vec<SpanData> {
    let b = Builder {
        run,
        trace: ids::trace_id(run),
        scope,
        end: run.finished_at.unwrap_or(run.updated_at),
    };
    let mut attempts = attempt_spans(&b);
    let mut others: Vec<SpanData> = Vec::new();
    let mut dropped = 0usize;
    // Waits registered and not yet woken, by the id their attempt gave them.
    let mut open: BTreeMap<u64, SpanData> = BTreeMap::new();
    let mut current = 0u32;
    let parent_of = |attempt: u32, attempts: &BTreeMap<u32, SpanData>| {
        if attempts.contains_key(&attempt) {
            ids::attempt_span(&run.id, attempt)
        } else {
            ids::run_span(&run.id)
        }
    };
    // A wait its attempt left unwoken ends where the attempt did.
    let close = |open: &mut BTreeMap<u64, SpanData>, at: Timestamp, out: &mut Vec<SpanData>| {
        for (_, mut span) in std::mem::take(open) {
            span.end_time = time(at).max(span.start_time);
            span.attributes
                .push(KeyValue::new("kiln.wait.woken", false));
            out.push(span);
        }
    };
    let keep = |span: SpanData, others: &mut Vec<SpanData>, dropped: &mut usize| {
        if others.len() < MAX_SPANS {
            others.push(span);
        } else {
            *dropped += 1;
        }
    };
    for record in journal {
        match &record.entry {
            JournalEntry::AttemptStarted { attempt, .. } => {
                let mut closed = Vec::new();
                close(&mut open, record.at, &mut closed);
                for span in closed {
                    keep(span, &mut others, &mut dropped);
                }
                current = *attempt;
            }
            // Log lines are events already; a WASI guest's engine reads its
            // clocks dozens of times a step, which would crowd out the
            // calls a task made.
            JournalEntry::HostCall(HostCall::Log { .. } | HostCall::Clocks { .. }) => {}
            JournalEntry::HostCall(call) => {
                let (name, attributes, refused) = call_facts(call);
                let mut span = b.span(
                    ids::entry_span(&run.id, record.seq, None),
                    parent_of(current, &attempts),
                    name,
                    SpanKind::Internal,
                    record.at,
                    record.at,
                    attributes,
                );
                if let Some(e) = refused {
                    span.status = error_status(e);
                }
                keep(span, &mut others, &mut dropped);
            }
            JournalEntry::Waits { waits } => {
                for wait in waits {
                    let (name, kind, attributes) = wait_facts(&wait.on);
                    let span = b.span(
                        ids::entry_span(&run.id, record.seq, Some(wait.id)),
                        parent_of(current, &attempts),
                        name,
                        kind,
                        record.at,
                        record.at,
                        attributes,
                    );
                    open.insert(wait.id, span);
                }
            }
            JournalEntry::Wake { id, value } => {
                if let Some(mut span) = open.remove(id) {
                    span.end_time = time(record.at).max(span.start_time);
                    apply_wake(&mut span, value);
                    keep(span, &mut others, &mut dropped);
                }
            }
            JournalEntry::Suspended { layer, bytes, .. } => {
                if let Some(span) = attempts.get_mut(&current) {
                    let attributes = vec![
                        KeyValue::new("kiln.snapshot.layer", i64::from(*layer)),
                        KeyValue::new("kiln.snapshot.bytes", *bytes as i64),
                    ];
                    add_event(
                        span,
                        Event::new("suspended", time(record.at), attributes, 0),
                    );
                }
            }
            JournalEntry::AttemptEnded { .. } => {
                let mut closed = Vec::new();
                close(&mut open, record.at, &mut closed);
                for span in closed {
                    keep(span, &mut others, &mut dropped);
                }
            }
        }
    }
    let mut closed = Vec::new();
    close(&mut open, b.end, &mut closed);
    for span in closed {
        keep(span, &mut others, &mut dropped);
    }
    let mut spans = Vec::with_capacity(1 + attempts.len() + others.len());
    spans.push(run_span(&b, labels, dropped));
    spans.extend(std::mem::take(&mut attempts).into_values());
    spans.extend(others);
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_types::{
        Attempt, DeploymentId, FetchRequest, FetchResponse, LogLine, RunId, RunOutcome,
        TraceContext, WaitRecord,
    };

    fn record(seq: u64, at: u64, entry: JournalEntry) -> JournalRecord {
        JournalRecord {
            seq,
            at: Timestamp(at),
            entry,
        }
    }

    fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
        spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
            panic!(
                "no span {name:?} in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    }

    fn ms(at: SystemTime) -> u64 {
        at.duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64
    }

    #[test]
    fn a_runs_journal_becomes_its_spans() {
        let child = RunId::generate(2);
        let mut run = Run::queued(
            RunId::generate(1),
            "parent",
            DeploymentId::none(),
            "20261201.1",
            "{}",
            Timestamp(1_000),
        );
        run.status = RunStatus::Completed;
        run.trace = TraceContext::from_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        run.finished_at = Some(Timestamp(9_000));
        let mut attempt = Attempt::started(1, Default::default(), Timestamp(1_100));
        attempt.finished_at = Some(Timestamp(8_900));
        attempt.outcome = Some(AttemptOutcome::Succeeded);
        attempt.logs.push(LogLine {
            at: Timestamp(1_150),
            level: "info".into(),
            message: "hello".into(),
            fields: Vec::new(),
        });
        run.attempts.push(attempt);
        let journal = vec![
            record(
                1,
                1_100,
                JournalEntry::AttemptStarted {
                    attempt: 1,
                    started: None,
                },
            ),
            record(
                2,
                1_200,
                JournalEntry::HostCall(HostCall::Trigger {
                    task: "child".into(),
                    result: Some(child.clone()),
                    error: None,
                }),
            ),
            record(
                3,
                1_300,
                JournalEntry::Waits {
                    waits: vec![WaitRecord {
                        id: 0,
                        on: WaitOn::Run {
                            run_id: child.clone(),
                        },
                    }],
                },
            ),
            record(
                4,
                1_310,
                JournalEntry::Suspended {
                    layer: 1,
                    bytes: 4_096,
                    log_calls: 1,
                },
            ),
            record(
                5,
                5_000,
                JournalEntry::Wake {
                    id: 0,
                    value: WakeValue::Run {
                        outcome: RunOutcome {
                            run_id: child.clone(),
                            ok: true,
                            value: "{}".into(),
                        },
                    },
                },
            ),
            record(
                6,
                5_100,
                JournalEntry::Waits {
                    waits: vec![WaitRecord {
                        id: 1,
                        on: WaitOn::Fetch {
                            request: FetchRequest {
                                method: "GET".into(),
                                url: "http://example.test/".into(),
                                headers: Vec::new(),
                                body: None,
                                timeout_ms: None,
                                sealed: None,
                            },
                        },
                    }],
                },
            ),
            record(
                7,
                5_400,
                JournalEntry::Wake {
                    id: 1,
                    value: WakeValue::Fetch {
                        response: Some(FetchResponse {
                            status: 503,
                            headers: Vec::new(),
                            body: String::new(),
                            sealed: None,
                        }),
                        error: None,
                    },
                },
            ),
            // A wait the attempt never saw woken ends with the attempt.
            record(
                8,
                5_500,
                JournalEntry::Waits {
                    waits: vec![WaitRecord {
                        id: 2,
                        on: WaitOn::Timer {
                            due_at: Timestamp(99_000),
                        },
                    }],
                },
            ),
            record(
                9,
                8_900,
                JournalEntry::AttemptEnded {
                    attempt: 1,
                    outcome: AttemptOutcome::Succeeded,
                },
            ),
        ];
        let scope = InstrumentationScope::builder("kiln").build();
        let spans = spans_of(
            &run,
            &journal,
            &scope,
            &[KeyValue::new("kiln.environment", "dev")],
        );
        assert_eq!(spans.len(), 6, "run, attempt, trigger, two waits, fetch");
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex");
        assert!(spans.iter().all(|s| s.span_context.trace_id() == trace));

        let root = named(&spans, "parent");
        assert_eq!(root.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert!(root.parent_span_is_remote);
        assert_eq!((ms(root.start_time), ms(root.end_time)), (1_000, 9_000));
        assert_eq!(root.status, Status::Ok);
        assert!(
            root.attributes
                .contains(&KeyValue::new("kiln.environment", "dev"))
        );

        let attempt = named(&spans, "attempt 1");
        assert_eq!(attempt.parent_span_id, root.span_context.span_id());
        assert_eq!(
            (ms(attempt.start_time), ms(attempt.end_time)),
            (1_100, 8_900)
        );
        let events: Vec<_> = attempt.events.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(events, ["log", "suspended"]);

        let under_attempt = attempt.span_context.span_id();
        let trigger = named(&spans, "trigger");
        assert_eq!(trigger.parent_span_id, under_attempt);
        assert!(
            trigger
                .attributes
                .contains(&KeyValue::new("kiln.child.run_id", child.to_string()))
        );

        let wait = named(&spans, "wait for run");
        assert_eq!(wait.parent_span_id, under_attempt);
        assert_eq!((ms(wait.start_time), ms(wait.end_time)), (1_300, 5_000));
        assert!(
            wait.attributes
                .contains(&KeyValue::new("kiln.wait.run_ok", true))
        );

        let fetch = named(&spans, "fetch GET");
        assert_eq!(fetch.span_kind, SpanKind::Client);
        assert_eq!((ms(fetch.start_time), ms(fetch.end_time)), (5_100, 5_400));
        assert!(
            matches!(fetch.status, Status::Error { .. }),
            "a 503 is an error"
        );

        let timer = named(&spans, "wait.until");
        assert_eq!(ms(timer.end_time), 8_900);
        assert!(
            timer
                .attributes
                .contains(&KeyValue::new("kiln.wait.woken", false))
        );

        // The same run gives the same spans: ids are derived, not drawn.
        assert_eq!(
            spans,
            spans_of(
                &run,
                &journal,
                &scope,
                &[KeyValue::new("kiln.environment", "dev")]
            )
        );
    }

    #[test]
    fn a_fetch_span_carries_no_credentials_of_its_url() {
        assert_eq!(
            without_credentials("https://user:hunter2@api.example/x?q=1"),
            "https://REDACTED:REDACTED@api.example/x?q=1"
        );
        assert_eq!(
            without_credentials("https://api.example/x"),
            "https://api.example/x"
        );
        assert_eq!(without_credentials("not a url"), "(not a URL)");
    }

    #[test]
    fn a_run_with_thousands_of_calls_keeps_a_bounded_trace() {
        let mut run = Run::queued(
            RunId::generate(1),
            "chatty",
            DeploymentId::none(),
            "1",
            "{}",
            Timestamp(0),
        );
        run.status = RunStatus::Failed;
        run.attempts
            .push(Attempt::started(1, Default::default(), Timestamp(0)));
        let mut journal = vec![record(
            1,
            0,
            JournalEntry::AttemptStarted {
                attempt: 1,
                started: None,
            },
        )];
        for seq in 2..(MAX_SPANS as u64 + 52) {
            journal.push(record(
                seq,
                seq,
                JournalEntry::HostCall(HostCall::NowMs { result: seq }),
            ));
        }
        let scope = InstrumentationScope::builder("kiln").build();
        let spans = spans_of(&run, &journal, &scope, &[]);
        assert_eq!(spans.len(), 2 + MAX_SPANS);
        let root = named(&spans, "chatty");
        assert!(
            root.attributes
                .contains(&KeyValue::new("kiln.spans_dropped", 50i64))
        );
        assert!(matches!(root.status, Status::Error { .. }));
        // A root run with no traceparent starts a trace of its own.
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert!(!root.parent_span_is_remote);
    }
}
