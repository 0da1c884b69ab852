//! Zero-copy reads: a range of a backend's memory handed to the kernel as it is.
//!
//! The RAM backend's region and the null backend's zeroes are memory the target can give to
//! `writev` directly: the kernel copies the bytes into the socket, and the target's own copy
//! into a buffer disappears (for a 128K read that copy cost as much as the send). A [`Mapped`]
//! is the address and length of such a range plus a reference that keeps the memory mapped
//! while the range exists.
//!
//! It keeps `region`'s rule (its module doc, point 3): no Rust reference into the region is
//! ever formed. A `Mapped` gives out a raw address for an iovec ([`Mapped::as_ptr`], read only
//! by the kernel) or copies out through a raw pointer ([`Mapped::copy_to`], when the transport
//! must compute a data digest); racing writers can only tear the bytes a host reads while it
//! also writes them, which NVMe leaves undefined (point 4).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// A read-only range of backend memory; see the module doc.
#[derive(Clone)]
pub struct Mapped {
    ptr: *const u8,
    len: usize,
    /// Keeps the mapping alive (`None`: static memory).
    _keep: Option<Arc<dyn Any + Send + Sync>>,
}

// SAFETY: a `Mapped` is an address into memory that stays mapped while it exists (`_keep`
// owns the mapping, or the memory is static) and that it never writes; moving or sharing it
// between threads moves only the address. Reads of it are raw copies or the kernel's, which
// racing writers can only tear (module doc).
unsafe impl Send for Mapped {}
// SAFETY: as for `Send`: `&Mapped` offers nothing but the address, the length and raw copies.
unsafe impl Sync for Mapped {}

impl fmt::Debug for Mapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapped")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Mapped {
    /// `len` bytes at `ptr`, kept mapped by `keep`.
    ///
    /// # Safety
    /// `[ptr, ptr + len)` must be readable memory that stays mapped while `keep` lives (or
    /// forever, with `keep` `None`).
    pub(crate) unsafe fn new(
        ptr: *const u8,
        len: usize,
        keep: Option<Arc<dyn Any + Send + Sync>>,
    ) -> Self {
        Mapped {
            ptr,
            len,
            _keep: keep,
        }
    }

    /// Bytes in the range.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start address, for an iovec handed to the kernel (`writev`, `sendmsg`). Valid while
    /// `self` lives; not to be turned into a Rust reference (module doc).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// Drops the first `n` bytes (after a partial write). `n` above the length empties it.
    pub fn advance(&mut self, n: usize) {
        let n = n.min(self.len);
        self.ptr = self.ptr.wrapping_add(n);
        self.len -= n;
    }

    /// Copies the range into `dst`, which must be exactly as long.
    pub fn copy_to(&self, dst: &mut [u8]) {
        assert_eq!(
            dst.len(),
            self.len,
            "Mapped::copy_to needs a buffer of the range's length"
        );
        // SAFETY: `[ptr, ptr + len)` is mapped and readable while `self` lives (`new`'s
        // contract); `dst` is a distinct, writable allocation of exactly `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr, dst.as_mut_ptr(), self.len) }
    }
}
