//! Thin wrappers over the Linux calls std does not expose. Each returns `io::Result` with the
//! errno intact; all `unsafe` for syscalls is here. CPU affinity ([`pin_to_cpu`],
//! [`allowed_cpus`]) is public: the target's reactors and the bench pin their threads with it.

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

/// Number of CPUs a `cpu_set_t` can name (glibc's CPU_SETSIZE, 1024).
const CPU_SET_CPUS: usize = 1024;
const _: () = assert!(CPU_SET_CPUS == libc::CPU_SETSIZE as usize);

/// The CPUs the calling thread may run on (`sched_getaffinity(2)`), ascending.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain old data; all-zero bytes are the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable cpu_set_t of the size passed, live for the call; pid 0 is
    // the calling thread.
    retry(|| unsafe {
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set)
    })?;
    Ok((0..CPU_SET_CPUS)
        // SAFETY: CPU_ISSET reads one bit of `set`, inside it for every cpu < CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// `0-3,6,8-9`: a CPU list as Linux prints one (e.g. in `/sys/devices/system/cpu/online`).
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if end == start {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

/// Checks that `cpu` exists and that this process may run on it, with an error that says which
/// CPUs it may use (`InvalidInput`) when not.
pub fn check_cpu(cpu: usize) -> io::Result<()> {
    let allowed = allowed_cpus()?;
    if allowed.binary_search(&cpu).is_ok() {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "CPU {cpu} is not one this process may run on (it may use CPUs {})",
            cpu_list(&allowed)
        ),
    ))
}

/// Pins the calling thread (and the threads it starts afterwards) to `cpu`. A CPU that does not
/// exist or that this process may not use is an `InvalidInput` error naming the CPUs it may use;
/// nothing is changed then.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    check_cpu(cpu)?;
    // SAFETY: cpu_set_t is plain old data; all-zero bytes are the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of `set`: `cpu` is in the allowed set, which holds CPUs
    // below CPU_SETSIZE only, so the bit is inside it.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a readable cpu_set_t of the size passed, live for the call; pid 0 is the
    // calling thread.
    retry(|| unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_read_like_linux() {
        assert_eq!(cpu_list(&[]), "");
        assert_eq!(cpu_list(&[0]), "0");
        assert_eq!(cpu_list(&[0, 1]), "0-1");
        assert_eq!(cpu_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
    }

    #[test]
    fn absent_and_out_of_range_cpus_are_errors_that_name_the_allowed_ones() {
        let allowed = allowed_cpus().expect("sched_getaffinity");
        assert!(!allowed.is_empty(), "this thread runs somewhere");
        let absent = (0..CPU_SET_CPUS).find(|c| !allowed.contains(c));
        for cpu in absent.into_iter().chain([CPU_SET_CPUS, usize::MAX]) {
            let e = pin_to_cpu(cpu).expect_err("not an allowed CPU");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "CPU {cpu}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(&format!("CPU {cpu} ")), "{msg}");
            assert!(msg.contains(&cpu_list(&allowed)), "{msg}");
        }
        // Nothing changed for this thread.
        assert_eq!(allowed_cpus().expect("sched_getaffinity"), allowed);
    }

    #[test]
    fn pinning_to_an_allowed_cpu_works() {
        let allowed = allowed_cpus().expect("sched_getaffinity");
        let cpu = *allowed.last().expect("some CPU");
        // On a thread of its own: pinning is per thread, leave the test harness's alone.
        let got = std::thread::spawn(move || {
            pin_to_cpu(cpu).expect("pin");
            allowed_cpus().expect("sched_getaffinity")
        })
        .join()
        .expect("thread");
        assert_eq!(got, vec![cpu]);
    }

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
