//! The store alone, without HTTP, the sandbox or the engine: what a durable
//! commit through the sled backend costs, to tell how much of a run's cost
//! is the store's.
//!
//! Each writer commits a run's worth of writes: a 1 KiB record and two
//! small index keys, as [`kiln_store::Batch::put_run`] writes them. Three
//! shapes:
//! - one writer, each commit awaited: the latency floor of a durable
//!   commit (p50, p99);
//! - 64 writers for 5 s, each commit awaited: commits a second and the
//!   process's CPU time per commit (sled's I/O threads included);
//! - the same over the in-memory backend: what is left without sled.
//!
//! And 64 writers, each making what a no-op run makes: two commits it
//! does not await (a claim, a journal entry) between two it awaits (the
//! trigger, the end), first each on its own, then with the journal entry
//! deferred ([`kiln_store::Backend::defer`]) to join the end's commit.

use super::percentile;
use kiln_store::{Backend, MemoryBackend, Op, SledBackend};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// This process's CPU time so far, in milliseconds.
fn own_cpu_ms() -> u64 {
    super::cpu_ms_of("/proc/self/stat")
}

/// A run's worth of writes under key `n`.
fn run_ops(n: u64) -> Vec<Op> {
    let id = format!("run_{n:016}");
    vec![
        Op::Put(format!("run/{id}").into_bytes(), vec![b'x'; 1024]),
        Op::Put(format!("active/{id}").into_bytes(), Vec::new()),
        Op::Put(format!("open/{id}").into_bytes(), Vec::new()),
    ]
}

/// A journal entry's write under key `n`.
fn journal_op(n: u64) -> Vec<Op> {
    vec![Op::Put(
        format!("journal/run_{n:016}/1").into_bytes(),
        vec![b'j'; 120],
    )]
}

/// How a writer makes one unit of work.
#[derive(Clone, Copy)]
enum Shape {
    /// One commit, awaited.
    Commit,
    /// A no-op run: trigger (awaited), claim and journal entry (not
    /// awaited), end (awaited).
    Run { defer_journal: bool },
}

async fn unit(backend: &Arc<dyn Backend>, shape: Shape, n: u64) {
    match shape {
        Shape::Commit => backend.commit(run_ops(n)).await.expect("a commit"),
        Shape::Run { defer_journal } => {
            backend.commit(run_ops(n)).await.expect("the trigger");
            drop(backend.commit(run_ops(n)));
            if defer_journal {
                backend.defer(journal_op(n));
            } else {
                drop(backend.commit(journal_op(n)));
            }
            backend.commit(run_ops(n)).await.expect("the end");
        }
    }
}

/// Units a second and CPU per unit with `writers` concurrent writers for
/// `secs` seconds.
async fn concurrent(
    backend: Arc<dyn Backend>,
    shape: Shape,
    writers: usize,
    secs: u64,
) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let cpu = own_cpu_ms();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers as u64 {
        let (backend, stop, done) = (backend.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = w << 40;
            while !stop.load(Ordering::Relaxed) {
                unit(&backend, shape, n).await;
                // The in-memory backend never makes a writer wait.
                tokio::task::yield_now().await;
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let units = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    for t in tasks {
        t.await.expect("a writer");
    }
    let cpu = own_cpu_ms() - cpu;
    (
        units as f64 / elapsed.as_secs_f64(),
        cpu as f64 * 1000.0 / units.max(1) as f64,
    )
}

/// The `store` bench group.
pub async fn store_bench() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let sled: Arc<dyn Backend> = Arc::new(SledBackend::open(dir.path()).expect("a store"));
    let mut latencies = Vec::new();
    for n in 0..1_050u64 {
        let started = Instant::now();
        sled.commit(run_ops(n)).await.expect("a commit");
        if n >= 50 {
            latencies.push(started.elapsed());
        }
    }
    println!(
        "store, sled, one writer: a durable commit p50 {:.3?} p99 {:.3?}",
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 0.99)
    );
    let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::default());
    for (name, backend) in [("sled", sled.clone()), ("memory", memory.clone())] {
        let (rate, cpu_us) = concurrent(backend, Shape::Commit, 64, 5).await;
        println!("store, {name}, 64 writers: {rate:.0} commits/s, {cpu_us:.0} µs CPU a commit");
    }
    for defer_journal in [false, true] {
        let (rate, cpu_us) = concurrent(sled.clone(), Shape::Run { defer_journal }, 64, 5).await;
        println!(
            "store, sled, 64 writers of a no-op run's 4 writes ({}): {rate:.0} runs/s, {cpu_us:.0} µs CPU a run",
            if defer_journal {
                "journal entry deferred, 3 commits"
            } else {
                "4 commits"
            }
        );
    }
}
