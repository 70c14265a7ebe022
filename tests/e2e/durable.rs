//! Durable runs against the real server with real SIGKILLs: waits survive
//! restarts, replays answer host calls from the journal, timers fire once.

use crate::harness::{Kiln, data_dir};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Waits of 100 ms or less stay warm; the tests' waits are longer, so they
/// snapshot the guest and free its slot.
const SUSPEND: &[&str] = &["--warm-wait-ms", "100"];

fn count(entries: &[Value], kind: &str) -> usize {
    entries.iter().filter(|e| e["type"] == kind).count()
}

fn random_calls(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e["type"] == "HOST_CALL" && e["call"] == "random-bytes")
        .map(|e| e["result"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn draw_of(log: &Value) -> u64 {
    log["fields"]["draw"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .expect("a draw field")
}

#[tokio::test]
async fn a_countdown_killed_during_a_wait_completes_once_with_all_its_draws() {
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), SUSPEND);
    kiln.deploy(kiln_fixtures::COUNTDOWN).await;
    let id = kiln
        .trigger_ok("countdown", json!({"steps": 3, "wait_ms": 1500}))
        .await;
    kiln.until_journal(&id, |e| count(e, "SUSPENDED") >= 1)
        .await;
    let waiting = kiln.run(&id).await;
    assert_eq!(waiting["status"], "WAITING", "{waiting}");
    let first_draw = draw_of(&waiting["attempts"][0]["logs"][0]);
    kiln.kill();

    let kiln = Kiln::start_with(dir.path(), SUSPEND);
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["attemptCount"], 1, "{run}");
    let draws = run["output"]["draws"].as_array().expect("draws").clone();
    assert_eq!(run["output"]["steps"], 3);
    assert_eq!(draws.len(), 3);
    assert_eq!(
        draws[0],
        json!(first_draw),
        "the draw before the kill is kept"
    );
    let logged: Vec<u64> = run["attempts"][0]["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .map(draw_of)
        .collect();
    assert_eq!(
        json!(logged),
        json!(draws),
        "one log line per draw, none twice"
    );
    let entries = kiln.journal(&id).await;
    assert_eq!(random_calls(&entries).len(), 3, "{entries:?}");
    assert_eq!(count(&entries, "ATTEMPT_STARTED"), 1);
    assert_eq!(count(&entries, "ATTEMPT_ENDED"), 1);
    assert_eq!(count(&entries, "WAKE"), 3);
}

#[tokio::test]
async fn a_run_killed_mid_execution_replays_its_draws_without_calling_the_host_again() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let id = kiln.trigger_ok("draw-spin", json!({"spin_ms": 2500})).await;
    let before = kiln
        .until_journal(&id, |e| !random_calls(e).is_empty())
        .await;
    let first = random_calls(&before)[0].clone();
    kiln.kill();

    let kiln = Kiln::start(dir.path());
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(
        run["attemptCount"], 1,
        "replay continues the attempt: {run}"
    );
    let bytes: [u8; 8] = hex_bytes(&first);
    assert_eq!(
        run["output"]["draws"][0],
        json!(u64::from_le_bytes(bytes).to_string()),
        "the replayed draw is the journaled one"
    );
    let calls = random_calls(&kiln.journal(&id).await);
    assert_eq!(
        calls.len(),
        2,
        "the first draw was not asked of the host again: {calls:?}"
    );
    assert_eq!(calls[0], first);
}

fn hex_bytes(hex: &str) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).expect("hex");
    }
    out
}

#[tokio::test]
async fn two_hundred_concurrent_runs_killed_at_random_points_all_complete() {
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), SUSPEND);
    kiln.deploy(kiln_fixtures::COUNTDOWN).await;
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(
            kiln.trigger_ok("countdown", json!({"steps": 3, "wait_ms": 300}))
                .await,
        );
    }
    // Kill somewhere in the runs' lives: some queued, some executing, some
    // waiting, some resumed.
    let at = 100 + rand_below(700);
    tokio::time::sleep(Duration::from_millis(at)).await;
    kiln.kill();

    let kiln = Kiln::start_with(dir.path(), SUSPEND);
    for id in &ids {
        let run = kiln.finished(id).await;
        assert_eq!(run["status"], "COMPLETED", "killed at {at} ms: {run}");
        let draws = run["output"]["draws"].as_array().expect("draws").clone();
        assert_eq!(draws.len(), 3, "{run}");
        let entries = kiln.journal(id).await;
        let calls = random_calls(&entries);
        assert_eq!(calls.len(), 3, "killed at {at} ms, {id}: {entries:?}");
        for (call, draw) in calls.iter().zip(&draws) {
            let value = u64::from_le_bytes(hex_bytes(call)) % 1_000_000;
            assert_eq!(
                json!(value),
                *draw,
                "{id}: output draws are the journaled ones"
            );
        }
        assert_eq!(count(&entries, "ATTEMPT_ENDED"), 1, "{id}");
    }
}

fn rand_below(n: u64) -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 % n)
        .unwrap_or(0)
}

