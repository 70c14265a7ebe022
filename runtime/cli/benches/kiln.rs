//! Kiln's benchmark harness: `cargo bench -p kiln --bench kiln`.
//!
//! Prints medians (and p99 where it matters) of:
//! - compiling a bundle (no cache), and loading its cached artifact (what a
//!   restart pays);
//! - instantiating a bundle from its `InstancePre` with the pooling allocator;
//! - trigger-to-COMPLETED latency of `hello-world` over HTTP against a real
//!   `kiln serve` process on loopback (trigger, then a long-polling retrieve);
//! - snapshot and restore of 1 MiB and 50 MiB of guest heap, and the bytes a
//!   second wait writes (a page delta);
//! - resume latency after a durable timer fires;
//! - durable no-op run throughput (group commit) with concurrent clients;
//! - runs end to end in the shape of Kiln's throughput goals: 500
//!   sequential runs (p50, p99), then 64 closed-loop clients on one thread
//!   for 20 s (runs a second, server CPU per run), for a one-log-line task
//!   and a three-log-line one; `postgres` runs the same with the store in
//!   a throwaway PostgreSQL server (`scripts/postgres`), and adds the
//!   database's CPU to the server's; `cluster` runs them spread over three
//!   nodes on one PostgreSQL (their guests too), and measures how long the
//!   cluster takes to serve again after its leader is killed or paused,
//!   and to start a guest again after the node running it is;
//! - the same runs with the HTTP API taken out (`engine`): triggered and
//!   awaited in-process, so what is left is the engine, the store and the
//!   sandbox;
//! - the sandbox alone (`sandbox`): a `hello-world` attempt from
//!   instantiate to drop, and its CPU time;
//! - the store alone: a durable commit's latency through the sled backend,
//!   and commits a second and CPU per commit with 64 writers, against the
//!   in-memory backend; a no-op run's writes with and without its journal
//!   entry deferred;
//! - a run's record encoded and decoded as JSON and as MessagePack, and its
//!   size in each (`records`);
//! - RSS with 10,000 runs waiting, and start-up time with them stored;
//! - 100,000 schedules: creating them over HTTP, RSS, the firing lag and
//!   CPU of a minute's occurrences, start-up, and the due-index scan a
//!   scheduler tick makes against a full scan;
//! - the run scheduler's cost per dequeue with 100,000 runs queued, and a
//!   light tenant's start latency behind a heavy tenant's 10,000 queued
//!   runs, with and without concurrency keys;
//! - durability: committing and reading large values through the sled
//!   backend (chunked so none lands in sled's unsynced blob files), a task
//!   logging 200,000 lines of 1 KiB, and parents woken by their children
//!   through the inbox;
//! - realtime: a run's status change to a subscriber, and the server's RSS
//!   and CPU with 1,000 idle subscribers;
//! - blocking: `GET /healthz` latency while the server snapshots a 50 MiB
//!   guest and while two guests spin, against an idle server;
//! - retention: what a retention pass reads in a store of 100,000 runs, and
//!   the store's size before and after 100,000 runs expire;
//! - secrets: sealing and opening snapshot layers (in `snapshot`), reading
//!   an environment variable and sealing it for the journal, and masking
//!   secrets from a log line;
//! - dashboard: each dashboard page's time to the last byte with 100,000
//!   runs stored;
//! - typescript: a TypeScript bundle beside a Rust one (size, compiling,
//!   instantiating, an attempt, trigger to COMPLETED over HTTP) and what
//!   resuming by replay costs after the 1st and the 20th wait.
//!
//! `cargo bench -p kiln --bench kiln -- NAME` runs only the groups whose
//! name contains NAME (`compile`, `instantiate`, `latency`, `snapshot`,
//! `resume`, `throughput`, `runs`, `postgres`, `cluster`, `engine`, `dashboard`, `sandbox`, `typescript`, `store`, `records`, `waiting`, `schedules`, `queues`, `durability`,
//! `realtime`, `secrets`, `blocking`, `retention`, `soak`; `soak` runs an
//! hour unless `KILN_SOAK_SECS` says otherwise, see `scripts/soak`).
//!
//! Results and the machine they came from live in `docs/BENCHMARKS.md`.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/dashboard.rs"]
mod dashboard;
#[path = "support/engine.rs"]
mod engine;
#[path = "../../../tests/support/postgres.rs"]
mod pg_server;
#[path = "support/queues.rs"]
mod queues;
#[path = "support/realtime.rs"]
mod realtime;
#[path = "support/records.rs"]
mod records;
#[path = "support/runs.rs"]
mod runs;
#[path = "support/secrets.rs"]
mod secrets;
#[path = "support/soak.rs"]
mod soak;
#[path = "support/store.rs"]
mod store;
#[path = "support/typescript.rs"]
mod typescript;

use kiln_manifest::Machine;

/// The allocator `kiln serve` uses, so that the groups running the server
/// in this process (`engine`, `store`, `sandbox`) measure what it does.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use kiln_sandbox::{Limits, Sandbox, SandboxConfig};
use std::time::{Duration, Instant};

const KEY: &str = "tr_dev_sk_benchKey00000000000000";

/// The master key of benchmarks whose servers must share one (a cluster).
const MASTER_KEY: &str = "9d1c3b5a7f2e4d6c8b0a1f3e5d7c9b2a4f6e8d0c1b3a5f7e9d2c4b6a8f0e1d3c";

/// The user and system CPU time, in milliseconds, of the process whose
/// `/proc/<pid>/stat` is at `path`.
fn cpu_ms_of(path: &str) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // USER_HZ is 100 on Linux.
    ticks * 10
}

