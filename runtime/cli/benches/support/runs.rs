//! Durable runs end to end, in the shape Kiln's throughput goals are set
//! in: one run is `POST /api/v1/tasks/{id}/trigger` then
//! `GET /api/v3/runs/{id}?wait=…` until it is `COMPLETED`, against a
//! `kiln serve` with default settings.
//!
//! - sequential: 500 runs one after another, after 50 to warm up; p50 and
//!   p99 of each run;
//! - throughput: 64 closed-loop clients for 20 s; runs completed a second,
//!   and the server's CPU time per run (from `/proc`).
//!
//! Like the one Node process the goals were first measured with, every
//! client runs on one thread (a current-thread runtime with a keep-alive
//! connection pool), so the clients take at most one of the two cores.
//! Two tasks: `hello-world` (one log line) and the probe's `chatty` with
//! three log lines (three journaled host calls).

use super::{KEY, MASTER_KEY, Server, percentile};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A task to run and its payload.
struct Shape {
    name: &'static str,
    bundle: &'static str,
    task: &'static str,
    payload: serde_json::Value,
}

/// One run from trigger to `COMPLETED`.
async fn one_run(http: &reqwest::Client, url: &str, body: &str, task: &str) {
    let created: serde_json::Value = http
        .post(format!("{url}/api/v1/tasks/{task}/trigger"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("triggers")
        .json()
        .await
        .expect("json");
    let id = created["id"].as_str().expect("an id");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "run {id} did not complete in 60 s"
        );
        let run: serde_json::Value = http
            .get(format!("{url}/api/v3/runs/{id}?wait=10000"))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("answers")
            .json()
            .await
            .expect("json");
        match run["status"].as_str() {
            Some("COMPLETED") => return,
            Some(
                "FAILED" | "CRASHED" | "CANCELED" | "SYSTEM_FAILURE" | "EXPIRED" | "TIMED_OUT",
            )
            | None => panic!("run {id} ended {}", run["status"]),
            Some(_) => {}
        }
    }
}

/// What the clients measured.
struct Measured {
    sequential: Vec<Duration>,
    completed: usize,
    elapsed: Duration,
}

/// Runs the sequential part, then `clients` closed-loop clients for
/// `seconds`, all on the calling thread; `between` is called between the
/// two parts (to read the server's CPU time). With several `urls` (the
/// nodes of a cluster), sequential runs take them in turn and each client
/// keeps to one.
fn drive(
    urls: &[String],
    body: &str,
    task: &str,
    clients: usize,
    seconds: u64,
    between: impl FnOnce(),
) -> Measured {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(clients * 2)
            .build()
            .expect("a client");
        let mut sequential = Vec::with_capacity(500);
        for i in 0..550 {
            let started = Instant::now();
            one_run(&http, &urls[i % urls.len()], body, task).await;
            if i >= 50 {
                sequential.push(started.elapsed());
            }
        }
        between();
        let stop = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut loops = Vec::new();
        for c in 0..clients {
            let (http, url, body, task) = (
                http.clone(),
                urls[c % urls.len()].clone(),
                body.to_string(),
                task.to_string(),
            );
            let (stop, completed) = (stop.clone(), completed.clone());
            loops.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    one_run(&http, &url, &body, &task).await;
                    completed.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let counted = completed.load(Ordering::Relaxed);
        let elapsed = started.elapsed();
        for l in loops {
            l.await.expect("a client");
        }
        Measured {
            sequential,
            completed: counted,
            elapsed,
        }
    })
}

/// The CPU time (ms) of PostgreSQL's processes under the postmaster whose
/// data directory is `data`: the postmaster and its children (the store's
/// connections, the WAL writer, the checkpointer). Children that exited
/// (autovacuum workers) are not counted, so it is a little low.
pub fn postgres_cpu_ms(data: &std::path::Path) -> u64 {
    let Some(pid) = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|text| {
            text.lines()
                .next()
                .and_then(|l| l.trim().parse::<u32>().ok())
        })
    else {
        return 0;
    };
    let mut total = super::cpu_ms_of(&format!("/proc/{pid}/stat"));
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let stat = entry.path().join("stat");
        let Ok(text) = std::fs::read_to_string(&stat) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces.
        let ppid = text
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            total += super::cpu_ms_of(&stat.to_string_lossy());
        }
    }
    total
}

