//! A run's page: its status, payload, output or error, attempts and logs,
//! parent and children, and its journal as a timeline; with cancel,
//! reschedule and replay.

use super::html::{self, esc};
use super::{Session, error_page, redirect};
use crate::api::{ApiError, Env};
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use kiln_types::{JournalEntry, JournalRecord, Run, RunId};
use serde_json::Value;
use std::fmt::Write;

/// The most journal entries a run's page shows (the newest are cut).
const MAX_ENTRIES: usize = 1_000;
/// The most characters of an entry's details shown.
const MAX_DETAIL: usize = 300;

/// `GET /runs/{run_id}`.
pub(super) async fn run(Session(state): Session, Path(run_id): Path<String>) -> Response {
    match page(&state, &run_id) {
        Ok(body) => body,
        Err(e) => error_page(e),
    }
}

fn page(state: &crate::api::AppState, run_id: &str) -> Result<Response, ApiError> {
    let run = crate::api::stored_run(state, run_id)?;
    let store = &state.store;
    let id = run.id.as_str();
    let mut body = format!(
        r#"<h1><span class="task">{task}</span> <code>{id}</code> {status}</h1>"#,
        task = esc(&run.task_id),
        id = esc(id),
        status = html::status_badge(id, run.status),
    );
    // Actions: cancel while it is not final, reschedule while it is
    // delayed, replay always.
    body.push_str(r#"<div class="actions">"#);
    if run.status == kiln_types::RunStatus::Delayed {
        let _ = write!(
            body,
            r#"<form method="post" action="/runs/{id}/reschedule"><input name="delay" required placeholder="in (30m) or at (RFC 3339)" aria-label="New delay" title="A duration from now (30m, 2h) or a date (2026-12-01T09:30:00Z)"><button type="submit" data-action="reschedule">Reschedule</button></form>"#,
            id = esc(id)
        );
    }
    if !run.status.is_final() {
        let _ = write!(
            body,
            r#"<form method="post" action="/runs/{id}/cancel" data-live-action><button type="submit" class="danger" data-action="cancel">Cancel run</button></form>"#,
            id = esc(id)
        );
    }
    let _ = write!(
        body,
        r#"<form method="post" action="/runs/{id}/replay"><button type="submit" data-action="replay">Replay</button></form></div>"#,
        id = esc(id)
    );
    body.push_str(&facts(&run));
    body.push_str(&lineage(store, &run)?);
    body.push_str("<h2>Payload</h2>");
    let payload = store.payload_of(&run)?;
    body.push_str(&document(&payload, &run.payload_type));
    if let Some(output) = store.output_of(&run)? {
        body.push_str("<h2>Output</h2>");
        body.push_str(&document(&output, "application/json"));
    }
    if let Some(error) = &run.error {
        body.push_str("<h2>Error</h2>");
        body.push_str(&html::json_block(&serde_json::json!(error)));
    }
    if let Some(metadata) = &run.metadata {
        body.push_str("<h2>Metadata</h2>");
        body.push_str(&html::json_block(&serde_json::json!(metadata)));
    }
    body.push_str(&attempts(&run));
    body.push_str(&timeline(&store.journal(&run.id)?));
    Ok(Html(html::layout(
        &format!("{} {id}", run.task_id),
        &state.env_id,
        &body,
    ))
    .into_response())
}

/// A stored payload or output: indented when it is JSON.
fn document(text: &str, media: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(value) if media.contains("json") => html::json_block(&value),
        _ => format!("<pre class=\"json\">{}</pre>", esc(text)),
    }
}

