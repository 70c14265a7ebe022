//! `PENDING_VERSION`: runs triggered before a deployment has their task wait
//! for the deploy that brings it, across restarts; `lockToVersion` pins a
//! run to a deployed version.

use crate::harness::{Kiln, data_dir};
use serde_json::json;

#[tokio::test]
async fn runs_wait_for_the_deploy_that_brings_their_task() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    // Nothing is deployed: the runs wait.
    let echo = kiln.trigger_ok("echo", json!({"z": 1, "a": 2})).await;
    let run = kiln.run(&echo).await;
    assert_eq!(run["status"], "PENDING_VERSION", "{run}");
    assert_eq!(run["isQueued"], true);
    assert!(run.get("version").is_none(), "{run}");
    let refused = kiln.trigger_ok("sleep", json!({"ms": "soon"})).await;
    let canceled = kiln.trigger_ok("echo", json!({"n": 2})).await;
    let delayed = kiln
        .trigger_with("echo", json!({"later": true}), json!({"delay": "1h"}))
        .await;
    let (status, _) = kiln
        .post(&format!("/api/v2/runs/{canceled}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);
    // A deploy without the task leaves them waiting, across a restart.
    kiln.deploy(kiln_fixtures::HELLO_WORLD).await;
    assert_eq!(kiln.run(&echo).await["status"], "PENDING_VERSION");
    let unknown = kiln.trigger_ok("no-such-task-yet", json!({})).await;
    drop(kiln);
    let kiln = Kiln::start(dir.path());
    assert_eq!(kiln.run(&echo).await["status"], "PENDING_VERSION");

    // The deploy that brings the tasks starts them, or fails the one whose
    // payload the task's schema refuses, with the schema's complaint.
    let deployed = kiln.deploy(kiln_fixtures::PROBE).await;
    assert_eq!(deployed["pendingRunsReleased"], 3, "{deployed}");
    // A delay counts from the trigger, not from the deploy.
    let run = kiln.run(&delayed).await;
    assert_eq!(run["status"], "DELAYED", "{run}");
    let ms = |field: &str| {
        time::OffsetDateTime::parse(
            run[field].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
        .unix_timestamp_nanos()
            / 1_000_000
    };
    assert_eq!(ms("delayedUntil") - ms("createdAt"), 3_600_000, "{run}");
    let run = kiln.finished(&echo).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["output"]["payload"], json!({"z": 1, "a": 2}));
    assert_eq!(run["version"], deployed["version"]);
    let run = kiln.finished(&refused).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    assert!(
        run["error"]["message"].as_str().unwrap().contains("ms"),
        "{run}"
    );
    assert_eq!(kiln.run(&canceled).await["status"], "CANCELED");
    assert_eq!(kiln.run(&unknown).await["status"], "PENDING_VERSION");
}

#[tokio::test]
async fn lock_to_version_pins_a_run_to_a_deployed_version() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    let first = kiln.deploy(kiln_fixtures::PROBE).await;
    let version = first["version"].as_str().unwrap().to_string();
    kiln.deploy(kiln_fixtures::HELLO_WORLD).await;
    // The current deployment lacks `echo`; the locked version has it.
    let id = kiln
        .trigger_with(
            "echo",
            json!({"locked": true}),
            json!({"lockToVersion": version}),
        )
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["version"], version.as_str());
    // A replay may name the version too.
    let (status, replay) = kiln
        .post(
            &format!("/api/v1/runs/{id}/replay"),
            json!({"version": version}),
        )
        .await;
    assert_eq!(status, 200, "{replay}");
    let replayed = kiln.finished(replay["id"].as_str().unwrap()).await;
    assert_eq!(replayed["version"], version.as_str(), "{replayed}");
    let (status, body) = kiln
        .trigger("echo", json!({}), json!({"lockToVersion": "19990101.1"}))
        .await;
    assert_eq!(status, 422, "{body}");
    let current = kiln
        .run(&kiln.trigger_ok("hello-world", json!({"name": "Ada"})).await)
        .await;
    let (status, body) = kiln
        .trigger(
            "hello-world",
            json!({"name": "Ada"}),
            json!({"lockToVersion": version}),
        )
        .await;
    assert_eq!(status, 404, "the locked version lacks the task: {body}");
    assert_ne!(current["version"], version.as_str());
}

#[tokio::test]
async fn a_pending_run_expires_when_its_ttl_runs_out_before_a_deploy() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    let id = kiln
        .trigger_with("echo", json!({}), json!({"ttl": "1s"}))
        .await;
    assert_eq!(kiln.run(&id).await["status"], "PENDING_VERSION");
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "EXPIRED", "{run}");
    let deployed = kiln.deploy(kiln_fixtures::PROBE).await;
    assert_eq!(deployed["pendingRunsReleased"], 0, "{deployed}");
    assert_eq!(kiln.run(&id).await["status"], "EXPIRED");
}
