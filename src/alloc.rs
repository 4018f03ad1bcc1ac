//! The process's allocator: mimalloc, entered by the path that suits each request.
//!
//! The `mimalloc` crate sends every request through `mi_malloc_aligned`, even the word-aligned
//! ones that are nearly all of them. In mimalloc 3 that entry serves a request from its size
//! class's free list only while the list has a block; when it is empty (a page used up, which
//! under a steady load is all the time) it does not fetch a fresh page but over-allocates from
//! the next size class, unless the size is a power of two. That slow path ran about 21 times
//! per admit+end pair in a profile of the server under load, at about 220 instructions each,
//! and it kept the size classes it skipped empty. So:
//! - word alignment (8 bytes or less on 64-bit, nearly every Rust allocation): plain
//!   `mi_malloc`, whose blocks are always word-aligned (sizes are whole words and pages start
//!   16-aligned; mimalloc's own `mi_realloc_aligned` takes the plain path for these too);
//! - small over-aligned requests (tokio aligns its task cells and channel halves to 128-byte
//!   cache lines, and every call spawns an actor: a task and its mailboxes): the size is
//!   rounded up to a power of two, because mimalloc aligns power-of-two blocks up to 4 KiB
//!   naturally (`arena.c: mi_arenas_page_alloc_fresh`), so the free list always serves them;
//! - anything else: `mi_malloc_aligned` as before.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Every mimalloc block is aligned to a word.
const ALIGN_WORD: usize = size_of::<usize>();
/// mimalloc aligns power-of-two blocks naturally up to this size (`MI_PAGE_MAX_START_BLOCK_ALIGN2`).
const ROUNDED_BYTES_MAX: usize = 4096;

pub struct Allocator;

/// The size actually asked of mimalloc for an over-aligned request: rounded only where the
/// rounding gets a naturally aligned block (both size and alignment within 4 KiB).
fn aligned_size(layout: Layout) -> usize {
    if layout.size() > ROUNDED_BYTES_MAX || layout.align() > ROUNDED_BYTES_MAX {
        return layout.size();
    }
    layout.size().next_power_of_two().max(layout.align())
}

/// What mimalloc returned, checked against the layout in debug builds.
fn checked(p: *mut c_void, layout: Layout) -> *mut u8 {
    debug_assert!(p.is_null() || (p as usize).is_multiple_of(layout.align()), "{layout:?}");
    p.cast()
}

/// A new block for `layout` from mimalloc's plain entry or its aligned one.
unsafe fn allocate(
    layout: Layout,
    plain: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    let p = unsafe { if layout.align() <= ALIGN_WORD { plain(layout.size()) } else { aligned(aligned_size(layout), layout.align()) } };
    checked(p, layout)
}

// SAFETY: a word-aligned request gets a block of at least its size from mimalloc's plain
// entry (8-aligned); any other gets one from its aligned entry, with the alignment asked and at
// least the size asked. mimalloc frees and resizes by pointer, whichever entry allocated it.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { allocate(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { allocate(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe {
            let p = if layout.align() <= ALIGN_WORD {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size)
            } else {
                // `GlobalAlloc::realloc` promises a valid layout for the new size, so the
                // fallback is never taken.
                let new = Layout::from_size_align(new_size, layout.align()).map_or(new_size, aligned_size);
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new, layout.align())
            };
            checked(p, layout)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_over_aligned_sizes_are_rounded_to_a_power_of_two() {
        let layout = |size, align| Layout::from_size_align(size, align).unwrap();
        assert_eq!(aligned_size(layout(48, 16)), 64);
        assert_eq!(aligned_size(layout(384, 128)), 512);
        assert_eq!(aligned_size(layout(64, 128)), 128);
        assert_eq!(aligned_size(layout(4096, 64)), 4096);
        assert_eq!(aligned_size(layout(5000, 128)), 5000);
        assert_eq!(aligned_size(layout(100, 1 << 20)), 100);
    }

    /// What comes back is aligned and usable to its last byte, through every entry, and keeps
    /// its bytes when it grows.
    #[test]
    fn allocations_are_aligned_and_whole() {
        let cases = [
            (1, 1),
            (7, 4),
            (24, 8),
            (40, 8),
            (100_000, 8),
            (1, 128),
            (200, 128),
            (384, 128),
            (1000, 64),
            (3000, 256),
            (9000, 128),
            (48, 16),
            (40, 32),
        ];
        for (size, align) in cases {
            let layout = Layout::from_size_align(size, align).unwrap();
            unsafe {
                let p = Allocator.alloc(layout);
                assert!(!p.is_null() && (p as usize).is_multiple_of(align), "{size}/{align}");
                std::ptr::write_bytes(p, 0xa5, size);
                let grown = Allocator.realloc(p, layout, size * 3);
                assert!((grown as usize).is_multiple_of(align) && *grown.add(size - 1) == 0xa5, "{size}/{align}");
                Allocator.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                let zeroed = Allocator.alloc_zeroed(layout);
                assert!((zeroed as usize).is_multiple_of(align) && (0..size).all(|i| *zeroed.add(i) == 0), "{size}/{align}");
                Allocator.dealloc(zeroed, layout);
            }
        }
    }
}
