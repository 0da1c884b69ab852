//! The `ram` backend: a zero-filled volume in anonymous memory.
//!
//! - **Sparse** (default): pages are allocated on first write, so a 1 GiB volume costs almost
//!   nothing until it is written; the mapping reserves no swap (MAP_NORESERVE). Deallocate
//!   *and Write Zeroes* give whole pages back to the kernel (MADV_DONTNEED) and zero partial
//!   pages: a host's `mkfs` zeroes whole devices with Write Zeroes, and filling the volume with
//!   zero pages would commit all of it for nothing (no host can tell the difference).
//! - **Preallocate**: every page is faulted in at open (MAP_POPULATE), so the data path never
//!   takes a page fault and memory pressure shows up at start, not mid-I/O. Deallocate zeroes
//!   in place instead of returning pages, so the volume keeps the memory it was promised.
//!
//! I/O is a raw copy into or out of the region with no lock per I/O; the soundness argument
//! (and what concurrent overlapping writes do) is in `region`'s module doc.
//!
//! **No volatile write cache.** A write is complete when the copy is; a flush has nothing
//! more to make durable. The volume does not survive the process either way; advertising a
//! write cache would only make hosts send flushes that cannot change that. Durability across
//! a crash for a RAM volume comes only from replicas on other servers.

use std::sync::Arc;

use crate::region::Region;
use crate::{Backend, IoError, Mapped, Op, OpenError, buf_len, check_range};

/// A RAM volume; see the module doc.
#[derive(Debug)]
pub struct RamBackend {
    /// Shared with the zero-copy reads in flight ([`Mapped`] keeps it mapped).
    region: Arc<Region>,
    len_bytes: u64,
    preallocate: bool,
}

impl RamBackend {
    /// A zero-filled volume of `len_bytes` (> 0) bytes, sparse or preallocated.
    pub fn new(len_bytes: u64, preallocate: bool) -> Result<RamBackend, OpenError> {
        let invalid = |reason| OpenError::InvalidSize {
            backend: "ram",
            size: len_bytes,
            reason,
        };
        if len_bytes == 0 {
            return Err(invalid("a volume needs at least one byte"));
        }
        let len = usize::try_from(len_bytes)
            .ok()
            .filter(|&len| isize::try_from(len).is_ok())
            .ok_or_else(|| invalid("larger than the address space"))?;
        let region = Region::new_anonymous(len, preallocate).map_err(|source| OpenError::Map {
            size: len_bytes,
            source,
        })?;
        debug_assert_eq!(region.len(), len, "the region maps exactly the volume");
        Ok(RamBackend {
            region: Arc::new(region),
            len_bytes,
            preallocate,
        })
    }

    /// Whether the pages were faulted in at open.
    pub fn is_preallocated(&self) -> bool {
        self.preallocate
    }

    /// Checks the range and converts it to region indices.
    fn range(&self, op: Op, offset: u64, len: u64) -> Result<(usize, usize), IoError> {
        check_range(op, offset, len, self.len_bytes, 1)?;
        // Both fit: the range is inside the capacity, which fits in usize (checked at `new`).
        match (usize::try_from(offset), usize::try_from(len)) {
            (Ok(offset), Ok(len)) => Ok((offset, len)),
            _ => Err(self.out_of_range(op, offset, len)),
        }
    }

    fn out_of_range(&self, op: Op, offset: u64, len: u64) -> IoError {
        IoError::OutOfRange {
            op,
            offset,
            len,
            capacity: self.len_bytes,
        }
    }
}

impl Backend for RamBackend {
    fn kind(&self) -> &'static str {
        "ram"
    }

    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn block_align(&self) -> usize {
        1
    }

    /// A memcpy; a page fault on first touch of a sparse page is the worst it waits for.
    fn may_block(&self) -> bool {
        false
    }

    /// See the module doc: nothing is cached, and nothing survives the process anyway.
    fn volatile_write_cache(&self) -> bool {
        false
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let (start, _) = self.range(Op::Read, offset, buf_len(buf))?;
        let len = buf_len(buf);
        self.region
            .read(start, buf)
            .map_err(|_| self.out_of_range(Op::Read, offset, len))
    }

    /// Zero-copy: the region's own bytes (a sparse page not yet written reads as the kernel's
    /// zero page).
    fn read_mapped(&self, offset: u64, len: u64) -> Option<Result<Mapped, IoError>> {
        Some(
            self.range(Op::Read, offset, len)
                .and_then(|(start, count)| {
                    let ptr = self
                        .region
                        .ptr_at(start, count)
                        .map_err(|_| self.out_of_range(Op::Read, offset, len))?;
                    let keep: Arc<dyn std::any::Any + Send + Sync> = self.region.clone();
                    // SAFETY: `ptr_at` checked `[start, start + count)` is inside the region, which
                    // stays mapped while `keep` (a reference to it) lives.
                    Ok(unsafe { Mapped::new(ptr, count, Some(keep)) })
                }),
        )
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        let (start, _) = self.range(Op::Write, offset, buf_len(buf))?;
        self.region
            .write(start, buf)
            .map_err(|_| self.out_of_range(Op::Write, offset, buf_len(buf)))
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let (start, count) = self.range(Op::WriteZeroes, offset, len)?;
        let done = if self.preallocate {
            self.region.zero(start, count)
        } else {
            self.region.discard(start, count)
        };
        done.map_err(|_| self.out_of_range(Op::WriteZeroes, offset, len))
    }

    fn deallocate(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let (start, count) = self.range(Op::Deallocate, offset, len)?;
        let done = if self.preallocate {
            self.region.zero(start, count)
        } else {
            self.region.discard(start, count)
        };
        done.map_err(|_| self.out_of_range(Op::Deallocate, offset, len))
    }

    fn flush(&self) -> Result<(), IoError> {
        Ok(())
    }

    fn write_fua(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.write_at(offset, buf)
    }
}
