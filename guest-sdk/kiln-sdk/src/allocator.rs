//! The guest's heap allocator: dlmalloc, starting in the memory the bundle
//! begins with.
//!
//! Rust's own allocator on `wasm32-unknown-unknown` takes every chunk of heap
//! with `memory.grow`, so each attempt grew its linear memory at its first
//! allocation. Kiln runs every attempt in a fresh instance in a pool slot,
//! and when the instance before it had grown the slot's memory, wasmtime
//! shrinks it back to the module's initial size with an `mprotect` that
//! removes access: a TLB flush that interrupts every core the server runs
//! on (7.7 % of the CPU of the `engine` bench's process in the profile
//! `docs/BENCHMARKS.md` shows).
//!
//! `kiln build` declares the bundle's memory 256 KiB larger than the linker
//! made it (the bundle crate's heap reserve), and this allocator hands
//! dlmalloc the memory between `__heap_base` and the end of memory, as it is
//! at the first allocation, as its first chunk; only a guest that needs more
//! grows its memory. A bundle built by plain `cargo build` has little room
//! there and grows as before: the allocator works either way. Nothing else
//! in the guest may grow memory before its first allocation (Kiln's own
//! snapshot restore writes the allocator's state back with the image).
//!
//! The `allocator` feature (on by default) installs [`KilnAllocator`] as the
//! global allocator; a crate that brings its own turns the feature off
//! (`default-features = false`, in every crate of the build that depends
//! on `kiln-sdk`: cargo turns a feature on if any of them asks for it), and
//! still carries the reserve.

use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::{Cell, UnsafeCell};
use core::ptr;

/// Bytes in a WebAssembly page.
const PAGE: usize = 64 * 1024;

unsafe extern "C" {
    /// Where the linker placed the start of the heap, after the stack and
    /// the static data.
    static __heap_base: u8;
}

/// Where dlmalloc gets memory from: the initial memory's free tail first,
/// then `memory.grow`. The growing part follows dlmalloc's own `wasm32`
/// source, which the crate does not export; it could not be used beside
/// this one anyway, since its first call hands out `[__heap_base,
/// __heap_end)` by the link-time memory size, which this tail covers.
struct LinearMemory {
    /// Whether the initial memory's tail has been handed out. It lives in
    /// linear memory, so a snapshot restores it with the rest of the heap.
    tail_taken: Cell<bool>,
}

// SAFETY: follows dlmalloc's own `wasm32` system allocator; memory handed
// out is never given back (linear memory cannot shrink).
unsafe impl dlmalloc::Allocator for LinearMemory {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        if !self.tail_taken.replace(true) {
            // Only the symbol's address is taken, never its value.
            let base = (&raw const __heap_base) as usize;
            let end = wasm32::memory_size(0) * PAGE;
            if end > base && end - base >= size {
                return (base as *mut u8, end - base, 0);
            }
        }
        let pages = size.div_ceil(PAGE);
        let previous = wasm32::memory_grow(0, pages);
        if previous == usize::MAX {
            return (ptr::null_mut(), 0, 0);
        }
        let base = previous * PAGE;
        let size = pages * PAGE;
        // A pointer may not wrap to address 0: keep the last bytes of a
        // full 4 GiB address space unused, as dlmalloc's own does.
        if base.wrapping_add(size) == 0 {
            return (base as *mut u8, size - 16, 0);
        }
        (base as *mut u8, size, 0)
    }

    fn remap(&self, _ptr: *mut u8, _old: usize, _new: usize, _can_move: bool) -> *mut u8 {
        ptr::null_mut()
    }

    fn free_part(&self, _ptr: *mut u8, _old: usize, _new: usize) -> bool {
        false
    }

    fn free(&self, _ptr: *mut u8, _size: usize) -> bool {
        false
    }

    fn can_release_part(&self, _flags: u32) -> bool {
        false
    }

    fn allocates_zeros(&self) -> bool {
        // A fresh instance's memory past the static data is zero, and so is
        // memory that `memory.grow` adds.
        true
    }

    fn page_size(&self) -> usize {
        PAGE
    }
}

/// The guest's global allocator (see the module's documentation).
pub struct KilnAllocator(UnsafeCell<dlmalloc::Dlmalloc<LinearMemory>>);

// SAFETY: `wasm32-unknown-unknown` without the `atomics` feature runs one
// thread, and the allocator is never re-entered.
#[cfg(not(target_feature = "atomics"))]
unsafe impl Sync for KilnAllocator {}

impl KilnAllocator {
    /// An allocator that has handed out nothing yet.
    pub const fn new() -> Self {
        KilnAllocator(UnsafeCell::new(dlmalloc::Dlmalloc::new_with_allocator(
            LinearMemory {
                tail_taken: Cell::new(false),
            },
        )))
    }
}

impl Default for KilnAllocator {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: each method forwards to dlmalloc with the layout it was given, as
// dlmalloc's own `GlobalDlmalloc` does; there is one thread (see `Sync`).
unsafe impl GlobalAlloc for KilnAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.0.get()).malloc(layout.size(), layout.align()) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { (*self.0.get()).free(ptr, layout.size(), layout.align()) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.0.get()).calloc(layout.size(), layout.align()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { (*self.0.get()).realloc(ptr, layout.size(), layout.align(), new_size) }
    }
}

#[cfg(feature = "allocator")]
#[global_allocator]
static ALLOCATOR: KilnAllocator = KilnAllocator::new();
