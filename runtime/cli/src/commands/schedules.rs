//! `kiln schedules ...`.

use crate::client::Client;
use serde_json::{Value, json};
use std::process::ExitCode;

/// Manage schedules of scheduled tasks.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a schedule, or update the one with the same deduplication key.
    Create {
        #[command(flatten)]
        spec: Spec,
        /// Makes the create idempotent: a second create with the same key
        /// updates the first schedule.
        #[arg(long)]
        dedup_key: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a schedule.
    Get {
        /// The schedule id (`sched_...`).
        id: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a schedule's task, cron, time zone or external id.
    Update {
        /// The schedule id (`sched_...`).
        id: String,
        #[command(flatten)]
        spec: Spec,
    },
    /// Make a schedule fire again.
    Activate {
        /// The schedule id (`sched_...`).
        id: String,
    },
    /// Stop a schedule from firing.
    Deactivate {
        /// The schedule id (`sched_...`).
        id: String,
    },
    /// Delete a schedule.
    Delete {
        /// The schedule id (`sched_...`).
        id: String,
    },
    /// List schedules, oldest first.
    List {
        /// The page, from 1.
        #[arg(long, default_value_t = 1)]
        page: usize,
        /// Schedules per page (at most 100).
        #[arg(long, default_value_t = 20)]
        per_page: usize,
        /// Only the schedules with this external id.
        #[arg(long)]
        external_id: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the IANA time zones schedules accept.
    Timezones,
}

/// What a schedule fires and when.
#[derive(Debug, clap::Args)]
pub struct Spec {
    /// The scheduled task to fire.
    #[arg(long)]
    task: String,
    /// Five fields: minute hour day-of-month month day-of-week.
    #[arg(long)]
    cron: String,
    /// The IANA time zone the cron is read in (default UTC).
    #[arg(long)]
    timezone: Option<String>,
    /// Your id for what the schedule belongs to (a tenant, a user).
    #[arg(long)]
    external_id: Option<String>,
}

impl Spec {
    /// The request body.
    fn body(self) -> Value {
        let mut body = json!({ "task": self.task, "cron": self.cron });
        if let Some(tz) = self.timezone {
            body["timezone"] = json!(tz);
        }
        if let Some(external) = self.external_id {
            body["externalId"] = json!(external);
        }
        body
    }
}

fn line(s: &Value) -> String {
    let text = |k: &str| s[k].as_str().unwrap_or("-").to_string();
    format!(
        "{}  {:<11} {:<8} {:<20} {:<18} {:<22} next {}{}",
        text("id"),
        text("type"),
        if s["active"].as_bool().unwrap_or(false) {
            "active"
        } else {
            "inactive"
        },
        text("task"),
        s["generator"]["expression"].as_str().unwrap_or("-"),
        text("timezone"),
        text("nextRun"),
        s["externalId"]
            .as_str()
            .map(|e| format!("  external {e}"))
            .unwrap_or_default()
    )
}

fn print(s: &Value, as_json: bool) {
    if as_json {
        println!("{}", serde_json::to_string_pretty(s).unwrap_or_default());
        return;
    }
    println!("{}", line(s));
    if let Some(description) = s["generator"]["description"].as_str() {
        println!("  {description}");
    }
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    match command {
        Command::Create {
            spec,
            dedup_key,
            json,
        } => {
            let mut body = spec.body();
            if let Some(key) = dedup_key {
                body["deduplicationKey"] = json!(key);
            }
            print(&client.post_json("/api/v1/schedules", &body).await?, json);
        }
        Command::Get { id, json } => {
            print(
                &client.get_json(&format!("/api/v1/schedules/{id}")).await?,
                json,
            );
        }
        Command::Update { id, spec } => {
            let body = spec.body();
            print(
                &client
                    .put_json(&format!("/api/v1/schedules/{id}"), &body)
                    .await?,
                false,
            );
        }
        Command::Activate { id } => {
            let path = format!("/api/v1/schedules/{id}/activate");
            print(&client.post_json(&path, &json!({})).await?, false);
        }
        Command::Deactivate { id } => {
            let path = format!("/api/v1/schedules/{id}/deactivate");
            print(&client.post_json(&path, &json!({})).await?, false);
        }
        Command::Delete { id } => {
            client.delete(&format!("/api/v1/schedules/{id}")).await?;
            println!("deleted {id}");
        }
        Command::List {
            page,
            per_page,
            external_id,
            json,
        } => {
            let mut path = format!("/api/v1/schedules?page={page}&perPage={per_page}");
            if let Some(external) = external_id {
                path.push_str(&format!("&externalId={}", crate::client::encode(&external)));
            }
            let list = client.get_json(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for s in list["data"].as_array().into_iter().flatten() {
                    println!("{}", line(s));
                }
                let p = &list["pagination"];
                println!(
                    "page {} of {} ({} schedules)",
                    p["currentPage"], p["totalPages"], p["count"]
                );
            }
        }
        Command::Timezones => {
            let list = client.get_json("/api/v1/timezones").await?;
            for tz in list["timezones"].as_array().into_iter().flatten() {
                println!("{}", tz.as_str().unwrap_or_default());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
