//! Durable runs with the HTTP API taken out: the `runs` group's shape, but
//! triggered and awaited through [`kiln_server::LocalRuns`] in this process.
//! What is left is what a run costs the engine, the store (every write
//! durable before it is acknowledged, as always) and the sandbox.
//!
//! - sequential: 500 runs one after another, after 50 to warm up;
//! - throughput: 64 closed-loop clients (tasks on this process's runtime)
//!   for 20 s; runs completed a second, and this whole process's CPU time
//!   per run (from `/proc/self/stat`): server and clients together.

use super::{KEY, cpu_ms_of, percentile};
use kiln_server::{LocalRuns, Server, ServerConfig};
use kiln_types::RunStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One run from trigger to `COMPLETED`; returns how long the trigger took
/// (until the run was durable and queued).
async fn one_run(runs: &LocalRuns, task: &str, payload: &serde_json::Value) -> Duration {
    let started = Instant::now();
    let id = runs.trigger(task, payload).await.expect("triggers");
    let triggered = started.elapsed();
    match runs
        .wait_final(&id, Duration::from_secs(60))
        .await
        .expect("reads the run")
    {
        Some(RunStatus::Completed) => {}
        other => panic!("run {id} ended {other:?}"),
    }
    triggered
}

/// The `engine` bench group.
pub async fn engine_bench() {
    let shapes = [
        (
            "hello-world (1 log line)",
            kiln_fixtures::HELLO_WORLD,
            "hello-world",
            serde_json::json!({ "name": "Ada" }),
        ),
        (
            "chatty (3 journaled log lines)",
            kiln_fixtures::PROBE,
            "chatty",
            serde_json::json!({ "lines": 3, "bytes": 16 }),
        ),
    ];
    let clients = 64;
    let seconds = 20;
    for (name, bundle, task, payload) in shapes {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut config = ServerConfig::new(
            dir.path().to_path_buf(),
            "127.0.0.1:0".parse().expect("an address"),
        );
        config.secret_key = Some(KEY.into());
        let server = Server::open(config).await.expect("the server opens");
        let url = format!("http://{}", server.local_addr().expect("an address"));
        let runs = server
            .local_runs()
            .expect("a server on sled runs tasks itself");
        let serving = tokio::spawn(server.serve());
        // Deploying is set-up, so it goes through the API as a user's does.
        let deployed = reqwest::Client::new()
            .post(format!("{url}/api/v1/deployments"))
            .bearer_auth(KEY)
            .body(kiln_fixtures::read(bundle))
            .send()
            .await
            .expect("deploys");
        assert!(
            deployed.status().is_success(),
            "deploy: {}",
            deployed.status()
        );

        let mut sequential = Vec::with_capacity(500);
        let mut triggers = Vec::with_capacity(500);
        for i in 0..550 {
            let started = Instant::now();
            let triggered = one_run(&runs, task, &payload).await;
            if i >= 50 {
                sequential.push(started.elapsed());
                triggers.push(triggered);
            }
        }

        let cpu_before = cpu_ms_of("/proc/self/stat");
        let stop = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let loops: Vec<_> = (0..clients)
            .map(|_| {
                let (runs, payload) = (runs.clone(), payload.clone());
                let (stop, completed) = (stop.clone(), completed.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        one_run(&runs, task, &payload).await;
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let counted = completed.load(Ordering::Relaxed);
        let elapsed = started.elapsed();
        for l in loops {
            l.await.expect("a client");
        }
        // Read after the clients stopped: it covers the runs in flight then
        // too, at most `clients` more than counted.
        let cpu_ms = cpu_ms_of("/proc/self/stat") - cpu_before;
        println!(
            "engine, {name}: sequential p50 {:.2?} p99 {:.2?} (the trigger alone: p50 {:.2?} p99 {:.2?}); {clients} clients for {seconds} s: {counted} runs, {:.0} runs/s, process CPU {:.3} ms a run",
            percentile(&mut sequential, 0.5),
            percentile(&mut sequential, 0.99),
            percentile(&mut triggers, 0.5),
            percentile(&mut triggers, 0.99),
            counted as f64 / elapsed.as_secs_f64(),
            cpu_ms as f64 / counted.max(1) as f64,
        );
        serving.abort();
    }
}
