//! The `null` backend: reads zeros, drops writes, still checks every range.

mod common;

use hw::{Backend, BackendSpec, IoErrorKind, NullBackend, OpenError};

#[test]
fn reads_zeros_and_drops_writes() {
    let backend = NullBackend::new(1 << 30).expect("valid size");
    backend
        .write_at(4096, &[0xAA; 4096])
        .expect("write in range");
    backend.write_fua(0, &[0xAA; 512]).expect("fua in range");
    assert!(common::read(&backend, 4096, 4096).iter().all(|&b| b == 0));
    backend.write_zeroes(0, 1 << 30).expect("whole volume");
    backend.deallocate(0, 1 << 30).expect("whole volume");
    backend.flush().expect("flush");
}

#[test]
fn properties() {
    let backend = hw::open(&BackendSpec::Null { size: 1 << 20 }).expect("valid spec");
    assert_eq!(backend.kind(), "null");
    assert_eq!(backend.len_bytes(), 1 << 20);
    assert_eq!(backend.block_align(), 1);
    assert!(!backend.may_block());
    assert!(!backend.volatile_write_cache());
}

#[test]
fn ranges_are_checked() {
    let backend = NullBackend::new(8192).expect("valid size");
    let mut buf = [0u8; 4096];
    let kind = |r: Result<(), hw::IoError>| r.expect_err("must be refused").kind();
    assert_eq!(
        kind(backend.read_at(4097, &mut buf)),
        IoErrorKind::OutOfRange
    );
    assert_eq!(
        kind(backend.write_at(u64::MAX, &buf)),
        IoErrorKind::OutOfRange
    );
    assert_eq!(
        kind(backend.write_zeroes(1, u64::MAX)),
        IoErrorKind::OutOfRange
    );
    assert_eq!(kind(backend.deallocate(8192, 1)), IoErrorKind::OutOfRange);
    backend.read_at(4096, &mut buf).expect("last 4 KiB");
}

#[test]
fn zero_size_is_refused() {
    let err = hw::open(&BackendSpec::Null { size: 0 }).expect_err("zero size");
    assert!(
        matches!(
            err,
            OpenError::InvalidSize {
                backend: "null",
                ..
            }
        ),
        "{err}"
    );
}
