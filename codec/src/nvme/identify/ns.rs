//! Namespace Identify structures: Identify Namespace (CNS 00h; NVM Command Set 1.0, Figure 97),
//! Active Namespace ID list (CNS 02h), Namespace Identification Descriptor list (CNS 03h;
//! NVMe Base 2.0, Figure 278), I/O Command Set specific Identify Namespace / Controller for the
//! NVM Command Set (CNS 05h/06h with CSI 0; NVM Command Set 1.0, Figures 100–101) and I/O Command
//! Set Independent Identify Namespace (CNS 08h; NVMe Base 2.0, Figure 280).

use super::{IDENTIFY_DATA_LEN, fixed, get_array, put_bytes, zeroed};
use crate::wire::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};

/// Byte offsets of Identify Namespace fields (NVM Command Set 1.0, Figure 97).
pub mod ns_off {
    pub const NSZE: usize = 0;
    pub const NCAP: usize = 8;
    pub const NUSE: usize = 16;
    pub const NSFEAT: usize = 24;
    /// Number of LBA Formats, 0's based.
    pub const NLBAF: usize = 25;
    /// Formatted LBA Size: format index bits 3:0 (low) and 6:5 (high), bit 4 extended metadata.
    pub const FLBAS: usize = 26;
    pub const MC: usize = 27;
    pub const DPC: usize = 28;
    pub const DPS: usize = 29;
    /// Namespace Multi-path I/O and Namespace Sharing Capabilities: bit 0 shared.
    pub const NMIC: usize = 30;
    pub const RESCAP: usize = 31;
    pub const FPI: usize = 32;
    /// Deallocate Logical Block Features.
    pub const DLFEAT: usize = 33;
    pub const NAWUN: usize = 34;
    pub const NAWUPF: usize = 36;
    pub const NACWU: usize = 38;
    pub const NABSN: usize = 40;
    pub const NABO: usize = 42;
    pub const NABSPF: usize = 44;
    pub const NOIOB: usize = 46;
    /// NVM Capacity, 16 bytes.
    pub const NVMCAP: usize = 48;
    pub const NPWG: usize = 64;
    pub const NPWA: usize = 66;
    pub const NPDG: usize = 68;
    pub const NPDA: usize = 70;
    pub const NOWS: usize = 72;
    pub const ANAGRPID: usize = 92;
    pub const NSATTR: usize = 99;
    pub const NVMSETID: usize = 100;
    pub const ENDGID: usize = 102;
    pub const NGUID: usize = 104;
    pub const EUI64: usize = 120;
    /// LBA Format 0 Support; 64 formats of 4 bytes.
    pub const LBAF0: usize = 128;
    pub const LBAF_LEN: usize = 4;
    /// Vendor Specific.
    pub const VS: usize = 384;
}

/// Number of LBA format slots (NVM Command Set 1.0: NLBAF up to 63).
pub const MAX_LBA_FORMATS: usize = 64;

const _: () = {
    use ns_off::*;
    assert!(NGUID + 16 == EUI64 && EUI64 + 8 == LBAF0);
    assert!(LBAF0 + MAX_LBA_FORMATS * LBAF_LEN == VS);
    assert!(ANAGRPID == 92 && NMIC == 30 && DLFEAT == 33);
};

/// NSFEAT bit 0: thin provisioning (NUSE meaningful); bit 4: NPWG..NOWS valid.
pub const NSFEAT_THIN: u8 = 1 << 0;
pub const NSFEAT_OPTPERF: u8 = 1 << 4;
/// NMIC bit 0: the namespace may be attached to more than one controller.
pub const NMIC_SHARED: u8 = 1 << 0;
/// DLFEAT bits 2:0 = 001b: deallocated blocks read as zeros; bit 3: Write Zeroes DEAC honoured.
pub const DLFEAT_READ_ZEROES: u8 = 0b001;
pub const DLFEAT_WRITE_ZEROES_DEALLOCATES: u8 = 1 << 3;

/// One LBA Format (NVM Command Set 1.0, Figure 98).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LbaFormat {
    /// Metadata Size in bytes.
    pub ms: u16,
    /// LBA Data Size, log2 (9 = 512 bytes, 12 = 4 KiB).
    pub lbads: u8,
    /// Relative Performance (bits 1:0).
    pub rp: u8,
}

