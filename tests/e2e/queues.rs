//! Queues: declared limits, concurrency-key lanes, a total cap, fair turns,
//! priority, pause and resume (kept across a restart), rate limits, and a
//! parent on a limit-1 queue waiting on a child on the same queue.
//!
//! Ordering tests pause the queue, trigger, then resume it: every run is
//! queued before any starts, so the start order is the scheduler's alone.

use crate::harness::{Kiln, data_dir};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

async fn queue(kiln: &Kiln, path: &str) -> Value {
    let (status, body) = kiln
        .request(Method::GET, &format!("/api/v1/queues/{path}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn set_paused(kiln: &Kiln, name: &str, paused: bool) -> Value {
    let action = if paused { "pause" } else { "resume" };
    let (status, body) = kiln
        .post(
            &format!("/api/v1/queues/{name}/pause"),
            json!({ "action": action }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], paused, "{body}");
    body
}

/// Triggers `task` holding its slot for `ms`, in the lane of `key`.
async fn trigger_keyed(kiln: &Kiln, task: &str, ms: u64, key: &str) -> String {
    kiln.trigger_with(task, json!({ "ms": ms }), json!({ "concurrencyKey": key }))
        .await
}

/// `(startedMs, endedMs)` of each finished run, in start order.
async fn spans(kiln: &Kiln, ids: &[String]) -> Vec<(u64, u64, String)> {
    let mut spans = Vec::new();
    for id in ids {
        let run = kiln.finished(id).await;
        assert_eq!(run["status"], "COMPLETED", "{run}");
        let out = &run["output"];
        spans.push((
            out["startedMs"].as_u64().unwrap(),
            out["endedMs"].as_u64().unwrap(),
            id.clone(),
        ));
    }
    spans.sort();
    spans
}

#[tokio::test]
async fn a_limit_holds_per_concurrency_key_and_keys_run_side_by_side() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    let deployed = kiln.deploy(kiln_fixtures::PROBE).await;
    let declared: Vec<&str> = deployed["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q.as_str().unwrap())
        .collect();
    for name in [
        "probe-one",
        "probe-fair",
        "probe-rate",
        "probe-spare",
        "task/own-limit",
    ] {
        assert!(declared.contains(&name), "{declared:?}");
    }
    set_paused(&kiln, "probe-one", true).await;
    let mut acme = Vec::new();
    for _ in 0..3 {
        acme.push(trigger_keyed(&kiln, "lane-hold", 300, "acme").await);
    }
    let bolt = trigger_keyed(&kiln, "lane-hold", 300, "bolt").await;
    let q = queue(&kiln, "probe-one").await;
    assert_eq!(
        (q["queued"].as_u64(), q["running"].as_u64()),
        (Some(4), Some(0)),
        "{q}"
    );
    assert_eq!(q["concurrencyLimit"], 1);
    assert_eq!(q["type"], "custom");
    assert_eq!(q["concurrencyKeys"], 2);
    assert_eq!(
        q["keys"][0],
        json!({"key": "acme", "queued": 3, "running": 0})
    );
    // Paused: nothing starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(kiln.run(&bolt).await["status"], "QUEUED");
    set_paused(&kiln, "probe-one", false).await;

    let acme = spans(&kiln, &acme).await;
    for pair in acme.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "acme's runs overlapped: {acme:?}");
    }
    let bolt = spans(&kiln, &[bolt]).await;
    assert!(
        bolt[0].0 < acme[0].1,
        "bolt's lane waited for acme's: {bolt:?} {acme:?}"
    );

    // A task's own queue with concurrency_limit = 2.
    let mut own = Vec::new();
    for _ in 0..4 {
        own.push(kiln.trigger_ok("own-limit", json!({"ms": 300})).await);
    }
    let own = spans(&kiln, &own).await;
    for (i, (start, _, _)) in own.iter().enumerate() {
        let at_once = own
            .iter()
            .filter(|(s, e, _)| s <= start && *start < *e)
            .count();
        assert!(at_once <= 2, "{at_once} at once at run {i}: {own:?}");
    }
    let q = queue(&kiln, "own-limit?type=task").await;
    assert_eq!(
        (q["name"].as_str(), q["type"].as_str()),
        (Some("own-limit"), Some("task"))
    );
    assert_eq!(q["concurrencyLimit"], 2);
}

