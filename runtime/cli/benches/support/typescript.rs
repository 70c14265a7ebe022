//! TypeScript bundles beside Rust ones (`typescript` group): bundle size,
//! compiling (with and without the artifact cache), instantiating, an
//! attempt of `hello-world-ts`, trigger-to-COMPLETED over HTTP, and what
//! resuming by replay costs after the 1st and the 20th wait.
//!
//! A TypeScript bundle is never snapshotted: a resume instantiates it and
//! runs the attempt again from the start, answering every host call from
//! the journal and delivering every earlier wake, until the guest asks for
//! a wait it has not had. The replay rows time exactly that, in the sandbox
//! alone, with the journal a live run of `countdown-ts` recorded.

use super::{Server, percentile, report, start_ctx};
use kiln_manifest::Machine;
use kiln_sandbox::wit::kiln::task::types::{Step, Wake, WakeValue};
use kiln_sandbox::{JournalSink, Limits, LoadedBundle, Sandbox, SandboxConfig, StepOutcome};
use kiln_types::{HostCall, JournalEntry};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keeps the host calls an attempt journals.
struct Recorder(Arc<Mutex<Vec<HostCall>>>);

impl JournalSink for Recorder {
    fn record(&mut self, call: HostCall) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(call);
    }
}

fn waiting_on(outcome: StepOutcome) -> u64 {
    match outcome {
        StepOutcome::Step(Step::Waiting(waits)) if !waits.is_empty() => waits[0].id,
        other => panic!("expected a new wait, got {other:?}"),
    }
}

fn timer(id: u64) -> Wake {
    Wake {
        id,
        value: WakeValue::Timer,
    }
}

/// Compiles `bytes` `n` times without the cache, then loads its cached
/// artifact 10 times; prints both.
fn compile(sandbox: &Sandbox, name: &str, bytes: &[u8], hash: &str, n: usize) {
    let mut uncached: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            sandbox.compile_uncached(bytes).expect("compiles");
            t.elapsed()
        })
        .collect();
    report(&format!("{name}: compile (no cache)"), &mut uncached);
    let mut cached: Vec<Duration> = (0..10)
        .map(|_| {
            let t = Instant::now();
            sandbox.load_cached_artifact(hash).expect("loads");
            t.elapsed()
        })
        .collect();
    report(&format!("{name}: load cached artifact"), &mut cached);
}

/// Instantiates `n` times, and runs `n` whole attempts of `task`.
async fn attempts(bundle: &LoadedBundle, name: &str, task: &str, n: usize) {
    let limits = Limits::for_machine(Machine::Small1x, None);
    let mut instantiate = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let attempt = bundle.instantiate(limits).await.expect("instantiates");
        instantiate.push(t.elapsed());
        drop(attempt);
    }
    report(&format!("{name}: instantiate"), &mut instantiate);
    let ctx = start_ctx(task, r#"{"name":"Ada"}"#);
    let mut whole = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut attempt = bundle.instantiate(limits).await.expect("instantiates");
        match attempt.start(&ctx).await {
            StepOutcome::Step(Step::Completed(_)) => {}
            other => panic!("{task} did not complete: {other:?}"),
        }
        drop(attempt);
        whole.push(t.elapsed());
    }
    report(
        &format!("{name}: an attempt, instantiate to drop"),
        &mut whole,
    );
}

