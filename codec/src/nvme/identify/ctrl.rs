//! Identify Controller data structure (CNS 01h; NVMe Base 2.0, section 5.17.2.1, Figure 275).

use super::{IDENTIFY_DATA_LEN, fixed, get_array, get_ascii, get_cstr, put_bytes, zeroed};
use crate::nvme::fabrics::{NQN_FIELD_LEN, put_nqn};
use crate::nvme::generation::GenCheckInfo;
use crate::wire::{get_u16, get_u32, put_ascii, put_u16, put_u32};

/// Byte offsets of Identify Controller fields (NVMe Base 2.0, Figure 275).
pub mod ctrl_off {
    pub const VID: usize = 0;
    pub const SSVID: usize = 2;
    /// Serial Number, 20 ASCII bytes, space padded.
    pub const SN: usize = 4;
    pub const SN_LEN: usize = 20;
    /// Model Number, 40 ASCII bytes.
    pub const MN: usize = 24;
    pub const MN_LEN: usize = 40;
    /// Firmware Revision, 8 ASCII bytes.
    pub const FR: usize = 64;
    pub const FR_LEN: usize = 8;
    pub const RAB: usize = 72;
    /// IEEE OUI, 3 bytes.
    pub const IEEE: usize = 73;
    /// Controller Multi-Path I/O and Namespace Sharing Capabilities.
    pub const CMIC: usize = 76;
    /// Maximum Data Transfer Size, 2^n units of CAP.MPSMIN; 0 = no limit.
    pub const MDTS: usize = 77;
    pub const CNTLID: usize = 78;
    pub const VER: usize = 80;
    pub const RTD3R: usize = 84;
    pub const RTD3E: usize = 88;
    pub const OAES: usize = 92;
    pub const CTRATT: usize = 96;
    pub const RRLS: usize = 100;
    /// Controller Type: 1 I/O, 2 Discovery, 3 Administrative.
    pub const CNTRLTYPE: usize = 111;
    pub const FGUID: usize = 112;
    /// Command Retry Delay Times 1..3, u16 each in 100 ms units.
    pub const CRDT1: usize = 128;
    pub const CRDT2: usize = 130;
    pub const CRDT3: usize = 132;
    pub const OACS: usize = 256;
    pub const ACL: usize = 258;
    pub const AERL: usize = 259;
    pub const FRMW: usize = 260;
    pub const LPA: usize = 261;
    pub const ELPE: usize = 262;
    pub const NPSS: usize = 263;
    pub const AVSCC: usize = 264;
    pub const APSTA: usize = 265;
    pub const WCTEMP: usize = 266;
    pub const CCTEMP: usize = 268;
    /// Keep Alive Support: granularity in 100 ms units; non-zero means Keep Alive is supported.
    pub const KAS: usize = 320;
    pub const ANATT: usize = 342;
    pub const ANACAP: usize = 343;
    pub const ANAGRPMAX: usize = 344;
    pub const NANAGRPID: usize = 348;
    pub const SQES: usize = 512;
    pub const CQES: usize = 513;
    pub const MAXCMD: usize = 514;
    pub const NN: usize = 516;
    pub const ONCS: usize = 520;
    pub const FUSES: usize = 522;
    pub const FNA: usize = 524;
    pub const VWC: usize = 525;
    pub const AWUN: usize = 526;
    pub const AWUPF: usize = 528;
    pub const ICSVSCC: usize = 530;
    pub const NWPC: usize = 531;
    pub const ACWU: usize = 532;
    pub const SGLS: usize = 536;
    pub const MNAN: usize = 540;
    /// NVM Subsystem NVMe Qualified Name, 256 bytes, NUL terminated.
    pub const SUBNQN: usize = 768;
    /// I/O Queue Command Capsule Supported Size, in 16-byte units (fabrics, 1792..2047).
    pub const IOCCSZ: usize = 1792;
    /// I/O Queue Response Capsule Supported Size, in 16-byte units.
    pub const IORCSZ: usize = 1796;
    /// In Capsule Data Offset, in 16-byte units.
    pub const ICDOFF: usize = 1800;
    /// Fabrics Controller Attributes.
    pub const FCATT: usize = 1802;
    /// Maximum SGL Data Block Descriptors.
    pub const MSDBD: usize = 1803;
    /// Optional Fabric Commands Support (bit 0: Disconnect).
    pub const OFCS: usize = 1804;
    /// Power State 0 Descriptor; 32 descriptors of 32 bytes.
    pub const PSD0: usize = 2048;
    pub const PSD_LEN: usize = 32;
    /// Vendor Specific (see [`crate::nvme::generation`]).
    pub const VS: usize = 3072;
}

