//! Realtime over raw HTTP: stream chunks a task appended before the server
//! was killed are not appended again when the run resumes; the
//! environment's server-sent events of run changes; a tag subscription's
//! handle that stays valid across polls.

use crate::harness::{KEY, Kiln, data_dir};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The stream's chunks, read as server-sent events once the run is over.
async fn chunks(kiln: &Kiln, id: &str) -> Vec<Value> {
    let body = reqwest::Client::new()
        .get(format!("{}/realtime/v1/streams/{id}/answer", kiln.url))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("the server answers")
        .text()
        .await
        .expect("a body");
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).expect("JSON chunks"))
        .collect()
}

#[tokio::test]
async fn a_crash_mid_stream_appends_no_chunk_twice() {
    let dir = data_dir();
    let args = ["--warm-wait-ms", "0"];
    let kiln = Kiln::start_with(dir.path(), &args);
    kiln.deploy(kiln_fixtures::PROBE).await;
    let words: Vec<String> = (0..12).map(|i| format!("w{i}")).collect();
    let id = kiln
        .trigger_ok("stream-words", json!({ "words": words, "gap_ms": 150 }))
        .await;
    // Wait (with a deadline) until some chunks are journaled, then crash.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let appended = kiln
            .journal(&id)
            .await
            .iter()
            .filter(|e| e.to_string().contains("stream-append"))
            .count();
        if appended >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "no chunks were appended");
        tokio::task::yield_now().await;
    }
    kiln.kill();
    let kiln = Kiln::start_with(dir.path(), &args);
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let got = chunks(&kiln, &id).await;
    let numbers: Vec<u64> = got.iter().map(|c| c["i"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (0..12).collect::<Vec<u64>>(), "{got:?}");
}

#[tokio::test]
async fn a_dashboard_watches_every_run_of_its_environment_change() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let mut response = reqwest::Client::new()
        .get(format!("{}/realtime/v1/events/runs", kiln.url))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("the server answers");
    assert_eq!(response.status().as_u16(), 200);
    // The feed sends each changed run as it is when the watcher reads it,
    // so a run that ends at once may show only its end; one that waits a
    // second is seen before it ends as well.
    let id = kiln.trigger_ok("sleep", json!({"ms": 1000})).await;
    let mut seen: Vec<String> = Vec::new();
    let mut text = String::new();
    let watched = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = response.chunk().await.expect("a chunk") {
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: "))
                    && let Ok(run) = serde_json::from_str::<Value>(data)
                    && run["id"] == id.as_str()
                {
                    seen.push(run["status"].as_str().unwrap_or_default().to_string());
                    if run["status"] == "COMPLETED" {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(watched.is_ok(), "no COMPLETED event; saw {seen:?}");
    assert!(seen.len() >= 2, "{seen:?}");
}

#[tokio::test]
async fn a_week_long_tag_subscription_keeps_its_handle() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    kiln.trigger_with("echo", json!({}), json!({"tags": ["weekly"]}))
        .await;
    let http = reqwest::Client::new();
    let get = |query: String| {
        http.get(format!(
            "{}/realtime/v1/runs?tags=weekly&createdAt=1w&log=full&{query}",
            kiln.url
        ))
        .bearer_auth(KEY)
        .send()
    };
    let first = get("offset=-1".into()).await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let header =
        |r: &reqwest::Response, name: &str| r.headers()[name].to_str().unwrap().to_string();
    let (handle, offset) = (
        header(&first, "electric-handle"),
        header(&first, "electric-offset"),
    );
    let rows: Value = first.json().await.unwrap();
    assert_eq!(
        rows.as_array().map(Vec::len),
        Some(2),
        "one row and up-to-date: {rows}"
    );
    // The next (catch-up) request with that handle is answered, not sent
    // back to refetch the shape.
    let next = get(format!("handle={handle}&offset={offset}"))
        .await
        .unwrap();
    assert_eq!(next.status().as_u16(), 200, "{:?}", next.text().await);
}