/// Identify Namespace (CNS 00h).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentifyNamespace {
    pub nsze: u64,
    pub ncap: u64,
    pub nuse: u64,
    pub nsfeat: u8,
    /// Formats beyond `lbaf.len()` are zero; NLBAF is written as `lbaf.len() - 1`.
    pub flbas: u8,
    pub mc: u8,
    pub dpc: u8,
    pub dps: u8,
    pub nmic: u8,
    pub rescap: u8,
    pub fpi: u8,
    pub dlfeat: u8,
    pub nawun: u16,
    pub nawupf: u16,
    pub nacwu: u16,
    pub nabsn: u16,
    pub nabo: u16,
    pub nabspf: u16,
    pub noiob: u16,
    pub nvmcap: u128,
    pub npwg: u16,
    pub npwa: u16,
    pub npdg: u16,
    pub npda: u16,
    pub nows: u16,
    pub anagrpid: u32,
    pub nsattr: u8,
    pub nvmsetid: u16,
    pub endgid: u16,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    /// Supported LBA formats (1..=64); parsing returns NLBAF + 1 of them.
    pub lbaf: Vec<LbaFormat>,
}

impl IdentifyNamespace {
    /// The format index FLBAS selects (bits 3:0 low, bits 6:5 high).
    pub fn format_index(&self) -> usize {
        usize::from(self.flbas & 0xf) | (usize::from((self.flbas >> 5) & 0x3) << 4)
    }

    /// The logical block size of the selected format, if valid (LBADS 9..=31).
    pub fn lba_size(&self) -> Option<u32> {
        let f = self.lbaf.get(self.format_index())?;
        (9..32).contains(&f.lbads).then(|| 1u32 << f.lbads)
    }

    pub fn to_bytes(&self) -> [u8; IDENTIFY_DATA_LEN] {
        use ns_off as o;
        let mut b = zeroed();
        put_u64(&mut b, o::NSZE, self.nsze);
        put_u64(&mut b, o::NCAP, self.ncap);
        put_u64(&mut b, o::NUSE, self.nuse);
        b[o::NSFEAT] = self.nsfeat;
        let n = self.lbaf.len().clamp(1, MAX_LBA_FORMATS);
        b[o::NLBAF] = u8::try_from(n - 1).unwrap_or(0);
        b[o::FLBAS] = self.flbas;
        b[o::MC] = self.mc;
        b[o::DPC] = self.dpc;
        b[o::DPS] = self.dps;
        b[o::NMIC] = self.nmic;
        b[o::RESCAP] = self.rescap;
        b[o::FPI] = self.fpi;
        b[o::DLFEAT] = self.dlfeat;
        put_u16(&mut b, o::NAWUN, self.nawun);
        put_u16(&mut b, o::NAWUPF, self.nawupf);
        put_u16(&mut b, o::NACWU, self.nacwu);
        put_u16(&mut b, o::NABSN, self.nabsn);
        put_u16(&mut b, o::NABO, self.nabo);
        put_u16(&mut b, o::NABSPF, self.nabspf);
        put_u16(&mut b, o::NOIOB, self.noiob);
        put_bytes(&mut b, o::NVMCAP, &self.nvmcap.to_le_bytes());
        put_u16(&mut b, o::NPWG, self.npwg);
        put_u16(&mut b, o::NPWA, self.npwa);
        put_u16(&mut b, o::NPDG, self.npdg);
        put_u16(&mut b, o::NPDA, self.npda);
        put_u16(&mut b, o::NOWS, self.nows);
        put_u32(&mut b, o::ANAGRPID, self.anagrpid);
        b[o::NSATTR] = self.nsattr;
        put_u16(&mut b, o::NVMSETID, self.nvmsetid);
        put_u16(&mut b, o::ENDGID, self.endgid);
        put_bytes(&mut b, o::NGUID, &self.nguid);
        put_bytes(&mut b, o::EUI64, &self.eui64);
        for (i, f) in self.lbaf.iter().take(MAX_LBA_FORMATS).enumerate() {
            let at = o::LBAF0 + i * o::LBAF_LEN;
            put_u16(&mut b, at, f.ms);
            b[at + 2] = f.lbads;
            b[at + 3] = f.rp & 0x3;
        }
        b
    }

