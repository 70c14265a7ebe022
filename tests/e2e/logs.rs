//! Log lines are kept apart from the journal: a task that logs 200,000 lines
//! of 1 KiB journals none of them, keeps the first lines up to the
//! attempt's caps and counts the rest; lines saved before a suspension are
//! not kept again when the run resumes, even after a SIGKILL.

use crate::harness::{Kiln, data_dir};
use serde_json::json;

#[tokio::test]
async fn a_flood_of_log_lines_is_capped_counted_and_never_journaled() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let started = std::time::Instant::now();
    let id = kiln
        .trigger_ok("chatty", json!({ "lines": 200_000, "bytes": 1024 }))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let attempt = &run["attempts"][0];
    let kept = attempt["logs"].as_array().expect("logs").len() as u64;
    assert!(
        kept > 0 && kept <= 64,
        "the first lines up to 64 KiB are kept: {kept}"
    );
    assert_eq!(
        attempt["logsDropped"].as_u64(),
        Some(200_000 - kept),
        "{attempt}"
    );
    let journal = kiln.journal(&id).await;
    assert!(
        journal.len() < 10,
        "no journal entry per line: {}",
        journal.len()
    );
    println!("200,000 lines of 1 KiB in {:?}", started.elapsed());
}

#[tokio::test]
async fn lines_saved_before_a_suspension_are_kept_once_across_a_crash() {
    let args = ["--warm-wait-ms", "50"];
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &args);
    kiln.deploy(kiln_fixtures::PROBE).await;
    let id = kiln
        .trigger_ok(
            "chatty",
            json!({ "lines": 40, "bytes": 10, "wait_ms": 1500 }),
        )
        .await;
    // Suspended halfway, with the first 20 lines saved.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let run = kiln.run(&id).await;
        if run["status"] == "WAITING" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never suspended: {run}"
        );
    }
    kiln.kill();
    let kiln = Kiln::start_with(dir.path(), &args);
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let numbers: Vec<String> = run["attempts"][0]["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .map(|l| l["fields"]["i"].as_str().unwrap_or_default().to_string())
        .collect();
    let expected: Vec<String> = (0..40).map(|i| i.to_string()).collect();
    assert_eq!(numbers, expected, "every line once, in order");
}
