//! The `file` backend: conformance, restart, the open/create/size rules, locking.

mod common;

use std::os::unix::fs::MetadataExt;

use hw::{Backend, BackendSpec, FileBackend, OpenError};

const MIB: u64 = 1 << 20;

#[test]
fn conformance() {
    let dir = common::scratch();
    let backend = FileBackend::open(&dir.path().join("vol"), Some(4 * MIB), true).expect("create");
    assert_eq!(backend.kind(), "file");
    assert_eq!(backend.len_bytes(), 4 * MIB);
    assert_eq!(backend.block_align(), 1);
    assert!(backend.may_block());
    assert!(backend.volatile_write_cache());
    common::conformance(&backend);
}

#[test]
fn data_survives_drop_and_reopen() {
    let dir = common::scratch();
    let path = dir.path().join("vol");
    let data = common::pattern(9, 300_000);
    {
        let backend = hw::open(&BackendSpec::File {
            path: path.clone(),
            size: Some(2 * MIB),
            create: true,
        })
        .expect("create");
        backend.write_at(12_345, &data).expect("write");
        backend.write_fua(MIB, &data[..4096]).expect("fua");
        backend.flush().expect("flush");
    }
    for (size, create) in [(None, false), (Some(2 * MIB), false), (Some(2 * MIB), true)] {
        let backend = FileBackend::open(&path, size, create).expect("reopen");
        assert_eq!(backend.len_bytes(), 2 * MIB);
        assert_eq!(common::read(&backend, 12_345, data.len()), data);
        assert_eq!(common::read(&backend, MIB, 4096), data[..4096]);
    }
}

#[test]
fn create_and_size_rules() {
    let dir = common::scratch();
    let path = dir.path().join("vol");

    let err = FileBackend::open(&path, Some(MIB), false).expect_err("missing, no create");
    assert!(matches!(err, OpenError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("vol"), "names the path: {err}");

    let err = FileBackend::open(&path, None, true).expect_err("create without a size");
    assert!(matches!(err, OpenError::SizeRequired { .. }), "{err}");
    assert!(!path.exists(), "a refused open creates nothing");

    let err = FileBackend::open(&path, Some(0), true).expect_err("zero size");
    assert!(matches!(err, OpenError::InvalidSize { .. }), "{err}");

    let backend = FileBackend::open(&path, Some(MIB), true).expect("create");
    let data = common::pattern(3, 4096);
    backend.write_at(MIB - 4096, &data).expect("write the tail");
    drop(backend);
    assert_eq!(std::fs::metadata(&path).expect("created").len(), MIB);

    // A different size without create is a mismatch, both ways.
    for configured in [MIB / 2, 2 * MIB] {
        let err = FileBackend::open(&path, Some(configured), false).expect_err("mismatch");
        assert!(
            matches!(err, OpenError::SizeMismatch { actual, .. } if actual == MIB),
            "{err}"
        );
    }
    // Shrinking is refused even with create.
    let err = FileBackend::open(&path, Some(MIB / 2), true).expect_err("shrink");
    assert!(matches!(err, OpenError::SizeMismatch { .. }), "{err}");
    // Growing with create keeps the data and the new tail reads zeros.
    let backend = FileBackend::open(&path, Some(2 * MIB), true).expect("grow");
    assert_eq!(backend.len_bytes(), 2 * MIB);
    assert_eq!(common::read(&backend, MIB - 4096, 4096), data);
    assert!(common::read(&backend, MIB, 4096).iter().all(|&b| b == 0));
}

#[test]
fn empty_existing_file_is_refused() {
    let dir = common::scratch();
    let path = dir.path().join("empty");
    std::fs::write(&path, b"").expect("create empty");
    let err = FileBackend::open(&path, None, false).expect_err("empty");
    assert!(matches!(err, OpenError::InvalidSize { .. }), "{err}");
}

#[test]
fn not_a_regular_file() {
    let dir = common::scratch();
    for path in [dir.path(), std::path::Path::new("/dev/null")] {
        let err = FileBackend::open(path, None, false).expect_err("not a file");
        assert!(matches!(err, OpenError::NotARegularFile { .. }), "{err}");
    }
}

#[test]
fn second_open_is_busy() {
    let dir = common::scratch();
    let path = dir.path().join("vol");
    let _first = FileBackend::open(&path, Some(MIB), true).expect("create");
    let err = FileBackend::open(&path, None, false).expect_err("already open");
    assert!(matches!(err, OpenError::Busy { .. }), "{err}");
}

#[test]
fn deallocate_frees_blocks_and_write_zeroes_keeps_them() {
    let dir = common::scratch();
    let path = dir.path().join("vol");
    let backend = FileBackend::open(&path, Some(8 * MIB), true).expect("create");
    backend.write_at(0, &vec![0x77; 8 << 20]).expect("fill");
    backend.flush().expect("flush");
    let blocks = || std::fs::metadata(&path).expect("stat").blocks(); // 512-byte units
    let full = blocks();
    backend.write_zeroes(0, 4 * MIB).expect("write zeroes");
    assert!(common::read(&backend, 0, 4 << 20).iter().all(|&b| b == 0));
    assert!(
        blocks() + 1024 > full,
        "write zeroes keeps the range allocated"
    );
    backend.deallocate(0, 8 * MIB).expect("deallocate");
    assert!(common::read(&backend, 0, 8 << 20).iter().all(|&b| b == 0));
    assert!(
        blocks() < full / 4,
        "deallocate punched holes: {} of {full}",
        blocks()
    );
    assert_eq!(backend.len_bytes(), 8 * MIB, "the size does not change");
}

#[test]
fn concurrent_threads_on_one_file() {
    let dir = common::scratch();
    let backend: std::sync::Arc<dyn Backend> = hw::open(&BackendSpec::File {
        path: dir.path().join("vol"),
        size: Some(MIB),
        create: true,
    })
    .expect("create");
    let workers: Vec<_> = (0..4u8)
        .map(|id| {
            let backend = std::sync::Arc::clone(&backend);
            std::thread::spawn(move || {
                let at = u64::from(id) * 256 * 1024;
                for round in 0..16u8 {
                    let data = common::pattern(id ^ round, 64 * 1024);
                    backend.write_at(at, &data).expect("write own range");
                    assert_eq!(common::read(&*backend, at, data.len()), data);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker must not panic");
    }
}