/// The run's facts as a definition list.
fn facts(run: &Run) -> String {
    let usage: u64 = run.attempts.iter().map(|a| a.usage_ms).sum();
    let mut out = String::from("<dl class=\"facts\">");
    let mut fact = |name: &str, value: String| {
        let _ = write!(out, "<dt>{}</dt><dd>{value}</dd>", esc(name));
    };
    fact("Version", esc(&run.version));
    fact("Queue", esc(&run.queue_name()));
    if let Some(key) = &run.concurrency_key {
        fact("Concurrency key", esc(key));
    }
    fact("Machine", esc(run.machine.name()));
    fact("Created", html::time(Some(run.created_at)));
    fact("Started", html::time(run.started_at));
    fact("Finished", html::time(run.finished_at));
    if let Some(at) = run.delayed_until {
        fact("Delayed until", html::time(Some(at)));
    }
    fact("Usage", html::duration_ms(usage));
    // The id an OpenTelemetry backend shows the run's trace under (when the
    // server exports traces).
    fact(
        "Trace",
        format!("<code>{}</code>", crate::traces::trace_id(run)),
    );
    if !run.tags.is_empty() {
        let tags: Vec<String> = run
            .tags
            .iter()
            .map(|t| {
                format!(
                    r#"<a class="tag" href="/runs?tag={}">{}</a>"#,
                    html::query_value(t),
                    esc(t)
                )
            })
            .collect();
        fact("Tags", tags.join(" "));
    }
    out.push_str("</dl>");
    out
}

/// A link to a run, with its task and live status.
fn run_link(run: &Run) -> String {
    format!(
        r#"<a href="/runs/{id}">{task} <code>{id}</code></a> {status}"#,
        id = esc(run.id.as_str()),
        task = esc(&run.task_id),
        status = html::status_badge(run.id.as_str(), run.status),
    )
}

/// The run's root and parent above it, its children below: a tree.
fn lineage(store: &kiln_store::Store, run: &Run) -> Result<String, ApiError> {
    let children = store.children(&run.id)?;
    if run.parent.is_none() && children.is_empty() {
        return Ok(String::new());
    }
    let mut out = String::from("<h2>Runs</h2><ul class=\"tree\">");
    let mut open = 0;
    if let Some(parent) = &run.parent {
        let mut above = vec![parent.root.clone()];
        if parent.parent != parent.root {
            above.push(parent.parent.clone());
        }
        for id in above {
            if let Some(r) = store.run(&id)? {
                let _ = write!(out, "<li>{}<ul>", run_link(&r));
                open += 1;
            }
        }
    }
    let _ = write!(
        out,
        r#"<li class="self"><strong>{}</strong> <code>{}</code> (this run)<ul>"#,
        esc(&run.task_id),
        esc(run.id.as_str())
    );
    for child in children.iter().take(200) {
        if let Some(c) = store.run(child)? {
            let _ = write!(out, "<li>{}</li>", run_link(&c));
        }
    }
    out.push_str("</ul></li>");
    for _ in 0..open {
        out.push_str("</ul></li>");
    }
    out.push_str("</ul>");
    Ok(out)
}

/// Each attempt with its outcome, times and log lines.
fn attempts(run: &Run) -> String {
    if run.attempts.is_empty() {
        return String::new();
    }
    let mut out = String::from("<h2>Attempts</h2>");
    for attempt in &run.attempts {
        let outcome = attempt
            .outcome
            .map_or("running".to_string(), |o| format!("{o:?}"));
        let _ = write!(
            out,
            r#"<section class="attempt"><h3>Attempt {n} <span class="outcome">{outcome}</span></h3><p>started {started}, ended {ended}, {usage} of execution on {machine}</p>"#,
            n = attempt.number,
            outcome = esc(&outcome),
            started = html::time(Some(attempt.started_at)),
            ended = html::time(attempt.finished_at),
            usage = html::duration_ms(attempt.usage_ms),
            machine = esc(attempt.machine.name()),
        );
        if let Some(error) = &attempt.error {
            let _ = write!(
                out,
                "<p class=\"problem\">{}: {}</p>",
                esc(error.name.as_deref().unwrap_or("Error")),
                esc(&error.message)
            );
        }
        if !attempt.logs.is_empty() {
            out.push_str("<ol class=\"logs\">");
            for line in &attempt.logs {
                let fields: Vec<String> = line
                    .fields
                    .iter()
                    .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
                    .collect();
                let _ = write!(
                    out,
                    r#"<li class="log l-{level}"><time>{at}</time> <b>{level}</b> {message} <span class="fields">{fields}</span></li>"#,
                    at = html::time(Some(line.at)),
                    level = esc(&line.level),
                    message = esc(&line.message),
                    fields = fields.join(" "),
                );
            }
            out.push_str("</ol>");
        }
        if attempt.logs_dropped > 0 {
            let _ = write!(
                out,
                "<p>{} more lines were dropped past the attempt's caps.</p>",
                attempt.logs_dropped
            );
        }
        out.push_str("</section>");
    }
    out
}

