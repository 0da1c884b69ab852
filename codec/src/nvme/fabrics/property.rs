//! Property Get / Property Set and the controller properties they reach (NVMe Base 2.0,
//! section 6.5 and 6.6, Figures 556-558; registers: section 3.1.3, Figures 35-42).

use super::fabrics_sqe;
use crate::nvme::Status;
use crate::nvme::opcode::FabricsType;
use crate::nvme::sqe::{self, Sqe};
use crate::wire::{get_u32, get_u64, put_u32, put_u64};

// ---------------------------------------------------------------------------------------------
// Property Get / Property Set
// ---------------------------------------------------------------------------------------------

/// Property Get / Property Set fields (NVMe Base 2.0, Figures 556 and 558).
pub mod prop_off {
    /// Attributes: bits 2:0 size (0 = 4 bytes, 1 = 8 bytes).
    pub const ATTRIB: usize = 40;
    /// Offset of the property (CDW11).
    pub const OFST: usize = 44;
    /// Value to set (CDW12..CDW13), Property Set only.
    pub const VALUE: usize = 48;
}

const _: () = assert!(prop_off::ATTRIB == sqe::off::CDW10);
const _: () = assert!(prop_off::OFST == sqe::off::CDW11);
const _: () = assert!(prop_off::VALUE == sqe::off::CDW12);

/// Decode ATTRIB.SIZE: `Ok(true)` for 8 bytes, `Ok(false)` for 4; reserved values are Invalid
/// Field in Command.
fn attrib_size8(sqe: &Sqe) -> Result<bool, Status> {
    match sqe.0[prop_off::ATTRIB] {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Status::INVALID_FIELD.with_dnr()),
    }
}

/// Property Get (FCTYPE 04h). The value returns in CQE DW0 (4 bytes) or DW0..DW1 (8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropertyGet {
    pub size8: bool,
    pub offset: u32,
}

impl PropertyGet {
    pub fn from_sqe(sqe: &Sqe) -> Result<Self, Status> {
        Ok(Self {
            size8: attrib_size8(sqe)?,
            offset: get_u32(&sqe.0, prop_off::OFST),
        })
    }

    pub fn to_sqe(&self, cid: u16) -> Sqe {
        let mut s = fabrics_sqe(FabricsType::PROPERTY_GET, cid);
        s.0[prop_off::ATTRIB] = u8::from(self.size8);
        put_u32(&mut s.0, prop_off::OFST, self.offset);
        s
    }
}

/// Property Set (FCTYPE 00h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropertySet {
    pub size8: bool,
    pub offset: u32,
    /// The value; for a 4-byte property only the low 32 bits are meaningful.
    pub value: u64,
}

impl PropertySet {
    pub fn from_sqe(sqe: &Sqe) -> Result<Self, Status> {
        let size8 = attrib_size8(sqe)?;
        let raw = get_u64(&sqe.0, prop_off::VALUE);
        let value = if size8 { raw } else { raw & 0xffff_ffff };
        Ok(Self {
            size8,
            offset: get_u32(&sqe.0, prop_off::OFST),
            value,
        })
    }

    pub fn to_sqe(&self, cid: u16) -> Sqe {
        let mut s = fabrics_sqe(FabricsType::PROPERTY_SET, cid);
        s.0[prop_off::ATTRIB] = u8::from(self.size8);
        put_u32(&mut s.0, prop_off::OFST, self.offset);
        put_u64(&mut s.0, prop_off::VALUE, self.value);
        s
    }
}

/// Property offsets (NVMe Base 2.0, Figure 35; the fabrics subset of the register map).
pub mod prop {
    /// Controller Capabilities, 8 bytes, read-only.
    pub const CAP: u32 = 0x00;
    /// Version, 4 bytes, read-only.
    pub const VS: u32 = 0x08;
    /// Controller Configuration, 4 bytes.
    pub const CC: u32 = 0x14;
    /// Controller Status, 4 bytes, read-only.
    pub const CSTS: u32 = 0x1c;
    /// NVM Subsystem Reset, 4 bytes, optional (CAP.NSSRS).
    pub const NSSR: u32 = 0x20;
    /// Controller Ready Timeouts, 4 bytes, only when CAP.CRMS is non-zero.
    pub const CRTO: u32 = 0x68;
}

