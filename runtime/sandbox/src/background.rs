//! Low-priority threads for the CPU-heavy work around guests: compiling
//! bundles, and taking and reading snapshot layers (hashing, compressing,
//! sealing; verifying, decompressing, composing).
//!
//! On tokio's blocking pool that work competes for the cores on equal terms
//! with the runtime workers that answer requests, so on a small machine a
//! cheap request waits behind a 50 MiB snapshot for a core. These threads
//! run at a lower scheduling priority (nice 10 on Linux): the runtime
//! workers get a core first, and the work still gets all the CPU nobody else
//! wants. There are as many threads as cores.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

/// How much lower than the server the threads run (Linux `nice`).
const NICENESS: i32 = 10;

fn pool() -> &'static Mutex<Sender<Job>> {
    static POOL: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (sender, receiver) = channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        for n in 0..threads {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("kiln-background-{n}"))
                .spawn(move || work(&receiver));
            if let Err(error) = spawned {
                tracing::error!(%error, "starting a background thread failed");
            }
        }
        Mutex::new(sender)
    })
}

fn work(receiver: &Mutex<Receiver<Job>>) {
    lower_priority();
    loop {
        let job = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: `setpriority` with `PRIO_PROCESS` and id 0 changes only the
    // calling thread's niceness on Linux; it reads and writes no memory of
    // ours.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICENESS) };
    if result != 0 {
        tracing::debug!("could not lower a background thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Runs `job` on a low-priority thread and waits for its result without
/// holding a runtime worker. `Err` if the job panicked.
pub async fn run<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (done, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        let _ = done.send(outcome);
    });
    let sent = match pool().lock() {
        Ok(sender) => sender.send(job),
        Err(poisoned) => poisoned.into_inner().send(job),
    };
    if sent.is_err() {
        return Err("the background threads are gone".into());
    }
    match result.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err("a background job panicked".into()),
        Err(_) => Err("a background job was dropped".into()),
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn jobs_run_and_a_panic_is_an_error() {
        assert_eq!(super::run(|| 6 * 7).await, Ok(42));
        let panicked = super::run(|| -> u8 { panic!("boom") }).await;
        assert!(panicked.is_err());
        assert_eq!(super::run(|| "still serving").await, Ok("still serving"));
    }
}
