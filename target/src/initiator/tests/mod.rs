//! Tests of the initiator without the real target: byte vectors, and a fake target on a
//! loopback listener ([`fake`]) that drives every path of the state machine.

mod fake;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codec::nvme::Status;
use codec::pdu::{CapsuleCmd, ConnParams, Fes, IcReq, IcResp, Pdu, PduCodec, Role};
use tokio::task::JoinSet;
use tokio_util::codec::Encoder;

use super::queue::{check_icresp, connect_capsule};
use super::*;
use codec::nvme::log::{DISCOVERY_ENTRY_LEN, DISCOVERY_HEADER_LEN};
use fake::{FakeOpts, Misbehave};

const HOSTNQN: &str = "nqn.2014-08.org.example:host-1";
const SUBNQN: &str = "nqn.2014-08.org.example:subsys-1";
const NSID: u32 = 1;
const LBA: u32 = 512;

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| {
            u8::try_from(i % 251)
                .unwrap_or(0)
                .wrapping_mul(7)
                .wrapping_add(seed)
        })
        .collect::<Vec<u8>>()
        .into()
}

#[test]
fn connect_capsule_bytes() {
    let opts = QueueOptions::admin(SUBNQN, HOSTNQN);
    let (mut sqe, data) = connect_capsule(&opts);
    sqe.set_cid(0x0042);
    let mut codec = PduCodec::new_established(Role::Host, ConnParams::default());
    let mut out = BytesMut::new();
    codec
        .encode(Pdu::CapsuleCmd(CapsuleCmd { sqe, data }), &mut out)
        .expect("encodable");
    // CH: CapsuleCmd, no flags, HLEN 72, PDO 72, PLEN 72 + 1024.
    assert_eq!(&out[..8], &[0x04, 0x00, 72, 72, 0x48, 0x04, 0x00, 0x00]);
    let s = &out[8..72];
    assert_eq!(s[0], 0x7f, "Fabrics opcode");
    assert_eq!(s[1], 0x40, "PSDT = SGL");
    assert_eq!(&s[2..4], &[0x42, 0x00], "CID");
    assert_eq!(s[4], 0x01, "FCTYPE Connect");
    // SGL1: Data Block, Offset subtype, 1024 bytes at offset 0.
    assert_eq!(&s[24..32], &[0; 8]);
    assert_eq!(&s[32..36], &1024u32.to_le_bytes());
    assert_eq!(s[39], 0x01);
    assert_eq!(&s[40..42], &[0, 0], "RECFMT");
    assert_eq!(&s[42..44], &[0, 0], "QID");
    assert_eq!(&s[44..46], &31u16.to_le_bytes(), "SQSIZE");
    assert_eq!(s[46], 0x04, "CATTR: SQ flow control disabled");
    assert_eq!(&s[48..52], &5000u32.to_le_bytes(), "KATO");
    let d = &out[72..];
    assert_eq!(d.len(), 1024);
    assert_eq!(&d[..16], &hostid_from_nqn(HOSTNQN));
    assert_eq!(&d[16..18], &[0xff, 0xff], "CNTLID dynamic");
    assert_eq!(&d[256..256 + SUBNQN.len()], SUBNQN.as_bytes());
    assert_eq!(d[256 + SUBNQN.len()], 0);
    assert_eq!(&d[512..512 + HOSTNQN.len()], HOSTNQN.as_bytes());
}

