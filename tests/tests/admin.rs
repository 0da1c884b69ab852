//! Admin queue of an NVM controller: bring-up registers, Identify, log pages, features, and the
//! admin commands a Linux host sends (NVMe Base 2.0, sections 3.1, 5; NVMe over Fabrics 1.1).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::cast_possible_truncation)]

use std::time::Duration;

use bytes::Bytes;
use codec::nvme::Status;
use codec::nvme::cmd::{AdminCommand, FeatureId, GetFeatures, GetLogPage, SetFeatures, cns};
use codec::nvme::fabrics::{CAP_CSS_NVM, Cc, Version, prop, shst};
use codec::nvme::generation::{GENCHK_VERSION, GENERATION_LOG_LID};
use codec::nvme::identify::{IdentifyNsIndependent, NsIdDescriptor, oncs, sgls};
use codec::nvme::log::{
    AnaLog, CommandsEffectsLog, FwSlotLog, SmartLog, ana_state, effects, lid, parse_changed_ns_list,
};
use codec::nvme::opcode::IoOpcode;
use codec::nvme::sgl::SglDescriptor;
use tessera::initiator::{Controller, InitiatorError};
use tessera_tests::*;

async fn std_target() -> TestTarget {
    TestTarget::start(STD_YAML).await
}

/// Runs an admin SQE built by hand and returns its completion (error statuses included).
async fn admin_raw(c: &Controller, cmd: &AdminCommand, data_in: u32) -> Status {
    let sqe = cmd.to_sqe(0, SglDescriptor::transport(data_in));
    within("admin command", c.admin().submit(sqe, None, data_in))
        .await
        .expect("admin queue stays up")
        .status()
}

