//! Hostile guests end with the right status while the server keeps serving.

use crate::harness::{Kiln, data_dir};
use serde_json::json;

#[tokio::test]
async fn memory_past_the_cap_crashes_the_run_not_the_server() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::LIMITS).await;
    let id = kiln.trigger_ok("allocate", json!({"mib": 1024})).await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "CRASHED", "{run}");
    assert_eq!(run["error"]["name"], "OutOfMemory");
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("out of memory"),
        "{run}"
    );

    // A run within the cap still completes on the same server.
    let id = kiln.trigger_ok("allocate", json!({"mib": 16})).await;
    assert_eq!(kiln.finished(&id).await["status"], "COMPLETED");
}

#[tokio::test]
async fn out_of_memory_retries_on_the_larger_machine_the_policy_names() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::LIMITS).await;
    // 400 MiB: over micro's 256 MiB, within small-2x's 1 GiB.
    let id = kiln
        .trigger_ok("allocate-or-grow", json!({"mib": 400}))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["attemptCount"], 2);
    assert_eq!(run["attempts"][0]["machine"], "micro");
    assert_eq!(run["attempts"][0]["outcome"], "CRASHED");
    assert_eq!(run["attempts"][1]["machine"], "small-2x");
    assert_eq!(run["machine"], "small-2x");
    // Too much for the larger machine too: the run ends CRASHED.
    let id = kiln
        .trigger_ok("allocate-or-grow", json!({"mib": 1500}))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "CRASHED", "{run}");
    assert_eq!(run["attemptCount"], 2);
}

#[tokio::test]
async fn a_busy_loop_past_max_duration_times_out() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::LIMITS).await;
    let started = std::time::Instant::now();
    let id = kiln
        .trigger_ok("spin", json!({"iterations": 1_000_000_000_000u64}))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "TIMED_OUT", "{run}");
    assert_eq!(run["isCompleted"], true);
    assert_eq!(run["isFailed"], true);
    assert!(run["durationMs"].as_u64().unwrap() >= 1_000, "{run}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));

    // maxDuration from the trigger overrides the task's.
    let (status, created) = kiln
        .trigger(
            "spin",
            json!({"iterations": 1000}),
            json!({"maxDuration": 5}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        kiln.finished(created["id"].as_str().unwrap()).await["status"],
        "COMPLETED"
    );
}

#[tokio::test]
async fn a_huge_output_fails_cleanly() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let id = kiln
        .trigger_ok("big-output", json!({"bytes": 11 * 1024 * 1024}))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    assert_eq!(run["error"]["name"], "OutputTooLarge");
}

#[tokio::test]
async fn a_busy_loop_without_a_max_duration_ends_at_the_servers_default() {
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &["--default-max-duration", "1s"]);
    kiln.deploy(kiln_fixtures::PROBE).await;
    // `draw-spin` declares no maxDuration, and the trigger gives none.
    let id = kiln
        .trigger_ok("draw-spin", json!({"spin_ms": 600_000}))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "TIMED_OUT", "{run}");
    assert_eq!(run["error"]["name"], "MaxDurationExceeded", "{run}");
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("maxDuration of 1s"),
        "the error names the limit: {run}"
    );
    // The trigger's maxDuration overrides the server's default.
    let id = kiln
        .trigger_with(
            "draw-spin",
            json!({"spin_ms": 1_500}),
            json!({"maxDuration": 30}),
        )
        .await;
    assert_eq!(kiln.finished(&id).await["status"], "COMPLETED");
}
