//! Identify data this target reports (NVMe Base 2.0, section 5.17; NVM Command Set 1.0, 4.1.5).
//! Values the Linux host reads are explained where they are set.

use codec::nvme::fabrics::VS_1_4;
use codec::nvme::generation::{GENCHK_FLAG_REQUIRE_STAMP, GENCHK_VERSION, GenCheckInfo};
use codec::nvme::identify::{
    self, DLFEAT_READ_ZEROES, DLFEAT_WRITE_ZEROES_DEALLOCATES, IDENTIFY_DATA_LEN,
    IdentifyController, IdentifyNamespace, IdentifyNsIndependent, LbaFormat, NMIC_SHARED,
    NsIdDescriptor, PowerState,
};

use crate::cluster::generation::SERVER_BEHIND_RETRY_DELAY_100MS;
use crate::controller::ctrl::{AER_OUTSTANDING_MAX, Controller, CtrlKind};
use crate::controller::fabrics::MQES;
use crate::subsystem::namespace::Namespace;
use crate::subsystem::{DISCOVERY_NQN, Subsystem};

/// Firmware revision string (8 ASCII bytes).
pub const FIRMWARE_REVISION: &str = concat!("TS", env!("CARGO_PKG_VERSION"));

/// KAS: Keep Alive granularity in 100 ms units (1 s).
const KAS_100MS: u16 = 10;

/// ANATT: seconds a host waits for an ANA transition (Linux resets the controller past it).
const ANATT_S: u8 = 10;

/// CMIC bit 1: two or more controllers (native multipath); bit 3: ANA reporting.
const CMIC_MULTI_CTRL: u8 = 1 << 1;
const CMIC_ANA: u8 = 1 << 3;
/// OAES bit 8: Namespace Attribute Notices; bit 11: ANA Change Notices; bit 31: Discovery
/// Log Page Change notices (discovery controllers).
const OAES_NS_ATTR: u32 = 1 << 8;
const OAES_ANA: u32 = 1 << 11;
const OAES_DISCOVERY: u32 = 1 << 31;
/// LPA bit 1: Commands Supported and Effects log; bit 2: extended data for Get Log Page
/// (NUMDU, LPO), which Linux needs for log pages larger than 4 KiB and offsets.
const LPA_EFFECTS: u8 = 1 << 1;
const LPA_EXTENDED: u8 = 1 << 2;
/// ONCS bit 0: Compare; bit 2: Dataset Management; bit 3: Write Zeroes.
const ONCS: u16 = (1 << 0) | (1 << 2) | (1 << 3);
/// VWC bit 0: a volatile write cache is present; bits 2:1 = 11b: Flush with NSID FFFFFFFFh
/// is supported.
const VWC_PRESENT: u8 = 1 << 0;
const VWC_FLUSH_BROADCAST: u8 = 0b11 << 1;
/// SGLS bits 1:0 = 01b: SGLs supported, no alignment required; bit 20: Data Block descriptors
/// with the Offset subtype (in-capsule data) are supported.
const SGLS: u32 = 0b01 | (1 << 20);
/// SGLS bit 18 ("SGL Length"): a command may carry a data SGL longer than the data it
/// transfers; the transport uses only the bytes needed (one rule for every command, the
/// codec's check_sgl). Linux's discard path relies on it.
const SGLS_LONGER_THAN_DATA: u32 = 1 << 18;
/// CTRATT bit 0: 128-bit Host Identifier. Fabrics hosts always identify with the 128-bit
/// HOSTID of the Connect data (NVMe Base 2.0, Figure 549; the Host Identifier feature, FID
/// 81h, allows only the 128-bit extended form over fabrics), so every controller here uses
/// 128-bit host IDs. Linux nvmet and SPDK set the bit too.
const CTRATT_HOST_ID_128: u32 = 1 << 0;
/// OFCS bit 0: the Disconnect command is supported (fabrics.rs).
const OFCS_DISCONNECT: u16 = 1 << 0;
/// ANACAP bit 0: reports ANA Optimized state; bit 6: ANAGRPID does not change while attached.
const ANACAP: u8 = (1 << 0) | (1 << 6);
/// ANACAP bit 2: reports ANA Inaccessible state (a cluster server while draining or down).
const ANACAP_INACCESSIBLE: u8 = 1 << 2;
/// FRMW: slot 1 read-only (bit 0), one slot (bits 3:1).
const FRMW: u8 = 0b0011;