// Pin the offsets the Linux host reads against the spec's figure and the struct's end.
const _: () = {
    use ctrl_off::*;
    assert!(SN + SN_LEN == MN && MN + MN_LEN == FR && FR + FR_LEN == RAB);
    assert!(CMIC == 76 && MDTS == 77 && CNTLID == 78 && VER == 80);
    assert!(OACS == 256 && KAS == 320 && SQES == 512 && NN == 516);
    assert!(ONCS == 520 && VWC == 525 && SGLS == 536 && MNAN == 540);
    assert!(SUBNQN == 768 && SUBNQN + NQN_FIELD_LEN == 1024);
    assert!(IOCCSZ == 1792 && MSDBD == 1803);
    assert!(PSD0 + 32 * PSD_LEN == VS);
    assert!(VS + 1024 == IDENTIFY_DATA_LEN);
};

/// CMIC bits.
pub mod cmic {
    pub const MULTI_PORT: u8 = 1 << 0;
    pub const MULTI_CONTROLLER: u8 = 1 << 1;
    pub const SR_IOV: u8 = 1 << 2;
    pub const ANA_REPORTING: u8 = 1 << 3;
}

/// ONCS bits (Optional NVM Command Support).
pub mod oncs {
    pub const COMPARE: u16 = 1 << 0;
    pub const WRITE_UNCORRECTABLE: u16 = 1 << 1;
    pub const DSM: u16 = 1 << 2;
    pub const WRITE_ZEROES: u16 = 1 << 3;
    pub const SAVE_FEATURES: u16 = 1 << 4;
    pub const RESERVATIONS: u16 = 1 << 5;
    pub const TIMESTAMP: u16 = 1 << 6;
    pub const VERIFY: u16 = 1 << 7;
    pub const COPY: u16 = 1 << 8;
}

/// SGLS bits.
pub mod sgls {
    /// Bits 1:0 = 01b: SGLs supported, no alignment requirement.
    pub const SUPPORTED: u32 = 0b01;
    /// Bit 2: Keyed SGL Data Block descriptor supported (RDMA).
    pub const KEYED: u32 = 1 << 2;
    /// Bit 20: the Address of a Data Block may be an offset (SAOS): in-capsule data with the
    /// Offset subtype.
    pub const OFFSET: u32 = 1 << 20;
    /// Bit 21: Transport SGL Data Block descriptor supported.
    pub const TRANSPORT: u32 = 1 << 21;
}

/// OAES bits (Optional Asynchronous Events Supported).
pub mod oaes {
    pub const NS_ATTRIBUTE: u32 = 1 << 8;
    pub const FW_ACTIVATION: u32 = 1 << 9;
    pub const ANA_CHANGE: u32 = 1 << 11;
    pub const DISCOVERY_LOG_CHANGE: u32 = 1 << 31;
}

/// LPA bits (Log Page Attributes).
pub mod lpa {
    pub const SMART_PER_NS: u8 = 1 << 0;
    pub const COMMANDS_EFFECTS: u8 = 1 << 1;
    pub const EXTENDED_DATA: u8 = 1 << 2;
}

/// CNTRLTYPE values.
pub mod cntrltype {
    pub const IO: u8 = 1;
    pub const DISCOVERY: u8 = 2;
    pub const ADMIN: u8 = 3;
}

