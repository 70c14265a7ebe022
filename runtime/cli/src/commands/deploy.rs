//! `kiln deploy`.

use crate::client::Client;
use std::path::PathBuf;
use std::process::ExitCode;

/// Deploy a bundle as the new version, or several bundles (a Rust one and a
/// TypeScript one, say) as one version whose tasks can trigger each other.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The bundle (`kiln build` prints its path), or several.
    #[arg(required = true)]
    bundles: Vec<PathBuf>,
    /// Print the server's JSON answer.
    #[arg(long)]
    json: bool,
    /// Refuse the deploy when the bundle's tasks need environment variables
    /// the environment does not set (they are warnings otherwise).
    #[arg(long)]
    strict: bool,
}

/// Uploads the bundle.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut bytes = Vec::new();
    let mut sizes = Vec::new();
    for bundle in &args.bundles {
        let read = std::fs::read(bundle)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", bundle.display()))?;
        sizes.push(read.len().to_string());
        bytes.extend_from_slice(&read);
    }
    let client = Client::from_env()?;
    // Compiling a large bundle on the server takes a while: say what is
    // happening (on stderr, so `--json` output stays clean).
    let names: Vec<String> = args
        .bundles
        .iter()
        .map(|b| b.display().to_string())
        .collect();
    eprintln!(
        "Deploying {} ({} KiB): uploading, validating and compiling...",
        names.join(" and "),
        bytes.len().div_ceil(1024)
    );
    let deployment = if args.bundles.len() == 1 {
        upload(&client, bytes, args.strict).await?
    } else {
        let strict = if args.strict { "&strict=true" } else { "" };
        let path = format!("/api/v1/deployments?sizes={}{strict}", sizes.join(","));
        client.post_bytes(&path, bytes).await?
    };
    if args.json {
        println!("{deployment}");
        return Ok(ExitCode::SUCCESS);
    }
    print_deployment(&deployment);
    Ok(ExitCode::SUCCESS)
}

/// Deploys a bundle's bytes; `strict` refuses a bundle whose tasks need
/// environment variables the environment does not set.
pub async fn upload(
    client: &Client,
    bytes: Vec<u8>,
    strict: bool,
) -> anyhow::Result<serde_json::Value> {
    let path = if strict {
        "/api/v1/deployments?strict=true"
    } else {
        "/api/v1/deployments"
    };
    client.post_bytes(path, bytes).await
}

/// Prints what was deployed, and the server's warnings.
pub fn print_deployment(deployment: &serde_json::Value) {
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
    for warning in deployment["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", warning.as_str().unwrap_or_default());
    }
}
