//! Long scheduler slices for Kiln's background CPU work.
//!
//! A guest's steps, a snapshot's capture, hashing and compression, a
//! bundle's compile and the JSON work of a multi-megabyte request are CPU
//! bursts whose latency matters less than a cheap route's, which should not
//! wait behind them. Linux 6.12 and later let a
//! normal thread ask for its own scheduler slice (`sched_setattr` with
//! `sched_runtime`): a thread with a long slice does not preempt others when
//! it wakes (its virtual deadline is far), and a thread that wakes with a
//! shorter slice than the running one preempts it. So background work asks
//! for a long slice — the guests' runtime's threads for good
//! ([`prefer_long`]), other threads while a burst runs ([`blocking`] for work
//! on a blocking pool, [`Background`] for a guest's future, one poll at a
//! time) — and every other thread on the machine (the API's workers, the
//! store's threads, clients beside the server) keeps the kernel's default.
//! The bursts' share of the CPU does not change (their weight is the same),
//! only how long they keep a core at a stretch, so they are never starved.
//!
//! Measured on two cores (`docs/BENCHMARKS.md`): without it, a guest thread
//! that woke took the core from a request's thread, which then waited for
//! the next 4 ms tick. Kernels before 6.12 take the call and ignore the
//! slice; a kernel that refuses it is not asked again.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

/// The slice the bursts ask for, in nanoseconds (the kernel allows 0.1 to
/// 100 ms; its default is under 3 ms).
pub const LONG_SLICE_NS: u64 = 20_000_000;

/// Cleared the first time the kernel refuses the call.
static SUPPORTED: AtomicBool = AtomicBool::new(true);

thread_local! {
    /// Whether this thread holds the long slice now (nested bursts ask once).
    static LONG: Cell<bool> = const { Cell::new(false) };
    /// The slice this thread goes back to after a burst (0: the default).
    static BASE: Cell<u64> = const { Cell::new(0) };
}

/// Runs `work` on the calling thread with the long slice, then gives the
/// thread its own slice back. For CPU work on a blocking pool
/// (`tokio::task::spawn_blocking(|| cpu::blocking(…))`).
pub fn blocking<T>(work: impl FnOnce() -> T) -> T {
    let _slice = LongSlice::take();
    work()
}

/// A future polled with the long slice: each poll takes it and gives it back,
/// since the runtime worker that polls it serves requests between polls and
/// the task may move between workers.
pub struct Background<F> {
    inner: Pin<Box<F>>,
}

impl<F: Future> Background<F> {
    /// Wraps `inner`.
    pub fn new(inner: F) -> Self {
        Background {
            inner: Box::pin(inner),
        }
    }
}

impl<F: Future> Future for Background<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _slice = LongSlice::take();
        self.inner.as_mut().poll(cx)
    }
}

/// Asks for the long slice for the calling thread for good: a thread that
/// only runs background work (the guests' runtime), which then neither
/// preempts a request's thread when it wakes nor needs to ask again for
/// each burst.
pub fn prefer_long() {
    if SUPPORTED.load(Ordering::Relaxed) && set_slice(LONG_SLICE_NS) {
        BASE.with(|b| b.set(LONG_SLICE_NS));
    }
}

/// Holds the long slice for the calling thread until dropped.
struct LongSlice {
    taken: bool,
}

impl LongSlice {
    fn take() -> LongSlice {
        let taken = SUPPORTED.load(Ordering::Relaxed)
            && !LONG.with(|l| l.get())
            && BASE.with(|b| b.get()) != LONG_SLICE_NS
            && set_slice(LONG_SLICE_NS);
        if taken {
            LONG.with(|l| l.set(true));
        }
        LongSlice { taken }
    }
}

impl Drop for LongSlice {
    fn drop(&mut self) {
        if self.taken {
            set_slice(BASE.with(|b| b.get()));
            LONG.with(|l| l.set(false));
        }
    }
}

/// Sets the calling thread's slice (0: the kernel's default), keeping its
/// policy and nice value. False, and never again, if the kernel refuses (a
/// real-time thread, say, which has no slice).
#[cfg(target_os = "linux")]
fn set_slice(slice_ns: u64) -> bool {
    /// The kernel's `struct sched_attr` (its first version, 56 bytes).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        sched_policy: u32,
        sched_flags: u64,
        sched_nice: i32,
        sched_priority: u32,
        sched_runtime: u64,
        sched_deadline: u64,
        sched_period: u64,
        sched_util_min: u32,
        sched_util_max: u32,
    }
    /// `SCHED_FLAG_KEEP_POLICY`: the thread keeps its policy (an operator
    /// may run the server at `SCHED_BATCH`, say).
    const KEEP_POLICY: u64 = 0x08;
    // SAFETY: getpriority reads the calling thread's nice value (as it is
    // now: an operator may have reniced it); it has no memory arguments.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: KEEP_POLICY,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: slice_ns,
        sched_deadline: 0,
        sched_period: 0,
        sched_util_min: 0,
        sched_util_max: 0,
    };
    // SAFETY: `attr` is a valid `sched_attr` whose `size` says how long it
    // is, alive for the call; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        SUPPORTED.store(false, Ordering::Relaxed);
        tracing::debug!(
            %error,
            "the kernel refused a scheduler slice; background work keeps the default"
        );
    }
    rc == 0
}

/// Other systems keep their scheduler's default.
#[cfg(not(target_os = "linux"))]
fn set_slice(_slice_ns: u64) -> bool {
    SUPPORTED.store(false, Ordering::Relaxed);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's slice as the kernel reports it, where it does.
    fn slice_now() -> Option<u64> {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        sched
            .lines()
            .find(|l| l.starts_with("se.slice"))?
            .split(':')
            .nth(1)?
            .trim()
            .parse()
            .ok()
    }

    #[test]
    fn a_burst_holds_the_long_slice_and_gives_the_thread_its_own_back() {
        std::thread::spawn(|| {
            let before = slice_now();
            let (value, during) = blocking(|| (7, slice_now()));
            assert_eq!(value, 7, "the work's value comes back");
            assert_eq!(slice_now(), before, "the thread's own slice is back");
            // A kernel that honours slices (6.12 and later) shows the long
            // one during the burst; an older one shows its default.
            if during != before {
                assert_eq!(during, Some(LONG_SLICE_NS));
                // Nested bursts ask once and give it back once.
                let nested = blocking(|| blocking(slice_now));
                assert_eq!(nested, Some(LONG_SLICE_NS));
                assert_eq!(slice_now(), before);
            }
        })
        .join()
        .expect("the test thread");
    }

    #[test]
    fn a_background_future_holds_the_long_slice_only_while_polled() {
        std::thread::spawn(|| {
            let before = slice_now();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a runtime");
            let during = runtime.block_on(async {
                let during = Background::new(async {
                    tokio::task::yield_now().await;
                    slice_now()
                })
                .await;
                (during, slice_now())
            });
            assert_eq!(
                during.1, before,
                "between polls the slice is the thread's own"
            );
            if during.0 != before {
                assert_eq!(during.0, Some(LONG_SLICE_NS));
            }
        })
        .join()
        .expect("the test thread");
    }

    #[test]
    fn a_background_thread_keeps_the_long_slice_and_bursts_leave_it() {
        std::thread::spawn(|| {
            let before = slice_now();
            prefer_long();
            let base = slice_now();
            let during = blocking(slice_now);
            assert_eq!(slice_now(), base, "a burst leaves the long slice in place");
            assert_eq!(during, base);
            if base != before {
                assert_eq!(base, Some(LONG_SLICE_NS));
            }
        })
        .join()
        .expect("the test thread");
    }
}