#[test]
fn icresp_is_checked_like_linux() {
    let req = IcReq {
        pfv: 0,
        hpda: 0,
        hdgst: true,
        ddgst: false,
        maxr2t: 0,
    };
    let good = IcResp {
        pfv: 0,
        cpda: 0,
        hdgst: true,
        ddgst: false,
        maxh2cdata: 4096,
    };
    assert!(check_icresp(&req, &good).is_ok());
    for bad in [
        IcResp { cpda: 1, ..good },
        IcResp {
            hdgst: false,
            ..good
        },
        IcResp {
            ddgst: true,
            ..good
        },
        IcResp {
            maxh2cdata: 4092,
            ..good
        },
        IcResp {
            maxh2cdata: 8190,
            ..good
        },
        IcResp { pfv: 1, ..good },
    ] {
        assert!(
            matches!(
                check_icresp(&req, &bad),
                Err(InitiatorError::Protocol { .. })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn hostid_is_stable_and_a_v4_uuid() {
    let a = hostid_from_nqn(HOSTNQN);
    assert_eq!(a, hostid_from_nqn(HOSTNQN));
    assert_ne!(a, hostid_from_nqn("nqn.2014-08.org.example:host-2"));
    assert_eq!(a[6] >> 4, 4);
    assert_eq!(a[8] >> 6, 0b10);
}

#[test]
fn async_event_dw0() {
    let e = AsyncEvent::from_dw0(0x000c_0302);
    assert_eq!(e.event_type, AsyncEvent::TYPE_NOTICE);
    assert_eq!(e.event_info, AsyncEvent::NOTICE_ANA_CHANGE);
    assert_eq!(e.log_page, 0x0c);
}

#[test]
fn discovery_log_is_parsed_strictly() {
    use codec::nvme::log::DiscoveryLogEntry;
    let entry = |portid| DiscoveryLogEntry {
        trtype: 3,
        adrfam: 1,
        subtype: 2,
        portid,
        cntlid: 0xffff,
        trsvcid: "4420".into(),
        subnqn: SUBNQN.into(),
        traddr: "127.0.0.1".into(),
        ..DiscoveryLogEntry::default()
    };
    let log = DiscoveryLog {
        genctr: 9,
        recfmt: 0,
        entries: vec![entry(1), entry(2)],
    };
    let page = log.to_bytes();
    assert_eq!(parse_discovery_log(&page).expect("whole page"), log);
    // NUMREC says 2 but only one entry is there.
    let short = parse_discovery_log(&page[..DISCOVERY_HEADER_LEN + DISCOVERY_ENTRY_LEN]);
    assert!(matches!(short, Err(InitiatorError::Protocol { .. })));
}

async fn bring_up(f: FakeOpts, transport: TransportOptions) -> (Controller, Queue) {
    let addr = fake::spawn(f).await;
    let opts = ControllerOptions {
        transport,
        ..ControllerOptions::default()
    };
    let ctrl = Controller::connect(addr, SUBNQN, HOSTNQN, &opts)
        .await
        .expect("admin connect");
    assert_eq!(ctrl.cntlid(), fake::CNTLID);
    ctrl.enable().await.expect("enable");
    let io = ctrl
        .connect_io_queue(1, 31)
        .await
        .expect("I/O queue connect");
    assert_eq!((io.qid(), io.cntlid(), io.depth()), (1, fake::CNTLID, 32));
    (ctrl, io)
}

async fn exercise(ctrl: &Controller, io: &Queue) {
    let id = ctrl.identify_controller().await.expect("identify");
    assert_eq!((id.len(), id[0]), (4096, 1));
    assert_eq!(ctrl.active_ns_list(0).await.expect("ns list"), vec![1]);
    assert_eq!(ctrl.set_num_queues(8).await.expect("queues"), 4);
    ctrl.keep_alive().await.expect("keep alive");

    // In-capsule (4 KiB <= 8 KiB), then R2T (64 KiB: 4 R2Ts of 16 KiB, 4 KiB H2CData each).
    let small = pattern(4096, 1);
    io.write(NSID, 0, LBA, small.clone(), false)
        .await
        .expect("small write");
    let big = pattern(64 * 1024, 2);
    io.write(NSID, 64, LBA, big.clone(), true)
        .await
        .expect("R2T write");
    assert_eq!(io.read(NSID, 0, 8, LBA).await.expect("read"), small);
    assert_eq!(io.read(NSID, 64, 128, LBA).await.expect("read"), big);
    io.compare(NSID, 64, LBA, big.clone())
        .await
        .expect("compare equal");
    let cmp = io.compare(NSID, 64, LBA, pattern(64 * 1024, 3)).await;
    assert!(matches!(cmp, Err(InitiatorError::Status(s)) if s.same_code(Status::COMPARE_FAILURE)));
    io.flush(NSID).await.expect("flush");
    let oob = io.read(NSID, 1 << 40, 1, LBA).await;
    assert!(matches!(oob, Err(InitiatorError::Status(s)) if s.same_code(Status::LBA_RANGE)));
    // The queue survives a failed command.
    assert_eq!(
        io.read(NSID, 0, 1, LBA).await.expect("read"),
        small.slice(..512)
    );
}

#[tokio::test]
async fn end_to_end_no_digests() {
    let (ctrl, io) = bring_up(FakeOpts::default(), TransportOptions::default()).await;
    exercise(&ctrl, &io).await;
    io.close().await;
    ctrl.disconnect().await.expect("disconnect");
}

#[tokio::test]
async fn end_to_end_with_digests_and_response_capsules() {
    let t = TransportOptions {
        hdgst: true,
        ddgst: true,
        ..TransportOptions::default()
    };
    let f = FakeOpts {
        success_flag: false,
        c2h_chunk: 3000,
        r2t_chunk: 10000,
        ..FakeOpts::default()
    };
    let (ctrl, io) = bring_up(f, t).await;
    assert!(io.params().hdgst && io.params().ddgst);
    exercise(&ctrl, &io).await;
}

#[tokio::test]
async fn many_commands_in_flight_on_one_queue() {
    let (_ctrl, io) = bring_up(FakeOpts::default(), TransportOptions::default()).await;
    // 200 writers on a queue of depth 32: back-pressure, pipelining, CID reuse.
    let mut set = JoinSet::new();
    for i in 0..200u32 {
        let io = io.clone();
        set.spawn(async move {
            // Alternate in-capsule (2 KiB) and R2T (24 KiB) writes, 64 blocks apart.
            let len = if i % 2 == 0 { 2048 } else { 24 * 1024 };
            let data = pattern(len, u8::try_from(i % 256).unwrap_or(0));
            let slba = u64::from(i) * 64;
            io.write(NSID, slba, LBA, data.clone(), false)
                .await
                .expect("write");
            let nlb = u32::try_from(len).unwrap_or(0) / LBA;
            assert_eq!(io.read(NSID, slba, nlb, LBA).await.expect("read"), data);
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task");
    }
    // Pipelining from one task: start many, then await them all.
    let mut pending = Vec::new();
    for i in 0..100u64 {
        let sqe = codec::nvme::cmd::IoCommand::Read(codec::nvme::cmd::Rw::new(NSID, i * 64, 4, 0))
            .to_sqe(0, codec::nvme::SglDescriptor::transport(0));
        pending.push(io.start(sqe, None, 4 * LBA).await.expect("start"));
    }
    for p in pending {
        let c = p.await.expect("completion").into_result().expect("success");
        assert_eq!(c.data.len(), 2048);
    }
}

#[tokio::test]
async fn generation_stamps() {
    let (_ctrl, io) = bring_up(FakeOpts::default(), TransportOptions::default()).await;
    io.with_generation(fake::GENERATION)
        .write(NSID, 0, LBA, pattern(512, 9), false)
        .await
        .expect("current");
    let stale = io.with_generation(3).read(NSID, 0, 1, LBA).await;
    assert!(
        matches!(stale, Err(InitiatorError::Generation { server_generation: fake::GENERATION, status })
            if status.same_code(Status::STALE_MAP)),
        "{stale:?}"
    );
    io.set_generation(4);
    assert!(matches!(
        io.flush(NSID).await,
        Err(InitiatorError::Generation { .. })
    ));
    io.set_generation(fake::GENERATION);
    io.flush(NSID)
        .await
        .expect("stamped with the current generation");
}

#[tokio::test]
async fn command_timeout() {
    let f = FakeOpts {
        misbehave: Misbehave::SilentReads,
        ..FakeOpts::default()
    };
    let t = TransportOptions {
        command_timeout: Some(Duration::from_millis(200)),
        ..TransportOptions::default()
    };
    let (_ctrl, io) = bring_up(f, t).await;
    let r = io.read(NSID, 0, 1, LBA).await;
    assert!(matches!(r, Err(InitiatorError::Timeout { .. })), "{r:?}");
    // The connection is fine; other commands go through.
    io.flush(NSID).await.expect("flush");
}

#[tokio::test]
async fn close_fails_commands_in_flight() {
    let f = FakeOpts {
        misbehave: Misbehave::SilentReads,
        ..FakeOpts::default()
    };
    let (_ctrl, io) = bring_up(f, TransportOptions::default()).await;
    let sqe = codec::nvme::cmd::IoCommand::Read(codec::nvme::cmd::Rw::new(NSID, 0, 1, 0))
        .to_sqe(0, codec::nvme::SglDescriptor::transport(0));
    let a = io.start(sqe, None, LBA).await.expect("start");
    let b = io.start(sqe, None, LBA).await.expect("start");
    io.close().await;
    assert!(matches!(a.await, Err(InitiatorError::Closed)));
    assert!(matches!(b.await, Err(InitiatorError::Closed)));
    assert!(matches!(io.flush(NSID).await, Err(InitiatorError::Closed)));
}

#[tokio::test]
async fn c2h_term_req_ends_the_connection() {
    let f = FakeOpts {
        misbehave: Misbehave::TermReqOnRead,
        ..FakeOpts::default()
    };
    let (_ctrl, io) = bring_up(f, TransportOptions::default()).await;
    let r = io.read(NSID, 0, 1, LBA).await;
    let expect = |r: &Result<_>| matches!(r, Err(InitiatorError::TermReq { fes, fei: 3 }) if *fes == Fes::DATA_LIMIT_EXCEEDED);
    assert!(expect(&r), "{r:?}");
    assert!(matches!(io.closed().await, InitiatorError::TermReq { .. }));
    let after: Result<()> = io.flush(NSID).await;
    assert!(after.is_err_and(|e| matches!(e, InitiatorError::TermReq { .. })));
}

#[tokio::test]
async fn response_for_unknown_cid_is_fatal() {
    let f = FakeOpts {
        misbehave: Misbehave::WrongCid,
        ..FakeOpts::default()
    };
    let (_ctrl, io) = bring_up(f, TransportOptions::default()).await;
    let r = io.read(NSID, 0, 1, LBA).await;
    assert!(matches!(r, Err(InitiatorError::Protocol { .. })), "{r:?}");
    assert!(io.is_closed());
}

#[tokio::test]
async fn nonzero_cpda_is_refused() {
    let addr = fake::spawn(FakeOpts {
        misbehave: Misbehave::BadCpda,
        ..FakeOpts::default()
    })
    .await;
    let r = Controller::connect(addr, SUBNQN, HOSTNQN, &ControllerOptions::default()).await;
    assert!(matches!(r, Err(InitiatorError::Protocol { .. })), "{r:?}");
}

#[tokio::test]
async fn raw_conn_reads_the_term_req_for_a_bad_pdu() {
    let addr = fake::spawn(FakeOpts::default()).await;
    let icreq = IcReq {
        pfv: 0,
        hpda: 0,
        hdgst: false,
        ddgst: false,
        maxr2t: 0,
    };
    let (mut raw, icresp) = RawConn::connect_ic(addr, icreq, Duration::from_secs(2))
        .await
        .expect("IC exchange");
    assert_eq!(icresp.maxh2cdata, 4096);
    // A CapsuleCmd header with HLEN 70 instead of 72: FES 01h, FEI 2 (the HLEN field).
    let mut bad = [0u8; 72];
    bad[..8].copy_from_slice(&[0x04, 0x00, 70, 0x00, 72, 0, 0, 0]);
    raw.send_bytes(&bad).await.expect("send");
    let t = raw.expect_term_req().await.expect("C2HTermReq");
    assert_eq!((t.fes, t.fei), (Fes::INVALID_PDU_HEADER_FIELD, 2));
    raw.expect_eof().await.expect("closed after the TermReq");
}

// -- PolledQueue -------------------------------------------------------------------------------

async fn polled_on(ctrl: &Controller, qid: u16, sqsize: u16) -> std::sync::Arc<PolledQueue> {
    let q = PolledQueue::connect(ctrl.addr(), &ctrl.io_queue_options(qid, sqsize))
        .await
        .expect("polled queue connect");
    assert_eq!((q.qid(), q.depth()), (qid, usize::from(sqsize) + 1));
    q
}

/// Writes in-capsule and through R2T, reads them back (whole C2HData or in pieces), from many
/// tasks at once on a queue of depth 32 (slots reused, tasks waiting for a free slot).
async fn polled_many(q: &std::sync::Arc<PolledQueue>) {
    let mut set = JoinSet::new();
    for i in 0..200u32 {
        let q = q.clone();
        set.spawn(async move {
            let len = if i % 2 == 0 { 2048 } else { 24 * 1024 };
            let data = pattern(len, u8::try_from(i % 256).unwrap_or(0));
            let slba = u64::from(i) * 64;
            q.write((0, 0), NSID, slba, LBA, data.clone(), i % 3 == 0)
                .await
                .expect("write");
            let nlb = u32::try_from(len).unwrap_or(0) / LBA;
            assert_eq!(
                q.read((0, 0), NSID, slba, nlb, LBA).await.expect("read"),
                data
            );
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task");
    }
    // The fake target has no Write Zeroes: its status comes back as the command's error.
    let wz = q.write_zeroes((0, 0), NSID, 0, 4, false).await;
    assert!(matches!(wz, Err(InitiatorError::Status(s)) if s.same_code(Status::INVALID_OPCODE)));
    let oob = q.read((0, 0), NSID, 1 << 40, 1, LBA).await;
    assert!(matches!(oob, Err(InitiatorError::Status(s)) if s.same_code(Status::LBA_RANGE)));
}

#[tokio::test]
async fn polled_queue_end_to_end() {
    let (ctrl, _io) = bring_up(FakeOpts::default(), TransportOptions::default()).await;
    let q = polled_on(&ctrl, 2, 31).await;
    polled_many(&q).await;
    // Stamped: the fake target refuses an old generation with its own.
    let stale = q.read((3, 0), NSID, 0, 1, LBA).await;
    assert!(
        matches!(
            stale,
            Err(InitiatorError::Generation {
                server_generation: fake::GENERATION,
                ..
            })
        ),
        "{stale:?}"
    );
    q.write((fake::GENERATION, 0), NSID, 0, LBA, pattern(512, 4), false)
        .await
        .expect("current generation");
    assert!(!q.is_closed());
}

/// A completion read whole by a short `recv` leaves the socket's read readiness cleared: the
/// next command's first poll does not make a `recv` that can only fail with EAGAIN (one
/// syscall per forwarded read or copy write on a storage server). Nothing is lost: commands
/// one at a time keep completing, each woken by its own readiness event.
#[tokio::test]
async fn polled_queue_forgets_read_readiness_after_a_short_read() {
    let (ctrl, _io) = bring_up(FakeOpts::default(), TransportOptions::default()).await;
    let q = polled_on(&ctrl, 2, 31).await;
    let data = pattern(4096, 9);
    q.write((0, 0), NSID, 0, LBA, data.clone(), false)
        .await
        .expect("write");
    assert!(
        !super::polled::read_ready_cached(&q),
        "readiness left set after the write's completion"
    );
    for _ in 0..50 {
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            q.read((0, 0), NSID, 0, 8, LBA),
        )
        .await
        .expect("a read one at a time completes (no lost wake-up)")
        .expect("read");
        assert_eq!(got, data);
        assert!(
            !super::polled::read_ready_cached(&q),
            "readiness left set after a read's completion"
        );
    }
}

#[tokio::test]
async fn polled_queue_with_digests_response_capsules_and_split_data() {
    let t = TransportOptions {
        hdgst: true,
        ddgst: true,
        ..TransportOptions::default()
    };
    let f = FakeOpts {
        success_flag: false,
        c2h_chunk: 3000,
        r2t_chunk: 10000,
        ..FakeOpts::default()
    };
    let (ctrl, _io) = bring_up(f, t).await;
    let q = polled_on(&ctrl, 2, 31).await;
    polled_many(&q).await;
}

/// Several runtime threads share one queue (the socket belongs to the runtime that connected
/// it; wake-ups cross threads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polled_queue_across_threads() {
    let (ctrl, _io) = bring_up(FakeOpts::default(), TransportOptions::default()).await;
    let q = polled_on(&ctrl, 2, 31).await;
    polled_many(&q).await;
}

/// A command whose future is dropped keeps its slot until the target answers (here: never);
/// the queue goes on serving others. `close` fails what is in flight and what comes after.
#[tokio::test]
async fn polled_queue_abandoned_commands_and_close() {
    let f = FakeOpts {
        misbehave: Misbehave::SilentReads,
        ..FakeOpts::default()
    };
    let (ctrl, _io) = bring_up(f, TransportOptions::default()).await;
    let q = polled_on(&ctrl, 2, 3).await;
    for _ in 0..3 {
        let r =
            tokio::time::timeout(Duration::from_millis(50), q.read((0, 0), NSID, 0, 1, LBA)).await;
        assert!(r.is_err(), "a silent read does not complete");
    }
    // Three of the four slots stay busy: one is left for other commands.
    for i in 0..20u8 {
        q.write((0, 0), NSID, 8, LBA, pattern(512, i), false)
            .await
            .expect("write on the free slot");
    }
    let sqe = codec::nvme::cmd::IoCommand::Read(codec::nvme::cmd::Rw::new(NSID, 0, 1, 0))
        .to_sqe(0, codec::nvme::SglDescriptor::transport(0));
    let q2 = q.clone();
    let waiting = tokio::spawn(async move { q2.submit(sqe, None, LBA).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    q.close();
    assert!(q.is_closed());
    let r = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("close ends the wait")
        .expect("task");
    assert!(matches!(r, Err(InitiatorError::Closed)), "{r:?}");
    let after = q.write((0, 0), NSID, 8, LBA, pattern(512, 1), false).await;
    assert!(matches!(after, Err(InitiatorError::Closed)), "{after:?}");
}

#[tokio::test]
async fn polled_queue_term_req_ends_the_connection() {
    let f = FakeOpts {
        misbehave: Misbehave::TermReqOnRead,
        ..FakeOpts::default()
    };
    let (ctrl, _io) = bring_up(f, TransportOptions::default()).await;
    let q = polled_on(&ctrl, 2, 31).await;
    let r = tokio::time::timeout(Duration::from_secs(10), q.read((0, 0), NSID, 0, 1, LBA))
        .await
        .expect("bounded");
    assert!(matches!(r, Err(InitiatorError::TermReq { .. })), "{r:?}");
    assert!(q.is_closed());
    let after = q.write((0, 0), NSID, 8, LBA, pattern(512, 1), false).await;
    assert!(
        matches!(after, Err(InitiatorError::TermReq { .. })),
        "{after:?}"
    );
}
