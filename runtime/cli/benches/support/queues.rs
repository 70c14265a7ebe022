//! The `queues` group: the scheduler's cost per dequeue with 100,000 runs
//! queued, and a light tenant's start latency while a heavy tenant has
//! 10,000 runs queued on the same queue, with and without concurrency keys.

use super::{Server, iso_ms, report};
use kiln_queues::{Entry, QueueLimits, Scheduler};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Dequeue (`next` then `release`) with `queued` runs waiting, spread over
/// `queues` queues of `keys` lanes each, refilled so the backlog stays full.
fn dequeue(label: &str, queued: usize, queues: usize, keys: usize) {
    let mut s: Scheduler<u64> = Scheduler::new(64, 128);
    for q in 0..queues {
        s.configure(
            &format!("q{q}"),
            QueueLimits {
                concurrency: Some(1),
                ..QueueLimits::default()
            },
        );
    }
    let entry = |n: u64| Entry {
        run: n,
        queue: format!("q{}", n as usize % queues),
        key: (keys > 1).then(|| format!("k{}", (n as usize / queues) % keys)),
        order: n as i64,
        memory_mib: 0,
    };
    let t = Instant::now();
    for n in 0..queued as u64 {
        s.push(entry(n));
    }
    let push_each = t.elapsed() / queued as u32;
    let mut samples = Vec::with_capacity(20_000);
    for refill in queued as u64..queued as u64 + 20_000 {
        let t = Instant::now();
        let started = s.next(0).expect("a run may start");
        s.release(&started);
        samples.push(t.elapsed());
        s.push(entry(refill));
    }
    report(&format!("dequeue+release, {label}"), &mut samples);
    println!("{:<40} {push_each:?} per push", "");
}

async fn finished(server: &Server, id: &str) -> Value {
    loop {
        let run = server.get(&format!("/api/v3/runs/{id}?wait=30000")).await;
        if run["isCompleted"] == true {
            return run;
        }
    }
}

async fn set_paused(server: &Server, queue: &str, paused: bool) {
    let action = if paused { "pause" } else { "resume" };
    server
        .post(
            &format!("/api/v1/queues/{queue}/pause"),
            &json!({ "action": action }),
        )
        .await;
}

/// A light tenant's run on `probe-fair` (one run at a time in all) while a
/// heavy tenant's `heavy` runs are queued there.
async fn fairness(heavy: usize, keyed: bool) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (server, _) = Server::start(dir.path(), &[]);
    server.deploy(kiln_fixtures::PROBE).await;
    set_paused(&server, "probe-fair", true).await;
    let heavy_options = if keyed {
        json!({ "concurrencyKey": "heavy" })
    } else {
        json!({})
    };
    let server = std::sync::Arc::new(server);
    let clients = 32;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let server = server.clone();
        let options = heavy_options.clone();
        tasks.push(tokio::spawn(async move {
            for _ in (c..heavy).step_by(clients) {
                server
                    .trigger_with("fair-hold", json!({}), options.clone())
                    .await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("the clients finish");
    }
    set_paused(&server, "probe-fair", false).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let light_options = if keyed {
        json!({ "concurrencyKey": "light" })
    } else {
        json!({})
    };
    let samples = if keyed { 20 } else { 1 };
    let mut latency = Vec::new();
    let mut backlog = Vec::new();
    for _ in 0..samples {
        let queue = server.get("/api/v1/queues/probe-fair").await;
        backlog.push(queue["queued"].as_u64().unwrap_or(0));
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let id = server
            .trigger_with("fair-hold", json!({}), light_options.clone())
            .await;
        let run = finished(&server, &id).await;
        let started = iso_ms(&run["startedAt"]);
        latency.push(Duration::from_millis(started.saturating_sub(before)));
    }
    let label = if keyed {
        "light key's start, heavy key queued"
    } else {
        "light run's start, no keys"
    };
    report(label, &mut latency);
    println!(
        "{:<40} heavy runs queued when the light run was triggered: {:?}",
        "", backlog
    );
    if let Ok(server) = std::sync::Arc::try_unwrap(server) {
        server.kill();
    }
}

/// The `queues` group.
pub(super) async fn queues_bench() {
    dequeue("100,000 queued, one lane", 100_000, 1, 1);
    dequeue("100,000 queued, 1,000 keys", 100_000, 1, 1_000);
    dequeue("100,000 queued, 100 queues x 100 keys", 100_000, 100, 100);
    fairness(10_000, true).await;
    fairness(10_000, false).await;
}
