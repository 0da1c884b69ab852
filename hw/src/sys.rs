//! Thin wrappers over the Linux calls std does not expose. Each returns `io::Result` with the
//! errno intact; all `unsafe` for syscalls is here.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// How many times a call interrupted by a signal (EINTR) is retried before giving up. A handful
/// is plenty: EINTR only happens when a signal lands mid-call, and an unbounded loop could spin.
pub(crate) const EINTR_RETRIES_MAX: u32 = 64;

/// `BLKGETSIZE64`: `_IOR(0x12, 114, size_t)` from `<linux/fs.h>`; libc does not export it.
const BLKGETSIZE64: libc::Ioctl = libc::_IOR::<libc::size_t>(0x12, 114);

/// Runs `call` (a libc call returning -1 and setting errno on failure), retrying EINTR.
fn retry<T: PartialOrd + Default>(mut call: impl FnMut() -> T) -> io::Result<T> {
    let mut attempts = 0;
    loop {
        let ret = call();
        if ret >= T::default() {
            return Ok(ret);
        }
        let err = io::Error::last_os_error();
        attempts += 1;
        if err.kind() != io::ErrorKind::Interrupted || attempts >= EINTR_RETRIES_MAX {
            return Err(err);
        }
    }
}

fn off_t(value: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(value).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

/// The size of a memory page in bytes.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions; _SC_PAGESIZE is a valid name.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    // Linux always reports a positive page size; 4096 is the x86-64 and arm64 default.
    usize::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .unwrap_or(4096)
}

/// `fallocate(2)` on `[offset, offset + len)` with `mode` (FALLOC_FL_* flags).
pub(crate) fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = (off_t(offset)?, off_t(len)?);
    let fd = file.as_raw_fd();
    // SAFETY: fallocate takes no pointers; `fd` is open for the duration of `file`'s borrow.
    retry(|| unsafe { libc::fallocate(fd, mode, offset, len) }).map(|_| ())
}

/// One `pwritev2(2)` of `buf` at `offset` with `RWF_DSYNC`: the data (and the metadata needed to
/// read it back) is durable when it returns; on a block device the kernel issues a FUA write.
/// Returns the count written, which may be short like any pwrite.
pub(crate) fn pwrite_dsync(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    let offset = off_t(offset)?;
    let iov = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    let fd = file.as_raw_fd();
    // SAFETY: `iov` describes `buf`, which is live and readable for the whole call; the kernel
    // only reads through it (a write), so casting away const is sound. One iovec, count 1.
    let written = retry(|| unsafe { libc::pwritev2(fd, &iov, 1, offset, libc::RWF_DSYNC) })?;
    // A non-negative ssize_t always fits in usize.
    usize::try_from(written).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

/// `ioctl(BLKGETSIZE64)`: a block device's size in bytes.
pub(crate) fn block_device_size_bytes(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    let fd = file.as_raw_fd();
    // SAFETY: BLKGETSIZE64 writes one u64 (size_t on 64-bit Linux) through the pointer, which
    // points at `size`, live and writable for the call.
    retry(|| unsafe { libc::ioctl(fd, BLKGETSIZE64, &mut size as *mut u64) })?;
    Ok(size)
}

/// `ioctl(BLKSSZGET)`: a block device's logical block size in bytes.
pub(crate) fn block_device_logical_block_size(file: &File) -> io::Result<u64> {
    let mut size: libc::c_int = 0;
    let fd = file.as_raw_fd();
    // SAFETY: BLKSSZGET writes one int through the pointer, which points at `size`, live and
    // writable for the call.
    retry(|| unsafe { libc::ioctl(fd, libc::BLKSSZGET, &mut size as *mut libc::c_int) })?;
    u64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// O_DIRECT alignment of a regular file as `(offset_align, memory_align)` from
/// `statx(STATX_DIOALIGN)` (Linux 6.1+). `Ok(None)`: the kernel or filesystem does not say.
/// `Ok(Some((0, _)))`: the filesystem says it does not support O_DIRECT on this file.
pub(crate) fn direct_io_alignment(file: &File) -> io::Result<Option<(u32, u32)>> {
    // SAFETY: statx is plain old data; all-zero bytes are a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let fd = file.as_raw_fd();
    let empty = c"";
    // SAFETY: `empty` is a NUL-terminated string and `stx` a writable statx, both live for the
    // call; AT_EMPTY_PATH makes the kernel stat `fd` itself.
    retry(|| unsafe {
        libc::statx(
            fd,
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    })?;
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return Ok(None);
    }
    Ok(Some((stx.stx_dio_offset_align, stx.stx_dio_mem_align)))
}

/// `flock(LOCK_EX | LOCK_NB)`: fails with EWOULDBLOCK when another open file holds the lock.
/// Released when the file is closed.
pub(crate) fn lock_exclusive(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: flock takes no pointers; `fd` is open for the duration of `file`'s borrow.
    retry(|| unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) }).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_is_a_power_of_two() {
        assert!(page_size().is_power_of_two());
        assert!(page_size() >= 4096);
    }

    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn blkgetsize64_matches_linux_header() {
        // <linux/fs.h>: #define BLKGETSIZE64 _IOR(0x12,114,size_t) = 0x80081272 on x86-64/arm64.
        assert_eq!(BLKGETSIZE64, 0x8008_1272);
    }
}