/// The class and label of a journal entry's kind.
fn kind(entry: &JournalEntry) -> (&'static str, &'static str) {
    match entry {
        JournalEntry::AttemptStarted { .. } => ("started", "attempt started"),
        JournalEntry::HostCall(_) => ("call", "host call"),
        JournalEntry::Waits { .. } => ("waits", "waits"),
        JournalEntry::Wake { .. } => ("wake", "wake"),
        JournalEntry::Suspended { .. } => ("suspended", "snapshot"),
        JournalEntry::AttemptEnded { .. } => ("ended", "attempt ended"),
    }
}

/// The journal, oldest first, as a timeline.
fn timeline(records: &[JournalRecord]) -> String {
    let mut out = format!(
        "<h2>Journal</h2><p>{} entries: every host call, wait, wake, snapshot and attempt, in order.</p><ol class=\"timeline\">",
        records.len()
    );
    for record in records.iter().take(MAX_ENTRIES) {
        let (class, label) = kind(&record.entry);
        let summary = match &record.entry {
            JournalEntry::Suspended { layer: 0, .. } => {
                "suspended without a snapshot; resumes by replay".to_string()
            }
            JournalEntry::Suspended { layer, bytes, .. } => {
                format!(
                    "snapshot layer {layer}, {} KiB stored",
                    bytes.div_ceil(1024)
                )
            }
            entry => entry.describe(),
        };
        let mut detail = serde_json::to_string(&record.entry).unwrap_or_default();
        if detail.chars().count() > MAX_DETAIL {
            detail = detail.chars().take(MAX_DETAIL).collect::<String>() + "…";
        }
        let _ = write!(
            out,
            r#"<li class="entry e-{class}"><span class="seq">#{seq}</span> <time>{at}</time> <span class="kind">{label}</span> {summary}<details><summary>details</summary><code>{detail}</code></details></li>"#,
            seq = record.seq,
            at = html::time(Some(record.at)),
            summary = esc(&summary),
            detail = esc(&detail),
        );
    }
    out.push_str("</ol>");
    if records.len() > MAX_ENTRIES {
        let _ = write!(
            out,
            "<p>{} later entries are not shown; <code>kiln runs journal</code> lists them all.</p>",
            records.len() - MAX_ENTRIES
        );
    }
    out
}

/// `POST /runs/{run_id}/cancel`: cancels, then back to the run (the page's
/// script posts it without leaving the page, and the status changes live).
pub(super) async fn cancel(Session(state): Session, Path(run_id): Path<String>) -> Response {
    let back = format!("/runs/{}", html::query_value(&run_id));
    match crate::api::runs::cancel(Env(state), Path(run_id)).await {
        Ok(_) => redirect(&back),
        Err(e) => error_page(e),
    }
}

/// `POST /runs/{run_id}/reschedule` `delay=`: moves a delayed run's start
/// (a duration from now or a date), then back to the run.
pub(super) async fn reschedule(
    Session(state): Session,
    Path(run_id): Path<String>,
    body: Bytes,
) -> Response {
    let back = format!("/runs/{}", html::query_value(&run_id));
    let delay = form_urlencoded::parse(&body)
        .find(|(name, _)| name == "delay")
        .map(|(_, value)| value.trim().to_string())
        .unwrap_or_default();
    let request = Bytes::from(serde_json::json!({ "delay": delay }).to_string());
    match crate::api::runs::reschedule(Env(state), Path(run_id), request).await {
        Ok(_) => redirect(&back),
        Err(e) => error_page(e),
    }
}

/// `POST /runs/{run_id}/replay`: a new run like this one; goes to it.
pub(super) async fn replay(Session(state): Session, Path(run_id): Path<String>) -> Response {
    match crate::api::runs::replay(Env(state), Path(run_id), HeaderMap::new(), Bytes::new()).await {
        Ok(made) => match made.0["id"].as_str().and_then(|id| RunId::parse(id).ok()) {
            Some(id) => redirect(&format!("/runs/{}", id.as_str())),
            None => redirect("/runs"),
        },
        Err(e) => error_page(e),
    }
}
