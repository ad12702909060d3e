//! The `switchyard` command; everything it does is in [`switchyard::cli`].

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// mimalloc instead of glibc's malloc: every request allocates its future (a few KiB) and two read buffers, sizes
/// glibc serves from its slow paths (docs/performance.md).
#[global_allocator]
static ALLOCATOR: Mimalloc = Mimalloc;

/// mimalloc, asked for an ordinary block whenever a word's alignment is enough.
///
/// The `mimalloc` crate passes every layout to `mi_malloc_aligned`. mimalloc 3 serves that from its ordinary
/// path only for blocks up to 1 KiB, or whose size class is a power of two up to 4 KiB; any other block (a
/// request's future of 2.2 KiB, hyper's 8 KiB read buffers) went through its over-allocating path: about 600
/// instructions of a kept-alive request's 36,900 (`benches/instructions.py`). Rust asks for an alignment above 8
/// only for types that declare one.
struct Mimalloc;

/// The alignment every mimalloc block has: its size classes are whole words, and its pages start at least
/// word-aligned.
const WORD: usize = std::mem::size_of::<usize>();

// SAFETY: each method forwards to mimalloc, which returns a block of at least `size` bytes or null, as
// `GlobalAlloc` requires. A block from `mi_malloc`, `mi_zalloc` or `mi_realloc` is word-aligned (see `WORD`),
// so it is used only when `layout.align() <= WORD`; any larger alignment goes to mimalloc's `_aligned` calls,
// which take it as an argument. `mi_free` frees blocks from either family, and `mi_realloc_aligned` keeps the
// alignment it is given. Exercised by `tests::every_size_and_alignment_round_trips`.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl's comment.
        unsafe { by_alignment(layout, mi_malloc, mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl's comment.
        unsafe { by_alignment(layout, mi_zalloc, mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the caller's promise), so from mimalloc.
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl's comment; `ptr` came from this allocator with `layout`.
        unsafe {
            if layout.align() <= WORD {
                mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

/// A block for `layout` from `plain` when a word's alignment is enough, else from `aligned`.
///
/// # Safety
/// `plain` and `aligned` are mimalloc's allocation calls of one family (`mi_malloc` and `mi_malloc_aligned`, or
/// `mi_zalloc` and `mi_zalloc_aligned`).
#[inline]
unsafe fn by_alignment(
    layout: Layout,
    plain: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    // SAFETY: the caller passes mimalloc's calls; see `Mimalloc`'s impl for why `plain` is enough up to `WORD`.
    unsafe {
        if layout.align() <= WORD {
            plain(layout.size()).cast()
        } else {
            aligned(layout.size(), layout.align()).cast()
        }
    }
}

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size up to 64 KiB in uneven steps, at every alignment from 1 to 4 KiB: the block is aligned,
    /// zeroed when asked, keeps its bytes through a realloc that grows it and one that shrinks it, and frees.
    #[test]
    fn every_size_and_alignment_round_trips() {
        let mut size = 1;
        while size <= 64 * 1024 {
            for shift in 0..=12 {
                let align = 1usize << shift;
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: the layouts are valid and non-zero in size; each block is written within its size,
                // and freed once, with the layout it has then.
                unsafe {
                    let zeroed = ALLOCATOR.alloc_zeroed(layout);
                    assert!(!zeroed.is_null());
                    assert_eq!(zeroed as usize % align, 0, "size {size} align {align}");
                    assert!(
                        std::slice::from_raw_parts(zeroed, size)
                            .iter()
                            .all(|&b| b == 0)
                    );
                    ALLOCATOR.dealloc(zeroed, layout);

                    let p = ALLOCATOR.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    for i in 0..size {
                        *p.add(i) = (i % 251) as u8;
                    }
                    let grown = ALLOCATOR.realloc(p, layout, size * 3);
                    assert_eq!(
                        grown as usize % align,
                        0,
                        "grown: size {size} align {align}"
                    );
                    let grown_layout = Layout::from_size_align(size * 3, align).unwrap();
                    for i in 0..size {
                        assert_eq!(*grown.add(i), (i % 251) as u8);
                    }
                    let kept = size.div_ceil(2);
                    let shrunk = ALLOCATOR.realloc(grown, grown_layout, kept);
                    assert_eq!(
                        shrunk as usize % align,
                        0,
                        "shrunk: size {size} align {align}"
                    );
                    for i in 0..kept {
                        assert_eq!(*shrunk.add(i), (i % 251) as u8);
                    }
                    ALLOCATOR.dealloc(shrunk, Layout::from_size_align(kept, align).unwrap());
                }
            }
            size = size * 5 / 4 + 1;
        }
    }
}
