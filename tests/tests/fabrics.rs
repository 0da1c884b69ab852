//! Fabrics commands and discovery (NVMe Base 2.0, section 6: Connect, Property Get/Set,
//! Disconnect; NVMe over Fabrics 1.1, section 5: the discovery service).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::cast_possible_truncation)]

use std::collections::BTreeSet;
use std::net::SocketAddr;

use bytes::Bytes;
use codec::nvme::Status;
use codec::nvme::cmd::{AdminCommand, Identify, cns};
use codec::nvme::fabrics::{
    CNTLID_DYNAMIC, ConnectReject, PropertyGet, PropertySet, connect_data_off, connect_off, prop,
};
use codec::nvme::log::{lid, subtype, trtype};
use codec::nvme::opcode::FabricsType;
use codec::nvme::sgl::SglDescriptor;
use codec::pdu::Pdu;
use tessera::initiator::{
    Controller, ControllerOptions, InitiatorError, Queue, QueueOptions, discover,
};
use tessera_tests::*;

const RESTRICTED: &str = "nqn.2026-11.dev.tessera:restricted";

/// [`STD_YAML`] plus a subsystem only [`HOSTNQN2`] may use.
fn two_subsystems() -> String {
    format!(
        "{STD_YAML}  - nqn: {RESTRICTED}
    hosts: [{HOSTNQN2}]
    namespaces:
      - nsid: 1
        backend: {{ kind: ram, size: 1MiB }}
"
    )
}

/// A queue Connect with `opts` that must be refused; returns why.
async fn rejected(addr: SocketAddr, opts: &QueueOptions) -> ConnectReject {
    match within("Connect", Queue::connect_tcp(addr, opts)).await {
        Err(InitiatorError::ConnectRejected(r)) => r,
        Err(e) => panic!("Connect should be rejected with a status, got {e}"),
        Ok(q) => panic!("Connect should be rejected, got QID {} accepted", q.qid()),
    }
}

#[track_caller]
fn assert_invalid_param(r: ConnectReject, iattr: u8, ipo: usize, what: &str) {
    assert_status(r.status, Status::CONNECT_INVALID_PARAMETERS, Some(true));
    assert_eq!(
        (r.iattr, usize::from(r.ipo)),
        (iattr, ipo),
        "{what}: IATTR/IPO of {r:?}"
    );
}

