//! Kiln's benchmark harness: `cargo bench -p kiln --bench kiln`.
//!
//! Prints medians (and p99 where it matters) of:
//! - compiling a bundle (no cache), and loading its cached artifact (what a
//!   restart pays);
//! - instantiating a bundle from its `InstancePre` with the pooling allocator;
//! - trigger-to-COMPLETED latency of `hello-world` over HTTP against a real
//!   `kiln serve` process on loopback (trigger, then a long-polling retrieve).
//!
//! Results and the machine they came from live in `docs/BENCHMARKS.md`.

use kiln_manifest::Machine;
use kiln_sandbox::{Limits, Sandbox, SandboxConfig};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "tr_dev_sk_benchKey00000000000000";

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
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

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("KILN_SECRET_KEY", KEY)
        .env("KILN_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("kiln serve starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let url = loop {
        let line = lines.next().expect("an address line").expect("readable");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
    };
    let http = reqwest::Client::new();
    let deployed = http
        .post(format!("{url}/api/v1/deployments"))
        .bearer_auth(KEY)
        .body(kiln_fixtures::read(kiln_fixtures::HELLO_WORLD))
        .send()
        .await
        .expect("deploys");
    assert!(deployed.status().is_success());
    let body = serde_json::json!({
        "payload": "{\"name\":\"Ada\"}",
        "options": {"payloadType": "application/json"}
    })
    .to_string();
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs + 50 {
        let t = Instant::now();
        let created: serde_json::Value = http
            .post(format!("{url}/api/v1/tasks/hello-world/trigger"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("triggers")
            .json()
            .await
            .expect("json");
        let id = created["id"].as_str().expect("an id");
        let run: serde_json::Value = http
            .get(format!("{url}/api/v3/runs/{id}?wait=10000"))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("retrieves")
            .json()
            .await
            .expect("json");
        assert_eq!(run["status"], "COMPLETED");
        // The first 50 warm the connection and caches.
        if i >= 50 {
            samples.push(t.elapsed());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    samples
}
