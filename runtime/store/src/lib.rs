//! Kiln's durable store.
//!
//! Two layers:
//! - a [`Backend`]: an ordered key-value map whose writes are grouped into
//!   atomic, durable commits. [`SledBackend`] (the default, on disk) keeps
//!   each commit in memory, visible to reads at once; one committer
//!   thread gathers every commit made since the last group into a group,
//!   writes it as one record to Kiln's write-ahead log, durably (a direct
//!   synchronous write, or a buffered one and `fdatasync`), acknowledges each writer (group commit), and applies durable
//!   groups to sled, which is made durable at checkpoints. [`PostgresBackend`] keeps
//!   the same keys in PostgreSQL, a table for each keyspace, with the same
//!   group commit (a group is one transaction). [`MemoryBackend`] keeps everything in
//!   memory for tests.
//! - [`Store`]: typed records (deployments, bundles, runs) over any backend,
//!   with the key layout in one place.
//!
//! A writer that awaits [`Store`]'s write methods proceeds only once its
//! write is on disk.

mod backend;
pub mod blob_store;
pub mod blobs;
pub mod children;
mod debounce;
mod durability;
pub mod envvars;
mod group_commit;
mod journal;
pub mod layout;
mod listening;
mod memory;
mod numbered;
mod pending;
mod postgres_backend;
mod postgres_chunks;
mod postgres_cluster;
mod postgres_tables;
mod postgres_tls;
mod prefixed;
mod queues;
mod records;
pub mod retention;
pub mod schedules;
pub mod seal;
mod sled_backend;
mod sled_chunks;
mod sled_compact;
mod sled_unapplied;
mod sled_wal;
pub mod snapshot;
mod stats;
mod streams;
pub mod tenants;
pub mod tokens;
mod wakes;

pub use backend::{Backend, Commit, Op, Order};
pub use blob_store::BlobStore;
pub use blobs::{INLINE_LIMIT, Packet};
pub use children::{BatchItemError, BatchKey, BatchRecord, Waiter};
pub use envvars::EnvVar;
pub use journal::EncodedEntry;
pub use memory::MemoryBackend;
pub use postgres_backend::{OwnerWait, PostgresBackend};
pub use postgres_cluster::{Membership, Node};
pub use prefixed::PrefixedBackend;
pub use records::{Batch, Changes, IdempotentRun, RunsListener, Store, StoredLayer, TimerKey};
pub use schedules::ScheduleKey;
pub use seal::SealKey;
pub use sled_backend::SledBackend;
pub use sled_compact::{COMPACT_FROM, Compacted};
pub use snapshot::{LayerKind, SnapshotError, SnapshotLayer};
pub use tenants::{ApiKey, Project};

/// The bytes the store writes for a run's record: MessagePack with the
/// fields numbered (see `numbered.rs`). For the `records` bench group.
pub fn run_record(run: &kiln_types::Run) -> Result<Vec<u8>> {
    records::encode_run(run)
}

/// A store failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend failed to read or write.
    #[error("storage failed: {0}")]
    Backend(String),
    /// A stored record could not be decoded.
    #[error("a stored record under `{key}` is corrupt: {reason}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The committer has stopped (the store is shutting down).
    #[error("the store is closed")]
    Closed,
}

/// Shorthand for results of store calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
