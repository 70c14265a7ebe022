//! Tasks written in TypeScript: bundles built from `examples/*-ts` by `kiln
//! build` (esbuild and componentize-js), run by the real server as WASI
//! guests that resume by replaying their journal.

use crate::harness::{Kiln, data_dir};
use serde_json::{Value, json};
use std::path::PathBuf;

/// Arguments every test server here gets: timer waits over 100 ms suspend
/// the guest, and compiled bundles are cached where every test finds them
/// (a TypeScript bundle embeds SpiderMonkey and takes seconds to compile).
fn args(cache: &str) -> Vec<&str> {
    vec!["--warm-wait-ms", "100", "--compile-cache", cache]
}

fn cache() -> String {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("kiln-compile-cache")
        .display()
        .to_string()
}

fn count(entries: &[Value], kind: &str) -> usize {
    entries.iter().filter(|e| e["type"] == kind).count()
}

fn draws_logged(run: &Value) -> Vec<Value> {
    run["attempts"][0]["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .filter(|l| l["message"] == "drew")
        .map(|l| {
            let draw: u64 = l["fields"]["draw"]
                .as_str()
                .and_then(|d| d.parse().ok())
                .expect("a draw field");
            json!(draw)
        })
        .collect()
}

#[tokio::test]
async fn a_typescript_task_runs_and_its_schema_is_checked_at_trigger_time() {
    let dir = data_dir();
    let cache = cache();
    let kiln = Kiln::start_with(dir.path(), &args(&cache));
    let deployed = kiln.deploy(kiln_fixtures::HELLO_WORLD_TS).await;
    let tasks: Vec<&str> = deployed["tasks"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["id"].as_str()).collect())
        .unwrap_or_default();
    assert!(tasks.contains(&"hello-world-ts"), "{deployed}");

    let id = kiln
        .trigger_ok("hello-world-ts", json!({"name": "Ada"}))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["output"], json!({"message": "Hello, Ada!"}));
    let line = &run["attempts"][0]["logs"][0];
    assert_eq!(line["message"], "greeting", "{run}");
    assert_eq!(line["fields"]["name"], "Ada", "{run}");

    // The zod schema's JSON Schema is checked when the run is triggered.
    let (status, body) = kiln
        .trigger("greet-many-ts", json!({"names": ["Ada", ""]}), json!({}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("names"), "{body}");
    let (status, body) = kiln
        .trigger("greet-many-ts", json!({"names": "Ada"}), json!({}))
        .await;
    assert_eq!(status, 422, "{body}");
    // A valid payload gets what `schema.parse` makes of it (a default).
    let id = kiln
        .trigger_ok("greet-many-ts", json!({"names": ["Ada", "Grace"]}))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(
        run["output"],
        json!({"greetings": ["Hello, Ada!", "Hello, Grace!"]})
    );
}

#[tokio::test]
async fn a_typescript_countdown_suspends_without_a_snapshot_and_resumes_by_replay() {
    let dir = data_dir();
    let cache = cache();
    let kiln = Kiln::start_with(dir.path(), &args(&cache));
    kiln.deploy(kiln_fixtures::COUNTDOWN_TS).await;
    let id = kiln
        .trigger_ok("countdown-ts", json!({"steps": 3, "wait_ms": 300}))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["attemptCount"], 1, "{run}");
    let draws = run["output"]["draws"].as_array().expect("draws").clone();
    assert_eq!(draws.len(), 3, "{run}");
    assert_eq!(
        draws_logged(&run),
        draws,
        "one log line per draw, none twice, though each resume ran the task again"
    );
    let entries = kiln.journal(&id).await;
    let suspended: Vec<&Value> = entries
        .iter()
        .filter(|e| e["type"] == "SUSPENDED")
        .collect();
    assert_eq!(suspended.len(), 3, "{entries:?}");
    for entry in suspended {
        assert_eq!(entry["layer"], 0, "no snapshot is taken: {entry}");
    }
    assert_eq!(count(&entries, "WAKE"), 3);
    assert_eq!(count(&entries, "ATTEMPT_STARTED"), 1);
    // Another run draws other numbers: the seed is not built in.
    let other = kiln
        .trigger_ok("countdown-ts", json!({"steps": 3, "wait_ms": 0}))
        .await;
    let other = kiln.finished(&other).await;
    assert_ne!(other["output"]["draws"], run["output"]["draws"], "{other}");
    // The seed behind Math.random came from the host.
    let random = entries
        .iter()
        .filter(|e| e["type"] == "HOST_CALL" && e["call"] == "random-bytes")
        .count();
    assert!(random >= 1, "{entries:?}");
}

