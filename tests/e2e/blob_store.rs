//! `kiln serve --store postgres://… --blob-store s3://…`: snapshots,
//! bundles and large payloads in an S3-compatible bucket (moto), the
//! database holding references to them, through a SIGKILL and restart.

use crate::harness::{KEY, Kiln, data_dir};
use crate::moto::Moto;
use crate::pg_server::Postgres;
use crate::postgres::refused;
use serde_json::json;
use std::time::{Duration, Instant};

/// The nodes' credentials for moto (which does not check them), and their
/// shared master key.
const ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "kiln"),
    ("AWS_SECRET_ACCESS_KEY", "kiln"),
    (
        "KILN_MASTER_KEY",
        "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
    ),
];

/// The store key each object in the bucket holds the value of.
fn keys(s3: &Moto) -> Vec<String> {
    s3.objects("runs")
        .into_iter()
        .filter_map(|(name, _)| {
            let hex = name.strip_prefix("kiln/")?.split_once('/')?.0;
            let bytes: Option<Vec<u8>> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect();
            Some(String::from_utf8_lossy(&bytes?).into_owned())
        })
        .collect()
}

#[tokio::test]
async fn snapshots_bundles_and_payloads_live_in_the_bucket_through_a_kill() {
    let pg = Postgres::start();
    let s3 = Moto::start();
    let url = pg.database("kiln");
    let blob_url = s3.bucket("runs", "min-size=1024");
    let args = [
        "--store",
        &url,
        "--blob-store",
        &blob_url,
        "--warm-wait-ms",
        "100",
    ];
    let dir = data_dir();
    let kiln = Kiln::start_with_env(dir.path(), &args, &ENV);
    kiln.deploy(kiln_fixtures::PROBE).await;
    // A standby reads the bundle through the bucket, and compiles it ahead.
    let standby_dir = data_dir();
    let standby = Kiln::start_with_env(standby_dir.path(), &args, &ENV);
    crate::cluster::compiled_within(standby_dir.path(), 1, Duration::from_secs(60)).await;
    standby.kill();
    let payload = json!({"blob": "p".repeat(1024 * 1024)});
    let delayed = kiln
        .trigger_with("echo", payload.clone(), json!({"delay": "2s"}))
        .await;
    let big = kiln
        .trigger_with("big-output", json!({"bytes": 1024 * 1024}), json!({}))
        .await;
    let waiting = kiln
        .trigger_with("hold-heap", json!({"mib": 2, "wait_ms": 10_000}), json!({}))
        .await;
    assert_eq!(kiln.finished(&big).await["status"], "COMPLETED");
    kiln.until_journal(&waiting, |e| e.iter().any(|e| e["type"] == "SUSPENDED"))
        .await;
    let stored = keys(&s3);
    for kind in ["bundle/", "snap/", "run-blob/"] {
        assert!(
            stored.iter().any(|k| k.starts_with(kind)),
            "no {kind} object in {stored:?}"
        );
    }
    // The database holds references, not the values.
    let largest: usize = pg
        .query(&url, "SELECT max(length(value)) FROM kiln_entries")
        .parse()
        .expect("a length");
    assert!(largest < 1024, "the table's largest value: {largest} bytes");
    // Still waiting when killed: it goes on from the snapshot in the bucket.
    assert_eq!(kiln.run(&waiting).await["status"], "WAITING");
    kiln.kill();

    // After a SIGKILL the runs go on from what the bucket holds: the
    // snapshot, the delayed run's payload, the output.
    let kiln = Kiln::start_with_env(dir.path(), &args, &ENV);
    let run = kiln.finished(&waiting).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["attemptCount"], 1, "{run}");
    let run = kiln.finished(&delayed).await;
    assert_eq!(run["status"], "COMPLETED", "{}", run["error"]);
    assert_eq!(run["output"]["payload"], payload);
    let run = kiln.run(&big).await;
    assert_eq!(run["output"].as_str().map(str::len), Some(1024 * 1024));

    // A finished run's snapshot is deleted with its rows.
    let deadline = Instant::now() + Duration::from_secs(30);
    while keys(&s3).iter().any(|k| k.starts_with("snap/")) {
        assert!(
            Instant::now() < deadline,
            "snapshot objects outlived their runs: {:?}",
            keys(&s3)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_bucket_that_fails_stops_the_server_before_it_acknowledges() {
    let pg = Postgres::start();
    let s3 = Moto::start();
    let url = pg.database("kiln");
    let blob_url = s3.bucket("runs", "min-size=1024");
    let args = ["--store", &url, "--blob-store", &blob_url];
    let dir = data_dir();
    let mut kiln = Kiln::start_with_env(dir.path(), &args, &ENV);
    kiln.deploy(kiln_fixtures::PROBE).await;
    // The bucket goes away: its objects (the bundle), then the bucket.
    for (name, _) in s3.objects("runs") {
        s3.delete(&format!("runs/{name}"));
    }
    s3.delete("runs");
    // A payload over the threshold must go to the bucket before the
    // trigger is acknowledged; the bucket is gone, so the server stops and
    // the trigger is not acknowledged.
    let payload = json!({"blob": "p".repeat(4096)}).to_string();
    let answer = reqwest::Client::new()
        .post(format!("{}/api/v1/tasks/echo/trigger", kiln.url))
        .bearer_auth(KEY)
        .json(&json!({"payload": payload, "options": {"payloadType": "application/json"}}))
        .timeout(Duration::from_secs(120))
        .send()
        .await;
    if let Ok(response) = answer {
        assert_ne!(
            response.status().as_u16(),
            200,
            "the trigger was acknowledged"
        );
    }
    let exited = kiln
        .exited_within(Duration::from_secs(120))
        .expect("the server stops");
    assert_eq!(exited.code(), Some(74));
}

#[tokio::test]
async fn a_blob_store_is_refused_with_the_reason() {
    let dir = data_dir();
    let why = refused(dir.path(), &["--blob-store", "s3://kiln/x"]);
    assert!(why.contains("it needs --store postgres://"), "{why}");
    let pg = Postgres::start();
    let url = pg.database("kiln");
    let why = refused(
        dir.path(),
        &["--store", &url, "--blob-store", "s3://kiln/x?colour=red"],
    );
    assert!(why.contains("unknown option `colour`"), "{why}");
    // No credentials in the environment the test command runs in.
    let why = refused(
        dir.path(),
        &["--store", &url, "--blob-store", "s3://kiln/x"],
    );
    assert!(why.contains("set AWS_ACCESS_KEY_ID"), "{why}");
}
