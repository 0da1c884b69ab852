//! The `block` backend: a block device, or a regular file, opened with O_DIRECT.
//!
//! O_DIRECT bypasses the page cache, so the target's memory is not doubled by a cache and
//! writes reach the device (or its own cache) when they complete. The kernel then requires
//! offsets, lengths and buffer addresses aligned to the logical block size:
//! - offsets and lengths: the caller's job, advertised by [`Backend::block_align`]; a
//!   misaligned range is refused with [`IoError::Misaligned`] (a read-modify-write of the edge
//!   blocks would not be atomic against concurrent writes to the rest of those blocks);
//! - buffer addresses: ours. A caller buffer that is not aligned is bounced through an aligned
//!   buffer in [`BOUNCE_CHUNK_BYTES`] pieces.
//!
//! **Geometry.** A block device: size from `ioctl(BLKGETSIZE64)`, logical block size from
//! `ioctl(BLKSSZGET)`. A regular file: size from fstat, alignment from `statx(STATX_DIOALIGN)`
//! where the kernel reports it, else 512 bytes; a file whose size is not a multiple of the block
//! size serves only its whole blocks. Memory alignment comes from STATX_DIOALIGN when reported
//! (often smaller, which saves bounces), else the logical block size.
//!
//! **Exclusive use.** A block device is opened with O_EXCL (EBUSY while mounted or used by
//! another exclusive opener), a regular file is `flock`ed, as for the `file` backend.
//!
//! **Zeroing.** `fallocate` works on both: on a block device `ZERO_RANGE` is a Write Zeroes
//! that keeps blocks mapped (BLKZEROOUT semantics; the kernel writes zero pages if the device
//! has no Write Zeroes), and `PUNCH_HOLE` is a Write Zeroes that may unmap, with no fallback,
//! so it fails with EOPNOTSUPP rather than being slow. Deallocate uses PUNCH_HOLE and falls
//! back to ZERO_RANGE, then to writing zeros. We deliberately do not use BLKDISCARD: a discard
//! does not guarantee that reads return zeros, and we advertise DLFEAT "read zeroes".
//!
//! **Volatile write cache: yes.** O_DIRECT skips the page cache, not the device's cache, and a
//! regular file may still need metadata (block allocation) written; flush is fdatasync (a
//! cache flush on a block device), FUA is `pwritev2(RWF_DSYNC)` (a FUA write on a device).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::aligned::AlignedBuf;
use crate::file::file_type_name;
use crate::pio::{self, ZERO_CHUNK_BYTES};
use crate::{Backend, IoError, Op, OpenError, buf_len, check_range, sys};

/// Largest piece of an unaligned caller buffer bounced per I/O: bounds the extra memory per
/// command to 1 MiB (a multiple of every logical block size we accept).
pub const BOUNCE_CHUNK_BYTES: usize = 1 << 20;

/// Logical block size when a regular file's filesystem does not report one: the smallest
/// sector size and what nearly every filesystem accepts for O_DIRECT.
const FILE_BLOCK_BYTES_DEFAULT: u64 = 512;

/// Largest logical block size accepted: 64 KiB, the largest LBA data size Linux supports.
const BLOCK_BYTES_MAX: u64 = 64 * 1024;

/// A block device or regular file with O_DIRECT; see the module doc.
#[derive(Debug)]
pub struct BlockBackend {
    file: File,
    path: PathBuf,
    len_bytes: u64,
    block_bytes: usize,
    mem_align: usize,
    is_block_device: bool,
}

