//! Malformed PDUs (NVMe/TCP 1.0, sections 3.6 and 3.7.x: fatal errors): each is answered with a
//! C2HTermReq whose FES names the kind of error and, for header field and parameter errors, whose
//! FEI is the byte offset of the offending field (FEI is reserved, so 0, for sequence and data
//! range/limit errors); then the target closes the connection. After each, the target serves a
//! fresh connection: no panic, no hang, nothing else disturbed (docs/cluster-protocol.md invariant 4).
//! Everything is bounded by [`RAW_TIMEOUT`].
//!
//! Errors that belong to one command (a bad SGL, an unknown opcode) are not fatal: the last tests
//! check they leave the connection working.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::cast_possible_truncation)]

use bytes::Bytes;
use codec::nvme::Status;
use codec::nvme::cmd::{IoCommand, Rw};
use codec::nvme::sgl::SglDescriptor;
use codec::pdu::{CapsuleCmd, ConnParams, Fes, H2CData, Pdu};
use tessera::initiator::{Controller, RawConn, RawEvent};
use tessera_tests::*;
use tokio::io::AsyncWriteExt;

/// How a connection is prepared before the bad bytes go out.
#[derive(Debug, Clone, Copy)]
enum Prep {
    /// Bare TCP: nothing sent yet.
    Tcp,
    /// ICReq/ICResp done (no digests), no Connect.
    Ic,
    /// An I/O queue of a fresh, enabled controller.
    IoQueue,
}

/// What the target must do.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// C2HTermReq with this FES (and FEI when given), then close.
    Term(Fes, Option<u32>),
    /// Close without a TermReq (a TermReq is never answered with one).
    Close,
}

const HDR: Fes = Fes::INVALID_PDU_HEADER_FIELD;

/// A PDU header: the 8-byte common header followed by zeros up to `len` bytes.
fn pdu(ty: u8, flags: u8, hlen: u8, pdo: u8, plen: u32, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len.max(8)];
    b[0] = ty;
    b[1] = flags;
    b[2] = hlen;
    b[3] = pdo;
    b[4..8].copy_from_slice(&plen.to_le_bytes());
    b
}

/// An ICReq built by hand (the codec refuses to encode a bad one).
fn icreq(pfv: u16, hpda: u8) -> Vec<u8> {
    let mut b = pdu(0x00, 0, 128, 0, 128, 128);
    b[8..10].copy_from_slice(&pfv.to_le_bytes());
    b[10] = hpda;
    b
}

/// Host-side encoding of a valid PDU on an established connection without digests.
fn encode_established(pdu: &Pdu) -> Vec<u8> {
    encode_host(pdu, ConnParams::default())
}

fn read_capsule(cid: u16) -> Pdu {
    io_capsule(
        &IoCommand::Read(Rw::new(NS_RAM512, 0, 1, 0)),
        cid,
        Bytes::new(),
        512,
    )
}

fn write_capsule(cid: u16, data: Bytes) -> Pdu {
    let nlb = (data.len() / 512).max(1) as u32;
    io_capsule(
        &IoCommand::Write(Rw::new(NS_RAM512, 0, nlb, 0)),
        cid,
        data,
        0,
    )
}

/// Sends `bytes` (the target may close before it reads them all: send errors are fine).
async fn send_all(c: &mut RawConn, bytes: &[u8]) {
    let _ = c.send_bytes(bytes).await;
}

/// A connection prepared as `prep` says, with the controller that owns it (for `IoQueue`; keep
/// it alive while the raw queue is in use).
async fn prepare(t: &TestTarget, prep: Prep) -> (Option<Controller>, RawConn) {
    match prep {
        Prep::Tcp => (
            None,
            within("TCP connect", RawConn::connect(t.addr, RAW_TIMEOUT))
                .await
                .unwrap(),
        ),
        Prep::Ic => (None, raw_ic(t.addr, false, false).await),
        Prep::IoQueue => {
            let (ctrl, q) = raw_queue(t).await;
            (Some(ctrl), q)
        }
    }
}

