//! `GET /metrics`: what an operator's Prometheus scrapes, in its text
//! format.
//!
//! Counters and histograms are process-wide (one server per process) and
//! move where things happen: a run's status change and its attempts' ends
//! as the engine's writes are decided ([`observe_run`]), HTTP requests in
//! the router's middleware, snapshots where the executor takes and
//! restores them; the store adds its commit and sync metrics. Gauges of
//! what is there now (queue depth, runs executing, guest memory) are read
//! when the page is asked for.

use crate::environments::Hub;
use kiln_types::{Run, RunStatus, Timestamp};
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    TextEncoder, exponential_buckets,
};
use std::sync::LazyLock;

/// The server's metrics.
pub(crate) struct Metrics {
    /// HTTP requests by route (the matched path), method and status.
    pub(crate) http_requests: IntCounterVec,
    /// Runs that entered a status, by task and status.
    runs: IntCounterVec,
    /// Attempts' wall time from start to end, by task.
    attempt_seconds: HistogramVec,
    /// A run's time from trigger (or the end of its delay) to its first
    /// attempt's start, by task.
    start_seconds: HistogramVec,
    /// The bytes one snapshot layer stored (compressed, sealed).
    pub(crate) snapshot_bytes: Histogram,
    /// Taking a snapshot: capturing the guest's memory, hashing and
    /// compressing the layer.
    pub(crate) snapshot_capture_seconds: Histogram,
    /// Restoring a snapshot: reading its layers, a new instance, and
    /// writing the guest's memory.
    pub(crate) snapshot_restore_seconds: Histogram,
    queue_queued: IntGaugeVec,
    queue_running: IntGaugeVec,
    queue_paused: IntGaugeVec,
    guest_memory: IntGauge,
}

fn registered<C: Collector + Clone + 'static>(collector: C) -> C {
    // A name registered twice (a second server in one process, in a test)
    // keeps the first registration; the values are process-wide anyway.
    let _ = prometheus::register(Box::new(collector.clone()));
    collector
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(
        IntCounterVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(
        IntGaugeVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

fn histogram_vec(name: &str, help: &str, buckets: Vec<f64>, labels: &[&str]) -> HistogramVec {
    registered(
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    registered(
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

/// Seconds from 1 ms to about 9 hours, doubling.
fn seconds() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 25).unwrap_or_default()
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    http_requests: counter(
        "kiln_http_requests_total",
        "HTTP requests answered, by route, method and status",
        &["route", "method", "status"],
    ),
    runs: counter(
        "kiln_runs_total",
        "Runs that entered a status since the server started, by task and status",
        &["task", "status"],
    ),
    attempt_seconds: histogram_vec(
        "kiln_attempt_duration_seconds",
        "Attempts' wall time from start to end, waits included, by task",
        seconds(),
        &["task"],
    ),
    start_seconds: histogram_vec(
        "kiln_run_start_latency_seconds",
        "Time from a run's trigger (or the end of its delay) to its first attempt's start, by task",
        seconds(),
        &["task"],
    ),
    snapshot_bytes: histogram(
        "kiln_snapshot_bytes",
        "Bytes one snapshot layer stored, compressed and sealed",
        exponential_buckets(1024.0, 4.0, 12).unwrap_or_default(),
    ),
    snapshot_capture_seconds: histogram(
        "kiln_snapshot_capture_seconds",
        "Time to capture a waiting guest's memory and store it as a layer",
        seconds(),
    ),
    snapshot_restore_seconds: histogram(
        "kiln_snapshot_restore_seconds",
        "Time to read a run's snapshot layers, instantiate and restore the guest from them",
        seconds(),
    ),
    queue_queued: gauge(
        "kiln_queue_queued",
        "Runs waiting in a queue to start, by environment and queue",
        &["environment", "queue"],
    ),
    queue_running: gauge(
        "kiln_queue_running",
        "Runs of a queue executing now, by environment and queue",
        &["environment", "queue"],
    ),
    queue_paused: gauge(
        "kiln_queue_paused",
        "1 when a queue is paused, by environment and queue",
        &["environment", "queue"],
    ),
    guest_memory: registered(
        IntGauge::new(
            "kiln_guest_memory_bytes",
            "Linear memory held by the guest instances alive now",
        )
        .unwrap_or_else(|e| panic!("metric kiln_guest_memory_bytes: {e}")),
    ),
});

/// The server's metrics.
pub(crate) fn metrics() -> &'static Metrics {
    &METRICS
}

/// What the engine saw of a run before it decided a change: enough to tell
/// what the change was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Before {
    /// Its status.
    pub(crate) status: RunStatus,
    /// Its last attempt's number and whether that attempt had ended.
    pub(crate) attempt: Option<(u32, bool)>,
}