#[tokio::test]
async fn a_typescript_countdown_killed_during_a_wait_completes_once_with_the_same_draws() {
    let dir = data_dir();
    let cache = cache();
    let kiln = Kiln::start_with(dir.path(), &args(&cache));
    kiln.deploy(kiln_fixtures::COUNTDOWN_TS).await;
    let id = kiln
        .trigger_ok("countdown-ts", json!({"steps": 3, "wait_ms": 1500}))
        .await;
    kiln.until_journal(&id, |e| count(e, "SUSPENDED") >= 1)
        .await;
    let waiting = kiln.run(&id).await;
    assert_eq!(waiting["status"], "WAITING", "{waiting}");
    let first = draws_logged(&waiting);
    assert_eq!(first.len(), 1, "{waiting}");
    kiln.kill();

    let kiln = Kiln::start_with(dir.path(), &args(&cache));
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["attemptCount"], 1, "{run}");
    let draws = run["output"]["draws"].as_array().expect("draws").clone();
    assert_eq!(draws.len(), 3);
    assert_eq!(draws[0], first[0], "the draw before the kill is kept");
    assert_eq!(draws_logged(&run), draws, "one log line per draw");
    let entries = kiln.journal(&id).await;
    assert_eq!(count(&entries, "ATTEMPT_STARTED"), 1);
    assert_eq!(count(&entries, "ATTEMPT_ENDED"), 1);
    assert_eq!(count(&entries, "WAKE"), 3);
}

#[tokio::test]
async fn a_typescript_parent_triggers_a_child_and_waits_for_it() {
    let dir = data_dir();
    let cache = cache();
    let kiln = Kiln::start_with(dir.path(), &args(&cache));
    kiln.deploy(kiln_fixtures::COUNTDOWN_TS).await;
    let id = kiln
        .trigger_ok("countdown-parent-ts", json!({"steps": 2, "wait_ms": 200}))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let child_id = run["output"]["child"].as_str().expect("the child's id");
    let child = kiln.finished(child_id).await;
    assert_eq!(child["status"], "COMPLETED", "{child}");
    assert_eq!(run["output"]["draws"], child["output"]["draws"]);
    // One child, though the parent ran again from the start at each resume.
    let entries = kiln.journal(&id).await;
    let triggers = entries
        .iter()
        .filter(|e| e["type"] == "HOST_CALL" && e["call"] == "trigger")
        .count();
    assert_eq!(triggers, 1, "{entries:?}");
}

/// A server with the TypeScript probe deployed.
async fn probe(dir: &tempfile::TempDir, cache: &str) -> Kiln {
    let kiln = Kiln::start_with(dir.path(), &args(cache));
    let deployed = kiln.deploy(kiln_fixtures::PROBE_TS).await;
    // The queue tasks share is declared with the bundle.
    assert!(
        deployed["queues"].to_string().contains("ts-shared"),
        "{deployed}"
    );
    kiln
}

