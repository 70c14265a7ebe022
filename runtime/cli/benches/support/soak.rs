//! The `soak` group (`scripts/soak`): a server under a steady mix of work
//! for `KILN_SOAK_SECS` seconds (an hour unless set), with retention on:
//! triggers of short runs (`echo`), runs that suspend at a wait (`sleep`),
//! `?wait` polls that time out, cancels, and a deploy of the same bundle a
//! minute, all of the probe test guest. Every `KILN_SOAK_SAMPLE_SECS`
//! (60) it prints the server's RSS, the store's size on disk and what it
//! has done, so a leak shows as a curve that keeps rising after warm-up.

use super::{Server, dir_size};
use std::time::{Duration, Instant};

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

pub async fn soak_bench() {
    let length = env_secs("KILN_SOAK_SECS", 3_600);
    let sample = env_secs("KILN_SOAK_SAMPLE_SECS", 60);
    let dir = tempfile::tempdir().expect("a temp dir");
    let store_dir = dir.path().join("store");
    let (server, _) = Server::start(dir.path(), &["--retention", "2m", "--warm-wait-ms", "0"]);
    server.deploy(kiln_fixtures::PROBE).await;
    let started = Instant::now();
    let mut next_sample = Duration::ZERO;
    let mut next_deploy = Duration::from_secs(60);
    let (mut triggered, mut polls, mut cancels, mut deploys) = (0u64, 0u64, 0u64, 0u64);
    println!("soak: {length:?}, a sample every {sample:?}, retention 2m");
    println!("| minute | RSS MiB | store MiB | runs triggered | ?wait polls | cancels | deploys |");
    println!("|---|---|---|---|---|---|---|");
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // A steady load: ticks missed while the machine was busy are skipped,
    // not fired in a burst to catch up.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while started.elapsed() < length {
        tick.tick().await;
        // Ten ticks a second: 50 short runs, 20 that suspend for two
        // seconds (half of them canceled), 30 polls that time out.
        let mut sleepers = Vec::new();
        for n in 0..5 {
            server.trigger("echo", serde_json::json!({"n": n})).await;
        }
        for _ in 0..2 {
            sleepers.push(
                server
                    .trigger("sleep", serde_json::json!({"ms": 2_000}))
                    .await,
            );
        }
        triggered += 7;
        for _ in 0..3 {
            let _ = server
                .get(&format!("/api/v3/runs/{}?wait=1", sleepers[0]))
                .await;
            polls += 1;
        }
        server
            .post(
                &format!("/api/v2/runs/{}/cancel", sleepers[1]),
                &serde_json::json!({}),
            )
            .await;
        cancels += 1;
        if started.elapsed() >= next_deploy {
            server.deploy(kiln_fixtures::PROBE).await;
            deploys += 1;
            next_deploy += Duration::from_secs(60);
        }
        if started.elapsed() >= next_sample {
            println!(
                "| {:.1} | {:.1} | {:.1} | {triggered} | {polls} | {cancels} | {deploys} |",
                started.elapsed().as_secs_f64() / 60.0,
                server.rss_kib() as f64 / 1024.0,
                dir_size(&store_dir) as f64 / (1024.0 * 1024.0),
            );
            next_sample += sample;
        }
    }
    println!(
        "| {:.1} | {:.1} | {:.1} | {triggered} | {polls} | {cancels} | {deploys} |",
        started.elapsed().as_secs_f64() / 60.0,
        server.rss_kib() as f64 / 1024.0,
        dir_size(&store_dir) as f64 / (1024.0 * 1024.0),
    );
    server.kill();
}
