//! How far a backend's commits are durable, and who waits for a commit to
//! be: the committer reports each group it made durable ([`Reached`]); a
//! reader that must not answer before what it saw is durable waits for a
//! commit's number ([`Durability::wait_for`]).
//!
//! Each waiter is woken once, when the group that covers its number is
//! durable, and not before. A channel that wakes every waiter at each
//! group (`tokio::sync::watch`) woke every feed listener and every API read
//! in flight at every group, each to find its number not reached yet: with
//! 64 runs in flight, a hundred task wake-ups a group for nothing.

use crate::group_commit::lock;
use crate::{Commit, Result, StoreError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// How far commits have become durable: the number of the last commit the
/// latest durable group covered, or why making a group durable failed.
pub(crate) type Durable = std::result::Result<u64, StoreError>;

/// What the committer and the waiters share.
struct State {
    reached: Durable,
    /// Whether the committer is gone: a number not reached by then never
    /// will be.
    closed: bool,
    /// Waiters by the number of the commit they wait for.
    waiting: BTreeMap<u64, Vec<oneshot::Sender<Result<()>>>>,
}

/// The committer's side: reports groups made durable. Dropping it (the
/// committer has stopped) ends every wait not yet satisfied with
/// [`StoreError::Closed`].
pub(crate) struct Reached(Arc<Mutex<State>>);

/// The waiters' side.
#[derive(Clone)]
pub(crate) struct Durability(Arc<Mutex<State>>);

/// A committer's side and its waiters' side, with nothing durable yet.
pub(crate) fn channel() -> (Reached, Durability) {
    let state = Arc::new(Mutex::new(State {
        reached: Ok(0),
        closed: false,
        waiting: BTreeMap::new(),
    }));
    (Reached(state.clone()), Durability(state))
}

impl Reached {
    /// Records that every commit up to `covered` is durable, and wakes the
    /// waiters for them.
    pub(crate) fn reach(&self, covered: u64) {
        let ready = {
            let mut state = lock(&self.0);
            let State {
                reached, waiting, ..
            } = &mut *state;
            match reached {
                Ok(n) if *n < covered => *n = covered,
                _ => return,
            }
            let later = waiting.split_off(&(covered + 1));
            std::mem::replace(waiting, later)
        };
        for sender in ready.into_values().flatten() {
            let _ = sender.send(Ok(()));
        }
    }

    /// Records that a group failed to become durable: every wait, now and
    /// later, ends with `error`.
    pub(crate) fn fail(&self, error: &StoreError) {
        let all = {
            let mut state = lock(&self.0);
            state.reached = Err(error.clone());
            std::mem::take(&mut state.waiting)
        };
        for sender in all.into_values().flatten() {
            let _ = sender.send(Err(error.clone()));
        }
    }
}

impl Drop for Reached {
    fn drop(&mut self) {
        let abandoned = {
            let mut state = lock(&self.0);
            state.closed = true;
            std::mem::take(&mut state.waiting)
        };
        // Dropping the senders ends their waits with `Closed`.
        drop(abandoned);
    }
}

impl Durability {
    /// Resolves once commit `number` is durable: at once if it is already,
    /// with the failure if a group failed, and with [`StoreError::Closed`]
    /// if the committer stopped before it.
    pub(crate) fn wait_for(&self, number: u64) -> Commit {
        let waiting = {
            let mut state = lock(&self.0);
            match &state.reached {
                Ok(n) if *n >= number => return Box::pin(std::future::ready(Ok(()))),
                Err(error) => return Box::pin(std::future::ready(Err(error.clone()))),
                Ok(_) if state.closed => {
                    return Box::pin(std::future::ready(Err(StoreError::Closed)));
                }
                Ok(_) => {}
            }
            let (sender, waiting) = oneshot::channel();
            state.waiting.entry(number).or_default().push(sender);
            waiting
        };
        Box::pin(async move { waiting.await.map_err(|_| StoreError::Closed)? })
    }

    /// How many waits are registered and not yet woken.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        lock(&self.0).waiting.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    /// Polls a wait once, without a runtime.
    fn poll(wait: &mut Commit) -> Poll<Result<()>> {
        Pin::new(wait).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_wait_ends_when_its_number_is_reached_and_not_before() {
        let (reached, durability) = channel();
        let mut third = durability.wait_for(3);
        let mut fifth = durability.wait_for(5);
        assert!(poll(&mut third).is_pending());
        reached.reach(2);
        assert!(poll(&mut third).is_pending());
        assert_eq!(durability.waiting(), 2);
        reached.reach(4);
        assert!(matches!(poll(&mut third), Poll::Ready(Ok(()))));
        assert!(poll(&mut fifth).is_pending());
        // The woken wait is no longer held; the other is.
        assert_eq!(durability.waiting(), 1);
        // A number reached already resolves at once.
        assert!(matches!(
            poll(&mut durability.wait_for(4)),
            Poll::Ready(Ok(()))
        ));
        // Reports never go backwards.
        reached.reach(1);
        assert!(poll(&mut fifth).is_pending());
        reached.reach(5);
        assert!(matches!(poll(&mut fifth), Poll::Ready(Ok(()))));
        assert_eq!(durability.waiting(), 0);
    }

    #[test]
    fn a_failure_ends_every_wait_now_and_later() {
        let (reached, durability) = channel();
        let mut waiting = durability.wait_for(2);
        reached.reach(1);
        reached.fail(&StoreError::Backend("the disk is gone".into()));
        assert!(matches!(
            poll(&mut waiting),
            Poll::Ready(Err(StoreError::Backend(_)))
        ));
        // Even for a number reached before the failure: nothing is
        // acknowledged truthfully after it.
        assert!(matches!(
            poll(&mut durability.wait_for(1)),
            Poll::Ready(Err(StoreError::Backend(_)))
        ));
        // A later report does not undo it.
        reached.reach(9);
        assert!(matches!(
            poll(&mut durability.wait_for(9)),
            Poll::Ready(Err(StoreError::Backend(_)))
        ));
    }

    #[test]
    fn a_stopped_committer_ends_the_waits_it_did_not_reach() {
        let (reached, durability) = channel();
        reached.reach(3);
        let mut waiting = durability.wait_for(4);
        drop(reached);
        assert!(matches!(
            poll(&mut waiting),
            Poll::Ready(Err(StoreError::Closed))
        ));
        assert!(matches!(
            poll(&mut durability.wait_for(5)),
            Poll::Ready(Err(StoreError::Closed))
        ));
        // What it reached stays reached.
        assert!(matches!(
            poll(&mut durability.wait_for(3)),
            Poll::Ready(Ok(()))
        ));
    }
}
