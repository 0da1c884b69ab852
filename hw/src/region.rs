//! A byte region in anonymous memory that many threads read and write at once, without a lock.
//!
//! This is the only `unsafe` behind the RAM backend. The soundness argument, shared by every
//! method below:
//!
//! 1. **Ownership and lifetime.** The region is a private anonymous mapping held by a
//!    [`memmap2::MmapRaw`], which unmaps it on drop and is never remapped or resized. Every
//!    pointer we form is derived from it while `&self` is borrowed, so it is live.
//! 2. **Bounds.** Every method checks `offset + len <= len()` (with `checked_add`) and returns
//!    [`OutOfBounds`] otherwise, so every pointer stays inside the mapping.
//! 3. **No references into the region.** `MmapRaw` never hands out `&[u8]`/`&mut [u8]` and
//!    neither do we: bytes move only through raw-pointer copies (`ptr::copy_nonoverlapping`,
//!    `ptr::write_bytes`) between the region and the caller's buffer, which is a separate
//!    allocation (so the copy really is non-overlapping). Rust's aliasing rules therefore never
//!    apply to the region itself, only to the caller's buffer, which we borrow normally.
//! 4. **Concurrent access.** Two threads may copy into/out of the same bytes at once only when
//!    the initiator sent overlapping commands concurrently, whose result NVMe leaves undefined
//!    (no atomicity beyond AWUN/AWUPF, which we advertise as one block). This is the same
//!    contract rust-vmm's `vm-memory` documents for guest memory shared with another party:
//!    the bytes are plain data with no invariants (every bit pattern is a valid `u8`), so a
//!    racing copy can produce torn or mixed bytes in the destination and nothing else. Strictly,
//!    the Rust abstract machine calls unsynchronised non-atomic accesses a data race; we accept
//!    that, as vm-memory and every hypervisor do, because the memory is outside any Rust object,
//!    is only reached through opaque `memcpy`/`memset` calls the compiler cannot reason about,
//!    and the alternative (a lock or per-byte atomics per I/O) costs the data path for no
//!    guarantee NVMe gives anyway.
//! 5. **Discard.** `MADV_DONTNEED` on a private anonymous mapping replaces whole pages with
//!    zero-fill-on-demand pages; we only pass it page-aligned ranges fully inside the caller's
//!    range, so no byte outside that range changes.

use std::io;
use std::ptr;

use memmap2::{MmapOptions, MmapRaw, UncheckedAdvice};

use crate::sys;

/// The requested range is not inside the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutOfBounds;

/// A fixed-size, zero-initialised anonymous memory region (see the module doc for soundness).
#[derive(Debug)]
pub(crate) struct Region {
    map: MmapRaw,
    len: usize,
    page_size: usize,
}

