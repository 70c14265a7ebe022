//! The group commit both durable backends share: writers' commits are
//! numbered and kept in memory ([`crate::sled_unapplied`]), visible to
//! reads at once, and one committer thread gathers the commits made so far
//! into a group, which is made durable (sled: a record in Kiln's
//! write-ahead log, written synchronously; PostgreSQL: one transaction) before its writers are acknowledged. This module holds the writers' side ([`Front`]), the
//! committer's gathering of a group ([`Gatherer`]) and what is done once a
//! group is durable or failed; each backend holds how a group is written.

use crate::durability::{Durability, Reached};
use crate::sled_unapplied::Unapplied;
use crate::{Commit, Op, Result, StoreError};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, RwLock, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How many commits one group takes at most.
const MAX_GROUP: usize = 4_096;

/// How long deferred writes wait for a commit to join before the committer
/// writes them on their own.
pub const DEFER_AT_MOST: Duration = Duration::from_millis(2);

/// A writer waiting for its commit to be durable.
pub(crate) type Ack = oneshot::Sender<Result<()>>;

/// What the committer is asked to do.
pub(crate) enum Request {
    /// Make every commit made so far durable, then acknowledge.
    Ack(Ack),
    /// Writes were deferred, or a commit was made that no one waits for:
    /// write them within [`DEFER_AT_MOST`] unless a group takes them first.
    Deferred,
}

/// Locks `mutex`, through a poisoning (a panicked holder leaves the
/// unapplied writes as consistent as any other moment does).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the writers, the readers and the committer share.
#[derive(Default)]
pub(crate) struct Pending {
    /// Commits made and not yet written where reads find them.
    pub(crate) unapplied: Mutex<Unapplied>,
    /// Signalled when writes have left the unapplied ones (sled: applied
    /// to the tree by its thread), for writers waiting while too much is
    /// unapplied.
    pub(crate) room: Condvar,
    /// Held to write while writes are moved to where reads find it (sled:
    /// by the tree's thread as it takes durable groups to apply, and while
    /// it replaces or deletes a chunked value there; PostgreSQL:
    /// by the committer, a group at a time); held to read by a scan, or a
    /// read of a chunked value, that must not see a chunked value half
    /// replaced or a group half moved.
    pub(crate) moving: RwLock<()>,
    /// The number of the last commit of the latest group the committer
    /// began to move (used by the PostgreSQL backend's optimistic scans).
    pub(crate) sent: AtomicU64,
    /// Set by a simulated crash: the committer writes no further group.
    pub(crate) halted: std::sync::atomic::AtomicBool,
}

impl Pending {
    /// Holds off the committer's next move while a scan reads.
    pub(crate) fn reading(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.moving
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Held while a group is moved to where reads find it (sled: while
    /// durable groups are taken to apply, and while a chunked value is
    /// replaced or deleted).
    pub(crate) fn moving(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.moving
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets the writes of `keys` by commits up to `covered` (the tree
    /// holds them) and wakes writers waiting for room.
    pub(crate) fn applied_keys<'k>(&self, keys: impl Iterator<Item = &'k [u8]>, covered: u64) {
        lock(&self.unapplied).applied_keys(keys, covered);
        self.room.notify_all();
    }

    /// Forgets the commits up to `covered` (they are written) and wakes
    /// writers waiting for room.
    pub(crate) fn applied(&self, covered: u64) {
        lock(&self.unapplied).applied(covered);
        self.room.notify_all();
    }
}

/// The writers' side of a backend: makes commits, defers writes, waits
/// for durability.
pub(crate) struct Front {
    pub(crate) pending: Arc<Pending>,
    /// The committer's requests; `None` once closed.
    committer: Option<mpsc::Sender<Request>>,
    durable: Durability,
}

impl Front {
    /// A front end whose committer reads `committer`'s other end and
    /// reports on `durable`.
    pub(crate) fn new(
        pending: Arc<Pending>,
        committer: mpsc::Sender<Request>,
        durable: Durability,
    ) -> Self {
        Front {
            pending,
            committer: Some(committer),
            durable,
        }
    }

    /// [`crate::Backend::commit`].
    pub(crate) fn commit(&self, ops: Vec<Op>) -> Commit {
        self.room_to_commit().commit(ops);
        let (ack, done) = oneshot::channel();
        let sent = match &self.committer {
            Some(committer) => committer.send(Request::Ack(ack)).map_err(|_| ()),
            None => Err(()),
        };
        let made = Instant::now();
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            let result = done.await.map_err(|_| StoreError::Closed)?;
            crate::stats::metrics()
                .commit_seconds
                .observe(made.elapsed().as_secs_f64());
            result
        })
    }

    /// [`crate::Backend::commit_unawaited`]: the commit is made as
    /// [`Front::commit`] makes one, and the committer is asked to take it
    /// within [`DEFER_AT_MOST`] only if no commit made before it is left to
    /// take (that one's request, an acknowledgement or this same ask, brings
    /// the group that takes both).
    pub(crate) fn commit_unawaited(&self, ops: Vec<Op>) -> Result<()> {
        let Some(committer) = &self.committer else {
            return Err(StoreError::Closed);
        };
        let alone = {
            let mut unapplied = self.room_to_commit();
            let alone = !unapplied.has_fresh();
            unapplied.commit(ops);
            alone
        };
        if alone {
            committer
                .send(Request::Deferred)
                .map_err(|_| StoreError::Closed)?;
        }
        Ok(())
    }

    /// The unapplied writes, once they have room for a commit: a writer
    /// faster than the disk waits here for room, freed as groups are
    /// applied (sled: by the tree's thread; once every writer waits, no
    /// group comes, and it applies what it holds).
    fn room_to_commit(&self) -> std::sync::MutexGuard<'_, Unapplied> {
        let mut unapplied = lock(&self.pending.unapplied);
        while unapplied.full() {
            unapplied = self
                .pending
                .room
                .wait(unapplied)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        unapplied
    }

    /// [`crate::Backend::defer`].
    pub(crate) fn defer(&self, ops: Vec<Op>) {
        if lock(&self.pending.unapplied).defer(ops)
            && let Some(committer) = &self.committer
        {
            let _ = committer.send(Request::Deferred);
        }
    }

    /// [`crate::Backend::settled`].
    pub(crate) fn settled(&self) -> Commit {
        let seen = lock(&self.pending.unapplied).made();
        self.durable.wait_for(seen)
    }

    /// Commits what is still deferred, asks for a last group and closes
    /// the committer's channel, so the committer finishes the commits in
    /// flight and exits; the backend then joins it.
    pub(crate) fn close(&mut self) {
        lock(&self.pending.unapplied).commit_deferred();
        if let Some(committer) = &self.committer {
            let (ack, _) = oneshot::channel();
            let _ = committer.send(Request::Ack(ack));
        }
        drop(self.committer.take());
    }
}

/// What [`Gatherer::next_until`] found.
pub(crate) enum Next {
    /// The acknowledgements of a group's commits.
    Group(Vec<Ack>),
    /// No group began in time.
    Idle,
    /// The backend is closed, or the committer should stop.
    Closed,
}

/// The committer's side of the requests: gathers groups.
pub(crate) struct Gatherer {
    requests: mpsc::Receiver<Request>,
    /// When deferred writes are to be committed, if no commit took them.
    deferred_until: Option<Instant>,
}

impl Gatherer {
    /// Gathers from `requests`.
    pub(crate) fn new(requests: mpsc::Receiver<Request>) -> Self {
        Gatherer {
            requests,
            deferred_until: None,
        }
    }

