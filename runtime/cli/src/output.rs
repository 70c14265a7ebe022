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
    for attempt in run["attempts"].as_array().into_iter().flatten() {
        for log in attempt["logs"].as_array().into_iter().flatten() {
            let fields: Vec<String> = log["fields"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            println!(
                "  [attempt {}] {:5} {} {}",
                attempt["number"],
                log["level"].as_str().unwrap_or(""),
                log["message"].as_str().unwrap_or(""),
                fields.join(" ")
            );
        }
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