#[tokio::test]
async fn a_typescript_task_waits_on_a_token_and_sets_metadata_and_tags() {
    let dir = data_dir();
    let cache = cache();
    let kiln = probe(&dir, &cache).await;
    let id = kiln.trigger_ok("token-ts", json!({})).await;
    let waiting = kiln.until_status(&id, "WAITING").await;
    let token = waiting["metadata"]["token"]
        .as_str()
        .expect("the token's id in the metadata")
        .to_string();
    assert_eq!(waiting["metadata"]["waits"], 1, "{waiting}");
    assert!(
        waiting["tags"].to_string().contains("token-made"),
        "{waiting}"
    );
    let (status, body) = kiln
        .post(
            &format!("/api/v1/waitpoints/tokens/{token}/complete"),
            json!({"data": {"approved": true}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["output"]["ok"], true, "{run}");
    assert_eq!(run["output"]["data"], json!({"approved": true}));
    // Replayed at the resume, the metadata operations were not applied again.
    assert_eq!(run["metadata"]["waits"], 1, "{run}");
    assert_eq!(run["output"]["metadata"]["waits"], 1, "{run}");

    // The replay at a resume starts from the metadata the attempt started
    // with, not what the task made of it since.
    let id = kiln.trigger_ok("once-ts", json!({})).await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["output"]["sentBefore"], false, "{run}");
    assert_eq!(run["metadata"]["sent"], true, "{run}");
}

#[tokio::test]
async fn typescript_retries_hooks_and_aborts_decide_as_the_task_says() {
    let dir = data_dir();
    let cache = cache();
    let kiln = probe(&dir, &cache).await;
    // The manifest carries what the tasks declare: a shared queue, a
    // machine, a schedule the deploy created.
    let (status, schedules) = kiln
        .request(reqwest::Method::GET, "/api/v1/schedules?perPage=100", None)
        .await;
    assert_eq!(status, 200, "{schedules}");
    let nightly: Vec<&Value> = schedules["data"]
        .as_array()
        .expect("schedules")
        .iter()
        .filter(|s| s["task"] == "nightly-ts")
        .collect();
    assert_eq!(nightly.len(), 1, "{schedules}");
    assert_eq!(nightly[0]["type"], "DECLARATIVE", "{schedules}");
    assert_eq!(nightly[0]["timezone"], "Europe/Oslo", "{schedules}");
    let flaky = kiln.trigger_ok("flaky-ts", json!({})).await;
    let aborted = kiln.trigger_ok("abort-ts", json!({"how": "abort"})).await;
    let caught = kiln.trigger_ok("abort-ts", json!({"how": "catch"})).await;
    let on_throw = kiln.trigger_ok("on-throw-ts", json!({})).await;

    let run = kiln.finished(&flaky).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["output"]["attempt"], 2, "{run}");
    assert_eq!(run["output"]["init"], 7, "init's value reaches run: {run}");
    assert_eq!(run["machine"], "small-2x", "{run}");
    // onStart once per run, cleanup after each attempt, onSuccess at the
    // end, and no onFailure for an attempt that is retried.
    assert_eq!(
        run["metadata"],
        json!({"starts": 1, "cleanups": 2, "succeeded": true}),
        "{run}"
    );
    assert_eq!(run["attemptCount"], 2, "{run}");
    for id in [&aborted, &caught] {
        let run = kiln.finished(id).await;
        assert_eq!(run["status"], "FAILED", "{run}");
        assert_eq!(run["attemptCount"], 1, "not retried: {run}");
    }
    let run = kiln.finished(&aborted).await;
    assert!(
        run["error"].to_string().contains("no point retrying"),
        "{run}"
    );
    // onFailure runs once the run fails for good.
    assert_eq!(run["metadata"]["failures"], 1, "{run}");
    assert_eq!(kiln.run(&caught).await["metadata"]["failures"], 1);
    let run = kiln.finished(&on_throw).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["output"], json!({"value": 3, "tries": 3}), "{run}");
    assert_eq!(run["attemptCount"], 1, "{run}");

    // A hook that throws after the outcome is decided is logged, and the
    // run keeps its outcome.
    let id = kiln.trigger_ok("hooked-ts", json!({})).await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["attemptCount"], 1, "{run}");
    assert!(
        run["attempts"][0]["logs"]
            .to_string()
            .contains("a hook failed: hook boom"),
        "{run}"
    );
}

