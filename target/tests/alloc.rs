//! The I/O path allocates nothing per command in steady state (issue: "no lock and no
//! allocation per command on the I/O path"): a counting global allocator counts allocations made
//! on the target's reactor threads while an in-process initiator (on other threads, not
//! counted) runs reads and writes against a RAM namespace.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tessera::config::build_registry;
use tessera::initiator::{Controller, ControllerOptions};
use tessera::server::{Target, TargetOptions};

struct Counting;

static REACTOR_ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static IS_REACTOR: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: delegates every call to the system allocator unchanged; the counter is a side effect.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if IS_REACTOR.with(Cell::get) {
            REACTOR_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if IS_REACTOR.with(Cell::get) {
            REACTOR_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if IS_REACTOR.with(Cell::get) {
            REACTOR_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn mark_reactor() {
    IS_REACTOR.with(|c| c.set(true));
}

const LAYOUT: &str = "
listeners: [{ address: 127.0.0.1, port: 4420 }]
subsystems:
  - nqn: nqn.2026-11.dev.tessera:alloc
    allow_any_host: true
    namespaces:
      - nsid: 1
        block_size: 512
        backend: { kind: ram, size: 64MiB }
";

/// Steady-state allocations per command must stay far below one (amortised buffer growth
/// only). Measured over `OPS` commands after a warm-up of the same workload.
const OPS: u64 = 4000;
const ALLOCS_PER_OP_MAX: f64 = 0.01;

async fn run_workload(ctrl: &Controller, q: &tessera::initiator::Queue, ops: u64, bs: usize) {
    let nlb = (bs / 512) as u32;
    let data = Bytes::from(vec![0x5Au8; bs]);
    let _ = ctrl;
    let mut pending = Vec::with_capacity(16);
    for i in 0..ops {
        let slba = (i * u64::from(nlb)) % (64 * 2048 - u64::from(nlb));
        if i % 2 == 0 {
            pending.push(tokio::spawn({
                let q = q.clone();
                let data = data.clone();
                async move { q.write(1, slba, 512, data, false).await.map(|_| ()) }
            }));
        } else {
            pending.push(tokio::spawn({
                let q = q.clone();
                async move { q.read(1, slba, nlb, 512).await.map(|_| ()) }
            }));
        }
        if pending.len() == 16 {
            for p in pending.drain(..) {
                p.await.unwrap().unwrap();
            }
        }
    }
    for p in pending.drain(..) {
        p.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_do_not_allocate_per_command() {
    let layout = yaml::parse_str("alloc.yaml", LAYOUT).unwrap();
    let registry = build_registry(&layout).unwrap();
    let opts = TargetOptions {
        reactors: 1,
        on_reactor_start: Some(mark_reactor),
        ..TargetOptions::default()
    };
    let target = Target::start_with(registry, &["127.0.0.1:0".parse().unwrap()], opts)
        .await
        .unwrap();
    let addr = target.addrs[0];
    let ctrl = Controller::connect(
        addr,
        "nqn.2026-11.dev.tessera:alloc",
        "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000a110",
        &ControllerOptions::default(),
    )
    .await
    .unwrap();
    ctrl.enable().await.unwrap();
    ctrl.set_num_queues(1).await.unwrap();
    let q = ctrl.connect_io_queue(1, 127).await.unwrap();

    // 4 KiB goes in-capsule (8 KiB limit); 64 KiB and 128 KiB go through R2T/H2CData.
    for bs in [4096usize, 65536, 131072] {
        run_workload(&ctrl, &q, OPS, bs).await; // warm-up: pools, buffers, tables
        let before = REACTOR_ALLOCS.load(Ordering::Relaxed);
        run_workload(&ctrl, &q, OPS, bs).await;
        let allocs = REACTOR_ALLOCS.load(Ordering::Relaxed) - before;
        let per_op = allocs as f64 / OPS as f64;
        eprintln!(
            "bs {bs}: {allocs} reactor allocations over {OPS} commands ({per_op:.4}/command)"
        );
        assert!(
            per_op <= ALLOCS_PER_OP_MAX,
            "bs {bs}: {allocs} allocations on the reactor for {OPS} commands ({per_op:.4}/command)"
        );
    }
    drop(q);
    ctrl.disconnect().await.unwrap();
    target.shutdown().await;
}
