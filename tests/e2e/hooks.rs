//! Lifecycle hooks, `catch_error` and `retry::on_throw`, seen through the
//! log lines the probe's hooks write.

use crate::harness::{Kiln, data_dir};
use serde_json::{Value, json};
use std::time::Duration;

fn messages(attempt: &Value) -> Vec<String> {
    attempt["logs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["message"].as_str())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn hooks_run_around_attempts_waits_and_the_end() {
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &["--warm-wait-ms", "100"]);
    kiln.deploy(kiln_fixtures::PROBE).await;

    // catch_error retries after 50 ms instead of the policy's 5 s; the
    // second attempt waits (suspended) and succeeds.
    let id = kiln
        .trigger_ok("hooked", json!({"fail_first": "boom", "wait_ms": 300}))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(
        messages(&run["attempts"][0]),
        ["hook:start-attempt", "hook:catch-error"]
    );
    assert_eq!(
        messages(&run["attempts"][1]),
        [
            "hook:start-attempt",
            "hook:wait",
            "hook:resume",
            "hook:success",
            "hook:complete"
        ]
    );
    assert!(
        run["durationMs"].as_u64().unwrap_or(0) < 5_000,
        "the retry did not wait the policy's 5 s"
    );

    // Skipping the retry fails the run at once, through on_failure.
    let id = kiln
        .trigger_ok("hooked", json!({"fail_first": "fatal"}))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    assert_eq!(run["attemptCount"], 1);
    assert_eq!(
        messages(&run["attempts"][0]),
        [
            "hook:start-attempt",
            "hook:catch-error",
            "hook:failure",
            "hook:complete"
        ]
    );

    // on_failure runs once, on the last attempt.
    let id = kiln
        .trigger_ok("hooked", json!({"always_fail": true}))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    assert_eq!(run["attemptCount"], 3);
    assert!(!messages(&run["attempts"][1]).contains(&"hook:failure".to_string()));
    assert_eq!(
        messages(&run["attempts"][2]).last().map(String::as_str),
        Some("hook:complete")
    );
}

#[tokio::test]
async fn cancel_runs_the_cancel_hook_of_a_warm_waiting_guest() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let id = kiln.trigger_ok("hooked", json!({"wait_ms": 3000})).await;
    // Wait until the guest is in its (warm) wait.
    for _ in 0..100 {
        if kiln.journal(&id).await.iter().any(|e| e["type"] == "WAITS") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = kiln.cli(&["runs", "cancel", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The hook's log line is kept once the slice ends.
    let mut logs = Vec::new();
    for _ in 0..100 {
        logs = messages(&kiln.run(&id).await["attempts"][0]);
        if logs.contains(&"hook:cancel".to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(logs.contains(&"hook:cancel".to_string()), "{logs:?}");
    assert_eq!(kiln.run(&id).await["status"], "CANCELED");
}

#[tokio::test]
async fn retry_on_throw_retries_a_block_with_durable_backoff() {
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &["--warm-wait-ms", "100"]);
    kiln.deploy(kiln_fixtures::PROBE).await;
    let id = kiln.trigger_ok("flaky-block", json!({"failures": 2})).await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["output"], json!({"tries": 3}));
    assert_eq!(run["attemptCount"], 1, "the block retried, not the run");
    let tries = messages(&run["attempts"][0]);
    assert_eq!(tries, ["try", "try", "try"]);
    let entries = kiln.journal(&id).await;
    let suspended = entries.iter().filter(|e| e["type"] == "SUSPENDED").count();
    assert_eq!(suspended, 2, "each backoff is a durable wait: {entries:?}");
}
