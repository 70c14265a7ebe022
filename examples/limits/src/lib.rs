//! Tasks that push against Kiln's sandbox limits: one allocates memory, one
//! burns CPU. They show how a run ends when it goes past its machine preset's
//! memory cap (`CRASHED`) or its `max_duration` (`TIMED_OUT`).

use kiln_sdk::{Context, TaskError, task};
use serde::{Deserialize, Serialize};

/// How much memory to allocate.
#[derive(Debug, Deserialize)]
pub struct Allocate {
    /// Mebibytes to allocate and touch.
    pub mib: u32,
}

/// What was allocated.
#[derive(Debug, Serialize)]
pub struct Allocated {
    /// Mebibytes allocated.
    pub mib: u32,
    /// A checksum over the touched memory, so the work cannot be optimised away.
    pub checksum: u64,
}

/// Allocates `mib` MiB in 1 MiB chunks and writes to every page. On the
/// `micro` preset (256 MiB) asking for more ends the run `CRASHED`.
#[task(id = "allocate", machine = "micro", retry(max_attempts = 1))]
pub async fn allocate(payload: Allocate, ctx: &Context) -> Result<Allocated, TaskError> {
    Ok(touch(payload.mib, ctx))
}

/// Like `allocate`, but an attempt that runs out of memory on `micro` is
/// retried once on `small-2x` (1 GiB), as Trigger.dev's
/// `retry.outOfMemory.machine`.
#[task(
    id = "allocate-or-grow",
    machine = "micro",
    retry(max_attempts = 2, out_of_memory_machine = "small-2x")
)]
pub async fn allocate_or_grow(payload: Allocate, ctx: &Context) -> Result<Allocated, TaskError> {
    Ok(touch(payload.mib, ctx))
}

fn touch(mib: u32, ctx: &Context) -> Allocated {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut checksum = 0u64;
    for i in 0..mib {
        let mut chunk = vec![0u8; 1 << 20];
        for page in chunk.chunks_mut(4096) {
            page[0] = (i % 251) as u8;
        }
        checksum =
            checksum.wrapping_add(chunk.iter().step_by(4096).map(|&b| b as u64).sum::<u64>());
        chunks.push(chunk);
    }
    ctx.log.info("allocated", &[("mib", &mib)]);
    Allocated { mib, checksum }
}

/// How long to spin.
#[derive(Debug, Deserialize)]
pub struct Spin {
    /// Loop iterations; each is a few arithmetic operations.
    pub iterations: u64,
}

/// The result of spinning.
#[derive(Debug, Serialize)]
pub struct Spun {
    /// Iterations done.
    pub iterations: u64,
    /// The loop's result, so the loop cannot be optimised away.
    pub value: u64,
}

/// Spins for `iterations` rounds of a xorshift. With `max_duration = 1` a
/// long spin ends the run `TIMED_OUT`.
#[task(id = "spin", max_duration = 1, retry(max_attempts = 1))]
pub async fn spin(payload: Spin, _ctx: &Context) -> Result<Spun, TaskError> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..payload.iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    Ok(Spun {
        iterations: payload.iterations,
        value: x,
    })
}

kiln_sdk::bundle!(allocate, allocate_or_grow, spin);
