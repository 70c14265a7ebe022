//! `kiln trigger`.

use crate::client::Client;
use crate::output;
use std::process::ExitCode;

/// Trigger a run of a task.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task id.
    task: String,
    /// The payload, as JSON.
    #[arg(long, default_value = "null")]
    payload: String,
    /// Wait for the run to finish and show it; exits non-zero unless it
    /// completed.
    #[arg(long)]
    wait: bool,
    /// A tag for the run (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// The machine preset (`micro`, `small-1x`, ...).
    #[arg(long)]
    machine: Option<String>,
    /// Run on this declared queue instead of the task's own.
    #[arg(long)]
    queue: Option<String>,
    /// The run's lane in its queue (a tenant id): keys take turns, each
    /// with the queue's concurrency limit.
    #[arg(long)]
    concurrency_key: Option<String>,
    /// A head start in the queue, in seconds.
    #[arg(long)]
    priority: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Triggers the run, and waits for it with `--wait`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let payload: serde_json::Value = serde_json::from_str(&args.payload)
        .map_err(|e| anyhow::anyhow!("--payload is not valid JSON: {e}"))?;
    let mut options = serde_json::json!({ "payloadType": "application/json" });
    if !args.tags.is_empty() {
        options["tags"] = serde_json::json!(args.tags);
    }
    if let Some(machine) = &args.machine {
        options["machine"] = serde_json::json!(machine);
    }
    if let Some(queue) = &args.queue {
        options["queue"] = serde_json::json!({ "name": queue });
    }
    if let Some(key) = &args.concurrency_key {
        options["concurrencyKey"] = serde_json::json!(key);
    }
    if let Some(priority) = args.priority {
        options["priority"] = serde_json::json!(priority);
    }
    let body = serde_json::json!({ "payload": payload.to_string(), "options": options });
    let client = Client::from_env()?;
    let created = client
        .post_json(&format!("/api/v1/tasks/{}/trigger", args.task), &body)
        .await?;
    let id = created["id"].as_str().unwrap_or_default().to_string();
    if !args.wait {
        if args.json {
            println!("{created}");
        } else {
            println!("Triggered {id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let run = client.wait_for_run(&id).await?;
    output::print_run(&run, args.json);
    Ok(output::exit_code(&run))
}
