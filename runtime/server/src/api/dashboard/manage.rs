//! The dashboard's pages that change things besides runs: wait tokens
//! (complete one), schedules (create, pause, resume, delete) and queues
//! (pause, resume). Each action is the API's own operation, posted by a
//! form of these pages (the dashboard's guard refuses posts from elsewhere).

use super::html::{self, esc};
use super::{Session, error_page, redirect};
use crate::api::{ApiError, schedules, tokens};
use crate::schedules::ScheduleInput;
use axum::body::Bytes;
use axum::extract::Path;
use axum::response::{Html, IntoResponse, Response};
use kiln_types::Timestamp;
use std::collections::HashMap;

/// Tokens a page shows, newest first.
const TOKENS_SHOWN: usize = 100;

/// The fields of a posted form.
fn form(body: &Bytes) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// A form field, trimmed; `None` when absent or blank.
fn field(form: &HashMap<String, String>, name: &str) -> Option<String> {
    form.get(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A one-button form that posts to `action`.
fn button(action: &str, label: &str, class: &str) -> String {
    format!(
        r#"<form class="inline" method="post" action="{}"><button type="submit" class="{class}">{}</button></form>"#,
        esc(action),
        esc(label)
    )
}

/// `GET /tokens`: the newest wait tokens; a waiting one can be completed
/// with JSON data.
pub(super) async fn tokens_page(Session(state): Session) -> Response {
    // Token ids sort by creation time: the newest are the index's end,
    // read without reading the rest.
    let newest = match state.store.tokens_newest(TOKENS_SHOWN) {
        Ok(newest) => newest,
        Err(e) => return error_page(e.into()),
    };
    let now = Timestamp::now();
    let rows: Vec<String> = newest
        .iter()
        .map(|token| {
            let status = token.status_at(now).as_str();
            let complete = if status == "WAITING" {
                format!(
                    r#"<form class="inline" method="post" action="/tokens/{id}/complete"><input name="data" aria-label="Data" placeholder='{{"approved": true}}'><button type="submit">Complete</button></form>"#,
                    id = esc(token.id.as_str())
                )
            } else {
                String::new()
            };
            format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{complete}</td></tr>",
                esc(token.id.as_str()),
                esc(status),
                esc(&token.tags.join(", ")),
                html::time(Some(token.created_at)),
                html::time(token.timeout_at),
            )
        })
        .collect();
    let body = format!(
        "<h1>Wait tokens</h1><p>The newest {TOKENS_SHOWN} tokens, newest first.</p>{}",
        html::table(
            "tokens",
            &["Token", "Status", "Tags", "Created", "Times out", ""],
            &rows
        )
    );
    Html(html::layout("Wait tokens", &state.env_id, &body)).into_response()
}

/// `POST /tokens/{id}/complete` with the form field `data` (JSON; empty
/// is `null`).
pub(super) async fn complete_token(
    Session(state): Session,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let fields = form(&body);
    let data = match field(&fields, "data") {
        None => "null".to_string(),
        Some(text) => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(value) => value.to_string(),
            Err(e) => {
                return error_page(ApiError::bad_request(format!("The data is not JSON: {e}")));
            }
        },
    };
    if data.len() > crate::executor::MAX_TOKEN_DATA {
        return error_page(ApiError::too_large(format!(
            "wait token data is limited to {} bytes",
            crate::executor::MAX_TOKEN_DATA
        )));
    }
    let token = match tokens::token_id(&id) {
        Ok(token) => token,
        Err(e) => return error_page(e),
    };
    match state.executor.complete_token(&token, data).await {
        Ok(_) => redirect("/tokens"),
        Err(e) => error_page(e.into()),
    }
}

