//! The dashboard's list pages: sign-in, runs, queues, deployments.

use super::html::{self, esc, query_value};
use super::{Session, error_page};
use crate::api::ApiError;
use crate::run_walk::Walk;
use axum::extract::Query;
use axum::response::{Html, IntoResponse, Response};
use kiln_types::{Run, RunId, RunStatus, Timestamp};
use std::collections::HashMap;
use std::fmt::Write;

/// Runs one page of the list shows.
const PAGE: usize = 25;
/// The most runs one page reads looking for runs its filters select; past
/// that, the page shows what it found and links to the older runs.
const MAX_WALK: usize = 2_000;
/// Runs read from the store at a time while filling a page.
const CHUNK: usize = 100;

/// `GET /login`.
pub(super) async fn login_page() -> Html<String> {
    login_form(None)
}

/// The sign-in form, with what went wrong the last time.
pub(super) fn login_form(problem: Option<&str>) -> Html<String> {
    let problem = problem.map_or(String::new(), |p| {
        format!("<p class=\"problem\">{}</p>", esc(p))
    });
    Html(html::layout(
        "Sign in",
        "",
        &format!(
            r#"<form class="login" method="post" action="/login"><h1>Kiln</h1>
<p>Sign in with an API key of this server: the one <code>kiln serve</code> printed (kept in <code>.kiln/secret-key</code>), or a project's key for one of its environments.</p>
{problem}<label>API key <input name="key" type="password" autocomplete="current-password" autofocus required></label>
<button type="submit">Sign in</button></form>"#
        ),
    ))
}

/// What the runs list selects.
#[derive(Default)]
struct Filter {
    status: Vec<RunStatus>,
    task: Option<String>,
    tag: Option<String>,
    schedule: Option<String>,
    batch: Option<String>,
    /// Created at or after, as given (`1h`: the last hour; or a date).
    from_text: Option<String>,
    /// Created at or before, as given (a date).
    to_text: Option<String>,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
}

/// A moment of the created range: a duration back from now (`1h`, `7d`),
/// an RFC 3339 date, or a date or minute in UTC (`2026-12-01`,
/// `2026-12-01T09:30`, what a `datetime-local` field sends).
fn instant(
    name: &str,
    text: &str,
    now: Timestamp,
    end_of_day: bool,
) -> Result<Timestamp, ApiError> {
    use time::macros::format_description;
    let bad = || {
        ApiError::bad_request(format!(
            "{name}: `{text}` is neither a duration back from now (`1h`) nor a date (`2026-12-01`, `2026-12-01T09:30`, RFC 3339)"
        ))
    };
    if let Ok(back) = crate::duration::parse_ms(text) {
        return Ok(Timestamp(now.as_millis().saturating_sub(back)));
    }
    let at = if let Ok(t) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        t
    } else if let Ok(t) = time::PrimitiveDateTime::parse(
        text,
        format_description!("[year]-[month]-[day]T[hour]:[minute]"),
    ) {
        t.assume_utc()
    } else if let Ok(day) = time::Date::parse(text, format_description!("[year]-[month]-[day]")) {
        // A day as the range's end takes in the whole day.
        if end_of_day {
            // The whole day, to its last millisecond.
            day.with_hms_milli(23, 59, 59, 999)
                .map_err(|_| bad())?
                .assume_utc()
        } else {
            day.midnight().assume_utc()
        }
    } else {
        return Err(bad());
    };
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000)
        .map(Timestamp)
        .map_err(|_| bad())
}

