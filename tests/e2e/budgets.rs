//! Budgets: a hostile guest spends each of a run's budgets past its limit,
//! and the run ends (or the call is refused) with an error that names the
//! limit, while the server and its other runs carry on.

use crate::fetch::counting_server;
use crate::harness::{Kiln, data_dir};
use crate::leaks::rss_kib;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

/// Small limits, so each is reached in a moment.
const LIMITS: &str = "journal-entries=300,children=3,batches=2,tokens=2,fetches=2,\
                      waits-per-step=5,fetch-request-bytes=1KiB,error-bytes=1KiB";

fn message(run: &Value) -> String {
    run["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A run that ended without retrying because a budget ran out.
fn assert_limit(run: &Value, names: &str) {
    assert_eq!(run["status"], "FAILED", "{run}");
    assert_eq!(run["error"]["name"], "LimitExceeded", "{run}");
    assert!(message(run).contains(names), "{run}");
    assert!(message(run).contains("kiln serve --limit"), "{run}");
    assert_eq!(run["attemptCount"], 1, "no retry spends it again: {run}");
}

#[tokio::test]
async fn each_budget_ends_the_run_or_refuses_the_call_and_names_the_limit() {
    let (url, requests) = counting_server(0).await;
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &["--limit", LIMITS]);
    kiln.deploy(kiln_fixtures::PROBE).await;
    let rss_before = rss_kib(kiln.pid());

    let hostile = |spend: &str, count: u64| json!({"spend": spend, "count": count, "url": url});
    let mut ids = Vec::new();
    for (spend, count) in [
        ("clock", 1_000_000),
        ("children", 10),
        ("batches", 10),
        ("tokens", 10),
        ("fetches", 10),
        ("big-fetch", 4_096),
        ("waits", 50),
        ("big-error", 100_000),
    ] {
        ids.push(kiln.trigger_ok("hostile", hostile(spend, count)).await);
    }
    // Another tenant's run, triggered while the hostile ones run, is served.
    let echo = kiln.trigger_ok("echo", json!({"n": 1})).await;
    assert_eq!(kiln.finished(&echo).await["status"], "COMPLETED");

    let mut runs = Vec::new();
    for id in &ids {
        runs.push(kiln.finished(id).await);
    }
    let [
        clock,
        children,
        batches,
        tokens,
        fetches,
        big_fetch,
        waits,
        big_error,
    ] = &runs[..]
    else {
        unreachable!("eight runs")
    };

    // The journal: a loop of host clock reads ends at 300 entries.
    assert_limit(clock, "limit of 300 journal entries");
    let journal = kiln.journal(&ids[0]).await;
    assert!(journal.len() <= 302, "{} entries", journal.len());

    // Children, batches, tokens: the call past the limit is refused, the
    // task sees the refusal and goes on.
    assert_eq!(children["status"], "COMPLETED", "{children}");
    assert_eq!(children["output"]["made"], 3, "{children}");
    let refusal = children["output"]["refused"].as_str().unwrap_or_default();
    assert!(refusal.contains("limit of 3 child runs"), "{children}");
    assert_eq!(batches["output"]["made"], 2, "{batches}");
    let refusal = batches["output"]["refused"].as_str().unwrap_or_default();
    assert!(refusal.contains("limit of 2 batches"), "{batches}");
    assert_eq!(tokens["output"]["made"], 2, "{tokens}");
    let refusal = tokens["output"]["refused"].as_str().unwrap_or_default();
    assert!(refusal.contains("limit of 2 wait tokens"), "{tokens}");

    // Fetches: two are made, the third ends the run; a request over the
    // size limit is never sent.
    assert_limit(fetches, "limit of 2 fetches");
    assert_limit(big_fetch, "limit of 1024 bytes in a fetch request");
    assert_eq!(requests.load(Ordering::SeqCst), 2, "only the two fetches");

    // Waits: fifty at once in one step is past five.
    assert_limit(waits, "limit of 5 waits in one step");

    // An error is kept up to its limit, and says it was cut.
    assert_eq!(big_error["status"], "FAILED", "{big_error}");
    let kept = message(big_error);
    assert!(kept.len() < 1_200, "{} bytes kept", kept.len());
    assert!(kept.contains("cut at 1024 of 100000 bytes"), "{kept}");
    let stack = big_error["error"]["stackTrace"]
        .as_str()
        .unwrap_or_default();
    assert!(stack.len() < 1_200, "{} bytes of stack kept", stack.len());

    // The server is healthy and did not grow much: nothing past a limit was
    // kept.
    let rss_after = rss_kib(kiln.pid());
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    let (status, _) = kiln.request(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);
    let echo = kiln.trigger_ok("echo", json!({"n": 2})).await;
    assert_eq!(kiln.finished(&echo).await["status"], "COMPLETED");
}

#[tokio::test]
async fn a_bad_limit_setting_stops_the_server_with_the_reason() {
    let dir = data_dir();
    let output = std::process::Command::new(crate::harness::kiln_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--limit", "childs=5"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("kiln runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("there is no limit `childs`"), "{stderr}");
    assert!(stderr.contains("children"), "{stderr}");
}

#[tokio::test]
async fn runs_whose_machines_do_not_fit_the_memory_budget_wait_their_turn() {
    let dir = data_dir();
    // hold-heap runs on medium-1x, a 2 GiB machine: two do not fit 3 GiB.
    let kiln = Kiln::start_with(dir.path(), &["--memory-budget", "3GiB"]);
    kiln.deploy(kiln_fixtures::PROBE).await;
    let heap = json!({"mib": 8, "wait_ms": 1_000});
    let a = kiln.trigger_ok("hold-heap", heap.clone()).await;
    let b = kiln.trigger_ok("hold-heap", heap).await;
    let (a, b) = (kiln.finished(&a).await, kiln.finished(&b).await);
    for run in [&a, &b] {
        assert_eq!(run["status"], "COMPLETED", "{run}");
        assert_eq!(run["output"]["intact"], true, "{run}");
    }
    let span = |run: &Value| {
        (
            run["startedAt"].as_str().unwrap_or_default().to_string(),
            run["finishedAt"].as_str().unwrap_or_default().to_string(),
        )
    };
    let (mut first, mut second) = (span(&a), span(&b));
    if second.0 < first.0 {
        std::mem::swap(&mut first, &mut second);
    }
    assert!(
        second.0 >= first.1,
        "the second started at {} before the first finished at {}",
        second.0,
        first.1
    );
}
