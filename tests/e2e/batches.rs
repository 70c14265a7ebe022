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
    let (_, pending) = kiln
        .request(
            reqwest::Method::GET,
            &format!("/api/v2/batches/{batch}"),
            None,
        )
        .await;
    assert_eq!(pending["status"], "PENDING", "{pending}");
    let (status, body) = send_items(&kiln, &batch, &items).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["itemsAccepted"], 400, "{body}");
    assert_eq!(body["itemsDeduplicated"], 600, "{body}");
    assert_eq!(body["sealed"], true);
    assert_eq!(body["expectedCount"], 1000);

    let (status, read) = kiln
        .request(
            reqwest::Method::GET,
            &format!("/api/v2/batches/{batch}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{read}");
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
    let (_, read) = kiln
        .request(
            reqwest::Method::GET,
            &format!("/api/v2/batches/{batch}"),
            None,
        )
        .await;
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
