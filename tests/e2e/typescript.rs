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
    // The seed behind Math.random came from the host, once.
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
