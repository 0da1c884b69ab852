//! Volume errors become NVMe status here, and only here.

use codec::nvme::Status;
use hw::{Direction, IoError, IoErrorKind};

use crate::subsystem::volume::VolumeError;

/// The NVMe status a failed volume operation completes with.
///
/// - the backend failed: [`from_io_error`];
/// - no path right now (a routed volume whose owner is unreachable or whose map is settling):
///   Internal Path Error, retryable — a Linux host requeues it (multipath) instead of failing
///   the I/O, and never sees a vendor status;
/// - data lost (a read of an extent the cluster map marks `lost`): Unrecovered Read Error with
///   DNR — the data is gone, a retry cannot help (a Linux host fails the read with EIO).
pub fn from_volume_error(e: &VolumeError) -> Status {
    match e {
        VolumeError::Backend(e) => from_io_error(e),
        VolumeError::Lost => Status::UNRECOVERED_READ.with_dnr(),
        VolumeError::NoPath(why) => {
            crate::metrics::count_no_path(*why);
            Status::INTERNAL_PATH_ERROR
        }
    }
}

/// The NVMe status a failed backend operation completes with.
///
/// - out of range: LBA Out of Range (the namespace checked already; a backend smaller than its
///   namespace would be our bug, reported the same way);
/// - no space (ENOSPC/EDQUOT): Capacity Exceeded, DNR — as Linux nvmet's file backend does;
/// - media read / write errors: Unrecovered Read Error / Write Fault, retryable;
/// - anything else (an unexpected errno, EAGAIN included): Internal Error, retryable. A
///   backend error is never a path error: only [`VolumeError::NoPath`] is.
pub fn from_io_error(e: &IoError) -> Status {
    match e.kind() {
        IoErrorKind::OutOfRange => Status::LBA_RANGE.with_dnr(),
        IoErrorKind::NoSpace => Status::CAP_EXCEEDED.with_dnr(),
        IoErrorKind::Media(Direction::Read) => Status::UNRECOVERED_READ,
        IoErrorKind::Media(Direction::Write) => Status::WRITE_FAULT,
        IoErrorKind::Unaligned => Status::INVALID_FIELD.with_dnr(),
        IoErrorKind::Other => Status::INTERNAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hw::Op;

    #[test]
    fn every_backend_error_kind_has_a_specific_status() {
        let cases = [
            (
                IoError::OutOfRange {
                    op: Op::Read,
                    offset: 1,
                    len: 1,
                    capacity: 1,
                },
                Status::LBA_RANGE,
            ),
            (
                IoError::NoSpace {
                    op: Op::Write,
                    errno: 28,
                },
                Status::CAP_EXCEEDED,
            ),
            (
                IoError::Io {
                    op: Op::Read,
                    errno: 5,
                },
                Status::UNRECOVERED_READ,
            ),
            (
                IoError::Io {
                    op: Op::Write,
                    errno: 5,
                },
                Status::WRITE_FAULT,
            ),
        ];
        for (e, want) in cases {
            let got = from_io_error(&e);
            assert!(got.same_code(want), "{e}: got {got}, want {want}");
            let got = from_volume_error(&VolumeError::Backend(e.clone()));
            assert!(
                got.same_code(want),
                "{e} as a volume error: got {got}, want {want}"
            );
        }
    }

    #[test]
    fn lost_data_is_an_unrecovered_read_error_that_is_not_retried() {
        let got = from_volume_error(&VolumeError::Lost);
        assert!(got.same_code(Status::UNRECOVERED_READ), "got {got}");
        assert_eq!((got.sct(), got.sc()), (0x2, 0x81), "got {got}");
        assert!(got.dnr(), "{got}: a retry cannot bring lost data back");
        assert!(!got.is_path_error(), "{got}");
    }

    #[test]
    fn a_backend_eagain_is_not_a_path_error() {
        // A backend's own EAGAIN (e.g. a device out of resources) is an unexpected errno: an
        // Internal Error, never the path status that makes a host fail over.
        for op in [Op::Read, Op::Write, Op::Flush] {
            let e = VolumeError::Backend(IoError::Io {
                op,
                errno: libc::EAGAIN,
            });
            let got = from_volume_error(&e);
            assert!(!got.is_path_error(), "{e}: got path status {got}");
            assert!(got.same_code(Status::INTERNAL), "{e}: got {got}");
        }
    }

    #[test]
    fn every_routing_failure_is_the_retryable_path_error() {
        use crate::subsystem::volume::NoPath;
        for why in [NoPath::Unmapped, NoPath::Unreachable, NoPath::MapSettling] {
            let got = from_volume_error(&VolumeError::NoPath(why));
            assert!(
                got.same_code(Status::INTERNAL_PATH_ERROR),
                "{why:?}: got {got}"
            );
            assert!(
                got.is_path_error() && !got.dnr(),
                "{why:?}: {got} must be a retryable path error"
            );
        }
    }
}
