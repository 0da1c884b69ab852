//! The `ram` backend: conformance, properties, and lock-free concurrent I/O from many threads.

mod common;

use std::sync::Arc;
use std::thread;

use hw::{Backend, BackendSpec, OpenError, RamBackend};

#[test]
fn conformance_sparse() {
    let backend = RamBackend::new(4 << 20, false).expect("4 MiB");
    common::conformance(&backend);
}

#[test]
fn conformance_preallocated() {
    let backend = RamBackend::new(4 << 20, true).expect("4 MiB");
    assert!(backend.is_preallocated());
    common::conformance(&backend);
}

#[test]
fn odd_capacity_conformance() {
    // Not a multiple of the page size: the last partial page must behave like the rest.
    let backend = RamBackend::new((1 << 20) + 12_345, false).expect("odd size");
    common::conformance(&backend);
}

#[test]
fn starts_zeroed_and_has_the_right_properties() {
    let backend = hw::open(&BackendSpec::Ram {
        size: 1 << 20,
        preallocate: false,
    })
    .expect("valid spec");
    assert_eq!(backend.kind(), "ram");
    assert_eq!(backend.len_bytes(), 1 << 20);
    assert_eq!(backend.block_align(), 1);
    assert!(!backend.may_block());
    assert!(!backend.volatile_write_cache());
    assert!(common::read(&*backend, 0, 1 << 20).iter().all(|&b| b == 0));
}

#[test]
fn impossible_sizes_are_refused_not_panicked() {
    for size in [0, u64::MAX, 1 << 62] {
        let err = RamBackend::new(size, false).expect_err("cannot back this");
        assert!(
            matches!(err, OpenError::InvalidSize { .. } | OpenError::Map { .. }),
            "{size}: {err}"
        );
    }
}

/// Threads own interleaved 512-byte blocks (block % THREADS == id), so they write the same
/// pages at the same time without ever overlapping; each verifies its own data, several rounds.
#[test]
fn concurrent_disjoint_writers_and_readers() {
    const THREADS: usize = 8;
    const BLOCK: usize = 512;
    const BLOCKS: usize = 2048; // 1 MiB
    const ROUNDS: u8 = 8;
    let backend: Arc<dyn Backend> = Arc::new(RamBackend::new(1 << 20, false).expect("1 MiB"));
    let workers: Vec<_> = (0..THREADS)
        .map(|id| {
            let backend = Arc::clone(&backend);
            thread::spawn(move || {
                let mine = (0..BLOCKS).filter(|b| b % THREADS == id);
                for round in 0..ROUNDS {
                    let seed = round.wrapping_mul(16).wrapping_add(common::low_byte(id));
                    for block in mine.clone() {
                        let data = common::pattern(seed ^ common::low_byte(block), BLOCK);
                        let at = common::to_u64(block * BLOCK);
                        if round % 2 == 0 {
                            backend.write_at(at, &data).expect("write own block");
                        } else {
                            backend.write_fua(at, &data).expect("fua own block");
                        }
                    }
                    for block in mine.clone() {
                        let data = common::pattern(seed ^ common::low_byte(block), BLOCK);
                        let at = common::to_u64(block * BLOCK);
                        assert_eq!(common::read(&*backend, at, BLOCK), data, "block {block}");
                    }
                    // Zero every other own block and check it, while others keep writing.
                    for block in mine.clone().step_by(2) {
                        let at = common::to_u64(block * BLOCK);
                        backend.deallocate(at, 512).expect("deallocate own block");
                        assert!(common::read(&*backend, at, BLOCK).iter().all(|&b| b == 0));
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker thread must not panic");
    }
}
