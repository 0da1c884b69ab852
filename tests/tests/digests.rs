//! Header and data digests (NVMe/TCP 1.0, section 3.6.2.1): negotiated in ICReq/ICResp, CRC32C
//! over every PDU header and every PDU's data. A bad header digest is fatal (the stream can no
//! longer be trusted); a bad data digest fails only its command, with Transient Transport Error,
//! and the connection carries on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::cast_possible_truncation)]

use bytes::Bytes;
use codec::nvme::Status;
use codec::nvme::cmd::{IoCommand, Rw};
use codec::nvme::fabrics::CNTLID_DYNAMIC;
use codec::pdu::{Fes, H2CData, IcReq, Pdu};
use tessera::initiator::{Controller, RawConn, RawEvent};
use tessera_tests::*;

/// Reads, writes (in-capsule and R2T), compare, write zeroes, flush, and admin commands, all
/// verified, over queues with the given digests.
async fn io_matrix(t: &TestTarget, hdgst: bool, ddgst: bool, incapsule: u32) {
    let mut o = ctrl_opts();
    o.transport.hdgst = hdgst;
    o.transport.ddgst = ddgst;
    o.io_incapsule_data_max = incapsule;
    let c = connect_as(t.addr, SUBNQN, HOSTNQN, &o).await.unwrap();
    assert_eq!(
        (c.admin().params().hdgst, c.admin().params().ddgst),
        (hdgst, ddgst),
        "digests negotiated as asked"
    );
    let id = c.identify_controller_parsed().await.unwrap();
    assert_eq!(id.subnqn, SUBNQN);
    c.get_log_page(codec::nvme::log::lid::SMART_HEALTH, 0, 512, 0)
        .await
        .unwrap();
    let qs = io_queues(&c, 2).await;
    let seed = u64::from(hdgst) * 2 + u64::from(ddgst);
    for (i, q) in qs.iter().enumerate() {
        for (nsid, bs, counts) in [
            (NS_RAM512, 512u32, &[1u32, 8, 9, 16, 17, 64, 255, 256][..]),
            (NS_RAM4K, 4096, &[1, 2, 3, 16, 32][..]),
        ] {
            let mut slba = 1000 * i as u64;
            for &nlb in counts {
                let d = blocks(seed * 100 + u64::from(nlb), slba, nlb, bs);
                q.write(nsid, slba, bs, d.clone(), nlb % 2 == 0)
                    .await
                    .unwrap();
                let got = q.read(nsid, slba, nlb, bs).await.unwrap();
                assert_blocks(&got, &d, slba, bs, &format!("digests {hdgst}/{ddgst}"));
                q.compare(nsid, slba, bs, d).await.unwrap();
                slba += u64::from(nlb);
            }
            q.write_zeroes(nsid, 1000 * i as u64, 4, false)
                .await
                .unwrap();
            assert_zero(
                &q.read(nsid, 1000 * i as u64, 4, bs).await.unwrap(),
                "zeroed with digests",
            );
            q.flush(nsid).await.unwrap();
        }
        q.close().await;
    }
    c.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_digest_combination_carries_the_full_io_matrix() {
    let t = TestTarget::start(STD_YAML).await;
    let small = TestTarget::start_with(STD_YAML, small_limits(), 1).await;
    for (h, d) in [(true, false), (false, true), (true, true)] {
        io_matrix(&t, h, d, 8192).await;
        io_matrix(&small, h, d, 4096).await;
    }
    t.stop().await;
    small.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_header_digest_is_fatal() {
    let t = TestTarget::start(STD_YAML).await;
    // On the first capsule (Connect) of an admin queue: flip a bit inside the SQE (CDW10).
    let mut c = raw_ic(t.addr, true, false).await;
    let admin_connect = connect_pdu(
        1,
        connect_cmd(0, 31, 0),
        &connect_data(SUBNQN, HOSTNQN, CNTLID_DYNAMIC),
    );
    let mut b = encode_host(&admin_connect, digests(true, false));
    b[8 + 40] ^= 0x10;
    c.send_bytes(&b).await.unwrap();
    expect_fatal(
        &mut c,
        Fes::HDR_DIGEST_ERROR,
        None,
        "bad header digest on Connect",
    )
    .await;
    assert_still_serving(t.addr).await;

    // On an I/O queue: the digest itself damaged, on a read capsule and on H2CData.
    let ctrl = connect(t.addr, SUBNQN).await;
    ctrl.set_num_queues(2).await.unwrap();
    let mut q = raw_io_queue(&ctrl, 1, true, true).await;
    let read = io_capsule(
        &IoCommand::Read(Rw::new(NS_RAM512, 0, 1, 0)),
        3,
        Bytes::new(),
        512,
    );
    let mut b = encode_host(&read, digests(true, true));
    b[72] ^= 0x01; // first byte of HDGST
    q.send_bytes(&b).await.unwrap();
    expect_fatal(&mut q, Fes::HDR_DIGEST_ERROR, None, "bad HDGST on a read").await;

    let mut q = raw_io_queue(&ctrl, 2, true, true).await;
    let w = IoCommand::Write(Rw::new(NS_RAM512, 0, 32, 0));
    q.send_bytes(&encode_host(
        &io_capsule(&w, 4, Bytes::new(), 16384),
        digests(true, true),
    ))
    .await
    .unwrap();
    let r2t = match q.recv().await.unwrap() {
        RawEvent::Pdu(Pdu::R2T(r)) => r,
        other => panic!("expected an R2T, got {other:?}"),
    };
    let h2c = Pdu::H2CData(H2CData {
        cccid: 4,
        ttag: r2t.ttag,
        datao: 0,
        last: true,
        data: blocks(1, 0, 32, 512),
    });
    let mut b = encode_host(&h2c, digests(true, true));
    b[12] ^= 0x80; // DATAO, covered by HDGST
    q.send_bytes(&b).await.unwrap();
    expect_fatal(
        &mut q,
        Fes::HDR_DIGEST_ERROR,
        None,
        "bad header digest on H2CData",
    )
    .await;
    ctrl.disconnect().await.unwrap();
    assert_still_serving(t.addr).await;
    t.stop().await;
}

/// Reads `nlb` blocks at `slba` through `q` (CID `cid`) and returns them.
async fn raw_read(q: &mut RawConn, cid: u16, slba: u64, nlb: u32, params: (bool, bool)) -> Vec<u8> {
    let r = io_capsule(
        &IoCommand::Read(Rw::new(NS_RAM512, slba, nlb, 0)),
        cid,
        Bytes::new(),
        nlb * 512,
    );
    q.send_bytes(&encode_host(&r, digests(params.0, params.1)))
        .await
        .unwrap();
    let (got, st) = raw_read_data(q, cid).await;
    assert!(st.is_success(), "read: {st}");
    got
}

async fn ddgst_queue(t: &TestTarget, hdgst: bool) -> (Controller, RawConn) {
    let ctrl = connect(t.addr, SUBNQN).await;
    ctrl.set_num_queues(1).await.unwrap();
    let q = raw_io_queue(&ctrl, 1, hdgst, true).await;
    (ctrl, q)
}

#[track_caller]
fn assert_transient(cqe: &codec::nvme::Cqe, cid: u16, what: &str) {
    assert_eq!(cqe.cid(), cid, "{what}: CID");
    assert_status(cqe.status(), Status::TRANSIENT_TRANSPORT_ERROR, Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_data_digest_in_a_capsule_fails_only_that_command() {
    let t = TestTarget::start(STD_YAML).await;
    for hdgst in [false, true] {
        let (_ctrl, mut q) = ddgst_queue(&t, hdgst).await;
        let p = digests(hdgst, true);
        let data = blocks(5, 64, 8, 512);
        let w = IoCommand::Write(Rw::new(NS_RAM512, 64, 8, 0));
        let mut b = encode_host(&io_capsule(&w, 10, data.clone(), 0), p);
        let last = b.len() - 1;
        b[last] ^= 0xff; // DDGST
        q.send_bytes(&b).await.unwrap();
        let cqe = recv_cqe(&mut q).await;
        assert_transient(&cqe, 10, "in-capsule data digest");
        // Nothing was written, and the connection goes on.
        assert_zero(
            &raw_read(&mut q, 11, 64, 8, (hdgst, true)).await,
            "after a refused write",
        );
        q.send_bytes(&encode_host(&io_capsule(&w, 12, data.clone(), 0), p))
            .await
            .unwrap();
        assert!(recv_cqe(&mut q).await.status().is_success());
        let got = raw_read(&mut q, 13, 64, 8, (hdgst, true)).await;
        assert_blocks(&got, &data, 64, 512, "write after a digest error");
        // Clean up for the next round.
        let wz = codec::nvme::cmd::WriteZeroes {
            nsid: NS_RAM512,
            slba: 64,
            nlb: 8,
            deac: false,
            fua: false,
            lr: false,
            generation: None,
            expires: 0,
        };
        q.send_bytes(&encode_host(
            &io_capsule(&IoCommand::WriteZeroes(wz), 14, Bytes::new(), 0),
            p,
        ))
        .await
        .unwrap();
        assert!(recv_cqe(&mut q).await.status().is_success());
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_data_digest_in_h2c_data_fails_only_that_command() {
    let t = TestTarget::start(STD_YAML).await;
    let (_ctrl, mut q) = ddgst_queue(&t, true).await;
    let p = digests(true, true);
    let data = blocks(6, 128, 32, 512);
    let w = IoCommand::Write(Rw::new(NS_RAM512, 128, 32, 0));
    for (cid, corrupt) in [(20u16, true), (21, false)] {
        q.send_bytes(&encode_host(&io_capsule(&w, cid, Bytes::new(), 16384), p))
            .await
            .unwrap();
        let r2t = match q.recv().await.unwrap() {
            RawEvent::Pdu(Pdu::R2T(r)) => r,
            other => panic!("expected an R2T, got {other:?}"),
        };
        assert_eq!((r2t.cccid, r2t.r2tl), (cid, 16384));
        let h2c = Pdu::H2CData(H2CData {
            cccid: cid,
            ttag: r2t.ttag,
            datao: 0,
            last: true,
            data: data.clone(),
        });
        let mut b = encode_host(&h2c, p);
        if corrupt {
            let i = b.len() - 2;
            b[i] ^= 0x01;
        }
        q.send_bytes(&b).await.unwrap();
        let cqe = recv_cqe(&mut q).await;
        if corrupt {
            assert_transient(&cqe, cid, "H2CData data digest");
            assert_zero(
                &raw_read(&mut q, 30, 128, 32, (true, true)).await,
                "refused write",
            );
        } else {
            assert!(cqe.status().is_success(), "{}", cqe.status());
            let got = raw_read(&mut q, 31, 128, 32, (true, true)).await;
            assert_blocks(&got, &data, 128, 512, "write after a digest error");
        }
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_data_digest_in_one_of_several_h2c_pdus() {
    // MAXH2CDATA 4 KiB: one 8 KiB R2T is answered with two H2CData PDUs, sent back to back as
    // any host does. The first has a bad data digest. NVMe/TCP 1.0, section 3.6.2.1: the
    // command completes with Transient Transport Error and the connection is kept, so the rest
    // of that transfer must be dropped quietly rather than treated as a protocol violation.
    let t = TestTarget::start_with(STD_YAML, small_limits(), 1).await;
    let (_ctrl, mut q) = ddgst_queue(&t, false).await;
    let p = digests(false, true);
    let data = blocks(7, 0, 16, 512);
    let w = IoCommand::Write(Rw::new(NS_RAM512, 0, 16, 0));
    q.send_bytes(&encode_host(&io_capsule(&w, 40, Bytes::new(), 8192), p))
        .await
        .unwrap();
    let r2t = match q.recv().await.unwrap() {
        RawEvent::Pdu(Pdu::R2T(r)) => r,
        other => panic!("expected an R2T, got {other:?}"),
    };
    assert_eq!(r2t.r2tl, 8192);
    let mut bytes = Vec::new();
    for (i, off) in [0usize, 4096].into_iter().enumerate() {
        let mut b = encode_host(
            &Pdu::H2CData(H2CData {
                cccid: 40,
                ttag: r2t.ttag,
                datao: off as u32,
                last: off == 4096,
                data: data.slice(off..off + 4096),
            }),
            p,
        );
        if i == 0 {
            let last = b.len() - 1;
            b[last] ^= 0x20;
        }
        bytes.extend_from_slice(&b);
    }
    q.send_bytes(&bytes).await.unwrap();
    match q.recv().await {
        Ok(RawEvent::Pdu(Pdu::CapsuleResp(r))) => assert_transient(&r.cqe, 40, "first H2CData"),
        other => panic!("expected the command's completion, got {other:?}"),
    }
    // The connection keeps working.
    let got = raw_read(&mut q, 41, 0, 16, (false, true)).await;
    assert_eq!(got.len(), 8192);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2h_data_honours_the_hosts_pdu_data_alignment() {
    // ICReq HPDA asks for (HPDA + 1) * 4-byte alignment of C2HData data (PDO).
    let t = TestTarget::start(STD_YAML).await;
    let ctrl = connect(t.addr, SUBNQN).await;
    ctrl.set_num_queues(2).await.unwrap();
    for (qid, hpda, hdgst) in [(1u16, 7u8, false), (2, 31, true)] {
        let ic = IcReq {
            pfv: 0,
            hpda,
            hdgst,
            ddgst: false,
            maxr2t: 0,
        };
        let mut q = raw_io_queue_ic(&ctrl, qid, ic).await;
        // Read through the raw stream to see the PDO the target chose.
        let r = io_capsule(
            &IoCommand::Read(Rw::new(NS_RAM512, 0, 2, 0)),
            1,
            Bytes::new(),
            1024,
        );
        q.send_bytes(&encode_host(&r, digests(hdgst, false)))
            .await
            .unwrap();
        let mut head = [0u8; 8];
        tokio::io::AsyncReadExt::read_exact(q.stream_mut(), &mut head)
            .await
            .unwrap();
        assert_eq!(head[0], 0x07, "a C2HData PDU");
        let pdo = usize::from(head[3]);
        let align = (usize::from(hpda) + 1) * 4;
        assert_eq!(pdo % align, 0, "PDO {pdo} with HPDA {hpda}");
        assert!(
            pdo >= 24 + if hdgst { 4 } else { 0 },
            "PDO {pdo} inside the header"
        );
    }
    ctrl.disconnect().await.unwrap();
    t.stop().await;
}
