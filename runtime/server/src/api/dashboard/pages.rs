//! The dashboard's list pages: sign-in, runs, queues, deployments.

use super::html::{self, esc, query_value};
use super::{Session, error_page};
use crate::api::ApiError;
use axum::extract::Query;
use axum::response::{Html, IntoResponse, Response};
use kiln_types::{Run, RunId, RunStatus};
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
        Ok(Filter {
            status,
            task: nonempty("task"),
            tag: nonempty("tag"),
        })
    }

    fn is_empty(&self) -> bool {
        self.status.is_empty() && self.task.is_none() && self.tag.is_none()
    }

    fn matches(&self, run: &Run) -> bool {
        (self.status.is_empty() || self.status.contains(&run.status))
            && self.task.as_ref().is_none_or(|t| run.task_id == *t)
            && self.tag.as_ref().is_none_or(|t| run.tags.contains(t))
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
        if let Some(tag) = &self.tag {
            let _ = write!(q, "tag={}&", query_value(tag));
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
    let mut found = Vec::new();
    let mut cursor = older;
    let mut walked = 0;
    // Unfiltered, a page and one more run (to know whether older ones
    // exist) is all there is to read.
    let chunk_size = if filter.is_empty() { PAGE + 1 } else { CHUNK };
    loop {
        let chunk = store.runs_newest(cursor.as_ref(), chunk_size)?;
        let exhausted = chunk.len() < chunk_size;
        let read = chunk.len();
        for (i, run) in chunk.into_iter().enumerate() {
            walked += 1;
            cursor = Some(run.id.clone());
            if filter.matches(&run) {
                found.push(run);
                if found.len() == PAGE {
                    // Older runs exist if any was read past this one or
                    // the index goes on (whether they match is for the
                    // next page to find out).
                    let more = i + 1 < read || !exhausted;
                    return Ok((found, cursor.filter(|_| more)));
                }
            }
        }
        if exhausted {
            return Ok((found, None));
        }
        if walked >= MAX_WALK {
            return Ok((found, cursor));
        }
    }
}

/// `GET /runs?status=&task=&tag=&older=`.
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
        r#"<form class="filters" method="get" action="/runs"><select name="status" aria-label="Status">{options}</select><input name="task" placeholder="task" aria-label="Task" value="{task}"><input name="tag" placeholder="tag" aria-label="Tag" value="{tag}"><button type="submit">Filter</button> <a href="/runs">clear</a></form>"#,
        task = esc(filter.task.as_deref().unwrap_or("")),
        tag = esc(filter.tag.as_deref().unwrap_or("")),
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