#[tokio::test]
async fn typescript_fetch_env_vars_console_and_batches_go_through_kiln() {
    let dir = data_dir();
    let cache = cache();
    let kiln = probe(&dir, &cache).await;
    let (url, count) = crate::fetch::counting_server(0).await;
    let id = kiln.trigger_ok("fetch-ts", json!({"url": url})).await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(
        run["output"],
        json!({"status": 200, "ok": true, "body": "1"})
    );
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);

    let set = kiln.cli(&["env", "set", "GREETING", "hej"]);
    assert!(set.status.success(), "{set:?}");
    let id = kiln.trigger_ok("env-ts", json!({"name": "GREETING"})).await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["output"]["value"], "hej", "{run}");
    let logs: Vec<(String, String)> = run["attempts"][0]["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .map(|l| {
            (
                l["level"].as_str().unwrap_or_default().to_string(),
                l["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        logs.contains(&("info".into(), "reading GREETING".into())),
        "{logs:?}"
    );
    assert!(
        logs.contains(&("error".into(), "a line on stderr".into())),
        "{logs:?}"
    );

    let id = kiln.trigger_ok("batch-ts", json!({"ns": [1, 2, -1]})).await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["output"], json!([2, 4, "failed"]), "{run}");
}

#[tokio::test]
async fn a_typescript_task_triggers_and_waits_on_a_rust_task_of_the_same_version() {
    let dir = data_dir();
    let cache = cache();
    let kiln = Kiln::start_with(dir.path(), &args(&cache));
    // Two bundles, one version: `kiln deploy` sends both.
    let deployed = kiln.cli(&[
        "deploy",
        kiln_fixtures::HELLO_WORLD,
        kiln_fixtures::PROBE_TS,
    ]);
    let said = String::from_utf8_lossy(&deployed.stdout).to_string();
    assert!(deployed.status.success(), "{deployed:?}");
    assert!(
        said.contains("hello-world") && said.contains("mixed-ts"),
        "{said}"
    );

    let id = kiln.trigger_ok("mixed-ts", json!({"name": "Ada"})).await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["output"]["fromRust"], "Hello, Ada!", "{run}");
    let child = kiln
        .finished(run["output"]["child"].as_str().expect("the child's id"))
        .await;
    assert_eq!(child["taskIdentifier"], "hello-world", "{child}");
    assert!(run["version"].is_string(), "{run}");
    assert_eq!(child["version"], run["version"], "{child}");
    // And the Rust task is triggered from outside as before.
    let id = kiln
        .trigger_ok("hello-world", json!({"name": "Grace"}))
        .await;
    assert_eq!(
        kiln.finished(&id).await["output"]["message"],
        "Hello, Grace!"
    );

    // A task id in two bundles, and sizes that do not fit the body, are
    // refused, and nothing is deployed.
    let twice = kiln.cli(&[
        "deploy",
        kiln_fixtures::HELLO_WORLD,
        kiln_fixtures::HELLO_WORLD,
    ]);
    assert!(!twice.status.success());
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("twice"),
        "{twice:?}"
    );
    let (status, body) = kiln
        .request(
            reqwest::Method::POST,
            "/api/v1/deployments?sizes=10,20",
            Some(vec![0u8; 25].into()),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn a_typescript_task_blocked_on_its_own_timer_is_canceled_and_timed_out() {
    let dir = data_dir();
    let cache = cache();
    let kiln = probe(&dir, &cache).await;
    let id = kiln.trigger_ok("sleepy-ts", json!({"ms": 3_600_000})).await;
    kiln.until_status(&id, "EXECUTING").await;
    let asked = std::time::Instant::now();
    let (status, body) = kiln
        .request(
            reqwest::Method::POST,
            &format!("/api/v2/runs/{id}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "CANCELED", "{run}");
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        asked.elapsed()
    );

    // A timer's wait counts as execution time: maxDuration ends it.
    let (status, body) = kiln
        .trigger(
            "sleepy-ts",
            json!({"ms": 3_600_000}),
            json!({"maxDuration": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_str().expect("an id").to_string();
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "TIMED_OUT", "{run}");
}
