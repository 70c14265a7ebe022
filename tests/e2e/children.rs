//! Child runs: triggered from inside tasks, waited on with the parent
//! suspended, created exactly once across SIGKILL, canceled with the parent.

use crate::harness::{Kiln, data_dir};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

async fn runs_of(kiln: &Kiln, task: &str) -> Vec<Value> {
    let (status, page) = kiln
        .request(
            Method::GET,
            &format!("/api/v1/runs?filter%5BtaskIdentifier%5D={task}&page%5Bsize%5D=100"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_parent_gets_a_hundred_batch_outputs_in_order() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let id = kiln
        .trigger_ok("parent", json!({"mode": "batch", "children": 100}))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let expected: Vec<Value> = (0..100).map(|n| json!(n)).collect();
    assert_eq!(run["output"]["outputs"], json!(expected));
    let ids = run["output"]["ids"].as_array().unwrap();
    let child = kiln.run(ids[7].as_str().unwrap()).await;
    assert_eq!(child["status"], "COMPLETED");
    assert_eq!(child["depth"], 1);
    assert_eq!(child["parentId"], json!(id));
    assert_eq!(child["rootId"], json!(id));
    assert_eq!(child["triggerFunction"], "batchTriggerAndWait");
    assert!(child["batchId"].as_str().unwrap().starts_with("batch_"));
    assert_eq!(runs_of(&kiln, "echo").await.len(), 100);
    // The parent suspended (WAITS on the batch, SUSPENDED) and woke once.
    let journal = kiln.journal(&id).await;
    let kinds: Vec<&str> = journal
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"SUSPENDED"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "WAKE").count(),
        1,
        "{kinds:?}"
    );
}

#[tokio::test]
async fn sequential_joined_by_task_and_failing_children() {
    let dir = data_dir();
    // One slot: a parent waiting on its child holds none, so this cannot
    // deadlock.
    let kiln = Kiln::start_with(dir.path(), &["--concurrency", "1", "--burst-factor", "1"]);
    kiln.deploy(kiln_fixtures::PROBE).await;
    let each = kiln
        .trigger_ok("parent", json!({"mode": "each", "children": 3}))
        .await;
    let join = kiln.trigger_ok("parent", json!({"mode": "join"})).await;
    let by_task = kiln.trigger_ok("parent", json!({"mode": "by-task"})).await;
    let fail = kiln.trigger_ok("parent", json!({"mode": "fail"})).await;

    let run = kiln.finished(&each).await;
    assert_eq!(run["output"], json!({"outputs": [0, 1, 2]}), "{run}");
    let run = kiln.finished(&join).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["output"]["a"], "a");
    assert!(
        run["output"]["b"]["waitedMs"].as_u64().unwrap() >= 300,
        "{run}"
    );
    let run = kiln.finished(&by_task).await;
    assert_eq!(
        run["output"],
        json!([{"ok": 1}, {"error": "nope"}, {"ok": 3}]),
        "{run}"
    );
    let run = kiln.finished(&fail).await;
    assert_eq!(
        run["output"],
        json!({"childError": "child broke", "ok": false}),
        "{run}"
    );
}

#[tokio::test]
async fn a_sigkill_between_creating_a_child_and_waiting_makes_no_second_child() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let id = kiln
        .trigger_ok("spawn-then-spin", json!({"spin_ms": 2500}))
        .await;
    // Wait until the child exists, then kill the server while the parent
    // spins (after the trigger, before the wait).
    for _ in 0..100 {
        if !runs_of(&kiln, "echo").await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(kiln.run(&id).await["status"], "EXECUTING");
    kiln.kill();

    let kiln = Kiln::start(dir.path());
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let children = runs_of(&kiln, "echo").await;
    assert_eq!(children.len(), 1, "one child, not two: {children:?}");
    assert_eq!(run["output"]["child"], children[0]["id"]);
    assert_eq!(run["output"]["output"]["payload"]["n"], "only");
}

/// A parent waits on its child across a `SIGKILL`: the restarted server
/// learns which runs are waited on from the store (a run's end reads its
/// waiters only if it is one) and wakes the parent when the child ends.
#[tokio::test]
async fn a_parent_waiting_across_a_sigkill_wakes_when_its_child_ends() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let id = kiln
        .trigger_ok("parent", json!({"mode": "sleepy", "sleep_ms": 3_000}))
        .await;
    kiln.until_status(&id, "WAITING").await;
    let sleeps = runs_of(&kiln, "sleep").await;
    let child = sleeps[0]["id"]
        .as_str()
        .expect("the child's id")
        .to_string();
    // The child waits on its 3 s timer (warm, so `EXECUTING`, or
    // suspended): its end comes after the restart.
    let status = kiln.run(&child).await["status"].clone();
    assert!(status == "EXECUTING" || status == "WAITING", "{status}");
    kiln.kill();

    let kiln = Kiln::start(dir.path());
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["output"]["child"], child.as_str());
}

#[tokio::test]
async fn canceling_a_parent_cancels_its_children() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let id = kiln
        .trigger_ok("parent", json!({"mode": "sleepy", "sleep_ms": 60_000}))
        .await;
    let mut child = None;
    for _ in 0..100 {
        let sleeps = runs_of(&kiln, "sleep").await;
        if let Some(c) = sleeps.first()
            && kiln.run(&id).await["status"] == "WAITING"
        {
            child = c["id"].as_str().map(String::from);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let child = child.expect("the child started and the parent waits");
    let (status, _) = kiln
        .request(Method::POST, &format!("/api/v2/runs/{id}/cancel"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(kiln.finished(&id).await["status"], "CANCELED");
    assert_eq!(kiln.finished(&child).await["status"], "CANCELED");
}