/// MDTS in units of the minimum page size (4 KiB), as a power of two (rounded down).
fn mdts(mdts_bytes: u32) -> u8 {
    let pages = (mdts_bytes / 4096).max(1);
    u8::try_from(31 - pages.leading_zeros()).unwrap_or(0)
}

/// Identify Controller (CNS 01h) for `ctrl`.
pub fn controller(ctrl: &Controller) -> [u8; IDENTIFY_DATA_LEN] {
    match (&ctrl.subsys, ctrl.kind) {
        (Some(s), CtrlKind::Io) => io_controller(ctrl, s),
        _ => discovery_controller(ctrl),
    }
}

fn io_controller(ctrl: &Controller, s: &Subsystem) -> [u8; IDENTIFY_DATA_LEN] {
    let namespaces = s.namespaces();
    let vwc = namespaces.values().any(|n| n.volume.volatile_write_cache());
    // NN: the largest NSID in use (at least 1). MNAN must be non-zero and at most NN when ANA
    // is reported (Linux refuses the controller otherwise: "Invalid MNAN value").
    let nn = namespaces.keys().next_back().copied().unwrap_or(1).max(1);
    let cfg = ctrl.registry.transport();
    let paths = ctrl.registry.paths();
    IdentifyController {
        sn: s.serial.clone(),
        mn: s.model.clone(),
        fr: FIRMWARE_REVISION.to_string(),
        rab: 6,
        cmic: CMIC_MULTI_CTRL | CMIC_ANA,
        mdts: mdts(cfg.mdts_bytes),
        cntlid: ctrl.cntlid,
        ver: VS_1_4,
        oaes: OAES_NS_ATTR | OAES_ANA,
        ctratt: CTRATT_HOST_ID_128,
        cntrltype: 1,
        crdt: [SERVER_BEHIND_RETRY_DELAY_100MS, 0, 0],
        acl: 3,
        aerl: u8::try_from(AER_OUTSTANDING_MAX - 1).unwrap_or(0),
        frmw: FRMW,
        lpa: LPA_EFFECTS | LPA_EXTENDED,
        elpe: 0,
        npss: 0,
        kas: KAS_100MS,
        anatt: ANATT_S,
        anacap: if paths.is_cluster() {
            ANACAP | ANACAP_INACCESSIBLE
        } else {
            ANACAP
        },
        // One ANA group (every namespace; each server reports its own state for it). Linux
        // sizes its ANA log buffer with NANAGRPID descriptors.
        anagrpmax: paths.ana_groups_max(),
        nanagrpid: paths.ana_groups_max(),
        sqes: 0x66,
        cqes: 0x44,
        maxcmd: MQES + 1,
        nn,
        oncs: ONCS,
        vwc: if vwc {
            VWC_PRESENT | VWC_FLUSH_BROADCAST
        } else {
            VWC_FLUSH_BROADCAST
        },
        sgls: SGLS | SGLS_LONGER_THAN_DATA,
        mnan: nn,
        subnqn: s.nqn.clone(),
        // IOCCSZ/IORCSZ in 16-byte units: the 64-byte SQE plus in-capsule data; a 16-byte CQE.
        ioccsz: (64 + cfg.io_incapsule) / 16,
        iorcsz: 1,
        icdoff: 0,
        fcatt: 0,
        msdbd: 1,
        ofcs: OFCS_DISCONNECT,
        // A software target has no device power of its own to report: MP 0 and ENLAT/EXLAT 0
        // ("not reported") rather than an invented 25 W. nvme-cli prints "0.00W".
        psd0: PowerState::default(),
        genchk: Some(GenCheckInfo {
            version: GENCHK_VERSION,
            // Internal subsystems refuse unstamped commands; say so.
            flags: if s.internal {
                GENCHK_FLAG_REQUIRE_STAMP
            } else {
                0
            },
            generation: ctrl.registry.generation.current(),
        }),
        ..IdentifyController::default()
    }
    .to_bytes()
}

