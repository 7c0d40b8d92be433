//! The binary's allocator: the system's, except that every block is overwritten with zeros
//! when it is freed. A PIN or a private key passes through buffers this crate does not own
//! (serde_json's scratch space while it unescapes a string, a PEM decoder's output, a `Vec` that
//! grew and left its old block behind); this is what keeps none of them in freed memory, where
//! a core file or a reader of `/proc/PID/mem` would find it.

use std::alloc::{GlobalAlloc, Layout, System};

/// [`System`], zeroing every block it frees. `main.rs` installs it as the global allocator.
pub struct ZeroOnFree;

// SAFETY: every call is forwarded to `System` with the caller's arguments; `dealloc` first
// writes zeros over the block, which the caller owns until the call returns.
unsafe impl GlobalAlloc for ZeroOnFree {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` points at a live block of `layout.size()` bytes that this allocator
        // gave out (the caller's contract), so it may be written before it is freed.
        unsafe {
            std::ptr::write_bytes(ptr, 0, layout.size());
            // The pointer escapes here, so the compiler cannot drop the zeros as dead stores.
            std::hint::black_box(ptr);
            System.dealloc(ptr, layout);
        }
    }

    // `realloc` is the default one: a new block, a copy, then `dealloc` (which zeroes) of the old
    // block, which the system's realloc would have freed as it was.
}
