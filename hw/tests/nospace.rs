//! A full filesystem gives NoSpace, not a panic. Mounts a 1 MiB tmpfs (we run as root in CI);
//! if mounting is not permitted the test says SKIPPED and passes.

mod common;

use std::path::PathBuf;
use std::process::Command;

use hw::{Backend, FileBackend, IoErrorKind};

const MIB: u64 = 1 << 20;

/// Unmounts the tmpfs when the test ends, pass or fail.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_filesystem_is_nospace_and_deallocate_frees_it() {
    let dir = common::scratch();
    let mount_point = dir.path().join("tiny");
    std::fs::create_dir(&mount_point).expect("mount point");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1M", "tessera-hw-test"])
        .arg(&mount_point)
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("SKIPPED full-disk test: cannot mount a tmpfs here ({status:?})");
        return;
    }
    let mount = Mount(mount_point);
    let path = mount.0.join("vol");
    // A sparse 8 MiB volume on a 1 MiB filesystem: fine to create, cannot be filled.
    let backend = FileBackend::open(&path, Some(8 * MIB), true).expect("sparse create");
    let chunk = vec![0xC3; 256 * 1024];
    let mut err = None;
    for i in 0..32 {
        if let Err(e) = backend.write_at(i * 256 * 1024, &chunk) {
            err = Some((i, e));
            break;
        }
    }
    let (full_at, err) = err.expect("8 MiB of writes cannot fit in a 1 MiB tmpfs");
    assert_eq!(err.kind(), IoErrorKind::NoSpace, "{err}");
    assert_eq!(err.errno(), Some(libc::ENOSPC));
    assert!(full_at >= 1, "some data fit before the disk filled");

    // Zeroing unallocated space needs space too on tmpfs (no ZERO_RANGE: writes zeros).
    let err = backend
        .write_zeroes(6 * MIB, MIB)
        .expect_err("no room for zeros");
    assert_eq!(err.kind(), IoErrorKind::NoSpace, "{err}");
    // FUA writes report it the same way.
    let err = backend.write_fua(7 * MIB, &chunk).expect_err("still full");
    assert_eq!(err.kind(), IoErrorKind::NoSpace, "{err}");

    // Earlier data is intact, and deallocating it makes room again.
    assert_eq!(common::read(&backend, 0, chunk.len()), chunk);
    backend.deallocate(0, 8 * MIB).expect("punch everything");
    backend
        .write_at(7 * MIB, &chunk)
        .expect("room after deallocate");
    assert!(
        common::read(&backend, 0, chunk.len())
            .iter()
            .all(|&b| b == 0)
    );
    backend.flush().expect("flush");
    drop(backend);
    drop(mount);
}