/// Resuming `countdown-ts` by replay after its `waits`-th wait.
async fn replay(bundle: &LoadedBundle, steps: u64, resumes: &[u64], n: usize) {
    let limits = Limits::for_machine(Machine::Small1x, None);
    let payload = format!(r#"{{"steps":{steps},"wait_ms":1}}"#);
    let ctx = start_ctx("countdown-ts", &payload);

    // A live run, recording its host calls and how many it had made when
    // each step returned.
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut attempt = bundle.instantiate(limits).await.expect("instantiates");
    attempt.set_journal(Box::new(Recorder(calls.clone())));
    let mut made = Vec::new();
    let mut wait = waiting_on(attempt.start(&ctx).await);
    made.push(calls.lock().map(|c| c.len()).unwrap_or(0));
    for _ in 1..steps {
        wait = waiting_on(attempt.resume(&timer(wait)).await);
        made.push(calls.lock().map(|c| c.len()).unwrap_or(0));
    }
    drop(attempt);
    let calls = calls.lock().map(|c| c.clone()).unwrap_or_default();
    let reads: usize = calls
        .iter()
        .map(|c| match c {
            HostCall::Clocks { reads } => reads.len(),
            _ => 0,
        })
        .sum();
    println!(
        "countdown-ts: {} journal entries of host calls over {steps} waits ({reads} clock reads among them)",
        made[made.len() - 1],
    );

    for &after in resumes {
        let journal: Vec<JournalEntry> = calls[..made[after as usize]]
            .iter()
            .cloned()
            .map(JournalEntry::HostCall)
            .collect();
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let mut attempt = bundle.instantiate(limits).await.expect("instantiates");
            attempt.replay_mut().extend(journal.iter().cloned());
            let mut wait = waiting_on(attempt.start(&ctx).await);
            for _ in 0..after {
                wait = waiting_on(attempt.resume(&timer(wait)).await);
            }
            assert_eq!(wait, after + 1, "the replay reached the next new wait");
            assert!(
                attempt.replay_mut().is_empty(),
                "the whole journal replayed"
            );
            samples.push(t.elapsed());
            drop(attempt);
        }
        report(
            &format!("countdown-ts: resume by replay after wait {after}"),
            &mut samples,
        );
    }
}

/// `hello-world-ts` from trigger to COMPLETED over HTTP.
async fn over_http(runs: usize) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (server, _) = Server::start(dir.path(), &[]);
    server.deploy(kiln_fixtures::HELLO_WORLD_TS).await;
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs + 20 {
        let t = Instant::now();
        let id = server
            .trigger("hello-world-ts", serde_json::json!({"name": "Ada"}))
            .await;
        let run = server.get(&format!("/api/v3/runs/{id}?wait=10000")).await;
        assert_eq!(run["status"], "COMPLETED", "{run}");
        if i >= 20 {
            samples.push(t.elapsed());
        }
    }
    server.kill();
    report(
        "hello-world-ts: trigger -> COMPLETED over HTTP",
        &mut samples,
    );
    let p50 = percentile(&mut samples, 0.5);
    println!("hello-world-ts: p50 {p50:?} over {runs} runs");
}

/// The `typescript` group.
pub async fn typescript_bench() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let sandbox = Sandbox::new(SandboxConfig::new(dir.path().join("compiled"))).expect("a sandbox");
    let ts = kiln_fixtures::read(kiln_fixtures::HELLO_WORLD_TS);
    let rust = kiln_fixtures::read(kiln_fixtures::HELLO_WORLD);
    println!(
        "bundles: hello-world-ts {} KiB, hello-world (Rust) {} KiB",
        ts.len() / 1024,
        rust.len() / 1024
    );
    let t = Instant::now();
    let ts_bundle = sandbox.load(&ts).await.expect("hello-world-ts loads");
    println!(
        "hello-world-ts: first load (compile, link, describe) {:?}",
        t.elapsed()
    );
    let rust_bundle = sandbox.load(&rust).await.expect("hello-world loads");
    compile(&sandbox, "hello-world-ts", &ts, ts_bundle.content_hash(), 3);
    compile(
        &sandbox,
        "hello-world (Rust)",
        &rust,
        rust_bundle.content_hash(),
        10,
    );
    attempts(&ts_bundle, "hello-world-ts", "hello-world-ts", 200).await;
    attempts(&rust_bundle, "hello-world (Rust)", "hello-world", 2_000).await;

    let countdown = sandbox
        .load(&kiln_fixtures::read(kiln_fixtures::COUNTDOWN_TS))
        .await
        .expect("countdown-ts loads");
    replay(&countdown, 21, &[1, 20], 50).await;
    over_http(200).await;
}
