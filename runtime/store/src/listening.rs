//! How [`crate::Store::on_runs_changed`]'s listener hears of durable
//! commits: one task per store tells it, in the order their changes were
//! left for it (two commits made at once may be left in either order),
//! rather than a task of its own for every commit.
//!
//! A commit that writes runs or appends to their realtime streams leaves
//! what it changed here once it is made. The task, woken by the first
//! change left since it last looked, takes every change left, waits until
//! every commit made so far is durable (which covers the ones it took, all
//! made before), and tells the listener of them all in one call, in the
//! order they were left. A run's trigger, claim and
//! end (three commits) thus cost a push each and share the task's wait
//! with every other commit of a group, instead of three spawned tasks,
//! three durability waits and three wake-ups of a runtime by the committer.
//! Changes of commits that never become durable (the store failed and
//! stops) are never told, as before.

use crate::group_commit::lock;
use crate::{Backend, Changes, RunsListener};
use kiln_types::RunId;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::Notify;

/// The runs, the realtime streams and the finished runs a commit changed.
type Changed = (Vec<RunId>, Vec<RunId>, Vec<RunId>);

/// The listener, and the changes of commits made that it has not heard of.
pub(crate) struct Listening {
    listener: RunsListener,
    /// Changes left by commits made, oldest first.
    left: Mutex<Vec<Changed>>,
    /// Wakes the task that tells the listener.
    wake: Arc<Notify>,
}

impl Listening {
    /// Starts the task that tells `listener` of the changes durable
    /// commits through `backend` made, on the current Tokio runtime; gives
    /// the listener back outside one. The task ends once the listening and
    /// the backend are gone.
    pub(crate) fn start(
        listener: RunsListener,
        backend: &Arc<dyn Backend>,
    ) -> Result<Arc<Self>, RunsListener> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(listener);
        };
        let wake = Arc::new(Notify::new());
        let listening = Arc::new(Listening {
            listener,
            left: Mutex::default(),
            wake: wake.clone(),
        });
        runtime.spawn(tell(
            wake,
            Arc::downgrade(&listening),
            Arc::downgrade(backend),
        ));
        Ok(listening)
    }

    /// Leaves what a commit just made changed, for the listener to hear of
    /// once the commit is durable.
    pub(crate) fn made(&self, runs: Vec<RunId>, streams: Vec<RunId>, finished: Vec<RunId>) {
        let first = {
            let mut left = lock(&self.left);
            left.push((runs, streams, finished));
            left.len() == 1
        };
        if first {
            self.wake.notify_one();
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        // The task finds the listening gone and ends.
        self.wake.notify_one();
    }
}