fn get_log(lid: u8, len: u64, lpo: u64) -> GetLogPage {
    GetLogPage {
        nsid: 0xFFFF_FFFF,
        lid,
        lsp: 0,
        rae: false,
        numd_bytes: len,
        lsi: 0,
        lpo,
        uuid_index: 0,
        csi: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bring_up_registers_enable_and_shutdown() {
    let t = std_target().await;
    let c = within(
        "admin connect",
        Controller::connect(t.addr, SUBNQN, HOSTNQN, &ctrl_opts()),
    )
    .await
    .unwrap();

    // Before CC.EN: CAP, VS, CC, CSTS are readable; the controller is not ready.
    let cap = c.cap().await.unwrap();
    assert_eq!(cap.mqes, 127, "CAP.MQES: 128-entry queues");
    assert!(cap.cqr, "CAP.CQR: fabrics queues are contiguous");
    assert_ne!(cap.css & CAP_CSS_NVM, 0, "CAP.CSS: NVM command set");
    assert!(cap.to > 0, "CAP.TO must give the host a bound on CSTS.RDY");
    assert_eq!(cap.mpsmin, 0, "CAP.MPSMIN: 4 KiB pages");
    let vs = c.vs().await.unwrap();
    assert!(
        vs.to_u32() >= Version::V1_3.to_u32(),
        "VS {vs:?}: NVMe over Fabrics needs 1.3 or later"
    );
    assert_eq!(c.cc().await.unwrap().to_u32(), 0, "CC after Connect");
    let csts = c.csts().await.unwrap();
    assert!(!csts.rdy && !csts.cfs, "CSTS before enable: {csts:?}");

    // Admin commands need an enabled controller (NVMe Base 2.0, section 3.5.1).
    let st = status_of(c.identify_controller().await);
    assert_status(st, Status::CMD_SEQ_ERROR, None);

    within("enable", c.enable()).await.unwrap();
    let cc = c.cc().await.unwrap();
    assert!(cc.en, "CC.EN reads back");
    assert_eq!((cc.iosqes, cc.iocqes), (6, 4), "CC.IOSQES/IOCQES read back");
    let csts = c.csts().await.unwrap();
    assert!(csts.rdy && !csts.cfs, "CSTS after enable: {csts:?}");
    c.identify_controller()
        .await
        .expect("Identify once enabled");

    // Normal shutdown: SHST goes to "complete".
    within("shutdown", c.shutdown()).await.unwrap();
    assert_eq!(c.csts().await.unwrap().shst, shst::COMPLETE);
    c.admin().close().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_with_wrong_queue_entry_sizes_is_a_fatal_status() {
    let t = std_target().await;
    let c = within(
        "admin connect",
        Controller::connect(t.addr, SUBNQN, HOSTNQN, &ctrl_opts()),
    )
    .await
    .unwrap();
    // NVMe/TCP only has 64-byte SQEs and 16-byte CQEs: asking for 128-byte SQEs cannot work.
    let cc = Cc {
        en: true,
        css: 0,
        mps: 0,
        ams: 0,
        shn: 0,
        iosqes: 7,
        iocqes: 4,
        crime: false,
    };
    c.property_set(prop::CC, u64::from(cc.to_u32()))
        .await
        .unwrap();
    let csts = c.csts().await.unwrap();
    assert!(csts.cfs && !csts.rdy, "CSTS after a bad CC: {csts:?}");
    c.admin().close().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_controller_describes_this_target() {
    let t = std_target().await;
    let c = connect(t.addr, SUBNQN).await;
    let id = c.identify_controller_parsed().await.unwrap();
    assert_eq!(id.subnqn, SUBNQN);
    assert_eq!(id.sn, "TESTSERIAL0001");
    assert_eq!(id.mn, "Tessera test");
    assert_eq!(id.cntlid, c.cntlid(), "CNTLID matches the Connect answer");
    assert_eq!(id.cntrltype, 1, "I/O controller");
    assert_eq!(id.nn, 3, "NN: the largest NSID");
    assert!(
        id.mnan >= 1 && id.mnan <= id.nn,
        "MNAN {} with NN {}",
        id.mnan,
        id.nn
    );
    assert_eq!(id.sgls & 0b11, sgls::SUPPORTED, "SGLS: SGLs supported");
    assert_ne!(
        id.sgls & sgls::OFFSET,
        0,
        "SGLS: in-capsule (offset) data blocks"
    );
    assert_eq!(
        id.ioccsz,
        (64 + 8192) / 16,
        "IOCCSZ: SQE plus 8 KiB in-capsule data"
    );
    assert_eq!(id.iorcsz, 1, "IORCSZ: a 16-byte CQE");
    assert_eq!(id.icdoff, 0);
    assert_ne!(id.kas, 0, "KAS must not be 0 when keep alive is supported");
    assert_eq!((id.sqes, id.cqes), (0x66, 0x44));
    assert_eq!(id.mdts, 5, "MDTS: 128 KiB in 4 KiB pages");
    assert_eq!(
        id.vwc & 1,
        0,
        "RAM/null backends have no volatile write cache"
    );
    let want_oncs = oncs::COMPARE | oncs::DSM | oncs::WRITE_ZEROES;
    assert_eq!(id.oncs & want_oncs, want_oncs, "ONCS {:#x}", id.oncs);
    assert!(id.aerl >= 1, "AERL");
    assert_ne!(id.cmic & (1 << 3), 0, "CMIC: ANA reporting");
    assert!(id.anagrpmax >= 1 && id.nanagrpid >= 1);
    // The vendor area advertises the generation check (docs/cluster-protocol.md), at generation 1.
    let g = id
        .genchk
        .expect("Identify vendor area must advertise the generation check");
    assert!(g.version >= GENCHK_VERSION);
    assert_eq!(g.generation, STANDALONE_GENERATION);
    c.require_generation_check().await.unwrap();
    // The firmware revision is what the firmware slot log reports as slot 1.
    let fw = FwSlotLog::parse(&c.get_log_page(lid::FIRMWARE_SLOT, 0, 512, 0).await.unwrap());
    assert_eq!(fw.afi & 0x7, 1, "active firmware slot");
    assert_eq!(fw.frs[0], id.fr);
    c.disconnect().await.unwrap();
    t.stop().await;
}

/// The identity a host sees for every namespace: size, block size, NGUID and UUID.
async fn namespace_identity(c: &Controller, nsid: u32) -> (u64, u32, [u8; 16], [u8; 16]) {
    let ns = c.identify_namespace_parsed(nsid).await.unwrap();
    let descs = c.ns_descriptors_parsed(nsid).await.unwrap();
    let nguid = descs
        .iter()
        .find_map(|d| match d {
            NsIdDescriptor::Nguid(v) => Some(*v),
            _ => None,
        })
        .expect("descriptor list has an NGUID");
    let uuid = descs
        .iter()
        .find_map(|d| match d {
            NsIdDescriptor::Uuid(v) => Some(*v),
            _ => None,
        })
        .expect("descriptor list has a UUID");
    assert!(
        descs.contains(&NsIdDescriptor::Csi(0)),
        "descriptor list names the NVM command set: {descs:?}"
    );
    assert_eq!(
        ns.nguid, nguid,
        "Identify Namespace NGUID = descriptor NGUID"
    );
    assert_eq!(ns.nsze, ns.ncap);
    (
        ns.nsze,
        ns.lba_size().expect("valid LBA format"),
        nguid,
        uuid,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_namespaces_match_the_layout_and_survive_a_restart() {
    let yaml = format!(
        "{STD_YAML}      - nsid: 9
        block_size: 4096
        uuid: 0f0e3d52-8a8b-4c3e-9d2a-6b1f5e7c9a01
        backend: {{ kind: ram, size: 8MiB }}
"
    );
    let layout = yaml::parse_str("x.yaml", &yaml).unwrap();
    let decl = &layout.subsystems[0].namespaces;
    let mut first = None;
    for _round in 0..2 {
        let t = TestTarget::start(&yaml).await;
        let c = connect(t.addr, SUBNQN).await;
        let mut seen = Vec::new();
        for n in decl {
            let (nsze, bs, nguid, uuid) = namespace_identity(&c, n.nsid).await;
            assert_eq!(bs, n.block_size, "nsid {} block size", n.nsid);
            assert_eq!(nsze * u64::from(bs), n.size_bytes, "nsid {} NSZE", n.nsid);
            assert_eq!(nguid, n.nguid, "nsid {} NGUID from the layout", n.nsid);
            assert_eq!(uuid, n.uuid, "nsid {} UUID from the layout", n.nsid);
            seen.push((n.nsid, nsze, bs, nguid, uuid));
        }
        // A declared UUID serves as the NGUID too.
        let declared = [
            0x0f, 0x0e, 0x3d, 0x52, 0x8a, 0x8b, 0x4c, 0x3e, 0x9d, 0x2a, 0x6b, 0x1f, 0x5e, 0x7c,
            0x9a, 0x01,
        ];
        let nine = seen.iter().find(|s| s.0 == 9).unwrap();
        assert_eq!((nine.3, nine.4), (declared, declared));
        let serial = c.identify_controller_parsed().await.unwrap().sn;
        match &first {
            None => first = Some((seen, serial)),
            Some(f) => assert_eq!(f, &(seen, serial), "identity after a restart"),
        }
        // An NSID that does not exist.
        let st = status_of(c.identify_namespace(77).await);
        assert_status(st, Status::INVALID_NS, Some(true));
        let st = status_of(c.ns_descriptors(77).await);
        assert_status(st, Status::INVALID_NS, Some(true));
        c.disconnect().await.unwrap();
        t.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_active_namespace_list() {
    let t = std_target().await;
    let c = connect(t.addr, SUBNQN).await;
    assert_eq!(c.active_ns_list(0).await.unwrap(), vec![1, 2, 3]);
    assert_eq!(c.active_ns_list(1).await.unwrap(), vec![2, 3]);
    assert_eq!(c.active_ns_list(3).await.unwrap(), Vec::<u32>::new());
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_active_namespace_list_rejects_reserved_nsids() {
    // NVMe Base 2.0, Active Namespace ID list (CNS 02h): "If the NSID field is set to FFFFFFFEh
    // or FFFFFFFFh, then the controller shall abort the command with a status code of Invalid
    // Namespace or Format" (Linux nvmet does so).
    let t = std_target().await;
    let c = connect(t.addr, SUBNQN).await;
    for nsid in [0xFFFF_FFFE, 0xFFFF_FFFF] {
        let st = status_of(c.identify(cns::ACTIVE_NSID_LIST, nsid, 0).await);
        assert_status(st, Status::INVALID_NS, Some(true));
    }
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_command_set_structures_and_unknown_cns() {
    let t = std_target().await;
    let c = connect(t.addr, SUBNQN).await;
    // CNS 06h: I/O command set specific Identify Controller (NVM): answered.
    let d = c.identify(cns::CS_CONTROLLER, 0, 0).await.unwrap();
    assert_eq!(d.len(), 4096);
    // CNS 05h for NVM: answered for an existing namespace, Invalid Namespace otherwise.
    c.identify(cns::CS_NAMESPACE, 1, 0).await.unwrap();
    // CNS 08h: I/O command set independent Identify Namespace.
    let d = c
        .identify(cns::CS_INDEPENDENT_NAMESPACE, 2, 0)
        .await
        .unwrap();
    let ind = IdentifyNsIndependent::parse(&d);
    assert_eq!(ind.anagrpid, 1, "ANA group of the namespace");
    assert_ne!(ind.nmic & 1, 0, "shared namespace (multipath)");
    let st = status_of(c.identify(cns::CS_INDEPENDENT_NAMESPACE, 42, 0).await);
    assert_status(st, Status::INVALID_NS, Some(true));
    // A CNS we do not implement.
    for cns in [cns::NVM_SET_LIST, cns::CONTROLLER_LIST, 0xFF] {
        let st = status_of(c.identify(cns, 0, 0).await);
        assert_status(st, Status::INVALID_FIELD, Some(true));
    }
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_pages_standard_and_vendor() {
    let t = std_target().await;
    let c = connect(t.addr, SUBNQN).await;
    // 01h: Error Information (one entry, nothing logged).
    let e = c
        .get_log_page(lid::ERROR_INFORMATION, 0, 64, 0)
        .await
        .unwrap();
    assert_eq!(e.len(), 64);
    // 03h: firmware slots (checked against Identify in another test).
    c.get_log_page(lid::FIRMWARE_SLOT, 0, 512, 0).await.unwrap();
    // 04h: Changed Namespace List, empty.
    let ch = c
        .get_log_page(lid::CHANGED_NS_LIST, 0, 4096, 0)
        .await
        .unwrap();
    assert!(parse_changed_ns_list(&ch).is_empty());
    // 05h: Commands Supported and Effects: the I/O commands we execute are supported.
    let eff = CommandsEffectsLog::parse(
        &c.get_log_page(lid::COMMANDS_SUPPORTED_AND_EFFECTS, 0, 4096, 0)
            .await
            .unwrap(),
    );
    for op in [
        IoOpcode::READ,
        IoOpcode::WRITE,
        IoOpcode::FLUSH,
        IoOpcode::COMPARE,
        IoOpcode::WRITE_ZEROES,
        IoOpcode::DATASET_MANAGEMENT,
    ] {
        assert_ne!(
            eff.iocs[usize::from(op.0)] & effects::CSUPP,
            0,
            "{op:?} supported"
        );
    }
    assert_ne!(eff.iocs[usize::from(IoOpcode::WRITE.0)] & effects::LBCC, 0);
    // 0Ch: ANA, one optimized group with every NSID; RGO returns the group without NSIDs.
    let ana = AnaLog::parse(&c.get_log_page(lid::ANA, 0, 4096, 0).await.unwrap()).unwrap();
    assert_eq!(ana.groups.len(), 1);
    assert_eq!(ana.groups[0].state, ana_state::OPTIMIZED);
    assert_eq!(ana.groups[0].anagrpid, 1);
    assert_eq!(ana.groups[0].nsids, vec![1, 2, 3]);
    let mut g = get_log(lid::ANA, 4096, 0);
    g.lsp = 1;
    let rgo = c.get_log_page_with(g).await.unwrap();
    let rgo = AnaLog::parse(&rgo).unwrap();
    assert_eq!(rgo.groups.len(), 1);
    assert!(rgo.groups[0].nsids.is_empty(), "RGO: no NSID lists");
    // C0h: the generation log.
    let gl = c.generation_log().await.unwrap();
    assert_eq!(gl.current_generation, STANDALONE_GENERATION);
    assert!(gl.version >= GENCHK_VERSION);
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_counters_follow_io() {
    let t = std_target().await;
    let c = connect(t.addr, SUBNQN).await;
    let q = io_queues(&c, 1).await.remove(0);
    let smart = |b: Bytes| SmartLog::parse(&b);
    let before = smart(
        c.get_log_page(lid::SMART_HEALTH, 0xFFFF_FFFF, 512, 0)
            .await
            .unwrap(),
    );
    // 1 MB written and read in 64 KiB commands: 16 commands each way, 2048 units of 512 bytes
    // = 2.048 "data units" (thousands of 512-byte units, rounded up).
    for i in 0..16u64 {
        let d = blocks(i, i * 128, 128, 512);
        q.write(NS_RAM512, i * 128, 512, d, false).await.unwrap();
        q.read(NS_RAM512, i * 128, 128, 512).await.unwrap();
    }
    let after = smart(
        c.get_log_page(lid::SMART_HEALTH, 0xFFFF_FFFF, 512, 0)
            .await
            .unwrap(),
    );
    assert_eq!(after.host_write_commands - before.host_write_commands, 16);
    assert_eq!(after.host_read_commands - before.host_read_commands, 16);
    assert!(after.data_units_written >= before.data_units_written + 2);
    assert!(after.data_units_read >= before.data_units_read + 2);
    assert_eq!(after.critical_warning, 0);
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_page_offsets_and_unknown_pages() {
    let t = std_target().await;
    let c = connect(t.addr, SUBNQN).await;
    let whole = c.get_log_page(lid::SMART_HEALTH, 0, 512, 0).await.unwrap();
    // A window of the page: the same bytes as the whole page at that offset.
    let part = c.get_log_page(lid::SMART_HEALTH, 0, 64, 32).await.unwrap();
    assert_eq!(&part[..], &whole[32..96]);
    // Asking past the end returns the page then zeros.
    let long = c.get_log_page(lid::SMART_HEALTH, 0, 1024, 0).await.unwrap();
    assert_eq!(&long[..512], &whole[..]);
    assert_zero(&long[512..], "past the end of SMART");
    // LPO beyond the page (NVMe Base 2.0, section 5.16: Invalid Field in Command).
    let st = status_of(c.get_log_page(lid::SMART_HEALTH, 0, 64, 4096).await);
    assert_status(st, Status::INVALID_FIELD, Some(true));
    let st = status_of(c.get_log_page(GENERATION_LOG_LID, 0, 4, 1 << 20).await);
    assert_status(st, Status::INVALID_FIELD, Some(true));
    // LPO not dword aligned.
    let st = admin_raw(
        &c,
        &AdminCommand::GetLogPage(get_log(lid::SMART_HEALTH, 64, 2)),
        64,
    )
    .await;
    assert_status(st, Status::INVALID_FIELD, Some(true));
    // Pages we do not have: Invalid Log Page with DNR.
    for l in [
        lid::DEVICE_SELF_TEST,
        lid::TELEMETRY_HOST,
        lid::DISCOVERY,
        0x7f,
        0xbf,
        0xff,
    ] {
        let st = status_of(c.get_log_page(l, 0, 512, 0).await);
        assert_status(st, Status::INVALID_LOG_PAGE, Some(true));
    }
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn number_of_queues_feature() {
    let t = std_target().await;
    let c = connect(t.addr, SUBNQN).await;
    // A request above the limit is granted the limit; NSQA/NCQA are 0's based.
    let granted = c.set_num_queues(1000).await.unwrap();
    assert!((1..=1000).contains(&granted));
    assert_eq!(c.set_num_queues(3).await.unwrap(), 3);
    let dw0 = c
        .get_features(FeatureId::NUMBER_OF_QUEUES, 0, 0)
        .await
        .unwrap()
        .dw0();
    assert_eq!(dw0, 2 | (2 << 16), "Get Features NSQA/NCQA");
    // FFFFh is invalid (NVMe Base 2.0, section 5.27.1.7).
    let st = status_of(
        c.set_features(FeatureId::NUMBER_OF_QUEUES, 0, 0xFFFF_FFFF, None)
            .await,
    );
    assert_status(st, Status::INVALID_FIELD, Some(true));
    // Once an I/O queue exists the count may not change: Command Sequence Error.
    let q = c.connect_io_queue(1, 31).await.unwrap();
    let st = status_of(c.set_num_queues(2).await);
    assert_status(st, Status::CMD_SEQ_ERROR, None);
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_event_config_and_keep_alive_timer_features() {
    let t = std_target().await;
    let c = connect(t.addr, SUBNQN).await;
    c.set_features(FeatureId::ASYNC_EVENT_CONFIG, 0, 0xFFFF_FFFF, None)
        .await
        .unwrap();
    let aec = c
        .get_features(FeatureId::ASYNC_EVENT_CONFIG, 0, 0)
        .await
        .unwrap()
        .dw0();
    let oaes = c.identify_controller_parsed().await.unwrap().oaes;
    assert_eq!(
        aec & !oaes,
        0,
        "AEC {aec:#x} enables only what OAES {oaes:#x} offers"
    );
    assert_ne!(aec & (1 << 11), 0, "ANA change notices enabled");
    c.set_features(FeatureId::ASYNC_EVENT_CONFIG, 0, 0, None)
        .await
        .unwrap();
    assert_eq!(
        c.get_features(FeatureId::ASYNC_EVENT_CONFIG, 0, 0)
            .await
            .unwrap()
            .dw0(),
        0
    );
    // KATO in ms, read back as set.
    c.set_features(FeatureId::KEEP_ALIVE_TIMER, 0, 7000, None)
        .await
        .unwrap();
    let kato = c
        .get_features(FeatureId::KEEP_ALIVE_TIMER, 0, 0)
        .await
        .unwrap()
        .dw0();
    assert_eq!(kato, 7000);
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_write_cache_depends_on_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{PLACEHOLDER_LISTENER}subsystems:
  - nqn: {SUBNQN}
    allow_any_host: true
    namespaces:
      - nsid: 1
        backend: {{ kind: ram, size: 1MiB }}
  - nqn: nqn.2026-11.dev.tessera:files
    allow_any_host: true
    namespaces:
      - nsid: 1
        backend: {{ kind: file, path: {}, size: 1MiB, create: true }}
",
        dir.path().join("f.img").display()
    );
    let t = TestTarget::start(&yaml).await;
    // RAM: no cache. Identify VWC bit 0 clear, Get Features reports it disabled, and it
    // cannot be enabled.
    let ram = connect(t.addr, SUBNQN).await;
    assert_eq!(ram.identify_controller_parsed().await.unwrap().vwc & 1, 0);
    let got = ram
        .get_features(FeatureId::VOLATILE_WRITE_CACHE, 0, 0)
        .await;
    if let Ok(c) = &got {
        assert_eq!(c.dw0() & 1, 0, "no cache, so not enabled");
    }
    let st = status_of(
        ram.set_features(FeatureId::VOLATILE_WRITE_CACHE, 0, 1, None)
            .await,
    );
    assert!(st.dnr(), "enabling an absent cache: {st}");
    // File: the page cache is a volatile write cache the host must flush.
    let file = connect(t.addr, "nqn.2026-11.dev.tessera:files").await;
    assert_eq!(file.identify_controller_parsed().await.unwrap().vwc & 1, 1);
    let dw0 = file
        .get_features(FeatureId::VOLATILE_WRITE_CACHE, 0, 0)
        .await
        .unwrap()
        .dw0();
    assert_eq!(dw0 & 1, 1, "VWC enabled");
    file.set_features(FeatureId::VOLATILE_WRITE_CACHE, 0, 1, None)
        .await
        .unwrap();
    ram.disconnect().await.unwrap();
    file.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_unknown_and_unsaveable_features() {
    let t = std_target().await;
    let c = connect(t.addr, SUBNQN).await;
    for fid in [FeatureId::ARBITRATION, FeatureId::POWER_MANAGEMENT] {
        c.get_features(fid, 0, 0).await.expect("readable");
        let st = status_of(c.set_features(fid, 0, 0, None).await);
        assert!(!st.is_success() && st.dnr(), "Set {fid:?}: {st}");
    }
    // A feature we do not implement.
    let st = status_of(c.get_features(FeatureId(0x7e), 0, 0).await);
    assert_status(st, Status::INVALID_FIELD, Some(true));
    let st = status_of(c.set_features(FeatureId(0x7e), 0, 0, None).await);
    assert_status(st, Status::INVALID_FIELD, Some(true));
    // Save on a feature that cannot be saved (ONCS bit 4 clear).
    let sv = AdminCommand::SetFeatures(SetFeatures {
        nsid: 0,
        fid: FeatureId::KEEP_ALIVE_TIMER,
        sv: true,
        cdw11: 5000,
        cdw12: 0,
        cdw13: 0,
        uuid_index: 0,
    });
    let st = admin_raw(&c, &sv, 0).await;
    assert_status(st, Status::FEATURE_NOT_SAVEABLE, Some(true));
    // SEL = supported capabilities answers without data.
    let caps = AdminCommand::GetFeatures(GetFeatures {
        nsid: 0,
        fid: FeatureId::KEEP_ALIVE_TIMER,
        sel: 3,
        cdw11: 0,
        uuid_index: 0,
    });
    assert!(admin_raw(&c, &caps, 0).await.is_success());
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_admin_opcodes_are_invalid_opcode_with_dnr() {
    let t = std_target().await;
    let c = connect(t.addr, SUBNQN).await;
    // 01h/05h: Create I/O SQ / CQ (fabrics queues are made by Connect); 80h: Format NVM;
    // 0Dh: Namespace Management; C1h: vendor specific.
    for op in [0x01u8, 0x04, 0x05, 0x0d, 0x10, 0x80, 0x84, 0xc1] {
        let mut sqe = AdminCommand::KeepAlive.to_sqe(0, SglDescriptor::transport(0));
        sqe.set_opcode(op);
        let done = within("admin command", c.admin().submit(sqe, None, 0))
            .await
            .unwrap();
        assert_status(done.status(), Status::INVALID_OPCODE, Some(true));
    }
    // The controller is still fine.
    c.keep_alive().await.unwrap();
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_abort() {
    let t = std_target().await;
    let c = connect(t.addr, SUBNQN).await;
    c.keep_alive().await.unwrap();
    // Abort of a command that is not outstanding: success, DW0 bit 0 = "not aborted".
    let abort = AdminCommand::Abort(codec::nvme::cmd::Abort {
        sqid: 0,
        cid: 0x1234,
    });
    let done = c.admin_command(&abort, None, 0).await.unwrap();
    assert_eq!(done.dw0() & 1, 1, "Abort DW0 bit 0: command not aborted");
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_event_requests_park_and_are_limited() {
    let t = std_target().await;
    let c = connect(t.addr, SUBNQN).await;
    let aerl = c.identify_controller_parsed().await.unwrap().aerl;
    // AERL is 0's based: AERL + 1 requests may be outstanding.
    let mut parked = Vec::new();
    for _ in 0..=aerl {
        parked.push(tokio::spawn(c.async_event_request().await.unwrap()));
    }
    // One more is refused at once.
    let extra = c.async_event_request().await.unwrap();
    let r = within("AER beyond the limit", extra).await;
    match r {
        Err(InitiatorError::Status(st)) => assert_status(st, Status::ASYNC_LIMIT, None),
        other => panic!("AER {} beyond AERL: {other:?}", u32::from(aerl) + 2),
    }
    // A standalone server has no events: the requests stay parked.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        parked.iter().all(|h| !h.is_finished()),
        "an AER completed without an event"
    );
    // Other admin commands still flow while AERs are parked.
    c.keep_alive().await.unwrap();
    // Closing the association ends them (no hang).
    c.disconnect().await.unwrap();
    for h in parked {
        let r = within("parked AER ends with its queue", h).await.unwrap();
        assert!(r.is_err(), "a parked AER must not report an event: {r:?}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_log_page_above_mdts_is_invalid_field() {
    // NVMe Base 2.0, Identify Controller MDTS: "If a command is submitted that exceeds this
    // transfer size, then the command is aborted with a status code of Invalid Field in
    // Command." Hosts read large logs in MDTS-sized pieces with LPO.
    let t = std_target().await;
    let c = connect(t.addr, SUBNQN).await;
    let mdts = c.identify_controller_parsed().await.unwrap().mdts;
    let max = 4096u64 << mdts;
    let st = status_of(
        c.get_log_page(lid::SMART_HEALTH, 0, (max * 8) as u32, 0)
            .await,
    );
    assert_status(st, Status::INVALID_FIELD, Some(true));
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_behavior_support_feature_round_trips() {
    let t = std_target().await;
    let c = connect(t.addr, SUBNQN).await;
    let mut page = vec![0u8; 512];
    page[0] = 1; // ACRE: the host honours Command Retry Delay
    c.set_features(FeatureId::HOST_BEHAVIOR, 0, 0, Some(Bytes::from(page)))
        .await
        .unwrap();
    let got = c
        .get_features(FeatureId::HOST_BEHAVIOR, 0, 0)
        .await
        .unwrap();
    assert_eq!(got.data.len(), 512);
    assert_eq!(got.data[0], 1, "ACRE reads back");
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_queues_reported_before_set_features_can_be_connected() {
    // Get Features Number of Queues returns the queues allocated (0's based). Whatever the
    // default, a host may connect the queues the controller says it has (Linux nvmet allows
    // its default without Set Features).
    let t = std_target().await;
    let c = connect(t.addr, SUBNQN).await;
    let dw0 = c
        .get_features(FeatureId::NUMBER_OF_QUEUES, 0, 0)
        .await
        .unwrap()
        .dw0();
    let n = (dw0 & 0xffff).min(dw0 >> 16) + 1;
    let q = c
        .connect_io_queue(u16::try_from(n).unwrap(), 31)
        .await
        .unwrap_or_else(|e| panic!("Get Features says {n} queue(s); I/O Connect QID {n}: {e}"));
    q.read(NS_RAM512, 0, 1, 512).await.unwrap();
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_follows_the_transport_config() {
    // A target started with 4 KiB of in-capsule data and 64 KiB MDTS must say so: a host sizes
    // its in-capsule writes from IOCCSZ and its transfers from MDTS.
    let cfg = tessera::transport::TransportConfig {
        io_incapsule: 4096,
        mdts_bytes: 64 * 1024,
        ..Default::default()
    };
    let t = TestTarget::start_with(STD_YAML, cfg, 1).await;
    let c = connect(t.addr, SUBNQN).await;
    let id = c.identify_controller_parsed().await.unwrap();
    assert_eq!(id.ioccsz, (64 + 4096) / 16, "IOCCSZ");
    assert_eq!(id.mdts, 4, "MDTS: 64 KiB in 4 KiB pages");
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subsystem_without_namespaces() {
    let yaml = format!(
        "{PLACEHOLDER_LISTENER}subsystems:
  - nqn: {SUBNQN}
    allow_any_host: true
    namespaces: []
"
    );
    let t = TestTarget::start(&yaml).await;
    let c = connect(t.addr, SUBNQN).await;
    let id = c.identify_controller_parsed().await.unwrap();
    assert!(
        id.mnan >= 1 && id.mnan <= id.nn.max(1),
        "MNAN {} NN {}",
        id.mnan,
        id.nn
    );
    assert!(c.active_ns_list(0).await.unwrap().is_empty());
    let st = status_of(c.identify_namespace(1).await);
    assert_status(st, Status::INVALID_NS, Some(true));
    let ana = AnaLog::parse(&c.get_log_page(lid::ANA, 0, 4096, 0).await.unwrap()).unwrap();
    assert!(ana.groups.iter().all(|g| g.nsids.is_empty()));
    let q = io_queues(&c, 1).await.remove(0);
    let st = status_of(q.read(1, 0, 1, 512).await);
    assert_status(st, Status::INVALID_NS, Some(true));
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}
