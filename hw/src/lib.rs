//! Storage backends for the Tessera target: null, RAM, regular file and block device.
//!
//! Every backend implements [`Backend`]: positioned, synchronous byte I/O with the range checked
//! against the capacity before anything runs. The target wraps a backend behind its namespace
//! abstraction, turns [`IoError`] into an NVMe status in one place (via [`IoError::kind`]), and
//! calls backends whose [`Backend::may_block`] is true from a blocking pool.
//!
//! Which backend does what, and why:
//! | kind    | module      | I/O                                   | volatile write cache |
//! |---------|-------------|---------------------------------------|----------------------|
//! | `null`  | [`null`]    | reads zeros, drops writes             | no                   |
//! | `ram`   | [`ram`]     | anonymous mapping, raw copies         | no (see module doc)  |
//! | `file`  | [`file`](mod@file) | pread/pwrite through the page cache   | yes (fdatasync)      |
//! | `block` | [`block`]   | O_DIRECT pread/pwrite, bounce buffers | yes (fdatasync)      |
//!
//! `unsafe` appears in six modules, each block with a `// SAFETY:` line: `region` (the RAM
//! mapping), `mapped` (zero-copy ranges of it; `Mapped::new` is an unsafe constructor),
//! `aligned` (O_DIRECT bounce buffers), `sys` (libc calls, CPU affinity included), and the two
//! callers of `Mapped::new`: `ram` (ranges of its mapping) and `null` (a static zero page).
#![deny(unsafe_op_in_unsafe_fn)]

mod aligned;
pub mod block;
mod error;
pub mod file;
mod mapped;
pub mod null;
mod pio;
pub mod ram;
mod region;
mod spec;
pub mod sys;

pub use block::BlockBackend;
pub use error::{Direction, IoError, IoErrorKind, Op, OpenError};
pub use file::FileBackend;
pub use mapped::Mapped;
pub use null::NullBackend;
pub use ram::RamBackend;
pub use spec::{BackendSpec, open};

/// A storage backend: a flat, byte-addressed range `[0, len_bytes())`.
///
/// Every method that takes a range rejects `offset + len` beyond the capacity (including `u64`
/// overflow) with [`IoError::OutOfRange`], and a range not aligned to [`Backend::block_align`]
/// with [`IoError::Misaligned`], before touching storage: callers are never trusted.
///
/// Concurrent calls are allowed from any number of threads. As in NVMe itself, the result of
/// concurrent overlapping writes (or a read overlapping a write) is undefined data in the
/// overlapping bytes, never memory unsafety or an error elsewhere.
pub trait Backend: Send + Sync + 'static {
    /// `"null"`, `"ram"`, `"file"` or `"block"`.
    fn kind(&self) -> &'static str;
    /// Capacity in bytes.
    fn len_bytes(&self) -> u64;
    /// Required alignment of offsets and lengths in bytes (a power of two; 1 = none).
    fn block_align(&self) -> usize;
    /// True: I/O may sleep on a disk, run it on a blocking pool. False: safe to call inline.
    fn may_block(&self) -> bool;
    /// True when an acknowledged write is not durable until [`Backend::flush`].
    fn volatile_write_cache(&self) -> bool;
    /// Fills `buf` from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError>;
    /// Zeroes `[offset, offset + len)`, keeping it allocated where the backend can tell.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), IoError>;
    /// Discards `[offset, offset + len)`; later reads of it return zeros (DLFEAT "read zeroes").
    fn deallocate(&self, offset: u64, len: u64) -> Result<(), IoError>;
    /// Durability point: every write acknowledged before the call survives a crash after it.
    fn flush(&self) -> Result<(), IoError>;
    /// A write that is durable when it returns (NVMe FUA).
    fn write_fua(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.write_at(offset, buf)?;
        self.flush()
    }
    /// A read without a copy: the range `[offset, offset + len)` of the backend's own memory,
    /// for the transport to hand to the kernel ([`Mapped`]). `None` when the backend has no
    /// such memory (file, block: use [`Backend::read_at`]); the range is checked as every
    /// other read's.
    fn read_mapped(&self, offset: u64, len: u64) -> Option<Result<Mapped, IoError>> {
        let _ = (offset, len);
        None
    }
}

/// So that `Arc<dyn Backend>` can be logged and used in `Result::expect`-style calls without
/// forcing `Debug` on every implementation.
impl std::fmt::Debug for dyn Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("kind", &self.kind())
            .field("len_bytes", &self.len_bytes())
            .field("block_align", &self.block_align())
            .finish()
    }
}

/// Checks `[offset, offset + len)` against `capacity` (overflow included), then alignment.
///
/// `align` must be a power of two; every backend's `block_align` is.
pub(crate) fn check_range(
    op: Op,
    offset: u64,
    len: u64,
    capacity: u64,
    align: usize,
) -> Result<(), IoError> {
    match offset.checked_add(len) {
        Some(end) if end <= capacity => {}
        _ => {
            return Err(IoError::OutOfRange {
                op,
                offset,
                len,
                capacity,
            });
        }
    }
    debug_assert!(align.is_power_of_two(), "block_align is a power of two");
    // usize -> u64 widens on every target we build for (64-bit Linux).
    let mask = (align as u64).wrapping_sub(1);
    if (offset | len) & mask != 0 {
        return Err(IoError::Misaligned {
            op,
            offset,
            len,
            align,
        });
    }
    Ok(())
}

/// Length of a caller's buffer as a byte count on the device.
pub(crate) fn buf_len(buf: &[u8]) -> u64 {
    // usize -> u64 widens on every target we build for (64-bit Linux).
    buf.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_inside_and_at_the_end_is_accepted() {
        assert!(check_range(Op::Read, 0, 4096, 4096, 1).is_ok());
        assert!(check_range(Op::Read, 4096, 0, 4096, 1).is_ok());
        assert!(check_range(Op::Write, 512, 512, 4096, 512).is_ok());
    }

    #[test]
    fn range_past_the_end_or_overflowing_is_rejected() {
        for (offset, len) in [
            (4096, 1),
            (4095, 2),
            (u64::MAX, 1),
            (1, u64::MAX),
            (u64::MAX, 0),
        ] {
            let err = check_range(Op::Read, offset, len, 4096, 1).expect_err("must be rejected");
            assert_eq!(err.kind(), IoErrorKind::OutOfRange, "{offset}+{len}");
        }
    }

    #[test]
    fn misaligned_offset_or_length_is_rejected() {
        for (offset, len) in [(1, 512), (512, 1), (256, 256)] {
            let err =
                check_range(Op::Write, offset, len, 1 << 20, 512).expect_err("must be rejected");
            assert_eq!(err.kind(), IoErrorKind::Unaligned, "{offset}+{len}");
        }
    }
}
