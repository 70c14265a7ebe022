//! Human-readable output of runs.

use serde_json::Value;
use std::process::ExitCode;

/// Prints a run, as JSON or for people.
pub fn print_run(run: &Value, json: bool) {
    if json {
        println!("{run}");
        return;
    }
    let attempts = run["attemptCount"].as_u64().unwrap_or(0);
    println!(
        "{}  {}  {}  (version {}, {} attempt{}, {} ms)",
        run["id"].as_str().unwrap_or("?"),
        run["taskIdentifier"].as_str().unwrap_or("?"),
        run["status"].as_str().unwrap_or("?"),
        run["version"].as_str().unwrap_or("?"),
        attempts,
        if attempts == 1 { "" } else { "s" },
        run["durationMs"].as_u64().unwrap_or(0),
    );
    if let Some(output) = run.get("output") {
        println!("output: {output}");
    }
    if let Some(error) = run.get("error") {
        println!(
            "error: {}: {}",
            error["name"].as_str().unwrap_or("Error"),
            error["message"].as_str().unwrap_or("")
        );
    }
    for line in log_lines(run) {
        println!("  {line}");
    }
}

/// A run's log lines, every attempt's in order, as
/// `[attempt 1] info  greeting name=Ada`.
pub fn log_lines(run: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for attempt in run["attempts"].as_array().into_iter().flatten() {
        for log in attempt["logs"].as_array().into_iter().flatten() {
            let fields: Vec<String> = log["fields"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            lines.push(format!(
                "[attempt {}] {:5} {} {}",
                attempt["number"],
                log["level"].as_str().unwrap_or(""),
                log["message"].as_str().unwrap_or(""),
                fields.join(" ")
            ));
        }
    }
    lines
}

/// What has been printed of a run followed live.
#[derive(Default)]
pub struct Printed {
    /// The status last printed.
    pub status: String,
    /// How many log lines were printed.
    pub logs: usize,
}

/// Prints a run's new log lines, and its status if it changed.
pub fn print_news(run: &Value, printed: &mut Printed) {
    let id = run["id"].as_str().unwrap_or("?");
    let task = run["taskIdentifier"].as_str().unwrap_or("?");
    let lines = crate::output::log_lines(run);
    for line in lines.iter().skip(printed.logs) {
        println!("{id}  {line}");
    }
    printed.logs = printed.logs.max(lines.len());
    let status = run["status"].as_str().unwrap_or("?");
    if status != printed.status {
        println!("{id}  {task}  {status}");
        if let Some(output) = run.get("output") {
            println!("{id}  output: {output}");
        }
        if let Some(error) = run.get("error") {
            println!(
                "{id}  error: {}: {}",
                error["name"].as_str().unwrap_or("Error"),
                error["message"].as_str().unwrap_or("")
            );
        }
        printed.status = status.to_string();
    }
}

/// Success only for a completed run.
pub fn exit_code(run: &Value) -> ExitCode {
    if run["status"] == "COMPLETED" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints a run's journal, as JSON or one line per entry.
pub fn print_journal(journal: &Value, json: bool) {
    if json {
        println!("{journal}");
        return;
    }
    for entry in journal["entries"].as_array().into_iter().flatten() {
        let detail = match entry["type"].as_str().unwrap_or("?") {
            "ATTEMPT_STARTED" => format!("attempt {}", entry["attempt"]),
            "HOST_CALL" => match entry["call"].as_str().unwrap_or("?") {
                "log" => format!(
                    "log {} {:?}",
                    entry["level"].as_str().unwrap_or(""),
                    entry["message"].as_str().unwrap_or("")
                ),
                "random-bytes" => format!(
                    "random-bytes({}) -> {}",
                    entry["len"],
                    entry["result"].as_str().unwrap_or("")
                ),
                other => format!("{other} -> {}", entry["result"]),
            },
            "WAITS" => entry["waits"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|w| {
                    format!(
                        "wait {} {} due {}",
                        w["id"],
                        w["kind"].as_str().unwrap_or("?"),
                        w["dueAt"]
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
            "WAKE" => format!(
                "wake {} ({})",
                entry["id"],
                entry["value"]["kind"].as_str().unwrap_or("?")
            ),
            "SUSPENDED" => format!(
                "snapshot layer {} ({} bytes), instance dropped",
                entry["layer"], entry["bytes"]
            ),
            "ATTEMPT_ENDED" => format!(
                "attempt {} {}",
                entry["attempt"],
                entry["outcome"].as_str().unwrap_or("?")
            ),
            _ => String::new(),
        };
        println!(
            "{:>5}  {}  {:16} {}",
            entry["seq"],
            entry["at"].as_str().unwrap_or(""),
            entry["type"].as_str().unwrap_or("?"),
            detail
        );
    }
}
