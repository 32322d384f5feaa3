//! vigil's global allocator: mimalloc, asked the way it allocates fastest.
//!
//! The `mimalloc` crate hands every allocation to `mi_malloc_aligned`, whatever its
//! alignment. In mimalloc 3 that call serves only blocks of at most 1 KiB from its fast
//! path; a larger block (a boxed future, a read buffer), even at the 8-byte alignment
//! nearly every Rust allocation asks, is over-allocated by `alignment - 1` bytes, which
//! costs a few hundred instructions, can take the next size class up (1,280 bytes asked,
//! 1,536 given), and marks its page as holding interior pointers. Every block `mi_malloc`
//! returns is aligned to the word (its size classes are whole words), so an allocation
//! asking no more than that goes to `mi_malloc`; the rest still go to the aligned calls.
//!
//! The one place vigil's code is `unsafe`: the other crates forbid it.

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// The alignment of every block `mi_malloc` returns.
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc, with plain calls for allocations whose alignment it gives anyway.
pub struct Allocator;

/// Whether a block of `size` bytes aligned as `layout` asks is what `mi_malloc` gives.
#[inline]
fn plain(layout: &Layout, size: usize) -> bool {
    layout.align() <= WORD && layout.align() <= size
}

// SAFETY: each call hands mimalloc a layout's size (and alignment, unless `plain` says
// mimalloc's own alignment already satisfies it) and returns its block or null, as
// `GlobalAlloc` requires; every block is freed by `mi_free`, which takes blocks from
// all of mimalloc's allocation calls.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match plain(&layout, layout.size()) {
            true => mi::mi_malloc(layout.size()) as *mut u8,
            false => mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8,
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match plain(&layout, layout.size()) {
            true => mi::mi_zalloc(layout.size()) as *mut u8,
            false => mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8,
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match plain(&layout, new_size) {
            true => mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8,
            false => {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes mimalloc gave for a block of `size` bytes aligned to `align` by `a`,
    /// and the block's address.
    fn given(a: &impl GlobalAlloc, size: usize, align: usize) -> (usize, usize) {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: a layout of non-zero size; the block is freed at once.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            let usable = mi::mi_usable_size(p as *const c_void);
            a.dealloc(p, layout);
            (usable, p as usize)
        }
    }

    #[test]
    fn a_block_takes_its_own_size_class_at_every_alignment() {
        for size in [8, 24, 1000, 1280, 1536, 3000, 8192, 12288, 100_000] {
            for align in [1, 2, 4, 8, 16, 64, 4096] {
                let (usable, at) = given(&Allocator, size, align);
                assert_eq!(at % align, 0, "{size} bytes aligned to {align}");
                if align <= WORD {
                    // SAFETY: a pure function of its argument.
                    let class = unsafe { mi::mi_good_size(size) };
                    assert_eq!(usable, class, "{size} bytes aligned to {align}");
                } else {
                    assert!(usable >= size);
                }
            }
        }
    }

    #[test]
    fn the_mimalloc_crate_over_allocates_what_this_one_does_not() {
        // Why this crate exists: the same 1,280 bytes at 8-byte alignment take the next
        // size class through `mimalloc::MiMalloc` (mimalloc 3's `mi_malloc_aligned`).
        let (ours, _) = given(&Allocator, 1280, 8);
        let (theirs, _) = given(&mimalloc::MiMalloc, 1280, 8);
        assert_eq!(ours, 1280);
        assert!(theirs > ours, "{theirs}");
    }

    #[test]
    fn reallocation_keeps_the_bytes() {
        let layout = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: the block is written within its size, grown, read within the old
        // size, and freed with its new layout.
        unsafe {
            let p = Allocator.alloc(layout);
            for i in 0..100 {
                *p.add(i) = i as u8;
            }
            let q = Allocator.realloc(p, layout, 5000);
            assert!((0..100).all(|i| *q.add(i) == i as u8));
            Allocator.dealloc(q, Layout::from_size_align(5000, 8).unwrap());
            let z = Allocator.alloc_zeroed(Layout::from_size_align(3000, 8).unwrap());
            assert!((0..3000).all(|i| *z.add(i) == 0));
            Allocator.dealloc(z, Layout::from_size_align(3000, 8).unwrap());
        }
    }
}
