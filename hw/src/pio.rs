//! Positioned I/O loops shared by the `file` and `block` backends: full reads and writes with
//! short transfers and EINTR handled, FUA writes, and zeroing with a bounded-chunk fallback.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::sys::{self, EINTR_RETRIES_MAX};
use crate::{IoError, Op, buf_len};

/// Largest chunk written per call when zeroing by writing zeros (the fallback when the
/// filesystem or device cannot zero a range itself): bounds the zero buffer to 1 MiB while
/// keeping per-call overhead negligible.
pub(crate) const ZERO_CHUNK_BYTES: usize = 1 << 20;

/// Reads exactly `buf.len()` bytes at `offset`.
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
    let expected = buf_len(buf);
    let mut done = 0usize;
    let mut interrupts = 0;
    while done < buf.len() {
        let at = offset + buf_len(&buf[..done]);
        match file.read_at(&mut buf[done..], at) {
            Ok(0) => {
                return Err(IoError::ShortRead {
                    offset,
                    expected,
                    got: buf_len(&buf[..done]),
                });
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted && interrupts < EINTR_RETRIES_MAX => {
                interrupts += 1;
            }
            Err(e) => return Err(IoError::from_io(Op::Read, &e)),
        }
    }
    Ok(())
}

/// Writes all of `buf` at `offset`, attributing errors to `op`.
pub(crate) fn write_all_at(file: &File, buf: &[u8], offset: u64, op: Op) -> Result<(), IoError> {
    write_loop(buf, offset, op, |chunk, at| file.write_at(chunk, at))
}

/// Writes all of `buf` at `offset` durably (RWF_DSYNC per call: FUA on a block device). Falls
/// back to a plain write plus fdatasync where the kernel does not know pwritev2 flags.
pub(crate) fn write_fua_at(file: &File, buf: &[u8], offset: u64) -> Result<(), IoError> {
    match write_loop(buf, offset, Op::Write, |chunk, at| {
        sys::pwrite_dsync(file, chunk, at)
    }) {
        Err(IoError::Io { errno, .. }) if errno == libc::EOPNOTSUPP || errno == libc::ENOSYS => {
            write_all_at(file, buf, offset, Op::Write)?;
            sync_data(file)
        }
        other => other,
    }
}

fn write_loop(
    buf: &[u8],
    offset: u64,
    op: Op,
    mut write: impl FnMut(&[u8], u64) -> io::Result<usize>,
) -> Result<(), IoError> {
    let mut done = 0usize;
    let mut interrupts = 0;
    while done < buf.len() {
        let at = offset + buf_len(&buf[..done]);
        match write(&buf[done..], at) {
            Ok(0) => {
                return Err(IoError::ShortWrite {
                    op,
                    offset,
                    expected: buf_len(buf),
                    got: buf_len(&buf[..done]),
                });
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted && interrupts < EINTR_RETRIES_MAX => {
                interrupts += 1;
            }
            Err(e) => return Err(IoError::from_io(op, &e)),
        }
    }
    Ok(())
}

/// fdatasync: the durability point of the `file` and `block` backends.
pub(crate) fn sync_data(file: &File) -> Result<(), IoError> {
    file.sync_data()
        .map_err(|e| IoError::from_io(Op::Flush, &e))
}

/// Asks the filesystem or block device to zero or punch `[offset, offset + len)` with
/// fallocate `mode`. `Ok(false)`: not supported here, the caller falls back to writing zeros.
pub(crate) fn try_fallocate(
    file: &File,
    mode: libc::c_int,
    offset: u64,
    len: u64,
    op: Op,
) -> Result<bool, IoError> {
    match sys::fallocate(file, mode, offset, len) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) => Ok(false),
        Err(e) => Err(IoError::from_io(op, &e)),
    }
}

/// Write Zeroes on a file or block device: `FALLOC_FL_ZERO_RANGE` where the filesystem or
/// device offers it, else `write_zeros(offset, len, op)`, the backend's own writing of zeros.
/// The caller has checked the range; a zero length is a no-op (fallocate refuses it).
pub(crate) fn zero_range(
    file: &File,
    offset: u64,
    len: u64,
    write_zeros: impl FnOnce(u64, u64, Op) -> Result<(), IoError>,
) -> Result<(), IoError> {
    let op = Op::WriteZeroes;
    if len == 0 {
        return Ok(());
    }
    let zero = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
    if try_fallocate(file, zero, offset, len, op)? {
        return Ok(());
    }
    write_zeros(offset, len, op)
}

/// Deallocate (Dataset Management) on a file or block device: punch a hole, else zero the
/// range with fallocate, else `write_zeros(offset, len, op)`. Deallocated blocks read as zeros
/// (DLFEAT says so), which each step keeps. The caller has checked the range.
pub(crate) fn deallocate_range(
    file: &File,
    offset: u64,
    len: u64,
    write_zeros: impl FnOnce(u64, u64, Op) -> Result<(), IoError>,
) -> Result<(), IoError> {
    let op = Op::Deallocate;
    if len == 0 {
        return Ok(());
    }
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    if try_fallocate(file, punch, offset, len, op)? {
        return Ok(());
    }
    let zero = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
    if try_fallocate(file, zero, offset, len, op)? {
        return Ok(());
    }
    write_zeros(offset, len, op)
}

/// Zeroes `[offset, offset + len)` by writing `zeros` (all zero bytes) repeatedly; every chunk
/// but the last is `zeros.len()` long, so for O_DIRECT `zeros` must be aligned and a multiple
/// of the block size, and so must `len`.
pub(crate) fn write_zeros(
    file: &File,
    zeros: &[u8],
    offset: u64,
    len: u64,
    op: Op,
) -> Result<(), IoError> {
    debug_assert!(zeros.iter().all(|&b| b == 0), "zero buffer holds zeros");
    let chunk_bytes = buf_len(zeros);
    if chunk_bytes == 0 {
        return Ok(());
    }
    let mut at = offset;
    let end = offset + len; // The caller checked the range against the capacity.
    while at < end {
        let this = (end - at).min(chunk_bytes);
        // `this <= zeros.len()`, a usize: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let this_usize = this as usize;
        write_all_at(file, &zeros[..this_usize], at, op)?;
        at += this;
    }
    Ok(())
}