/// The `runs` and `postgres` bench groups: the runs of each shape against
/// a server with its store in sled, or in
/// the PostgreSQL server at `postgres` (a database made for each shape).
pub async fn runs_bench(postgres: Option<&str>, nodes: usize) {
    let shapes = [
        Shape {
            name: "hello-world (1 log line)",
            bundle: kiln_fixtures::HELLO_WORLD,
            task: "hello-world",
            payload: serde_json::json!({ "name": "Ada" }),
        },
        Shape {
            name: "chatty (3 journaled log lines)",
            bundle: kiln_fixtures::PROBE,
            task: "chatty",
            payload: serde_json::json!({ "lines": 3, "bytes": 16 }),
        },
    ];
    let clients = 64;
    let seconds = 20;
    for (n, shape) in shapes.into_iter().enumerate() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = postgres.map(|url| {
            let db = format!("bench_{n}");
            let status = std::process::Command::new("psql")
                .args(["-q", "-X", url, "-c"])
                .arg(format!("CREATE DATABASE {db}"))
                .status()
                .expect("psql");
            assert!(status.success(), "creating {db}");
            url.replacen("/postgres?", &format!("/{db}?"), 1)
        });
        let pg_data = postgres.map(|url| {
            std::path::PathBuf::from(url.rsplit_once("host=").expect("a socket dir").1).join("data")
        });
        let pg_cpu = || pg_data.as_deref().map_or(0, postgres_cpu_ms);
        let args: Vec<&str> = match &store {
            Some(url) => vec!["--store", url],
            None => Vec::new(),
        };
        // The nodes of a cluster share their keys; each has its own data
        // directory and compile cache, as on machines of their own.
        let dirs: Vec<tempfile::TempDir> = (1..nodes)
            .map(|_| tempfile::tempdir().expect("a temp dir"))
            .collect();
        let envs = [("KILN_MASTER_KEY", MASTER_KEY)];
        let (server, _) = Server::start_with_env(dir.path(), &args, &envs);
        let others: Vec<Server> = dirs
            .iter()
            .map(|d| Server::start_with_env(d.path(), &args, &envs).0)
            .collect();
        server.deploy(shape.bundle).await;
        let mut urls = vec![server.url.clone()];
        urls.extend(others.iter().map(|o| o.url.clone()));
        let others = Arc::new(others);
        let others_cpu = {
            let others = others.clone();
            move || others.iter().map(Server::cpu_ms).sum::<u64>()
        };
        let body = serde_json::json!({
            "payload": shape.payload.to_string(),
            "options": { "payloadType": "application/json" },
        })
        .to_string();
        let server = Arc::new(server);
        let cpu_at = Arc::new(std::sync::Mutex::new(0u64));
        let (s, at) = (server.clone(), cpu_at.clone());
        let others_at = others_cpu.clone();
        let task = shape.task;
        let pg_at = Arc::new(std::sync::Mutex::new(0u64));
        let pg_at_set = pg_at.clone();
        let pg_data_at = pg_data.clone();
        let measured = tokio::task::spawn_blocking(move || {
            drive(&urls, &body, task, clients, seconds, move || {
                *at.lock().expect("the lock") = s.cpu_ms() + others_at();
                *pg_at_set.lock().expect("the lock") =
                    pg_data_at.as_deref().map_or(0, postgres_cpu_ms);
            })
        })
        .await
        .expect("the clients");
        let cpu_ms = server.cpu_ms() + others_cpu() - *cpu_at.lock().expect("the lock");
        let db_cpu_ms = pg_cpu() - *pg_at.lock().expect("the lock");
        let mut sequential = measured.sequential;
        let runs_per_s = measured.completed as f64 / measured.elapsed.as_secs_f64();
        println!(
            "runs{}, {}: sequential p50 {:.2?} p99 {:.2?}; {clients} clients for {seconds} s: {} runs, {:.0} runs/s, server CPU {:.3} ms a run{}",
            match (postgres.is_some(), nodes) {
                (false, _) => String::new(),
                (true, 1) => " (store in PostgreSQL)".to_string(),
                (true, n) => format!(" (store in PostgreSQL, {n} nodes, runs spread over them)"),
            },
            shape.name,
            percentile(&mut sequential, 0.5),
            percentile(&mut sequential, 0.99),
            measured.completed,
            runs_per_s,
            // The CPU read after the clients stopped covers the runs in
            // flight then too: at most `clients` more than counted.
            cpu_ms as f64 / measured.completed.max(1) as f64,
            if postgres.is_some() {
                format!(
                    ", PostgreSQL CPU {:.3} ms a run",
                    db_cpu_ms as f64 / measured.completed.max(1) as f64
                )
            } else {
                String::new()
            },
        );
        if let Ok(server) = Arc::try_unwrap(server) {
            server.kill();
        }
        drop(others_cpu);
        if let Ok(others) = Arc::try_unwrap(others) {
            others.into_iter().for_each(Server::kill);
        }
    }
}
