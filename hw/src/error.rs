//! Typed errors. The target turns an [`IoError`] into an NVMe status in one function, keyed on
//! [`IoError::kind`]; [`OpenError`] names the path and the cause for an operator.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// The backend operation an error came from.
///
/// Typed rather than a string so that [`IoError::kind`] can tell a read failure (NVMe
/// "Unrecovered Read Error") from a write failure ("Write Fault") without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`crate::Backend::read_at`].
    Read,
    /// [`crate::Backend::write_at`] and [`crate::Backend::write_fua`].
    Write,
    /// [`crate::Backend::write_zeroes`].
    WriteZeroes,
    /// [`crate::Backend::deallocate`].
    Deallocate,
    /// [`crate::Backend::flush`].
    Flush,
}

impl Op {
    /// Stable lower-case name, for logs and messages.
    pub const fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::WriteZeroes => "write_zeroes",
            Op::Deallocate => "deallocate",
            Op::Flush => "flush",
        }
    }

    /// Whether the operation reads or changes the medium.
    pub const fn direction(self) -> Direction {
        match self {
            Op::Read => Direction::Read,
            // A failed flush means written data may not have reached the medium: a write fault.
            Op::Write | Op::WriteZeroes | Op::Deallocate | Op::Flush => Direction::Write,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Direction of a failed media access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Data could not be read back.
    Read,
    /// Data (or a flush, zeroing or discard) could not be written.
    Write,
}

/// Stable classification of an [`IoError`]: what the target maps to an NVMe status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoErrorKind {
    /// The range is outside the capacity (NVMe "LBA Out of Range").
    OutOfRange,
    /// The backing store is full or over quota (NVMe "Capacity Exceeded").
    NoSpace,
    /// The medium failed (NVMe "Unrecovered Read Error" / "Write Fault").
    Media(Direction),
    /// Offset or length is not a multiple of [`crate::Backend::block_align`].
    Unaligned,
    /// Anything else (NVMe "Internal Error"); [`IoError::errno`] says more.
    Other,
}

/// An I/O error from a backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    /// `offset + len` is beyond the capacity, or overflows `u64`.
    #[error("{op}: offset {offset} + length {len} is beyond the capacity of {capacity} bytes")]
    OutOfRange {
        op: Op,
        offset: u64,
        len: u64,
        capacity: u64,
    },
    /// Offset or length is not a multiple of the backend's alignment.
    #[error("{op}: offset {offset} or length {len} is not a multiple of {align} bytes")]
    Misaligned {
        op: Op,
        offset: u64,
        len: u64,
        align: usize,
    },
    /// ENOSPC or EDQUOT: the backing filesystem is full or the quota is used up.
    #[error("{op}: no space left on the backing store ({})", io::Error::from_raw_os_error(*errno))]
    NoSpace { op: Op, errno: i32 },
    /// Any other error from the OS (EIO, EROFS, EFBIG, ...).
    #[error("{op} failed: {}", io::Error::from_raw_os_error(*errno))]
    Io { op: Op, errno: i32 },
    /// The backing store ended before the buffer was filled (it was truncated under us).
    #[error("read at {offset}: backing store ended after {got} of {expected} bytes")]
    ShortRead {
        offset: u64,
        expected: u64,
        got: u64,
    },
    /// The backing store accepted nothing more (a zero-byte write) before the buffer was written.
    #[error("{op} at {offset}: backing store took {got} of {expected} bytes")]
    ShortWrite {
        op: Op,
        offset: u64,
        expected: u64,
        got: u64,
    },
}

impl IoError {
    /// Classifies an OS error from `op`. Errors without an errno (none of our syscall wrappers
    /// produce them) are reported as EIO rather than dropped.
    pub(crate) fn from_io(op: Op, err: &io::Error) -> IoError {
        Self::from_errno(op, err.raw_os_error().unwrap_or(libc::EIO))
    }

    /// Classifies an errno from `op`.
    pub(crate) fn from_errno(op: Op, errno: i32) -> IoError {
        match errno {
            libc::ENOSPC | libc::EDQUOT => IoError::NoSpace { op, errno },
            _ => IoError::Io { op, errno },
        }
    }

    /// The stable classification the target maps to an NVMe status.
    pub fn kind(&self) -> IoErrorKind {
        match self {
            IoError::OutOfRange { .. } => IoErrorKind::OutOfRange,
            IoError::Misaligned { .. } => IoErrorKind::Unaligned,
            IoError::NoSpace { .. } => IoErrorKind::NoSpace,
            IoError::Io { op, errno } => match *errno {
                // EIO: the device said so. EBADMSG / EUCLEAN: a filesystem found checksum or
                // structure corruption (ext4, xfs, btrfs). ENODATA: btrfs and some drivers for
                // unreadable data.
                libc::EIO | libc::EBADMSG | libc::EUCLEAN | libc::ENODATA => {
                    IoErrorKind::Media(op.direction())
                }
                _ => IoErrorKind::Other,
            },
            // The backing store changed size under us: not a defect of the medium.
            IoError::ShortRead { .. } | IoError::ShortWrite { .. } => IoErrorKind::Other,
        }
    }

    /// The OS errno behind this error, if it came from the OS.
    pub fn errno(&self) -> Option<i32> {
        match self {
            IoError::NoSpace { errno, .. } | IoError::Io { errno, .. } => Some(*errno),
            IoError::OutOfRange { .. }
            | IoError::Misaligned { .. }
            | IoError::ShortRead { .. }
            | IoError::ShortWrite { .. } => None,
        }
    }

