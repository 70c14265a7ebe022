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
/// is opened again after a pause that grows, for about a minute at most
/// while the server cannot be reached.
async fn watch(id: &str) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let mut printed = output::Printed::default();
    let path = format!("/realtime/v1/events/runs/{}", crate::client::encode(id));
    // The run exists (or the error says why not) before anything waits.
    client.run(id).await?;
    let mut pause = std::time::Duration::from_millis(250);
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        match client.events(&path).await {
            Ok(mut stream) => {
                unreachable_since = None;
                let mut bytes: Vec<u8> = Vec::new();
                while let Ok(Some(chunk)) = stream.chunk().await {
                    bytes.extend_from_slice(&chunk);
                    while let Some(end) = event_end(&bytes) {
                        let event: Vec<u8> = bytes.drain(..end).collect();
                        let text = String::from_utf8_lossy(&event);
                        let Some(run) = text
                            .lines()
                            .find_map(|l| l.strip_prefix("data: "))
                            .and_then(|data| serde_json::from_str::<serde_json::Value>(data).ok())
                        else {
                            continue;
                        };
                        if run.get("status").is_none() {
                            continue;
                        }
                        if run["isCompleted"].as_bool().unwrap_or(false) {
                            // The whole run, with an output kept apart.
                            let run = client.run(id).await.unwrap_or(run);
                            output::print_news(&run, &mut printed);
                            return Ok(output::exit_code(&run));
                        }
                        output::print_news(&run, &mut printed);
                    }
                }
            }
            Err(error) => {
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > std::time::Duration::from_secs(60) {
                    return Err(error);
                }
            }
        }
        // The stream ended without a final status: look, and follow again.
        if let Ok(run) = client.run(id).await
            && run["isCompleted"].as_bool().unwrap_or(false)
        {
            output::print_news(&run, &mut printed);
            return Ok(output::exit_code(&run));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}

/// Where the first whole event in `bytes` ends (after its blank line,
/// `\n\n` or `\r\n\r\n`).
fn event_end(bytes: &[u8]) -> Option<usize> {
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