#[tokio::test]
async fn keys_take_turns_and_priority_is_a_head_start() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    // probe-fair runs one at a time in all: its start order is visible.
    set_paused(&kiln, "probe-fair", true).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(trigger_keyed(&kiln, "fair-hold", 20, "heavy").await);
    }
    let light = trigger_keyed(&kiln, "fair-hold", 20, "light").await;
    ids.push(light.clone());
    set_paused(&kiln, "probe-fair", false).await;
    let order = spans(&kiln, &ids).await;
    let light_at = order.iter().position(|(_, _, id)| *id == light).unwrap();
    assert!(
        light_at <= 1,
        "the light key started at position {light_at} behind the heavy backlog"
    );
    for pair in order.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "the total cap of 1 was passed: {order:?}"
        );
    }

    set_paused(&kiln, "probe-fair", true).await;
    let first = kiln.trigger_ok("fair-hold", json!({"ms": 20})).await;
    let second = kiln.trigger_ok("fair-hold", json!({"ms": 20})).await;
    let urgent = kiln
        .trigger_with("fair-hold", json!({"ms": 20}), json!({"priority": 60}))
        .await;
    assert_eq!(kiln.run(&urgent).await["priority"], 60.0);
    set_paused(&kiln, "probe-fair", false).await;
    let order: Vec<String> = spans(&kiln, &[first.clone(), second.clone(), urgent.clone()])
        .await
        .into_iter()
        .map(|(_, _, id)| id)
        .collect();
    assert_eq!(order, [urgent, first, second]);
}

#[tokio::test]
async fn a_parent_waiting_on_a_child_in_its_limit_one_queue_completes() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let id = kiln.trigger_ok("lane-parent", json!({})).await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert!(run["output"]["child"]["endedMs"].is_u64(), "{run}");
    assert_eq!(run["queue"]["name"], "probe-one");
}

#[tokio::test]
async fn triggers_pick_declared_queues_only() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let (status, body) = kiln
        .trigger("echo", json!({}), json!({"queue": {"name": "nope"}}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not declared"),
        "{body}"
    );
    let (status, body) = kiln
        .trigger(
            "echo",
            json!({}),
            json!({"queue": {"name": "probe-spare", "concurrencyLimit": 5}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("declared in the bundle"),
        "{body}"
    );

    let id = kiln
        .trigger_with("echo", json!({}), json!({"queue": {"name": "probe-spare"}}))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["queue"]["name"], "probe-spare", "{run}");
    let (status, page) = kiln
        .request(
            Method::GET,
            "/api/v1/runs?filter%5Bqueue%5D=probe-spare",
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["data"].as_array().unwrap().len(), 1, "{page}");

    let spare = queue(&kiln, "probe-spare").await;
    assert_eq!(spare["concurrencyLimit"], 3);
    let by_id = queue(&kiln, spare["id"].as_str().unwrap()).await;
    assert_eq!(by_id["name"], "probe-spare");
    let (status, _) = kiln
        .request(Method::GET, "/api/v1/queues/missing", None)
        .await;
    assert_eq!(status, 404);
    let (status, list) = kiln
        .request(Method::GET, "/api/v1/queues?perPage=2", None)
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert!(list["pagination"]["count"].as_u64().unwrap() >= 5, "{list}");
}

#[tokio::test]
async fn a_rate_limited_queue_spaces_its_starts() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(kiln.trigger_ok("rated", json!({})).await);
    }
    let starts: Vec<u64> = spans(&kiln, &ids).await.iter().map(|s| s.0).collect();
    // Two starts per 2 s: the 3rd and 4th wait for the window to move.
    // (The guest reads its clock a little after the dispatcher starts it,
    // and that delay varies on a loaded machine: leave it 500 ms.)
    assert!(starts[2] - starts[0] >= 1_500, "{starts:?}");
    assert!(starts[3] - starts[1] >= 1_500, "{starts:?}");
    assert!(
        starts[1] - starts[0] < 1_500,
        "the first two start at once: {starts:?}"
    );
}

#[tokio::test]
async fn a_pause_survives_a_restart_and_the_cli_controls_it() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let out = kiln.cli(&["queues", "pause", "task/echo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("PAUSED"));
    let id = kiln.trigger_ok("echo", json!({"n": 1})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(kiln.run(&id).await["status"], "QUEUED");
    kiln.kill();

    let kiln = Kiln::start(dir.path());
    assert_eq!(queue(&kiln, "task%2Fecho").await["paused"], true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(kiln.run(&id).await["status"], "QUEUED");
    let out = kiln.cli(&["queues", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("task/echo") && l.contains("queued 1") && l.contains("PAUSED")),
        "{listed}"
    );
    let out = kiln.cli(&["queues", "resume", "task/echo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(kiln.finished(&id).await["status"], "COMPLETED");
    let out = kiln.cli(&["queues", "show", "probe-one"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("probe-one"));
}
