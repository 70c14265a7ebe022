//! Traces for an operator's OpenTelemetry backend, over OTLP/HTTP, off
//! unless `kiln serve --otlp-endpoint` names a collector.
//!
//! A run is a trace: its span runs from its trigger to its end, with a span
//! per attempt, per host call, per wait (a durable fetch is a client span)
//! and, for a child run, its own spans under the parent attempt that
//! triggered it. A trigger's W3C `traceparent` header is kept on the run,
//! so a backend's trace continues into it.
//!
//! A run's attempts and waits outlive processes (a run suspends for days,
//! the server restarts, another attempt runs later), so its spans are not
//! `tracing` spans held open in memory, which would die with the process:
//! they are built when the run ends, from its stored record and journal,
//! with the times those kept and ids derived from the run's id
//! ([`ids`]). A watcher follows each environment's change feed (durable
//! commits only) and hands every run that reached a final status to one
//! exporter task, which batches them to the collector.

mod http;
mod ids;
mod spans;

pub(crate) use ids::{child_context, trace_id};

use crate::feed::{Feed, Since};
use kiln_store::Store;
use kiln_types::RunId;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How many finished runs' traces wait for the exporter; past that, traces
/// are dropped (and counted) rather than slowing runs down.
const QUEUE: usize = 4_096;
/// The most spans one export request carries.
const BATCH_SPANS: usize = 2_048;
/// How many exported runs a watcher remembers, so that a finished run
/// written again (its tags, say) is not exported twice.
const REMEMBERED: usize = 65_536;

/// Where finished runs' traces go.
#[derive(Clone)]
pub(crate) struct Exporter {
    sender: mpsc::Sender<Vec<SpanData>>,
    scope: InstrumentationScope,
    dropped: Arc<AtomicU64>,
}

/// The URL traces are posted to: the collector's base URL with OTLP's
/// `/v1/traces` path, unless it names that path already.
fn traces_url(endpoint: &str) -> anyhow::Result<String> {
    let endpoint = endpoint.trim().trim_end_matches('/');
    let url = if endpoint.ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{endpoint}/v1/traces")
    };
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| anyhow::anyhow!("--otlp-endpoint {endpoint:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        anyhow::bail!("--otlp-endpoint must be an http:// or https:// URL, not {endpoint:?}");
    }
    Ok(url)
}