/// `GET /schedules`: every schedule with its next run, pause, resume and
/// delete; and a form that creates one.
pub(super) async fn schedules_page(Session(state): Session) -> Response {
    let list = match state.schedules.list(1, 500, None) {
        Ok((list, _)) => list,
        Err(e) => return error_page(e.into()),
    };
    let rows: Vec<String> = list
        .iter()
        .map(|schedule| {
            let view = schedules::view(schedule, &state);
            let id = schedule.id.as_str();
            let toggle = if schedule.active {
                button(&format!("/schedules/{id}/deactivate"), "Pause", "")
            } else {
                button(&format!("/schedules/{id}/activate"), "Resume", "")
            };
            let delete = if view["type"] == "DECLARATIVE" {
                String::new()
            } else {
                button(&format!("/schedules/{id}/delete"), "Delete", "danger")
            };
            format!(
                "<tr><td><code>{}</code></td><td>{}</td><td><code>{}</code> {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{toggle} {delete}</td></tr>",
                esc(id),
                esc(&schedule.task_id),
                esc(view["generator"]["expression"].as_str().unwrap_or("")),
                esc(view["generator"]["description"].as_str().unwrap_or("")),
                esc(&schedule.timezone),
                esc(schedule.external_id.as_deref().unwrap_or("")),
                if schedule.active { "active" } else { "paused" },
                next_runs(schedule),
            )
        })
        .collect();
    let body = format!(
        r#"<h1>Schedules</h1>{}<h2>New schedule</h2><form class="filters" method="post" action="/schedules"><input name="task" placeholder="task" aria-label="Task" required><input name="cron" placeholder="0 9 * * 1-5" aria-label="Cron" required><input name="timezone" placeholder="UTC" aria-label="Time zone"><input name="externalId" placeholder="external id" aria-label="External id"><button type="submit">Create</button></form>"#,
        html::table(
            "schedules",
            &[
                "Schedule",
                "Task",
                "Cron",
                "Time zone",
                "External id",
                "State",
                "Next runs",
                ""
            ],
            &rows
        )
    );
    Html(html::layout("Schedules", &state.env_id, &body)).into_response()
}

/// How many of a schedule's next occurrences its row lists.
const NEXT_RUNS: usize = 3;

/// A schedule's next occurrences (the first is when it fires next; none
/// while it is paused).
fn next_runs(schedule: &kiln_types::Schedule) -> String {
    let Some(first) = schedule.next_run.filter(|_| schedule.active) else {
        return "–".to_string();
    };
    let mut runs = vec![first];
    if let Ok(cron) = kiln_cron::CronSchedule::parse(&schedule.cron, &schedule.timezone) {
        runs.extend(cron.upcoming(first, NEXT_RUNS - 1));
    }
    runs.iter()
        .map(|at| html::time(Some(*at)))
        .collect::<Vec<_>>()
        .join("<br>")
}

/// `POST /schedules`: creates an imperative schedule from the form.
pub(super) async fn create_schedule(Session(state): Session, body: Bytes) -> Response {
    let fields = form(&body);
    let input = ScheduleInput {
        task: field(&fields, "task").unwrap_or_default(),
        cron: field(&fields, "cron").unwrap_or_default(),
        timezone: field(&fields, "timezone"),
        external_id: field(&fields, "externalId"),
        deduplication_key: None,
    };
    match state.schedules.create(input).await {
        Ok(_) => redirect("/schedules"),
        Err(e) => error_page(e.into()),
    }
}

/// `POST /schedules/{id}/{activate|deactivate|delete}`.
pub(super) async fn schedule_action(
    Session(state): Session,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let id = match schedules::schedule_id(&id) {
        Ok(id) => id,
        Err(e) => return error_page(e),
    };
    let done = match action.as_str() {
        "activate" => state.schedules.activate(&id).await,
        "deactivate" => state.schedules.deactivate(&id).await,
        "delete" => state.schedules.delete(&id).await,
        other => {
            return error_page(ApiError::not_found(format!(
                "`{other}` is not something a schedule does"
            )));
        }
    };
    match done {
        Ok(_) => redirect("/schedules"),
        Err(e) => error_page(e.into()),
    }
}

/// `POST /queues/pause` and `/queues/resume` with the form field `queue`.
pub(super) async fn queue_action(
    Session(state): Session,
    Path(action): Path<String>,
    body: Bytes,
) -> Response {
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        other => {
            return error_page(ApiError::not_found(format!(
                "`{other}` is neither pause nor resume"
            )));
        }
    };
    let name = field(&form(&body), "queue").unwrap_or_default();
    match state.executor.set_queue_paused(&name, paused).await {
        Ok(true) => redirect("/queues"),
        Ok(false) => error_page(ApiError::not_found(format!("queue `{name}` not found"))),
        Err(e) => error_page(e.into()),
    }
}