/// Byte offsets inside a 32-byte Power State Descriptor (NVMe Base 2.0, Figure 276).
pub mod psd_off {
    /// Maximum Power, u16 (centiwatts, or 0.0001 W with MXPS).
    pub const MP: usize = 0;
    /// Bit 0 MXPS (max power scale), bit 1 NOPS (non-operational).
    pub const FLAGS: usize = 3;
    pub const ENLAT: usize = 4;
    pub const EXLAT: usize = 8;
    pub const RRT: usize = 12;
    pub const RRL: usize = 13;
    pub const RWT: usize = 14;
    pub const RWL: usize = 15;
    pub const IDLP: usize = 16;
    pub const IPS: usize = 18;
    pub const ACTP: usize = 20;
    /// APW (bits 2:0) and APS (bits 7:6).
    pub const APW_APS: usize = 22;
}

/// A Power State Descriptor (NVMe Base 2.0, Figure 276).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PowerState {
    pub mp: u16,
    pub mxps: bool,
    pub nops: bool,
    pub enlat: u32,
    pub exlat: u32,
    pub rrt: u8,
    pub rrl: u8,
    pub rwt: u8,
    pub rwl: u8,
    pub idlp: u16,
    pub ips: u8,
    pub actp: u16,
    pub apw_aps: u8,
}

impl PowerState {
    fn write(&self, b: &mut [u8; IDENTIFY_DATA_LEN], base: usize) {
        put_u16(b, base + psd_off::MP, self.mp);
        b[base + psd_off::FLAGS] = u8::from(self.mxps) | (u8::from(self.nops) << 1);
        put_u32(b, base + psd_off::ENLAT, self.enlat);
        put_u32(b, base + psd_off::EXLAT, self.exlat);
        b[base + psd_off::RRT] = self.rrt;
        b[base + psd_off::RRL] = self.rrl;
        b[base + psd_off::RWT] = self.rwt;
        b[base + psd_off::RWL] = self.rwl;
        put_u16(b, base + psd_off::IDLP, self.idlp);
        b[base + psd_off::IPS] = self.ips;
        put_u16(b, base + psd_off::ACTP, self.actp);
        b[base + psd_off::APW_APS] = self.apw_aps;
    }

    fn read(b: &[u8; IDENTIFY_DATA_LEN], base: usize) -> Self {
        let flags = b[base + psd_off::FLAGS];
        Self {
            mp: get_u16(b, base + psd_off::MP),
            mxps: flags & 1 != 0,
            nops: flags & 2 != 0,
            enlat: get_u32(b, base + psd_off::ENLAT),
            exlat: get_u32(b, base + psd_off::EXLAT),
            rrt: b[base + psd_off::RRT],
            rrl: b[base + psd_off::RRL],
            rwt: b[base + psd_off::RWT],
            rwl: b[base + psd_off::RWL],
            idlp: get_u16(b, base + psd_off::IDLP),
            ips: b[base + psd_off::IPS],
            actp: get_u16(b, base + psd_off::ACTP),
            apw_aps: b[base + psd_off::APW_APS],
        }
    }
}

/// Identify Controller, with every field the Linux host reads. Fields not listed are zero.
/// Build with struct-update syntax from `IdentifyController::default()`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentifyController {
    pub vid: u16,
    pub ssvid: u16,
    pub sn: String,
    pub mn: String,
    pub fr: String,
    pub rab: u8,
    pub ieee: [u8; 3],
    /// See [`cmic`].
    pub cmic: u8,
    pub mdts: u8,
    pub cntlid: u16,
    /// Same encoding as the VS property.
    pub ver: u32,
    pub rtd3r: u32,
    pub rtd3e: u32,
    /// See [`oaes`].
    pub oaes: u32,
    pub ctratt: u32,
    /// See [`cntrltype`].
    pub cntrltype: u8,
    pub fguid: [u8; 16],
    /// CRDT1..CRDT3 in 100 ms units.
    pub crdt: [u16; 3],
    pub oacs: u16,
    /// Abort Command Limit, 0's based.
    pub acl: u8,
    /// Asynchronous Event Request Limit, 0's based.
    pub aerl: u8,
    pub frmw: u8,
    /// See [`lpa`].
    pub lpa: u8,
    /// Error Log Page Entries, 0's based.
    pub elpe: u8,
    /// Number of Power States Support, 0's based.
    pub npss: u8,
    pub avscc: u8,
    pub apsta: u8,
    pub wctemp: u16,
    pub cctemp: u16,
    pub kas: u16,
    pub anatt: u8,
    pub anacap: u8,
    pub anagrpmax: u32,
    pub nanagrpid: u32,
    /// Required (bits 3:0) and maximum (bits 7:4) SQ entry size, log2: 0x66 for 64 bytes.
    pub sqes: u8,
    /// 0x44 for 16 bytes.
    pub cqes: u8,
    pub maxcmd: u16,
    pub nn: u32,
    /// See [`oncs`].
    pub oncs: u16,
    pub fuses: u16,
    pub fna: u8,
    pub vwc: u8,
    pub awun: u16,
    pub awupf: u16,
    pub icsvscc: u8,
    pub nwpc: u8,
    pub acwu: u16,
    /// See [`sgls`].
    pub sgls: u32,
    pub mnan: u32,
    pub subnqn: String,
    pub ioccsz: u32,
    pub iorcsz: u32,
    pub icdoff: u16,
    pub fcatt: u8,
    pub msdbd: u8,
    pub ofcs: u16,
    pub psd0: PowerState,
    /// Tessera's generation-check advertisement in the vendor area.
    pub genchk: Option<GenCheckInfo>,
}