#[tokio::test]
async fn a_timer_that_came_due_while_the_server_was_down_fires_once() {
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), SUSPEND);
    kiln.deploy(kiln_fixtures::COUNTDOWN).await;
    let id = kiln
        .trigger_ok("countdown", json!({"steps": 1, "wait_ms": 800}))
        .await;
    kiln.until_journal(&id, |e| count(e, "SUSPENDED") == 1)
        .await;
    kiln.kill();
    // The timer comes due while nothing runs.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let kiln = Kiln::start_with(dir.path(), SUSPEND);
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    // Give a second firing every chance to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let entries = kiln.journal(&id).await;
    assert_eq!(count(&entries, "WAKE"), 1, "{entries:?}");
    assert_eq!(count(&entries, "ATTEMPT_ENDED"), 1, "{entries:?}");
}

#[tokio::test]
async fn a_waiting_run_holds_no_slot() {
    let dir = data_dir();
    // One slot: a second run can only start if the first gave its slot up.
    let kiln = Kiln::start_with(
        dir.path(),
        &[
            "--warm-wait-ms",
            "100",
            "--concurrency",
            "1",
            "--burst-factor",
            "1",
        ],
    );
    kiln.deploy(kiln_fixtures::COUNTDOWN).await;
    let waiting = kiln
        .trigger_ok("countdown", json!({"steps": 1, "wait_ms": 60000}))
        .await;
    kiln.until_journal(&waiting, |e| count(e, "SUSPENDED") == 1)
        .await;
    let quick = kiln
        .trigger_ok("countdown", json!({"steps": 0, "wait_ms": 0}))
        .await;
    let run = kiln.finished(&quick).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(kiln.run(&waiting).await["status"], "WAITING");
}

#[tokio::test]
async fn cancel_interrupts_an_executing_run_and_ends_a_waiting_one_in_place() {
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), SUSPEND);
    kiln.deploy(kiln_fixtures::PROBE).await;

    // Executing: a spin that would run for a minute.
    let spinning = kiln
        .trigger_ok("draw-spin", json!({"spin_ms": 60000}))
        .await;
    kiln.until_journal(&spinning, |e| !random_calls(e).is_empty())
        .await;
    let asked = Instant::now();
    let (status, body) = kiln
        .request(
            reqwest::Method::POST,
            &format!("/api/v2/runs/{spinning}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], json!(spinning));
    let run = kiln.finished(&spinning).await;
    assert_eq!(run["status"], "CANCELED", "{run}");
    assert_eq!(run["attempts"][0]["outcome"], "CANCELED", "{run}");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "took {:?}",
        asked.elapsed()
    );

    // Waiting: canceled in place through the CLI; its timer does nothing.
    let waiting = kiln.trigger_ok("sleep", json!({"ms": 1000})).await;
    kiln.until_journal(&waiting, |e| count(e, "SUSPENDED") == 1)
        .await;
    let out = kiln.cli(&["runs", "cancel", &waiting]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("CANCELED"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let run = kiln.run(&waiting).await;
    assert_eq!(run["status"], "CANCELED", "{run}");
    assert_eq!(count(&kiln.journal(&waiting).await, "WAKE"), 0);

    // A finished run answers 200 and stays as it was; an unknown one is 404.
    let (status, _) = kiln
        .request(
            reqwest::Method::POST,
            &format!("/api/v2/runs/{waiting}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = kiln
        .request(
            reqwest::Method::POST,
            "/api/v2/runs/run_0000000000000000000000000/cancel",
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_journal_is_shown_by_the_cli() {
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), SUSPEND);
    kiln.deploy(kiln_fixtures::COUNTDOWN).await;
    let id = kiln
        .trigger_ok("countdown", json!({"steps": 2, "wait_ms": 200}))
        .await;
    kiln.finished(&id).await;
    let out = kiln.cli(&["runs", "journal", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "ATTEMPT_STARTED",
        "random-bytes(8)",
        "WAITS",
        "SUSPENDED",
        "WAKE",
        "ATTEMPT_ENDED",
    ] {
        assert!(text.contains(expected), "no {expected} in:\n{text}");
    }
    // The second snapshot is a page delta, far smaller than the first.
    let entries = kiln.journal(&id).await;
    let sizes: Vec<u64> = entries
        .iter()
        .filter(|e| e["type"] == "SUSPENDED")
        .map(|e| e["bytes"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(sizes.len(), 2, "{entries:?}");
    assert!(sizes[1] * 2 < sizes[0], "{sizes:?}");
}

#[tokio::test]
async fn max_duration_counts_execution_time_not_waits() {
    for args in [&[][..], SUSPEND] {
        let dir = data_dir();
        let kiln = Kiln::start_with(dir.path(), args);
        kiln.deploy(kiln_fixtures::PROBE).await;
        // A 1 s maxDuration and a 2.5 s wait: the wait does not count.
        let (status, body) = kiln
            .trigger("sleep", json!({"ms": 2500}), json!({"maxDuration": 1}))
            .await;
        assert_eq!(status, 200, "{body}");
        let id = body["id"].as_str().expect("an id").to_string();
        let run = kiln.finished(&id).await;
        assert_eq!(run["status"], "COMPLETED", "with {args:?}: {run}");
        assert!(
            run["output"]["waitedMs"].as_u64().unwrap_or(0) >= 2500,
            "{run}"
        );
    }
}
