//! The sandbox against real bundles built from `examples/` and test guests.

use kiln_manifest::Machine;
use kiln_sandbox::wit::kiln::task::types::{StartContext, Step};
use kiln_sandbox::{BundleError, Limits, Sandbox, SandboxConfig, StepOutcome, TrapKind};
use std::time::Duration;

fn sandbox(dir: &tempfile::TempDir) -> Sandbox {
    Sandbox::new(SandboxConfig::new(dir.path().join("compiled"))).unwrap()
}

/// A bundle built by the fixtures, loaded into a sandbox on `dir`.
async fn load(dir: &tempfile::TempDir, bundle: &str) -> kiln_sandbox::LoadedBundle {
    sandbox(dir)
        .load(&kiln_fixtures::read(bundle))
        .await
        .unwrap()
}

fn ctx(task: &str, payload: &str) -> StartContext {
    StartContext {
        run_id: "run_test".into(),
        task_id: task.into(),
        attempt: 1,
        max_attempts: 1,
        environment: "dev".into(),
        version: "1".into(),
        machine: "small-1x".into(),
        tags: vec![],
        payload: payload.into(),
        metadata: "{}".into(),
        created_at_ms: 0,
    }
}

#[tokio::test]
async fn hello_world_completes_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = load(&dir, kiln_fixtures::HELLO_WORLD).await;
    assert_eq!(bundle.manifest().tasks[0].id, "hello-world");
    let mut attempt = bundle
        .instantiate(Limits::for_machine(Machine::Small1x, None))
        .await
        .unwrap();
    match attempt
        .start(&ctx("hello-world", r#"{"name":"Ada"}"#))
        .await
    {
        StepOutcome::Step(Step::Completed(out)) => assert_eq!(out, r#"{"message":"Hello, Ada!"}"#),
        other => panic!("unexpected {other:?}"),
    }
    // The heap fits in the memory the bundle starts with (`kiln build`
    // reserves room and the SDK's allocator starts there): no growth, so
    // the next instance in this pool slot needs no shrinking `mprotect`.
    assert_eq!(attempt.memory_grows(), 0);
    let logs = attempt.take_logs().lines;
    assert_eq!(logs[0].message, "greeting");
    assert_eq!(
        logs[0].fields,
        vec![("name".to_string(), "Ada".to_string())]
    );
    // The compiled artifact is cached by content hash.
    let cached = dir
        .path()
        .join("compiled")
        .join(format!("{}.cwasm", bundle.content_hash()));
    assert!(cached.exists());
}

#[tokio::test]
async fn the_schema_task_carries_its_schema() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = load(&dir, kiln_fixtures::CSV_EXPORT).await;
    let schema = bundle.manifest().tasks[0].payload_schema.clone().unwrap();
    assert_eq!(schema["properties"]["organizationId"]["format"], "uuid");
    assert_eq!(schema["properties"]["since"]["format"], "date");
}

#[tokio::test]
async fn malformed_bundles_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = sandbox(&dir);
    let err = sandbox.load(b"definitely not wasm").await.unwrap_err();
    assert!(matches!(err, BundleError::NotWasm(_)), "{err}");
    let core = wat::parse_str("(module)").unwrap();
    assert_eq!(
        sandbox.load(&core).await.unwrap_err(),
        BundleError::CoreModule
    );
    // WASI's io, clocks, random, cli and filesystem are provided; sockets,
    // HTTP and anything else outside Kiln's world are not.
    let sockets =
        wat::parse_str(r#"(component (import "wasi:sockets/tcp@0.2.0" (instance)))"#).unwrap();
    let err = sandbox.load(&sockets).await.unwrap_err();
    assert!(
        matches!(&err, BundleError::WasiImport(name, _) if name == "wasi:sockets/tcp@0.2.0"),
        "{err}"
    );
    assert!(err.to_string().contains("no sockets"), "{err}");
    let foreign =
        wat::parse_str(r#"(component (import "acme:clock/now@1.0.0" (instance)))"#).unwrap();
    let err = sandbox.load(&foreign).await.unwrap_err();
    assert_eq!(
        err,
        BundleError::ForeignImport("acme:clock/now@1.0.0".into())
    );
    let environment =
        wat::parse_str(r#"(component (import "wasi:cli/environment@0.2.0" (instance)))"#).unwrap();
    let err = sandbox.load(&environment).await.unwrap_err();
    assert_eq!(err, BundleError::MissingExport("describe".into()));
    let empty = wat::parse_str("(component)").unwrap();
    let err = sandbox.load(&empty).await.unwrap_err();
    assert_eq!(err, BundleError::MissingExport("describe".into()));
}

#[tokio::test]
async fn memory_past_the_cap_is_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = load(&dir, kiln_fixtures::LIMITS).await;
    let mut attempt = bundle
        .instantiate(Limits::for_machine(Machine::Micro, None))
        .await
        .unwrap();
    match attempt.start(&ctx("allocate", r#"{"mib": 400}"#)).await {
        StepOutcome::Trap(TrapKind::OutOfMemory { limit_mib, .. }) => assert_eq!(limit_mib, 256),
        other => panic!("unexpected {other:?}"),
    }
    // Within the cap the same task completes.
    let mut attempt = bundle
        .instantiate(Limits::for_machine(Machine::Micro, None))
        .await
        .unwrap();
    assert!(matches!(
        attempt.start(&ctx("allocate", r#"{"mib": 64}"#)).await,
        StepOutcome::Step(Step::Completed(_))
    ));
}

#[tokio::test]
async fn a_busy_loop_past_max_duration_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = load(&dir, kiln_fixtures::LIMITS).await;
    let limits = Limits::for_machine(Machine::Small2x, Some(Duration::from_millis(200)));
    let mut attempt = bundle.instantiate(limits).await.unwrap();
    let started = std::time::Instant::now();
    let outcome = attempt
        .start(&ctx("spin", r#"{"iterations": 100000000000}"#))
        .await;
    assert!(
        matches!(outcome, StepOutcome::Trap(TrapKind::TimedOut(_))),
        "{outcome:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(attempt.used() >= Duration::from_millis(200));
}

/// A guest on half a core that runs flat out pauses as long as it runs:
/// its execution time is at most half of the wall-clock time.
#[tokio::test]
async fn a_busy_guest_on_half_a_core_holds_its_share() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = load(&dir, kiln_fixtures::LIMITS).await;
    let limits = Limits::for_machine(Machine::Small1x, Some(Duration::from_millis(300)));
    let mut attempt = bundle.instantiate(limits).await.unwrap();
    let started = std::time::Instant::now();
    let outcome = attempt
        .start(&ctx("spin", r#"{"iterations": 100000000000}"#))
        .await;
    let elapsed = started.elapsed();
    assert!(
        matches!(outcome, StepOutcome::Trap(TrapKind::TimedOut(_))),
        "{outcome:?}"
    );
    let used = attempt.used();
    assert!(used >= Duration::from_millis(300), "{used:?}");
    // Every tick pauses for what the guest ran since the one before; only
    // the last tick's share and less than a millisecond carried go unpaid.
    let slack = Duration::from_millis(40);
    assert!(
        elapsed + slack >= used * 2,
        "ran {used:?} in {elapsed:?} of wall-clock time: too little paused"
    );
    assert!(
        elapsed <= used * 3,
        "ran {used:?} in {elapsed:?} of wall-clock time: paused far too long"
    );
}

#[tokio::test]
async fn panics_and_refused_imports_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = load(&dir, kiln_fixtures::PROBE).await;
    let limits = Limits::for_machine(Machine::Small1x, None);
    let mut attempt = bundle.instantiate(limits).await.unwrap();
    match attempt
        .start(&ctx("panic", r#"{"message":"kaboom"}"#))
        .await
    {
        StepOutcome::Trap(TrapKind::Panic(message)) => {
            assert!(message.contains("kaboom"), "{message}")
        }
        other => panic!("unexpected {other:?}"),
    }
    let mut attempt = bundle.instantiate(limits).await.unwrap();
    // Without a server behind it, the sandbox refuses tags as a value.
    match attempt.start(&ctx("refused-import", "null")).await {
        StepOutcome::Step(Step::Completed(out)) => {
            assert!(out.contains("Invalid") && out.contains("tags"), "{out}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn timer_wake(id: u64) -> kiln_sandbox::wit::kiln::task::types::Wake {
    kiln_sandbox::wit::kiln::task::types::Wake {
        id,
        value: kiln_sandbox::wit::kiln::task::types::WakeValue::Timer,
    }
}

fn waiting_on(outcome: StepOutcome) -> u64 {
    match outcome {
        StepOutcome::Step(Step::Waiting(waits)) => waits[0].id,
        other => panic!("expected the guest to wait, got {other:?}"),
    }
}

/// Resuming from a snapshot runs only what comes after the wait: the fuel a
/// restored instance burns is a sliver of the work done before the wait.
#[tokio::test]
async fn resuming_from_a_snapshot_does_not_redo_pre_wait_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SandboxConfig::new(dir.path().join("compiled"));
    config.fuel = true;
    let sandbox = Sandbox::new(config).unwrap();
    let bundle = sandbox
        .load(&kiln_fixtures::read(kiln_fixtures::PROBE))
        .await
        .unwrap();
    let limits = Limits::for_machine(Machine::Small2x, None);

    let mut first = bundle.instantiate(limits).await.unwrap();
    let wait = waiting_on(
        first
            .start(&ctx(
                "work-then-wait",
                r#"{"rounds": 2000000, "wait_ms": 10}"#,
            ))
            .await,
    );
    let image = first.capture().await.unwrap();
    let before_wait = first.fuel_used();
    drop(first);

    let mut second = bundle.instantiate(limits).await.unwrap();
    let fresh = second.fuel_used();
    second.restore(image).await.unwrap();
    let output = match second.resume(&timer_wake(wait)).await {
        StepOutcome::Step(Step::Completed(out)) => out,
        other => panic!("unexpected {other:?}"),
    };
    let after_restore = second.fuel_used() - fresh;

    // The same work run straight through gives the same value.
    let mut straight = bundle.instantiate(limits).await.unwrap();
    let wait = waiting_on(
        straight
            .start(&ctx(
                "work-then-wait",
                r#"{"rounds": 2000000, "wait_ms": 10}"#,
            ))
            .await,
    );
    let expected = match straight.resume(&timer_wake(wait)).await {
        StepOutcome::Step(Step::Completed(out)) => out,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(output, expected);
    assert!(
        after_restore * 50 < before_wait,
        "restore and resume burned {after_restore} fuel against {before_wait} before the wait"
    );
}

/// A guest holding 50 MiB of heap across a wait gets it back intact on a
/// fresh instance.
#[tokio::test]
async fn fifty_mib_of_heap_survive_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = load(&dir, kiln_fixtures::PROBE).await;
    let limits = Limits::for_machine(Machine::Medium1x, None);
    let mut first = bundle.instantiate(limits).await.unwrap();
    let wait = waiting_on(first.start(&ctx("hold-heap", r#"{"mib": 50}"#)).await);
    // Past the room the bundle starts with, the heap grows memory (and the
    // sandbox counts each growth).
    assert!(first.memory_grows() > 0);
    let image = first.capture().await.unwrap();
    assert!(image.len() >= 50 << 20, "image is {} bytes", image.len());
    drop(first);

    let mut second = bundle.instantiate(limits).await.unwrap();
    second.restore(image).await.unwrap();
    match second.resume(&timer_wake(wait)).await {
        StepOutcome::Step(Step::Completed(out)) => {
            assert_eq!(out, format!(r#"{{"bytes":{},"intact":true}}"#, 50 << 20))
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// On replay, host calls are answered from the journal; a call that differs
/// from the journal traps as a non-determinism error naming both.
#[tokio::test]
async fn replay_answers_from_the_journal_and_catches_a_different_call() {
    use kiln_types::{HostCall, JournalEntry};
    let dir = tempfile::tempdir().unwrap();
    let bundle = load(&dir, kiln_fixtures::PROBE).await;
    let limits = Limits::for_machine(Machine::Small1x, None);

    // `echo` reads the clock, then draws 8 random bytes.
    let mut attempt = bundle.instantiate(limits).await.unwrap();
    attempt.replay_mut().extend([
        JournalEntry::HostCall(HostCall::NowMs { result: 1234 }),
        JournalEntry::HostCall(HostCall::RandomBytes {
            len: 8,
            result: "0100000000000000".into(),
        }),
    ]);
    match attempt.start(&ctx("echo", "{}")).await {
        StepOutcome::Step(Step::Completed(out)) => {
            let out: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(out["nowMs"], 1234);
            assert_eq!(out["random"], "1");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        attempt.stats().random_live,
        0,
        "nothing was asked of the host"
    );

    let mut attempt = bundle.instantiate(limits).await.unwrap();
    attempt
        .replay_mut()
        .push_back(JournalEntry::HostCall(HostCall::RandomBytes {
            len: 8,
            result: "00".repeat(8),
        }));
    match attempt.start(&ctx("echo", "{}")).await {
        StepOutcome::Trap(TrapKind::NonDeterminism(message)) => {
            assert!(message.contains("now-ms()"), "{message}");
            assert!(message.contains("random-bytes(8)"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Keeps the host calls an attempt journals.
struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<kiln_types::HostCall>>>);

impl kiln_sandbox::JournalSink for Recorder {
    fn record(&mut self, call: kiln_types::HostCall) {
        self.0.lock().unwrap().push(call);
    }
}

#[tokio::test]
async fn a_wasi_guest_replays_its_clocks_and_draws_from_the_journal() {
    use kiln_types::{HostCall, JournalEntry};
    let dir = tempfile::tempdir().unwrap();
    let bundle = load(&dir, kiln_fixtures::COUNTDOWN_TS).await;
    assert!(bundle.resumes_by_replay(), "it imports WASI");
    let limits = Limits::for_machine(Machine::Small1x, None);
    let ctx = ctx("countdown-ts", r#"{"steps":2,"wait_ms":1}"#);

    // Live: every clock read and random draw is journaled.
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut live = bundle.instantiate(limits).await.unwrap();
    live.set_journal(Box::new(Recorder(calls.clone())));
    let first = waiting_on(live.start(&ctx).await);
    let second = waiting_on(live.resume(&timer_wake(first)).await);
    let output = match live.resume(&timer_wake(second)).await {
        StepOutcome::Step(Step::Completed(out)) => out,
        other => panic!("unexpected {other:?}"),
    };
    let lines: Vec<String> = live
        .take_logs()
        .lines
        .iter()
        .map(|l| format!("{} {:?}", l.message, l.fields))
        .collect();
    drop(live);
    let journal: Vec<HostCall> = calls.lock().unwrap().clone();
    assert!(
        journal.iter().any(|c| matches!(c, HostCall::Clocks { .. })),
        "{journal:?}"
    );
    assert!(
        journal
            .iter()
            .any(|c| matches!(c, HostCall::RandomBytes { .. })),
        "{journal:?}"
    );

    // Replayed from the journal in a fresh instance: the same output and
    // log lines, and nothing asked of the host again.
    let mut replay = bundle.instantiate(limits).await.unwrap();
    replay.set_journal(Box::new(Recorder(calls.clone())));
    replay
        .replay_mut()
        .extend(journal.iter().cloned().map(JournalEntry::HostCall));
    let first = waiting_on(replay.start(&ctx).await);
    let second = waiting_on(replay.resume(&timer_wake(first)).await);
    match replay.resume(&timer_wake(second)).await {
        StepOutcome::Step(Step::Completed(out)) => assert_eq!(out, output),
        other => panic!("unexpected {other:?}"),
    }
    let replayed: Vec<String> = replay
        .take_logs()
        .lines
        .iter()
        .map(|l| format!("{} {:?}", l.message, l.fields))
        .collect();
    assert_eq!(replayed, lines);
    assert!(replay.replay_mut().is_empty());
    assert_eq!(calls.lock().unwrap().len(), journal.len(), "no live call");
    assert_eq!(replay.stats().random_live, 0);

    // A journal whose random draw is gone is not this run's: the draw
    // finds a clock read, or a clock read finds the draw.
    let tampered: Vec<JournalEntry> = journal
        .iter()
        .filter(|c| !matches!(c, HostCall::RandomBytes { .. }))
        .cloned()
        .map(JournalEntry::HostCall)
        .collect();
    let mut diverged = bundle.instantiate(limits).await.unwrap();
    diverged.replay_mut().extend(tampered);
    let outcome = diverged.start(&ctx).await;
    assert!(
        matches!(outcome, StepOutcome::Trap(TrapKind::NonDeterminism(_))),
        "{outcome:?}"
    );
}