impl Exporter {
    /// Starts exporting to the OTLP/HTTP collector at `endpoint` (its base
    /// URL, e.g. `http://localhost:4318`). Must be called on the runtime.
    pub(crate) fn start(endpoint: &str) -> anyhow::Result<Self> {
        let url = traces_url(endpoint)?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(http::Client::new(EXPORT_TIMEOUT)?)
            .with_endpoint(url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name("kiln")
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(export_loop(exporter, receiver));
        tracing::info!(%url, "exporting run traces over OTLP");
        Ok(Exporter {
            sender,
            scope: InstrumentationScope::builder("kiln")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            dropped: Arc::default(),
        })
    }

    /// Queues one run's spans; drops them if the exporter is that far
    /// behind.
    fn send(&self, spans: Vec<SpanData>) {
        if self.sender.try_send(spans).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "the trace exporter is behind: traces of finished runs were dropped"
                );
            }
        }
    }

    /// Follows an environment's change feed and exports the trace of each
    /// run that reaches a final status, until the environment's feed is
    /// gone.
    pub(crate) fn follow(&self, feed: Arc<Feed>, store: Store, project: &str, environment: &str) {
        let exporter = self.clone();
        let labels = vec![
            KeyValue::new("kiln.project", project.to_string()),
            KeyValue::new("kiln.environment", environment.to_string()),
        ];
        // Subscribed before the offset is read: a change after it wakes
        // the watcher.
        let mut watch = feed.watch();
        let mut offset = feed.last();
        // Runs that ended before this process started were exported by
        // the one before it (or lost with it): not again.
        let started = kiln_types::Timestamp::now();
        tokio::spawn(async move {
            let mut exported = Remembered::default();
            loop {
                watch.mark_unchanged();
                match feed.next_after(offset) {
                    Since::Changed { runs, until } => {
                        offset = until;
                        let fresh: Vec<RunId> = runs
                            .into_iter()
                            .filter(|id| !exported.contains(id))
                            .collect();
                        // The runs are read, and journals turned into
                        // spans, off the runtime's workers: one task a
                        // stretch of changes.
                        let (reader, store, labels) =
                            (exporter.clone(), store.clone(), labels.clone());
                        // Each trace is queued as soon as it is built.
                        let done = tokio::task::spawn_blocking(move || {
                            let mut done = Vec::new();
                            for id in fresh {
                                if let Some(spans) = reader.trace_of(&store, &id, &labels, started)
                                {
                                    if !spans.is_empty() {
                                        reader.send(spans);
                                    }
                                    done.push(id);
                                }
                            }
                            done
                        });
                        for id in done.await.unwrap_or_default() {
                            exported.insert(id);
                        }
                    }
                    Since::Forgotten => {
                        offset = feed.last();
                        tracing::warn!(
                            "the trace watcher fell behind what the change feed remembers: traces of some finished runs were not exported"
                        );
                    }
                }
                // More already waiting: on with the next stretch.
                if offset < feed.last() {
                    continue;
                }
                if watch.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// The spans of run `id` if it has ended since `started`: none (an
    /// empty trace, so it is not looked at again) if its trace is not
    /// recorded.
    fn trace_of(
        &self,
        store: &Store,
        id: &RunId,
        labels: &[KeyValue],
        started: kiln_types::Timestamp,
    ) -> Option<Vec<SpanData>> {
        let run = match store.run(id) {
            Ok(Some(run))
                if run.status.is_final()
                    && run.finished_at.unwrap_or(run.updated_at) >= started =>
            {
                run
            }
            Ok(_) => return None,
            Err(error) => {
                tracing::warn!(%error, run = %id, "reading a finished run for its trace failed");
                return None;
            }
        };
        if !ids::sampled(&run) {
            return Some(Vec::new());
        }
        let journal = match store.journal(id) {
            Ok(journal) => journal,
            Err(error) => {
                tracing::warn!(%error, run = %id, "reading a finished run's journal for its trace failed");
                Vec::new()
            }
        };
        Some(spans::spans_of(&run, &journal, &self.scope, labels))
    }
}

/// Sends queued spans to the collector, a batch at a time, in order. A
/// batch the collector refuses or cannot take is dropped with a warning
/// (once per stretch of failures): traces are telemetry, and runs never
/// wait on them.
async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut receiver: mpsc::Receiver<Vec<SpanData>>,
) {
    let mut failing = false;
    while let Some(mut batch) = receiver.recv().await {
        while batch.len() < BATCH_SPANS {
            match receiver.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        match exporter.export(batch).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("exporting traces works again");
            }
            Ok(()) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "exporting traces failed; traces are dropped until it works again");
            }
            Err(_) => {}
        }
    }
}

/// The runs a watcher exported lately.
#[derive(Default)]
struct Remembered {
    set: HashSet<RunId>,
    order: VecDeque<RunId>,
}

impl Remembered {
    fn contains(&self, id: &RunId) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: RunId) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
            if self.order.len() > REMEMBERED
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_store::MemoryBackend;
    use kiln_types::{DeploymentId, Run, RunStatus, Timestamp, TraceContext};

    #[tokio::test]
    async fn a_run_is_traced_once_it_ends_if_it_ended_since_the_start() {
        let exporter = Exporter::start("http://127.0.0.1:9").expect("an exporter");
        let store = Store::new(Arc::new(MemoryBackend::new()));
        let run = |finished: Option<u64>| {
            let mut run = Run::queued(
                RunId::generate(1),
                "task",
                DeploymentId::none(),
                "1",
                "{}",
                Timestamp(1_000),
            );
            if let Some(at) = finished {
                run.status = RunStatus::Completed;
                run.finished_at = Some(Timestamp(at));
            }
            run
        };
        let running = run(None);
        let before_start = run(Some(1_500));
        let since_start = run(Some(2_500));
        let mut unrecorded = run(Some(2_500));
        unrecorded.trace = TraceContext::from_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        );
        for r in [&running, &before_start, &since_start, &unrecorded] {
            store.put_run(r).await.expect("stored");
        }
        let started = Timestamp(2_000);
        let trace = |r: &Run| exporter.trace_of(&store, &r.id, &[], started);
        assert!(trace(&running).is_none(), "not yet: it has not ended");
        assert!(
            trace(&before_start).is_none(),
            "exported by the server before this one"
        );
        assert_eq!(trace(&since_start).map(|s| s.len()), Some(1));
        assert_eq!(
            trace(&unrecorded).map(|s| s.len()),
            Some(0),
            "looked at, and nothing to export"
        );
    }

    #[test]
    fn the_endpoint_is_the_collectors_base_url() {
        assert_eq!(
            traces_url("http://localhost:4318").unwrap(),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://localhost:4318/").unwrap(),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://otel.example/v1/traces").unwrap(),
            "https://otel.example/v1/traces"
        );
        assert!(traces_url("localhost:4318").is_err());
        assert!(traces_url("ftp://x").is_err());
    }
}