impl Filter {
    fn parse(q: &HashMap<String, String>) -> Result<Filter, ApiError> {
        let nonempty = |name: &str| {
            q.get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let status = match nonempty("status") {
            Some(list) => list
                .split(',')
                .map(|s| {
                    RunStatus::parse(s.trim())
                        .ok_or_else(|| ApiError::bad_request(format!("`{s}` is not a run status")))
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let now = Timestamp::now();
        let from_text = nonempty("from");
        let to_text = nonempty("to");
        let from = from_text
            .as_deref()
            .map(|t| instant("from", t, now, false))
            .transpose()?;
        let to = to_text
            .as_deref()
            .map(|t| instant("to", t, now, true))
            .transpose()?;
        Ok(Filter {
            status,
            task: nonempty("task"),
            tag: nonempty("tag"),
            schedule: nonempty("schedule"),
            batch: nonempty("batch"),
            from_text,
            to_text,
            from,
            to,
        })
    }

    /// Whether every run matches (the range aside, which the walk seeks).
    fn is_empty(&self) -> bool {
        self.status.is_empty()
            && self.task.is_none()
            && self.tag.is_none()
            && self.schedule.is_none()
            && self.batch.is_none()
    }

    fn matches(&self, run: &Run) -> bool {
        (self.status.is_empty() || self.status.contains(&run.status))
            && self.task.as_ref().is_none_or(|t| run.task_id == *t)
            && self.tag.as_ref().is_none_or(|t| run.tags.contains(t))
            && self
                .schedule
                .as_ref()
                .is_none_or(|s| run.schedule.as_ref().is_some_and(|rs| rs.id.as_str() == s))
            && self
                .batch
                .as_ref()
                .is_none_or(|b| run.batch.as_ref() == Some(b))
            && self.to.is_none_or(|to| run.created_at <= to)
    }

    /// The filter as a query string (with a trailing `&` when not empty).
    fn query(&self) -> String {
        let mut q = String::new();
        if !self.status.is_empty() {
            let list: Vec<&str> = self.status.iter().map(|s| s.as_str()).collect();
            let _ = write!(q, "status={}&", query_value(&list.join(",")));
        }
        if let Some(task) = &self.task {
            let _ = write!(q, "task={}&", query_value(task));
        }
        for (name, value) in [
            ("tag", &self.tag),
            ("schedule", &self.schedule),
            ("batch", &self.batch),
            ("from", &self.from_text),
            ("to", &self.to_text),
        ] {
            if let Some(value) = value {
                let _ = write!(q, "{name}={}&", query_value(value));
            }
        }
        q
    }
}

/// One page of runs newest first, older than `older`: read a chunk at a
/// time from the run index, at most [`MAX_WALK`]. Returns the page and
/// where the next page starts (`None`: no older runs).
fn page_of(
    store: &kiln_store::Store,
    filter: &Filter,
    older: Option<RunId>,
) -> Result<(Vec<Run>, Option<RunId>), ApiError> {
    let walk = Walk {
        from: filter.from,
        to: filter.to,
        // Unfiltered, a page and one more run (to know whether older ones
        // exist) is all there is to read.
        chunk: if filter.is_empty() { PAGE + 1 } else { CHUNK },
        limit: MAX_WALK,
        matches: |run: &Run| filter.matches(run),
    };
    Ok(walk.older(store, older, PAGE + 1)?.page(PAGE))
}

/// `GET /runs?status=&task=&tag=&schedule=&batch=&from=&to=&older=`.
pub(super) async fn runs(
    Session(state): Session,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let filter = match Filter::parse(&q) {
        Ok(filter) => filter,
        Err(e) => return error_page(e),
    };
    let older = match q.get("older").filter(|v| !v.is_empty()) {
        Some(id) => match RunId::parse(id) {
            Ok(id) => Some(id),
            Err(_) => return error_page(ApiError::bad_request(format!("`{id}` is not a run id"))),
        },
        None => None,
    };
    let (page, next) = match page_of(&state.store, &filter, older.clone()) {
        Ok(found) => found,
        Err(e) => return error_page(e),
    };
    let rows: Vec<String> = page
        .iter()
        .map(|run| {
            let usage: u64 = run.attempts.iter().map(|a| a.usage_ms).sum();
            format!(
                r#"<tr><td><a href="/runs/{id}">{id}</a></td><td>{task}</td><td>{status}</td><td>{version}</td><td>{created}</td><td>{attempts}</td><td>{usage}</td><td>{tags}</td></tr>"#,
                id = esc(run.id.as_str()),
                task = esc(&run.task_id),
                status = html::status_badge(run.id.as_str(), run.status),
                version = esc(&run.version),
                created = html::time(Some(run.created_at)),
                attempts = run.attempts.len(),
                usage = html::duration_ms(usage),
                tags = esc(&run.tags.join(", ")),
            )
        })
        .collect();
    let mut body = String::from("<h1>Runs</h1>");
    let selected = |s: RunStatus| {
        if filter.status == [s] {
            " selected"
        } else {
            ""
        }
    };
    let mut options = String::from(r#"<option value="">any status</option>"#);
    for status in RunStatus::ALL {
        let _ = write!(
            options,
            r#"<option value="{s}"{sel}>{s}</option>"#,
            s = status.as_str(),
            sel = selected(status)
        );
    }
    let _ = write!(
        body,
        r#"<form class="filters" method="get" action="/runs"><select name="status" aria-label="Status">{options}</select><input name="task" placeholder="task" aria-label="Task" value="{task}"><input name="tag" placeholder="tag" aria-label="Tag" value="{tag}"><input name="schedule" placeholder="schedule id" aria-label="Schedule" value="{schedule}"><input name="batch" placeholder="batch id" aria-label="Batch" value="{batch}"><input name="from" placeholder="from (1h or date)" aria-label="Created from" title="Created at or after: a duration back from now (1h, 7d) or a date in UTC" value="{from}"><input name="to" placeholder="to (date, UTC)" aria-label="Created to" title="Created at or before: a date in UTC" value="{to}"><button type="submit">Filter</button> <a href="/runs">clear</a></form>"#,
        task = esc(filter.task.as_deref().unwrap_or("")),
        tag = esc(filter.tag.as_deref().unwrap_or("")),
        schedule = esc(filter.schedule.as_deref().unwrap_or("")),
        batch = esc(filter.batch.as_deref().unwrap_or("")),
        from = esc(filter.from_text.as_deref().unwrap_or("")),
        to = esc(filter.to_text.as_deref().unwrap_or("")),
    );
    if rows.is_empty() {
        body.push_str(r#"<p class="empty">No runs match.</p>"#);
    } else {
        body.push_str(&html::table(
            "runs",
            &[
                "Run", "Task", "Status", "Version", "Created", "Attempts", "Usage", "Tags",
            ],
            &rows,
        ));
    }
    body.push_str(r#"<p class="pager">"#);
    if older.is_some() {
        let _ = write!(body, r#"<a href="/runs?{}">Newest</a> "#, filter.query());
    }
    if let Some(next) = next {
        let _ = write!(
            body,
            r#"<a rel="next" href="/runs?{}older={}">Older runs</a>"#,
            filter.query(),
            esc(next.as_str())
        );
    }
    body.push_str("</p>");
    Html(html::layout("Runs", &state.env_id, &body)).into_response()
}

/// `GET /queues`: each queue's depth, running runs, limits and busiest
/// concurrency keys.
pub(super) async fn queues(Session(state): Session) -> Response {
    let rows: Vec<String> = state
        .executor
        .queue_names()
        .into_iter()
        .filter_map(|name| state.executor.queue(&name, 3))
        .map(|queue| {
            let stats = &queue.stats;
            let keys: Vec<String> = queue
                .lanes
                .iter()
                .filter_map(|(key, queued, running)| {
                    key.as_ref()
                        .map(|k| format!("{} ({queued} queued, {running} running)", esc(k)))
                })
                .collect();
            let (action, label) = if stats.paused {
                ("resume", "Resume")
            } else {
                ("pause", "Pause")
            };
            let toggle = format!(
                r#"<form class="inline" method="post" action="/queues/{action}"><input type="hidden" name="queue" value="{name}"><button type="submit">{label}</button></form>"#,
                name = esc(&queue.name)
            );
            format!(
                r#"<tr><td>{name}</td><td>{queued}</td><td>{running}</td><td>{limit}</td><td>{paused} {toggle}</td><td>{keys}</td></tr>"#,
                name = esc(&queue.name),
                queued = stats.queued,
                running = stats.running,
                limit = stats.queue_cap,
                paused = if stats.paused { "paused" } else { "running" },
                keys = keys.join("<br>"),
            )
        })
        .collect();
    let body = format!(
        "<h1>Queues</h1>{}",
        html::table(
            "queues",
            &[
                "Queue",
                "Queued",
                "Running",
                "Limit",
                "State",
                "Busiest keys"
            ],
            &rows
        )
    );
    Html(html::layout("Queues", &state.env_id, &body)).into_response()
}

/// `GET /deployments`: versions, their tasks, and which is current.
pub(super) async fn deployments(Session(state): Session) -> Response {
    let records = match state.store.deployments() {
        Ok(records) => records,
        Err(e) => return error_page(e.into()),
    };
    let current = state.deployments.current().map(|d| d.record.id.clone());
    let rows: Vec<String> = records
        .iter()
        .rev()
        .map(|d| {
            let tasks: Vec<String> = d.manifest.tasks.iter().map(|t| esc(&t.id)).collect();
            let state = if Some(&d.id) == current.as_ref() {
                "current"
            } else if d.retired_at.is_some() {
                "retired"
            } else {
                ""
            };
            format!(
                r#"<tr><td>{version}</td><td>{state}</td><td>{tasks}</td><td>{size}</td><td>{created}</td></tr>"#,
                version = esc(&d.version),
                tasks = tasks.join(", "),
                size = format_args!("{} KiB", d.size_bytes / 1024),
                created = html::time(Some(d.created_at)),
            )
        })
        .collect();
    let body = format!(
        "<h1>Deployments</h1>{}",
        html::table(
            "deployments",
            &["Version", "", "Tasks", "Bundle", "Deployed"],
            &rows
        )
    );
    Html(html::layout("Deployments", &state.env_id, &body)).into_response()
}
