//! `GET /metrics`: Prometheus's text format, read with a Prometheus parser,
//! whose counters move as runs complete and suspend.

use crate::harness::{KEY, Kiln, data_dir};
use serde_json::json;

/// The page's samples, by metric name and labels.
struct Page(Vec<prometheus_parse::Sample>);

impl Page {
    async fn read(kiln: &Kiln) -> Page {
        let response = reqwest::Client::new()
            .get(format!("{}/metrics", kiln.url))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("the server answers");
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let text = response.text().await.unwrap();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape =
            prometheus_parse::Scrape::parse(lines).expect("the page parses as Prometheus text");
        Page(scrape.samples)
    }

    /// The value of the sample named `name` whose labels include `labels`
    /// (a histogram's count for `..._count`); 0 when there is none.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.last().map_or(0.0, |b| b.count)
                }
                prometheus_parse::Value::Summary(_) => 0.0,
            })
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.metric == name)
    }
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_as_runs_complete() {
    let dir = data_dir();
    let kiln = Kiln::start_with(dir.path(), &["--warm-wait-ms", "0"]);
    kiln.deploy(kiln_fixtures::HELLO_WORLD).await;

    let before = Page::read(&kiln).await;
    let completed = [("task", "hello-world"), ("status", "COMPLETED")];
    assert_eq!(before.value("kiln_runs_total", &completed), 0.0);

    for name in ["Ada", "Grace", "Edsger"] {
        let id = kiln
            .trigger_ok("hello-world", json!({ "name": name }))
            .await;
        assert_eq!(kiln.finished(&id).await["status"], "COMPLETED");
    }
    // A countdown waits twice: suspended (snapshotted) and restored.
    kiln.deploy(kiln_fixtures::COUNTDOWN).await;
    let id = kiln
        .trigger_ok("countdown", json!({"steps": 2, "wait_ms": 50}))
        .await;
    assert_eq!(kiln.finished(&id).await["status"], "COMPLETED");

    let after = Page::read(&kiln).await;
    assert_eq!(after.value("kiln_runs_total", &completed), 3.0);
    assert_eq!(
        after.value(
            "kiln_runs_total",
            &[("task", "hello-world"), ("status", "EXECUTING")]
        ),
        3.0
    );
    assert_eq!(
        after.value(
            "kiln_runs_total",
            &[("task", "countdown"), ("status", "WAITING")]
        ),
        2.0
    );
    assert_eq!(
        after.value(
            "kiln_attempt_duration_seconds_count",
            &[("task", "hello-world")]
        ),
        3.0
    );
    assert_eq!(
        after.value(
            "kiln_run_start_latency_seconds_count",
            &[("task", "hello-world")]
        ),
        3.0
    );
    assert_eq!(after.value("kiln_snapshot_capture_seconds_count", &[]), 2.0);
    assert_eq!(after.value("kiln_snapshot_restore_seconds_count", &[]), 2.0);
    assert!(after.value("kiln_snapshot_bytes_count", &[]) >= 2.0);
    // Every trigger answered, and the store synced for them.
    let triggers = [
        ("route", "/api/v1/tasks/:task_id/trigger"),
        ("method", "POST"),
        ("status", "200"),
    ];
    assert_eq!(
        after.value("kiln_http_requests_total", &triggers),
        4.0,
        "{:?}",
        after
            .0
            .iter()
            .filter(|s| s.metric == "kiln_http_requests_total")
            .collect::<Vec<_>>()
    );
    assert!(
        after.value("kiln_store_syncs_total", &[]) > before.value("kiln_store_syncs_total", &[])
    );
    assert!(
        after.value("kiln_store_commit_seconds_count", &[])
            > before.value("kiln_store_commit_seconds_count", &[])
    );
    // Queues and guest memory are read at each scrape.
    assert!(after.has("kiln_queue_queued"), "queue depth is on the page");
    assert!(after.has("kiln_queue_running"));
    assert!(after.has("kiln_guest_memory_bytes"));

    // Methods outside the usual seven share one series.
    let odd = reqwest::Client::new()
        .request(
            reqwest::Method::from_bytes(b"PURGE").unwrap(),
            format!("{}/healthz", kiln.url),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(odd.status(), 405);
    let page = Page::read(&kiln).await;
    assert_eq!(
        page.value(
            "kiln_http_requests_total",
            &[("route", "/healthz"), ("method", "OTHER")]
        ),
        1.0
    );

    // Without the server's key there is nothing to read.
    let (status, _) = kiln
        .request_as("not-a-key", reqwest::Method::GET, "/metrics", None)
        .await;
    assert_eq!(status, 401);
}
