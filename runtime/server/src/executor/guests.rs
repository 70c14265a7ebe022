//! The runtime that run slices execute on, apart from the one that serves
//! HTTP.
//!
//! A guest's step holds the thread that polls it until its next epoch
//! yield (10 ms of CPU). On the runtime that serves the API, two busy guests
//! held both of its workers on two cores, and a request waited for one of
//! them to yield: `GET /healthz` reached 10 ms at p99. Run slices therefore
//! execute on a runtime of their own, with as many workers as there are
//! cores and its own blocking pool for their snapshots; the API's workers
//! only hand them work, and the kernel shares the cores between the two
//! runtimes' threads. The guests' threads ask for a long scheduler slice
//! ([`kiln_sandbox::cpu`]) so that a request's thread gets a core first.

use std::future::Future;
use std::sync::OnceLock;

/// The guests' runtime, built on first use and kept for the process's life.
static GUESTS: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();

fn build() -> Option<tokio::runtime::Runtime> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("kiln-guest")
        .on_thread_start(kiln_sandbox::cpu::prefer_long)
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            tracing::warn!(%error, "no runtime of their own for guests; they share the API's");
            None
        }
    }
}

/// Runs `slice` (a run's execution) on the guests' runtime, or on the
/// calling runtime if that one could not be built.
pub(crate) fn spawn<F>(slice: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match GUESTS.get_or_init(build) {
        Some(runtime) => drop(runtime.spawn(slice)),
        None => drop(tokio::spawn(slice)),
    }
}
