//! Bytes the process's Rust allocations hold right now, counted by a
//! wrapper around the global allocator (the `tributary` binary installs
//! it). Unlike resident memory it does not move with the allocator's page
//! reuse, so a leak of a few hundred bytes per commit shows within minutes.
//! What C libraries allocate themselves (librdkafka's queues, zstd) is not
//! counted: resident memory covers it.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// A global allocator that counts the bytes live in `A` (see [`live_bytes`]).
/// Costs one relaxed atomic add per allocation and per free.
#[derive(Debug)]
pub struct CountingAllocator<A>(pub A);

// SAFETY: every call is forwarded to `A` unchanged; the counting never
// touches the memory.
#[allow(unsafe_code)]
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, forwarded as is.
        let ptr = unsafe { self.0.alloc(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { self.0.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { self.0.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let moved = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            if new_size >= layout.size() {
                LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        moved
    }
}

/// Bytes live in the global allocator, or `None` when the counting
/// allocator is not installed (library tests, embedders).
pub fn live_bytes() -> Option<usize> {
    match LIVE.load(Ordering::Relaxed) {
        0 => None,
        live => Some(live),
    }
}
