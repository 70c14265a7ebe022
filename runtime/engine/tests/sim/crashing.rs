//! The model store with group commit and crashes: what is durable, what is
//! applied (visible to reads but lost by a crash).

use super::store::State;
use kiln_engine::Command;

/// The store with group commit and crashes: a commit applies at once (later
/// reads see it) and becomes durable at the next sync; a crash keeps only
/// what was synced.
#[derive(Debug, Default)]
pub struct CrashingStore {
    /// What survives a crash.
    pub durable: State,
    /// What reads see.
    pub applied: State,
    /// Commits applied and not yet synced, oldest first.
    unsynced: Vec<Vec<Command>>,
}

impl CrashingStore {
    /// Applies a commit (its write commands, atomically).
    pub fn commit(&mut self, writes: Vec<Command>) {
        let writes: Vec<Command> = writes.into_iter().filter(Command::is_write).collect();
        if writes.is_empty() {
            return;
        }
        for write in &writes {
            self.applied.write(write);
        }
        self.unsynced.push(writes);
    }

    /// Whether anything is waiting for a sync.
    pub fn has_unsynced(&self) -> bool {
        !self.unsynced.is_empty()
    }

    /// Makes every applied commit durable (one group commit).
    pub fn sync(&mut self) {
        for commit in self.unsynced.drain(..) {
            for write in &commit {
                self.durable.write(write);
            }
        }
    }

    /// Loses everything not synced.
    pub fn crash(&mut self) {
        self.unsynced.clear();
        self.applied = self.durable.clone();
    }
}
