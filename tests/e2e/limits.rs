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
