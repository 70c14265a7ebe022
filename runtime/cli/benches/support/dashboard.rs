//! The `dashboard` group: how long the dashboard's pages take, from request
//! to the last byte, with 100,000 runs stored.
//!
//! The runs are written straight into a store (finished `hello-world` runs,
//! one in a hundred `FAILED` and tagged `tenant-7`), then `kiln serve`
//! opens it and each page is read 200 times after 20 to warm up.

use super::{KEY, Server, report};
use kiln_store::{Batch, SledBackend, Store};
use kiln_types::{DeploymentId, Run, RunId, RunStatus, Timestamp};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Writes `count` finished runs, oldest first; returns their ids.
async fn stored_runs(store_dir: &std::path::Path, count: usize) -> Vec<RunId> {
    let store = Store::new(Arc::new(SledBackend::open(store_dir).expect("a store")));
    let now = Timestamp::now().as_millis();
    let deployment = DeploymentId::generate(now);
    let mut ids = Vec::with_capacity(count);
    for chunk in 0..count.div_ceil(1_000) {
        let mut batch = Batch::default();
        for i in chunk * 1_000..((chunk + 1) * 1_000).min(count) {
            let created = Timestamp(now - (count - i) as u64);
            let mut run = Run::queued(
                RunId::generate(created.as_millis()),
                "hello-world",
                deployment.clone(),
                "20261202.1",
                r#"{"name":"Ada"}"#,
                created,
            );
            run.status = RunStatus::Completed;
            run.output = Some(r#"{"message":"Hello, Ada!"}"#.to_string());
            if i % 100 == 0 {
                run.status = RunStatus::Failed;
                run.output = None;
                run.tags = vec!["tenant-7".to_string()];
            }
            run.finished_at = Some(created);
            ids.push(run.id.clone());
            batch.put_run(&run);
        }
        store.commit(batch).await.expect("stored");
    }
    ids
}

pub(crate) async fn dashboard_bench(count: usize) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let written = Instant::now();
    let ids = stored_runs(&dir.path().join("store"), count).await;
    println!("dashboard: wrote {count} runs in {:.1?}", written.elapsed());
    let (server, ready) = Server::start(dir.path(), &["--retention", "forever"]);
    println!("dashboard: the server opened them in {ready:.1?}");
    let http = reqwest::Client::new();
    let middle = &ids[count / 2];
    let pages = [
        ("runs, newest page", "/runs".to_string()),
        (
            "runs, a page in the middle",
            format!("/runs?older={middle}"),
        ),
        (
            "runs, status=FAILED (1 in 100)",
            "/runs?status=FAILED".to_string(),
        ),
        (
            "runs, tag=tenant-7 (1 in 100)",
            "/runs?tag=tenant-7".to_string(),
        ),
        (
            "runs, created in the last 10 s",
            "/runs?from=10s".to_string(),
        ),
        ("a run", format!("/runs/{middle}")),
        ("queues", "/queues".to_string()),
        ("tokens", "/tokens".to_string()),
        ("deployments", "/deployments".to_string()),
        // The API's list, which `kiln dev` and backends page through.
        ("API runs.list, newest page", "/api/v1/runs".to_string()),
        (
            "API runs.list, a page in the middle",
            format!("/api/v1/runs?page[after]={middle}"),
        ),
        (
            "API runs.list, status=FAILED",
            "/api/v1/runs?filter[status]=FAILED".to_string(),
        ),
    ];
    for (name, path) in pages {
        let mut samples: Vec<Duration> = Vec::new();
        for i in 0..220 {
            let started = Instant::now();
            let answer = http
                .get(format!("{}{path}", server.url))
                .header("cookie", format!("kiln_key={KEY}"))
                .bearer_auth(KEY)
                .send()
                .await
                .expect("the server answers");
            assert_eq!(answer.status(), 200, "{path}");
            let body = answer.bytes().await.expect("a page");
            assert!(!body.is_empty());
            if i >= 20 {
                samples.push(started.elapsed());
            }
        }
        report(&format!("dashboard: {name}"), &mut samples);
    }
    server.kill();
}