/// The value written to NSSR to reset the subsystem: "NVMe" in ASCII.
pub const NSSR_RESET_VALUE: u32 = 0x4e56_4d65;

/// The size in bytes of the property at `offset`, if it is one the fabrics subset defines.
pub fn property_size(offset: u32) -> Option<u8> {
    match offset {
        prop::CAP => Some(8),
        prop::VS | prop::CC | prop::CSTS | prop::NSSR | prop::CRTO => Some(4),
        _ => None,
    }
}

/// Controller Capabilities (CAP, offset 0h; NVMe Base 2.0, Figure 36), with the spec's field
/// names. Build with struct-update syntax from [`Cap::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cap {
    /// Maximum Queue Entries Supported (bits 15:0), 0's based; at least 1.
    pub mqes: u16,
    /// Contiguous Queues Required (bit 16): fabrics controllers set it.
    pub cqr: bool,
    /// Arbitration Mechanism Supported (bits 18:17).
    pub ams: u8,
    /// Timeout (bits 31:24), in 500 ms units: worst case time to CSTS.RDY after CC.EN changes.
    pub to: u8,
    /// Doorbell Stride (bits 35:32); 0 on fabrics.
    pub dstrd: u8,
    /// NVM Subsystem Reset Supported (bit 36).
    pub nssrs: bool,
    /// Command Sets Supported (bits 44:37): bit 0 NVM, bit 6 I/O Command Sets, bit 7 admin only.
    pub css: u8,
    /// Boot Partition Support (bit 45).
    pub bps: bool,
    /// Controller Power Scope (bits 47:46).
    pub cps: u8,
    /// Memory Page Size Minimum (bits 51:48): 2^(12 + MPSMIN) bytes.
    pub mpsmin: u8,
    /// Memory Page Size Maximum (bits 55:52).
    pub mpsmax: u8,
    /// Persistent Memory Region Supported (bit 56).
    pub pmrs: bool,
    /// Controller Memory Buffer Supported (bit 57).
    pub cmbs: bool,
    /// NVM Subsystem Shutdown Supported (bit 58).
    pub nsss: bool,
    /// Controller Ready Modes Supported (bits 60:59).
    pub crms: u8,
}

/// CAP.CSS bit 0: NVM Command Set.
pub const CAP_CSS_NVM: u8 = 1 << 0;
/// CAP.CSS bit 6: one or more I/O Command Sets (CC.CSS = 110b allowed).
pub const CAP_CSS_IO_SETS: u8 = 1 << 6;
/// CAP.CSS bit 7: no I/O Command Set (admin only, e.g. a discovery controller).
pub const CAP_CSS_ADMIN_ONLY: u8 = 1 << 7;

impl Cap {
    /// A fabrics I/O controller's CAP: `mqes` (0's based), CQR set, NVM and I/O command sets,
    /// 4 KiB pages, and a ready timeout of `to_500ms` units.
    pub fn fabrics_io(mqes: u16, to_500ms: u8) -> Self {
        Self {
            mqes,
            cqr: true,
            to: to_500ms,
            css: CAP_CSS_NVM | CAP_CSS_IO_SETS,
            ..Self::default()
        }
    }

    pub fn to_u64(&self) -> u64 {
        let f = |v: u8, mask: u64, shift: u32| (u64::from(v) & mask) << shift;
        u64::from(self.mqes)
            | (u64::from(self.cqr) << 16)
            | f(self.ams, 0x3, 17)
            | f(self.to, 0xff, 24)
            | f(self.dstrd, 0xf, 32)
            | (u64::from(self.nssrs) << 36)
            | f(self.css, 0xff, 37)
            | (u64::from(self.bps) << 45)
            | f(self.cps, 0x3, 46)
            | f(self.mpsmin, 0xf, 48)
            | f(self.mpsmax, 0xf, 52)
            | (u64::from(self.pmrs) << 56)
            | (u64::from(self.cmbs) << 57)
            | (u64::from(self.nsss) << 58)
            | f(self.crms, 0x3, 59)
    }

