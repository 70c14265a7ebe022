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

/// The resident memory, in KiB, of the server's wasm instance pools: runs
/// of adjacent anonymous mappings that span at least 16 GiB (a pool
/// reserves address space for every slot's 4 GiB memory and its guards).
fn pool_rss_kib(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps is readable");
    // (start, end, anonymous, rss KiB) of each mapping, in address order.
    let mut maps: Vec<(u64, u64, bool, u64)> = Vec::new();
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let Some(range) = fields
            .first()
            .filter(|f| f.contains('-') && fields.len() >= 5)
            && let Some((start, end)) = range.split_once('-')
            && let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            let anonymous = fields[4] == "0" && fields.len() == 5;
            maps.push((start, end, anonymous, 0));
        } else if let Some(rss) = line.strip_prefix("Rss:")
            && let Some(last) = maps.last_mut()
        {
            last.3 = rss
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
        }
    }
    let (mut total, mut group) = (0, None::<(u64, u64, u64)>);
    for (start, end, anonymous, rss) in maps {
        group = match group {
            Some((from, to, sum)) if anonymous && to == start => Some((from, end, sum + rss)),
            done => {
                if let Some((from, to, sum)) = done
                    && to - from >= 16 << 30
                {
                    total += sum;
                }
                anonymous.then_some((start, end, rss))
            }
        };
    }
    if let Some((from, to, sum)) = group
        && to - from >= 16 << 30
    {
        total += sum;
    }
    total
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
    let id = kiln.trigger_ok("hold-heap", json!({"mib": 48})).await;
    assert_eq!(kiln.finished(&id).await["status"], "COMPLETED");
    // The run's slot keeps its memory resident for the next run...
    let held = pool_rss_kib(kiln.pid());
    assert!(
        held > 40 * 1024,
        "after a 48 MiB run the instance pool holds only {held} KiB"
    );
    // ... until the pool has been idle for two seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = pool_rss_kib(kiln.pid());
        if now < 8 * 1024 {
            println!(
                "instance pool RSS: {held} KiB after the run, {now} KiB once idle; server RSS {} KiB",
                rss_kib(kiln.pid())
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the instance pool kept {now} KiB ({held} KiB after the run)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The current version runs on in the new pool.
    let id = kiln.trigger_ok("echo", json!({"n": 1})).await;
    assert_eq!(kiln.finished(&id).await["status"], "COMPLETED");
}
