//! Retention: with `kiln serve --retention 2s`, finished runs disappear
//! with everything that belongs to them (journal, child index, batch), a
//! trigger with the idempotency key of a deleted run makes a new run, the API answers 404, and the store holds
//! far less than before.

use crate::harness::{Kiln, data_dir};
use kiln_store::{Backend, SledBackend};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// Every key and its value's size, read from the store of a stopped server.
fn store_contents(dir: &Path) -> Vec<(String, usize)> {
    let backend = SledBackend::open(&dir.join("store")).expect("the store opens");
    backend
        .scan_prefix(b"")
        .expect("the store reads")
        .into_iter()
        .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v.len()))
        .collect()
}

/// Bytes of everything but the deployed bundle (its record and its chunks).
fn bytes(contents: &[(String, usize)]) -> usize {
    contents
        .iter()
        .filter(|(k, _)| !k.starts_with("bundle/") && !k.starts_with('\u{FFFD}'))
        .map(|(k, v)| k.len() + v)
        .sum()
}

/// Keys that name one of `runs`.
fn keys_of<'a>(contents: &'a [(String, usize)], runs: &[String]) -> Vec<&'a str> {
    contents
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| runs.iter().any(|r| k.contains(r.as_str())))
        .collect()
}

#[tokio::test]
async fn finished_runs_expire_with_everything_that_belongs_to_them() {
    let dir = data_dir();
    // First kept for ever, to see what the runs leave.
    let kiln = Kiln::start_with(
        dir.path(),
        &["--retention", "forever", "--warm-wait-ms", "0"],
    );
    kiln.deploy(kiln_fixtures::PROBE).await;
    let mut ids = Vec::new();
    // A wait that suspends the guest.
    ids.push(kiln.trigger_ok("sleep", json!({"ms": 200})).await);
    // An idempotency key.
    ids.push(
        kiln.trigger_with("echo", json!({"n": 1}), json!({"idempotencyKey": "once"}))
            .await,
    );
    // A batch of children, their index and their journals.
    let parent = kiln
        .trigger_ok("parent", json!({"mode": "batch", "children": 3}))
        .await;
    ids.push(parent.clone());
    for id in ids.clone() {
        assert_eq!(kiln.finished(&id).await["status"], "COMPLETED", "{id}");
    }
    let run = kiln.finished(&parent).await;
    for child in run["output"]["ids"].as_array().expect("child ids") {
        ids.push(child.as_str().expect("an id").to_string());
    }
    assert_eq!(ids.len(), 6);
    kiln.kill();

    let before = store_contents(dir.path());
    let owned = keys_of(&before, &ids);
    // (Snapshot layers go when an attempt ends; retention deletes any left.)
    for space in ["run/", "journal/", "child/"] {
        assert!(
            owned.iter().any(|k| k.starts_with(space)),
            "the runs have nothing in {space} before retention: {owned:?}"
        );
    }
    for space in ["idem/", "batch/"] {
        assert!(
            before.iter().any(|(k, _)| k.starts_with(space)),
            "nothing in {space} before retention"
        );
    }

    // Now with a retention of two seconds.
    let kiln = Kiln::start_with(dir.path(), &["--retention", "2s"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        loop {
            let (status, _) = kiln
                .request(reqwest::Method::GET, &format!("/api/v3/runs/{id}"), None)
                .await;
            if status == 404 {
                break;
            }
            assert!(Instant::now() < deadline, "run {id} was never deleted");
            tokio::task::yield_now().await;
        }
        let (status, _) = kiln
            .request(
                reqwest::Method::GET,
                &format!("/api/v1/runs/{id}/journal"),
                None,
            )
            .await;
        assert_eq!(status, 404, "the journal of {id} is gone too");
    }
    // The idempotency key's run is gone: the same key makes a new run.
    let again = kiln
        .trigger_with("echo", json!({"n": 1}), json!({"idempotencyKey": "once"}))
        .await;
    assert!(!ids.contains(&again));
    let again_run: Value = kiln.finished(&again).await;
    assert_eq!(again_run["status"], "COMPLETED");
    kiln.kill();

    let after = store_contents(dir.path());
    let left = keys_of(&after, &ids);
    assert!(left.is_empty(), "keys of deleted runs are left: {left:?}");
    for space in ["snap/", "batch/", "batch-item/", "child/", "journal/"] {
        let kept: Vec<&str> = after
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| k.starts_with(space) && !k.contains(again.as_str()))
            .collect();
        assert!(kept.is_empty(), "{space} still holds {kept:?}");
    }
    // Less than half of it is left, not counting the run made since.
    let since: Vec<(String, usize)> = after
        .iter()
        .filter(|(k, _)| !k.contains(again.as_str()))
        .cloned()
        .collect();
    assert!(
        bytes(&since) < bytes(&before) / 2,
        "the store held {} bytes before and {} after, the run made since aside",
        bytes(&before),
        bytes(&since)
    );
}

