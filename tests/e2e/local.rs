//! `LocalRuns`: triggering and awaiting runs in-process, the way programs
//! that embed Kiln (and the engine bench) do, against a server opened in
//! this test's process.

use kiln_server::{LocalError, Server, ServerConfig};
use kiln_types::RunStatus;
use std::time::Duration;

const KEY: &str = "tr_dev_sk_localRunsKey000000000000";

/// A wait for a run's end long enough that one ending at its timeout, not
/// at the run's end, shows.
const LONG_WAIT: Duration = Duration::from_secs(120);

/// The JSON answer to `request`, made with the test's key.
async fn answer(request: reqwest::RequestBuilder) -> serde_json::Value {
    request
        .bearer_auth(KEY)
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json")
}

/// Checks a wait for a run's end that began at `waited` ended with the run,
/// well before [`LONG_WAIT`] ran out.
fn ended_with_the_run(waited: std::time::Instant, what: &str) {
    assert!(
        waited.elapsed() < LONG_WAIT / 2,
        "{what} took {:?}",
        waited.elapsed()
    );
}

#[tokio::test]
async fn local_runs_trigger_check_the_schema_and_wait_for_the_end() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut config = ServerConfig::new(
        dir.path().to_path_buf(),
        "127.0.0.1:0".parse().expect("an address"),
    );
    config.secret_key = Some(KEY.into());
    let server = Server::open(config).await.expect("the server opens");
    let url = format!("http://{}", server.local_addr().expect("an address"));
    let runs = server
        .local_runs()
        .expect("a server on sled runs tasks itself");
    let serving = tokio::spawn(server.serve());

    // Nothing is deployed yet.
    let refused = runs
        .trigger("hello-world", &serde_json::json!({ "name": "Ada" }))
        .await;
    assert!(
        matches!(refused, Err(LocalError::NotFound(_))),
        "{refused:?}"
    );

    for bundle in [kiln_fixtures::HELLO_WORLD, kiln_fixtures::CSV_EXPORT] {
        let deployed = reqwest::Client::new()
            .post(format!("{url}/api/v1/deployments"))
            .bearer_auth(KEY)
            .body(kiln_fixtures::read(bundle))
            .send()
            .await
            .expect("deploys");
        assert!(deployed.status().is_success(), "{}", deployed.status());
        if bundle == kiln_fixtures::HELLO_WORLD {
            let id = runs
                .trigger("hello-world", &serde_json::json!({ "name": "Ada" }))
                .await
                .expect("triggers");
            // The wait ends with the run, not with its timeout: the store's
            // listener tells it of the end once the end is durable.
            let waited = std::time::Instant::now();
            let status = runs
                .wait_final(&id, LONG_WAIT)
                .await
                .expect("reads the run");
            assert_eq!(status, Some(RunStatus::Completed));
            ended_with_the_run(waited, "the wait for the run's end");
            // The run is the API's too.
            let http = reqwest::Client::new();
            let run = answer(http.get(format!("{url}/api/v3/runs/{id}"))).await;
            assert_eq!(run["status"], "COMPLETED");
            assert_eq!(run["output"]["message"], "Hello, Ada!", "{run}");

            // So does a retrieve's `?wait=` over HTTP.
            let triggered = answer(
                http.post(format!("{url}/api/v1/tasks/hello-world/trigger"))
                    .json(&serde_json::json!({ "payload": { "name": "Grace" } })),
            )
            .await;
            let id = triggered["id"].as_str().expect("a run id");
            let waited = std::time::Instant::now();
            let wait = LONG_WAIT.as_millis();
            let run = answer(http.get(format!("{url}/api/v3/runs/{id}?wait={wait}"))).await;
            assert_eq!(run["status"], "COMPLETED", "{run}");
            ended_with_the_run(waited, "the retrieve's wait for the run's end");
        }
    }

    // The schema's complaint, as the trigger route gives it.
    let invalid = runs
        .trigger(
            "export-csv",
            &serde_json::json!({ "organizationId": "not a uuid" }),
        )
        .await;
    match invalid {
        Err(LocalError::Invalid(message)) => assert!(!message.is_empty()),
        other => panic!("expected the schema's complaint, got {other:?}"),
    }
    // A well-formed id of no run, and a malformed one.
    let absent = kiln_types::RunId::generate(0).to_string();
    for id in [absent.as_str(), "not-a-run-id"] {
        assert_eq!(
            runs.wait_final(id, Duration::from_millis(10))
                .await
                .expect("reads"),
            None
        );
    }
    serving.abort();
}