    /// Decode (a short buffer reads as zero-extended).
    pub fn parse(raw: &[u8]) -> Self {
        use ns_off as o;
        let b = &fixed(raw);
        let n = usize::from(b[o::NLBAF]).min(MAX_LBA_FORMATS - 1) + 1;
        let lbaf = (0..n)
            .map(|i| {
                let at = o::LBAF0 + i * o::LBAF_LEN;
                LbaFormat {
                    ms: get_u16(b, at),
                    lbads: b[at + 2],
                    rp: b[at + 3] & 0x3,
                }
            })
            .collect();
        Self {
            nsze: get_u64(b, o::NSZE),
            ncap: get_u64(b, o::NCAP),
            nuse: get_u64(b, o::NUSE),
            nsfeat: b[o::NSFEAT],
            flbas: b[o::FLBAS],
            mc: b[o::MC],
            dpc: b[o::DPC],
            dps: b[o::DPS],
            nmic: b[o::NMIC],
            rescap: b[o::RESCAP],
            fpi: b[o::FPI],
            dlfeat: b[o::DLFEAT],
            nawun: get_u16(b, o::NAWUN),
            nawupf: get_u16(b, o::NAWUPF),
            nacwu: get_u16(b, o::NACWU),
            nabsn: get_u16(b, o::NABSN),
            nabo: get_u16(b, o::NABO),
            nabspf: get_u16(b, o::NABSPF),
            noiob: get_u16(b, o::NOIOB),
            nvmcap: u128::from_le_bytes(get_array(b, o::NVMCAP)),
            npwg: get_u16(b, o::NPWG),
            npwa: get_u16(b, o::NPWA),
            npdg: get_u16(b, o::NPDG),
            npda: get_u16(b, o::NPDA),
            nows: get_u16(b, o::NOWS),
            anagrpid: get_u32(b, o::ANAGRPID),
            nsattr: b[o::NSATTR],
            nvmsetid: get_u16(b, o::NVMSETID),
            endgid: get_u16(b, o::ENDGID),
            nguid: get_array(b, o::NGUID),
            eui64: get_array(b, o::EUI64),
            lbaf,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Active Namespace ID list (CNS 02h)
// ---------------------------------------------------------------------------------------------

/// Most NSIDs one list holds (4096 / 4).
const NSID_LIST_MAX: usize = IDENTIFY_DATA_LEN / 4;

/// The Active Namespace ID list for an Identify whose NSID is `after`: active NSIDs greater than
/// `after`, ascending, at most 1024, zero-terminated (NVMe Base 2.0, section 5.17.2.2).
/// (NSID FFFFFFFEh/FFFFFFFFh in the command is Invalid Namespace or Format: the caller's check.)
pub fn active_ns_list(nsids: &[u32], after: u32) -> [u8; IDENTIFY_DATA_LEN] {
    let mut v: Vec<u32> = nsids
        .iter()
        .copied()
        .filter(|&n| n > after && n != 0)
        .collect();
    v.sort_unstable();
    v.dedup();
    let mut b = zeroed();
    for (i, n) in v.into_iter().take(NSID_LIST_MAX).enumerate() {
        put_u32(&mut b, i * 4, n);
    }
    b
}

/// Read an NSID list up to its first zero entry.
pub fn parse_active_ns_list(raw: &[u8]) -> Vec<u32> {
    raw.chunks_exact(4)
        .take(NSID_LIST_MAX)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take_while(|&n| n != 0)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Namespace Identification Descriptor list (CNS 03h)
// ---------------------------------------------------------------------------------------------

/// Namespace Identifier Type values (NVMe Base 2.0, Figure 279).
pub mod nidt {
    pub const EUI64: u8 = 0x1;
    pub const NGUID: u8 = 0x2;
    pub const UUID: u8 = 0x3;
    pub const CSI: u8 = 0x4;
}

/// Header of a descriptor: NIDT (byte 0), NIDL (byte 1), 2 reserved bytes.
const NID_HEADER_LEN: usize = 4;

/// One Namespace Identification Descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NsIdDescriptor {
    Eui64([u8; 8]),
    Nguid([u8; 16]),
    Uuid([u8; 16]),
    /// Command Set Identifier (0 = NVM).
    Csi(u8),
    /// A type we do not know, kept as is.
    Other {
        nidt: u8,
        nid: Vec<u8>,
    },
}

impl NsIdDescriptor {
    fn parts(&self) -> (u8, &[u8]) {
        match self {
            Self::Eui64(v) => (nidt::EUI64, v),
            Self::Nguid(v) => (nidt::NGUID, v),
            Self::Uuid(v) => (nidt::UUID, v),
            Self::Csi(v) => (nidt::CSI, std::slice::from_ref(v)),
            Self::Other { nidt, nid } => (*nidt, nid),
        }
    }
}

/// Build a descriptor list; descriptors that do not fit are dropped (the list is bounded by
/// the 4096-byte structure; a zero NIDT terminates it).
pub fn ns_id_descriptor_list(descs: &[NsIdDescriptor]) -> [u8; IDENTIFY_DATA_LEN] {
    let mut b = zeroed();
    let mut at = 0usize;
    for d in descs {
        let (t, nid) = d.parts();
        let Ok(nidl) = u8::try_from(nid.len()) else {
            continue;
        };
        let end = at + NID_HEADER_LEN + nid.len();
        // Keep room for the terminating zero NIDT.
        if t == 0 || end + 1 > IDENTIFY_DATA_LEN {
            break;
        }
        b[at] = t;
        b[at + 1] = nidl;
        put_bytes(&mut b, at + NID_HEADER_LEN, nid);
        at = end;
    }
    b
}

/// Read a descriptor list up to its terminator (NIDT 0) or a descriptor that overruns the
/// buffer.
pub fn parse_ns_id_descriptors(raw: &[u8]) -> Vec<NsIdDescriptor> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(hdr) = raw.get(at..at + NID_HEADER_LEN) {
        let (t, nidl) = (hdr[0], usize::from(hdr[1]));
        let Some(nid) = raw.get(at + NID_HEADER_LEN..at + NID_HEADER_LEN + nidl) else {
            break;
        };
        if t == 0 {
            break;
        }
        out.push(match (t, nid.len()) {
            (nidt::EUI64, 8) => NsIdDescriptor::Eui64(get_array(nid, 0)),
            (nidt::NGUID, 16) => NsIdDescriptor::Nguid(get_array(nid, 0)),
            (nidt::UUID, 16) => NsIdDescriptor::Uuid(get_array(nid, 0)),
            (nidt::CSI, 1) => NsIdDescriptor::Csi(nid[0]),
            _ => NsIdDescriptor::Other {
                nidt: t,
                nid: nid.to_vec(),
            },
        });
        at += NID_HEADER_LEN + nidl;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// I/O Command Set Independent Identify Namespace (CNS 08h)
// ---------------------------------------------------------------------------------------------

/// Byte offsets (NVMe Base 2.0, Figure 280).
pub mod indep_off {
    pub const NSFEAT: usize = 0;
    pub const NMIC: usize = 1;
    pub const RESCAP: usize = 2;
    pub const FPI: usize = 3;
    pub const ANAGRPID: usize = 4;
    pub const NSATTR: usize = 8;
    pub const NVMSETID: usize = 10;
    pub const ENDGID: usize = 12;
    /// Namespace Status: bit 0 = ready.
    pub const NSTAT: usize = 14;
}

/// I/O Command Set Independent Identify Namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdentifyNsIndependent {
    pub nsfeat: u8,
    pub nmic: u8,
    pub rescap: u8,
    pub fpi: u8,
    pub anagrpid: u32,
    pub nsattr: u8,
    pub nvmsetid: u16,
    pub endgid: u16,
    pub nstat: u8,
}

impl IdentifyNsIndependent {
    pub fn to_bytes(&self) -> [u8; IDENTIFY_DATA_LEN] {
        use indep_off as o;
        let mut b = zeroed();
        b[o::NSFEAT] = self.nsfeat;
        b[o::NMIC] = self.nmic;
        b[o::RESCAP] = self.rescap;
        b[o::FPI] = self.fpi;
        put_u32(&mut b, o::ANAGRPID, self.anagrpid);
        b[o::NSATTR] = self.nsattr;
        put_u16(&mut b, o::NVMSETID, self.nvmsetid);
        put_u16(&mut b, o::ENDGID, self.endgid);
        b[o::NSTAT] = self.nstat;
        b
    }

    pub fn parse(raw: &[u8]) -> Self {
        use indep_off as o;
        let b = &fixed(raw);
        Self {
            nsfeat: b[o::NSFEAT],
            nmic: b[o::NMIC],
            rescap: b[o::RESCAP],
            fpi: b[o::FPI],
            anagrpid: get_u32(b, o::ANAGRPID),
            nsattr: b[o::NSATTR],
            nvmsetid: get_u16(b, o::NVMSETID),
            endgid: get_u16(b, o::ENDGID),
            nstat: b[o::NSTAT],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// NVM Command Set specific (CNS 05h / 06h with CSI 0)
// ---------------------------------------------------------------------------------------------

/// NVM Command Set Identify Namespace (CNS 05h, CSI 0; NVM Command Set 1.0, Figure 100):
/// without protection information everything but the storage tag mask is zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdentifyNsNvm {
    /// Logical Block Storage Tag Mask (bytes 7:0).
    pub lbstm: u64,
    /// Protection Information Capabilities (byte 8).
    pub pic: u8,
}

impl IdentifyNsNvm {
    pub fn to_bytes(&self) -> [u8; IDENTIFY_DATA_LEN] {
        let mut b = zeroed();
        put_u64(&mut b, 0, self.lbstm);
        b[8] = self.pic;
        b
    }

    pub fn parse(raw: &[u8]) -> Self {
        let b = &fixed(raw);
        Self {
            lbstm: get_u64(b, 0),
            pic: b[8],
        }
    }
}

/// Byte offsets of the NVM Command Set Identify Controller (NVM Command Set 1.0, Figure 101).
pub mod ctrl_nvm_off {
    /// Verify Size Limit, 2^n units of CAP.MPSMIN (0 = no limit).
    pub const VSL: usize = 0;
    /// Write Zeroes Size Limit.
    pub const WZSL: usize = 1;
    /// Write Uncorrectable Size Limit.
    pub const WUSL: usize = 2;
    /// Dataset Management Ranges Limit (0 = no limit beyond 256).
    pub const DMRL: usize = 3;
    /// Dataset Management Range Size Limit, in logical blocks, u32.
    pub const DMRSL: usize = 4;
    /// Dataset Management Size Limit, in logical blocks, u64.
    pub const DMSL: usize = 8;
}

/// NVM Command Set Identify Controller (CNS 06h, CSI 0). Linux reads WZSL, DMRL and DMRSL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdentifyCtrlNvm {
    pub vsl: u8,
    pub wzsl: u8,
    pub wusl: u8,
    pub dmrl: u8,
    pub dmrsl: u32,
    pub dmsl: u64,
}

impl IdentifyCtrlNvm {
    pub fn to_bytes(&self) -> [u8; IDENTIFY_DATA_LEN] {
        use ctrl_nvm_off as o;
        let mut b = zeroed();
        b[o::VSL] = self.vsl;
        b[o::WZSL] = self.wzsl;
        b[o::WUSL] = self.wusl;
        b[o::DMRL] = self.dmrl;
        put_u32(&mut b, o::DMRSL, self.dmrsl);
        put_u64(&mut b, o::DMSL, self.dmsl);
        b
    }

    pub fn parse(raw: &[u8]) -> Self {
        use ctrl_nvm_off as o;
        let b = &fixed(raw);
        Self {
            vsl: b[o::VSL],
            wzsl: b[o::WZSL],
            wusl: b[o::WUSL],
            dmrl: b[o::DMRL],
            dmrsl: get_u32(b, o::DMRSL),
            dmsl: get_u64(b, o::DMSL),
        }
    }
}
