//! `kiln deploy`.

use crate::client::Client;
use std::path::PathBuf;
use std::process::ExitCode;

/// Deploy a bundle as the new version.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The bundle (`kiln build` prints its path).
    bundle: PathBuf,
    /// Print the server's JSON answer.
    #[arg(long)]
    json: bool,
}

/// Uploads the bundle.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.bundle)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", args.bundle.display()))?;
    let client = Client::from_env()?;
    let deployment = client.post_bytes("/api/v1/deployments", bytes).await?;
    if args.json {
        println!("{deployment}");
        return Ok(ExitCode::SUCCESS);
    }
    let tasks: Vec<&str> = deployment["tasks"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["id"].as_str()).collect())
        .unwrap_or_default();
    println!(
        "Deployed version {} ({} task{}: {})",
        deployment["version"].as_str().unwrap_or("?"),
        tasks.len(),
        if tasks.len() == 1 { "" } else { "s" },
        tasks.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
