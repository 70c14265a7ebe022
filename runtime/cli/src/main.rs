//! `kiln`: the Kiln server and the command-line client for it.

mod client;
mod commands;
mod output;

use clap::{Parser, Subcommand};

/// The server's allocator: jemalloc returns freed memory to the system
/// over time, so a server under a steady load keeps a steady footprint.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Kiln: durable background tasks compiled to WebAssembly.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<commands::serve::Args>),
    /// Make a new bundle crate with an example task, anywhere on disk.
    Init(commands::init::Args),
    /// Build a guest crate into a component bundle.
    Build(commands::build::Args),
    /// Build and deploy a crate, again on every change, and print its runs
    /// as they happen.
    Dev(commands::dev::Args),
    /// Deploy a bundle as the new version.
    Deploy(commands::deploy::Args),
    /// Trigger a run of a task.
    Trigger(commands::trigger::Args),
    /// Inspect runs.
    #[command(subcommand)]
    Runs(commands::runs::Command),
    /// Manage schedules of scheduled tasks.
    #[command(subcommand)]
    Schedules(commands::schedules::Command),
    /// Inspect, pause and resume queues.
    #[command(subcommand)]
    Queues(commands::queues::Command),
    /// Inspect a cluster of nodes on one PostgreSQL store.
    #[command(subcommand)]
    Cluster(commands::cluster::Command),
    /// Create and list projects (with the server's own key).
    #[command(subcommand)]
    Projects(commands::projects::ProjectsCommand),
    /// Create, list and revoke a project's secret keys (with the server's
    /// own key).
    #[command(subcommand)]
    Keys(commands::projects::KeysCommand),
    /// Set, list, unset and import a project environment's variables (read
    /// by tasks with `kiln_sdk::env::var`).
    #[command(subcommand)]
    Env(commands::env::Command),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(args) => commands::build::run(args),
        Command::Init(args) => commands::init::run(args),
        command => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(async move {
                    match command {
                        Command::Serve(args) => commands::serve::run(*args).await,
                        Command::Deploy(args) => commands::deploy::run(args).await,
                        Command::Dev(args) => commands::dev::run(args).await,
                        Command::Trigger(args) => commands::trigger::run(args).await,
                        Command::Runs(command) => commands::runs::run(command).await,
                        Command::Schedules(command) => commands::schedules::run(command).await,
                        Command::Queues(command) => commands::queues::run(command).await,
                        Command::Cluster(command) => commands::cluster::run(command).await,
                        Command::Projects(command) => commands::projects::projects(command).await,
                        Command::Keys(command) => commands::projects::keys(command).await,
                        Command::Env(command) => commands::env::run(command).await,
                        Command::Build(_) | Command::Init(_) => unreachable!("handled above"),
                    }
                })
            }),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
