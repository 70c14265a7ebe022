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
            // Not followed through symlinks: a link loop cannot recurse.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
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

/// Builds the crate; the bundle's bytes, or `None` after saying why not.
async fn build(dir: &Path) -> Option<Vec<u8>> {
    let manifest = dir.to_path_buf();
    let built = tokio::task::spawn_blocking(move || {
        kiln_bundle::build(&manifest, &kiln_bundle::BuildOptions::default())
    })
    .await;
    let bundle = match built {
        Ok(Ok(bundle)) => bundle,
        Ok(Err(error)) => {
            eprintln!("kiln dev: the build failed ({error}); the last version stays deployed");
            return None;
        }
        Err(error) => {
            eprintln!("kiln dev: the build was cut short: {error}");
            return None;
        }
    };
    match std::fs::read(&bundle) {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            eprintln!("kiln dev: reading {}: {error}", bundle.display());
            None
        }
    }
}

/// Deploys a built bundle; whether it is done with (deployed, or refused
/// for a reason another try would not change).
async fn deploy(client: &Client, bytes: &[u8]) -> bool {
    match super::deploy::upload(client, bytes.to_vec(), false).await {
        Ok(deployment) => {
            super::deploy::print_deployment(&deployment);
            true
        }
        Err(error) => {
            let unreachable = format!("{error:#}").contains("could not reach");
            if unreachable {
                eprintln!("kiln dev: the server is not reachable; deploying again shortly");
            } else {
                eprintln!("kiln dev: the deploy was refused: {error:#}");
            }
            !unreachable
        }
    }
}

/// Follows the runs made after it started.
struct Runs {
    /// When the loop started, in milliseconds since the epoch.
    since_ms: u64,
    /// Runs with an id above this were made after `kiln dev` started (ids
    /// sort by creation time).
    after: String,
    printed: HashMap<String, Printed>,
}

/// Runs one look reads a page.
const PAGE_SIZE: usize = 100;
/// The most pages one look reads.
const MAX_PAGES: usize = 20;

impl Runs {
    /// From now on: run ids begin with their creation time, so a run made
    /// after this sorts after an id made now.
    fn new() -> Runs {
        let now = kiln_types::Timestamp::now().as_millis();
        Runs {
            since_ms: now,
            after: kiln_types::RunId::generate(now).as_str().to_string(),
            printed: HashMap::new(),
        }
    }

    /// Prints what changed in the runs made since the loop started: every
    /// page of them, up to [`MAX_PAGES`] a look.
    async fn poll(&mut self, client: &Client) {
        let mut fresh: Vec<(String, String)> = Vec::new();
        let mut next: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut path = format!(
                "/api/v1/runs?page[size]={PAGE_SIZE}&filter[createdAt][from]={}",
                self.since_ms
            );
            if let Some(after) = &next {
                path.push_str(&format!("&page[after]={after}"));
            }
            let Ok(page) = client.get_json(&path).await else {
                return;
            };
            fresh.extend(
                page["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|run| {
                        let id = run["id"].as_str()?.to_string();
                        let status = run["status"].as_str()?.to_string();
                        (id > self.after).then_some((id, status))
                    }),
            );
            next = page["pagination"]["next"].as_str().map(String::from);
            if next.is_none() {
                break;
            }
        }
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
    // One listener for the whole loop: a Ctrl-C during a build is not lost.
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    let mut runs = Runs::new();
    let mut seen = sources(&dir);
    // A bundle built but not yet deployed (the server was unreachable).
    let mut pending: Option<Vec<u8>> = None;
    println!("kiln dev: building {}", dir.display());
    let mut changed = true;
    let mut last_runs = std::time::Instant::now();
    loop {
        if changed {
            let work = async {
                if let Some(bytes) = build(&dir).await {
                    pending = Some(bytes);
                }
            };
            tokio::select! {
                () = work => {}
                _ = &mut stop => return Ok(ExitCode::SUCCESS),
            }
            changed = false;
        }
        if let Some(bytes) = &pending {
            tokio::select! {
                done = deploy(&client, bytes) => if done { pending = None; },
                _ = &mut stop => return Ok(ExitCode::SUCCESS),
            }
            if pending.is_none() {
                println!(
                    "kiln dev: watching {} for changes (Ctrl-C stops)",
                    dir.display()
                );
            }
        }
        tokio::select! {
            () = tokio::time::sleep(WATCH_EVERY) => {}
            _ = &mut stop => return Ok(ExitCode::SUCCESS),
        }
        let now = sources(&dir);
        if now != seen {
            // A save during the build is seen at the next look.
            seen = now;
            changed = true;
            println!("kiln dev: a change; rebuilding");
        }
        if last_runs.elapsed() >= RUNS_EVERY {
            last_runs = std::time::Instant::now();
            tokio::select! {
                () = runs.poll(&client) => {}
                _ = &mut stop => return Ok(ExitCode::SUCCESS),
            }
        }
    }
}