impl Before {
    /// What `run` is now.
    pub(crate) fn of(run: &Run) -> Self {
        Before {
            status: run.status,
            attempt: run
                .attempts
                .last()
                .map(|a| (a.number, a.finished_at.is_some())),
        }
    }
}

fn seconds_between(from: Timestamp, to: Timestamp) -> f64 {
    to.as_millis().saturating_sub(from.as_millis()) as f64 / 1000.0
}

/// Counts what changed from `before` (nothing: a new run) to `run`: the
/// status it entered, an attempt that ended, a first attempt that started.
pub(crate) fn observe_run(before: Option<Before>, run: &Run) {
    let m = metrics();
    // A run made for no deployed task (it waited for a version) may name
    // any task at all: those share one series, whatever becomes of them,
    // so a caller cannot grow the page without bound.
    let task = if run.status == RunStatus::PendingVersion || run.deployment_id.is_none() {
        "(undeployed)"
    } else {
        run.task_id.as_str()
    };
    if before.map(|b| b.status) != Some(run.status) {
        m.runs.with_label_values(&[task, run.status.as_str()]).inc();
    }
    let Some(last) = run.attempts.last() else {
        return;
    };
    let was = before.and_then(|b| b.attempt);
    if let Some(finished) = last.finished_at
        && was != Some((last.number, true))
    {
        m.attempt_seconds
            .with_label_values(&[task])
            .observe(seconds_between(last.started_at, finished));
    }
    if last.number == 1 && was.is_none() {
        let since = run
            .delayed_until
            .map_or(run.created_at, |d| d.max(run.created_at));
        m.start_seconds
            .with_label_values(&[task])
            .observe(seconds_between(since, last.started_at));
    }
}

/// The page: every metric, with the gauges read now.
pub(crate) fn render(hub: &Hub) -> Result<String, prometheus::Error> {
    let m = metrics();
    for gauge in [&m.queue_queued, &m.queue_running, &m.queue_paused] {
        // Queues a deploy removed disappear from the page.
        gauge.reset();
    }
    for env in hub.all() {
        for queue in env.executor.queues() {
            let labels = [&*env.env_id, queue.name.as_str()];
            let stats = &queue.stats;
            m.queue_queued
                .with_label_values(&labels)
                .set(stats.queued as i64);
            m.queue_running
                .with_label_values(&labels)
                .set(i64::from(stats.running));
            m.queue_paused
                .with_label_values(&labels)
                .set(i64::from(stats.paused));
        }
    }
    m.guest_memory
        .set(i64::try_from(kiln_sandbox::guest_memory_bytes()).unwrap_or(i64::MAX));
    let mut page = Vec::new();
    TextEncoder::new().encode(&prometheus::gather(), &mut page)?;
    String::from_utf8(page).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_manifest::Machine;
    use kiln_types::{Attempt, RunId};

    fn run(status: RunStatus) -> Run {
        let mut run = Run::queued(
            RunId::generate(1),
            "metrics-unit",
            kiln_types::DeploymentId::generate(1),
            "1",
            "{}",
            Timestamp(1_000),
        );
        run.status = status;
        run
    }

    fn count(status: RunStatus) -> u64 {
        metrics()
            .runs
            .with_label_values(&["metrics-unit", status.as_str()])
            .get()
    }

    #[test]
    fn a_run_counts_each_status_it_enters_once() {
        let before = count(RunStatus::Executing);
        let mut executing = run(RunStatus::Executing);
        executing
            .attempts
            .push(Attempt::started(1, Machine::default(), Timestamp(1_250)));
        let queued = Before::of(&run(RunStatus::Queued));
        let starts = || {
            metrics()
                .start_seconds
                .with_label_values(&["metrics-unit"])
                .get_sample_count()
        };
        let started = starts();
        observe_run(Some(queued), &executing);
        assert_eq!(count(RunStatus::Executing), before + 1);
        assert_eq!(starts(), started + 1);
        // Writing the run again in the same status (its logs, say) is not
        // a change, and the attempt started only once.
        observe_run(Some(Before::of(&executing)), &executing);
        assert_eq!(count(RunStatus::Executing), before + 1);
        assert_eq!(starts(), started + 1);
    }
}
