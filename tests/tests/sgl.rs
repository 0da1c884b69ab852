//! The one SGL rule (docs/transport.md): a data SGL longer than what the command transfers is
//! accepted and only the needed bytes move; a shorter one is Data SGL Length Invalid (DNR).
//! Dataset Management as Linux sends it (a 4 KiB range buffer for fewer ranges), in-capsule
//! and through R2T; reads and writes with longer SGLs; a raised MDTS; the YAML `transport:`
//! section reaching Identify.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::cast_possible_truncation)]

use bytes::Bytes;
use codec::nvme::Status;
use codec::nvme::cmd::{DatasetManagement, DsmRange, IoCommand, Rw};
use codec::nvme::sgl::SglDescriptor;
use codec::pdu::{CapsuleCmd, Pdu, R2T};
use tessera::initiator::{Controller, Queue, RawConn, RawEvent};
use tessera::transport::TransportConfig;
use tessera_tests::*;

const BS: u32 = 512;

/// A controller with I/O queue 1 through the initiator (to write and check data) and I/O
/// queue 2 as a raw connection (to send hand-made capsules).
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

/// A capsule for `cmd` whose SGL1 is `sgl` (whatever length the command needs) and whose
/// in-capsule data is `data`.
fn capsule(cmd: &IoCommand, cid: u16, sgl: SglDescriptor, data: Bytes) -> Pdu {
    let mut sqe = cmd.to_sqe(cid, sgl);
    sqe.set_cid(cid);
    Pdu::CapsuleCmd(CapsuleCmd { sqe, data })
}

/// Deallocate `nr` ranges on NS 1.
fn dsm(nr: u16) -> IoCommand {
    IoCommand::DatasetManagement(DatasetManagement {
        nsid: NS_RAM512,
        nr,
        ad: true,
        idw: false,
        idr: false,
        generation: None,
        expires: 0,
    })
}

/// A 4 KiB range buffer as Linux sends it: the first two ranges are the command's (NR = 2:
/// blocks base..base+8 and base+16..base+24); the third (base+32..base+40) lies beyond what
/// NR covers and must not be deallocated.
fn range_page(base: u64) -> Bytes {
    let mut page = vec![0u8; 4096];
    for (i, slba) in [base, base + 16, base + 32].into_iter().enumerate() {
        let r = DsmRange {
            cattr: 0,
            nlb: 8,
            slba,
        };
        page[i * 16..i * 16 + 16].copy_from_slice(&r.to_bytes());
    }
    Bytes::from(page)
}

/// Fills blocks base..base+48 with a pattern.
async fn fill(q: &Queue, base: u64) -> Bytes {
    let data = blocks(base, base, 48, BS);
    within("fill", q.write(NS_RAM512, base, BS, data.clone(), false))
        .await
        .unwrap();
    data
}

/// Blocks base..base+48 after a DSM of [`range_page`]'s first two ranges (DLFEAT: our
/// deallocated blocks read as zeros), or unchanged when `deallocated` is false.
async fn check_after(q: &Queue, base: u64, data: &Bytes, deallocated: bool, what: &str) {
    let got = within("read back", q.read(NS_RAM512, base, 48, BS))
        .await
        .unwrap();
    for blk in 0..48u64 {
        let r = (blk * 512) as usize..((blk + 1) * 512) as usize;
        let gone = deallocated && ((0..8).contains(&blk) || (16..24).contains(&blk));
        if gone {
            assert_zero(&got[r], &format!("{what}: block {blk} deallocated"));
        } else {
            assert_blocks(
                &got[r.clone()],
                &data[r],
                base + blk,
                BS,
                &format!("{what}: block {blk} untouched"),
            );
        }
    }
}

async fn expect_status(raw: &mut RawConn, cid: u16) -> Status {
    let cqe = within("response", recv_cqe(raw)).await;
    assert_eq!(cqe.cid(), cid);
    cqe.status()
}