impl BlockBackend {
    /// Opens `path` (a block device or a regular file) read-write with O_DIRECT.
    pub fn open(path: &Path) -> Result<BlockBackend, OpenError> {
        let meta = std::fs::metadata(path).map_err(|e| OpenError::from_io(path, "stat", e))?;
        let is_block_device = meta.file_type().is_block_device();
        if !is_block_device && !meta.is_file() {
            return Err(OpenError::NotABlockDevice {
                path: path.to_path_buf(),
                found: file_type_name(meta.file_type()),
            });
        }
        let mut flags = libc::O_DIRECT;
        if is_block_device {
            flags |= libc::O_EXCL;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) => OpenError::DirectIoUnsupported {
                    path: path.to_path_buf(),
                },
                _ => OpenError::from_io(path, "open", e),
            })?;
        let meta = file
            .metadata()
            .map_err(|e| OpenError::from_io(path, "fstat", e))?;
        if meta.file_type().is_block_device() != is_block_device {
            // The path changed between the stat and the open.
            return Err(OpenError::NotABlockDevice {
                path: path.to_path_buf(),
                found: file_type_name(meta.file_type()),
            });
        }

        let dio = sys::direct_io_alignment(&file).ok().flatten();
        let (size, block_bytes) = if is_block_device {
            let size = sys::block_device_size_bytes(&file)
                .map_err(|e| OpenError::from_io(path, "ioctl(BLKGETSIZE64)", e))?;
            let block = sys::block_device_logical_block_size(&file)
                .map_err(|e| OpenError::from_io(path, "ioctl(BLKSSZGET)", e))?;
            (size, block)
        } else {
            sys::lock_exclusive(&file).map_err(|e| OpenError::from_io(path, "flock", e))?;
            let block = match dio {
                Some((0, _)) => {
                    return Err(OpenError::DirectIoUnsupported {
                        path: path.to_path_buf(),
                    });
                }
                Some((offset_align, _)) => u64::from(offset_align).max(FILE_BLOCK_BYTES_DEFAULT),
                None => FILE_BLOCK_BYTES_DEFAULT,
            };
            (meta.len(), block)
        };
        let bad_block = || OpenError::BadBlockSize {
            path: path.to_path_buf(),
            size: block_bytes,
        };
        if !block_bytes.is_power_of_two() || !(512..=BLOCK_BYTES_MAX).contains(&block_bytes) {
            return Err(bad_block());
        }
        let block_usize = usize::try_from(block_bytes).map_err(|_| bad_block())?;
        // Memory alignment: what the kernel reports if it is smaller, never more than a block.
        let mem_align = match dio {
            Some((_, mem)) if mem > 0 && mem.is_power_of_two() => {
                usize::try_from(mem).map_or(block_usize, |mem| mem.min(block_usize))
            }
            _ => block_usize,
        };
        let len_bytes = size - size % block_bytes;
        if len_bytes == 0 {
            return Err(OpenError::InvalidSize {
                backend: "block",
                size,
                reason: "smaller than one logical block",
            });
        }
        Ok(BlockBackend {
            file,
            path: path.to_path_buf(),
            len_bytes,
            block_bytes: block_usize,
            mem_align,
            is_block_device,
        })
    }

    /// The path as given at open.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves only the first `len` bytes from now on (rounded down to the logical block size;
    /// never more than before): I/O past it is refused as out of range. A block pool keeps its
    /// label past its usable size this way (target's `cluster::pool`, docs/replication.md).
    pub fn limit_len(&mut self, len: u64) {
        let block = self.block_bytes as u64; // usize -> u64 widens.
        self.len_bytes = self.len_bytes.min(len - len % block);
    }

    /// True for a block device, false for a regular file opened with O_DIRECT.
    pub fn is_block_device(&self) -> bool {
        self.is_block_device
    }

    /// Required alignment of a buffer's address for I/O without a bounce.
    pub fn mem_align(&self) -> usize {
        self.mem_align
    }

    fn check(&self, op: Op, offset: u64, len: u64) -> Result<(), IoError> {
        check_range(op, offset, len, self.len_bytes, self.block_bytes)
    }

    fn is_aligned(&self, buf: &[u8]) -> bool {
        buf.as_ptr().addr() & (self.mem_align - 1) == 0 // mem_align is a power of two.
    }

    /// An aligned buffer for up to `len` bytes of bouncing or zeroing.
    fn scratch(&self, len: usize, op: Op) -> Result<AlignedBuf, IoError> {
        // `len` is a non-zero multiple of the block size, so the layout is valid.
        AlignedBuf::zeroed(len.min(BOUNCE_CHUNK_BYTES), self.block_bytes).ok_or(IoError::Io {
            op,
            errno: libc::EINVAL,
        })
    }

    /// Writes `buf` through aligned bounce chunks, each with `write`.
    fn write_bounced(
        &self,
        offset: u64,
        buf: &[u8],
        write: impl Fn(&File, &[u8], u64) -> Result<(), IoError>,
    ) -> Result<(), IoError> {
        let mut bounce = self.scratch(buf.len(), Op::Write)?;
        let mut at = offset;
        for chunk in buf.chunks(BOUNCE_CHUNK_BYTES) {
            let staged = &mut bounce.as_mut_slice()[..chunk.len()];
            staged.copy_from_slice(chunk);
            write(&self.file, staged, at)?;
            at += buf_len(chunk);
        }
        Ok(())
    }

    fn zero_by_writing(&self, offset: u64, len: u64, op: Op) -> Result<(), IoError> {
        // usize -> u64 widens on every target we build for (64-bit Linux).
        let chunk = len.min(ZERO_CHUNK_BYTES as u64);
        // `chunk <= ZERO_CHUNK_BYTES`, a usize: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let zeros = self.scratch(chunk as usize, op)?;
        pio::write_zeros(&self.file, zeros.as_slice(), offset, len, op)
    }
}

impl Backend for BlockBackend {
    fn kind(&self) -> &'static str {
        "block"
    }

    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn block_align(&self) -> usize {
        self.block_bytes
    }

    fn may_block(&self) -> bool {
        true
    }

    fn volatile_write_cache(&self) -> bool {
        true
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.check(Op::Read, offset, buf_len(buf))?;
        if buf.is_empty() || self.is_aligned(buf) {
            return pio::read_exact_at(&self.file, buf, offset);
        }
        let mut bounce = self.scratch(buf.len(), Op::Read)?;
        let mut at = offset;
        for chunk in buf.chunks_mut(BOUNCE_CHUNK_BYTES) {
            let staged = &mut bounce.as_mut_slice()[..chunk.len()];
            pio::read_exact_at(&self.file, staged, at)?;
            chunk.copy_from_slice(staged);
            at += buf_len(chunk);
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.check(Op::Write, offset, buf_len(buf))?;
        if buf.is_empty() || self.is_aligned(buf) {
            return pio::write_all_at(&self.file, buf, offset, Op::Write);
        }
        self.write_bounced(offset, buf, |file, chunk, at| {
            pio::write_all_at(file, chunk, at, Op::Write)
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.check(Op::WriteZeroes, offset, len)?;
        pio::zero_range(&self.file, offset, len, |at, n, op| {
            self.zero_by_writing(at, n, op)
        })
    }

    fn deallocate(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.check(Op::Deallocate, offset, len)?;
        pio::deallocate_range(&self.file, offset, len, |at, n, op| {
            self.zero_by_writing(at, n, op)
        })
    }

    fn flush(&self) -> Result<(), IoError> {
        pio::sync_data(&self.file)
    }

    fn write_fua(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.check(Op::Write, offset, buf_len(buf))?;
        if buf.is_empty() || self.is_aligned(buf) {
            return pio::write_fua_at(&self.file, buf, offset);
        }
        // Each chunk is durable when its write returns, so the whole buffer is at the end.
        self.write_bounced(offset, buf, pio::write_fua_at)
    }
}
