//! `delay` (DELAYED, reschedule), `ttl` (EXPIRED) and `debounce` on
//! backend triggers.

use crate::harness::{Kiln, data_dir};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_delayed_run_waits_survives_a_restart_and_can_be_rescheduled() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;

    // Bad delays are refused with the reason.
    let (status, body) = kiln
        .trigger("echo", json!({}), json!({"delay": "soon"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("delay"), "{body}");

    let far = kiln
        .trigger_with("echo", json!({"n": 1}), json!({"delay": "1h"}))
        .await;
    let near = kiln
        .trigger_with("echo", json!({"n": 2}), json!({"delay": "2s"}))
        .await;
    let run = kiln.run(&far).await;
    assert_eq!(run["status"], "DELAYED", "{run}");
    assert_eq!(run["isQueued"], true);
    assert!(run["delayedUntil"].is_string(), "{run}");

    // The delayed runs outlive a crash: their timers are in the store.
    kiln.kill();
    let kiln = Kiln::start(dir.path());
    let done = kiln.finished(&near).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert!(done.get("delayedUntil").is_none(), "{done}");
    assert_eq!(kiln.run(&far).await["status"], "DELAYED");

    // Reschedule brings the far one forward.
    let (status, body) = kiln
        .post(
            &format!("/api/v1/runs/{far}/reschedule"),
            json!({"delay": "1s"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "DELAYED");
    let started = Instant::now();
    let done = kiln.finished(&far).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Only a DELAYED run can be rescheduled.
    let (status, body) = kiln
        .post(
            &format!("/api/v1/runs/{far}/reschedule"),
            json!({"delay": "1s"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = kiln
        .post(
            "/api/v1/runs/run_doesnotexist/reschedule",
            json!({"delay": "1s"}),
        )
        .await;
    assert_eq!(status, 404);

    // Cancel ends a delayed run in place.
    let id = kiln
        .trigger_with("echo", json!({}), json!({"delay": "1h"}))
        .await;
    let (status, _) = kiln
        .post(&format!("/api/v2/runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(kiln.run(&id).await["status"], "CANCELED");
}

#[tokio::test]
async fn a_run_not_started_within_its_ttl_expires_counted_from_its_enqueue() {
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &["--concurrency", "1", "--burst-factor", "1"]);
    kiln.deploy(kiln_fixtures::PROBE).await;
    // The one slot is busy for 3 s (a short sleep keeps its instance warm).
    let busy = kiln.trigger_ok("sleep", json!({"ms": 3000})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(kiln.run(&busy).await["status"], "EXECUTING");

    let expires = kiln
        .trigger_with("echo", json!({}), json!({"ttl": "1s"}))
        .await;
    // Queued after 2 s, with 3 s to start: the slot frees in time.
    let delayed = kiln
        .trigger_with("echo", json!({}), json!({"delay": "2s", "ttl": 3}))
        .await;
    let (status, body) = kiln.trigger("echo", json!({}), json!({"ttl": "0s"})).await;
    assert_eq!(status, 400, "{body}");

    let run = kiln.finished(&expires).await;
    assert_eq!(run["status"], "EXPIRED", "{run}");
    assert_eq!(run["isFailed"], true);
    assert!(run["expiredAt"].is_string(), "{run}");
    assert_eq!(run["ttl"], "1s");
    assert_eq!(run["attemptCount"], 0);
    let run = kiln.finished(&delayed).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(kiln.finished(&busy).await["status"], "COMPLETED");
}

#[tokio::test]
async fn a_debounced_burst_of_fifty_makes_one_run_with_the_leading_or_trailing_payload() {
    let dir = data_dir();
    let kiln = Arc::new(Kiln::start(dir.path()));
    kiln.deploy(kiln_fixtures::PROBE).await;
    for (mode, expected) in [("leading", 0), ("trailing", 49)] {
        let options =
            json!({"debounce": {"key": format!("user-{mode}"), "delay": "5s", "mode": mode}});
        let mut ids = Vec::new();
        // The first trigger opens the window; the rest arrive in order,
        // well within it even on a loaded machine (a fresh clone's CI once
        // took over 2 s for the fifty).
        for n in 0..50 {
            ids.push(
                kiln.trigger_with("echo", json!({"n": n}), options.clone())
                    .await,
            );
        }
        assert!(ids.iter().all(|id| *id == ids[0]), "{mode}: {ids:?}");
        let run = kiln.run(&ids[0]).await;
        assert_eq!(run["status"], "DELAYED", "{run}");
        let done = kiln.finished(&ids[0]).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
        assert_eq!(done["output"]["payload"]["n"], expected, "{mode}: {done}");
    }

    // Fifty at once, from fifty clients: still one run.
    let options = json!({"debounce": {"key": "concurrent", "delay": "2s"}});
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..50 {
        let kiln = kiln.clone();
        let options = options.clone();
        tasks.spawn(async move { kiln.trigger_with("echo", json!({"n": n}), options).await });
    }
    let ids: Vec<String> = tasks.join_all().await;
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");

    // The same key on another task is another window; after the window
    // closes, the key opens a new one.
    let other = kiln
        .trigger_with("sleep", json!({"ms": 1}), options.clone())
        .await;
    assert_ne!(other, ids[0]);
    kiln.finished(&ids[0]).await;
    let next = kiln
        .trigger_with("echo", json!({"n": 99}), options.clone())
        .await;
    assert_ne!(next, ids[0]);
    assert_eq!(kiln.finished(&next).await["output"]["payload"]["n"], 99);
}

#[tokio::test]
async fn max_delay_caps_how_long_a_steady_stream_of_triggers_defers_the_run() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let options = json!({"debounce": {"key": "stream", "delay": "1s", "maxDelay": "2s"}});
    let started = Instant::now();
    let mut ids = Vec::new();
    // A trigger every 250 ms for 4 s: without maxDelay nothing would start.
    while started.elapsed() < Duration::from_secs(4) {
        ids.push(kiln.trigger_with("echo", json!({}), options.clone()).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let first = kiln.run(&ids[0]).await;
    assert_eq!(first["status"], "COMPLETED", "{first}");
    ids.dedup();
    assert!(ids.len() >= 2, "the stream made {} run(s)", ids.len());
    let (status, body) = kiln
        .trigger(
            "echo",
            json!({}),
            json!({"debounce": {"key": "", "delay": "1s"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}
