//! The polled initiator queue `tessera bench` drives (`DirectQueue`), against the target: every
//! data path it takes (in-capsule writes, writes through several R2Ts and H2CData PDUs, reads
//! sent by the target from the RAM backend's memory or through a buffer when data digests are
//! on), with many commands in flight, each read checked block by block; an NVMe error status
//! comes back as that command's completion and the queue goes on. And a target that busy-polls
//! after I/O (`--poll-us`) serves the same and goes back to sleep when the I/O stops.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::cast_possible_truncation)]

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use codec::nvme::Status;
use codec::nvme::cmd::{IoCommand, Rw};
use codec::nvme::sgl::SglDescriptor;
use tessera::initiator::{DirectCompletion, DirectQueue};
use tessera::server::{Target, TargetOptions};
use tessera_tests::*;

/// One command for [`run_batch`]: write `data` or read `nlb` blocks, at `slba` of `nsid`.
struct Cmd {
    nsid: u32,
    slba: u64,
    nlb: u32,
    bs: u32,
    write: Option<Bytes>,
}

/// Submits every command of `cmds` at once (tags = indexes), then flushes and polls until all
/// completed (bounded by [`STEP`]). Runs on a blocking thread: the queue is driven by polling.
async fn run_batch(mut q: DirectQueue, cmds: Vec<Cmd>) -> (DirectQueue, Vec<DirectCompletion>) {
    tokio::task::spawn_blocking(move || {
        for (i, c) in cmds.iter().enumerate() {
            let rw = Rw::new(c.nsid, c.slba, c.nlb, 0);
            let (cmd, data_in) = match &c.write {
                Some(_) => (IoCommand::Write(rw), 0),
                None => (IoCommand::Read(rw), c.nlb * c.bs),
            };
            let sqe = cmd.to_sqe(0, SglDescriptor::transport(0));
            q.submit(sqe, c.write.clone(), data_in, i as u64).unwrap();
        }
        let deadline = Instant::now() + STEP;
        let mut done = Vec::new();
        while done.len() < cmds.len() {
            assert!(
                Instant::now() < deadline,
                "{} of {} commands completed in {STEP:?}",
                done.len(),
                cmds.len()
            );
            q.flush().unwrap();
            if q.poll(&mut done).unwrap() == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        assert_eq!(q.in_flight(), 0);
        done.sort_by_key(|c| c.tag);
        (q, done)
    })
    .await
    .unwrap()
}

/// An enabled controller with one I/O queue granted, and that queue as a [`DirectQueue`] (the
/// controller must stay alive while the queue is used).
async fn direct_queue(
    t: &TestTarget,
    hdgst: bool,
    ddgst: bool,
    incapsule: u32,
) -> (tessera::initiator::Controller, DirectQueue) {
    let mut o = ctrl_opts();
    o.transport.hdgst = hdgst;
    o.transport.ddgst = ddgst;
    o.io_incapsule_data_max = incapsule;
    let c = connect_as(t.addr, SUBNQN, HOSTNQN, &o).await.unwrap();
    assert!(c.set_num_queues(1).await.unwrap() >= 1);
    let qo = c.io_queue_options(1, 127);
    let addr = t.addr;
    let q = tokio::task::spawn_blocking(move || DirectQueue::connect(addr, &qo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        q.depth(),
        128,
        "SQSIZE 127 with SQ flow control off holds 128"
    );
    (c, q)
}

/// Writes `n` commands of sizes from 512 bytes to 128 KiB at distinct LBAs, all in flight at
/// once, then reads them all back at once and compares every block.
async fn write_read_matrix(t: &TestTarget, hdgst: bool, ddgst: bool, incapsule: u32) {
    let (_c, q) = direct_queue(t, hdgst, ddgst, incapsule).await;
    let bs = 512u32;
    let sizes = [1u32, 8, 16, 64, 256, 3, 17];
    let seed = u64::from(hdgst) << 1 | u64::from(ddgst) | u64::from(incapsule) << 8;
    let mut writes = Vec::new();
    let mut slba = 0u64;
    for i in 0..48 {
        let nlb = sizes[i % sizes.len()];
        writes.push(Cmd {
            nsid: NS_RAM512,
            slba,
            nlb,
            bs,
            write: Some(blocks(seed, slba, nlb, bs)),
        });
        slba += u64::from(nlb);
    }
    let reads: Vec<Cmd> = writes
        .iter()
        .map(|w| Cmd {
            nsid: w.nsid,
            slba: w.slba,
            nlb: w.nlb,
            bs,
            write: None,
        })
        .collect();
    let want: Vec<Bytes> = writes.iter().map(|w| w.write.clone().unwrap()).collect();
    let (q, done) = run_batch(q, writes).await;
    for c in &done {
        assert_eq!(c.cqe.status(), Status::SUCCESS, "write {}", c.tag);
        assert!(c.data.is_empty());
    }
    let (_q, done) = run_batch(q, reads).await;
    for (c, w) in done.iter().zip(&want) {
        assert_eq!(c.cqe.status(), Status::SUCCESS, "read {}", c.tag);
        assert_blocks(
            &c.data,
            w,
            0,
            bs,
            &format!("read {} (hdgst {hdgst}, ddgst {ddgst})", c.tag),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_queue_moves_data_every_way() {
    let t = TestTarget::start(STD_YAML).await;
    for (hdgst, ddgst) in [(false, false), (true, false), (true, true), (false, true)] {
        write_read_matrix(&t, hdgst, ddgst, 8192).await;
    }
    t.stop().await;
    let t = TestTarget::start_with(STD_YAML, small_limits(), 1).await;
    for (hdgst, ddgst) in [(false, false), (true, true)] {
        write_read_matrix(&t, hdgst, ddgst, 4096).await;
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_queue_reports_statuses_and_goes_on() {
    let t = TestTarget::start(STD_YAML).await;
    let (_c, q) = direct_queue(&t, false, false, 8192).await;
    let end = STD_NS_BYTES / 512;
    let cmds = vec![
        Cmd {
            nsid: NS_RAM512,
            slba: end - 1,
            nlb: 2,
            bs: 512,
            write: None,
        },
        Cmd {
            nsid: 99,
            slba: 0,
            nlb: 1,
            bs: 512,
            write: None,
        },
        Cmd {
            nsid: NS_NULL,
            slba: 0,
            nlb: 256,
            bs: 512,
            write: None,
        },
    ];
    let (_q, done) = run_batch(q, cmds).await;
    assert_status(done[0].cqe.status(), Status::LBA_RANGE, Some(true));
    assert_status(done[1].cqe.status(), Status::INVALID_NS, Some(true));
    assert_eq!(done[2].cqe.status(), Status::SUCCESS);
    assert_zero(&done[2].data, "null namespace read");
    assert_eq!(done[2].data.len(), 128 * 1024);
    t.stop().await;
}

/// Thread IDs of the polling target's reactors (`on_reactor_start` is a plain `fn`).
static REACTOR_TIDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn note_reactor() {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    REACTOR_TIDS.lock().unwrap().push(tid);
}

/// CPU time (ns) of one thread of this process.
fn thread_cpu_ns(tid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_target_serves_and_then_sleeps() {
    let layout = yaml::parse_str("test-layout.yaml", STD_YAML).unwrap();
    let registry = tessera::config::build_registry(&layout).unwrap();
    let opts = TargetOptions {
        reactors: 1,
        poll: Duration::from_micros(200),
        on_reactor_start: Some(note_reactor),
        ..TargetOptions::default()
    };
    let listen = [SocketAddr::from(([127, 0, 0, 1], 0))];
    let target = Target::start_with(registry, &listen, opts).await.unwrap();
    let t = TestTarget {
        addr: target.addrs[0],
        target,
    };
    write_read_matrix(&t, false, false, 8192).await;
    // The general initiator too (its reader and writer tasks sleep in epoll).
    let (_c, q) = connect_with_io(t.addr, SUBNQN).await;
    let data = blocks(7, 100, 8, 4096);
    write_chunked(&q, NS_RAM4K, 100, 4096, &data).await;
    let back = read_chunked(&q, NS_RAM4K, 100, 8, 4096).await;
    assert_blocks(&back, &data, 100, 4096, "polling target");
    // Idle: after the window the reactor sleeps in epoll. Connections stay open (keep-alive
    // traffic every few seconds at most), so a poller that never stopped would burn the
    // thread's whole share of a core here.
    //
    // A CPU-time bound, kept because its margin is huge and load cannot break it: a sleeping
    // reactor uses microseconds (it wakes for keep alives at most, then polls 200 µs), so the
    // 50 ms bound is hundreds of times what it needs; load and a slow machine only stretch the
    // sleeps below, during which a sleeping thread still uses nothing. (The busypoll unit tests
    // check the poller's decision itself, on a made-up clock.) Load can make a never-stopping
    // poller pass (it yields the CPU to others on every turn), never a correct one fail.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let tid = *REACTOR_TIDS
        .lock()
        .unwrap()
        .first()
        .expect("a reactor started");
    let before = thread_cpu_ns(tid);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let used = thread_cpu_ns(tid) - before;
    assert!(
        used < 50_000_000,
        "an idle polling reactor used {} ms of CPU in 500 ms",
        used / 1_000_000
    );
    t.stop().await;
}
