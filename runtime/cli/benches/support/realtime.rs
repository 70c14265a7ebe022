//! The `realtime` group: how soon a realtime subscriber hears of a run's
//! status change, and what 1,000 idle subscribers (each holding a live long
//! poll, as `runs.subscribeToRun` does) cost the server in memory and CPU.

use super::{KEY, Server, report};
use serde_json::Value;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One Electric-protocol request: the rows it brought and the next offset.
async fn poll(
    http: &reqwest::Client,
    url: &str,
    handle: Option<&str>,
    offset: &str,
) -> (Vec<Value>, String, String) {
    let mut request = format!("{url}?log=full&offset={offset}");
    if let Some(handle) = handle {
        request.push_str(&format!("&handle={handle}&live=true&cursor=0"));
    }
    let answer = http
        .get(&request)
        .bearer_auth(KEY)
        .send()
        .await
        .expect("the server answers");
    let header = |name: &str| {
        answer
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (handle, offset) = (header("electric-handle"), header("electric-offset"));
    let messages: Vec<Value> = answer.json().await.unwrap_or_default();
    let rows = messages
        .into_iter()
        .filter(|m| m.get("key").is_some())
        .map(|m| m["value"].clone())
        .collect();
    (rows, handle, offset)
}

/// `2026-12-01 09:30:00.123` (UTC) as Unix ms.
fn pg_ms(value: &Value) -> u64 {
    let text = value.as_str().unwrap_or_default().replacen(' ', "T", 1) + "Z";
    time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as u64)
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) async fn realtime_bench() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (server, _) = Server::start(dir.path(), &[]);
    server.deploy(kiln_fixtures::PROBE).await;
    let http = reqwest::Client::new();

    // Latency: a subscriber follows a short run; the sample is the time from
    // the run's `completedAt` (the server's clock, ms) to the moment the
    // subscriber holds the row that says so.
    let mut latency = Vec::new();
    for _ in 0..200 {
        let id = server
            .trigger("sleep", serde_json::json!({ "ms": 20 }))
            .await;
        let url = format!("{}/realtime/v1/runs/{id}", server.url);
        let (mut rows, handle, mut offset) = poll(&http, &url, None, "-1").await;
        loop {
            if let Some(done) = rows
                .iter()
                .find(|r| r["status"] == "COMPLETED_SUCCESSFULLY")
            {
                let heard = now_ms();
                latency.push(Duration::from_millis(
                    heard.saturating_sub(pg_ms(&done["completedAt"])),
                ));
                break;
            }
            let (next, _, next_offset) = poll(&http, &url, Some(&handle), &offset).await;
            rows = next;
            offset = next_offset;
        }
    }
    report(
        "realtime: completedAt -> subscriber has the row",
        &mut latency,
    );

    // Idle subscribers: runs that wait an hour, each followed by one live
    // long poll that is re-issued whenever it times out.
    let mut waiting = Vec::new();
    for _ in 0..100 {
        waiting.push(
            server
                .trigger("sleep", serde_json::json!({ "ms": 3_600_000 }))
                .await,
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = server.rss_kib();
    let cpu_before = server.cpu_ms();
    let idle_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_cpu = (server.cpu_ms() - cpu_before) as f64 / idle_start.elapsed().as_secs_f64();

    let subscribers = 1_000;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(subscribers)
        .build()
        .expect("a client");
    let mut tasks = Vec::new();
    for i in 0..subscribers {
        let url = format!(
            "{}/realtime/v1/runs/{}",
            server.url,
            waiting[i % waiting.len()]
        );
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let (_, handle, mut offset) = poll(&client, &url, None, "-1").await;
            loop {
                let (_, _, next) = poll(&client, &url, Some(&handle), &offset).await;
                offset = next;
            }
        }));
    }
    // Every subscriber has made its first request and holds a live poll.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_with = server.rss_kib();
    let cpu_start = server.cpu_ms();
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let with_cpu = (server.cpu_ms() - cpu_start) as f64 / window.elapsed().as_secs_f64();
    println!(
        "realtime: {subscribers} idle subscribers: RSS {} MiB -> {} MiB ({:+.1} KiB each); server CPU {:.1} ms/s idle -> {:.1} ms/s with them (30 s window, live polls re-issued every 20 s)",
        rss_before / 1024,
        rss_with / 1024,
        (rss_with as f64 - rss_before as f64) / subscribers as f64,
        idle_cpu,
        with_cpu
    );
    for task in tasks {
        task.abort();
    }
    server.kill();
}
