//! A global allocator that counts the bytes live in the whole process (every thread), for
//! memory measurements: `tests/process_wide/` and `examples/memory.rs` (the one other
//! user, by a `#[path]` include) install it with `#[global_allocator]` and read [`LIVE`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Bytes currently allocated (by requested size, not the allocator's rounding).
pub static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting into [`LIVE`].
pub struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Relaxed);
        // SAFETY: forwards the caller's layout to the system allocator unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Relaxed);
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: as in `dealloc`; the system allocator handles the resize.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
