//! The model store with group commit and crashes: what is durable, what is
//! applied (visible to reads but lost by a crash).

use super::store::State;
use kiln_engine::Command;

/// A real store written beside the model (the simulation on PostgreSQL):
/// every commit the model takes goes to it too, through the server's own
/// interpreter of the engine's commands, and what it holds is checked
/// against the model.
pub trait Mirror {
    /// Takes a commit (its write commands), without waiting for it to be
    /// durable.
    fn commit(&mut self, writes: &[Command]);
    /// Waits until every commit taken so far is durable.
    fn sync(&mut self);
    /// Stops the store as a killed process would, opens it again, and
    /// answers how many of `unsynced` (the commits taken since the last
    /// sync, oldest first) it kept: what it holds must be `durable` with
    /// exactly the first so many of them applied, since commits become
    /// durable whole and in order. Any other state is an error.
    fn crash(&mut self, durable: &State, unsynced: &[Vec<Command>]) -> Result<usize, String>;
    /// Checks that the store holds `state`.
    fn check(&mut self, state: &State) -> Result<(), String>;
}

/// The store with group commit and crashes: a commit applies at once (later
/// reads see it) and becomes durable at the next sync; a crash keeps only
/// what was synced, or, with a [`Mirror`], what the real store kept.
#[derive(Default)]
pub struct CrashingStore {
    /// What survives a crash.
    pub durable: State,
    /// What reads see.
    pub applied: State,
    /// Commits applied and not yet synced, oldest first.
    unsynced: Vec<Vec<Command>>,
    /// The real store beside the model, if any.
    pub mirror: Option<Box<dyn Mirror>>,
    /// Commits a crash kept although they were not synced (with a mirror).
    pub kept_at_crash: usize,
    /// Commits a crash lost.
    pub lost_at_crash: usize,
}

impl std::fmt::Debug for CrashingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrashingStore")
            .field("unsynced", &self.unsynced.len())
            .field("mirror", &self.mirror.is_some())
            .finish_non_exhaustive()
    }
}

impl CrashingStore {
    /// An empty store, with `mirror` beside it if given.
    pub fn with_mirror(mirror: Option<Box<dyn Mirror>>) -> Self {
        CrashingStore {
            mirror,
            ..CrashingStore::default()
        }
    }

    /// Applies a commit (its write commands, atomically).
    pub fn commit(&mut self, writes: Vec<Command>) {
        let writes: Vec<Command> = writes.into_iter().filter(Command::is_write).collect();
        if writes.is_empty() {
            return;
        }
        for write in &writes {
            self.applied.write(write);
        }
        if let Some(mirror) = &mut self.mirror {
            mirror.commit(&writes);
        }
        self.unsynced.push(writes);
    }

    /// Whether anything is waiting for a sync.
    pub fn has_unsynced(&self) -> bool {
        !self.unsynced.is_empty()
    }

    /// Makes every applied commit durable (one group commit).
    pub fn sync(&mut self) {
        if let Some(mirror) = &mut self.mirror {
            mirror.sync();
        }
        for commit in self.unsynced.drain(..) {
            for write in &commit {
                self.durable.write(write);
            }
        }
    }

    /// Loses everything not synced (but what the real store kept, with a
    /// mirror: a prefix of the unsynced commits); answers how many it kept.
    pub fn crash(&mut self) -> usize {
        let kept = match &mut self.mirror {
            Some(mirror) => mirror
                .crash(&self.durable, &self.unsynced)
                .unwrap_or_else(|why| panic!("after a crash, the real store: {why}")),
            None => 0,
        };
        self.kept_at_crash += kept;
        self.lost_at_crash += self.unsynced.len() - kept;
        for commit in self.unsynced.drain(..).take(kept) {
            for write in &commit {
                self.durable.write(write);
            }
        }
        self.unsynced.clear();
        self.applied = self.durable.clone();
        kept
    }

    /// Checks the real store against what reads see, with a mirror.
    pub fn check_mirror(&mut self) -> Result<(), String> {
        match &mut self.mirror {
            Some(mirror) => mirror.check(&self.applied),
            None => Ok(()),
        }
    }
}
