//! A write refused by RLIMIT_FSIZE (EFBIG) is a typed error, not a crash. Its own binary: the
//! limit and the ignored SIGXFSZ are process-wide.

mod common;

use hw::{Backend, FileBackend, IoError, IoErrorKind, Op};

#[test]
fn file_size_limit_is_a_typed_error() {
    let dir = common::scratch();
    let backend = FileBackend::open(&dir.path().join("vol"), Some(4 << 20), true).expect("create");
    // SAFETY: setting a signal disposition to SIG_IGN installs no handler code; without it the
    // kernel's SIGXFSZ would kill the test process instead of returning EFBIG.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let limit = libc::rlimit {
        rlim_cur: 1 << 20,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `limit` is a valid rlimit, read by the kernel for the duration of the call.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) };
    assert_eq!(ret, 0, "setrlimit(RLIMIT_FSIZE)");

    backend.write_at(0, &[1; 4096]).expect("below the limit");
    let err = backend
        .write_at(2 << 20, &[1; 4096])
        .expect_err("above the limit");
    assert_eq!(
        err,
        IoError::Io {
            op: Op::Write,
            errno: libc::EFBIG
        }
    );
    assert_eq!(err.kind(), IoErrorKind::Other);
    let err = backend
        .write_fua(3 << 20, &[1; 4096])
        .expect_err("above the limit");
    assert_eq!(err.errno(), Some(libc::EFBIG));
}
