//! Reading and writing a guest's linear memory, for snapshots.
//!
//! A component instance does not expose its core memories to the host. The
//! Kiln world has three exports for this instead (`snapshot-grow`,
//! `snapshot-read`, `snapshot-write`), which the SDK implements as no-ops:
//! the work happens in the canonical ABI. [`MemoryImage`] is lifted as the
//! `list<u8>` result of `snapshot-read` by copying the whole memory the lift
//! can see; [`MemoryWrite`] is lowered as the `list<u8>` argument of
//! `snapshot-write` by writing the image straight into memory and passing the
//! guest an empty list. Neither calls the guest's allocator, so taking a
//! snapshot leaves the guest's heap as it was, and a restore makes it exactly
//! the snapshot's. Both go through wasmtime's `Lift` / `Lower` traits, the
//! ones its derive macros implement (pinned to wasmtime 48).

use std::mem::MaybeUninit;
use std::sync::Mutex;
use wasmtime::ValRaw;
use wasmtime::component::__internal::{
    CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext, LowerContext,
};
use wasmtime::component::{ComponentType, Lift, Lower};

/// Buffers of earlier captures, kept so a capture copies into memory that is
/// already mapped instead of faulting in fresh pages.
static BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
const KEPT_BUFFERS: usize = 4;

/// Gives a capture's buffer back for reuse.
pub fn recycle(mut buffer: Vec<u8>) {
    buffer.clear();
    let mut kept = BUFFERS.lock().unwrap_or_else(|p| p.into_inner());
    if kept.len() < KEPT_BUFFERS {
        kept.push(buffer);
    }
}

/// Drops the kept buffers (the sandbox renewing itself when idle).
pub(crate) fn release_buffers() {
    BUFFERS.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

fn copy_of(memory: &[u8]) -> Vec<u8> {
    let reused = BUFFERS.lock().unwrap_or_else(|p| p.into_inner()).pop();
    let mut buffer = reused.unwrap_or_default();
    buffer.extend_from_slice(memory);
    buffer
}

/// The guest's whole linear memory, copied while `snapshot-read` returns.
#[derive(Debug, Clone, Default)]
pub struct MemoryImage(pub Vec<u8>);

// SAFETY: the lowered form is a pointer pair, as for `list<u8>`, whose type
// check this delegates to.
unsafe impl ComponentType for MemoryImage {
    type Lower = [ValRaw; 2];
    const ABI: CanonicalAbiInfo = CanonicalAbiInfo::POINTER_PAIR;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <Vec<u8> as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: lifting only reads memory.
unsafe impl Lift for MemoryImage {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        _ty: InterfaceType,
        _src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        Ok(MemoryImage(copy_of(cx.memory())))
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        _ty: InterfaceType,
        _bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        Ok(MemoryImage(copy_of(cx.memory())))
    }
}

/// A snapshot image to write into the guest's memory as `snapshot-write`'s
/// argument is lowered. Memory must already be at least as large.
#[derive(Debug, Clone)]
pub struct MemoryWrite(pub Vec<u8>);

// SAFETY: as for `MemoryImage`.
unsafe impl ComponentType for MemoryWrite {
    type Lower = [ValRaw; 2];
    const ABI: CanonicalAbiInfo = CanonicalAbiInfo::POINTER_PAIR;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <[u8] as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: writes stay inside the memory slice wasmtime hands out, and the
// flat value written is a valid empty list (a dangling, aligned pointer).
unsafe impl Lower for MemoryWrite {
    fn linear_lower_to_flat<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        dst: &mut MaybeUninit<[ValRaw; 2]>,
    ) -> wasmtime::Result<()> {
        let memory = cx.as_slice_mut();
        if memory.len() < self.0.len() {
            wasmtime::bail!(
                "the snapshot is {} bytes but the guest's memory is only {} bytes",
                self.0.len(),
                memory.len()
            );
        }
        memory[..self.0.len()].copy_from_slice(&self.0);
        dst.write([ValRaw::i64(1), ValRaw::i64(0)]);
        Ok(())
    }

    fn linear_lower_to_memory<T>(
        &self,
        _cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        _offset: usize,
    ) -> wasmtime::Result<()> {
        wasmtime::bail!("a snapshot is written only as a flat argument")
    }
}
