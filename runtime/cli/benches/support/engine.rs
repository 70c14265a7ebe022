//! Durable runs with the HTTP API taken out: the `runs` group's shape, but
//! triggered and awaited through [`kiln_server::LocalRuns`] in this process.
//! What is left is what a run costs the engine, the store (every write
//! durable before it is acknowledged, as always) and the sandbox.
//!
//! - sequential: 500 runs one after another, after 50 to warm up;
//! - throughput: 64 closed-loop clients (tasks on this process's runtime)
//!   for 20 s; runs completed a second, and this whole process's CPU time
//!   per run (from `/proc/self/stat`): server and clients together. Then
//!   where that phase's time went: the store's syncs a run, commits a sync
//!   and share of the committer's wall time (from `/metrics`), each kind of
//!   thread's CPU a run, each run's time under load (p50, p99, max), and
//!   the runs over 50 ms: whether they ended together (a stall of the
//!   whole process) or apart.

use super::{KEY, cpu_ms_of, percentile, thread_cpu_ms, thread_cpu_since};
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
        // `KILN_CONCURRENCY`: how many runs of the one queue execute at
        // once (default, as for `kiln serve`: 4 per core, 2 to 64).
        if let Ok(value) = std::env::var("KILN_CONCURRENCY") {
            let concurrency: usize = value
                .parse()
                .unwrap_or_else(|_| panic!("KILN_CONCURRENCY={value} is not a number"));
            config.concurrency = concurrency.max(1);
        }
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

        let metrics_before = store_metrics(&url).await;
        let threads_before = thread_cpu_ms();
        let cpu_before = cpu_ms_of("/proc/self/stat");
        let stop = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(AtomicUsize::new(0));
        // Microseconds the clients spent in their triggers.
        let spent_triggering = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let phase = started;
        let loops: Vec<_> = (0..clients)
            .map(|_| {
                let (runs, payload) = (runs.clone(), payload.clone());
                let (stop, completed) = (stop.clone(), completed.clone());
                let spent_triggering = spent_triggering.clone();
                tokio::spawn(async move {
                    // Each of this client's runs: when it started, how long
                    // it took and how long its trigger took.
                    let mut took = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let at = phase.elapsed();
                        let started = Instant::now();
                        let triggered = one_run(&runs, task, &payload).await;
                        completed.fetch_add(1, Ordering::Relaxed);
                        took.push(Took {
                            at,
                            took: started.elapsed(),
                            trigger: triggered,
                        });
                        spent_triggering
                            .fetch_add(triggered.as_micros() as usize, Ordering::Relaxed);
                    }
                    took
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let counted = completed.load(Ordering::Relaxed);
        let elapsed = started.elapsed();
        let mut took = Vec::new();
        for l in loops {
            took.extend(l.await.expect("a client"));
        }
        // Read after the clients stopped: it covers the runs in flight then
        // too, at most `clients` more than counted.
        let cpu_ms = cpu_ms_of("/proc/self/stat") - cpu_before;
        // Read with the process's CPU, before anything else runs.
        let threads_after = thread_cpu_ms();
        println!(
            "engine, {name}: sequential p50 {:.2?} p99 {:.2?} (the trigger alone: p50 {:.2?} p99 {:.2?}); {clients} clients for {seconds} s: {counted} runs, {:.0} runs/s, process CPU {:.3} ms a run",
            percentile(&mut sequential, 0.5),
            percentile(&mut sequential, 0.99),
            percentile(&mut triggers, 0.5),
            percentile(&mut triggers, 0.99),
            counted as f64 / elapsed.as_secs_f64(),
            cpu_ms as f64 / counted.max(1) as f64,
        );
        // Where the throughput phase's time went: the store's syncs (how
        // many a run, how many commits each made durable, how long one
        // took, and how much of
        // the committer's wall time they took) and each kind of thread's
        // CPU a run.
        let metrics = store_metrics(&url).await.since(&metrics_before);
        // Every run the clients finished, those in flight when they were
        // stopped too: the metrics and threads' CPU cover them all.
        let runs_done = took.len().max(1) as f64;
        println!(
            "engine, {name}: {:.2} syncs a run, {:.1} commits a sync, {:.0} µs a sync on average, syncs {:.0} % of the committer's wall time",
            metrics.syncs / runs_done,
            metrics.commits / metrics.syncs.max(1.0),
            1e6 * metrics.sync_seconds / metrics.syncs.max(1.0),
            100.0 * metrics.sync_seconds / elapsed.as_secs_f64(),
        );
        let mut times: Vec<Duration> = took.iter().map(|t| t.took).collect();
        println!(
            "engine, {name}: under load a run took p50 {:.2?} p99 {:.2?} max {:.2?}, its trigger {:.2} ms on average",
            percentile(&mut times, 0.5),
            percentile(&mut times, 0.99),
            times.iter().max().copied().unwrap_or_default(),
            spent_triggering.load(Ordering::Relaxed) as f64 / 1000.0 / took.len().max(1) as f64,
        );
        println!(
            "engine, {name}: {}",
            slow_runs(&took, Duration::from_millis(50))
        );
        let by_thread = thread_cpu_since(&threads_before, &threads_after);
        let per_thread: Vec<String> = by_thread
            .iter()
            .filter(|(_, ms)| **ms > 0)
            .map(|(thread, ms)| format!("{thread} {:.0} µs", *ms as f64 * 1000.0 / runs_done))
            .collect();
        // Threads that ended meanwhile (a blocking pool's, idle for 10 s)
        // took the rest of the process's CPU.
        let ended = cpu_ms.saturating_sub(by_thread.values().sum());
        println!(
            "engine, {name}: CPU a run by thread: {}, threads that ended {:.0} µs",
            per_thread.join(", "),
            ended as f64 * 1000.0 / runs_done
        );
        serving.abort();
    }
}

/// One run of the throughput phase, as its client saw it.
struct Took {
    /// When it was triggered, from the phase's start.
    at: Duration,
    /// From its trigger to the client seeing it `COMPLETED`.
    took: Duration,
    /// Its trigger alone.
    trigger: Duration,
}

/// The runs that took longer than `over`: how many, the longest with its
/// trigger, and the 100 ms windows of the phase in which they ended (runs
/// ending together point at a stall of the whole process rather than of
/// one run).
fn slow_runs(runs: &[Took], over: Duration) -> String {
    let slow: Vec<&Took> = runs.iter().filter(|t| t.took > over).collect();
    let Some(longest) = slow.iter().max_by_key(|t| t.took) else {
        return format!("no run took over {over:.0?}");
    };
    let mut windows: Vec<u128> = slow
        .iter()
        .map(|t| (t.at + t.took).as_millis() / 100)
        .collect();
    windows.sort_unstable();
    let mut counted: Vec<(u128, usize)> = Vec::new();
    for window in windows {
        match counted.last_mut() {
            Some((last, n)) if *last == window => *n += 1,
            _ => counted.push((window, 1)),
        }
    }
    counted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let ends: Vec<String> = counted
        .iter()
        .take(5)
        .map(|(window, n)| format!("{n} at {:.1} s", *window as f64 / 10.0))
        .collect();
    format!(
        "{} runs took over {over:.0?}; the longest {:.1?} (its trigger {:.2?}, started {:.1} s in); they ended in {} windows of 100 ms, the busiest: {}",
        slow.len(),
        longest.took,
        longest.trigger,
        longest.at.as_secs_f64(),
        counted.len(),
        ends.join(", "),
    )
}

/// The store's counters from the server's `/metrics`.
#[derive(Default)]
struct StoreMetrics {
    syncs: f64,
    commits: f64,
    sync_seconds: f64,
}

impl StoreMetrics {
    fn since(&self, before: &StoreMetrics) -> StoreMetrics {
        StoreMetrics {
            syncs: self.syncs - before.syncs,
            commits: self.commits - before.commits,
            sync_seconds: self.sync_seconds - before.sync_seconds,
        }
    }
}

async fn store_metrics(url: &str) -> StoreMetrics {
    let text = reqwest::Client::new()
        .get(format!("{url}/metrics"))
        .bearer_auth(KEY)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("reads /metrics")
        .text()
        .await
        .expect("reads /metrics");
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("/metrics has no {name}"))
    };
    StoreMetrics {
        syncs: value("kiln_store_syncs_total"),
        commits: value("kiln_store_group_commits_sum"),
        sync_seconds: value("kiln_store_sync_seconds_sum"),
    }
}
