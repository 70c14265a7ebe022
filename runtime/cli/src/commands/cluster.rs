//! `kiln cluster ...`.

use crate::client::Client;
use serde_json::Value;
use std::process::ExitCode;

/// Inspect a cluster of nodes on one PostgreSQL store.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The nodes (which one leads, when each was last seen), the guests
    /// each runs for the leader, and the depth of every queue.
    Status {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let Command::Status { json } = command;
    let cluster = client.get_json("/api/v1/cluster").await?;
    // The queues are the leader's: the answering node forwards the call.
    let queues = client.get_json("/api/v1/queues?page=1&perPage=100").await?;
    // So is the work: each node's guests, as the leader placed them.
    let work = client.get_json("/api/v1/cluster/work").await?;
    if json {
        let both = serde_json::json!({
            "cluster": cluster,
            "work": work,
            "queues": queues["data"],
        });
        println!("{}", serde_json::to_string_pretty(&both)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<16} {:<8} {:<10} url", "node", "role", "seen");
    for node in cluster["nodes"].as_array().into_iter().flatten() {
        println!("{}", node_line(node, cluster["node"].as_str()));
    }
    println!();
    println!(
        "{:<16} {:>7} {:>8} {:>8}",
        "guests on", "running", "capacity", "slices"
    );
    for share in work["work"].as_array().into_iter().flatten() {
        println!(
            "{:<16} {:>7} {:>8} {:>8}",
            share["node"].as_str().unwrap_or("-"),
            share["running"],
            share["capacity"],
            share["slices"]
        );
    }
    println!(
        "slices started again after their node was lost: {}",
        work["lost"]
    );
    println!();
    println!("{:<32} {:>7} {:>8}", "queue", "queued", "running");
    for q in queues["data"].as_array().into_iter().flatten() {
        println!(
            "{:<32} {:>7} {:>8}",
            q["queueName"].as_str().unwrap_or("-"),
            q["queued"],
            q["running"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn node_line(node: &Value, answering: Option<&str>) -> String {
    let id = node["node"].as_str().unwrap_or("-");
    let role = if node["leads"].as_bool() == Some(true) {
        "leader"
    } else {
        "standby"
    };
    let seen = format!("{:.1}s ago", node["seenSecsAgo"].as_f64().unwrap_or(0.0));
    let this = if Some(id) == answering {
        "  (answered)"
    } else {
        ""
    };
    format!(
        "{id:<16} {role:<8} {seen:<10} {}{this}",
        node["url"].as_str().unwrap_or("-")
    )
}
