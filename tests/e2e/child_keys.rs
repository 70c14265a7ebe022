//! Idempotency keys (scopes run, attempt and global) and debounce keys on
//! child runs triggered from inside tasks.

use crate::harness::{Kiln, data_dir};
use serde_json::{Value, json};

async fn children_of(kiln: &Kiln, run: &str) -> usize {
    kiln.run(run).await["relatedRuns"]["children"]
        .as_array()
        .map_or(0, Vec::len)
}

async fn keyed(kiln: &Kiln, scope: &str, key: &str) -> Value {
    let id = kiln
        .trigger_ok(
            "keyed-child",
            json!({"mode": "key", "key": key, "scope": scope, "fail_first": true, "sleep_ms": 10}),
        )
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{}", run["error"]);
    assert_eq!(run["output"]["attempt"], 2, "{run}");
    run
}

#[tokio::test]
async fn a_run_scoped_key_hands_a_retry_the_child_of_the_failed_attempt() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;

    let run = keyed(&kiln, "run", "report").await;
    let out = &run["output"];
    assert_eq!(out["child"], out["again"], "{out}");
    let child = kiln.run(out["child"].as_str().unwrap()).await;
    assert_eq!(
        child["payload"]["n"], 1,
        "made by the first attempt: {child}"
    );
    assert_eq!(children_of(&kiln, run["id"].as_str().unwrap()).await, 1);

    // Scope attempt: the retry makes its own child.
    let run = keyed(&kiln, "attempt", "report").await;
    let out = &run["output"];
    assert_eq!(out["child"], out["again"], "{out}");
    let child = kiln.run(out["child"].as_str().unwrap()).await;
    assert_eq!(child["payload"]["n"], 2, "made by the retry: {child}");
    assert_eq!(children_of(&kiln, run["id"].as_str().unwrap()).await, 2);
}

#[tokio::test]
async fn a_global_key_gives_two_runs_one_child_and_wakes_both() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let payload = json!({"mode": "key", "key": "shared", "scope": "global", "sleep_ms": 1500});
    let a = kiln.trigger_ok("keyed-child", payload.clone()).await;
    let b = kiln.trigger_ok("keyed-child", payload).await;
    let (a, b) = (kiln.finished(&a).await, kiln.finished(&b).await);
    assert_eq!(a["status"], "COMPLETED", "{}", a["error"]);
    assert_eq!(b["status"], "COMPLETED", "{}", b["error"]);
    assert_eq!(a["output"]["child"], b["output"]["child"], "{a} {b}");
    assert_eq!(a["output"]["waited"], b["output"]["waited"]);
    let made = children_of(&kiln, a["id"].as_str().unwrap()).await
        + children_of(&kiln, b["id"].as_str().unwrap()).await;
    assert_eq!(made, 1, "one child between them");
}

#[tokio::test]
async fn debounced_child_triggers_make_one_child_with_the_last_payload() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let id = kiln
        .trigger_ok(
            "keyed-child",
            json!({"mode": "debounce", "key": "d", "sleep_ms": 10}),
        )
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{}", run["error"]);
    let ids = run["output"]["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 5);
    assert!(ids.iter().all(|i| i == &ids[0]), "{ids:?}");
    let child = kiln.finished(ids[0].as_str().unwrap()).await;
    assert_eq!(child["status"], "COMPLETED", "{child}");
    assert_eq!(child["payload"]["n"], 4, "trailing: {child}");
}
