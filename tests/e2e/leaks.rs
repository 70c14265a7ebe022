//! What a long-running server must not keep: waiters that gave up.

use crate::harness::{KEY, Kiln, data_dir};
use serde_json::json;

/// The server's resident memory, in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc is readable");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS is there")
}

/// `calls` retrieves with `?wait=1` on a run that is waiting, from 32
/// clients at once: each times out.
async fn timed_out_waits(kiln: &Kiln, id: &str, calls: usize) {
    let url = format!("{}/api/v3/runs/{id}?wait=1", kiln.url);
    let clients = 32;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for _ in 0..calls / clients {
                let response = http
                    .get(&url)
                    .bearer_auth(KEY)
                    .send()
                    .await
                    .expect("answers");
                assert_eq!(response.status(), 200);
                let _ = response.bytes().await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("a client finished");
    }
}

#[tokio::test]
async fn fifty_thousand_timed_out_waits_leave_the_servers_memory_where_it_was() {
    let dir = data_dir();
    let kiln = Kiln::start(dir.path());
    kiln.deploy(kiln_fixtures::PROBE).await;
    let id = kiln.trigger_ok("sleep", json!({"ms": 3_600_000})).await;
    kiln.until_status(&id, "WAITING").await;
    // Warm up: connections, buffers and the allocator's arenas.
    timed_out_waits(&kiln, &id, 5_000).await;
    let before = rss_kib(kiln.pid());
    timed_out_waits(&kiln, &id, 50_000).await;
    let after = rss_kib(kiln.pid());
    println!("server RSS: {before} KiB after warm-up, {after} KiB after 50,000 timed-out waits");
    assert!(
        after < before + 3 * 1024,
        "50,000 timed-out waits grew the server's RSS from {before} to {after} KiB"
    );
    assert_eq!(kiln.run(&id).await["status"], "WAITING");
}

#[tokio::test]
async fn an_idle_instance_pool_gives_back_the_memory_its_slots_kept() {
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &["--release-idle-after", "2s"]);
    kiln.deploy(kiln_fixtures::PROBE).await;
    let before = rss_kib(kiln.pid());
    let id = kiln.trigger_ok("hold-heap", json!({"mib": 48})).await;
    assert_eq!(kiln.finished(&id).await["status"], "COMPLETED");
    // The run's slot keeps its memory resident for the next run...
    let held = rss_kib(kiln.pid());
    assert!(
        held > before + 40 * 1024,
        "a 48 MiB run left RSS at {held} KiB from {before} KiB"
    );
    // ... until the pool has been idle for two seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = rss_kib(kiln.pid());
        if now < before + 16 * 1024 {
            println!("server RSS: {before} KiB, {held} KiB after the run, {now} KiB once idle");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "RSS stayed at {now} KiB ({before} KiB before the run, {held} KiB after it)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The current version runs on in the new pool.
    let id = kiln.trigger_ok("echo", json!({"n": 1})).await;
    assert_eq!(kiln.finished(&id).await["status"], "COMPLETED");
}
