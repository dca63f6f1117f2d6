//! Deleted tokens give their memory back: a million issue + delete cycles holding 10,000
//! live tokens end with the live heap within 1.5x of where it started. Measured with a
//! counting global allocator (every thread's allocations), on the map the store uses.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokencache::__churn::Churn;
use tokencache::TokenId;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

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

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Token ids from a counter: eight decimal digits are eight base62 characters.
fn id(n: u64) -> TokenId {
    format!("{n:08}").parse().unwrap()
}

#[test]
fn a_million_issue_delete_cycles_give_the_memory_back() {
    const LIVE_TOKENS: u64 = 10_000;
    const CYCLES: u64 = 1_000_000;
    let map = Churn::new();
    let mut ids = VecDeque::with_capacity(LIVE_TOKENS as usize + 1);
    for n in 0..LIVE_TOKENS {
        map.issue(id(n));
        ids.push_back(id(n));
    }
    let start = LIVE.load(Relaxed);
    let mut peak = start;
    for n in LIVE_TOKENS..LIVE_TOKENS + CYCLES {
        map.issue(id(n));
        ids.push_back(id(n));
        let oldest = ids.pop_front().unwrap();
        assert!(map.delete(&oldest));
        if n % 10_000 == 0 {
            peak = peak.max(LIVE.load(Relaxed));
        }
    }
    let end = LIVE.load(Relaxed);
    assert_eq!(map.len(), LIVE_TOKENS as usize);
    println!(
        "live heap: {start} bytes with {LIVE_TOKENS} tokens, {end} after {CYCLES} cycles \
         (peak sampled {peak}); {:.2}x",
        end as f64 / start as f64
    );
    assert!(
        (end as f64) <= 1.5 * start as f64,
        "live heap grew from {start} to {end} bytes"
    );
}
