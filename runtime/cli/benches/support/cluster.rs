//! Failover: three `kiln serve` nodes on one PostgreSQL store, each with
//! its own data directory and compile cache; the leader is killed
//! (`SIGKILL`) five times, then paused (`SIGSTOP`, so it holds its
//! connections until its lease runs out) three times, and each time the
//! bench measures how long until a node leads again and until a run
//! triggered through a surviving node completes. The stopped node comes
//! back as a standby (a paused one is killed first) before the next round.

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
    let status = std::process::Command::new("psql")
        .args(["-q", "-X", postgres, "-c"])
        .arg(format!("CREATE DATABASE {db}"))
        .status()
        .expect("psql");
    assert!(status.success(), "creating {db}");
    let url = postgres.replacen("/postgres?", &format!("/{db}?"), 1);
    let args = ["--store", url.as_str()];
    let envs = [("KILN_MASTER_KEY", MASTER_KEY)];
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("a temp dir"))
        .collect();
    let mut nodes: Vec<Server> = dirs
        .iter()
        .map(|d| Server::start_with_env(d.path(), &args, &envs).0)
        .collect();
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
        let paused = match how {
            Stop::Kill => {
                stopped.kill();
                None
            }
            Stop::Pause => {
                let sent = std::process::Command::new("kill")
                    .args(["-STOP", &stopped.child.id().to_string()])
                    .status()
                    .expect("kill runs");
                assert!(sent.success());
                Some(stopped)
            }
        };
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
        nodes.insert(
            leader,
            Server::start_with_env(dirs[leader].path(), &args, &envs).0,
        );
    }
    let (lead_max, serve_max) = (
        to_lead.iter().max().copied().unwrap_or_default(),
        to_serve.iter().max().copied().unwrap_or_default(),
    );
    println!(
        "cluster failover (3 nodes, leader {}, {rounds} times): a node leads after median {:.0?} (worst {:.0?}); a run through a surviving node completes after median {:.0?} (worst {:.0?})",
        match how {
            Stop::Kill => "SIGKILLed",
            Stop::Pause => "paused with SIGSTOP",
        },
        percentile(&mut to_lead, 0.5),
        lead_max,
        percentile(&mut to_serve, 0.5),
        serve_max,
    );
    for node in nodes {
        node.kill();
    }
}