    /// Waits for the next group: the acknowledgements of every commit made
    /// so far (at most [`MAX_GROUP`]), or a commit of writes deferred for
    /// [`DEFER_AT_MOST`] with none. `ready` is called once a group has
    /// begun, before the rest is gathered; it answers false when the
    /// committer should stop. `None` once the backend is closed.
    pub(crate) fn next(
        &mut self,
        pending: &Pending,
        mut ready: impl FnMut() -> bool,
    ) -> Option<Vec<Ack>> {
        loop {
            match self.next_until(pending, None, &mut ready) {
                Next::Group(group) => return Some(group),
                Next::Idle => continue,
                Next::Closed => return None,
            }
        }
    }

    /// [`Gatherer::next`], but gives up at `idle` if no group has begun by
    /// then.
    pub(crate) fn next_until(
        &mut self,
        pending: &Pending,
        idle: Option<Instant>,
        ready: impl FnOnce() -> bool,
    ) -> Next {
        loop {
            let until = match (self.deferred_until, idle) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let first = match until {
                None => self.requests.recv().map_err(|_| true),
                Some(at) => self
                    .requests
                    .recv_timeout(at.saturating_duration_since(Instant::now()))
                    .map_err(|e| e == mpsc::RecvTimeoutError::Disconnected),
            };
            let mut group = Vec::new();
            match first {
                Ok(Request::Ack(ack)) => group.push(ack),
                Ok(Request::Deferred) => {
                    self.deferred();
                    continue;
                }
                Err(false) if self.deferred_until.is_none_or(|at| at > Instant::now()) => {
                    return Next::Idle;
                }
                Err(false) => {
                    // Nothing joined the deferred writes, or the commits no
                    // one waits for, in time.
                    self.deferred_until = None;
                    let mut unapplied = lock(&pending.unapplied);
                    if !unapplied.commit_deferred() && !unapplied.has_fresh() {
                        continue;
                    }
                }
                Err(true) => return Next::Closed,
            }
            if !ready() {
                return Next::Closed;
            }
            while group.len() < MAX_GROUP {
                match self.requests.try_recv() {
                    Ok(Request::Ack(more)) => group.push(more),
                    Ok(Request::Deferred) => self.deferred(),
                    Err(_) => break,
                }
            }
            return Next::Group(group);
        }
    }

    fn deferred(&mut self) {
        self.deferred_until
            .get_or_insert(Instant::now() + DEFER_AT_MOST);
    }
}

/// Records that commits up to `covered` are durable and acknowledges the
/// group's writers.
pub(crate) fn acknowledge(durable: &Reached, covered: u64, group: Vec<Ack>) {
    durable.reach(covered);
    for ack in group {
        let _ = ack.send(Ok(()));
    }
}

/// Stops the server after a group failed to become durable: what the
/// failure covered may be lost, and nothing later can be acknowledged
/// truthfully. Restarting recovers from what is stored.
pub(crate) fn fail_stop(error: &StoreError, group: Vec<Ack>, durable: &Reached, store: &str) -> ! {
    durable.fail(error);
    for ack in group {
        let _ = ack.send(Err(error.clone()));
    }
    tracing::error!(%error, "a group commit failed to reach {store}; Kiln stops");
    std::process::exit(74);
}