/// Prepares a connection as `prep` says, sends `bytes`, checks the answer, then checks that the
/// target still serves a fresh connection.
async fn case(t: &TestTarget, prep: Prep, bytes: &[u8], want: Want, what: &str) {
    let (_ctrl, mut c) = prepare(t, prep).await;
    send_all(&mut c, bytes).await;
    match want {
        Want::Term(fes, fei) => {
            let term = match c.recv().await {
                Ok(RawEvent::Pdu(Pdu::C2HTermReq(term))) => term,
                other => panic!("{what}: expected a C2HTermReq, got {other:?}"),
            };
            assert_eq!(term.fes, fes, "{what}: FES");
            if let Some(fei) = fei {
                assert_eq!(term.fei, fei, "{what}: FEI");
            }
            // The TermReq data, when present, is the offending PDU header.
            if !term.data.is_empty() && fes == HDR {
                let n = term.data.len().min(bytes.len());
                assert_eq!(
                    &term.data[..n],
                    &bytes[..n],
                    "{what}: TermReq data is our header"
                );
            }
            expect_eof(&mut c, what).await;
        }
        Want::Close => expect_eof(&mut c, what).await,
    }
    assert_still_serving(t.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_first_pdus() {
    let t = TestTarget::start(STD_YAML).await;
    let capsule = encode_established(&read_capsule(1));
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        (
            "command capsule before ICReq",
            capsule.clone(),
            Want::Term(Fes::PDU_SEQUENCE_ERROR, Some(0)),
        ),
        (
            "ICReq PFV 1",
            icreq(1, 0),
            Want::Term(Fes::UNSUPPORTED_PARAMETER, Some(8)),
        ),
        (
            "ICReq HPDA 32",
            icreq(0, 32),
            Want::Term(Fes::UNSUPPORTED_PARAMETER, Some(10)),
        ),
        (
            "ICReq HLEN 127",
            pdu(0x00, 0, 127, 0, 128, 128),
            Want::Term(HDR, Some(2)),
        ),
        (
            "ICReq PLEN 132 (no data allowed)",
            pdu(0x00, 0, 128, 0, 132, 132),
            Want::Term(HDR, Some(4)),
        ),
        (
            "ICReq with a flag",
            pdu(0x00, 0x01, 128, 0, 128, 128),
            Want::Term(HDR, Some(1)),
        ),
        (
            "reserved PDU type 08h",
            pdu(0x08, 0, 24, 0, 24, 24),
            Want::Term(HDR, Some(0)),
        ),
        (
            "unknown PDU type 0Ah",
            pdu(0x0a, 0, 24, 0, 24, 24),
            Want::Term(HDR, Some(0)),
        ),
        (
            "ICResp from a host",
            pdu(0x01, 0, 128, 0, 128, 128),
            Want::Term(HDR, Some(0)),
        ),
        ("all zeros", vec![0u8; 256], Want::Term(HDR, Some(2))),
        (
            "garbage",
            {
                let mut st = 42u64;
                let mut g: Vec<u8> = (0..512).map(|_| splitmix64(&mut st) as u8).collect();
                g[0] = 0xde;
                g
            },
            Want::Term(HDR, Some(0)),
        ),
        (
            "H2CTermReq first",
            {
                let mut b = pdu(0x02, 0, 24, 0, 24, 24);
                b[8] = 1;
                b
            },
            Want::Close,
        ),
    ];
    for (what, bytes, want) in cases {
        case(&t, Prep::Tcp, &bytes, want, what).await;
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_pdus_after_the_ic_exchange() {
    let t = TestTarget::start(STD_YAML).await;
    // A valid capsule with 16 bytes of in-capsule data, to be damaged field by field.
    let big = {
        let sqe =
            codec::nvme::cmd::AdminCommand::KeepAlive.to_sqe(1, SglDescriptor::in_capsule(16));
        Pdu::CapsuleCmd(CapsuleCmd {
            sqe,
            data: Bytes::from(vec![0u8; 16]),
        })
    };
    let good = encode_established(&big);
    assert_eq!(
        (good[2], good[3], good.len()),
        (72, 72, 88),
        "capsule layout"
    );
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    let oversized = {
        // 8 KiB + 4 of in-capsule data: above what an admin queue (and Connect) may carry.
        let sqe =
            codec::nvme::cmd::AdminCommand::KeepAlive.to_sqe(1, SglDescriptor::in_capsule(8196));
        encode_established(&Pdu::CapsuleCmd(CapsuleCmd {
            sqe,
            data: Bytes::from(vec![0u8; 8196]),
        }))
    };
    let h2c_unknown_ttag = encode_established(&Pdu::H2CData(H2CData {
        cccid: 1,
        ttag: 5,
        datao: 0,
        last: true,
        data: Bytes::from(vec![1u8; 512]),
    }));
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        (
            "second ICReq",
            icreq(0, 0),
            Want::Term(Fes::PDU_SEQUENCE_ERROR, Some(0)),
        ),
        (
            "unknown PDU type FFh",
            pdu(0xff, 0, 24, 0, 24, 24),
            Want::Term(HDR, Some(0)),
        ),
        (
            "C2HData from a host",
            pdu(0x07, 0x04, 24, 24, 28, 28),
            Want::Term(HDR, Some(0)),
        ),
        (
            "R2T from a host",
            pdu(0x09, 0, 24, 0, 24, 24),
            Want::Term(HDR, Some(0)),
        ),
        (
            "CapsuleResp from a host",
            pdu(0x05, 0, 24, 0, 24, 24),
            Want::Term(HDR, Some(0)),
        ),
        (
            "C2HTermReq from a host",
            pdu(0x03, 0, 24, 0, 24, 24),
            Want::Term(HDR, Some(0)),
        ),
        (
            "CapsuleCmd HLEN 71",
            with(&|b| b[2] = 71),
            Want::Term(HDR, Some(2)),
        ),
        (
            "CapsuleCmd HLEN 24",
            pdu(0x04, 0, 24, 0, 24, 24),
            Want::Term(HDR, Some(2)),
        ),
        (
            "PLEN below HLEN",
            pdu(0x04, 0, 72, 0, 64, 72),
            Want::Term(HDR, Some(4)),
        ),
        (
            "PLEN above the PDU limit",
            pdu(0x04, 0, 72, 72, 0x0100_0000, 80),
            Want::Term(Fes::DATA_LIMIT_EXCEEDED, Some(0)),
        ),
        (
            "PDO misaligned",
            with(&|b| {
                b[3] = 74;
                b.truncate(74);
                b.extend_from_slice(&[0; 16]);
                b[4..8].copy_from_slice(&90u32.to_le_bytes());
            }),
            Want::Term(HDR, Some(3)),
        ),
        (
            "PDO inside the header",
            with(&|b| b[3] = 32),
            Want::Term(HDR, Some(3)),
        ),
        (
            "PDO past PLEN",
            with(&|b| b[3] = 200),
            Want::Term(HDR, Some(3)),
        ),
        (
            "PDO on a capsule without data",
            pdu(0x04, 0, 72, 8, 72, 72),
            Want::Term(HDR, Some(3)),
        ),
        (
            "HDGSTF not negotiated",
            with(&|b| b[1] = 0x01),
            Want::Term(HDR, Some(1)),
        ),
        (
            "DDGSTF not negotiated",
            with(&|b| {
                b[1] = 0x02;
                b.extend_from_slice(&[0; 4]);
                b[4..8].copy_from_slice(&92u32.to_le_bytes());
            }),
            Want::Term(HDR, Some(1)),
        ),
        (
            "LAST_PDU on a capsule",
            with(&|b| b[1] = 0x04),
            Want::Term(HDR, Some(1)),
        ),
        (
            "in-capsule data above the admin limit",
            oversized,
            Want::Term(Fes::DATA_LIMIT_EXCEEDED, Some(0)),
        ),
        (
            "H2CData with no write outstanding",
            h2c_unknown_ttag,
            Want::Term(HDR, Some(10)),
        ),
        (
            "H2CTermReq",
            {
                let mut b = pdu(0x02, 0, 24, 0, 24, 24);
                b[8] = 1;
                b
            },
            Want::Close,
        ),
        (
            "malformed H2CTermReq",
            pdu(0x02, 0, 24, 0, 200, 200),
            Want::Close,
        ),
    ];
    for (what, bytes, want) in cases {
        case(&t, Prep::Ic, &bytes, want, what).await;
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_pdus_on_an_io_queue() {
    let t = TestTarget::start(STD_YAML).await;
    // 8 KiB + 512 of in-capsule data: above IOCCSZ (8 KiB).
    let oversized = encode_established(&write_capsule(1, blocks(1, 0, 17, 512)));
    // H2CData above MAXH2CDATA (128 KiB).
    let p = digests(false, false);
    let too_long = encode_host(
        &Pdu::H2CData(H2CData {
            cccid: 1,
            ttag: 0,
            datao: 0,
            last: true,
            data: Bytes::from(vec![0u8; 128 * 1024 + 4]),
        }),
        p,
    );
    // DATAL that does not match PLEN - PDO.
    let mut datal = encode_established(&Pdu::H2CData(H2CData {
        cccid: 1,
        ttag: 0,
        datao: 0,
        last: true,
        data: Bytes::from(vec![0u8; 512]),
    }));
    datal[16..20].copy_from_slice(&256u32.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        (
            "in-capsule data above IOCCSZ",
            oversized,
            Want::Term(Fes::DATA_LIMIT_EXCEEDED, Some(0)),
        ),
        (
            "H2CData above MAXH2CDATA",
            too_long,
            Want::Term(Fes::DATA_LIMIT_EXCEEDED, Some(0)),
        ),
        (
            "H2CData DATAL != PLEN - PDO",
            datal,
            Want::Term(HDR, Some(16)),
        ),
        (
            "second ICReq on an I/O queue",
            icreq(0, 0),
            Want::Term(Fes::PDU_SEQUENCE_ERROR, Some(0)),
        ),
    ];
    for (what, bytes, want) in cases {
        case(&t, Prep::IoQueue, &bytes, want, what).await;
    }
    t.stop().await;
}

/// An I/O queue with a 16 KiB write (CID 1, 32 blocks at LBA 0) waiting for its data; returns
/// the controller, the queue and the R2T.
async fn pending_write(t: &TestTarget) -> (Controller, RawConn, codec::pdu::R2T) {
    let (ctrl, mut q) = raw_queue(t).await;
    let w = IoCommand::Write(Rw::new(NS_RAM512, 0, 32, 0));
    q.send_pdu(&io_capsule(&w, 1, Bytes::new(), 16 * 1024))
        .await
        .unwrap();
    let r2t = match q.recv().await.unwrap() {
        RawEvent::Pdu(Pdu::R2T(r)) => r,
        other => panic!("expected an R2T, got {other:?}"),
    };
    assert_eq!((r2t.cccid, r2t.r2to, r2t.r2tl), (1, 0, 16 * 1024));
    (ctrl, q, r2t)
}

fn h2c(cccid: u16, ttag: u16, datao: u32, len: usize, last: bool) -> Vec<u8> {
    let p = digests(false, false);
    encode_host(
        &Pdu::H2CData(H2CData {
            cccid,
            ttag,
            datao,
            last,
            data: Bytes::from(vec![0x5a; len]),
        }),
        p,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_h2c_data_for_an_outstanding_r2t() {
    let t = TestTarget::start(STD_YAML).await;
    type Make = fn(&codec::pdu::R2T) -> Vec<u8>;
    let cases: [(&str, Make, Want); 5] = [
        (
            "H2CData for an unknown TTAG",
            |r| h2c(r.cccid, r.ttag.wrapping_add(7), 0, 4096, false),
            Want::Term(HDR, Some(10)),
        ),
        (
            "H2CData whose CCCID is not the TTAG's command",
            |r| h2c(r.cccid + 1, r.ttag, 0, 4096, false),
            Want::Term(HDR, Some(8)),
        ),
        (
            "H2CData with a DATAO that skips data",
            |r| h2c(r.cccid, r.ttag, 512, 4096, false),
            Want::Term(Fes::DATA_OUT_OF_RANGE, Some(0)),
        ),
        (
            "H2CData beyond the R2T",
            |r| h2c(r.cccid, r.ttag, 0, 16 * 1024 + 512, true),
            Want::Term(Fes::DATA_OUT_OF_RANGE, Some(0)),
        ),
        (
            "H2CData going back over data already received",
            |r| {
                let mut b = h2c(r.cccid, r.ttag, 0, 4096, false);
                b.extend_from_slice(&h2c(r.cccid, r.ttag, 0, 4096, false));
                b
            },
            Want::Term(Fes::DATA_OUT_OF_RANGE, Some(0)),
        ),
    ];
    for (what, make, want) in cases {
        let (_ctrl, mut q, r2t) = pending_write(&t).await;
        let bytes = make(&r2t);
        send_all(&mut q, &bytes).await;
        match want {
            Want::Term(fes, fei) => expect_fatal(&mut q, fes, fei, what).await,
            Want::Close => expect_eof(&mut q, what).await,
        }
        assert_still_serving(t.addr).await;
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_data_after_the_write_completed() {
    let t = TestTarget::start(STD_YAML).await;
    let (_ctrl, mut q, r2t) = pending_write(&t).await;
    send_all(&mut q, &h2c(r2t.cccid, r2t.ttag, 0, 16 * 1024, true)).await;
    let cqe = recv_cqe(&mut q).await;
    assert!(cqe.status().is_success(), "{}", cqe.status());
    // The TTAG is spent: more data for it is a header field error at TTAG.
    send_all(&mut q, &h2c(r2t.cccid, r2t.ttag, 0, 512, true)).await;
    expect_fatal(&mut q, HDR, Some(10), "H2CData for a completed write").await;
    assert_still_serving(t.addr).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_pdu_then_close() {
    let t = TestTarget::start(STD_YAML).await;
    // Before the IC exchange, in the middle of the IC exchange, and mid-capsule on an I/O queue.
    let half_icreq = icreq(0, 0)[..60].to_vec();
    let half_capsule = encode_established(&write_capsule(3, blocks(1, 0, 8, 512)))[..100].to_vec();
    for (prep, bytes) in [
        (Prep::Tcp, half_icreq),
        (Prep::Ic, half_capsule.clone()),
        (Prep::IoQueue, half_capsule),
    ] {
        let (_ctrl, mut c) = prepare(&t, prep).await;
        c.send_bytes(&bytes).await.unwrap();
        within("half-close", c.stream_mut().shutdown())
            .await
            .unwrap();
        expect_eof(&mut c, &format!("{prep:?}: half a PDU then FIN")).await;
        assert_still_serving(t.addr).await;
    }
    // A connection that never says anything and goes away.
    let c = RawConn::connect(t.addr, RAW_TIMEOUT).await.unwrap();
    drop(c);
    assert_still_serving(t.addr).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_bad_connections_at_once() {
    // 32 connections sending garbage concurrently with good traffic: every bad one ends, the
    // good one is unaffected.
    let t = TestTarget::start(STD_YAML).await;
    let (c, q) = connect_with_io(t.addr, SUBNQN).await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..32u64 {
        let addr = t.addr;
        set.spawn(async move {
            let mut c = RawConn::connect(addr, RAW_TIMEOUT).await.unwrap();
            let mut st = i;
            let mut g: Vec<u8> = (0..300).map(|_| splitmix64(&mut st) as u8).collect();
            g[0] = 0x80 | (i as u8);
            send_all(&mut c, &g).await;
            match c.recv().await {
                Ok(RawEvent::Pdu(Pdu::C2HTermReq(t))) => assert_eq!(t.fes, HDR),
                other => panic!("garbage connection {i}: {other:?}"),
            }
            expect_eof(&mut c, "garbage connection").await;
        });
    }
    for i in 0..64u64 {
        let d = blocks(i, i * 8, 8, 512);
        q.write(NS_RAM512, i * 8, 512, d.clone(), false)
            .await
            .unwrap();
        assert_blocks(
            &q.read(NS_RAM512, i * 8, 8, 512).await.unwrap(),
            &d,
            i * 8,
            512,
            "good",
        );
    }
    while let Some(r) = within("bad connections", set.join_next()).await {
        r.unwrap();
    }
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

/// A raw I/O queue plus the controller it belongs to (kept alive by the caller).
async fn raw_queue(t: &TestTarget) -> (Controller, RawConn) {
    let ctrl = connect(t.addr, SUBNQN).await;
    ctrl.set_num_queues(1).await.unwrap();
    let q = raw_io_queue(&ctrl, 1, false, false).await;
    (ctrl, q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_command_errors_keep_the_connection() {
    let t = TestTarget::start(STD_YAML).await;
    let (_ctrl, mut q) = raw_queue(&t).await;
    let write = IoCommand::Write(Rw::new(NS_RAM512, 0, 1, 0));
    let data = blocks(9, 0, 1, 512);
    let mut cid = 100u16;
    let mut run = async |sqe_edit: &dyn Fn(&mut codec::nvme::Sqe), data: Bytes, want: Status| {
        cid += 1;
        let mut sqe = write.to_sqe(cid, SglDescriptor::in_capsule(512));
        sqe.set_cid(cid);
        sqe_edit(&mut sqe);
        q.send_pdu(&Pdu::CapsuleCmd(CapsuleCmd { sqe, data }))
            .await
            .unwrap();
        let cqe = recv_cqe(&mut q).await;
        assert_eq!(cqe.cid(), cid);
        assert_status(cqe.status(), want, Some(true));
    };
    // In-capsule data at an offset (ICDOFF is 0).
    let off = SglDescriptor::InCapsule {
        offset: 16,
        len: 512,
    }
    .to_bytes();
    run(
        &|s| s.set_dptr(off),
        data.clone(),
        Status::SGL_OFFSET_INVALID,
    )
    .await;
    // The SGL says 1024 bytes, the capsule carries 512.
    let long = SglDescriptor::in_capsule(1024).to_bytes();
    run(
        &|s| s.set_dptr(long),
        data.clone(),
        Status::SGL_INVALID_DATA_LEN,
    )
    .await;
    // A keyed SGL (RDMA) means nothing on TCP.
    let keyed = SglDescriptor::Keyed {
        addr: 0,
        len: 512,
        key: 1,
        invalidate: false,
    }
    .to_bytes();
    run(
        &|s| s.set_dptr(keyed),
        Bytes::new(),
        Status::SGL_INVALID_TYPE,
    )
    .await;
    // PRPs (PSDT 00b) cannot describe data on a fabric.
    run(
        &|s| s.set_flags(s.flags() & 0x3f),
        data.clone(),
        Status::INVALID_FIELD,
    )
    .await;
    // Fused operations are not supported.
    run(
        &|s| s.set_flags(s.flags() | 0x01),
        data.clone(),
        Status::INVALID_FIELD,
    )
    .await;
    // An I/O opcode we do not implement (Reservation Register), a vendor one.
    run(
        &|s| s.set_opcode(0x0d),
        Bytes::new(),
        Status::INVALID_OPCODE,
    )
    .await;
    run(
        &|s| s.set_opcode(0x81),
        Bytes::new(),
        Status::INVALID_OPCODE,
    )
    .await;
    // Reads: data comes back through C2HData, so only a Transport SGL of at least the
    // transfer length will do (a longer one is accepted: tests/tests/sgl.rs).
    let read = IoCommand::Read(Rw::new(NS_RAM512, 0, 1, 0));
    for (sgl, want) in [
        (SglDescriptor::in_capsule(512), Status::SGL_INVALID_TYPE),
        (SglDescriptor::transport(256), Status::SGL_INVALID_DATA_LEN),
    ] {
        cid += 1;
        let mut sqe = read.to_sqe(cid, sgl);
        sqe.set_cid(cid);
        q.send_pdu(&Pdu::CapsuleCmd(CapsuleCmd {
            sqe,
            data: Bytes::new(),
        }))
        .await
        .unwrap();
        let cqe = recv_cqe(&mut q).await;
        assert_eq!(cqe.cid(), cid);
        assert_status(cqe.status(), want, Some(true));
    }
    // After all of that the queue still writes and reads.
    q.send_pdu(&write_capsule(7, data.clone())).await.unwrap();
    assert!(recv_cqe(&mut q).await.status().is_success());
    q.send_pdu(&read_capsule(8)).await.unwrap();
    let (got, st) = raw_read_data(&mut q, 8).await;
    assert!(st.is_success());
    assert_blocks(&got, &data, 0, 512, "after per-command errors");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_block_others() {
    // A peer that connects and says nothing must not block anyone else.
    let t = TestTarget::start(STD_YAML).await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(RawConn::connect(t.addr, RAW_TIMEOUT).await.unwrap());
    }
    assert_still_serving(t.addr).await;
    drop(idle);
    t.stop().await;
}
