//! Durable fetch: the host makes a task's HTTP request and journals the
//! response, so a replay after SIGKILL never sends it again; the allowlist
//! refuses hosts the operator did not allow; retry::fetch retries on status.

use crate::harness::{Kiln, data_dir};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A local HTTP server that counts requests, answers 503 to the first
/// `failures` of them and then 200 with the request's number.
pub(crate) async fn counting_server(failures: u32) -> (String, Arc<AtomicU32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/count", listener.local_addr().unwrap());
    let count = Arc::new(AtomicU32::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let (status, body) = if n <= failures {
                    ("503 Service Unavailable", "busy".to_string())
                } else {
                    ("200 OK", n.to_string())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, count)
}

#[tokio::test]
async fn a_fetch_made_before_a_sigkill_is_not_repeated_after_recovery() {
    let (url, count) = counting_server(0).await;
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let id = kiln
        .trigger_ok("fetch", json!({"url": url, "spin_ms": 2500}))
        .await;
    for _ in 0..100 {
        if count.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // Mid-spin: the response is journaled, the run not finished.
    tokio::time::sleep(Duration::from_millis(300)).await;
    kiln.kill();

    let kiln = Kiln::start(dir.path());
    let run = kiln.finished(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["attemptCount"], 1, "{run}");
    assert_eq!(run["output"]["status"], 200);
    assert_eq!(run["output"]["body"], "1");
    assert_eq!(run["output"]["contentType"], "text/plain");
    assert_eq!(count.load(Ordering::SeqCst), 1, "the fetch was sent again");
    let journal = kiln.journal(&id).await;
    assert!(
        journal
            .iter()
            .any(|e| e["type"] == "WAKE" && e["value"]["kind"] == "fetch"),
        "{journal:?}"
    );
}

#[tokio::test]
async fn retry_fetch_retries_on_status_and_the_allowlist_refuses_other_hosts() {
    let (url, count) = counting_server(2).await;
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let id = kiln
        .trigger_ok("fetch", json!({"url": url, "retries": 5}))
        .await;
    let run = kiln.finished(&id).await;
    assert_eq!(
        run["output"],
        json!({"status": 200, "body": "3", "contentType": "text/plain"}),
        "{run}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 3);

    // Out of tries: the last response comes back.
    let (url, _) = counting_server(10).await;
    let id = kiln
        .trigger_ok("fetch", json!({"url": url, "retries": 2}))
        .await;
    assert_eq!(kiln.finished(&id).await["output"]["status"], 503);

    // Not loopback and not allowed: refused without a request.
    let id = kiln
        .trigger_ok("fetch", json!({"url": "http://example.invalid/x"}))
        .await;
    let error = kiln.finished(&id).await["output"]["error"].clone();
    assert!(
        error.as_str().unwrap().contains("not allowed")
            && error.as_str().unwrap().contains("--allow-fetch"),
        "{error}"
    );
    let id = kiln.trigger_ok("fetch", json!({"url": "not a url"})).await;
    assert!(
        kiln.finished(&id).await["output"]["error"]
            .as_str()
            .unwrap()
            .contains("not a URL")
    );
}

#[tokio::test]
async fn outside_dev_loopback_needs_the_allowlist_too() {
    let (url, count) = counting_server(0).await;
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &["--environment", "prod"]);
    kiln.deploy(kiln_fixtures::PROBE).await;
    let id = kiln.trigger_ok("fetch", json!({"url": url})).await;
    let output = kiln.finished(&id).await["output"].clone();
    assert!(
        output["error"].as_str().unwrap().contains("not allowed"),
        "{output}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 0);
    drop(kiln);

    let kiln = Kiln::start_with(
        dir.path(),
        &["--environment", "prod", "--allow-fetch", "127.0.0.1"],
    );
    let id = kiln.trigger_ok("fetch", json!({"url": url})).await;
    assert_eq!(kiln.finished(&id).await["output"]["body"], "1");
}

#[tokio::test]
async fn internal_addresses_are_refused_outside_dev_even_when_every_host_is_allowed() {
    let (url, count) = counting_server(0).await;
    let port = url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/count")
        .to_string();
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &["--environment", "prod", "--allow-fetch", "*"]);
    kiln.deploy(kiln_fixtures::PROBE).await;
    // By address, and by a name that resolves to it: the guard checks the
    // addresses the connection would use.
    for target in [url.clone(), format!("http://localhost:{port}/count")] {
        let id = kiln.trigger_ok("fetch", json!({"url": target})).await;
        let output = kiln.finished(&id).await["output"].clone();
        assert!(
            output["error"]
                .as_str()
                .unwrap_or_default()
                .contains("internal address"),
            "{target}: {output}"
        );
    }
    assert_eq!(
        count.load(Ordering::SeqCst),
        0,
        "the local server received nothing"
    );
    drop(kiln);

    // Named by its network, the address is reachable.
    let kiln = Kiln::start_with(
        dir.path(),
        &["--environment", "prod", "--allow-fetch", "*,127.0.0.0/8"],
    );
    let id = kiln
        .trigger_ok(
            "fetch",
            json!({"url": format!("http://localhost:{port}/count")}),
        )
        .await;
    assert_eq!(kiln.finished(&id).await["output"]["body"], "1");
}
