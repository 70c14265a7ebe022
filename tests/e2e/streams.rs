//! Realtime streams across a crash: chunks a task appended before the
//! server was killed are not appended again when the run resumes.

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