#[tokio::test]
async fn a_parent_that_waits_on_a_child_retention_deleted_gets_a_failed_outcome() {
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &["--retention", "1s"]);
    kiln.deploy(kiln_fixtures::PROBE).await;
    // The child finishes at once and is deleted a second later; the parent
    // waits on it only after six seconds (suspended meanwhile).
    let parent = kiln.trigger_ok("late-wait", json!({"ms": 6_000})).await;
    let run = kiln.finished(&parent).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["output"]["ok"], false, "{run}");
    assert_eq!(run["output"]["name"], "RunDeleted", "{run}");
    let message = run["output"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("longer ago than the server keeps runs"),
        "{run}"
    );
}

/// The deployments as the API lists them, oldest first.
async fn versions(kiln: &Kiln) -> Vec<Value> {
    let (status, body) = kiln
        .request(reqwest::Method::GET, "/api/v1/deployments", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let mut all = body["data"].as_array().expect("a list").clone();
    all.reverse();
    all
}

/// Waits until `path` is gone (a collected version's artifact is deleted
/// just after its record says it was collected).
async fn gone(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} was never deleted",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the `index`th version (oldest first) is collected.
async fn collected(kiln: &Kiln, index: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = versions(kiln).await;
        if all[index]["collected"] == true {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "version {index} was never collected: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn versions_no_unfinished_run_is_on_are_retired_then_collected() {
    let dir = data_dir();
    let artifact = |hash: &Value| {
        dir.path()
            .join("compiled")
            .join(format!("{}.cwasm", hash.as_str().expect("a hash")))
    };
    let kiln = Kiln::start_with(dir.path(), &["--retention", "2s", "--warm-wait-ms", "0"]);
    kiln.deploy(kiln_fixtures::HELLO_WORLD).await;
    kiln.deploy(kiln_fixtures::PROBE).await;
    // A run on the second version, waiting on a token while the sweeper
    // works (a timer would let a slow machine see it finish and expire).
    let (status, token) = kiln
        .request(
            reqwest::Method::POST,
            "/api/v1/waitpoints/tokens",
            Some(json!({"timeout": "1h"}).to_string().into()),
        )
        .await;
    assert_eq!(status, 200, "{token}");
    let token = token["id"].as_str().expect("a token id").to_string();
    let sleeping = kiln
        .trigger_ok("wait-token", json!({ "token": token }))
        .await;
    kiln.deploy(kiln_fixtures::COUNTDOWN).await;

    // The first version: retired, then collected with its artifact.
    let all = collected(&kiln, 0).await;
    assert!(all[0]["retiredAt"].is_string(), "{all:?}");
    gone(&artifact(&all[0]["contentHash"])).await;
    // The second is kept while its run waits; the current one always is.
    assert_ne!(kiln.run(&sleeping).await["status"], "COMPLETED");
    assert_eq!(all[1]["retiredAt"], Value::Null, "{all:?}");
    assert!(artifact(&all[1]["contentHash"]).exists());
    assert_eq!(all[2]["retiredAt"], Value::Null, "{all:?}");
    // A retired version takes no new runs.
    let (status, body) = kiln
        .trigger(
            "hello-world",
            json!({"name": "x"}),
            json!({"lockToVersion": all[0]["version"]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("retired"), "{body}");

    // The run on the second version finishes on it; then that version goes.
    let (status, body) = kiln
        .request(
            reqwest::Method::POST,
            &format!("/api/v1/waitpoints/tokens/{token}/complete"),
            Some(json!({"data": "done"}).to_string().into()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let run = kiln.finished(&sleeping).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let all = collected(&kiln, 1).await;
    gone(&artifact(&all[1]["contentHash"])).await;
    assert!(artifact(&all[2]["contentHash"]).exists());
    assert_eq!(all[2]["collected"], false);
    kiln.kill();

    // The collected bundles are gone from the store; the current one stays.
    let contents = store_contents(dir.path());
    let bundles: Vec<&str> = contents
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("bundle/"))
        .collect();
    let current = format!("bundle/{}", all[2]["contentHash"].as_str().expect("a hash"));
    assert_eq!(bundles, vec![current.as_str()]);
}
