//! `kiln projects ...` and `kiln keys ...`: projects and their secret keys,
//! with the server's own key (`KILN_SECRET_KEY`).

use crate::client::{Client, encode};
use serde_json::{Value, json};
use std::process::ExitCode;

/// Create and list projects.
#[derive(Debug, clap::Subcommand)]
pub enum ProjectsCommand {
    /// Create a project; prints its ref.
    Create {
        /// Its name.
        name: String,
        /// Its ref (`proj_` then lowercase letters, digits, dashes);
        /// generated when not given.
        #[arg(long = "ref")]
        reference: Option<String>,
    },
    /// List projects.
    List,
}

/// Create, list and revoke a project's secret keys.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key for one environment of a project; prints it (only this
    /// once).
    Create {
        /// The project's ref.
        #[arg(long)]
        project: String,
        /// `dev`, `staging`, `prod` or `preview`.
        #[arg(long, default_value = "dev")]
        env: String,
    },
    /// List a project's keys, masked.
    List {
        /// The project's ref.
        #[arg(long)]
        project: String,
        /// Only this environment's keys.
        #[arg(long)]
        env: Option<String>,
    },
    /// Revoke a key (its id from `kiln keys list`, or the key itself).
    Revoke {
        /// The project's ref.
        #[arg(long)]
        project: String,
        /// The key's id or the key.
        key: String,
    },
}

fn key_line(key: &Value) -> String {
    format!(
        "{:<22} {:<24} {:<8} {}{}",
        key["id"].as_str().unwrap_or("-"),
        key["key"].as_str().unwrap_or("-"),
        key["environment"].as_str().unwrap_or("-"),
        key["createdAt"].as_str().unwrap_or("-"),
        key["revokedAt"]
            .as_str()
            .map(|at| format!("  REVOKED {at}"))
            .unwrap_or_default()
    )
}

/// Runs `kiln projects ...`.
pub async fn projects(command: ProjectsCommand) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    match command {
        ProjectsCommand::Create { name, reference } => {
            let mut body = json!({ "name": name });
            if let Some(reference) = reference {
                body["ref"] = json!(reference);
            }
            let project = client.post_json("/api/v1/projects", &body).await?;
            println!("{}", project["ref"].as_str().unwrap_or_default());
        }
        ProjectsCommand::List => {
            let list = client.get_json("/api/v1/projects").await?;
            for project in list["data"].as_array().into_iter().flatten() {
                println!(
                    "{:<28} {}",
                    project["ref"].as_str().unwrap_or("-"),
                    project["name"].as_str().unwrap_or("-")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `kiln keys ...`.
pub async fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    match command {
        KeysCommand::Create { project, env } => {
            let key = client
                .post_json(
                    &format!("/api/v1/projects/{}/keys", encode(&project)),
                    &json!({ "environment": env }),
                )
                .await?;
            println!("{}", key["key"].as_str().unwrap_or_default());
        }
        KeysCommand::List { project, env } => {
            let mut path = format!("/api/v1/projects/{}/keys", encode(&project));
            if let Some(env) = env {
                path.push_str(&format!("?environment={}", encode(&env)));
            }
            let list = client.get_json(&path).await?;
            for key in list["data"].as_array().into_iter().flatten() {
                println!("{}", key_line(key));
            }
        }
        KeysCommand::Revoke { project, key } => {
            let revoked = client
                .delete(&format!(
                    "/api/v1/projects/{}/keys/{}",
                    encode(&project),
                    encode(&key)
                ))
                .await?;
            println!("{}", key_line(&revoked));
        }
    }
    Ok(ExitCode::SUCCESS)
}
