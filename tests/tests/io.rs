//! NVM I/O commands end to end (NVM Command Set 1.0, section 3; NVMe/TCP 1.0, section 3.4 data
//! transfer): verified round trips on every backend and block size, in-capsule and R2T paths,
//! Flush/FUA, Write Zeroes, Dataset Management, Compare, range and limit errors, and many
//! commands in flight. The generation stamp has its own file, `generation.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::cast_possible_truncation)]

use std::time::Duration;

use bytes::Bytes;
use codec::nvme::Status;
use codec::nvme::cmd::{IoCommand, Rw};
use codec::pdu::{IcReq, Pdu};
use tessera::initiator::{InitiatorError, Queue, RawEvent};
use tessera_tests::*;

/// (NSID, block size) of the namespaces that keep data, with file backends.
const DATA_NAMESPACES: [(u32, u32); 4] = [
    (NS_RAM512, 512),
    (NS_RAM4K, 4096),
    (NS_FILE512, 512),
    (NS_FILE4K, 4096),
];

/// Writes then reads back, verified, a spread of sizes from one block to MDTS (128 KiB),
/// including odd block counts, each at its own LBA range; then re-reads everything to catch a
/// write that landed on a neighbour.
async fn round_trips(q: &Queue, nsid: u32, bs: u32, seed: u64) {
    let counts: &[u32] = if bs == 512 {
        &[
            1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 64, 100, 129, 200, 255, 256,
        ]
    } else {
        &[1, 2, 3, 5, 8, 13, 17, 31, 32]
    };
    let mut slba = 5u64; // not aligned to anything in particular
    let mut written = Vec::new();
    for (i, &nlb) in counts.iter().enumerate() {
        let data = blocks(seed + i as u64, slba, nlb, bs);
        within("write", q.write(nsid, slba, bs, data.clone(), false))
            .await
            .unwrap_or_else(|e| panic!("nsid {nsid} write {nlb} x {bs}: {e}"));
        let got = within("read", q.read(nsid, slba, nlb, bs))
            .await
            .unwrap_or_else(|e| panic!("nsid {nsid} read {nlb} x {bs}: {e}"));
        assert_blocks(&got, &data, slba, bs, &format!("nsid {nsid}, {nlb} blocks"));
        written.push((slba, nlb, data));
        slba += u64::from(nlb) + 1;
    }
    for (slba, nlb, data) in written {
        let got = q.read(nsid, slba, nlb, bs).await.unwrap();
        assert_blocks(
            &got,
            &data,
            slba,
            bs,
            &format!("nsid {nsid} re-read at {slba}"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_every_backend_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestTarget::start(&std_yaml_with_files(dir.path())).await;
    let (c, q) = connect_with_io(t.addr, SUBNQN).await;
    for (i, (nsid, bs)) in DATA_NAMESPACES.into_iter().enumerate() {
        round_trips(&q, nsid, bs, 1000 * i as u64).await;
    }
    // Null: writes are accepted and dropped, reads return zeros.
    let d = blocks(1, 0, 16, 512);
    q.write(NS_NULL, 0, 512, d, false).await.unwrap();
    assert_zero(&q.read(NS_NULL, 0, 16, 512).await.unwrap(), "null read");
    let last = (1u64 << 30) / 512 - 256;
    assert_zero(
        &q.read(NS_NULL, last, 256, 512).await.unwrap(),
        "null read at the end",
    );
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fua_and_flush() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestTarget::start(&std_yaml_with_files(dir.path())).await;
    let (c, q) = connect_with_io(t.addr, SUBNQN).await;
    for (nsid, bs) in DATA_NAMESPACES {
        let small = blocks(7, 40, 2, bs);
        let large = blocks(8, 50, 24, bs);
        q.write(nsid, 40, bs, small.clone(), true).await.unwrap();
        q.write(nsid, 50, bs, large.clone(), true).await.unwrap();
        q.flush(nsid).await.unwrap();
        assert_blocks(
            &q.read(nsid, 40, 2, bs).await.unwrap(),
            &small,
            40,
            bs,
            "FUA write",
        );
        assert_blocks(
            &q.read(nsid, 50, 24, bs).await.unwrap(),
            &large,
            50,
            bs,
            "FUA write",
        );
    }
    q.flush(NS_NULL).await.unwrap();
    // Flush of a namespace that does not exist, or NSID 0.
    for nsid in [0, 99] {
        let st = status_of(q.flush(nsid).await);
        assert_status(st, Status::INVALID_NS, Some(true));
    }
    // The file backend really has the data after Flush: read the file itself.
    let img = std::fs::read(dir.path().join("ns5.img")).unwrap();
    let want = blocks(8, 50, 24, 4096);
    assert_blocks(
        &img[50 * 4096..74 * 4096],
        &want,
        50,
        4096,
        "file contents after Flush",
    );
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_of_every_namespace_nsid_ffffffff() {
    // NVM Command Set 1.0, Flush: NSID FFFFFFFFh applies to every attached namespace when
    // Identify Controller VWC bits 2:1 are 11b, which this target reports.
    let dir = tempfile::tempdir().unwrap();
    let t = TestTarget::start(&std_yaml_with_files(dir.path())).await;
    let (c, q) = connect_with_io(t.addr, SUBNQN).await;
    let vwc = c.identify_controller_parsed().await.unwrap().vwc;
    assert_eq!((vwc >> 1) & 0b11, 0b11, "VWC advertises broadcast Flush");
    let d = blocks(3, 0, 8, 512);
    q.write(NS_FILE512, 0, 512, d.clone(), false).await.unwrap();
    q.flush(0xFFFF_FFFF)
        .await
        .unwrap_or_else(|e| panic!("Flush NSID FFFFFFFFh: {e}"));
    let img = std::fs::read(dir.path().join("ns4.img")).unwrap();
    assert_blocks(
        &img[..8 * 512],
        &d,
        0,
        512,
        "file contents after broadcast Flush",
    );
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_zeroes_and_deallocate_touch_only_their_range() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestTarget::start(&std_yaml_with_files(dir.path())).await;
    let (c, q) = connect_with_io(t.addr, SUBNQN).await;
    for (nsid, bs) in DATA_NAMESPACES {
        // Write Zeroes, then Write Zeroes with DEAC, on ranges that start and end mid-page.
        for (base, deac) in [(0u64, false), (100, true)] {
            let all = blocks(nsid.into(), base, 64, bs);
            write_chunked(&q, nsid, base, bs, &all).await;
            q.write_zeroes(nsid, base + 3, 21, deac)
                .await
                .unwrap_or_else(|e| panic!("nsid {nsid} Write Zeroes (DEAC {deac}): {e}"));
            let got = read_chunked(&q, nsid, base, 64, bs).await;
            let b = bs as usize;
            assert_blocks(
                &got[..3 * b],
                &all[..3 * b],
                base,
                bs,
                "before the zeroed range",
            );
            assert_zero(
                &got[3 * b..24 * b],
                &format!("nsid {nsid} zeroed (deac {deac})"),
            );
            assert_blocks(
                &got[24 * b..],
                &all[24 * b..],
                base + 24,
                bs,
                "after the zeroed range",
            );
        }
        // Dataset Management deallocate, several ranges at once.
        let base = 300u64;
        let all = blocks(99, base, 64, bs);
        write_chunked(&q, nsid, base, bs, &all).await;
        let ranges = [
            (base + 1, 2u32),
            (base + 10, 7),
            (base + 40, 1),
            (base + 63, 1),
        ];
        q.dsm_deallocate(nsid, &ranges).await.unwrap();
        let got = read_chunked(&q, nsid, base, 64, bs).await;
        for i in 0..64u64 {
            let lba = base + i;
            let blk = &got[(i as usize) * bs as usize..(i as usize + 1) * bs as usize];
            let freed = ranges
                .iter()
                .any(|&(s, n)| lba >= s && lba < s + u64::from(n));
            if freed {
                // DLFEAT says deallocated blocks read as zeros.
                assert_zero(blk, &format!("nsid {nsid} deallocated LBA {lba}"));
            } else {
                let want = &all[(i as usize) * bs as usize..(i as usize + 1) * bs as usize];
                assert_blocks(blk, want, lba, bs, &format!("nsid {nsid} kept LBA {lba}"));
            }
        }
    }
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_zeroes_and_deallocate_are_not_bounded_by_mdts() {
    // Write Zeroes and Dataset Management move no data, so MDTS does not limit them (Identify
    // Controller NVM WZSL/DMRSL are 0: no limit): a whole 16 MiB namespace in one command.
    let t = TestTarget::start(STD_YAML).await;
    let (c, q) = connect_with_io(t.addr, SUBNQN).await;
    let nlbas = (STD_NS_BYTES / 4096) as u32;
    for (i, deac) in [(0u64, false), (1, true)] {
        let d = blocks(i, 0, 32, 4096);
        write_chunked(&q, NS_RAM4K, 0, 4096, &d).await;
        write_chunked(
            &q,
            NS_RAM4K,
            u64::from(nlbas) - 32,
            4096,
            &blocks(i, 0, 32, 4096),
        )
        .await;
        q.write_zeroes(NS_RAM4K, 0, nlbas, deac).await.unwrap();
        assert_zero(&read_chunked(&q, NS_RAM4K, 0, 32, 4096).await, "start");
        let end = read_chunked(&q, NS_RAM4K, u64::from(nlbas) - 32, 32, 4096).await;
        assert_zero(&end, "end");
    }
    write_chunked(&q, NS_RAM512, 0, 512, &blocks(5, 0, 64, 512)).await;
    let nlbas512 = (STD_NS_BYTES / 512) as u32;
    q.dsm_deallocate(NS_RAM512, &[(0, nlbas512)]).await.unwrap();
    assert_zero(
        &read_chunked(&q, NS_RAM512, 0, 64, 512).await,
        "deallocated",
    );
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataset_management_with_the_most_ranges() {
    // NR is 8 bits, 0's based: 256 ranges (4 KiB of range data) in one command. Every other
    // block of a 512-block stretch is deallocated.
    let t = TestTarget::start(STD_YAML).await;
    let (c, q) = connect_with_io(t.addr, SUBNQN).await;
    let all = blocks(11, 0, 512, 512);
    write_chunked(&q, NS_RAM512, 0, 512, &all).await;
    let ranges: Vec<(u64, u32)> = (0..256u64).map(|i| (2 * i + 1, 1)).collect();
    q.dsm_deallocate(NS_RAM512, &ranges).await.unwrap();
    let got = read_chunked(&q, NS_RAM512, 0, 512, 512).await;
    for (i, (g, w)) in got.chunks(512).zip(all.chunks(512)).enumerate() {
        if i % 2 == 1 {
            assert_zero(g, &format!("deallocated LBA {i}"));
        } else {
            assert_blocks(g, w, i as u64, 512, "kept block");
        }
    }
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_matches_and_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestTarget::start(&std_yaml_with_files(dir.path())).await;
    let (c, q) = connect_with_io(t.addr, SUBNQN).await;
    for (nsid, bs, nlb) in [
        (NS_RAM512, 512, 4),
        (NS_RAM512, 512, 64),
        (NS_RAM4K, 4096, 16),
        (NS_FILE512, 512, 40),
        (NS_FILE4K, 4096, 3),
    ] {
        let d = blocks(5, 10, nlb, bs);
        q.write(nsid, 10, bs, d.clone(), false).await.unwrap();
        q.compare(nsid, 10, bs, d.clone())
            .await
            .expect("compare of identical data");
        let mut bad = d.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let st = status_of(q.compare(nsid, 10, bs, Bytes::from(bad)).await);
        assert_status(st, Status::COMPARE_FAILURE, None);
    }
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lba_out_of_range_is_refused_with_dnr() {
    let t = TestTarget::start(STD_YAML).await;
    let (c, q) = connect_with_io(t.addr, SUBNQN).await;
    let nlbas = STD_NS_BYTES / 512;
    // The last block is fine.
    let d = blocks(1, nlbas - 1, 1, 512);
    q.write(NS_RAM512, nlbas - 1, 512, d.clone(), false)
        .await
        .unwrap();
    assert_blocks(
        &q.read(NS_RAM512, nlbas - 1, 1, 512).await.unwrap(),
        &d,
        nlbas - 1,
        512,
        "last",
    );
    let cases: [(u64, u32); 5] = [
        (nlbas, 1),        // starts past the end
        (nlbas - 8, 16),   // ends past the end
        (nlbas - 8, 64),   // the same, with data through R2T
        (u64::MAX, 2),     // SLBA + NLB overflows
        (u64::MAX - 1, 4), // overflows differently
    ];
    for (slba, nlb) in cases {
        let st = status_of(q.read(NS_RAM512, slba, nlb, 512).await);
        assert_status(st, Status::LBA_RANGE, Some(true));
        let st = status_of(
            q.write(NS_RAM512, slba, 512, blocks(2, 0, nlb, 512), false)
                .await,
        );
        assert_status(st, Status::LBA_RANGE, Some(true));
        let st = status_of(
            q.compare(NS_RAM512, slba, 512, blocks(2, 0, nlb, 512))
                .await,
        );
        assert_status(st, Status::LBA_RANGE, Some(true));
        let st = status_of(q.write_zeroes(NS_RAM512, slba, nlb, false).await);
        assert_status(st, Status::LBA_RANGE, Some(true));
        let st = status_of(q.dsm_deallocate(NS_RAM512, &[(0, 1), (slba, nlb)]).await);
        assert_status(st, Status::LBA_RANGE, Some(true));
    }
    // Nothing was touched by the refused commands: block 0 still reads as written before.
    let d0 = blocks(3, 0, 1, 512);
    q.write(NS_RAM512, 0, 512, d0.clone(), false).await.unwrap();
    let _ = q.dsm_deallocate(NS_RAM512, &[(0, 1), (nlbas, 1)]).await;
    assert_blocks(
        &q.read(NS_RAM512, 0, 1, 512).await.unwrap(),
        &d0,
        0,
        512,
        "DSM with a bad range",
    );
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_above_mdts_and_bad_nsids() {
    let t = TestTarget::start(STD_YAML).await;
    let (c, q) = connect_with_io(t.addr, SUBNQN).await;
    // MDTS is 128 KiB: 257 blocks of 512 bytes is one block too many.
    let st = status_of(q.read(NS_RAM512, 0, 257, 512).await);
    assert_status(st, Status::INVALID_FIELD, Some(true));
    let st = status_of(
        q.write(NS_RAM512, 0, 512, blocks(1, 0, 257, 512), false)
            .await,
    );
    assert_status(st, Status::INVALID_FIELD, Some(true));
    let st = status_of(q.read(NS_RAM4K, 0, 33, 4096).await);
    assert_status(st, Status::INVALID_FIELD, Some(true));
    // Exactly MDTS works.
    let d = blocks(2, 0, 32, 4096);
    q.write(NS_RAM4K, 0, 4096, d.clone(), false).await.unwrap();
    assert_blocks(
        &q.read(NS_RAM4K, 0, 32, 4096).await.unwrap(),
        &d,
        0,
        4096,
        "MDTS read",
    );
    // NSIDs that do not exist.
    for nsid in [0, 4, 77, 0xFFFF_FFFE, 0xFFFF_FFFF] {
        let st = status_of(q.read(nsid, 0, 1, 512).await);
        assert_status(st, Status::INVALID_NS, Some(true));
        let st = status_of(q.write(nsid, 0, 512, blocks(1, 0, 1, 512), false).await);
        assert_status(st, Status::INVALID_NS, Some(true));
        // Large enough for R2T: refused before any data is asked for.
        let st = status_of(q.write(nsid, 0, 512, blocks(1, 0, 128, 512), false).await);
        assert_status(st, Status::INVALID_NS, Some(true));
    }
    // The queue is still healthy after all of that.
    q.read(NS_RAM512, 0, 1, 512).await.unwrap();
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_needs_an_enabled_controller() {
    let t = TestTarget::start(STD_YAML).await;
    // An I/O queue Connect before CC.EN = 1 is a Command Sequence Error.
    let c = within(
        "admin connect",
        tessera::initiator::Controller::connect(t.addr, SUBNQN, HOSTNQN, &ctrl_opts()),
    )
    .await
    .unwrap();
    let r = c.connect_io_queue(1, 31).await;
    match r {
        Err(InitiatorError::ConnectRejected(rej)) => {
            assert!(
                !rej.status.is_success(),
                "I/O Connect before enable: {rej:?}"
            );
        }
        other => panic!("I/O Connect before enable must fail: {other:?}"),
    }
    // Enabled: I/O works. Disabled again (CC.EN = 0): I/O is a Command Sequence Error.
    c.enable().await.unwrap();
    let q = io_queues(&c, 1).await.remove(0);
    q.read(NS_RAM512, 0, 1, 512).await.unwrap();
    c.disable().await.unwrap();
    match q.read(NS_RAM512, 0, 1, 512).await {
        Err(InitiatorError::Status(st)) => assert_status(st, Status::CMD_SEQ_ERROR, None),
        Err(e) if e.is_connection_fatal() => {} // tearing the I/O queue down is also fine
        other => panic!("I/O on a disabled controller: {other:?}"),
    }
    // Enabled again: the controller is ready and serves admin commands.
    c.enable().await.unwrap();
    c.identify_controller().await.unwrap();
    q.close().await;
    c.admin().close().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_capsule_and_r2t_paths_with_default_limits() {
    let t = TestTarget::start(STD_YAML).await;
    let c = connect(t.addr, SUBNQN).await;
    c.set_num_queues(1).await.unwrap();
    let mut raw = raw_io_queue(&c, 1, false, false).await;
    // 8 KiB fits in the capsule (IOCCSZ): the response comes without any R2T.
    let d = blocks(1, 0, 16, 512);
    let w = IoCommand::Write(Rw::new(NS_RAM512, 0, 16, 0));
    raw.send_pdu(&io_capsule(&w, 7, d.clone(), 0))
        .await
        .unwrap();
    let cqe = recv_cqe(&mut raw).await;
    assert!(cqe.status().is_success() && cqe.cid() == 7, "{cqe:?}");
    // 8.5 KiB does not: the target asks for it with one R2T for all of it.
    let d = blocks(2, 100, 17, 512);
    let w = IoCommand::Write(Rw::new(NS_RAM512, 100, 17, 0));
    raw.send_pdu(&io_capsule(&w, 8, Bytes::new(), 17 * 512))
        .await
        .unwrap();
    let r2t = match raw.recv().await.unwrap() {
        RawEvent::Pdu(Pdu::R2T(r)) => r,
        other => panic!("expected an R2T, got {other:?}"),
    };
    assert_eq!((r2t.cccid, r2t.r2to, r2t.r2tl), (8, 0, 17 * 512));
    raw_answer_r2t(&mut raw, &r2t, &d, 128 * 1024).await;
    let cqe = recv_cqe(&mut raw).await;
    assert!(cqe.status().is_success() && cqe.cid() == 8, "{cqe:?}");
    // Read both back on the same raw queue.
    let r = IoCommand::Read(Rw::new(NS_RAM512, 100, 17, 0));
    raw.send_pdu(&io_capsule(&r, 9, Bytes::new(), 17 * 512))
        .await
        .unwrap();
    let (got, st) = raw_read_data(&mut raw, 9).await;
    assert!(st.is_success(), "{st}");
    assert_blocks(&got, &d, 100, 512, "read back through the raw queue");
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_r2t_and_multi_h2c_data_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestTarget::start_with(&std_yaml_with_files(dir.path()), small_limits(), 1).await;
    for maxr2t in [0u32, 3] {
        let mut o = ctrl_opts();
        o.transport.maxr2t = maxr2t;
        o.io_incapsule_data_max = 4096;
        let c = connect_as(t.addr, SUBNQN, HOSTNQN, &o).await.unwrap();
        let q = io_queues(&c, 1).await.remove(0);
        for (i, (nsid, bs)) in DATA_NAMESPACES.into_iter().enumerate() {
            round_trips(&q, nsid, bs, 77 + u64::from(maxr2t) * 10 + i as u64).await;
        }
        q.close().await;
        c.disconnect().await.unwrap();
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2ts_follow_r2t_len_max_and_the_hosts_maxr2t() {
    // 64 KiB written with R2Ts of at most 8 KiB: 8 R2Ts. The host's MAXR2T (0's based) bounds
    // how many are outstanding at once (NVMe/TCP 1.0, section 3.6.2.2), and the target never
    // has more than its own limit (4) out either.
    let t = TestTarget::start_with(STD_YAML, small_limits(), 1).await;
    let c = connect(t.addr, SUBNQN).await;
    c.set_num_queues(3).await.unwrap();
    let check = c.connect_io_queue(3, 31).await.unwrap();
    for (qid, maxr2t, first_batch) in [(1u16, 0u32, 1usize), (2, 3, 4)] {
        let ic = IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: false,
            ddgst: false,
            maxr2t,
        };
        let mut raw = raw_io_queue_ic(&c, qid, ic).await;
        let slba = u64::from(qid) * 100;
        let data = blocks(u64::from(qid), slba, 16, 4096);
        let w = IoCommand::Write(Rw::new(NS_RAM4K, slba, 16, 0));
        raw.send_pdu(&io_capsule(&w, 1, Bytes::new(), 64 * 1024))
            .await
            .unwrap();
        let mut solicited = 0u32;
        let mut r2ts = 0;
        let mut ttag = None;
        let done = loop {
            // Collect everything the target sends before we answer.
            let mut batch = Vec::new();
            raw.timeout = RAW_TIMEOUT;
            let mut done = None;
            loop {
                match raw.recv().await {
                    Ok(RawEvent::Pdu(Pdu::R2T(r))) => batch.push(r),
                    Ok(RawEvent::Pdu(Pdu::CapsuleResp(r))) => {
                        done = Some(r.cqe);
                        break;
                    }
                    Err(InitiatorError::Timeout { .. }) if !batch.is_empty() => break,
                    other => panic!("R2T flow: {other:?}"),
                }
                raw.timeout = Duration::from_millis(150);
            }
            raw.timeout = RAW_TIMEOUT;
            if let Some(cqe) = done {
                assert!(batch.is_empty());
                break cqe;
            }
            if r2ts == 0 {
                assert_eq!(
                    batch.len(),
                    first_batch,
                    "R2Ts outstanding at once, MAXR2T {maxr2t}"
                );
            }
            assert!(
                batch.len() <= maxr2t as usize + 1,
                "more R2Ts than MAXR2T + 1"
            );
            for r in &batch {
                assert_eq!(r.cccid, 1);
                assert_eq!(r.r2to, solicited, "R2Ts are contiguous and in order");
                assert!(
                    r.r2tl <= 8192 && r.r2tl > 0,
                    "R2TL {} above r2t_len_max",
                    r.r2tl
                );
                assert_eq!(*ttag.get_or_insert(r.ttag), r.ttag, "one TTAG per command");
                solicited += r.r2tl;
                r2ts += 1;
            }
            for r in &batch {
                raw_answer_r2t(&mut raw, r, &data, 4096).await;
            }
        };
        assert!(
            done.status().is_success(),
            "write completion: {}",
            done.status()
        );
        assert_eq!(solicited, 64 * 1024);
        assert_eq!(r2ts, 8, "64 KiB in R2Ts of 8 KiB");
        let got = check.read(NS_RAM4K, slba, 16, 4096).await.unwrap();
        assert_blocks(&got, &data, slba, 4096, "data written through R2Ts");
    }
    check.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_commands_in_flight_on_several_queues() {
    const QUEUES: u16 = 4;
    const WORKERS: u64 = 32; // per queue: commands in flight
    const OPS: u64 = 2000; // per queue
    const SLOT_BLOCKS: u64 = 8; // each worker owns 8 blocks of 4 KiB
    let t = TestTarget::start(STD_YAML).await;
    let c = connect(t.addr, SUBNQN).await;
    let qs = io_queues(&c, QUEUES).await;
    let start = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (qi, q) in qs.iter().enumerate() {
        for w in 0..WORKERS {
            let q = q.clone();
            let slot = (qi as u64 * WORKERS + w) * SLOT_BLOCKS;
            tasks.spawn(async move {
                let mut rng = slot + 1;
                let mut last = None;
                for op in 0..OPS / WORKERS / 2 {
                    let nlb = (splitmix64(&mut rng) % SLOT_BLOCKS) as u32 + 1;
                    let seed = (slot << 20) | op;
                    let d = blocks(seed, slot, nlb, 4096);
                    within(
                        "write",
                        q.write(NS_RAM4K, slot, 4096, d.clone(), op % 7 == 0),
                    )
                    .await
                    .unwrap();
                    let got = within("read", q.read(NS_RAM4K, slot, nlb, 4096))
                        .await
                        .unwrap();
                    assert_blocks(&got, &d, slot, 4096, "concurrent read back");
                    last = Some((slot, nlb, d));
                }
                last.unwrap()
            });
        }
    }
    let mut finals = Vec::new();
    while let Some(r) = within_for(Duration::from_secs(60), "workers", tasks.join_next()).await {
        finals.push(r.unwrap());
    }
    assert_eq!(finals.len() as u64, u64::from(QUEUES) * WORKERS);
    // Every worker's last write, read back through another queue.
    for (i, (slot, nlb, d)) in finals.iter().enumerate() {
        let q = &qs[(i + 1) % qs.len()];
        let got = q.read(NS_RAM4K, *slot, *nlb, 4096).await.unwrap();
        assert_blocks(&got, d, *slot, 4096, "read through another queue");
    }
    eprintln!(
        "{} verified write+read pairs in {:?}",
        u64::from(QUEUES) * OPS / 2,
        start.elapsed()
    );
    for q in &qs {
        q.close().await;
    }
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_of_unwritten_blocks_is_zero() {
    let t = TestTarget::start(STD_YAML).await;
    let (c, q) = connect_with_io(t.addr, SUBNQN).await;
    assert_zero(
        &q.read(NS_RAM512, 1000, 256, 512).await.unwrap(),
        "fresh RAM namespace",
    );
    assert_zero(
        &q.read(NS_RAM4K, 4000, 32, 4096).await.unwrap(),
        "fresh RAM namespace",
    );
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_admin_queue_with_io_in_flight() {
    // File backend (I/O runs on the blocking pool, so commands really are in flight): 64
    // writers on two I/O queues write their own slot again and again until the admin
    // connection drops. Every command then ends (completed, or failed with its connection),
    // nothing hangs, and each slot holds its last acknowledged write or the one in flight at
    // the end (docs/cluster-protocol.md invariant 3: a read after an acknowledged write returns it or newer).
    let dir = tempfile::tempdir().unwrap();
    let t = TestTarget::start(&std_yaml_with_files(dir.path())).await;
    let c = connect(t.addr, SUBNQN).await;
    let qs = io_queues(&c, 2).await;
    let mut set = tokio::task::JoinSet::new();
    for (qi, q) in qs.iter().enumerate() {
        for w in 0..32u64 {
            let q = q.clone();
            let slba = (qi as u64 * 32 + w) * 16;
            set.spawn(async move {
                let mut acked = None;
                for round in 1u64.. {
                    let seed = (slba << 16) | round;
                    let d = blocks(seed, slba, 16, 4096);
                    if q.write(NS_FILE4K, slba, 4096, d, round % 2 == 0)
                        .await
                        .is_err()
                    {
                        return (slba, acked, seed);
                    }
                    acked = Some(seed);
                }
                unreachable!()
            });
        }
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.admin().close().await;
    let mut slots = Vec::new();
    while let Some(r) = within("in-flight writes end", set.join_next()).await {
        slots.push(r.unwrap());
    }
    for q in &qs {
        within("I/O queues close with their controller", q.closed()).await;
    }
    let acked: usize = slots.iter().filter(|s| s.1.is_some()).count();
    assert!(acked > 0, "no write was acknowledged in 30 ms");
    let (c2, q2) = connect_with_io(t.addr, SUBNQN).await;
    for (slba, acked, inflight) in slots {
        let got = q2.read(NS_FILE4K, slba, 16, 4096).await.unwrap();
        let seed = u64::from_le_bytes(got[8..16].try_into().unwrap());
        let ok = Some(seed) == acked || seed == inflight || (acked.is_none() && seed == 0);
        assert!(
            ok,
            "slot {slba}: seed tag {seed:#x}, acked {acked:x?}, in flight {inflight:#x}"
        );
        if seed != 0 {
            assert_blocks(
                &got,
                &blocks(seed, slba, 16, 4096),
                slba,
                4096,
                "whole slot",
            );
        }
    }
    q2.close().await;
    c2.disconnect().await.unwrap();
    t.stop().await;
}