/// The task: waits to be woken, takes every change left, waits for the
/// commits made so far to be durable, tells the listener of each change.
async fn tell(wake: Arc<Notify>, listening: Weak<Listening>, backend: Weak<dyn Backend>) {
    loop {
        wake.notified().await;
        let (taken, settled) = {
            let (Some(listening), Some(backend)) = (listening.upgrade(), backend.upgrade()) else {
                return;
            };
            let taken = std::mem::take(&mut *lock(&listening.left));
            // Every commit taken was made before this: this wait covers it.
            (taken, backend.settled())
        };
        if taken.is_empty() || settled.await.is_err() {
            continue;
        }
        let Some(listening) = listening.upgrade() else {
            return;
        };
        // One call for every change taken, in the order left: the feed
        // takes a group's changes under one lock and wakes its readers once.
        let (mut runs, mut streams, mut finished) = (Vec::new(), Vec::new(), Vec::new());
        for (r, s, f) in taken {
            runs.extend(r);
            streams.extend(s);
            finished.extend(f);
        }
        (listening.listener)(Changes {
            runs: &runs,
            streams: &streams,
            finished: &finished,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryBackend;
    use std::time::Duration;

    /// Waits until `heard` holds `n` runs, for up to ten seconds.
    async fn until_heard(heard: &Mutex<Vec<RunId>>, n: usize) -> Vec<RunId> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = lock(heard).clone();
            if now.len() >= n || tokio::time::Instant::now() > deadline {
                return now;
            }
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn the_listener_hears_every_change_once_in_the_order_made() {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::default());
        // Each kind of change heard, tagged with its kind, in one list: the
        // runs, the streams and the finished runs each keep their order.
        let heard = Arc::new(Mutex::new(Vec::new()));
        let told = heard.clone();
        let listener: RunsListener = Box::new(move |changes: Changes<'_>| {
            let mut told = lock(&told);
            for (kind, ids) in [
                ("run", changes.runs),
                ("stream", changes.streams),
                ("finished", changes.finished),
            ] {
                told.extend(ids.iter().map(|id| (kind, id.clone())));
            }
        });
        let Ok(listening) = Listening::start(listener, &backend) else {
            panic!("started on a runtime");
        };
        let runs: Vec<RunId> = (0..100).map(RunId::generate).collect();
        let (mut made_runs, mut made_streams, mut made_finished) = (vec![], vec![], vec![]);
        for (i, run) in runs.iter().enumerate() {
            if i % 2 == 0 {
                let finished = if i % 3 == 0 {
                    vec![run.clone()]
                } else {
                    vec![]
                };
                made_runs.push(run.clone());
                made_finished.extend(finished.clone());
                listening.made(vec![run.clone()], Vec::new(), finished);
            } else {
                made_streams.push(run.clone());
                listening.made(Vec::new(), vec![run.clone()], Vec::new());
            }
            if i % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let expected = made_runs.len() + made_streams.len() + made_finished.len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while lock(&heard).len() < expected && tokio::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        let heard = lock(&heard).clone();
        let of = |kind: &str| -> Vec<RunId> {
            heard
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, id)| id.clone())
                .collect()
        };
        assert_eq!(of("run"), made_runs);
        assert_eq!(of("stream"), made_streams);
        assert_eq!(of("finished"), made_finished);
    }

    #[tokio::test]
    async fn the_task_ends_with_the_listening() {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::default());
        let Ok(listening) = Listening::start(Box::new(|_| {}), &backend) else {
            panic!("started on a runtime");
        };
        let wake = Arc::downgrade(&listening.wake);
        drop(listening);
        // The task held the last reference to the wake-up: it is gone once
        // the task ended.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while wake.upgrade().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the task still runs"
            );
            tokio::task::yield_now().await;
        }
    }

    /// A backend whose commits become durable only when the test says.
    #[derive(Default)]
    struct HeldBack {
        inner: MemoryBackend,
        durable: tokio::sync::watch::Sender<bool>,
    }

    impl Backend for HeldBack {
        fn get(&self, key: &[u8]) -> crate::Result<Option<Vec<u8>>> {
            self.inner.get(key)
        }
        fn scan_prefix(&self, prefix: &[u8]) -> crate::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            self.inner.scan_prefix(prefix)
        }
        fn scan_range_in(
            &self,
            start: &[u8],
            end: &[u8],
            limit: usize,
            order: crate::Order,
        ) -> crate::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            self.inner.scan_range_in(start, end, limit, order)
        }
        fn last_with_prefix(&self, prefix: &[u8]) -> crate::Result<Option<(Vec<u8>, Vec<u8>)>> {
            self.inner.last_with_prefix(prefix)
        }
        fn commit(&self, ops: Vec<crate::Op>) -> crate::Commit {
            self.inner.commit(ops)
        }
        fn settled(&self) -> crate::Commit {
            let mut durable = self.durable.subscribe();
            Box::pin(async move {
                let _ = durable.wait_for(|d| *d).await;
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn nothing_is_heard_before_the_commits_are_durable() {
        let held = Arc::new(HeldBack::default());
        let backend: Arc<dyn Backend> = held.clone();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let told = heard.clone();
        let listener: RunsListener = Box::new(move |changes: Changes<'_>| {
            lock(&told).extend(changes.runs.iter().cloned());
        });
        let Ok(listening) = Listening::start(listener, &backend) else {
            panic!("started on a runtime");
        };
        let run = RunId::generate(1);
        listening.made(vec![run.clone()], Vec::new(), Vec::new());
        // The task takes the change and waits for durability: give it
        // every chance to run first.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(lock(&heard).is_empty(), "heard before durable");
        held.durable.send_replace(true);
        assert_eq!(until_heard(&heard, 1).await, vec![run]);
    }

    #[test]
    fn outside_a_runtime_the_listener_is_given_back() {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::default());
        assert!(Listening::start(Box::new(|_| {}), &backend).is_err());
    }
}
