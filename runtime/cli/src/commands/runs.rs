//! `kiln runs ...`.

use crate::client::Client;
use crate::output;
use std::process::ExitCode;

/// Inspect runs.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show a run: status, output or error, attempts and logs.
    Get {
        /// The run id (`run_...`).
        id: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow a run live: its status changes and log lines as they happen,
    /// until it is final (exits 0 only if it completed).
    Watch {
        /// The run id (`run_...`).
        id: String,
    },
    /// Show a run's journal: attempts, host calls with their answers, waits,
    /// wakes and suspensions.
    Journal {
        /// The run id (`run_...`).
        id: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// List runs, newest first.
    List {
        /// Only runs of this task.
        #[arg(long)]
        task: Option<String>,
        /// Only runs with this status (`COMPLETED`, `FAILED`...).
        #[arg(long)]
        status: Option<String>,
        /// Only runs fired by this schedule (`sched_...`).
        #[arg(long)]
        schedule: Option<String>,
        /// At most this many runs (1 to 100).
        #[arg(long, default_value_t = 25)]
        limit: usize,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a run: an executing run is interrupted, a waiting or queued one
    /// is canceled in place.
    Cancel {
        /// The run id (`run_...`).
        id: String,
    },
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Get { id, json } => {
            let client = Client::from_env()?;
            let run = client.run(&id).await?;
            output::print_run(&run, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch { id } => watch(&id).await,
        Command::Journal { id, json } => {
            let client = Client::from_env()?;
            let journal = client
                .get_json(&format!("/api/v1/runs/{id}/journal"))
                .await?;
            output::print_journal(&journal, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::List {
            task,
            status,
            schedule,
            limit,
            json,
        } => {
            let client = Client::from_env()?;
            let mut path = format!("/api/v1/runs?page%5Bsize%5D={limit}");
            for (name, value) in [
                ("taskIdentifier", task),
                ("status", status),
                ("schedule", schedule),
            ] {
                if let Some(v) = value {
                    path.push_str(&format!("&filter%5B{name}%5D={v}"));
                }
            }
            let list = client.get_json(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for run in list["data"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {:<14} {:<20} {}",
                        run["id"].as_str().unwrap_or("-"),
                        run["status"].as_str().unwrap_or("-"),
                        run["taskIdentifier"].as_str().unwrap_or("-"),
                        run["createdAt"].as_str().unwrap_or("-"),
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { id } => {
            let client = Client::from_env()?;
            client
                .post_json(&format!("/api/v2/runs/{id}/cancel"), &serde_json::json!({}))
                .await?;
            let run = client.get_json(&format!("/api/v3/runs/{id}")).await?;
            println!(
                "{id} is {}",
                run["status"].as_str().unwrap_or("in an unknown status")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Follows the run's event stream (`/realtime/v1/events/runs/{id}`, one
/// event per durable change), printing what is new, until the run is
/// final; a stream cut short (the server restarted, the client's timeout)
/// is opened again.
async fn watch(id: &str) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let mut printed = output::Printed::default();
    let path = format!("/realtime/v1/events/runs/{}", crate::client::encode(id));
    loop {
        let mut stream = client.events(&path).await?;
        let mut text = String::new();
        while let Ok(Some(chunk)) = stream.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                let Some(run) = event
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .and_then(|data| serde_json::from_str::<serde_json::Value>(data).ok())
                else {
                    continue;
                };
                if run.get("status").is_none() {
                    continue;
                }
                output::print_news(&run, &mut printed);
                if run["isCompleted"].as_bool().unwrap_or(false) {
                    return Ok(output::exit_code(&run));
                }
            }
        }
        // The stream ended without a final status: look, and follow again.
        let run = client.run(id).await?;
        if run["isCompleted"].as_bool().unwrap_or(false) {
            output::print_news(&run, &mut printed);
            return Ok(output::exit_code(&run));
        }
    }
}