async fn expect_r2t(raw: &mut RawConn) -> R2T {
    match within("R2T", raw.recv()).await {
        Ok(RawEvent::Pdu(Pdu::R2T(r))) => r,
        other => panic!("expected an R2T, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsm_range_buffer_longer_than_nr_ranges_is_accepted_and_only_nr_ranges_used() {
    let t = TestTarget::start(STD_YAML).await;
    let (ctrl, q, mut raw) = setup(&t).await;
    let page = range_page(0);
    let base_of = |i: u64| i * 64;

    // Shorter than NR ranges (16 of 32 bytes): refused, in-capsule and through R2T, and nothing
    // is deallocated.
    let data = fill(&q, base_of(0)).await;
    let short = range_page(base_of(0)).slice(..16);
    raw.send_pdu(&capsule(&dsm(2), 10, SglDescriptor::in_capsule(16), short))
        .await
        .unwrap();
    let st = expect_status(&mut raw, 10).await;
    assert_status(st, Status::SGL_INVALID_DATA_LEN, Some(true));
    raw.send_pdu(&capsule(
        &dsm(2),
        11,
        SglDescriptor::transport(16),
        Bytes::new(),
    ))
    .await
    .unwrap();
    let st = expect_status(&mut raw, 11).await;
    assert_status(st, Status::SGL_INVALID_DATA_LEN, Some(true));
    check_after(&q, base_of(0), &data, false, "short SGL").await;

    // An in-capsule descriptor that does not match the capsule's data: refused.
    raw.send_pdu(&capsule(
        &dsm(2),
        12,
        SglDescriptor::in_capsule(4096),
        page.slice(..32),
    ))
    .await
    .unwrap();
    let st = expect_status(&mut raw, 12).await;
    assert_status(st, Status::SGL_INVALID_DATA_LEN, Some(true));

    // Exactly NR ranges, in-capsule.
    let base = base_of(1);
    let data = fill(&q, base).await;
    let exact = range_page(base).slice(..32);
    raw.send_pdu(&capsule(&dsm(2), 13, SglDescriptor::in_capsule(32), exact))
        .await
        .unwrap();
    assert_eq!(expect_status(&mut raw, 13).await, Status::SUCCESS);
    check_after(&q, base, &data, true, "exact in-capsule").await;

    // A 4 KiB buffer (what Linux sends), in-capsule: only the first two ranges count.
    let base = base_of(2);
    let data = fill(&q, base).await;
    raw.send_pdu(&capsule(
        &dsm(2),
        14,
        SglDescriptor::in_capsule(4096),
        range_page(base),
    ))
    .await
    .unwrap();
    assert_eq!(expect_status(&mut raw, 14).await, Status::SUCCESS);
    check_after(&q, base, &data, true, "4 KiB in-capsule").await;

    // A 4 KiB buffer through R2T: only NR * 16 bytes are solicited.
    let base = base_of(3);
    let data = fill(&q, base).await;
    raw.send_pdu(&capsule(
        &dsm(2),
        15,
        SglDescriptor::transport(4096),
        Bytes::new(),
    ))
    .await
    .unwrap();
    let r2t = expect_r2t(&mut raw).await;
    assert_eq!(
        (r2t.cccid, r2t.r2to, r2t.r2tl),
        (15, 0, 32),
        "R2T for NR ranges only"
    );
    raw_answer_r2t(&mut raw, &r2t, &range_page(base), 4096).await;
    assert_eq!(expect_status(&mut raw, 15).await, Status::SUCCESS);
    check_after(&q, base, &data, true, "4 KiB via R2T").await;

    // Exactly NR ranges through R2T.
    let base = base_of(4);
    let data = fill(&q, base).await;
    raw.send_pdu(&capsule(
        &dsm(2),
        16,
        SglDescriptor::transport(32),
        Bytes::new(),
    ))
    .await
    .unwrap();
    let r2t = expect_r2t(&mut raw).await;
    assert_eq!(r2t.r2tl, 32);
    raw_answer_r2t(&mut raw, &r2t, &range_page(base), 4096).await;
    assert_eq!(expect_status(&mut raw, 16).await, Status::SUCCESS);
    check_after(&q, base, &data, true, "exact via R2T").await;

    let _ = page;
    drop(q);
    ctrl.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_with_a_longer_sgl_move_only_their_blocks() {
    let t = TestTarget::start(STD_YAML).await;
    let (ctrl, q, mut raw) = setup(&t).await;
    // Blocks 0..16 hold a pattern; 8-block writes with 8 KiB SGLs must touch 0..8 only.
    let before = blocks(7, 0, 16, BS);
    within("fill", q.write(NS_RAM512, 0, BS, before.clone(), false))
        .await
        .unwrap();
    let new = blocks(8, 0, 16, BS);
    let write = IoCommand::Write(Rw::new(NS_RAM512, 0, 8, 0));
    // In-capsule: the capsule carries what its SGL says (8 KiB); the first 4 KiB are written.
    raw.send_pdu(&capsule(
        &write,
        20,
        SglDescriptor::in_capsule(8192),
        new.clone(),
    ))
    .await
    .unwrap();
    assert_eq!(expect_status(&mut raw, 20).await, Status::SUCCESS);
    let got = within("read", q.read(NS_RAM512, 0, 16, BS)).await.unwrap();
    assert_blocks(&got[..4096], &new[..4096], 0, BS, "in-capsule write");
    assert_blocks(&got[4096..], &before[4096..], 8, BS, "beyond the write");

    // Through R2T: only 4 KiB solicited.
    let write = IoCommand::Write(Rw::new(NS_RAM512, 8, 8, 0));
    raw.send_pdu(&capsule(
        &write,
        21,
        SglDescriptor::transport(8192),
        Bytes::new(),
    ))
    .await
    .unwrap();
    let r2t = expect_r2t(&mut raw).await;
    assert_eq!((r2t.r2to, r2t.r2tl), (0, 4096));
    let second = new.slice(4096..);
    raw_answer_r2t(&mut raw, &r2t, &second, 4096).await;
    assert_eq!(expect_status(&mut raw, 21).await, Status::SUCCESS);
    let got = within("read", q.read(NS_RAM512, 0, 16, BS)).await.unwrap();
    assert_blocks(&got, &new, 0, BS, "both writes");

    // A read of 8 blocks with a 64 KiB SGL: 4 KiB of C2HData, then success.
    let read = IoCommand::Read(Rw::new(NS_RAM512, 0, 8, 0));
    raw.send_pdu(&capsule(
        &read,
        22,
        SglDescriptor::transport(65536),
        Bytes::new(),
    ))
    .await
    .unwrap();
    let (data, st) = within("read data", raw_read_data(&mut raw, 22)).await;
    assert_eq!(st, Status::SUCCESS);
    assert_eq!(data.len(), 4096, "only the blocks read are sent");
    assert_blocks(&data, &new[..4096], 0, BS, "longer-SGL read");
    // A shorter read SGL is refused.
    raw.send_pdu(&capsule(
        &read,
        23,
        SglDescriptor::transport(4095),
        Bytes::new(),
    ))
    .await
    .unwrap();
    let st = expect_status(&mut raw, 23).await;
    assert_status(st, Status::SGL_INVALID_DATA_LEN, Some(true));
    drop(q);
    ctrl.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_mdts_carries_1_mib_and_refuses_more() {
    let cfg = TransportConfig::with_limits(1 << 20, 8192);
    let t = TestTarget::start_with(STD_YAML, cfg, 1).await;
    let (ctrl, q) = connect_with_io(t.addr, SUBNQN).await;
    let id = within("identify", ctrl.identify_controller_parsed())
        .await
        .unwrap();
    assert_eq!(id.mdts, 8, "1 MiB = 2^8 pages of 4 KiB");
    let nlb = (1u32 << 20) / BS;
    let data = blocks(99, 0, nlb, BS);
    within(
        "1 MiB write",
        q.write(NS_RAM512, 0, BS, data.clone(), false),
    )
    .await
    .unwrap();
    let got = within("1 MiB read", q.read(NS_RAM512, 0, nlb, BS))
        .await
        .unwrap();
    assert_blocks(&got, &data, 0, BS, "1 MiB round trip");
    // One block more than MDTS: Invalid Field, both ways.
    let big = blocks(5, 0, nlb + 1, BS);
    let st = status_of(within("write", q.write(NS_RAM512, 0, BS, big, false)).await);
    assert_status(st, Status::INVALID_FIELD, Some(true));
    let st = status_of(within("read", q.read(NS_RAM512, 0, nlb + 1, BS)).await);
    assert_status(st, Status::INVALID_FIELD, Some(true));
    drop(q);
    ctrl.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_yaml_transport_section_reaches_identify() {
    let yaml =
        format!("{STD_YAML}transport:\n  max_io_size: 2MiB\n  in_capsule_data_size: 16KiB\n");
    let layout = yaml::parse_str("t.yaml", &yaml).unwrap();
    let cfg = tessera::config::transport_config(&layout);
    assert_eq!((cfg.mdts_bytes, cfg.io_incapsule), (2 << 20, 16384));
    let t = TestTarget::start_with(&yaml, cfg, 1).await;
    let (ctrl, q) = connect_with_io(t.addr, SUBNQN).await;
    let id = within("identify", ctrl.identify_controller_parsed())
        .await
        .unwrap();
    assert_eq!(id.mdts, 9, "2 MiB = 2^9 pages of 4 KiB");
    assert_eq!(id.ioccsz, (64 + 16384) / 16);
    // A 16 KiB write (in-capsule for a host that follows IOCCSZ) lands.
    let data = blocks(3, 0, 32, BS);
    within(
        "16 KiB write",
        q.write(NS_RAM512, 0, BS, data.clone(), false),
    )
    .await
    .unwrap();
    let got = within("read", q.read(NS_RAM512, 0, 32, BS)).await.unwrap();
    assert_blocks(&got, &data, 0, BS, "16 KiB in-capsule write");
    // Without the section: today's defaults.
    let layout = yaml::parse_str("t.yaml", STD_YAML).unwrap();
    let d = tessera::config::transport_config(&layout);
    assert_eq!((d.mdts_bytes, d.io_incapsule), (128 * 1024, 8192));
    drop(q);
    ctrl.disconnect().await.unwrap();
    t.stop().await;
}