/// The discovery controller's serial number: stable per target, derived like a subsystem's
/// (yaml's derived_serial) from the discovery NQN and this target's listeners, so two targets
/// (different portals) differ and a restart keeps it. Linux nvmet reports its discovery
/// subsystem's serial too; an empty SN is what nvme-cli showed as blank.
pub fn discovery_serial(listeners: &[std::net::SocketAddr]) -> String {
    let portals: Vec<String> = listeners.iter().map(ToString::to_string).collect();
    yaml::derived_serial(&format!("{DISCOVERY_NQN}@{}", portals.join(",")))
}

fn discovery_controller(ctrl: &Controller) -> [u8; IDENTIFY_DATA_LEN] {
    let cfg = ctrl.registry.transport();
    IdentifyController {
        sn: discovery_serial(&ctrl.registry.listeners()),
        mn: "Tessera discovery".to_string(),
        fr: FIRMWARE_REVISION.to_string(),
        // The transport caps every command's data, Get Log Page included: say so (0 would
        // claim no limit).
        mdts: mdts(cfg.mdts_bytes),
        cntlid: ctrl.cntlid,
        ver: VS_1_4,
        oaes: OAES_DISCOVERY,
        ctratt: CTRATT_HOST_ID_128,
        cntrltype: 2,
        aerl: u8::try_from(AER_OUTSTANDING_MAX - 1).unwrap_or(0),
        lpa: LPA_EXTENDED,
        kas: KAS_100MS,
        sqes: 0x66,
        cqes: 0x44,
        maxcmd: MQES + 1,
        sgls: SGLS | SGLS_LONGER_THAN_DATA,
        subnqn: DISCOVERY_NQN.to_string(),
        msdbd: 1,
        ofcs: OFCS_DISCONNECT,
        ..IdentifyController::default()
    }
    .to_bytes()
}

/// Identify Namespace (CNS 00h); `anagrpid`: the ANA group the namespace is reported in through
/// this server (`Registry::paths`).
pub fn namespace(ns: &Namespace, anagrpid: u32) -> [u8; IDENTIFY_DATA_LEN] {
    IdentifyNamespace {
        nsze: ns.nlbas,
        ncap: ns.nlbas,
        nuse: ns.nlbas,
        flbas: 0,
        nmic: NMIC_SHARED,
        // Deallocated blocks read as zeros; Write Zeroes with DEAC deallocates.
        dlfeat: DLFEAT_READ_ZEROES | DLFEAT_WRITE_ZEROES_DEALLOCATES,
        anagrpid,
        nguid: ns.nguid,
        lbaf: vec![LbaFormat {
            ms: 0,
            lbads: u8::try_from(ns.lba_shift).unwrap_or(9),
            rp: 0,
        }],
        ..IdentifyNamespace::default()
    }
    .to_bytes()
}

/// I/O Command Set Independent Identify Namespace (CNS 08h).
pub fn cs_independent_namespace(_ns: &Namespace, anagrpid: u32) -> [u8; IDENTIFY_DATA_LEN] {
    IdentifyNsIndependent {
        nmic: NMIC_SHARED,
        anagrpid,
        nstat: 1,
        ..IdentifyNsIndependent::default()
    }
    .to_bytes()
}

/// Active Namespace ID list (CNS 02h): NSIDs greater than `after`, ascending.
pub fn active_ns_list(s: &Subsystem, after: u32) -> [u8; IDENTIFY_DATA_LEN] {
    let nsids: Vec<u32> = s.namespaces().keys().copied().collect();
    identify::active_ns_list(&nsids, after)
}

/// Namespace Identification Descriptor list (CNS 03h): NGUID, UUID and CSI (NVM).
pub fn ns_descriptors(ns: &Namespace) -> [u8; IDENTIFY_DATA_LEN] {
    identify::ns_id_descriptor_list(&[
        NsIdDescriptor::Nguid(ns.nguid),
        NsIdDescriptor::Uuid(ns.uuid),
        NsIdDescriptor::Csi(0),
    ])
}