/// Each of this process's live threads: its id, its name (`kiln-guest`,
/// `kiln-committer`, tokio's workers and blocking threads, sled's
/// `sled-io-N`, ...) and its
/// user and system CPU time in milliseconds.
fn thread_cpu_ms() -> std::collections::BTreeMap<String, (String, u64)> {
    let mut threads = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return threads;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let ms = cpu_ms_of(&dir.join("stat").to_string_lossy());
        let id = task.file_name().to_string_lossy().into_owned();
        threads.insert(id, (name.trim().to_string(), ms));
    }
    threads
}

/// The CPU each kind of thread (by name) used between two readings of
/// [`thread_cpu_ms`], in milliseconds; threads that ended between them
/// are not in it.
fn thread_cpu_since(
    before: &std::collections::BTreeMap<String, (String, u64)>,
    after: &std::collections::BTreeMap<String, (String, u64)>,
) -> std::collections::BTreeMap<String, u64> {
    let mut by_name = std::collections::BTreeMap::new();
    for (id, (name, ms)) in after {
        let earlier = before.get(id).map_or(0, |(_, ms)| *ms);
        *by_name.entry(name.clone()).or_insert(0) += ms.saturating_sub(earlier);
    }
    by_name
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

fn report(name: &str, samples: &mut [Duration]) {
    let p50 = percentile(samples, 0.5);
    let p99 = percentile(samples, 0.99);
    println!(
        "{name:<40} n={:<6} p50={:>10.3?} p99={:>10.3?}",
        samples.len(),
        p50,
        p99
    );
}

fn selected(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if selected("snapshot") {
        runtime.block_on(snapshot_bench());
    }
    if selected("resume") {
        runtime.block_on(resume_bench());
    }
    if selected("throughput") {
        runtime.block_on(throughput_bench(5_000, 64));
    }
    if selected("runs") {
        runtime.block_on(runs::runs_bench(None, 1));
    }
    if selected("postgres") {
        // The same runs with the store in a throwaway PostgreSQL server
        // (scripts/postgres) on a Unix socket.
        let pg = pg_server::Postgres::start();
        let url = pg.url().to_string();
        runtime.block_on(runs::runs_bench(Some(&url), 1));
    }
    if selected("cluster") {
        // Three nodes on one throwaway PostgreSQL server: the same runs
        // spread over them, then how long the cluster takes to serve again
        // after its leader is killed, and after it is paused.
        let pg = pg_server::Postgres::start();
        let url = pg.url().to_string();
        runtime.block_on(runs::runs_bench(Some(&url), 3));
        runtime.block_on(cluster::failover_bench(&url, cluster::Stop::Kill, 5));
        runtime.block_on(cluster::failover_bench(&url, cluster::Stop::Pause, 3));
        runtime.block_on(cluster::worker_loss_bench(&url, cluster::Stop::Kill, 5));
        runtime.block_on(cluster::worker_loss_bench(&url, cluster::Stop::Pause, 3));
    }
    if selected("dashboard") {
        runtime.block_on(dashboard::dashboard_bench(100_000));
    }
    if selected("engine") {
        runtime.block_on(engine::engine_bench());
    }
    if selected("sandbox") {
        runtime.block_on(sandbox_bench());
    }
    if selected("typescript") {
        runtime.block_on(typescript::typescript_bench());
    }
    if selected("store") {
        runtime.block_on(store::store_bench());
    }
    if selected("records") {
        records::records_bench();
    }
    if selected("waiting") {
        runtime.block_on(waiting_bench(10_000));
    }
    if selected("schedules") {
        runtime.block_on(schedules_bench(100_000));
    }
    if selected("durability") {
        runtime.block_on(durability_bench());
    }
    if selected("queues") {
        runtime.block_on(queues::queues_bench());
    }
    if selected("realtime") {
        runtime.block_on(realtime::realtime_bench());
    }
    if selected("secrets") {
        runtime.block_on(secrets::secrets_bench());
    }
    if selected("blocking") {
        runtime.block_on(blocking_bench());
    }
    // The soak runs only when asked for by name: it takes an hour.
    if std::env::args().skip(1).any(|a| a == "soak") {
        runtime.block_on(soak::soak_bench());
    }
    if selected("retention") {
        runtime.block_on(retention_pass_bench(100_000));
        runtime.block_on(retention_bench(100_000, 64));
    }
    if !(selected("compile") || selected("instantiate") || selected("latency")) {
        return;
    }
    let bundle = kiln_fixtures::read(kiln_fixtures::HELLO_WORLD);
    let dir = tempfile::tempdir().expect("a temp dir");
    println!(
        "hello-world bundle: {} KiB; {} cores",
        bundle.len() / 1024,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let sandbox = Sandbox::new(SandboxConfig::new(dir.path().join("compiled"))).expect("a sandbox");
    let mut compile: Vec<Duration> = (0..10)
        .map(|_| {
            let t = Instant::now();
            sandbox.compile_uncached(&bundle).expect("compiles");
            t.elapsed()
        })
        .collect();
    report("compile bundle (no cache)", &mut compile);

    let loaded = runtime.block_on(sandbox.load(&bundle)).expect("loads");
    let hash = loaded.content_hash().to_string();
    let mut cached: Vec<Duration> = (0..50)
        .map(|_| {
            let t = Instant::now();
            sandbox
                .load_cached_artifact(&hash)
                .expect("cached artifact loads");
            t.elapsed()
        })
        .collect();
    report("load cached artifact", &mut cached);

    let limits = Limits::for_machine(Machine::Small1x, None);
    let mut instantiate: Vec<Duration> = runtime.block_on(async {
        let mut samples = Vec::with_capacity(10_000);
        for _ in 0..10_000 {
            let t = Instant::now();
            let attempt = loaded.instantiate(limits).await.expect("instantiates");
            samples.push(t.elapsed());
            drop(attempt);
        }
        samples
    });
    report("instantiate (InstancePre, pooled)", &mut instantiate);

    let mut latency = runtime.block_on(trigger_to_completed(&dir.path().join("server"), 1_000));
    report("trigger -> COMPLETED over HTTP", &mut latency);
}

async fn trigger_to_completed(data_dir: &std::path::Path, runs: usize) -> Vec<Duration> {
    let (server, _) = Server::start(data_dir, &[]);
    server.deploy(kiln_fixtures::HELLO_WORLD).await;
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs + 50 {
        let t = Instant::now();
        let id = server
            .trigger("hello-world", serde_json::json!({"name": "Ada"}))
            .await;
        let run = server.get(&format!("/api/v3/runs/{id}?wait=10000")).await;
        assert_eq!(run["status"], "COMPLETED");
        // The first 50 warm the connection and caches.
        if i >= 50 {
            samples.push(t.elapsed());
        }
    }
    server.kill();
    samples
}

/// A `kiln serve` (the release binary, or the one `KILN_BENCH_BIN` names,
/// to compare two builds with one harness) on a temp data dir.
struct Server {
    child: std::process::Child,
    url: String,
    http: reqwest::Client,
}

impl Server {
    fn start(data_dir: &std::path::Path, args: &[&str]) -> (Server, Duration) {
        let started = Instant::now();
        let binary =
            std::env::var("KILN_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kiln").into());
        let (child, url) = kiln_fixtures::spawn_kiln(&binary, data_dir, KEY, args);
        let ready = started.elapsed();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("a client");
        (Server { child, url, http }, ready)
    }

    /// [`Server::start`] with extra environment variables.
    fn start_with_env(
        data_dir: &std::path::Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> (Server, Duration) {
        let started = Instant::now();
        let binary =
            std::env::var("KILN_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kiln").into());
        let (child, url) = kiln_fixtures::spawn_kiln_with_env(&binary, data_dir, KEY, args, envs);
        let ready = started.elapsed();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("a client");
        (Server { child, url, http }, ready)
    }

    async fn deploy(&self, bundle: &str) {
        let deployed = self
            .http
            .post(format!("{}/api/v1/deployments", self.url))
            .bearer_auth(KEY)
            .body(kiln_fixtures::read(bundle))
            .send()
            .await
            .expect("deploys");
        assert!(deployed.status().is_success());
    }

    async fn trigger(&self, task: &str, payload: serde_json::Value) -> String {
        self.trigger_with(task, payload, serde_json::json!({}))
            .await
    }

    /// Triggers with trigger options (`concurrencyKey`, `queue`...).
    async fn trigger_with(
        &self,
        task: &str,
        payload: serde_json::Value,
        mut options: serde_json::Value,
    ) -> String {
        options["payloadType"] = serde_json::json!("application/json");
        let body = serde_json::json!({ "payload": payload.to_string(), "options": options });
        let created = self
            .post(&format!("/api/v1/tasks/{task}/trigger"), &body)
            .await;
        created["id"].as_str().expect("an id").to_string()
    }

    /// POSTs a JSON body; panics unless the answer is a success.
    async fn post(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let answer = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("answers");
        assert!(
            answer.status().is_success(),
            "POST {path}: {}",
            answer.status()
        );
        answer.json().await.expect("json")
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("answers")
            .json()
            .await
            .expect("json")
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }

    /// User plus system CPU time the server has used, in ms.
    fn cpu_ms(&self) -> u64 {
        cpu_ms_of(&format!("/proc/{}/stat", self.child.id()))
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /healthz` latencies, one request at a time (1 ms apart), until `done`
/// is set. The client is one thread with a blocking keep-alive socket, so a
/// sample holds the server's time and one wake-up of the client, not the
/// hand-offs between an async client's threads.
fn probe_healthz(
    url: &str,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Duration>> {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://").to_string();
    std::thread::spawn(move || {
        let mut socket = std::net::TcpStream::connect(&addr).expect("connects");
        socket.set_nodelay(true).expect("nodelay");
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        let mut samples = Vec::new();
        let mut buf = vec![0u8; 4096];
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let t = Instant::now();
            socket.write_all(request.as_bytes()).expect("sends");
            let mut have = 0;
            loop {
                let n = socket.read(&mut buf[have..]).expect("reads");
                assert!(n > 0, "the server closed the connection");
                have += n;
                let text = String::from_utf8_lossy(&buf[..have]);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if have >= end + 4 + length {
                        break;
                    }
                }
            }
            samples.push(t.elapsed());
            std::thread::sleep(Duration::from_millis(1));
        }
        samples
    })
}

/// What a cheap route's latency does while a large guest is snapshotted:
/// 10 runs of `hold-heap` (50 MiB, then a wait past the warm threshold),
/// each probed from its trigger until it is `WAITING`.
async fn blocking_bench() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().expect("a temp dir");
    let (server, _) = Server::start(dir.path(), &[]);
    server.deploy(kiln_fixtures::PROBE).await;
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let probe = probe_healthz(&server.url, done.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    done.store(true, Ordering::SeqCst);
    let mut quiet = probe.join().expect("the probe ran");
    report("GET /healthz, idle server", &mut quiet);

    let mut during = Vec::new();
    let mut suspend = Vec::new();
    for _ in 0..10 {
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let probe = probe_healthz(&server.url, done.clone());
        let started = Instant::now();
        let run = async {
            let id = server
                .trigger(
                    "hold-heap",
                    serde_json::json!({"mib": 50, "wait_ms": 600_000}),
                )
                .await;
            loop {
                let status = server.get(&format!("/api/v3/runs/{id}")).await["status"].clone();
                if status == "WAITING" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            suspend.push(started.elapsed());
            done.store(true, Ordering::SeqCst);
        };
        run.await;
        during.extend(probe.join().expect("the probe ran"));
    }
    report("GET /healthz, while 50 MiB is snapshotted", &mut during);
    report("trigger to WAITING, 50 MiB hold-heap", &mut suspend);

    // Two guests that keep the CPU busy (one per core) for two seconds.
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let probe = probe_healthz(&server.url, done.clone());
    let mut runs = Vec::new();
    for _ in 0..2 {
        runs.push(
            server
                .trigger("draw-spin", serde_json::json!({"spin_ms": 2_000}))
                .await,
        );
    }
    for id in &runs {
        loop {
            let status = server.get(&format!("/api/v3/runs/{id}")).await["status"].clone();
            if status == "COMPLETED" {
                break;
            }
            let ended = status
                .as_str()
                .and_then(kiln_types::RunStatus::parse)
                .is_some_and(|s| s.is_final());
            assert!(!ended, "a spinning run ended {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    done.store(true, Ordering::SeqCst);
    let mut busy = probe.join().expect("the probe ran");
    report("GET /healthz, while two guests spin", &mut busy);
    server.kill();
}

/// The sandbox alone: a `hello-world` attempt's whole life (instantiate,
/// run to its end, drop), one after another, without the engine or the
/// store; the wall time of each and this process's CPU time per attempt.
async fn sandbox_bench() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let sandbox = Sandbox::new(SandboxConfig::new(dir.path().join("compiled"))).expect("a sandbox");
    let bundle = kiln_fixtures::read(kiln_fixtures::HELLO_WORLD);
    let loaded = sandbox.load(&bundle).await.expect("loads");
    let limits = Limits::for_machine(Machine::Small1x, None);
    let ctx = start_ctx("hello-world", r#"{"name":"Ada"}"#);
    let attempts = 5_000;
    let mut samples = Vec::with_capacity(attempts);
    let mut cpu_before = 0;
    for i in 0..attempts + 500 {
        if i == 500 {
            cpu_before = cpu_ms_of("/proc/self/stat");
        }
        let started = Instant::now();
        let mut attempt = loaded.instantiate(limits).await.expect("instantiates");
        match attempt.start(&ctx).await {
            kiln_sandbox::StepOutcome::Step(
                kiln_sandbox::wit::kiln::task::types::Step::Completed(_),
            ) => {}
            other => panic!("hello-world did not complete: {other:?}"),
        }
        drop(attempt);
        if i >= 500 {
            samples.push(started.elapsed());
        }
    }
    let cpu_ms = cpu_ms_of("/proc/self/stat") - cpu_before;
    report(
        "sandbox: a hello-world attempt, instantiate to drop",
        &mut samples,
    );
    println!(
        "sandbox: {:.1} µs of CPU an attempt",
        cpu_ms as f64 * 1000.0 / attempts as f64
    );
}

fn step_waits(outcome: kiln_sandbox::StepOutcome) -> u64 {
    use kiln_sandbox::wit::kiln::task::types::Step;
    match outcome {
        kiln_sandbox::StepOutcome::Step(Step::Waiting(w)) => w[0].id,
        other => panic!("expected a wait, got {other:?}"),
    }
}

fn start_ctx(task: &str, payload: &str) -> kiln_sandbox::wit::kiln::task::types::StartContext {
    kiln_sandbox::wit::kiln::task::types::StartContext {
        run_id: "run_bench".into(),
        task_id: task.into(),
        attempt: 1,
        max_attempts: 1,
        environment: "bench".into(),
        version: "1".into(),
        machine: "medium-1x".into(),
        tags: vec![],
        payload: payload.into(),
        metadata: "{}".into(),
        created_at_ms: 0,
    }
}

/// Snapshot (capture) and restore of a guest holding 1 MiB and 50 MiB, plus
/// what storing it costs; then the bytes of a second wait's page delta.
async fn snapshot_bench() {
    use kiln_store::SnapshotLayer;
    let dir = tempfile::tempdir().expect("a temp dir");
    let sandbox = Sandbox::new(SandboxConfig::new(dir.path().join("compiled"))).expect("a sandbox");
    let probe = sandbox
        .load(&kiln_fixtures::read(kiln_fixtures::PROBE))
        .await
        .expect("the probe loads");
    let limits = Limits::for_machine(Machine::Medium1x, None);
    for mib in [1usize, 50] {
        let runs = if mib == 1 { 200 } else { 20 };
        let (mut capture, mut restore, mut encode, mut decode) = (vec![], vec![], vec![], vec![]);
        let (mut seal, mut open) = (vec![], vec![]);
        let key = kiln_store::SealKey::from_bytes(&[7; 32]);
        let mut sizes = (0usize, 0usize);
        for _ in 0..runs {
            let mut attempt = probe.instantiate(limits).await.expect("instantiates");
            step_waits(
                attempt
                    .start(&start_ctx("hold-heap", &format!("{{\"mib\":{mib}}}")))
                    .await,
            );
            let t = Instant::now();
            let image = attempt.capture().await.expect("captures");
            capture.push(t.elapsed());
            drop(attempt);
            let t = Instant::now();
            let layer = SnapshotLayer::capture(&image, None, 1);
            let bytes = layer.encode();
            encode.push(t.elapsed());
            let t = Instant::now();
            let sealed = key.seal(b"snap/run/1/1", &bytes).expect("seals");
            seal.push(t.elapsed());
            let t = Instant::now();
            let opened = key.open(b"snap/run/1/1", &sealed).expect("opens");
            open.push(t.elapsed());
            assert_eq!(opened, bytes);
            let t = Instant::now();
            let back =
                kiln_store::snapshot::compose(&[&SnapshotLayer::decode(&bytes).expect("decodes")])
                    .expect("composes");
            decode.push(t.elapsed());
            sizes = (image.len(), bytes.len());
            kiln_sandbox::recycle_capture(image);
            let mut fresh = probe.instantiate(limits).await.expect("instantiates");
            let t = Instant::now();
            fresh.restore(back).await.expect("restores");
            restore.push(t.elapsed());
        }
        println!(
            "heap {mib} MiB: linear memory {} KiB, stored layer {} KiB (zstd-1)",
            sizes.0 / 1024,
            sizes.1 / 1024
        );
        report(&format!("snapshot capture, {mib} MiB heap"), &mut capture);
        report(&format!("snapshot restore, {mib} MiB heap"), &mut restore);
        report(&format!("layer hash+compress, {mib} MiB heap"), &mut encode);
        report(
            &format!("layer verify+decompress, {mib} MiB heap"),
            &mut decode,
        );
        report(
            &format!("layer seal (master key), {mib} MiB heap"),
            &mut seal,
        );
        report(
            &format!("layer open (master key), {mib} MiB heap"),
            &mut open,
        );
    }

    // A second wait that touched few pages: countdown's second step.
    let countdown = sandbox
        .load(&kiln_fixtures::read(kiln_fixtures::COUNTDOWN))
        .await
        .expect("countdown loads");
    let mut attempt = countdown.instantiate(limits).await.expect("instantiates");
    let wait = step_waits(
        attempt
            .start(&start_ctx("countdown", r#"{"steps":3,"wait_ms":1}"#))
            .await,
    );
    let first = attempt.capture().await.expect("captures");
    step_waits(
        attempt
            .resume(&kiln_sandbox::wit::kiln::task::types::Wake {
                id: wait,
                value: kiln_sandbox::wit::kiln::task::types::WakeValue::Timer,
            })
            .await,
    );
    let second = attempt.capture().await.expect("captures");
    let full = SnapshotLayer::capture(&first, None, 1);
    let delta = SnapshotLayer::capture(&second, Some(&full.hashes), 2);
    println!(
        "countdown: memory {} KiB ({} pages of 4 KiB); first wait: full layer {} pages, {} bytes; second wait: delta {} pages, {} bytes",
        second.len() / 1024,
        full.hashes.len(),
        full.pages.len(),
        full.encode().len(),
        delta.pages.len(),
        delta.encode().len()
    );
}

/// How long after a durable timer is due the run is running again: from the
/// wait's due time to the journaled wake (timer service), and from the wake
/// to the end of the attempt (claim, restore, replay, resume, finish).
async fn resume_bench() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (server, _) = Server::start(dir.path(), &["--warm-wait-ms", "0"]);
    server.deploy(kiln_fixtures::COUNTDOWN).await;
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(
            server
                .trigger(
                    "countdown",
                    serde_json::json!({"steps": 1, "wait_ms": 1000}),
                )
                .await,
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (mut fire, mut resume) = (Vec::new(), Vec::new());
    for id in &ids {
        let run = server.get(&format!("/api/v3/runs/{id}?wait=20000")).await;
        assert_eq!(run["status"], "COMPLETED");
        let journal = server.get(&format!("/api/v1/runs/{id}/journal")).await;
        let entries = journal["entries"].as_array().expect("entries");
        let ms = |e: &serde_json::Value| {
            time::OffsetDateTime::parse(
                e["at"].as_str().unwrap_or(""),
                &time::format_description::well_known::Rfc3339,
            )
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as u64)
            .unwrap_or(0)
        };
        let due = entries
            .iter()
            .find(|e| e["type"] == "WAITS")
            .map(|e| e["waits"][0]["dueAt"].as_u64().unwrap_or(0))
            .unwrap_or(0);
        let wake = entries
            .iter()
            .find(|e| e["type"] == "WAKE")
            .map(ms)
            .unwrap_or(0);
        let ended = entries
            .iter()
            .find(|e| e["type"] == "ATTEMPT_ENDED")
            .map(ms)
            .unwrap_or(0);
        fire.push(Duration::from_millis(wake.saturating_sub(due)));
        resume.push(Duration::from_millis(ended.saturating_sub(wake)));
    }
    report("timer due -> wake journaled (ms res.)", &mut fire);
    report("wake -> resumed attempt ended (ms res.)", &mut resume);
    server.kill();
}

/// Durable no-op runs per second: `clients` concurrent HTTP clients trigger
/// `hello-world` runs; the clock stops when the last one is COMPLETED.
/// Triggers `runs` `hello-world` runs from `clients` clients at once;
/// returns their ids.
async fn trigger_hello_worlds(
    server: &std::sync::Arc<Server>,
    runs: usize,
    clients: usize,
) -> Vec<String> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..runs / clients {
                ids.push(
                    server
                        .trigger("hello-world", serde_json::json!({"name": "Ada"}))
                        .await,
                );
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.expect("a client"));
    }
    ids
}

async fn throughput_bench(runs: usize, clients: usize) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (server, _) = Server::start(dir.path(), &[]);
    server.deploy(kiln_fixtures::HELLO_WORLD).await;
    let server = std::sync::Arc::new(server);
    let started = Instant::now();
    let ids = trigger_hello_worlds(&server, runs, clients).await;
    let triggered = started.elapsed();
    for id in &ids {
        let run = server.get(&format!("/api/v3/runs/{id}?wait=30000")).await;
        assert_eq!(run["status"], "COMPLETED");
    }
    let done = started.elapsed();
    println!(
        "durable no-op runs: {} runs, {clients} clients: triggered in {:.2?} ({:.0}/s), all COMPLETED after {:.2?} ({:.0} runs/s end to end)",
        ids.len(),
        triggered,
        ids.len() as f64 / triggered.as_secs_f64(),
        done,
        ids.len() as f64 / done.as_secs_f64()
    );
    if let Ok(server) = std::sync::Arc::try_unwrap(server) {
        server.kill();
    }
}

/// RSS of a server with `runs` runs suspended at a wait, against the same
/// server before them; then the start-up time with them all stored.
async fn waiting_bench(runs: usize) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (server, _) = Server::start(dir.path(), &["--warm-wait-ms", "0"]);
    server.deploy(kiln_fixtures::COUNTDOWN).await;
    // Warm the pool and caches with a few runs first.
    for _ in 0..50 {
        let id = server
            .trigger("countdown", serde_json::json!({"steps": 0, "wait_ms": 0}))
            .await;
        server.get(&format!("/api/v3/runs/{id}?wait=10000")).await;
    }
    let before = server.rss_kib();
    let server = std::sync::Arc::new(server);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..runs / 32 {
                ids.push(
                    server
                        .trigger(
                            "countdown",
                            serde_json::json!({"steps": 1, "wait_ms": 3_600_000}),
                        )
                        .await,
                );
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.expect("a client"));
    }
    for id in &ids {
        loop {
            let run = server.get(&format!("/api/v3/runs/{id}")).await;
            if run["status"] == "WAITING" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let after = server.rss_kib();
    println!(
        "{} runs WAITING: RSS {} MiB before, {} MiB after ({:+.1} KiB per waiting run; store on disk {} MiB)",
        ids.len(),
        before / 1024,
        after / 1024,
        (after as f64 - before as f64) / ids.len() as f64,
        dir_size(dir.path()) / (1 << 20)
    );
    if let Ok(server) = std::sync::Arc::try_unwrap(server) {
        server.kill();
    }
    let mut startup = Vec::new();
    for _ in 0..5 {
        let (server, ready) = Server::start(dir.path(), &["--warm-wait-ms", "0"]);
        startup.push(ready);
        server.kill();
    }
    report(
        &format!("start-up with {} runs waiting", ids.len()),
        &mut startup,
    );
}

/// The time zones the schedule benchmark spreads its schedules over.
const ZONES: [&str; 6] = [
    "UTC",
    "America/New_York",
    "Europe/Paris",
    "Asia/Tokyo",
    "Australia/Sydney",
    "America/Los_Angeles",
];

async fn schedules_bench(count: usize) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (server, _) = Server::start(dir.path(), &[]);
    server.deploy(kiln_fixtures::DIGEST).await;
    let before = server.rss_kib();
    let server = std::sync::Arc::new(server);
    let clients = 64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            for i in (c..count).step_by(clients) {
                // One schedule per minute of the day, so about count / 1440
                // fall due each minute.
                let body = serde_json::json!({
                    "task": "tenant-digest",
                    "cron": format!("{} {} * * *", i % 60, (i / 60) % 24),
                    "timezone": ZONES[i % ZONES.len()],
                    "externalId": format!("tenant-{i}"),
                    "deduplicationKey": format!("digest:tenant-{i}"),
                });
                let t = Instant::now();
                let response = server
                    .http
                    .post(format!("{}/api/v1/schedules", server.url))
                    .bearer_auth(KEY)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .expect("creates");
                assert!(response.status().is_success(), "{}", response.status());
                samples.push(t.elapsed());
            }
            samples
        }));
    }
    let mut create = Vec::new();
    for t in tasks {
        create.extend(t.await.expect("a client"));
    }
    let elapsed = started.elapsed();
    report("create schedule over HTTP (64 clients)", &mut create);
    let after = server.rss_kib();
    println!(
        "{count} schedules created in {:.1} s ({:.0}/s): RSS {} MiB before, {} MiB after ({:+.2} KiB per schedule; store on disk {} MiB)",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        before / 1024,
        after / 1024,
        (after as f64 - before as f64) / count as f64,
        dir_size(dir.path()) / (1 << 20)
    );

    // One real minute: the occurrences due in it, how late their runs were
    // created, and the server's CPU time over the minute.
    let now_ms = kiln_types::Timestamp::now().as_millis();
    let boundary = (now_ms / 60_000 + 1) * 60_000;
    tokio::time::sleep(Duration::from_millis(boundary - now_ms)).await;
    let cpu_before = server.cpu_ms();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let cpu_minute = server.cpu_ms() - cpu_before;
    // The runs created in the 30 s after the boundary (the next minute's
    // occurrences fire as the minute ends, and are left out).
    let list = server
        .get(&format!(
            "/api/v1/runs?filter%5BtaskIdentifier%5D=tenant-digest&page%5Bsize%5D=100&filter%5BcreatedAt%5D%5Bfrom%5D={boundary}&filter%5BcreatedAt%5D%5Bto%5D={}",
            boundary + 30_000
        ))
        .await;
    let mut lag = Vec::new();
    for item in list["data"].as_array().into_iter().flatten() {
        let run = server
            .get(&format!(
                "/api/v3/runs/{}",
                item["id"].as_str().unwrap_or("")
            ))
            .await;
        let created = iso_ms(&run["createdAt"]);
        let due = iso_ms(&run["payload"]["timestamp"]);
        if due == boundary {
            lag.push(Duration::from_millis(created.saturating_sub(due)));
        }
    }
    report(
        &format!("occurrence -> run created ({} due)", lag.len()),
        &mut lag,
    );
    println!(
        "server CPU over that minute with {count} schedules: {cpu_minute} ms (firing {} runs)",
        lag.len()
    );
    if let Ok(server) = std::sync::Arc::try_unwrap(server) {
        server.kill();
    }

    let mut startup = Vec::new();
    let mut idle_rss = 0;
    for _ in 0..3 {
        let (server, ready) = Server::start(dir.path(), &[]);
        startup.push(ready);
        tokio::time::sleep(Duration::from_millis(500)).await;
        idle_rss = server.rss_kib();
        server.kill();
    }
    report(&format!("start-up with {count} schedules"), &mut startup);
    println!(
        "RSS after a restart with {count} schedules: {} MiB",
        idle_rss / 1024
    );

    // What a scheduler tick reads, straight from the store: the due range
    // (nothing due, and a minute's worth due) against reading every schedule.
    let backend = kiln_store::SledBackend::open(&dir.path().join("store")).expect("opens");
    let store = kiln_store::Store::new(std::sync::Arc::new(backend));
    let next = store
        .next_schedule_due()
        .expect("reads")
        .expect("a schedule is due some time");
    let mut nothing_due: Vec<Duration> = (0..1_000)
        .map(|_| {
            let t = Instant::now();
            let due = store.due_schedules(kiln_types::Timestamp(next.as_millis() - 1), 512);
            assert!(due.expect("scans").is_empty());
            store.next_schedule_due().expect("reads");
            t.elapsed()
        })
        .collect();
    report("tick: due scan + next due, none due", &mut nothing_due);
    let minute = kiln_types::Timestamp(next.as_millis() + 60_000);
    let mut minute_due: Vec<Duration> = (0..1_000)
        .map(|_| {
            let t = Instant::now();
            store.due_schedules(minute, 512).expect("scans");
            t.elapsed()
        })
        .collect();
    let in_minute = store.due_schedules(minute, 512).expect("scans").len();
    report(
        &format!("tick: due scan, {in_minute} due in a minute"),
        &mut minute_due,
    );
    let mut full: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            // The bundle's declarative schedule is there too.
            assert_eq!(store.schedules().expect("reads").len(), count + 1);
            t.elapsed()
        })
        .collect();
    report(&format!("reading all {count} schedules"), &mut full);
}

fn iso_ms(value: &serde_json::Value) -> u64 {
    value
        .as_str()
        .and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as u64)
        .unwrap_or(0)
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The store's size on disk with `runs` finished runs, and after a
/// retention of one second deleted them (on the running server, and after
/// a restart).
async fn retention_bench(runs: usize, clients: usize) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store_dir = dir.path().join("store");
    let (server, _) = Server::start(dir.path(), &["--retention", "forever"]);
    server.deploy(kiln_fixtures::HELLO_WORLD).await;
    let empty = dir_size(&store_dir);
    let server = std::sync::Arc::new(server);
    let ids = trigger_hello_worlds(&server, runs, clients).await;
    for id in &ids {
        let run = server.get(&format!("/api/v3/runs/{id}?wait=30000")).await;
        assert_eq!(run["status"], "COMPLETED");
    }
    let full = dir_size(&store_dir);
    if let Ok(server) = std::sync::Arc::try_unwrap(server) {
        server.kill();
    }

    // What the running server reads, after a wave of deletions, to tell
    // whether the store's file is mostly free space (here: it is not).
    let backend = kiln_store::SledBackend::open(&store_dir).expect("opens");
    let mut checks = Vec::new();
    for _ in 0..5 {
        use kiln_store::Backend;
        let started = Instant::now();
        let suggested = backend.suggest_compaction(kiln_store::COMPACT_FROM, usize::MAX);
        assert_eq!(suggested.expect("reads"), Some(false));
        checks.push(started.elapsed());
    }
    drop(backend);
    report(
        &format!("retention: is the store of {} runs sparse", ids.len()),
        &mut checks,
    );
    let (server, full_ready) = Server::start(dir.path(), &["--retention", "1s"]);
    let started = Instant::now();
    // Until no run is left (the sweeper deletes in the order runs finished).
    loop {
        let left = server.get("/api/v1/runs?page[size]=1").await;
        if left["data"].as_array().is_some_and(|runs| runs.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let swept = started.elapsed();
    let live = dir_size(&store_dir);
    let settled = settle(&store_dir).await;
    server.kill();
    let (server, restart_ready) = Server::start(dir.path(), &["--retention", "1s"]);
    let restarted = dir_size(&store_dir);
    let restarted_settled = settle(&store_dir).await;
    server.kill();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "retention: store {:.1} MiB empty, {:.1} MiB with {} finished runs; {:.1} MiB once a 1s retention deleted them ({:.1?}), {:.1} MiB once sled settled; {:.1} MiB after a restart, {:.1} MiB once settled",
        mib(empty),
        mib(full),
        ids.len(),
        mib(live),
        swept,
        mib(settled),
        mib(restarted),
        mib(restarted_settled),
    );
    println!(
        "retention: start-up with the {} runs stored {full_ready:.1?}, after they were deleted {restart_ready:.1?} (the store compacted)",
        ids.len()
    );
}

/// The store directory's size once sled has stopped giving space back: no
/// smaller for 15 s (at most two minutes). sled rewrites its segments in
/// the background, so what a server holds right after a deletion is not
/// what it settles at.
async fn settle(store_dir: &std::path::Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut smallest = dir_size(store_dir);
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_secs(15) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = dir_size(store_dir);
        if now < smallest {
            smallest = now;
            since = Instant::now();
        }
    }
    smallest
}

/// What a retention pass reads in a store of `runs` finished runs none of
/// which has expired yet: the `finished/` and `open/` indexes, against
/// decoding every run (what a pass did before the indexes).
async fn retention_pass_bench(runs: usize) {
    use kiln_store::{Batch, SledBackend, Store};
    use kiln_types::{DeploymentId, Run, RunId, RunStatus, Timestamp};
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = Store::new(std::sync::Arc::new(
        SledBackend::open(dir.path()).expect("a store"),
    ));
    let now = Timestamp::now();
    for chunk in 0..runs.div_ceil(1_000) {
        let mut batch = Batch::default();
        for i in 0..1_000.min(runs - chunk * 1_000) {
            let mut run = Run::queued(
                RunId::generate(now.0 + (chunk * 1_000 + i) as u64),
                "hello-world",
                DeploymentId::generate(1),
                "20261202.1",
                "{}",
                now,
            );
            run.status = RunStatus::Completed;
            run.finished_at = Some(now);
            batch.put_new_run(&run);
        }
        store.commit(batch).await.expect("a commit");
    }
    store.index_runs().await.expect("indexed");
    let cutoff = Timestamp(now.0 - 1);
    let (mut indexed, mut scanned) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let started = Instant::now();
        let mut after = None;
        loop {
            let page = store
                .expired_runs(after.as_deref(), 500, cutoff)
                .expect("a page");
            assert!(page.expired.is_empty());
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        // Runs with no `finished/` entry are read from the runs' own
        // keyspace, up to those made before the cutoff: none here.
        let unindexed = store.expired_unindexed(None, 500, cutoff).expect("a page");
        assert!(unindexed.expired.is_empty() && unindexed.last.is_none());
        store.open_versions().expect("open versions");
        indexed.push(started.elapsed());
        let started = Instant::now();
        let all = store.runs().expect("every run");
        assert_eq!(all.len(), runs);
        scanned.push(started.elapsed());
    }
    report(
        &format!("retention pass, {runs} unexpired runs, indexes"),
        &mut indexed,
    );
    report(
        &format!("retention pass, {runs} unexpired runs, every run decoded"),
        &mut scanned,
    );
}

/// What durability costs: large values through the sled backend, a log
/// flood, and parents woken through the inbox.
async fn durability_bench() {
    use kiln_store::{Backend, Op, SledBackend};
    let dir = tempfile::tempdir().expect("a temp dir");
    let backend = SledBackend::open(dir.path()).expect("a store");
    for (label, len) in [("64 KiB", 64 << 10), ("1 MiB", 1 << 20), ("8 MiB", 8 << 20)] {
        let value: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut commits = Vec::new();
        let mut reads = Vec::new();
        for i in 0..20 {
            let key = format!("snap/bench/{i:04}").into_bytes();
            let started = Instant::now();
            backend
                .commit(vec![Op::Put(key.clone(), value.clone())])
                .await
                .expect("a commit");
            commits.push(started.elapsed());
            let started = Instant::now();
            let read = backend.get(&key).expect("a read");
            reads.push(started.elapsed());
            assert_eq!(read.map(|v| v.len()), Some(len));
        }
        report(&format!("durable commit of a {label} value"), &mut commits);
        report(&format!("read of a {label} value"), &mut reads);
    }
    let blobs = std::fs::read_dir(dir.path().join("blobs"))
        .map(|d| d.count())
        .unwrap_or(0);
    println!("sled blob files after those commits: {blobs}");
    drop(backend);

    let dir = tempfile::tempdir().expect("a temp dir");
    let (server, _) = Server::start(dir.path(), &[]);
    server.deploy(kiln_fixtures::PROBE).await;
    let started = Instant::now();
    let id = server
        .trigger(
            "chatty",
            serde_json::json!({ "lines": 200_000, "bytes": 1024 }),
        )
        .await;
    let run = server.get(&format!("/api/v3/runs/{id}?wait=600000")).await;
    assert_eq!(run["status"], "COMPLETED");
    println!(
        "200,000 log lines of 1 KiB: COMPLETED after {:.2?}, {} lines kept, {} dropped, data dir {:.1} MiB",
        started.elapsed(),
        run["attempts"][0]["logs"].as_array().map_or(0, Vec::len),
        run["attempts"][0]["logsDropped"],
        dir_size(dir.path()) as f64 / (1 << 20) as f64
    );

    // Parents that each wait on one child: the child's end and the parent's
    // inbox entry are one commit, the delivery another.
    let mut samples = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        let id = server
            .trigger(
                "parent",
                serde_json::json!({ "mode": "each", "children": 1 }),
            )
            .await;
        let run = server.get(&format!("/api/v3/runs/{id}?wait=30000")).await;
        assert_eq!(run["status"], "COMPLETED");
        samples.push(started.elapsed());
    }
    report("parent + one child, trigger → COMPLETED", &mut samples);
    server.kill();
}
