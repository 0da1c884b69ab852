//! The `file` backend: a volume in a regular file, through the page cache.
//!
//! **Positioned I/O, not memmap2.** Reads and writes are `pread`/`pwrite`
//! (`std::os::unix::fs::FileExt`), FUA writes are `pwritev2(RWF_DSYNC)`, flush is `fdatasync`.
//! A mapping would save a copy, but its failure modes are wrong for a storage server: a store
//! into a mapped page of a sparse file on a full filesystem (or a media error) is a SIGBUS
//! that kills the whole target instead of failing one command with "Capacity Exceeded", and
//! `msync` reports write-back errors coarsely, per mapping rather than per write. With pwrite,
//! ENOSPC/EDQUOT come back on the write that hit them and become [`IoError::NoSpace`].
//!
//! **Opening.** `open(path, size, create)`:
//! - the path must be a regular file (or not exist yet, with `create`);
//! - `size: None`: use the existing file's size (an empty file is refused);
//! - `size: Some(n)`: an existing file of exactly `n` bytes is used as is. With `create: true`
//!   a missing file is created and a smaller one grown to `n` (sparse, via `set_len`), so a
//!   configuration reads as "make sure this volume exists with this size"; a larger file is
//!   never shrunk (that would drop data), and without `create` any mismatch is refused;
//! - the file is locked (`flock(LOCK_EX | LOCK_NB)`) so two targets cannot serve one file.
//!
//! **Zeroing.** Write Zeroes is `fallocate(ZERO_RANGE | KEEP_SIZE)` (the range stays
//! allocated), Deallocate is `fallocate(PUNCH_HOLE | KEEP_SIZE)` (the range reads back as zeros
//! and its blocks are freed; if punching is unsupported, ZERO_RANGE). Where the filesystem lacks
//! them (EOPNOTSUPP: tmpfs has no ZERO_RANGE), zeros are written in 1 MiB chunks
//! (`pio::ZERO_CHUNK_BYTES`).
//!
//! **Volatile write cache: yes.** An acknowledged write may sit in the page cache until a flush
//! (fdatasync), so the target must advertise a volatile write cache and honour Flush/FUA.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::pio::{self, ZERO_CHUNK_BYTES};
use crate::{Backend, IoError, Op, OpenError, buf_len, check_range, sys};

/// A volume in a regular file; see the module doc.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    path: PathBuf,
    len_bytes: u64,
}

/// A human name for what is at a path, for error messages.
pub(crate) fn file_type_name(file_type: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_file() {
        "regular file"
    } else if file_type.is_dir() {
        "directory"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_symlink() {
        "symbolic link"
    } else {
        "file of unknown type"
    }
}

impl FileBackend {
    /// Opens (or with `create`, creates or grows) the file at `path`; see the module doc.
    pub fn open(path: &Path, size: Option<u64>, create: bool) -> Result<FileBackend, OpenError> {
        if size == Some(0) {
            return Err(OpenError::InvalidSize {
                backend: "file",
                size: 0,
                reason: "a volume needs at least one byte",
            });
        }
        // Refuse a directory, device or fifo before opening it (opening a fifo could block).
        match std::fs::metadata(path) {
            Ok(meta) if !meta.is_file() => {
                return Err(OpenError::NotARegularFile {
                    path: path.to_path_buf(),
                    found: file_type_name(meta.file_type()),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => match (create, size) {
                (true, None) => {
                    return Err(OpenError::SizeRequired {
                        path: path.to_path_buf(),
                    });
                }
                (false, _) => {
                    return Err(OpenError::NotFound {
                        path: path.to_path_buf(),
                    });
                }
                (true, Some(_)) => {}
            },
            Err(e) => return Err(OpenError::from_io(path, "stat", e)),
        }

        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create && size.is_some())
            .open(path)
            .map_err(|e| OpenError::from_io(path, "open", e))?;
        let meta = file
            .metadata()
            .map_err(|e| OpenError::from_io(path, "fstat", e))?;
        if !meta.is_file() {
            // The path changed between the stat and the open.
            return Err(OpenError::NotARegularFile {
                path: path.to_path_buf(),
                found: file_type_name(meta.file_type()),
            });
        }
        sys::lock_exclusive(&file).map_err(|e| OpenError::from_io(path, "flock", e))?;

        let actual = meta.len();
        let len_bytes = match size {
            None if actual == 0 => {
                return Err(OpenError::InvalidSize {
                    backend: "file",
                    size: 0,
                    reason: "the existing file is empty; configure a size with create: true",
                });
            }
            None => actual,
            Some(configured) if configured == actual => actual,
            Some(configured) if configured > actual && create => {
                // Sparse: no blocks are allocated, so this does not need free space.
                file.set_len(configured)
                    .map_err(|e| OpenError::from_io(path, "set_len", e))?;
                configured
            }
            Some(configured) => {
                return Err(OpenError::SizeMismatch {
                    path: path.to_path_buf(),
                    configured,
                    actual,
                });
            }
        };
        Ok(FileBackend {
            file,
            path: path.to_path_buf(),
            len_bytes,
        })
    }

    /// The file's path as given at open.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check(&self, op: Op, offset: u64, len: u64) -> Result<(), IoError> {
        check_range(op, offset, len, self.len_bytes, 1)
    }

    fn write_zero_chunks(&self, offset: u64, len: u64, op: Op) -> Result<(), IoError> {
        // usize -> u64 widens on every target we build for (64-bit Linux).
        let chunk = len.min(ZERO_CHUNK_BYTES as u64);
        // `chunk <= ZERO_CHUNK_BYTES`, a usize: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let zeros = vec![0u8; chunk as usize];
        pio::write_zeros(&self.file, &zeros, offset, len, op)
    }
}

impl Backend for FileBackend {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn block_align(&self) -> usize {
        1
    }

    fn may_block(&self) -> bool {
        true
    }

    fn volatile_write_cache(&self) -> bool {
        true
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.check(Op::Read, offset, buf_len(buf))?;
        pio::read_exact_at(&self.file, buf, offset)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.check(Op::Write, offset, buf_len(buf))?;
        pio::write_all_at(&self.file, buf, offset, Op::Write)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.check(Op::WriteZeroes, offset, len)?;
        pio::zero_range(&self.file, offset, len, |at, n, op| {
            self.write_zero_chunks(at, n, op)
        })
    }

    fn deallocate(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.check(Op::Deallocate, offset, len)?;
        pio::deallocate_range(&self.file, offset, len, |at, n, op| {
            self.write_zero_chunks(at, n, op)
        })
    }

    fn flush(&self) -> Result<(), IoError> {
        pio::sync_data(&self.file)
    }

    fn write_fua(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.check(Op::Write, offset, buf_len(buf))?;
        pio::write_fua_at(&self.file, buf, offset)
    }
}