    pub fn from_u64(v: u64) -> Self {
        let g = |shift: u32, mask: u64| u8::try_from((v >> shift) & mask).unwrap_or(u8::MAX);
        let bit = |n: u32| (v >> n) & 1 == 1;
        Self {
            mqes: (v & 0xffff) as u16,
            cqr: bit(16),
            ams: g(17, 0x3),
            to: g(24, 0xff),
            dstrd: g(32, 0xf),
            nssrs: bit(36),
            css: g(37, 0xff),
            bps: bit(45),
            cps: g(46, 0x3),
            mpsmin: g(48, 0xf),
            mpsmax: g(52, 0xf),
            pmrs: bit(56),
            cmbs: bit(57),
            nsss: bit(58),
            crms: g(59, 0x3),
        }
    }
}

/// Version (VS, offset 8h; NVMe Base 2.0, Figure 37).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u16,
    pub minor: u8,
    pub tertiary: u8,
}

impl Version {
    pub const V1_3: Version = Version {
        major: 1,
        minor: 3,
        tertiary: 0,
    };
    pub const V1_4: Version = Version {
        major: 1,
        minor: 4,
        tertiary: 0,
    };
    pub const V2_0: Version = Version {
        major: 2,
        minor: 0,
        tertiary: 0,
    };

    pub const fn to_u32(self) -> u32 {
        ((self.major as u32) << 16) | ((self.minor as u32) << 8) | self.tertiary as u32
    }

    pub const fn from_u32(v: u32) -> Self {
        // Fields are bits 31:16, 15:8 and 7:0.
        let b = v.to_le_bytes();
        Self {
            major: u16::from_le_bytes([b[2], b[3]]),
            minor: b[1],
            tertiary: b[0],
        }
    }
}

/// VS value for NVMe 1.4.
pub const VS_1_4: u32 = 0x0001_0400;
/// VS value for NVMe 2.0.
pub const VS_2_0: u32 = 0x0002_0000;
const _: () = assert!(Version::V1_4.to_u32() == VS_1_4);
const _: () = assert!(Version::V2_0.to_u32() == VS_2_0);

/// CC.SHN / CSTS.SHST values.
pub mod shn {
    pub const NONE: u8 = 0;
    pub const NORMAL: u8 = 1;
    pub const ABRUPT: u8 = 2;
}
/// CSTS.SHST values.
pub mod shst {
    pub const NORMAL: u8 = 0;
    pub const OCCURRING: u8 = 1;
    pub const COMPLETE: u8 = 2;
}
/// CC.CSS values.
pub mod cc_css {
    /// NVM Command Set (or, with CAP.CSS bit 6, "all supported I/O command sets" is 110b).
    pub const NVM: u8 = 0b000;
    pub const ALL_IO_SETS: u8 = 0b110;
    pub const ADMIN_ONLY: u8 = 0b111;
}

/// Controller Configuration (CC, offset 14h; NVMe Base 2.0, Figure 41).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cc {
    /// Enable (bit 0).
    pub en: bool,
    /// I/O Command Set Selected (bits 6:4).
    pub css: u8,
    /// Memory Page Size (bits 10:7): 2^(12 + MPS).
    pub mps: u8,
    /// Arbitration Mechanism Selected (bits 13:11).
    pub ams: u8,
    /// Shutdown Notification (bits 15:14), see [`shn`].
    pub shn: u8,
    /// I/O Submission Queue Entry Size (bits 19:16), log2: 6 for 64 bytes.
    pub iosqes: u8,
    /// I/O Completion Queue Entry Size (bits 23:20), log2: 4 for 16 bytes.
    pub iocqes: u8,
    /// Controller Ready Independent of Media Enable (bit 24).
    pub crime: bool,
}

