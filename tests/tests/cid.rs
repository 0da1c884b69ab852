//! Command identifiers (NVMe Base 2.0, section 4.2: a CID is unique among the commands in flight
//! on one submission queue): a command whose CID is already in flight on its queue completes with
//! Command ID Conflict (status 03h, DNR) without running, and the command holding the CID is not
//! disturbed; once a command completes its CID is free again. Driven from a raw connection,
//! which can do what a well-behaved host never does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use codec::nvme::Status;
use codec::nvme::cmd::{IoCommand, Rw, WriteZeroes};
use codec::pdu::{Pdu, R2T};
use tessera::initiator::{Controller, Queue, RawConn, RawEvent};
use tessera_tests::*;

const BS: u32 = 512;

/// A controller with I/O queue 1 through the initiator (to prepare and check data) and I/O
/// queue 2 as a raw connection.
async fn setup(t: &TestTarget) -> (Controller, Queue, RawConn) {
    let ctrl = connect(t.addr, SUBNQN).await;
    let granted = within("queues", ctrl.set_num_queues(2)).await.unwrap();
    assert!(granted >= 2);
    let q = within("I/O queue 1", ctrl.connect_io_queue(1, 127))
        .await
        .unwrap();
    let raw = raw_io_queue(&ctrl, 2, false, false).await;
    (ctrl, q, raw)
}

async fn expect_r2t(raw: &mut RawConn, cid: u16) -> R2T {
    match within("R2T", raw.recv()).await {
        Ok(RawEvent::Pdu(Pdu::R2T(r))) => {
            assert_eq!(r.cccid, cid, "R2T CCCID");
            r
        }
        other => panic!("expected an R2T, got {other:?}"),
    }
}

async fn expect_cqe(raw: &mut RawConn, cid: u16, what: &str) -> Status {
    let cqe = within(what, recv_cqe(raw)).await;
    assert_eq!(cqe.cid(), cid, "{what}: response CID");
    cqe.status()
}

/// Sends a Write of 8 blocks at `slba` whose data comes by R2T: it holds `cid` until answered.
async fn write_awaiting_data(raw: &mut RawConn, cid: u16, slba: u64) -> R2T {
    let w = IoCommand::Write(Rw::new(NS_RAM512, slba, 8, 0));
    raw.send_pdu(&io_capsule(&w, cid, Bytes::new(), 8 * BS))
        .await
        .unwrap();
    expect_r2t(raw, cid).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cid_in_flight_is_refused_and_the_command_holding_it_completes() {
    let t = TestTarget::start(STD_YAML).await;
    let (_ctrl, q, mut raw) = setup(&t).await;
    // Blocks 0..8 hold pattern A; the raw queue's write goes to blocks 64..72.
    let a = blocks(1, 0, 8, BS);
    within("fill", q.write(NS_RAM512, 0, BS, a.clone(), false))
        .await
        .unwrap();

    let r2t = write_awaiting_data(&mut raw, 7, 64).await;

    // CID 7 again, while the write holds it: a Write Zeroes of blocks 0..8 and a Read.
    let wz = IoCommand::WriteZeroes(WriteZeroes {
        nsid: NS_RAM512,
        slba: 0,
        nlb: 8,
        deac: false,
        fua: false,
        lr: false,
        generation: None,
        expires: 0,
    });
    raw.send_pdu(&io_capsule(&wz, 7, Bytes::new(), 0))
        .await
        .unwrap();
    let st = expect_cqe(&mut raw, 7, "conflicting Write Zeroes").await;
    assert_status(st, Status::CID_CONFLICT, Some(true));
    let rd = IoCommand::Read(Rw::new(NS_RAM512, 0, 8, 0));
    raw.send_pdu(&io_capsule(&rd, 7, Bytes::new(), 8 * BS))
        .await
        .unwrap();
    let st = expect_cqe(&mut raw, 7, "conflicting Read").await;
    assert_status(st, Status::CID_CONFLICT, Some(true));

    // The write holding CID 7 is undisturbed: its data is still solicited under its TTAG.
    let b = blocks(2, 64, 8, BS);
    raw_answer_r2t(&mut raw, &r2t, &b, 4096).await;
    let st = expect_cqe(&mut raw, 7, "the write holding CID 7").await;
    assert!(st.is_success(), "write: {st}");

    // The refused Write Zeroes never ran; the write landed.
    let got = within("read A", q.read(NS_RAM512, 0, 8, BS)).await.unwrap();
    assert_blocks(&got, &a, 0, BS, "blocks a refused Write Zeroes named");
    let got = within("read B", q.read(NS_RAM512, 64, 8, BS))
        .await
        .unwrap();
    assert_blocks(&got, &b, 64, BS, "blocks of the write holding CID 7");

    // CID 7 is free again once its command completed: a read with it succeeds.
    raw.send_pdu(&io_capsule(&rd, 7, Bytes::new(), 8 * BS))
        .await
        .unwrap();
    let (data, st) = within("read with CID 7 again", raw_read_data(&mut raw, 7)).await;
    assert!(st.is_success(), "read: {st}");
    assert_blocks(&data, &a, 0, BS, "read with a reused CID");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_cids_in_flight_each_complete_and_only_the_repeated_one_conflicts() {
    let t = TestTarget::start(STD_YAML).await;
    let (_ctrl, q, mut raw) = setup(&t).await;
    // Three writes hold CIDs 0, 1 and 0xFFFF (the extremes of the 16-bit space).
    let cids = [0u16, 1, u16::MAX];
    let mut r2ts = Vec::new();
    for (i, cid) in cids.iter().enumerate() {
        r2ts.push(write_awaiting_data(&mut raw, *cid, 128 + 8 * i as u64).await);
    }
    let ttags: std::collections::HashSet<u16> = r2ts.iter().map(|r| r.ttag).collect();
    assert_eq!(ttags.len(), 3, "each command in flight has its own TTAG");
    // Each CID in flight conflicts; a neighbour of one does not.
    for cid in cids {
        let w = IoCommand::Write(Rw::new(NS_RAM512, 0, 1, 0));
        raw.send_pdu(&io_capsule(&w, cid, Bytes::new(), BS))
            .await
            .unwrap();
        let st = expect_cqe(&mut raw, cid, "repeated CID").await;
        assert_status(st, Status::CID_CONFLICT, Some(true));
    }
    let fl = IoCommand::Flush(codec::nvme::cmd::Flush {
        nsid: NS_RAM512,
        generation: None,
    });
    raw.send_pdu(&io_capsule(&fl, 2, Bytes::new(), 0))
        .await
        .unwrap();
    let st = expect_cqe(&mut raw, 2, "Flush with a free CID").await;
    assert!(st.is_success(), "flush: {st}");
    // Answer the writes in reverse order: each completes under its own CID.
    let mut want = Vec::new();
    for (i, r2t) in r2ts.iter().enumerate().rev() {
        let slba = 128 + 8 * i as u64;
        let data = blocks(10 + i as u64, slba, 8, BS);
        raw_answer_r2t(&mut raw, r2t, &data, 4096).await;
        let st = expect_cqe(&mut raw, cids[i], "write").await;
        assert!(st.is_success(), "write CID {}: {st}", cids[i]);
        want.push((slba, data));
    }
    for (slba, data) in want {
        let got = within("read back", q.read(NS_RAM512, slba, 8, BS))
            .await
            .unwrap();
        assert_blocks(&got, &data, slba, BS, "write under a distinct CID");
    }
    t.stop().await;
}
