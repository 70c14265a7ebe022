//! `kiln dev [PATH]`: the task author's loop, as `trigger.dev dev` is.
//!
//! Builds the crate and deploys it to the server `KILN_API_URL` names, then
//! watches the crate's sources (`src/`, `Cargo.toml`, `build.rs`), checking
//! their modification times a few times a second, and builds and deploys
//! again after each change; a build that fails is reported and the last
//! good version stays deployed. Meanwhile it prints the runs made since it
//! started as they change: their status, their new log lines, and their
//! output or error once final. Ctrl-C stops it.

use crate::client::Client;
use crate::output::{Printed, print_news};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// How often the sources are checked for changes.
const WATCH_EVERY: Duration = Duration::from_millis(300);
/// How often the runs are read.
const RUNS_EVERY: Duration = Duration::from_millis(1_000);

/// Build, deploy, and rebuild and redeploy on every change; print runs as
/// they happen.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The crate's directory.
    #[arg(default_value = ".")]
    path: PathBuf,
}

/// The modification time of every watched file under the crate.
fn sources(dir: &Path) -> BTreeMap<PathBuf, SystemTime> {
    fn walk(dir: &Path, found: &mut BTreeMap<PathBuf, SystemTime>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, found);
            } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                found.insert(path, modified);
            }
        }
    }
    let mut found = BTreeMap::new();
    walk(&dir.join("src"), &mut found);
    for file in ["Cargo.toml", "build.rs"] {
        let path = dir.join(file);
        if let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified()) {
            found.insert(path, modified);
        }
    }
    found
}

/// Builds the crate and deploys the bundle; says what happened.
async fn build_and_deploy(client: &Client, dir: &Path) {
    let manifest = dir.to_path_buf();
    let built = tokio::task::spawn_blocking(move || {
        kiln_bundle::build(&manifest, &kiln_bundle::BuildOptions::default())
    })
    .await;
    let bundle = match built {
        Ok(Ok(bundle)) => bundle,
        Ok(Err(error)) => {
            eprintln!("kiln dev: the build failed ({error}); the last version stays deployed");
            return;
        }
        Err(error) => {
            eprintln!("kiln dev: the build was cut short: {error}");
            return;
        }
    };
    let bytes = match std::fs::read(&bundle) {
        Ok(bytes) => bytes,
        Err(error) => {
            eprintln!("kiln dev: reading {}: {error}", bundle.display());
            return;
        }
    };
    match super::deploy::upload(client, bytes, false).await {
        Ok(deployment) => super::deploy::print_deployment(&deployment),
        Err(error) => eprintln!("kiln dev: the deploy was refused: {error:#}"),
    }
}

/// Follows the runs made after it started.
struct Runs {
    /// Runs with an id above this were made after `kiln dev` started (ids
    /// sort by creation time).
    after: String,
    printed: HashMap<String, Printed>,
}

impl Runs {
    async fn new(client: &Client) -> Runs {
        let newest = client
            .get_json("/api/v1/runs?page[size]=1")
            .await
            .ok()
            .and_then(|page| page["data"][0]["id"].as_str().map(str::to_string));
        Runs {
            after: newest.unwrap_or_default(),
            printed: HashMap::new(),
        }
    }

    /// Prints what changed in the newest runs since the last look.
    async fn poll(&mut self, client: &Client) {
        let Ok(page) = client.get_json("/api/v1/runs?page[size]=25").await else {
            return;
        };
        let mut fresh: Vec<(String, String)> = page["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|run| {
                let id = run["id"].as_str()?.to_string();
                let status = run["status"].as_str()?.to_string();
                (id > self.after).then_some((id, status))
            })
            .collect();
        fresh.reverse();
        for (id, status) in fresh {
            let printed = self.printed.entry(id.clone()).or_default();
            let finished = printed.status == status
                && matches!(
                    status.as_str(),
                    "COMPLETED"
                        | "CANCELED"
                        | "FAILED"
                        | "CRASHED"
                        | "SYSTEM_FAILURE"
                        | "EXPIRED"
                        | "TIMED_OUT"
                );
            if finished {
                continue;
            }
            let Ok(run) = client.run(&id).await else {
                continue;
            };
            print_news(&run, printed);
        }
    }
}

/// Runs the loop until Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    let dir = args.path;
    if !dir.join("Cargo.toml").exists() {
        anyhow::bail!(
            "{} has no Cargo.toml: give the bundle crate's directory",
            dir.display()
        );
    }
    let mut runs = Runs::new(&client).await;
    let mut seen = sources(&dir);
    println!("kiln dev: building {}", dir.display());
    build_and_deploy(&client, &dir).await;
    println!(
        "kiln dev: watching {} for changes (Ctrl-C stops)",
        dir.display()
    );
    let mut last_runs = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
        let now = sources(&dir);
        if now != seen {
            seen = now;
            println!("kiln dev: a change; rebuilding");
            // A save during the build is seen at the next look.
            build_and_deploy(&client, &dir).await;
        }
        if last_runs.elapsed() >= RUNS_EVERY {
            last_runs = std::time::Instant::now();
            runs.poll(&client).await;
        }
    }
}