impl Region {
    /// Maps `len` (> 0) zeroed bytes. `populate`: fault every page in now (huge pages where the
    /// kernel has them, MADV_POPULATE_WRITE or MAP_POPULATE) so the
    /// data path never page-faults; otherwise pages are allocated on first write (sparse) and
    /// the mapping does not reserve swap (MAP_NORESERVE), so a large idle volume costs nothing.
    pub(crate) fn new_anonymous(len: usize, populate: bool) -> io::Result<Region> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut options = MmapOptions::new();
        options.len(len);
        let map = if populate {
            // Preallocated: ask for transparent huge pages first (a random 4K read over a large
            // volume then misses the TLB far less; sparse volumes keep 4 KiB pages, since a huge
            // page would commit 2 MiB per first write), then fault everything in.
            let m = options.map_anon()?;
            let _ = m.advise(memmap2::Advice::HugePage);
            if m.advise(memmap2::Advice::PopulateWrite).is_ok() {
                m
            } else {
                // Kernels before 5.14 lack MADV_POPULATE_WRITE: MAP_POPULATE instead.
                drop(m);
                options.populate();
                options.map_anon()?
            }
        } else {
            options.no_reserve_swap();
            options.map_anon()?
        };
        let map = MmapRaw::from(map);
        Ok(Region {
            map,
            len,
            page_size: sys::page_size(),
        })
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The address of `[offset, offset + len)`, for a zero-copy read (`mapped`): in bounds,
    /// valid while the region lives.
    pub(crate) fn ptr_at(&self, offset: usize, len: usize) -> Result<*const u8, OutOfBounds> {
        self.check(offset, len)?;
        Ok(self.map.as_ptr().wrapping_add(offset))
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), OutOfBounds> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(OutOfBounds),
        }
    }

    /// Copies `dst.len()` bytes from `offset` into `dst`.
    pub(crate) fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfBounds> {
        self.check(offset, dst.len())?;
        // SAFETY: in bounds (checked above); the mapping is live; `dst` is a distinct, writable
        // allocation of exactly this length; racing writers only tear bytes (module doc, 1-4).
        unsafe {
            ptr::copy_nonoverlapping(self.map.as_ptr().add(offset), dst.as_mut_ptr(), dst.len());
        }
        Ok(())
    }

    /// Copies `src` into the region at `offset`.
    pub(crate) fn write(&self, offset: usize, src: &[u8]) -> Result<(), OutOfBounds> {
        self.check(offset, src.len())?;
        // SAFETY: in bounds (checked above); the mapping is live and writable (anonymous,
        // PROT_READ|PROT_WRITE); `src` is a distinct allocation of exactly this length (module
        // doc, 1-4).
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), self.map.as_mut_ptr().add(offset), src.len());
        }
        Ok(())
    }

    /// Sets `[offset, offset + len)` to zero, keeping the pages resident.
    pub(crate) fn zero(&self, offset: usize, len: usize) -> Result<(), OutOfBounds> {
        self.check(offset, len)?;
        // SAFETY: in bounds (checked above); the mapping is live and writable (module doc, 1-4).
        unsafe {
            ptr::write_bytes(self.map.as_mut_ptr().add(offset), 0, len);
        }
        Ok(())
    }

    /// Zeroes `[offset, offset + len)` and gives the whole pages inside it back to the kernel
    /// (MADV_DONTNEED); the partial pages at either edge are zeroed in place.
    pub(crate) fn discard(&self, offset: usize, len: usize) -> Result<(), OutOfBounds> {
        self.check(offset, len)?;
        let end = offset + len; // Cannot overflow: checked above.
        let first_page = offset.next_multiple_of(self.page_size).min(end);
        let last_page = end - end % self.page_size;
        if first_page >= last_page {
            // No whole page inside the range.
            return self.zero(offset, len);
        }
        self.zero(offset, first_page - offset)?;
        self.zero(last_page, end - last_page)?;
        // SAFETY: `[first_page, last_page)` is page-aligned (the mapping starts on a page
        // boundary), non-empty and inside `[offset, end)`, so DONTNEED changes only bytes the
        // caller asked to discard; they read back as zeros (module doc, 5).
        let advised = unsafe {
            self.map.unchecked_advise_range(
                UncheckedAdvice::DontNeed,
                first_page,
                last_page - first_page,
            )
        };
        if advised.is_err() {
            // Cannot happen for a valid anonymous range; if it does, zeroing keeps the promise.
            self.zero(first_page, last_page - first_page)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discard_keeps_bytes_outside_the_range() {
        let page = sys::page_size();
        let region = Region::new_anonymous(4 * page, false).expect("small anonymous map");
        region.write(0, &vec![0xAB; 4 * page]).expect("in bounds");
        // From the middle of page 0 to the middle of page 3: pages 1 and 2 are whole.
        region.discard(page / 2, 3 * page).expect("in bounds");
        let mut all = vec![0; 4 * page];
        region.read(0, &mut all).expect("in bounds");
        assert!(all[..page / 2].iter().all(|&b| b == 0xAB));
        assert!(all[page / 2..page / 2 + 3 * page].iter().all(|&b| b == 0));
        assert!(all[page / 2 + 3 * page..].iter().all(|&b| b == 0xAB));
    }

    #[test]
    fn out_of_bounds_is_refused() {
        let region = Region::new_anonymous(4096, true).expect("small anonymous map");
        let mut buf = [0u8; 2];
        assert_eq!(region.read(4095, &mut buf), Err(OutOfBounds));
        assert_eq!(region.write(usize::MAX, &buf), Err(OutOfBounds));
        assert_eq!(region.zero(1, usize::MAX), Err(OutOfBounds));
        assert_eq!(region.discard(4097, 0), Err(OutOfBounds));
        assert!(Region::new_anonymous(0, false).is_err());
    }
}