    /// The operation that failed.
    pub fn op(&self) -> Op {
        match self {
            IoError::OutOfRange { op, .. }
            | IoError::Misaligned { op, .. }
            | IoError::NoSpace { op, .. }
            | IoError::Io { op, .. }
            | IoError::ShortWrite { op, .. } => *op,
            IoError::ShortRead { .. } => Op::Read,
        }
    }
}

/// Why a backend could not be opened. Every variant about a file names its path.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The path does not exist (and `create` was not asked for).
    #[error("{}: no such file or directory", path.display())]
    NotFound { path: PathBuf },
    /// EACCES / EPERM.
    #[error("{}: permission denied", path.display())]
    PermissionDenied { path: PathBuf },
    /// A `file` backend on something that is not a regular file.
    #[error("{}: not a regular file (it is a {found})", path.display())]
    NotARegularFile { path: PathBuf, found: &'static str },
    /// A `block` backend on something that is neither a block device nor a regular file.
    #[error("{}: not a block device or regular file (it is a {found})", path.display())]
    NotABlockDevice { path: PathBuf, found: &'static str },
    /// The existing file's size differs from the configured one.
    #[error(
        "{}: file has {actual} bytes but {configured} are configured \
         (a smaller file is grown only with create: true; shrinking is always refused)",
        path.display()
    )]
    SizeMismatch {
        path: PathBuf,
        configured: u64,
        actual: u64,
    },
    /// A file must be created but no size was given.
    #[error("{}: does not exist, and creating it needs a size", path.display())]
    SizeRequired { path: PathBuf },
    /// A size that cannot back a volume (zero, too large for memory, ...).
    #[error("{backend} backend: invalid size {size}: {reason}")]
    InvalidSize {
        backend: &'static str,
        size: u64,
        reason: &'static str,
    },
    /// Another process (or backend) holds the file or device exclusively.
    #[error("{}: in use by another process (lock or exclusive open failed)", path.display())]
    Busy { path: PathBuf },
    /// The filesystem refuses O_DIRECT (tmpfs on older kernels, some FUSE filesystems).
    #[error("{}: O_DIRECT is not supported here", path.display())]
    DirectIoUnsupported { path: PathBuf },
    /// The device reports a geometry we cannot use.
    #[error("{}: unusable logical block size {size}", path.display())]
    BadBlockSize { path: PathBuf, size: u64 },
    /// The RAM mapping could not be made.
    #[error("ram backend: cannot map {size} bytes: {source}")]
    Map { size: u64, source: io::Error },
    /// Any other OS error while opening, naming the step that failed.
    #[error("{}: {step}: {source}", path.display())]
    Io {
        path: PathBuf,
        step: &'static str,
        source: io::Error,
    },
}

impl OpenError {
    /// Classifies an OS error met while opening `path` during `step`.
    pub(crate) fn from_io(path: &std::path::Path, step: &'static str, err: io::Error) -> Self {
        let path = path.to_path_buf();
        match err.raw_os_error() {
            Some(libc::ENOENT) => OpenError::NotFound { path },
            Some(libc::EACCES | libc::EPERM) => OpenError::PermissionDenied { path },
            Some(libc::EBUSY | libc::EWOULDBLOCK) => OpenError::Busy { path },
            _ => OpenError::Io {
                path,
                step,
                source: err,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_classification() {
        let cases = [
            (Op::Write, libc::ENOSPC, IoErrorKind::NoSpace),
            (Op::WriteZeroes, libc::EDQUOT, IoErrorKind::NoSpace),
            (Op::Read, libc::EIO, IoErrorKind::Media(Direction::Read)),
            (Op::Write, libc::EIO, IoErrorKind::Media(Direction::Write)),
            (Op::Flush, libc::EIO, IoErrorKind::Media(Direction::Write)),
            (Op::Read, libc::EBADMSG, IoErrorKind::Media(Direction::Read)),
            (Op::Write, libc::EFBIG, IoErrorKind::Other),
            (Op::Write, libc::EROFS, IoErrorKind::Other),
        ];
        for (op, errno, kind) in cases {
            let err = IoError::from_errno(op, errno);
            assert_eq!(err.kind(), kind, "{op} errno {errno}");
            assert_eq!(err.errno(), Some(errno));
            assert_eq!(err.op(), op);
        }
    }

    #[test]
    fn io_error_keeps_errno() {
        let err = IoError::from_io(Op::Read, &io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(
            err,
            IoError::Io {
                op: Op::Read,
                errno: libc::EIO
            }
        );
        // Not from the OS: reported as EIO, never lost.
        let err = IoError::from_io(Op::Flush, &io::Error::other("synthetic"));
        assert_eq!(err.errno(), Some(libc::EIO));
    }

    #[test]
    fn messages_carry_the_numbers() {
        let err = IoError::OutOfRange {
            op: Op::Write,
            offset: 7,
            len: 9,
            capacity: 8,
        };
        let text = err.to_string();
        assert!(
            text.contains("write") && text.contains('7') && text.contains('9'),
            "{text}"
        );
        let text = IoError::from_errno(Op::Write, libc::ENOSPC).to_string();
        assert!(text.contains("no space"), "{text}");
        assert_eq!(err.errno(), None);
    }

    #[test]
    fn open_errors_are_classified() {
        let p = std::path::Path::new("/x");
        let e = OpenError::from_io(p, "open", io::Error::from_raw_os_error(libc::ENOENT));
        assert!(matches!(e, OpenError::NotFound { .. }), "{e}");
        let e = OpenError::from_io(p, "open", io::Error::from_raw_os_error(libc::EACCES));
        assert!(matches!(e, OpenError::PermissionDenied { .. }), "{e}");
        let e = OpenError::from_io(p, "open", io::Error::from_raw_os_error(libc::EIO));
        assert!(e.to_string().starts_with("/x: open:"), "{e}");
    }
}
