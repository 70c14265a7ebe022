//! Kiln's wasmtime sandbox.
//!
//! - [`Sandbox`] owns the wasmtime engine (pooling allocator, epoch
//!   interruption, NaN canonicalisation) and the compiled-artifact cache.
//! - [`Sandbox::load`] validates a bundle against the `kiln:task/bundle`
//!   world, compiles it once (or reads the cached artifact by content hash),
//!   pre-links it into an `InstancePre`, and reads its manifest through
//!   `describe`. Anything outside the world (a WASI import, a core module,
//!   random bytes) is refused with a [`BundleError`] that names the problem.
//! - [`LoadedBundle::instantiate`] makes an [`Attempt`]: a fresh instance with
//!   the machine preset's memory cap, CPU share and `maxDuration`, whose
//!   `start` / `resume` calls return a [`StepOutcome`]. Traps are kept apart
//!   from task errors: out of memory, timeouts, cancellation and panics are
//!   [`TrapKind`]s the host decides about.

mod attempt;
mod bindings;
mod bundle;
pub mod cpu;
mod engine;
mod host;
mod limits;
mod redact;
mod snapshot;
mod snapshot_safety;
mod wasi;

pub use attempt::{Attempt, LogCounts, StepOutcome, TrapKind};
pub use bindings::wit;
pub use bundle::{BundleError, LoadedBundle};
pub use engine::{Sandbox, SandboxConfig};
pub use host::{
    ChildRequest, HostCallStats, HostFuture, JournalSink, SpawnFuture, Spawned, TokenFuture,
    guest_memory_bytes,
};
pub use limits::Limits;
pub use redact::{MASK, MIN_LEN as MIN_REDACTED_LEN, Redactor};
pub use snapshot::recycle as recycle_capture;
