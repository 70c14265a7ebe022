//! A run's record as the store writes it at every change of the run:
//! encoding and decoding one, as JSON and as MessagePack with named fields
//! (what Kiln stored before) and with numbered fields (what it stores
//! now), and its size in each. The record is a finished `hello-world` run's, as the `runs` group
//! makes them: a payload, an output, one attempt with a log line.

use kiln_manifest::Machine;
use kiln_types::{
    Attempt, AttemptOutcome, DeploymentId, LogLine, Run, RunId, RunStatus, Timestamp,
};
use std::time::{Duration, Instant};

/// A finished `hello-world` run.
fn finished_run() -> Run {
    let now = Timestamp(1_764_806_400_000);
    let mut run = Run::queued(
        RunId::generate(1),
        "hello-world",
        DeploymentId::generate(1),
        "20261204.1",
        r#"{"name":"Ada"}"#,
        now,
    );
    run.status = RunStatus::Completed;
    run.output = Some(r#"{"greeting":"Hello, Ada!"}"#.into());
    run.started_at = Some(Timestamp(now.0 + 1));
    run.finished_at = Some(Timestamp(now.0 + 2));
    run.updated_at = Timestamp(now.0 + 2);
    let mut attempt = Attempt::started(1, Machine::Small1x, Timestamp(now.0 + 1));
    attempt.finished_at = Some(Timestamp(now.0 + 2));
    attempt.outcome = Some(AttemptOutcome::Succeeded);
    attempt.logs = vec![LogLine {
        at: Timestamp(now.0 + 1),
        level: "info".into(),
        message: "Hello, Ada!".into(),
        fields: Vec::new(),
    }];
    run.attempts = vec![attempt];
    run
}

/// The median over 7 rounds of `n` calls of `f`, per call.
fn per_call(n: u32, mut f: impl FnMut()) -> Duration {
    let mut rounds: Vec<Duration> = (0..7)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..n {
                f();
            }
            started.elapsed() / n
        })
        .collect();
    rounds.sort();
    rounds[3]
}

/// The `records` bench group.
pub fn records_bench() {
    let run = finished_run();
    let json = serde_json::to_vec(&run).expect("JSON");
    let packed = rmp_serde::to_vec_named(&run).expect("MessagePack");
    assert_eq!(
        rmp_serde::from_slice::<Run>(&packed).expect("reads back"),
        run
    );
    let n = 100_000;
    let json_encode = per_call(n, || {
        std::hint::black_box(serde_json::to_vec(std::hint::black_box(&run)).ok());
    });
    let json_decode = per_call(n, || {
        std::hint::black_box(serde_json::from_slice::<Run>(std::hint::black_box(&json)).ok());
    });
    let packed_encode = per_call(n, || {
        std::hint::black_box(rmp_serde::to_vec_named(std::hint::black_box(&run)).ok());
    });
    // As the store encodes: into a buffer sized for a whole record.
    let packed_presized = per_call(n, || {
        let mut buffer = Vec::with_capacity(1024);
        std::hint::black_box(
            rmp_serde::encode::write_named(&mut buffer, std::hint::black_box(&run)).ok(),
        );
        std::hint::black_box(buffer);
    });
    let packed_decode = per_call(n, || {
        std::hint::black_box(rmp_serde::from_slice::<Run>(std::hint::black_box(&packed)).ok());
    });
    // As the store encodes now: fields numbered, not named.
    let numbered = kiln_store::run_record(&run).expect("encodes");
    assert_eq!(
        rmp_serde::from_slice::<Run>(&numbered).expect("reads back"),
        run
    );
    let numbered_encode = per_call(n, || {
        std::hint::black_box(kiln_store::run_record(std::hint::black_box(&run)).ok());
    });
    let numbered_decode = per_call(n, || {
        std::hint::black_box(rmp_serde::from_slice::<Run>(std::hint::black_box(&numbered)).ok());
    });
    // A record's status alone, the rest walked over, with named fields
    // (`Store::run_status` stops at the status field instead, named or
    // numbered).
    #[derive(serde::Deserialize)]
    struct Status {
        status: RunStatus,
    }
    let status_decode = per_call(n, || {
        std::hint::black_box(
            rmp_serde::from_slice::<Status>(std::hint::black_box(&packed))
                .ok()
                .map(|s| s.status),
        );
    });
    println!(
        "records, a finished run: JSON {} bytes, encode {json_encode:.2?}, decode {json_decode:.2?}; MessagePack with named fields {} bytes, encode {packed_encode:.2?} (into a buffer sized first {packed_presized:.2?}), decode {packed_decode:.2?}, its status alone {status_decode:.2?}; with numbered fields (as stored) {} bytes, encode {numbered_encode:.2?}, decode {numbered_decode:.2?}",
        json.len(),
        packed.len(),
        numbered.len(),
    );
}
