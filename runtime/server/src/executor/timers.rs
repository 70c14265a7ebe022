//! The timer service: fires durable timers of waiting runs.
//!
//! Timers live in the store's `timer/` index, ordered by due time. The
//! service keeps in memory only those due within the next [`HORIZON`]: it
//! loads them with a range scan and scans the next window as time passes, so
//! neither start-up nor a tick reads timers that are far off. Timers that
//! came due while the server was down are in the first window and fire once
//! at start: firing deletes the timer and journals the wake in one commit.

use kiln_store::TimerKey;
use kiln_types::Timestamp;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;
use tokio::sync::mpsc;

/// How far ahead timers are held in memory.
pub(crate) const HORIZON: Duration = Duration::from_secs(60);
/// How long to wait before trying again to fire a timer whose run is busy.
const RETRY: Duration = Duration::from_millis(100);
/// The most timers one window scan loads.
const SCAN_LIMIT: usize = 1_000_000;

/// What firing a timer came to.
pub(crate) enum Fired {
    /// Done (or nothing to do: the run or the timer is gone).
    Done,
    /// The run is busy; try again shortly.
    Busy,
}

/// Hands new timers to the service.
#[derive(Clone)]
pub(crate) struct Timers {
    tx: mpsc::UnboundedSender<(Timestamp, TimerKey)>,
}

impl Timers {
    /// Starts the service. `fire` is called for each due timer.
    pub(crate) fn start<F, Fut>(store: kiln_store::Store, fire: F) -> Self
    where
        F: Fn(TimerKey) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Fired> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let retry = tx.clone();
        tokio::spawn(run(store, rx, retry, fire));
        Timers { tx }
    }

    /// Arms a timer that was just stored.
    pub(crate) fn add(&self, timer: TimerKey) {
        let _ = self.tx.send((timer.due, timer));
    }
}

async fn run<F, Fut>(
    store: kiln_store::Store,
    mut rx: mpsc::UnboundedReceiver<(Timestamp, TimerKey)>,
    retry: mpsc::UnboundedSender<(Timestamp, TimerKey)>,
    fire: F,
) where
    F: Fn(TimerKey) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Fired> + Send + 'static,
{
    let fire = std::sync::Arc::new(fire);
    let mut heap: BinaryHeap<Reverse<(Timestamp, TimerKey)>> = BinaryHeap::new();
    // Timers with due times before `loaded_until` are in the heap (or fired).
    let mut loaded_until = Timestamp(0);
    loop {
        let now = Timestamp::now();
        let mut scan_failed = false;
        if now.as_millis() + (HORIZON.as_millis() as u64) / 2 >= loaded_until.as_millis() {
            let until = Timestamp(now.as_millis() + HORIZON.as_millis() as u64);
            match store.timers(loaded_until, until, SCAN_LIMIT) {
                Ok(timers) => {
                    // A full scan may have stopped short of `until`: the next
                    // scan starts at its last due time (a timer read twice
                    // fires once: the engine acts only on the armed wait's
                    // timer, and deleting it is part of that).
                    loaded_until = match timers.last() {
                        Some(last) if timers.len() == SCAN_LIMIT => last.due,
                        _ => until,
                    };
                    for t in timers {
                        heap.push(Reverse((t.due, t)));
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "reading due timers failed; trying again in 1 s");
                    scan_failed = true;
                }
            }
        }
        while let Some(Reverse((at, _))) = heap.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, timer))) = heap.pop() else {
                break;
            };
            let fire = fire.clone();
            let retry = retry.clone();
            tokio::spawn(async move {
                if let Fired::Busy = fire(timer.clone()).await {
                    let at = Timestamp(Timestamp::now().as_millis() + RETRY.as_millis() as u64);
                    let _ = retry.send((at, timer));
                }
            });
        }
        let next_due = heap
            .peek()
            .map(|Reverse((at, _))| at.as_millis())
            .unwrap_or(u64::MAX);
        let refresh = loaded_until
            .as_millis()
            .saturating_sub(HORIZON.as_millis() as u64 / 2);
        let mut wake_at = next_due.min(refresh);
        if scan_failed {
            wake_at = wake_at.max(now.as_millis() + 1_000);
        }
        let sleep = Duration::from_millis(wake_at.saturating_sub(Timestamp::now().as_millis()));
        tokio::select! {
            new = rx.recv() => match new {
                Some((at, timer)) => {
                    if at < loaded_until {
                        heap.push(Reverse((at, timer)));
                    }
                }
                None => return,
            },
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}
