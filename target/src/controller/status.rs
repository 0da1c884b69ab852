//! Backend errors become NVMe status here, and only here.

use codec::nvme::Status;
use hw::{Direction, IoError, IoErrorKind};

/// The NVMe status a failed backend operation completes with.
///
/// - out of range: LBA Out of Range (the namespace checked already; a backend smaller than its
///   namespace would be our bug, reported the same way);
/// - no space (ENOSPC/EDQUOT): Capacity Exceeded, DNR — as Linux nvmet's file backend does;
/// - media read / write errors: Unrecovered Read Error / Write Fault, retryable;
/// - no path right now (a routed volume whose owner is unreachable or whose map is settling,
///   errno EAGAIN from `cluster::routed`): Internal Path Error, retryable — a Linux host requeues
///   it (multipath) instead of failing the I/O, and never sees a vendor status;
/// - anything else: Internal Error, retryable.
pub fn from_io_error(e: &IoError) -> Status {
    if e.errno() == Some(crate::cluster::routed::ENOPATH) {
        return Status::INTERNAL_PATH_ERROR;
    }
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
        }
    }
}
