//! The dashboard's HTML: escaping, the page layout, small shared pieces.

use kiln_types::{RunStatus, Timestamp};
use std::fmt::Write;

/// `text` escaped for HTML text and attribute values.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` escaped for a URL's query value.
pub(super) fn query_value(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A whole page: the navigation (with the environment signed in to, when
/// there is one) and `body`.
pub(super) fn layout(title: &str, environment: &str, body: &str) -> String {
    let nav = if environment.is_empty() {
        String::new()
    } else {
        format!(
            r#"<nav><a class="brand" href="/runs">Kiln</a><a href="/runs">Runs</a><a href="/queues">Queues</a><a href="/schedules">Schedules</a><a href="/tokens">Wait tokens</a><a href="/deployments">Deployments</a><span class="env">{}</span><form method="post" action="/logout"><button type="submit">Sign out</button></form></nav>"#,
            esc(environment)
        )
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{} · Kiln</title><link rel="stylesheet" href="/dashboard/assets/dashboard.css">
<script src="/dashboard/assets/dashboard.js" defer></script></head>
<body>{nav}<main>{body}</main></body></html>"#,
        esc(title)
    )
}

/// A run's status as a badge that live updates keep current.
pub(super) fn status_badge(run_id: &str, status: RunStatus) -> String {
    format!(
        r#"<span class="status s-{s}" data-run-status="{id}">{s}</span>"#,
        s = status.as_str(),
        id = esc(run_id)
    )
}

/// A time as `2026-12-02 18:20:07` (UTC), or a dash.
pub(super) fn time(at: Option<Timestamp>) -> String {
    match at {
        Some(at) => {
            let iso = at.to_iso();
            esc(iso.get(..19).unwrap_or(&iso)).replace('T', " ")
        }
        None => "–".to_string(),
    }
}

/// Milliseconds as `850 ms`, `12.3 s`, `4 min`.
pub(super) fn duration_ms(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min", ms / 60_000)
    }
}

/// A JSON document, indented, in a `<pre>`.
pub(super) fn json_block(value: &serde_json::Value) -> String {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    format!("<pre class=\"json\">{}</pre>", esc(&text))
}

/// A table with `headers` and already-rendered `rows`.
pub(super) fn table(class: &str, headers: &[&str], rows: &[String]) -> String {
    let mut out = format!("<table class=\"{class}\"><thead><tr>");
    for h in headers {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str(row);
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_html_would_read() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(query_value("a b&c"), "a+b%26c");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration_ms(850), "850 ms");
        assert_eq!(duration_ms(12_340), "12.3 s");
        assert_eq!(duration_ms(600_000), "10 min");
    }
}
