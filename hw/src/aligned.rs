//! A heap buffer aligned for O_DIRECT (bounce buffers of the `block` backend).

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// An owned, zero-initialised byte buffer whose start is aligned to `align` bytes.
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>; there is no shared state.
unsafe impl Send for AlignedBuf {}
// SAFETY: `&AlignedBuf` only allows reads of bytes it owns, like `&Vec<u8>`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes aligned to `align`. `None` if `len` is zero or `align` is
    /// not a power of two (or the layout overflows). Aborts on out-of-memory, like `Vec`.
    pub(crate) fn zeroed(len: usize, align: usize) -> Option<AlignedBuf> {
        if len == 0 {
            return None;
        }
        let layout = Layout::from_size_align(len, align).ok()?;
        // SAFETY: `layout` has a non-zero size (checked above).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        Some(AlignedBuf { ptr, layout })
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points at `layout.size()` initialised (zeroed, then only written through
        // `as_mut_slice`) bytes owned by `self`, borrowed shared for the returned lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed(self.layout)` and is freed exactly once, here.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.layout.size())
            .field("align", &self.layout.align())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        for align in [512, 4096] {
            let mut buf = AlignedBuf::zeroed(3 * align, align).expect("valid layout");
            assert_eq!(buf.as_slice().as_ptr().addr() % align, 0);
            assert!(buf.as_slice().iter().all(|&b| b == 0));
            buf.as_mut_slice()[align] = 7;
            assert_eq!(buf.as_slice()[align], 7);
        }
    }

    #[test]
    fn bad_layouts_are_refused() {
        assert!(AlignedBuf::zeroed(0, 512).is_none());
        assert!(AlignedBuf::zeroed(512, 3).is_none());
    }
}
