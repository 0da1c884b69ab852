//! The `block` backend: O_DIRECT on a regular file (always), and on a loop device when the
//! test runs as root with losetup available.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use hw::{Backend, BackendSpec, BlockBackend, IoErrorKind, OpenError};

const MIB: u64 = 1 << 20;

fn make_file(path: &Path, len: u64) {
    let file = std::fs::File::create(path).expect("create backing file");
    file.set_len(len).expect("size backing file");
}

#[test]
fn conformance_on_a_regular_file() {
    let dir = common::scratch();
    assert!(
        !common::is_tmpfs(dir.path()),
        "scratch must be on a real disk for O_DIRECT"
    );
    let path = dir.path().join("vol");
    make_file(&path, 4 * MIB);
    let backend = BlockBackend::open(&path).expect("O_DIRECT open of a file on ext4");
    assert_eq!(backend.kind(), "block");
    assert!(!backend.is_block_device());
    assert_eq!(backend.len_bytes(), 4 * MIB);
    assert!(backend.block_align() >= 512 && backend.block_align().is_power_of_two());
    assert!(backend.may_block());
    assert!(backend.volatile_write_cache());
    common::conformance(&backend);
}

/// Caller buffers at odd addresses, larger than one bounce chunk, for every write flavour.
#[test]
fn unaligned_caller_buffers_are_bounced() {
    let dir = common::scratch();
    let path = dir.path().join("vol");
    make_file(&path, 8 * MIB);
    let backend = BlockBackend::open(&path).expect("open");
    let a = backend.block_align();
    let len = hw::block::BOUNCE_CHUNK_BYTES + 3 * a; // two bounce chunks
    let mut storage = vec![0u8; len + 1];
    let odd = &mut storage[1..]; // an odd address is misaligned for any O_DIRECT alignment
    assert_ne!(
        odd.as_ptr().addr() % backend.mem_align().max(2),
        0,
        "buffer is misaligned"
    );
    odd.copy_from_slice(&common::pattern(7, len));
    backend.write_at(a as u64, odd).expect("bounced write");

    let mut back_storage = vec![0u8; len + 1];
    let back = &mut back_storage[1..];
    backend.read_at(a as u64, back).expect("bounced read");
    assert_eq!(back, &common::pattern(7, len)[..]);

    odd.copy_from_slice(&common::pattern(8, len));
    backend.write_fua(3 * MIB, odd).expect("bounced FUA write");
    // An aligned read of the same range sees the same bytes.
    assert_eq!(
        common::read(&backend, 3 * MIB, len),
        common::pattern(8, len)
    );
}

#[test]
fn data_survives_reopen() {
    let dir = common::scratch();
    let path = dir.path().join("vol");
    make_file(&path, 2 * MIB);
    let data = common::pattern(11, 64 * 1024);
    {
        let backend = hw::open(&BackendSpec::Block { path: path.clone() }).expect("open");
        backend.write_at(8192, &data).expect("write");
        backend.flush().expect("flush");
    }
    let backend = BlockBackend::open(&path).expect("reopen");
    assert_eq!(common::read(&backend, 8192, data.len()), data);
}

#[test]
fn partial_last_block_is_not_served() {
    let dir = common::scratch();
    let path = dir.path().join("vol");
    make_file(&path, MIB + 100);
    let backend = BlockBackend::open(&path).expect("open");
    assert_eq!(backend.len_bytes(), MIB);
    let mut buf = vec![0u8; backend.block_align()];
    let err = backend
        .read_at(MIB, &mut buf)
        .expect_err("past the whole blocks");
    assert_eq!(err.kind(), IoErrorKind::OutOfRange);

    let tiny = dir.path().join("tiny");
    make_file(&tiny, 100);
    let err = BlockBackend::open(&tiny).expect_err("smaller than a block");
    assert!(matches!(err, OpenError::InvalidSize { .. }), "{err}");
}

#[test]
fn wrong_kinds_of_path_are_refused() {
    let dir = common::scratch();
    for (path, is_not_block) in [
        (dir.path().to_path_buf(), true),
        (PathBuf::from("/dev/null"), true),
        (dir.path().join("missing"), false),
    ] {
        let err = BlockBackend::open(&path).expect_err("not usable");
        if is_not_block {
            assert!(matches!(err, OpenError::NotABlockDevice { .. }), "{err}");
        } else {
            assert!(matches!(err, OpenError::NotFound { .. }), "{err}");
        }
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }
}

#[test]
fn second_open_is_busy() {
    let dir = common::scratch();
    let path = dir.path().join("vol");
    make_file(&path, MIB);
    let _first = BlockBackend::open(&path).expect("open");
    let err = BlockBackend::open(&path).expect_err("already open");
    assert!(matches!(err, OpenError::Busy { .. }), "{err}");
}

/// Detaches the loop device when the test ends, pass or fail.
struct LoopDevice(PathBuf);

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn loop_device() {
    let dir = common::scratch();
    let file = dir.path().join("loop-backing");
    make_file(&file, 4 * MIB);
    let attached = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&file)
        .output();
    let device = match attached {
        Ok(out) if out.status.success() => {
            LoopDevice(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        }
        Ok(out) => {
            eprintln!(
                "SKIPPED loop_device: losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIPPED loop_device: cannot run losetup: {e}");
            return;
        }
    };
    let backend = BlockBackend::open(&device.0).expect("open the loop device");
    assert!(backend.is_block_device());
    assert_eq!(backend.len_bytes(), 4 * MIB, "BLKGETSIZE64");
    assert_eq!(
        backend.block_align(),
        512,
        "BLKSSZGET of a default loop device"
    );
    common::conformance(&backend);
    // O_EXCL: a second exclusive open of the device fails while we hold it.
    let err = BlockBackend::open(&device.0).expect_err("exclusive");
    assert!(matches!(err, OpenError::Busy { .. }), "{err}");
}
