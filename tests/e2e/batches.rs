//! The two-phase v3 batch API: open a batch, stream its items as NDJSON
//! (re-sends deduplicated by index), read it back.

use crate::harness::{Kiln, data_dir};
use serde_json::{Value, json};

async fn send_items(kiln: &Kiln, batch: &str, items: &[Value]) -> (u16, Value) {
    let ndjson: String = items.iter().map(|i| format!("{i}\n")).collect();
    kiln.request(
        reqwest::Method::POST,
        &format!("/api/v3/batches/{batch}/items"),
        Some(ndjson.into()),
    )
    .await
}

/// `GET /api/v2/batches/{id}`, asserting success.
async fn read_batch(kiln: &Kiln, batch: &str) -> Value {
    let (status, read) = kiln
        .request(
            reqwest::Method::GET,
            &format!("/api/v2/batches/{batch}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{read}");
    read
}

fn item(index: u32, task: &str, n: u32) -> Value {
    json!({
        "index": index,
        "task": task,
        "payload": json!({"n": n}).to_string(),
        "options": {"payloadType": "application/json"},
    })
}

#[tokio::test]
async fn a_thousand_items_stream_in_twice_and_make_one_run_each() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let (status, body) = kiln
        .post("/api/v3/batches", json!({"runCount": 1000}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["isCached"], false);
    let batch = body["id"].as_str().unwrap().to_string();
    assert!(batch.starts_with("batch_"));

    let items: Vec<Value> = (0..1000).map(|i| item(i, "echo", i)).collect();
    // The first stream breaks off after 600 items; the SDK re-sends all.
    let (status, body) = send_items(&kiln, &batch, &items[..600]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["itemsAccepted"], 600);
    assert_eq!(body["sealed"], false);
    let pending = read_batch(&kiln, &batch).await;
    assert_eq!(pending["status"], "PENDING", "{pending}");
    let (status, body) = send_items(&kiln, &batch, &items).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["itemsAccepted"], 400, "{body}");
    assert_eq!(body["itemsDeduplicated"], 600, "{body}");
    assert_eq!(body["sealed"], true);
    assert_eq!(body["expectedCount"], 1000);

    let read = read_batch(&kiln, &batch).await;
    assert_eq!(read["status"], "COMPLETED", "{read}");
    assert_eq!(read["runCount"], 1000);
    let runs = read["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1000);
    for (n, run) in [(0, &runs[0]), (999, &runs[999])] {
        let run = kiln.finished(run.as_str().unwrap()).await;
        assert_eq!(run["output"]["payload"]["n"], n, "{run}");
    }
}

#[tokio::test]
async fn failed_items_are_reported_and_bad_streams_refused() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let (_, body) = kiln.post("/api/v3/batches", json!({"runCount": 2})).await;
    let batch = body["id"].as_str().unwrap().to_string();
    let (status, body) = send_items(&kiln, &batch, &[item(2, "echo", 0)]).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = send_items(
        &kiln,
        &batch,
        &[item(0, "no-such-task", 0), item(1, "echo", 1)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sealed"], true);
    let read = read_batch(&kiln, &batch).await;
    assert_eq!(read["status"], "PARTIAL_FAILED", "{read}");
    assert_eq!(read["runs"].as_array().unwrap().len(), 1);
    let error = &read["processing"]["errors"][0];
    assert_eq!(error["index"], 0);
    assert_eq!(error["taskIdentifier"], "no-such-task");
    assert!(
        error["error"].as_str().unwrap().contains("not found"),
        "{error}"
    );

    let (status, _) = kiln.post("/api/v3/batches", json!({"runCount": 0})).await;
    assert_eq!(status, 400);
    let (status, _) = kiln
        .request(
            reqwest::Method::GET,
            "/api/v2/batches/batch_doesnotexist",
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn batch_keys_parents_and_item_keys() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let parent = kiln.trigger_ok("echo", json!({"n": "parent"})).await;
    kiln.finished(&parent).await;

    // A batch with an idempotency key: the same key answers with the same
    // batch, cached, so the SDK sends no items again.
    let open = json!({
        "runCount": 3,
        "idempotencyKey": "a1b2",
        "idempotencyKeyOptions": {"key": "nightly", "scope": "global"},
        "parentRunId": parent,
    });
    let (status, first) = kiln.post("/api/v3/batches", open.clone()).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["isCached"], false);
    assert_eq!(first["idempotencyKey"], "nightly");
    let batch = first["id"].as_str().unwrap().to_string();
    let (status, again) = kiln.post("/api/v3/batches", open).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["isCached"], true);
    assert_eq!(again["id"], batch.as_str());

    // Items 0 and 2 share an idempotency key: they make one run.
    let keyed = |index: u32, n: u32| {
        let mut i = item(index, "echo", n);
        i["options"]["idempotencyKey"] = json!("same-item-key");
        i
    };
    let (status, body) = send_items(
        &kiln,
        &batch,
        &[keyed(0, 0), item(1, "echo", 1), keyed(2, 2)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sealed"], true, "{body}");
    let read = read_batch(&kiln, &batch).await;
    let runs: Vec<String> = read["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert_eq!(runs.len(), 3, "{read}");
    assert_eq!(runs[0], runs[2], "one key, one run: {read}");
    assert_ne!(runs[0], runs[1]);

    // The runs carry the batch and the parent.
    let run = kiln.finished(&runs[1]).await;
    assert_eq!(run["batchId"], batch.as_str(), "{run}");
    assert_eq!(run["parentId"], parent.as_str(), "{run}");
    assert_eq!(run["depth"], 1);
    assert_eq!(run["triggerFunction"], "batchTrigger");
    let parent_view = kiln.run(&parent).await;
    assert_eq!(
        parent_view["relatedRuns"]["children"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "{parent_view}"
    );
    let (status, listed) = kiln
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/runs?filter%5Bbatch%5D={batch}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(2), "{listed}");

    // Resuming a parent from outside a task is refused with the reason.
    let (status, refused) = kiln
        .post(
            "/api/v3/batches",
            json!({"runCount": 1, "parentRunId": parent, "resumeParentOnCompletion": true}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("batch_trigger_and_wait"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_retried_batch_create_finds_the_batch_its_first_attempt_made() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let client = reqwest::Client::new();
    let create = |request_key: &'static str| {
        client
            .post(format!("{}/api/v3/batches", kiln.url))
            .bearer_auth(crate::harness::KEY)
            .header("content-type", "application/json")
            .header("x-trigger-request-idempotency-key", request_key)
            .body(r#"{"runCount":2,"taskIdentifiers":["echo"]}"#)
            .send()
    };
    let first: Value = create("batch-req-1").await.unwrap().json().await.unwrap();
    let retried: Value = create("batch-req-1").await.unwrap().json().await.unwrap();
    assert_eq!(retried["id"], first["id"], "{retried}");
    let other: Value = create("batch-req-2").await.unwrap().json().await.unwrap();
    assert_ne!(other["id"], first["id"]);
}

#[tokio::test]
async fn large_items_are_validated_like_small_ones() {
    // Lines this large are read off the runtime; the outcome is the same.
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let (_, body) = kiln.post("/api/v3/batches", json!({"runCount": 2})).await;
    let batch = body["id"].as_str().unwrap().to_string();
    let blob = "b".repeat(300 * 1024);
    let large = |index: u32, ms: Value| {
        json!({
            "index": index,
            "task": "sleep",
            "payload": json!({"ms": ms, "blob": blob}).to_string(),
            "options": {"payloadType": "application/json"},
        })
    };
    let (status, body) = send_items(
        &kiln,
        &batch,
        &[large(0, json!("soon")), large(1, json!(1))],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sealed"], true);
    let read = read_batch(&kiln, &batch).await;
    assert_eq!(read["status"], "PARTIAL_FAILED", "{read}");
    let error = &read["processing"]["errors"][0];
    assert_eq!(error["index"], 0);
    assert!(
        error["error"].as_str().unwrap().contains("payload/ms"),
        "{error}"
    );
    let run = kiln.finished(read["runs"][0].as_str().unwrap()).await;
    assert_eq!(run["status"], "COMPLETED", "{}", run["error"]);
}

/// A `parent` run that waits on `batch`, once it has finished.
async fn run_waiting_on(kiln: &Kiln, batch: &str) -> Value {
    let run = kiln
        .trigger_ok("parent", json!({"mode": "wait-batch", "batch": batch}))
        .await;
    kiln.finished(&run).await
}

/// A run may wait on a batch made through the API only once the batch is
/// sealed: before, its runs are not known and the wait could never wake, so
/// it is refused with a reason; once sealed, the wait gets every output.
#[tokio::test]
async fn a_run_waits_on_a_streamed_batch_once_it_is_sealed() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let (_, body) = kiln.post("/api/v3/batches", json!({"runCount": 2})).await;
    let batch = body["id"].as_str().unwrap().to_string();
    let (status, body) = send_items(&kiln, &batch, &[item(0, "echo", 10)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sealed"], false);

    let early = run_waiting_on(&kiln, &batch).await;
    assert_eq!(early["status"], "FAILED", "{early}");
    assert_eq!(early["error"]["name"], "Unsupported", "{early}");
    let message = early["error"]["message"].as_str().unwrap();
    assert!(message.contains("still being streamed in"), "{message}");

    let (status, body) = send_items(&kiln, &batch, &[item(1, "echo", 11)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sealed"], true);
    let sealed = run_waiting_on(&kiln, &batch).await;
    assert_eq!(sealed["status"], "COMPLETED", "{sealed}");
    assert_eq!(sealed["output"]["outputs"], json!([10, 11]), "{sealed}");

    // A sealed batch none of whose items made a run has nothing to wait on.
    let (_, body) = kiln.post("/api/v3/batches", json!({"runCount": 1})).await;
    let empty = body["id"].as_str().unwrap().to_string();
    let (status, body) = send_items(&kiln, &empty, &[item(0, "no-such-task", 0)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sealed"], true);
    let none = run_waiting_on(&kiln, &empty).await;
    assert_eq!(none["status"], "FAILED", "{none}");
    let message = none["error"]["message"].as_str().unwrap();
    assert!(message.contains("has no runs"), "{message}");
}
