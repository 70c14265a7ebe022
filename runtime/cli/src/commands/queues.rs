//! `kiln queues ...`.

use crate::client::{Client, encode};
use serde_json::{Value, json};
use std::process::ExitCode;

/// Inspect and pause queues.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List queues: queued and running runs, limits, paused.
    List {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a queue and its busiest concurrency keys.
    Show {
        /// The queue: a declared name (`emails`) or `task/<task id>`.
        name: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a queue from starting runs (they stay queued; running ones go on).
    Pause {
        /// The queue: a declared name or `task/<task id>`.
        name: String,
    },
    /// Let a paused queue start runs again.
    Resume {
        /// The queue: a declared name or `task/<task id>`.
        name: String,
    },
}

fn limit(v: &Value) -> String {
    v.as_u64().map_or("-".to_string(), |n| n.to_string())
}

fn line(q: &Value) -> String {
    let rate = match q["rateLimit"].as_object() {
        Some(r) => format!(
            "  rate {}/{}ms{}",
            r.get("limit").map(limit).unwrap_or_default(),
            r.get("periodMs").map(limit).unwrap_or_default(),
            if r.get("perKey").and_then(Value::as_bool) == Some(true) {
                " per key"
            } else {
                ""
            }
        ),
        None => String::new(),
    };
    format!(
        "{:<32} {:<7} queued {:<6} running {:<4} limit {:<4} total {:<4} keys {:<5}{}{}",
        q["queueName"].as_str().unwrap_or("-"),
        q["type"].as_str().unwrap_or("-"),
        q["queued"],
        q["running"],
        limit(&q["concurrencyLimit"]),
        limit(&q["concurrencyLimitTotal"]),
        q["concurrencyKeys"],
        if q["paused"].as_bool() == Some(true) {
            "  PAUSED"
        } else {
            ""
        },
        rate
    )
}

fn print(q: &Value, as_json: bool) {
    if as_json {
        println!("{}", serde_json::to_string_pretty(q).unwrap_or_default());
        return;
    }
    println!("{}", line(q));
    for key in q["keys"].as_array().into_iter().flatten() {
        println!(
            "  key {:<30} queued {:<6} running {}",
            key["key"].as_str().unwrap_or("(none)"),
            key["queued"],
            key["running"]
        );
    }
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    match command {
        Command::List { json } => {
            let mut page = 1;
            loop {
                let list = client
                    .get_json(&format!("/api/v1/queues?page={page}&perPage=100"))
                    .await?;
                for q in list["data"].as_array().into_iter().flatten() {
                    print(q, json);
                }
                let total = list["pagination"]["totalPages"].as_u64().unwrap_or(0);
                if page as u64 >= total {
                    break;
                }
                page += 1;
            }
        }
        Command::Show { name, json } => {
            let q = client
                .get_json(&format!("/api/v1/queues/{}", encode(&name)))
                .await?;
            print(&q, json);
        }
        Command::Pause { name } => pause(&client, &name, "pause").await?,
        Command::Resume { name } => pause(&client, &name, "resume").await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn pause(client: &Client, name: &str, action: &str) -> anyhow::Result<()> {
    let path = format!("/api/v1/queues/{}/pause", encode(name));
    let q = client
        .post_json(&path, &json!({ "action": action }))
        .await?;
    print(&q, false);
    Ok(())
}
