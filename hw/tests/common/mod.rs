//! Helpers shared by the integration tests: scratch directories on a real disk, data patterns,
//! and a conformance run every data-storing backend must pass.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::Path;

use hw::{Backend, IoErrorKind};

/// A scratch directory on the build disk (ext4 here), not /tmp: O_DIRECT needs a filesystem
/// that supports it, and tmpfs may not.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hw-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("CARGO_TARGET_TMPDIR is writable")
}

/// Deterministic, position-dependent bytes: a misplaced or stale block shows up as a mismatch.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let i = i as u64; // usize -> u64 widens.
            (i.wrapping_mul(31)
                .wrapping_add(i >> 9)
                .wrapping_add(u64::from(seed))
                & 0xFF) as u8
        })
        .collect()
}

pub fn read(backend: &dyn Backend, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xEE; len];
    backend
        .read_at(offset, &mut buf)
        .expect("read in range succeeds");
    buf
}

fn kind(result: Result<(), hw::IoError>) -> IoErrorKind {
    result.expect_err("request must be refused").kind()
}

/// The low byte of `n`, to vary patterns by index.
pub fn low_byte(n: usize) -> u8 {
    n.to_le_bytes()[0]
}

pub fn to_u64(n: usize) -> u64 {
    n as u64 // usize -> u64 widens.
}

/// The behaviour every data-storing backend shares. Needs at least 256 KiB of capacity.
pub fn conformance(backend: &dyn Backend) {
    let a = backend.block_align();
    let a64 = to_u64(a);
    let cap = backend.len_bytes();
    assert!(cap >= 256 * 1024, "conformance needs 256 KiB");
    backend.flush().expect("flush of a fresh volume");

    // Round trip, including the very last block.
    let data = pattern(1, 4 * a);
    backend.write_at(3 * a64, &data).expect("write in range");
    assert_eq!(read(backend, 3 * a64, 4 * a), data);
    let last = pattern(2, a);
    backend
        .write_at(cap - a64, &last)
        .expect("write of the last block");
    assert_eq!(read(backend, cap - a64, a), last);
    let fua = pattern(3, 2 * a);
    backend.write_fua(16 * a64, &fua).expect("FUA write");
    assert_eq!(read(backend, 16 * a64, 2 * a), fua);

    // Out of range: past the end, straddling it, and offset + len overflowing u64.
    let mut buf = vec![0u8; a];
    assert_eq!(
        kind(backend.read_at(cap, &mut buf)),
        IoErrorKind::OutOfRange
    );
    assert_eq!(kind(backend.write_at(cap, &buf)), IoErrorKind::OutOfRange);
    let mut two = vec![0u8; 2 * a];
    assert_eq!(
        kind(backend.read_at(cap - a64, &mut two)),
        IoErrorKind::OutOfRange
    );
    assert_eq!(
        kind(backend.write_at(cap - a64, &two)),
        IoErrorKind::OutOfRange
    );
    assert_eq!(
        kind(backend.write_fua(cap - a64, &two)),
        IoErrorKind::OutOfRange
    );
    let top = u64::MAX - (u64::MAX % a64); // aligned, so only the range check can fail
    assert_eq!(
        kind(backend.read_at(top, &mut buf)),
        IoErrorKind::OutOfRange
    );
    assert_eq!(kind(backend.write_at(top, &buf)), IoErrorKind::OutOfRange);
    assert_eq!(
        kind(backend.write_zeroes(a64, top)),
        IoErrorKind::OutOfRange
    );
    assert_eq!(kind(backend.deallocate(top, a64)), IoErrorKind::OutOfRange);
    assert_eq!(
        kind(backend.write_zeroes(cap, a64)),
        IoErrorKind::OutOfRange
    );
    assert_eq!(
        kind(backend.deallocate(cap - a64, 2 * a64)),
        IoErrorKind::OutOfRange
    );
    // The refused writes changed nothing.
    assert_eq!(read(backend, cap - a64, a), last);
    // Empty requests at the end are in range; past it they are not.
    backend.write_at(cap, &[]).expect("empty write at the end");
    backend
        .write_zeroes(cap, 0)
        .expect("empty write zeroes at the end");
    backend
        .deallocate(cap, 0)
        .expect("empty deallocate at the end");
    assert_eq!(
        kind(backend.write_at(cap + a64, &[])),
        IoErrorKind::OutOfRange
    );

    // Misaligned requests, where alignment is required.
    if a > 1 {
        assert_eq!(kind(backend.read_at(1, &mut buf)), IoErrorKind::Unaligned);
        assert_eq!(
            kind(backend.write_at(0, &buf[..a - 1])),
            IoErrorKind::Unaligned
        );
        assert_eq!(
            kind(backend.write_zeroes(a64 / 2, a64)),
            IoErrorKind::Unaligned
        );
        assert_eq!(kind(backend.deallocate(0, a64 + 1)), IoErrorKind::Unaligned);
    }

    // Write Zeroes: the range reads back zeros, its neighbours are untouched.
    let base = 64 * 1024;
    let span = 16 * a;
    let before = pattern(4, span);
    backend.write_at(base, &before).expect("write in range");
    backend
        .write_zeroes(base + 2 * a64, 4 * a64)
        .expect("write zeroes");
    let after = read(backend, base, span);
    assert_eq!(after[..2 * a], before[..2 * a]);
    assert!(after[2 * a..6 * a].iter().all(|&b| b == 0), "zeroed range");
    assert_eq!(after[6 * a..], before[6 * a..]);

    // Deallocate over whole pages and partial ones: reads back zeros (DLFEAT "read zeroes").
    let base = 128 * 1024;
    let span = 96 * 1024;
    let before = pattern(5, span);
    backend.write_at(base, &before).expect("write in range");
    let (start, len) = (a.max(512), 64 * 1024 + a.max(512));
    backend
        .deallocate(base + to_u64(start), to_u64(len))
        .expect("deallocate");
    let after = read(backend, base, span);
    assert_eq!(after[..start], before[..start]);
    assert!(
        after[start..start + len].iter().all(|&b| b == 0),
        "deallocated range"
    );
    assert_eq!(after[start + len..], before[start + len..]);
    // Writes after a deallocate land normally.
    backend
        .write_at(base + to_u64(start), &before[..a])
        .expect("rewrite");
    assert_eq!(read(backend, base + to_u64(start), a), before[..a]);

    backend.flush().expect("flush");
}

/// Whether `path`'s filesystem is tmpfs (which has no O_DIRECT on older kernels).
pub fn is_tmpfs(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let mount_point = fields.nth(1)?;
            let fs_type = fields.next()?;
            Some((mount_point, fs_type))
        })
        .filter(|(mount_point, _)| path.starts_with(mount_point))
        .max_by_key(|(mount_point, _)| mount_point.len())
        .is_some_and(|(_, fs_type)| fs_type == "tmpfs")
}
