//! A restart, even after SIGKILL, keeps deployed bundles and finished runs.

use crate::harness::{Kiln, data_dir};
use serde_json::json;

#[tokio::test]
async fn a_restart_keeps_bundles_and_finished_runs() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::HELLO_WORLD).await;
    let id = kiln.trigger_ok("hello-world", json!({"name": "Ada"})).await;
    let before = kiln.finished(&id).await;
    assert_eq!(before["status"], "COMPLETED");
    kiln.kill();

    let kiln = Kiln::start(dir.path());
    // Ready once the store answers.
    let (status, _) = kiln.request(reqwest::Method::GET, "/readyz", None).await;
    assert_eq!(status, 200);
    let after = kiln.run(&id).await;
    assert_eq!(after["status"], "COMPLETED");
    assert_eq!(after["output"], json!({"message": "Hello, Ada!"}));
    assert_eq!(after["attempts"], before["attempts"]);
    // The bundle is still deployed (loaded from the compiled-artifact cache).
    let id = kiln
        .trigger_ok("hello-world", json!({"name": "again"}))
        .await;
    assert_eq!(
        kiln.finished(&id).await["output"]["message"],
        "Hello, again!"
    );
}

#[tokio::test]
async fn runs_queued_when_the_server_died_run_after_restart() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    // Long enough to be mid-flight when the process is killed.
    let ids = [
        kiln.trigger_ok("sleep", json!({"ms": 3000})).await,
        kiln.trigger_ok("sleep", json!({"ms": 3000})).await,
    ];
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    kiln.kill();

    let kiln = Kiln::start(dir.path());
    for id in &ids {
        let run = kiln.finished(id).await;
        assert_eq!(run["status"], "COMPLETED", "{run}");
        // The interrupted attempt continued from its journal.
        assert_eq!(run["attemptCount"], 1, "{run}");
        assert_eq!(run["attempts"][0]["outcome"], "SUCCEEDED", "{run}");
    }
}

#[tokio::test]
async fn a_second_sigterm_stops_a_draining_server_at_once_and_its_run_goes_on_after() {
    use std::time::{Duration, Instant};
    // An 8 s wait stays warm in the guest, so the drain would wait for it.
    let args = ["--warm-wait-ms", "60000"];
    let dir = data_dir();
    let mut kiln = Kiln::start_with(dir.path(), &args);
    kiln.deploy(kiln_fixtures::PROBE).await;
    let id = kiln
        .trigger_with("sleep", json!({"ms": 8000}), json!({}))
        .await;
    kiln.until_status(&id, "EXECUTING").await;
    kiln.terminate();
    // Draining: not ready any more.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = kiln.request(reqwest::Method::GET, "/readyz", None).await;
        if status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "the server never began to drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The server took the first signal before it said so.
    let first = Instant::now();
    // A second SIGTERM within a second of the first is taken for the same
    // stop (a supervisor signalling the process and its group): this one
    // comes later, the behaviour under test.
    tokio::time::sleep_until((first + Duration::from_millis(1500)).into()).await;
    let sent = Instant::now();
    kiln.terminate();
    let status = kiln
        .exited_within(Duration::from_secs(10))
        .expect("a second SIGTERM stops the server at once");
    assert_eq!(status.code(), Some(143));
    assert!(
        sent.elapsed() < Duration::from_secs(4),
        "{:?}",
        sent.elapsed()
    );

    let kiln = Kiln::start_with(dir.path(), &args);
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
}