impl Cc {
    pub fn to_u32(&self) -> u32 {
        let f = |v: u8, mask: u32, shift: u32| (u32::from(v) & mask) << shift;
        u32::from(self.en)
            | f(self.css, 0x7, 4)
            | f(self.mps, 0xf, 7)
            | f(self.ams, 0x7, 11)
            | f(self.shn, 0x3, 14)
            | f(self.iosqes, 0xf, 16)
            | f(self.iocqes, 0xf, 20)
            | (u32::from(self.crime) << 24)
    }

    pub fn from_u32(v: u32) -> Self {
        let g = |shift: u32, mask: u32| u8::try_from((v >> shift) & mask).unwrap_or(u8::MAX);
        Self {
            en: v & 1 == 1,
            css: g(4, 0x7),
            mps: g(7, 0xf),
            ams: g(11, 0x7),
            shn: g(14, 0x3),
            iosqes: g(16, 0xf),
            iocqes: g(20, 0xf),
            crime: (v >> 24) & 1 == 1,
        }
    }
}

/// Controller Status (CSTS, offset 1Ch; NVMe Base 2.0, Figure 42).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Csts {
    /// Ready (bit 0).
    pub rdy: bool,
    /// Controller Fatal Status (bit 1).
    pub cfs: bool,
    /// Shutdown Status (bits 3:2), see [`shst`].
    pub shst: u8,
    /// NVM Subsystem Reset Occurred (bit 4).
    pub nssro: bool,
    /// Processing Paused (bit 5).
    pub pp: bool,
    /// Shutdown Type (bit 6).
    pub st: bool,
}

impl Csts {
    pub fn to_u32(&self) -> u32 {
        u32::from(self.rdy)
            | (u32::from(self.cfs) << 1)
            | ((u32::from(self.shst) & 0x3) << 2)
            | (u32::from(self.nssro) << 4)
            | (u32::from(self.pp) << 5)
            | (u32::from(self.st) << 6)
    }

    pub fn from_u32(v: u32) -> Self {
        Self {
            rdy: v & 1 == 1,
            cfs: (v >> 1) & 1 == 1,
            // Masked to 2 bits.
            shst: ((v >> 2) & 0x3) as u8,
            nssro: (v >> 4) & 1 == 1,
            pp: (v >> 5) & 1 == 1,
            st: (v >> 6) & 1 == 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields_land_on_their_bits() {
        let cap = Cap {
            mqes: 127,
            cqr: true,
            to: 30,
            css: CAP_CSS_NVM,
            ..Cap::default()
        };
        assert_eq!(cap.to_u64(), 127 | (1 << 16) | (30 << 24) | (1 << 37));
        assert_eq!(Cap::from_u64(cap.to_u64()), cap);
        let all = Cap::from_u64(u64::MAX >> 3);
        assert_eq!(Cap::from_u64(all.to_u64()), all);
    }

    #[test]
    fn cc_linux_enable_value() {
        // Linux writes CC = EN | IOSQES 6 | IOCQES 4 (CSS NVM, MPS 0 for 4 KiB, AMS RR).
        let cc = Cc::from_u32(0x0046_0001);
        assert_eq!(
            cc,
            Cc {
                en: true,
                iosqes: 6,
                iocqes: 4,
                ..Cc::default()
            },
            "EN bit 0, IOSQES bits 19:16, IOCQES bits 23:20"
        );
        assert_eq!(cc.to_u32(), 0x0046_0001);
        assert_eq!(
            Cc {
                shn: shn::NORMAL,
                ..cc
            }
            .to_u32(),
            0x0046_4001
        );
    }

    #[test]
    fn csts_values() {
        assert_eq!(
            Csts {
                rdy: true,
                ..Csts::default()
            }
            .to_u32(),
            1
        );
        assert_eq!(
            Csts {
                rdy: true,
                shst: shst::COMPLETE,
                ..Csts::default()
            }
            .to_u32(),
            0x9
        );
        assert_eq!(Csts::from_u32(0x9).shst, shst::COMPLETE);
    }
}
