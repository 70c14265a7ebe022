//! Triggering runs and reading their results, over HTTP and the CLI.

use crate::harness::{Kiln, data_dir};
use serde_json::json;

#[tokio::test]
async fn the_cli_deploys_triggers_and_waits_for_hello_world() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    let deployed = kiln.cli(&["deploy", kiln_fixtures::HELLO_WORLD]);
    assert!(
        deployed.status.success(),
        "{}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    assert!(String::from_utf8_lossy(&deployed.stdout).contains("hello-world"));

    let out = kiln.cli(&[
        "trigger",
        "hello-world",
        "--payload",
        r#"{"name":"Ada"}"#,
        "--wait",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("COMPLETED"), "{stdout}");
    assert!(
        stdout.contains(r#"output: {"message":"Hello, Ada!"}"#),
        "{stdout}"
    );

    let out = kiln.cli(&[
        "trigger",
        "hello-world",
        "--payload",
        r#"{"name":"Bo"}"#,
        "--wait",
        "--json",
    ]);
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["output"], json!({"message": "Hello, Bo!"}));
    let id = run["id"].as_str().unwrap();

    let out = kiln.cli(&["runs", "get", id]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("COMPLETED") && stdout.contains("greeting name=Bo"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_completed_run_has_the_full_retrieve_shape() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::HELLO_WORLD).await;
    let (status, created) = kiln
        .trigger(
            "hello-world",
            json!({"name": "Ada"}),
            json!({"tags": ["t1"]}),
        )
        .await;
    assert_eq!(status, 200);
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("run_"));
    let run = kiln.finished(id).await;
    assert_eq!(run["status"], "COMPLETED");
    assert_eq!(run["output"], json!({"message": "Hello, Ada!"}));
    assert_eq!(run["payload"], json!({"name": "Ada"}));
    assert_eq!(run["tags"], json!(["t1"]));
    for key in [
        "isQueued",
        "isExecuting",
        "isWaiting",
        "isFailed",
        "isCancelled",
        "isTest",
    ] {
        assert_eq!(run[key], false, "{key}");
    }
    assert_eq!(run["isCompleted"], true);
    assert_eq!(run["isSuccess"], true);
    for key in [
        "createdAt",
        "updatedAt",
        "startedAt",
        "finishedAt",
        "version",
        "costInCents",
        "baseCostInCents",
        "durationMs",
        "depth",
        "triggerFunction",
        "relatedRuns",
    ] {
        assert!(!run[key].is_null(), "{key} is missing: {run}");
    }
    assert_eq!(run["attempts"][0]["logs"][0]["message"], "greeting");
    // No optional field is ever null: the SDK's zod schemas reject null.
    assert!(
        run.as_object().unwrap().values().all(|v| !v.is_null()),
        "{run}"
    );
}

#[tokio::test]
async fn an_invalid_payload_is_refused_naming_the_field() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::CSV_EXPORT).await;
    let (status, body) = kiln
        .trigger(
            "export-csv",
            json!({"organizationId": "not-a-uuid", "since": "2026-11-01"}),
            json!({}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("/organizationId") && error.contains("uuid"),
        "{error}"
    );

    let (status, body) = kiln
        .trigger(
            "export-csv",
            json!({"organizationId": "0b6f3a8e-8a57-4bbf-9c43-3f3b8f4d2b11", "format": "xml"}),
            json!({}),
        )
        .await;
    assert_eq!(status, 422);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("since") && error.contains("/format"),
        "{error}"
    );

    let id = kiln
        .trigger_ok("export-csv", json!({"organizationId": "0b6f3a8e-8a57-4bbf-9c43-3f3b8f4d2b11", "since": "2026-11-01", "format": "json"}))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["output"]["format"], "json");
    assert_eq!(run["output"]["rows"], 3);

    // A task no deployment has yet: the run waits for one (PENDING_VERSION).
    let (status, body) = kiln.trigger("no-such-task", json!({}), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let pending = kiln.run(body["id"].as_str().unwrap()).await;
    assert_eq!(pending["status"], "PENDING_VERSION");
    let (status, _) = kiln
        .request(reqwest::Method::GET, "/api/v3/runs/run_doesnotexist", None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn task_errors_panics_and_refused_imports_end_as_they_should() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;

    let panicked = kiln.trigger_ok("panic", json!({"message": "kaboom"})).await;
    let aborted = kiln
        .trigger_ok("fail", json!({"message": "no retry", "abort": true}))
        .await;
    let retried = kiln
        .trigger_ok("fail", json!({"message": "try again"}))
        .await;
    let refused = kiln.trigger_ok("refused-import", json!(null)).await;
    let slept = kiln.trigger_ok("sleep", json!({"ms": 300})).await;

    let run = kiln.finished(&panicked).await;
    assert_eq!(run["status"], "FAILED");
    assert_eq!(run["error"]["name"], "Panic");
    assert!(
        run["error"]["message"].as_str().unwrap().contains("kaboom"),
        "{run}"
    );

    let run = kiln.finished(&aborted).await;
    assert_eq!(run["status"], "FAILED");
    assert_eq!(run["attemptCount"], 1);

    let run = kiln.finished(&retried).await;
    assert_eq!(run["status"], "FAILED");
    assert_eq!(
        run["attemptCount"], 2,
        "the task's policy allows 2 attempts: {run}"
    );
    assert_eq!(run["attempts"][0]["error"]["message"], "try again");

    let run = kiln.finished(&refused).await;
    assert_eq!(run["status"], "COMPLETED");
    let error = run["output"]["error"].as_str().unwrap();
    assert!(
        error.contains("Invalid") && error.contains("tag"),
        "{error}"
    );

    let run = kiln.finished(&slept).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert!(run["output"]["waitedMs"].as_u64().unwrap() >= 300, "{run}");
}

#[tokio::test]
async fn sdk_payload_packets_are_understood() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let body = json!({
        "payload": json!({"json": {"n": 1}, "meta": {}}).to_string(),
        "options": {"payloadType": "application/super+json"}
    });
    let (status, created) = kiln
        .request(
            reqwest::Method::POST,
            "/api/v1/tasks/echo/trigger",
            Some(body.to_string().into()),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let run = kiln.finished(created["id"].as_str().unwrap()).await;
    assert_eq!(run["output"]["payload"], json!({"n": 1}));
    let (status, body) = kiln
        .request(
            reqwest::Method::POST,
            "/api/v1/tasks/echo/trigger",
            Some("{not json".into()),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Invalid request body")
    );
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_run_within_its_ttl_and_a_new_one_after() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::HELLO_WORLD).await;
    // What the official SDK sends for idempotencyKey "order-42": its SHA-256,
    // with the key itself in idempotencyKeyOptions.
    let options = json!({
        "idempotencyKey": "7d7e7c0c1f3f4a8a9a3e8f0a4b7d2c1e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c",
        "idempotencyKeyOptions": {"key": "order-42", "scope": "run"},
        "idempotencyKeyTTL": "2s",
    });
    let (status, first) = kiln
        .trigger("hello-world", json!({"name": "Ada"}), options.clone())
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["isCached"], false);
    let (_, second) = kiln
        .trigger("hello-world", json!({"name": "Ada"}), options.clone())
        .await;
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["isCached"], true);
    let run = kiln.finished(first["id"].as_str().unwrap()).await;
    assert_eq!(run["idempotencyKey"], "order-42");
    // A key that has expired makes a new run.
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let (_, third) = kiln
        .trigger("hello-world", json!({"name": "Ada"}), options)
        .await;
    assert_ne!(third["id"], first["id"]);
    assert_eq!(third["isCached"], false);
    // A bad TTL is refused.
    let (status, error) = kiln
        .trigger(
            "hello-world",
            json!({"name": "Ada"}),
            json!({"idempotencyKey": "k", "idempotencyKeyTTL": "soon"}),
        )
        .await;
    assert_eq!(status, 400, "{error}");
}