impl IdentifyController {
    pub fn to_bytes(&self) -> [u8; IDENTIFY_DATA_LEN] {
        use ctrl_off as o;
        let mut b = zeroed();
        put_u16(&mut b, o::VID, self.vid);
        put_u16(&mut b, o::SSVID, self.ssvid);
        put_ascii(&mut b, o::SN, o::SN_LEN, &self.sn);
        put_ascii(&mut b, o::MN, o::MN_LEN, &self.mn);
        put_ascii(&mut b, o::FR, o::FR_LEN, &self.fr);
        b[o::RAB] = self.rab;
        put_bytes(&mut b, o::IEEE, &self.ieee);
        b[o::CMIC] = self.cmic;
        b[o::MDTS] = self.mdts;
        put_u16(&mut b, o::CNTLID, self.cntlid);
        put_u32(&mut b, o::VER, self.ver);
        put_u32(&mut b, o::RTD3R, self.rtd3r);
        put_u32(&mut b, o::RTD3E, self.rtd3e);
        put_u32(&mut b, o::OAES, self.oaes);
        put_u32(&mut b, o::CTRATT, self.ctratt);
        b[o::CNTRLTYPE] = self.cntrltype;
        put_bytes(&mut b, o::FGUID, &self.fguid);
        put_u16(&mut b, o::CRDT1, self.crdt[0]);
        put_u16(&mut b, o::CRDT2, self.crdt[1]);
        put_u16(&mut b, o::CRDT3, self.crdt[2]);
        put_u16(&mut b, o::OACS, self.oacs);
        b[o::ACL] = self.acl;
        b[o::AERL] = self.aerl;
        b[o::FRMW] = self.frmw;
        b[o::LPA] = self.lpa;
        b[o::ELPE] = self.elpe;
        b[o::NPSS] = self.npss;
        b[o::AVSCC] = self.avscc;
        b[o::APSTA] = self.apsta;
        put_u16(&mut b, o::WCTEMP, self.wctemp);
        put_u16(&mut b, o::CCTEMP, self.cctemp);
        put_u16(&mut b, o::KAS, self.kas);
        b[o::ANATT] = self.anatt;
        b[o::ANACAP] = self.anacap;
        put_u32(&mut b, o::ANAGRPMAX, self.anagrpmax);
        put_u32(&mut b, o::NANAGRPID, self.nanagrpid);
        b[o::SQES] = self.sqes;
        b[o::CQES] = self.cqes;
        put_u16(&mut b, o::MAXCMD, self.maxcmd);
        put_u32(&mut b, o::NN, self.nn);
        put_u16(&mut b, o::ONCS, self.oncs);
        put_u16(&mut b, o::FUSES, self.fuses);
        b[o::FNA] = self.fna;
        b[o::VWC] = self.vwc;
        put_u16(&mut b, o::AWUN, self.awun);
        put_u16(&mut b, o::AWUPF, self.awupf);
        b[o::ICSVSCC] = self.icsvscc;
        b[o::NWPC] = self.nwpc;
        put_u16(&mut b, o::ACWU, self.acwu);
        put_u32(&mut b, o::SGLS, self.sgls);
        put_u32(&mut b, o::MNAN, self.mnan);
        put_nqn(&mut b, o::SUBNQN, &self.subnqn);
        put_u32(&mut b, o::IOCCSZ, self.ioccsz);
        put_u32(&mut b, o::IORCSZ, self.iorcsz);
        put_u16(&mut b, o::ICDOFF, self.icdoff);
        b[o::FCATT] = self.fcatt;
        b[o::MSDBD] = self.msdbd;
        put_u16(&mut b, o::OFCS, self.ofcs);
        self.psd0.write(&mut b, o::PSD0);
        if let Some(g) = &self.genchk {
            g.write(&mut b);
        }
        b
    }