fn admin_opts(subnqn: &str, hostnqn: &str) -> QueueOptions {
    let mut o = QueueOptions::admin(subnqn, hostnqn);
    o.transport.connect_timeout = STEP;
    o.transport.command_timeout = Some(STEP);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_an_unknown_subsystem_or_as_a_foreign_host() {
    let t = TestTarget::start(&two_subsystems()).await;
    // Unknown SUBNQN: Connect Invalid Parameters naming SUBNQN in the data (IATTR 1, IPO 256).
    let r = rejected(t.addr, &admin_opts("nqn.2026-11.dev.tessera:nope", HOSTNQN)).await;
    assert_invalid_param(r, 1, connect_data_off::SUBNQN, "unknown subsystem");
    // A host the subsystem does not list: Connect Invalid Host.
    let r = rejected(t.addr, &admin_opts(RESTRICTED, HOSTNQN)).await;
    assert_status(r.status, Status::CONNECT_INVALID_HOST, Some(true));
    // The listed host gets in.
    let c = connect_as(t.addr, RESTRICTED, HOSTNQN2, &ctrl_opts())
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informal_host_nqns_need_an_any_host_subsystem() {
    // SPDK's initiator sends an empty HOSTNQN by default; `nvme connect --hostnqn myhost`
    // sends "myhost". Both are accepted where any host may connect, refused with Connect
    // Invalid Host (SCT 1h / SC 84h, DNR) where a host allow-list applies.
    let t = TestTarget::start(&two_subsystems()).await;
    let mut disc = ControllerOptions::discovery();
    disc.transport.connect_timeout = STEP;
    disc.transport.command_timeout = Some(STEP);
    for (i, host) in ["", "myhost"].into_iter().enumerate() {
        let c = connect_as(t.addr, SUBNQN, host, &ctrl_opts())
            .await
            .unwrap_or_else(|e| panic!("host NQN {host:?} on an any-host subsystem: {e}"));
        // I/O queues Connect with the same (informal) host NQN and carry I/O.
        let q = io_queues(&c, 1).await.remove(0);
        let d = blocks(i as u64 + 40, 0, 8, 512);
        q.write(NS_RAM512, 0, 512, d.clone(), false).await.unwrap();
        assert_blocks(
            &q.read(NS_RAM512, 0, 8, 512).await.unwrap(),
            &d,
            0,
            512,
            "I/O on a queue of an informal host",
        );
        // An I/O queue of that controller under another host NQN is still refused.
        let mut o = QueueOptions::io(SUBNQN, HOSTNQN, c.cntlid(), 2, 31);
        o.transport.connect_timeout = STEP;
        let r = rejected(t.addr, &o).await;
        assert_status(r.status, Status::CONNECT_INVALID_HOST, Some(true));
        assert_eq!(r.status.sct(), 1);
        assert_eq!(r.status.sc(), 0x84);
        q.close().await;
        c.disconnect().await.unwrap();
        // A subsystem with an allow-list: Connect Invalid Host, not Invalid Parameters.
        let r = rejected(t.addr, &admin_opts(RESTRICTED, host)).await;
        assert_status(r.status, Status::CONNECT_INVALID_HOST, Some(true));
        assert_eq!((r.status.sct(), r.status.sc()), (1, 0x84), "{host:?}");
        assert_eq!(ConnectReject::from_dw0(r.status, r.dw0()).ipo, 0);
        // Discovery answers that host too, listing only the any-host subsystem.
        let log = within("discover", discover(t.addr, host, &disc))
            .await
            .unwrap_or_else(|e| panic!("discovery as {host:?}: {e}"));
        let nvme: Vec<&str> = log
            .entries
            .iter()
            .filter(|e| e.subtype == subtype::NVME)
            .map(|e| e.subnqn.as_str())
            .collect();
        assert_eq!(nvme, vec![SUBNQN], "discovery log for {host:?}");
    }
    assert_still_serving(t.addr).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_sqsize_limits() {
    let t = TestTarget::start(STD_YAML).await;
    // The admin queue needs at least 32 entries (NVMe over Fabrics 1.1, section 3.3.1).
    for sqsize in [0u16, 1, 30] {
        let mut o = admin_opts(SUBNQN, HOSTNQN);
        o.sqsize = sqsize;
        let r = rejected(t.addr, &o).await;
        assert_invalid_param(r, 0, connect_off::SQSIZE, "admin SQSIZE below 31");
    }
    // No queue may exceed CAP.MQES (127, 0's based).
    let mut o = admin_opts(SUBNQN, HOSTNQN);
    o.sqsize = 128;
    let r = rejected(t.addr, &o).await;
    assert_invalid_param(r, 0, connect_off::SQSIZE, "admin SQSIZE above MQES");
    let c = connect(t.addr, SUBNQN).await;
    let mqes = c.cap().await.unwrap().mqes;
    c.set_num_queues(2).await.unwrap();
    let mut o = QueueOptions::io(SUBNQN, HOSTNQN, c.cntlid(), 1, mqes + 1);
    o.transport.connect_timeout = STEP;
    let r = rejected(t.addr, &o).await;
    assert_invalid_param(r, 0, connect_off::SQSIZE, "I/O SQSIZE above MQES");
    let mut o = QueueOptions::io(SUBNQN, HOSTNQN, c.cntlid(), 1, 0);
    o.transport.connect_timeout = STEP;
    let r = rejected(t.addr, &o).await;
    assert_invalid_param(r, 0, connect_off::SQSIZE, "I/O SQSIZE 0");
    // The extremes that are allowed.
    let q = c.connect_io_queue(1, mqes).await.unwrap();
    let q2 = c.connect_io_queue(2, 1).await.unwrap();
    q2.read(NS_RAM512, 0, 1, 512).await.unwrap();
    q.close().await;
    q2.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_queue_connect_checks_controller_host_and_qid() {
    let t = TestTarget::start(STD_YAML).await;
    let c = connect(t.addr, SUBNQN).await;
    assert_eq!(c.set_num_queues(2).await.unwrap(), 2);
    let io = |hostnqn: &str, cntlid: u16, qid: u16| {
        let mut o = QueueOptions::io(SUBNQN, hostnqn, cntlid, qid, 31);
        o.transport.connect_timeout = STEP;
        o
    };
    // A CNTLID no controller has, and the dynamic CNTLID (admin queues only).
    for cntlid in [c.cntlid().wrapping_add(100), CNTLID_DYNAMIC] {
        let r = rejected(t.addr, &io(HOSTNQN, cntlid, 1)).await;
        assert_invalid_param(r, 1, connect_data_off::CNTLID, "unknown CNTLID");
    }
    // Another host (allowed on the subsystem, but not the controller's host).
    let r = rejected(t.addr, &io(HOSTNQN2, c.cntlid(), 1)).await;
    let foreign = r.status.same_code(Status::CONNECT_INVALID_HOST)
        || (r.status.same_code(Status::CONNECT_INVALID_PARAMETERS) && r.iattr == 1);
    assert!(
        foreign && r.status.dnr(),
        "foreign host on an I/O queue: {r:?}"
    );
    // The controller's host NQN with another HOSTID.
    let mut o = io(HOSTNQN, c.cntlid(), 1);
    o.hostid[0] ^= 0xff;
    let r = rejected(t.addr, &o).await;
    let foreign = r.status.same_code(Status::CONNECT_INVALID_HOST)
        || (r.status.same_code(Status::CONNECT_INVALID_PARAMETERS) && r.iattr == 1);
    assert!(
        foreign && r.status.dnr(),
        "HOSTID mismatch on an I/O queue: {r:?}"
    );
    // QIDs beyond what Set Features Number of Queues granted.
    for qid in [3u16, 64, 0xffff] {
        let r = rejected(t.addr, &io(HOSTNQN, c.cntlid(), qid)).await;
        assert_invalid_param(r, 0, connect_off::QID, "QID beyond the grant");
    }
    // A QID already connected: Controller Busy.
    let q1 = c.connect_io_queue(1, 31).await.unwrap();
    let r = rejected(t.addr, &io(HOSTNQN, c.cntlid(), 1)).await;
    assert_status(r.status, Status::CONTROLLER_BUSY, None);
    // Still fine: the first queue works, the second QID connects; both name the controller.
    assert_eq!(
        q1.cntlid(),
        c.cntlid(),
        "I/O Connect answers the controller's CNTLID"
    );
    q1.read(NS_RAM512, 0, 1, 512).await.unwrap();
    let q2 = c.connect_io_queue(2, 31).await.unwrap();
    q2.read(NS_RAM512, 0, 1, 512).await.unwrap();
    q1.close().await;
    q2.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_get_distinct_cntlids() {
    let t = TestTarget::start(STD_YAML).await;
    let mut ids = BTreeSet::new();
    let mut ctrls = Vec::new();
    for _ in 0..5 {
        let c = connect(t.addr, SUBNQN).await;
        assert!(
            c.cntlid() <= 0xFFEF,
            "CNTLID {:#x} in the reserved range",
            c.cntlid()
        );
        assert!(ids.insert(c.cntlid()), "CNTLID {} given twice", c.cntlid());
        ctrls.push(c);
    }
    for c in ctrls {
        c.disconnect().await.unwrap();
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_before_connect_are_command_sequence_errors() {
    let t = TestTarget::start(STD_YAML).await;
    let mut raw = raw_ic(t.addr, false, false).await;
    let identify = AdminCommand::Identify(Identify {
        nsid: 0,
        cns: cns::CONTROLLER,
        cntid: 0,
        cnssid: 0,
        csi: 0,
        uuid_index: 0,
    });
    let pget = PropertyGet {
        size8: true,
        offset: prop::CAP,
    };
    let mut disconnect = codec::nvme::fabrics::fabrics_sqe(FabricsType::DISCONNECT, 0);
    let sqes = [
        identify.to_sqe(11, SglDescriptor::transport(4096)),
        pget.to_sqe(12),
        AdminCommand::KeepAlive.to_sqe(13, SglDescriptor::transport(0)),
        {
            disconnect.set_cid(14);
            disconnect
        },
    ];
    for sqe in sqes {
        let cid = sqe.cid();
        raw.send_pdu(&Pdu::CapsuleCmd(codec::pdu::CapsuleCmd {
            sqe,
            data: Bytes::new(),
        }))
        .await
        .unwrap();
        let cqe = recv_cqe(&mut raw).await;
        assert_eq!(cqe.cid(), cid);
        assert_status(cqe.status(), Status::CMD_SEQ_ERROR, Some(true));
    }
    // Not fatal: the Connect that follows is accepted on the same connection...
    let pdu = connect_pdu(
        15,
        connect_cmd(0, 31, 0),
        &connect_data(SUBNQN, HOSTNQN, CNTLID_DYNAMIC),
    );
    raw.send_pdu(&pdu).await.unwrap();
    let cqe = recv_cqe(&mut raw).await;
    assert!(
        cqe.status().is_success(),
        "Connect after refused commands: {}",
        cqe.status()
    );
    // ...and a second Connect on a connected queue is a Command Sequence Error.
    let pdu = connect_pdu(
        16,
        connect_cmd(0, 31, 0),
        &connect_data(SUBNQN, HOSTNQN, CNTLID_DYNAMIC),
    );
    raw.send_pdu(&pdu).await.unwrap();
    let cqe = recv_cqe(&mut raw).await;
    assert_status(cqe.status(), Status::CMD_SEQ_ERROR, None);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_an_unknown_record_format() {
    let t = TestTarget::start(STD_YAML).await;
    let mut raw = raw_ic(t.addr, false, false).await;
    let mut cmd = connect_cmd(0, 31, 0);
    cmd.recfmt = 1;
    raw.send_pdu(&connect_pdu(
        1,
        cmd,
        &connect_data(SUBNQN, HOSTNQN, CNTLID_DYNAMIC),
    ))
    .await
    .unwrap();
    let cqe = recv_cqe(&mut raw).await;
    assert_status(
        cqe.status(),
        Status::CONNECT_INCOMPATIBLE_FORMAT,
        Some(true),
    );
    t.stop().await;
}

async fn disconnect_queue(q: &Queue) {
    let sqe = codec::nvme::fabrics::fabrics_sqe(FabricsType::DISCONNECT, 0);
    let done = within("Disconnect", q.submit(sqe, None, 0)).await.unwrap();
    assert!(done.status().is_success(), "Disconnect: {}", done.status());
    let why = within("queue closes after Disconnect", q.closed()).await;
    assert!(why.is_connection_fatal(), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_on_an_io_queue_closes_only_that_queue() {
    let t = TestTarget::start(STD_YAML).await;
    let c = connect(t.addr, SUBNQN).await;
    let qs = io_queues(&c, 2).await;
    disconnect_queue(&qs[0]).await;
    // The admin queue and the other I/O queue carry on.
    qs[1].read(NS_RAM512, 0, 1, 512).await.unwrap();
    c.keep_alive().await.unwrap();
    // The QID is free again.
    let again = within("reconnect QID 1", c.connect_io_queue(1, 31))
        .await
        .unwrap();
    again.read(NS_RAM512, 0, 1, 512).await.unwrap();
    again.close().await;
    qs[1].close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_on_the_admin_queue_ends_the_association() {
    let t = TestTarget::start(STD_YAML).await;
    let c = connect(t.addr, SUBNQN).await;
    let cntlid = c.cntlid();
    let qs = io_queues(&c, 2).await;
    disconnect_queue(c.admin()).await;
    for q in &qs {
        let why = within("I/O queue closes with its controller", q.closed()).await;
        assert!(why.is_connection_fatal(), "{why}");
    }
    // The controller is gone: its CNTLID takes no more I/O queues.
    let mut o = QueueOptions::io(SUBNQN, HOSTNQN, cntlid, 1, 31);
    o.transport.connect_timeout = STEP;
    let r = rejected(t.addr, &o).await;
    assert_invalid_param(
        r,
        1,
        connect_data_off::CNTLID,
        "CNTLID of a disconnected controller",
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_get_and_set_rules() {
    let t = TestTarget::start(STD_YAML).await;
    let c = connect(t.addr, SUBNQN).await;
    let admin = c.admin().clone();
    let status = |sqe| {
        let admin = admin.clone();
        async move {
            within("property command", admin.submit(sqe, None, 0))
                .await
                .unwrap()
                .status()
        }
    };
    // Read-only registers and registers we do not have.
    for (offset, size8) in [
        (prop::CAP, true),
        (prop::VS, false),
        (prop::CSTS, false),
        (prop::NSSR, false),
        (0x30, false),
    ] {
        let st = status(
            PropertySet {
                size8,
                offset,
                value: 0,
            }
            .to_sqe(0),
        )
        .await;
        assert_status(st, Status::INVALID_FIELD, Some(true));
    }
    for offset in [0x30u32, 0x100, 0xFFFF_FFF0] {
        let st = status(
            PropertyGet {
                size8: false,
                offset,
            }
            .to_sqe(0),
        )
        .await;
        assert_status(st, Status::INVALID_FIELD, Some(true));
    }
    // CAP is an 8-byte property.
    let done = within(
        "CAP",
        c.admin().submit(
            PropertyGet {
                size8: true,
                offset: prop::CAP,
            }
            .to_sqe(0),
            None,
            0,
        ),
    )
    .await
    .unwrap();
    assert!(done.status().is_success());
    // The registers are unchanged and the controller still ready.
    assert!(c.csts().await.unwrap().rdy);
    // Property commands belong to the admin queue.
    let q = io_queues(&c, 1).await.remove(0);
    let done = within(
        "Property Get on an I/O queue",
        q.submit(
            PropertyGet {
                size8: false,
                offset: prop::CSTS,
            }
            .to_sqe(0),
            None,
            0,
        ),
    )
    .await
    .unwrap();
    assert!(
        !done.status().is_success(),
        "Property Get on an I/O queue succeeded"
    );
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_what_each_host_may_see_on_every_listener() {
    let t = TestTarget::start_with(&two_subsystems(), Default::default(), 2).await;
    let addrs = t.addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    let mut opts = ControllerOptions::discovery();
    opts.transport.connect_timeout = STEP;
    opts.transport.command_timeout = Some(STEP);
    for (host, visible) in [
        (HOSTNQN, vec![SUBNQN]),
        (HOSTNQN2, vec![SUBNQN, RESTRICTED]),
    ] {
        for &via in &addrs {
            let log = within("discover", discover(via, host, &opts))
                .await
                .unwrap();
            // Per listener: the current discovery subsystem, then each visible subsystem.
            let mut want = BTreeSet::new();
            for a in &addrs {
                want.insert((subtype::CURRENT_DISCOVERY, DISCOVERY_NQN.to_string(), *a));
                for s in &visible {
                    want.insert((subtype::NVME, (*s).to_string(), *a));
                }
            }
            let mut got = BTreeSet::new();
            let mut portids = BTreeSet::new();
            for e in &log.entries {
                assert_eq!(e.trtype, trtype::TCP);
                assert_eq!(e.cntlid, CNTLID_DYNAMIC, "dynamic controller model");
                let addr: SocketAddr = format!("{}:{}", e.traddr, e.trsvcid)
                    .parse()
                    .unwrap_or_else(|err| {
                        panic!("entry address {}:{}: {err}", e.traddr, e.trsvcid)
                    });
                portids.insert((e.portid, addr));
                assert!(
                    got.insert((e.subtype, e.subnqn.clone(), addr)),
                    "duplicate entry {e:?}"
                );
            }
            assert_eq!(got, want, "discovery log for {host} via {via}");
            let ports: BTreeSet<u16> = portids.iter().map(|p| p.0).collect();
            assert_eq!(
                ports.len(),
                addrs.len(),
                "one PORTID per listener: {portids:?}"
            );
        }
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_controller_genctr_identify_and_limits() {
    let t = TestTarget::start(&two_subsystems()).await;
    let mut opts = ControllerOptions::discovery();
    opts.transport.connect_timeout = STEP;
    opts.transport.command_timeout = Some(STEP);
    let d = within(
        "discovery connect",
        Controller::connect(t.addr, DISCOVERY_NQN, HOSTNQN, &opts),
    )
    .await
    .unwrap();
    d.enable().await.unwrap();
    let a = d.discovery_log().await.unwrap();
    let b = d.discovery_log().await.unwrap();
    assert_eq!(a.genctr, b.genctr, "GENCTR is stable while nothing changes");
    assert_eq!(a.entries, b.entries);
    let id = d.identify_controller_parsed().await.unwrap();
    assert_eq!(id.cntrltype, 2, "discovery controller");
    assert_eq!(id.subnqn, DISCOVERY_NQN);
    // Only the discovery log page; no namespaces.
    let st = status_of(d.get_log_page(lid::SMART_HEALTH, 0, 512, 0).await);
    assert_status(st, Status::INVALID_LOG_PAGE, Some(true));
    let st = status_of(d.identify_namespace(1).await);
    assert!(st.dnr(), "Identify Namespace on discovery: {st}");
    // A discovery controller has no I/O queues.
    let mut o = QueueOptions::io(DISCOVERY_NQN, HOSTNQN, d.cntlid(), 1, 31);
    o.transport.connect_timeout = STEP;
    let r = rejected(t.addr, &o).await;
    assert_status(r.status, Status::CONNECT_INVALID_PARAMETERS, Some(true));
    d.keep_alive().await.unwrap();
    d.disconnect().await.unwrap();
    t.stop().await;
}

/// An I/O queue connected with SQ flow control enabled (CATTR bit 2 clear), `sqsize` 0's based;
/// returns the Connect response's SQHD.
async fn flow_controlled_queue(
    c: &Controller,
    qid: u16,
    sqsize: u16,
) -> (tessera::initiator::RawConn, u16) {
    let mut raw = raw_ic(c.addr(), false, false).await;
    let mut cmd = connect_cmd(qid, sqsize, 0);
    cmd.cattr = 0;
    let pdu = connect_pdu(9, cmd, &connect_data(SUBNQN, HOSTNQN, c.cntlid()));
    raw.send_pdu(&pdu).await.unwrap();
    let cqe = recv_cqe(&mut raw).await;
    assert!(cqe.status().is_success(), "Connect: {}", cqe.status());
    (raw, cqe.sqhd())
}

/// Sends `n` one-block reads one after the other; returns each completion's SQHD, checking
/// that C2HData never claims SUCCESS (only allowed with SQ flow control disabled).
async fn sqhds(raw: &mut tessera::initiator::RawConn, n: u16) -> Vec<u16> {
    let mut v = Vec::new();
    for i in 0..n {
        let cmd = codec::nvme::cmd::IoCommand::Read(codec::nvme::cmd::Rw::new(NS_RAM512, 0, 1, 0));
        raw.send_pdu(&io_capsule(&cmd, 100 + i, Bytes::new(), 512))
            .await
            .unwrap();
        loop {
            match raw.recv().await.unwrap() {
                tessera::initiator::RawEvent::Pdu(Pdu::C2HData(d)) => {
                    assert!(!d.success, "C2HData SUCCESS with SQ flow control enabled");
                }
                tessera::initiator::RawEvent::Pdu(Pdu::CapsuleResp(r)) => {
                    assert!(r.cqe.status().is_success());
                    assert_eq!(r.cqe.sqid(), 1, "SQID");
                    v.push(r.cqe.sqhd());
                    break;
                }
                other => panic!("read: {other:?}"),
            }
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sq_flow_control_reports_the_head_pointer() {
    // With SQ flow control enabled, every CQE carries the SQ head pointer (NVMe over Fabrics
    // 1.1, section 3.3.1.1), and a read's data never stands in for its completion.
    let t = TestTarget::start(STD_YAML).await;
    let c = connect(t.addr, SUBNQN).await;
    c.set_num_queues(1).await.unwrap();
    let (mut raw, _) = flow_controlled_queue(&c, 1, 3).await;
    let heads = sqhds(&mut raw, 10).await;
    for w in heads.windows(2) {
        assert_eq!(
            w[1],
            (w[0] + 1) % 4,
            "SQHD advances by one per command, modulo 4: {heads:?}"
        );
    }
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sq_head_counts_the_connect_command() {
    // The Connect command is the first entry of the new SQ; once it is consumed the head is 1
    // (Linux nvmet and SPDK report 1). A head that lags by one makes a flow-controlling host
    // believe one entry is always outstanding.
    let t = TestTarget::start(STD_YAML).await;
    let c = connect(t.addr, SUBNQN).await;
    c.set_num_queues(1).await.unwrap();
    let (mut raw, connect_sqhd) = flow_controlled_queue(&c, 1, 3).await;
    assert_eq!(connect_sqhd, 1, "SQHD of the Connect completion");
    assert_eq!(sqhds(&mut raw, 3).await, vec![2, 3, 0]);
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_connect_data() {
    let t = TestTarget::start(STD_YAML).await;
    let good = connect_data(SUBNQN, HOSTNQN, CNTLID_DYNAMIC).to_bytes();
    type Edit = fn(&mut [u8]);
    let cases: [(&str, usize, Edit); 3] = [
        ("SUBNQN without its NUL", connect_data_off::SUBNQN, |b| {
            b[256..512].fill(b'a')
        }),
        ("empty SUBNQN", connect_data_off::SUBNQN, |b| {
            b[256..512].fill(0)
        }),
        // An empty HOSTNQN is fine (see informal_host_nqns_need_an_any_host_subsystem); one
        // with no NUL anywhere in its 256 bytes is not.
        ("HOSTNQN without its NUL", connect_data_off::HOSTNQN, |b| {
            b[512..768].fill(b'h')
        }),
    ];
    for (what, ipo, edit) in cases {
        let mut data = good;
        edit(&mut data);
        let len = u32::try_from(data.len()).unwrap();
        let mut sqe = connect_cmd(0, 31, 0).to_sqe(1, SglDescriptor::in_capsule(len));
        sqe.set_cid(1);
        let mut raw = raw_ic(t.addr, false, false).await;
        raw.send_pdu(&Pdu::CapsuleCmd(codec::pdu::CapsuleCmd {
            sqe,
            data: Bytes::copy_from_slice(&data),
        }))
        .await
        .unwrap();
        let cqe = recv_cqe(&mut raw).await;
        let r = ConnectReject::from_dw0(cqe.status(), cqe.dw0());
        assert_invalid_param(r, 1, ipo, what);
    }
    assert_still_serving(t.addr).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_shutdown_with_live_associations_is_bounded() {
    let t = TestTarget::start(STD_YAML).await;
    let c = connect(t.addr, SUBNQN).await;
    let qs = io_queues(&c, 2).await;
    let aer = tokio::spawn(c.async_event_request().await.unwrap());
    // A write in flight on each queue while the target stops.
    let mut writes = Vec::new();
    for (i, q) in qs.iter().enumerate() {
        let q = q.clone();
        writes.push(tokio::spawn(async move {
            q.write(NS_RAM512, i as u64 * 64, 512, blocks(1, 0, 64, 512), false)
                .await
        }));
    }
    within("target shutdown with live controllers", t.stop()).await;
    within("parked AER ends", aer).await.unwrap().unwrap_err();
    for w in writes {
        let _ = within("in-flight write ends", w).await.unwrap();
    }
    for q in qs.iter().chain(std::iter::once(c.admin())) {
        within("queues close", q.closed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qid_is_free_again_once_its_connection_closes() {
    // Without Disconnect: the host just closes the TCP connection (as after an error). The
    // QID is released when the target notices; Controller Busy until then is retryable.
    let t = TestTarget::start(STD_YAML).await;
    let c = connect(t.addr, SUBNQN).await;
    let q = io_queues(&c, 1).await.remove(0);
    q.close().await;
    let start = std::time::Instant::now();
    let again = loop {
        match c.connect_io_queue(1, 31).await {
            Ok(q) => break q,
            Err(InitiatorError::ConnectRejected(r))
                if r.status.same_code(Status::CONTROLLER_BUSY) && !r.status.dnr() =>
            {
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(2),
                    "QID 1 still busy 2 s after its connection closed"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(e) => panic!("reconnect QID 1: {e}"),
        }
    };
    again.read(NS_RAM512, 0, 1, 512).await.unwrap();
    again.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}
