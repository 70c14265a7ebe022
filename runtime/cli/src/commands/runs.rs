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
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Get { id, json } => {
            let client = Client::from_env()?;
            let run = client.get_json(&format!("/api/v3/runs/{id}")).await?;
            output::print_run(&run, json);
            Ok(ExitCode::SUCCESS)
        }
    }
}
