//! Run metadata and tags: from inside tasks (journaled: a replay never
//! applies an operation twice) and through the wire API.

use crate::harness::{Kiln, data_dir};
use serde_json::{Value, json};
use std::time::Duration;

async fn put_metadata(kiln: &Kiln, id: &str, body: Value) -> (u16, Value) {
    kiln.request(
        reqwest::Method::PUT,
        &format!("/api/v1/runs/{id}/metadata"),
        Some(body.to_string().into()),
    )
    .await
}

#[tokio::test]
async fn tasks_change_their_own_their_parents_and_their_roots_metadata() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let parent = kiln.trigger_ok("annotate-parent", json!({})).await;
    let run = kiln.finished(&parent).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let output = &run["output"];
    assert_eq!(output["role"], "parent", "{output}");
    assert_eq!(output["children"], 2, "{output}");
    let children: Vec<Value> = run["relatedRuns"]["children"].as_array().unwrap().clone();
    assert_eq!(children.len(), 2, "{run}");
    let mut seen: Vec<&str> = output["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    seen.sort();
    let mut ids: Vec<&str> = children.iter().map(|c| c["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(seen, ids);
    assert_eq!(run["metadata"], *output);

    for child in &children {
        let child = kiln.run(child["id"].as_str().unwrap()).await;
        let out = &child["output"];
        assert_eq!(out["count"], 1, "{child}");
        assert_eq!(out["progress"], json!({"step": 0}), "{child}");
        assert_eq!(out["log"], json!(["started"]));
        assert_eq!(out["refusedHuge"], true);
        assert_eq!(child["tags"], json!(["annotated"]));
        assert_eq!(child["relatedRuns"]["parent"]["id"], parent.as_str());
        assert_eq!(child["relatedRuns"]["root"]["id"], parent.as_str());
        assert_eq!(child["depth"], 1);
    }
}

#[tokio::test]
async fn a_replay_after_sigkill_does_not_apply_metadata_operations_twice() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let id = kiln.trigger_ok("annotate", json!({"spin_ms": 2500})).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(kiln.run(&id).await["metadata"]["count"], 1);
    kiln.kill();
    let kiln = Kiln::start(dir.path());
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["attemptCount"], 1, "{run}");
    let out = &run["output"];
    // Replayed from the journal, not applied again.
    assert_eq!(out["count"], 1, "{out}");
    assert_eq!(out["log"], json!(["started"]), "{out}");
    // A root run is its own parent and root.
    assert_eq!(out["children"], 1, "{out}");
    assert_eq!(out["seen"], json!([id]), "{out}");
    assert_eq!(run["tags"], json!(["annotated"]));
}

#[tokio::test]
async fn backends_read_and_change_metadata_and_tags() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let id = kiln
        .trigger_with(
            "echo",
            json!({}),
            json!({"metadata": {"a": 1}, "tags": ["first"], "delay": "1h"}),
        )
        .await;
    let (status, body) = put_metadata(
        &kiln,
        &id,
        json!({"operations": [
            {"type": "increment", "key": "a", "value": 2},
            {"type": "append", "key": "events", "value": "x"},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["metadata"], json!({"a": 3, "events": ["x"]}));
    let (status, body) = kiln
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/runs/{id}/metadata"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["metadata"], json!({"a": 3, "events": ["x"]}));
    let (status, body) = put_metadata(&kiln, &id, json!({"metadata": {"b": true}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(kiln.run(&id).await["metadata"], json!({"b": true}));

    let huge = "x".repeat(300 * 1024);
    let (status, body) = put_metadata(
        &kiln,
        &id,
        json!({"operations": [{"type": "set", "key": "k", "value": huge}]}),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let (status, body) =
        put_metadata(&kiln, &id, json!({"operations": [{"type": "explode"}]})).await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = put_metadata(&kiln, "run_doesnotexist", json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(kiln.run(&id).await["metadata"], json!({"b": true}));

    let (status, body) = kiln
        .post(
            &format!("/api/v1/runs/{id}/tags"),
            json!({"tags": ["second", "first"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(kiln.run(&id).await["tags"], json!(["first", "second"]));
    let many: Vec<String> = (0..9).map(|n| format!("t{n}")).collect();
    let (status, body) = kiln
        .post(&format!("/api/v1/runs/{id}/tags"), json!({"tags": many}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("at most 10"),
        "{body}"
    );
}
