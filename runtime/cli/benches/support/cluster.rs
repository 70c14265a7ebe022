//! Failover: three `kiln serve` nodes on one PostgreSQL store, each with
//! its own data directory and compile cache; the leader is killed
//! (`SIGKILL`) five times, then paused (`SIGSTOP`, so it holds its
//! connections until its lease runs out) three times, and each time the
//! bench measures how long until a node leads again and until a run
//! triggered through a surviving node completes. The stopped node comes
//! back as a standby (a paused one is killed first) before the next round.
//! Then the same for a node that runs a guest for the leader: how long
//! until the leader starts the guest's slice again elsewhere, and until the
//! run completes.

use super::{KEY, MASTER_KEY, Server, percentile};
use std::time::{Duration, Instant};

/// Whether `node` says it leads.
async fn leads(http: &reqwest::Client, url: &str) -> bool {
    let Ok(answer) = http
        .get(format!("{url}/api/v1/cluster"))
        .bearer_auth(KEY)
        .send()
        .await
    else {
        return false;
    };
    let view: serde_json::Value = answer.json().await.unwrap_or_default();
    view["leads"] == true
}

/// A `hello-world` run through `url` from trigger to `COMPLETED`; `false`
/// if any step is refused (no node leads yet).
async fn run_through(http: &reqwest::Client, url: &str) -> bool {
    let body = serde_json::json!({
        "payload": "{\"name\":\"Ada\"}",
        "options": { "payloadType": "application/json" },
    });
    let Ok(created) = http
        .post(format!("{url}/api/v1/tasks/hello-world/trigger"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
    else {
        return false;
    };
    if !created.status().is_success() {
        return false;
    }
    let created: serde_json::Value = created.json().await.unwrap_or_default();
    let Some(id) = created["id"].as_str() else {
        return false;
    };
    for _ in 0..10 {
        let Ok(answer) = http
            .get(format!("{url}/api/v3/runs/{id}?wait=10000"))
            .bearer_auth(KEY)
            .send()
            .await
        else {
            continue;
        };
        let run: serde_json::Value = answer.json().await.unwrap_or_default();
        if run["status"] == "COMPLETED" {
            return true;
        }
    }
    false
}

impl Stop {
    fn describe(self) -> &'static str {
        match self {
            Stop::Kill => "SIGKILLed",
            Stop::Pause => "paused with SIGSTOP",
        }
    }
}

/// `median … (worst …)` of `samples`.
fn summary(samples: &mut [Duration]) -> String {
    let worst = samples.iter().max().copied().unwrap_or_default();
    format!(
        "median {:.0?} (worst {worst:.0?})",
        percentile(samples, 0.5)
    )
}

/// A node of the cluster on the store at `url`, with its data in `dir`.
fn node(dir: &std::path::Path, url: &str) -> Server {
    let args = ["--store", url];
    Server::start_with_env(dir, &args, &[("KILN_MASTER_KEY", MASTER_KEY)]).0
}

/// A new database `db` on the server at `postgres`; its URL.
fn database(postgres: &str, db: &str) -> String {
    let status = std::process::Command::new("psql")
        .args(["-q", "-X", postgres, "-c"])
        .arg(format!("CREATE DATABASE {db}"))
        .status()
        .expect("psql");
    assert!(status.success(), "creating {db}");
    postgres.replacen("/postgres?", &format!("/{db}?"), 1)
}

/// Stops `node` as `how` says; a paused one is given back, to be killed
/// once measured.
fn stop(node: Server, how: Stop) -> Option<Server> {
    match how {
        Stop::Kill => {
            node.kill();
            None
        }
        Stop::Pause => {
            let sent = std::process::Command::new("kill")
                .args(["-STOP", &node.child.id().to_string()])
                .status()
                .expect("kill runs");
            assert!(sent.success());
            Some(node)
        }
    }
}

/// How a round stops the leader.
#[derive(Clone, Copy, PartialEq)]
pub enum Stop {
    /// `SIGKILL`: its sessions end at once.
    Kill,
    /// `SIGSTOP`: its sessions stay open until a standby ends them.
    Pause,
}

/// Stops the leader `rounds` times as `how` says; prints the medians and
/// the worst.
pub async fn failover_bench(postgres: &str, how: Stop, rounds: usize) {
    let db = match how {
        Stop::Kill => "bench_failover",
        Stop::Pause => "bench_failover_paused",
    };
    let url = database(postgres, db);
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("a temp dir"))
        .collect();
    let mut nodes: Vec<Server> = dirs.iter().map(|d| node(d.path(), &url)).collect();
    nodes[0].deploy(kiln_fixtures::HELLO_WORLD).await;
    let http = reqwest::Client::new();
    assert!(run_through(&http, &nodes[1].url).await);
    let mut to_lead = Vec::new();
    let mut to_serve = Vec::new();
    for _ in 0..rounds {
        let mut leader = None;
        for (i, node) in nodes.iter().enumerate() {
            if leads(&http, &node.url).await {
                leader = Some(i);
            }
        }
        let leader = leader.expect("a node leads");
        let survivor = nodes[(leader + 1) % 3].url.clone();
        let stopped = nodes.remove(leader);
        let started = Instant::now();
        let paused = stop(stopped, how);
        let deadline = started + Duration::from_secs(60);
        loop {
            let mut led = false;
            for node in &nodes {
                led |= leads(&http, &node.url).await;
            }
            if led {
                to_lead.push(started.elapsed());
                break;
            }
            assert!(Instant::now() < deadline, "no node led within 60 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while !run_through(&http, &survivor).await {
            assert!(Instant::now() < deadline, "no run completed within 60 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        to_serve.push(started.elapsed());
        if let Some(paused) = paused {
            paused.kill();
        }
        // The stopped node's data directory comes back as a standby.
        nodes.insert(leader, node(dirs[leader].path(), &url));
    }
    println!(
        "cluster failover (3 nodes, leader {}, {rounds} times): a node leads after {}; a run through a surviving node completes after {}",
        how.describe(),
        summary(&mut to_lead),
        summary(&mut to_serve),
    );
    for node in nodes {
        node.kill();
    }
}

/// The leader's `/api/v1/cluster/work` through `node`.
async fn work(node: &Server) -> serde_json::Value {
    node.get("/api/v1/cluster/work").await
}

/// Waits (at most 60 s) until the leader, through `node`, has `count`
/// nodes running guests, itself included.
async fn connected(node: &Server, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while work(node).await["work"].as_array().map(Vec::len) != Some(count) {
        assert!(Instant::now() < deadline, "{count} nodes never ran guests");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stops a node that runs a guest for the leader, `rounds` times as `how`
/// says, and measures from the stop until the leader starts the guest's
/// slice again elsewhere (its count of lost slices goes up) and until the
/// run completes; prints the medians and the worst.
pub async fn worker_loss_bench(postgres: &str, how: Stop, rounds: usize) {
    let db = match how {
        Stop::Kill => "bench_worker_killed",
        Stop::Pause => "bench_worker_paused",
    };
    let url = database(postgres, db);
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("a temp dir"))
        .collect();
    // The first node leads (the others start once it does).
    let mut nodes: Vec<Server> = Vec::new();
    for dir in &dirs {
        nodes.push(node(dir.path(), &url));
        if nodes.len() == 1 {
            let http = reqwest::Client::new();
            while !leads(&http, &nodes[0].url).await {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    nodes[0].deploy(kiln_fixtures::PROBE).await;
    connected(&nodes[0], 3).await;
    let (mut to_restart, mut to_complete) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        // Runs spinning for a second between two draws, until one is on a
        // worker.
        let deadline = Instant::now() + Duration::from_secs(60);
        let (worker, id) = 'placed: loop {
            let id = nodes[0]
                .trigger("draw-spin", serde_json::json!({ "spin_ms": 1000 }))
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let shares = work(&nodes[0]).await;
            let view = nodes[0].get("/api/v1/cluster").await;
            for share in shares["work"].as_array().into_iter().flatten().skip(1) {
                if share["running"].as_u64() > Some(0) {
                    let node_url = view["nodes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|n| n["node"] == share["node"])
                        .and_then(|n| n["url"].as_str())
                        .unwrap_or_default()
                        .to_string();
                    if let Some(i) = nodes.iter().position(|n| n.url == node_url) {
                        break 'placed (i, id);
                    }
                }
            }
            assert!(Instant::now() < deadline, "no guest ran on a worker");
        };
        let lost_before = work(&nodes[0]).await["lost"].as_u64().unwrap_or(0);
        let stopped = nodes.remove(worker);
        let started = Instant::now();
        let paused = stop(stopped, how);
        let deadline = started + Duration::from_secs(60);
        while work(&nodes[0]).await["lost"].as_u64().unwrap_or(0) <= lost_before {
            assert!(Instant::now() < deadline, "the lost guest never restarted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        to_restart.push(started.elapsed());
        loop {
            let run = nodes[0].get(&format!("/api/v3/runs/{id}?wait=10000")).await;
            if run["status"] == "COMPLETED" {
                break;
            }
            assert!(Instant::now() < deadline, "the run never completed");
        }
        to_complete.push(started.elapsed());
        if let Some(paused) = paused {
            paused.kill();
        }
        nodes.insert(worker, node(dirs[worker].path(), &url));
        connected(&nodes[0], 3).await;
    }
    println!(
        "cluster worker lost (3 nodes, a worker {} while its guest spins 1 s, {rounds} times): the slice starts again after {}; the run completes after {}",
        how.describe(),
        summary(&mut to_restart),
        summary(&mut to_complete),
    );
    for node in nodes {
        node.kill();
    }
}