    /// Decode (a short buffer reads as zero-extended).
    pub fn parse(raw: &[u8]) -> Self {
        use ctrl_off as o;
        let b = fixed(raw);
        let b = &b;
        Self {
            vid: get_u16(b, o::VID),
            ssvid: get_u16(b, o::SSVID),
            sn: get_ascii(b, o::SN, o::SN_LEN),
            mn: get_ascii(b, o::MN, o::MN_LEN),
            fr: get_ascii(b, o::FR, o::FR_LEN),
            rab: b[o::RAB],
            ieee: get_array(b, o::IEEE),
            cmic: b[o::CMIC],
            mdts: b[o::MDTS],
            cntlid: get_u16(b, o::CNTLID),
            ver: get_u32(b, o::VER),
            rtd3r: get_u32(b, o::RTD3R),
            rtd3e: get_u32(b, o::RTD3E),
            oaes: get_u32(b, o::OAES),
            ctratt: get_u32(b, o::CTRATT),
            cntrltype: b[o::CNTRLTYPE],
            fguid: get_array(b, o::FGUID),
            crdt: [
                get_u16(b, o::CRDT1),
                get_u16(b, o::CRDT2),
                get_u16(b, o::CRDT3),
            ],
            oacs: get_u16(b, o::OACS),
            acl: b[o::ACL],
            aerl: b[o::AERL],
            frmw: b[o::FRMW],
            lpa: b[o::LPA],
            elpe: b[o::ELPE],
            npss: b[o::NPSS],
            avscc: b[o::AVSCC],
            apsta: b[o::APSTA],
            wctemp: get_u16(b, o::WCTEMP),
            cctemp: get_u16(b, o::CCTEMP),
            kas: get_u16(b, o::KAS),
            anatt: b[o::ANATT],
            anacap: b[o::ANACAP],
            anagrpmax: get_u32(b, o::ANAGRPMAX),
            nanagrpid: get_u32(b, o::NANAGRPID),
            sqes: b[o::SQES],
            cqes: b[o::CQES],
            maxcmd: get_u16(b, o::MAXCMD),
            nn: get_u32(b, o::NN),
            oncs: get_u16(b, o::ONCS),
            fuses: get_u16(b, o::FUSES),
            fna: b[o::FNA],
            vwc: b[o::VWC],
            awun: get_u16(b, o::AWUN),
            awupf: get_u16(b, o::AWUPF),
            icsvscc: b[o::ICSVSCC],
            nwpc: b[o::NWPC],
            acwu: get_u16(b, o::ACWU),
            sgls: get_u32(b, o::SGLS),
            mnan: get_u32(b, o::MNAN),
            subnqn: get_cstr(b, o::SUBNQN, NQN_FIELD_LEN),
            ioccsz: get_u32(b, o::IOCCSZ),
            iorcsz: get_u32(b, o::IORCSZ),
            icdoff: get_u16(b, o::ICDOFF),
            fcatt: b[o::FCATT],
            msdbd: b[o::MSDBD],
            ofcs: get_u16(b, o::OFCS),
            psd0: PowerState::read(b, o::PSD0),
            genchk: GenCheckInfo::parse(b),
        }
    }
}