#[tokio::test]
async fn replay_makes_a_new_run_with_the_same_payload_or_overrides() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let first = kiln
        .trigger_with(
            "echo",
            json!({"n": 1}),
            json!({"tags": ["a"], "metadata": {"m": 1}}),
        )
        .await;
    kiln.finished(&first).await;

    let (status, body) = kiln
        .post(&format!("/api/v1/runs/{first}/replay"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let again = body["id"].as_str().unwrap().to_string();
    assert_ne!(again, first);
    let run = kiln.finished(&again).await;
    assert_eq!(run["output"]["payload"], json!({"n": 1}), "{run}");
    assert_eq!(run["tags"], json!(["a"]));
    assert_eq!(run["metadata"], json!({"m": 1}));

    let (status, body) = kiln
        .post(
            &format!("/api/v1/runs/{first}/replay"),
            json!({"payload": "{\"n\":2}", "tags": ["b"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let run = kiln.finished(body["id"].as_str().unwrap()).await;
    assert_eq!(run["output"]["payload"], json!({"n": 2}), "{run}");
    assert_eq!(run["tags"], json!(["b"]));

    // A replay is admitted like a trigger: its idempotency key answers a
    // second replay with the first one's run.
    let keyed = || async {
        let (status, body) = kiln
            .post(
                &format!("/api/v1/runs/{first}/replay"),
                json!({"idempotencyKey": "replay-once"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["id"].as_str().unwrap().to_string()
    };
    let once = keyed().await;
    assert_eq!(
        keyed().await,
        once,
        "the key's run answers the second replay"
    );

    let (status, _) = kiln
        .post("/api/v1/runs/run_doesnotexist/replay", json!({}))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_retried_request_answers_with_the_run_its_first_attempt_made() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let client = reqwest::Client::new();
    let trigger = |request_key: &'static str| {
        client
            .post(format!("{}/api/v1/tasks/echo/trigger", kiln.url))
            .bearer_auth(crate::harness::KEY)
            .header("content-type", "application/json")
            .header("x-trigger-request-idempotency-key", request_key)
            .body(r#"{"payload":"{\"z\":1,\"a\":2}","options":{"payloadType":"application/json"}}"#)
            .send()
    };
    let first: serde_json::Value = trigger("req-1").await.unwrap().json().await.unwrap();
    // The SDK's automatic retry of the same call, after a lost response.
    let retried: serde_json::Value = trigger("req-1").await.unwrap().json().await.unwrap();
    assert_eq!(retried["id"], first["id"]);
    assert_eq!(retried["isCached"], false);
    // Another call is another run.
    let other: serde_json::Value = trigger("req-2").await.unwrap().json().await.unwrap();
    assert_ne!(other["id"], first["id"]);
    let (_, runs) = kiln
        .request(
            reqwest::Method::GET,
            "/api/v1/runs?filter[taskIdentifier]=echo",
            None,
        )
        .await;
    assert_eq!(runs["data"].as_array().map(Vec::len), Some(2), "{runs}");

    // Object keys keep the order the user gave them, in and out.
    let id = first["id"].as_str().unwrap();
    let run = kiln.finished(id).await;
    let response = client
        .get(format!("{}/api/v3/runs/{id}", kiln.url))
        .bearer_auth(crate::harness::KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert!(
        response.contains(r#""payload":{"z":1,"a":2}"#),
        "{response}"
    );
    assert!(
        response.contains(r#""output":{"payload":{"z":1,"a":2}"#),
        "{response}"
    );
}

#[tokio::test]
async fn the_openapi_document_is_served_and_names_only_real_routes() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    let http = reqwest::Client::new();
    let served: serde_json::Value = http
        .get(format!("{}/api/openapi.json", kiln.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kept: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(served, kept, "docs/openapi.json is what the server serves");
    // Every documented operation reaches a handler (or the auth in front of
    // it), never the fallback for unknown routes.
    let paths = served["paths"].as_object().unwrap();
    for (path, operations) in paths {
        let concrete = path
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        for method in operations.as_object().unwrap().keys() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let answer = http
                .request(method.clone(), format!("{}{concrete}", kiln.url))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(
                !answer.contains("No such route"),
                "{method} {path}: {answer}"
            );
        }
    }
    assert!(paths.len() >= 40, "{}", paths.len());
}

#[tokio::test]
async fn runs_watch_follows_a_run_live_until_it_is_final() {
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &["--warm-wait-ms", "0"]);
    kiln.deploy(kiln_fixtures::COUNTDOWN).await;
    let id = kiln
        .trigger_ok("countdown", json!({"steps": 2, "wait_ms": 300}))
        .await;
    // Started while the run executes or waits; returns once it is final
    // (within two minutes, or the test fails rather than hangs).
    let watching = tokio::process::Command::new(crate::harness::kiln_bin())
        .args(["runs", "watch", &id])
        .env("KILN_API_URL", &kiln.url)
        .env("KILN_SECRET_KEY", crate::harness::KEY)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), watching)
        .await
        .expect("kiln runs watch returns once the run is final")
        .expect("the CLI runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{id}  countdown  COMPLETED")),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("drew").count(),
        2,
        "each log line once: {stdout}"
    );
    assert!(stdout.contains(&format!("{id}  output: ")), "{stdout}");
    // An id that is no run is an error, not a wait.
    let missing = kiln.cli(&["runs", "watch", "run_doesnotexist"]);
    assert!(!missing.status.success());
}
