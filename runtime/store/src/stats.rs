//! What the store tells an operator's Prometheus (the server serves it at
//! `GET /metrics`): how long commits take to become durable, how many
//! syncs the committer made and how long each took, and how many
//! commits each one covered.

use prometheus::{Histogram, HistogramOpts, IntCounter, exponential_buckets};
use std::sync::LazyLock;

/// The store's metrics, registered once in the process's default registry.
pub(crate) struct StoreMetrics {
    /// From `commit` to durable, seconds.
    pub(crate) commit_seconds: Histogram,
    /// Making one group durable, seconds (sled: writing its record to the
    /// write-ahead log synchronously, with a checkpoint when the log
    /// is full).
    pub(crate) sync_seconds: Histogram,
    /// Commits acknowledged by one sync.
    pub(crate) group_commits: Histogram,
    /// Syncs made.
    pub(crate) syncs: IntCounter,
}

/// Registers `collector` in the default registry; a second registration of
/// the same name (a second store in one process) shares the first's.
fn registered<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    let _ = prometheus::register(Box::new(collector.clone()));
    collector
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    // The names and buckets are constants: this cannot fail.
    registered(Histogram::with_opts(opts).unwrap_or_else(|e| panic!("metric {name}: {e}")))
}

static METRICS: LazyLock<StoreMetrics> = LazyLock::new(|| {
    let seconds = exponential_buckets(0.000_25, 2.0, 14).unwrap_or_default();
    StoreMetrics {
        commit_seconds: histogram(
            "kiln_store_commit_seconds",
            "Time from a commit to its acknowledgement as durable",
            seconds.clone(),
        ),
        sync_seconds: histogram(
            "kiln_store_sync_seconds",
            "Time making one group durable took (sled: its log record's synchronous write)",
            seconds,
        ),
        group_commits: histogram(
            "kiln_store_group_commits",
            "Commits one sync made durable",
            exponential_buckets(1.0, 2.0, 10).unwrap_or_default(),
        ),
        syncs: registered(
            IntCounter::new(
                "kiln_store_syncs_total",
                "Syncs the store made (sled: records written to its log)",
            )
            .unwrap_or_else(|e| panic!("metric kiln_store_syncs_total: {e}")),
        ),
    }
});

/// The store's metrics.
pub(crate) fn metrics() -> &'static StoreMetrics {
    &METRICS
}
