//! Admin command parsing (NVMe Base 2.0, section 5).

use super::{DataDir, INVALID_FIELD, INVALID_OPCODE, bits_u8, bits_u16, check_flags, hi32, lo32};
use crate::nvme::Status;
use crate::nvme::opcode::AdminOpcode;
use crate::nvme::sgl::SglDescriptor;
use crate::nvme::sqe::{PSDT_SGL, Sqe};

/// Size of every Identify data structure (NVMe Base 2.0, section 5.17.2).
const IDENTIFY_LEN: u64 = 4096;

/// Controller or Namespace Structure values (NVMe Base 2.0, Figure 273).
pub mod cns {
    /// Identify Namespace (NVM Command Set).
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NSID_LIST: u8 = 0x02;
    pub const NS_ID_DESCRIPTOR_LIST: u8 = 0x03;
    pub const NVM_SET_LIST: u8 = 0x04;
    /// I/O Command Set specific Identify Namespace (with CSI).
    pub const CS_NAMESPACE: u8 = 0x05;
    /// I/O Command Set specific Identify Controller (with CSI).
    pub const CS_CONTROLLER: u8 = 0x06;
    /// Active Namespace ID list associated with the CSI.
    pub const CS_ACTIVE_NSID_LIST: u8 = 0x07;
    /// I/O Command Set Independent Identify Namespace.
    pub const CS_INDEPENDENT_NAMESPACE: u8 = 0x08;
    pub const ALLOCATED_NSID_LIST: u8 = 0x10;
    pub const ALLOCATED_NAMESPACE: u8 = 0x11;
    pub const NS_ATTACHED_CONTROLLER_LIST: u8 = 0x12;
    pub const CONTROLLER_LIST: u8 = 0x13;
    pub const UUID_LIST: u8 = 0x17;
    pub const IO_COMMAND_SET: u8 = 0x1c;
}

/// Identify (opcode 06h; NVMe Base 2.0, section 5.17, Figures 271–272). Returns 4096 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identify {
    pub nsid: u32,
    /// CDW10 bits 7:0.
    pub cns: u8,
    /// Controller Identifier, CDW10 bits 31:16.
    pub cntid: u16,
    /// CNS Specific Identifier, CDW11 bits 15:0.
    pub cnssid: u16,
    /// Command Set Identifier, CDW11 bits 31:24 (0 = NVM).
    pub csi: u8,
    /// UUID Index, CDW14 bits 6:0.
    pub uuid_index: u8,
}

/// Get Log Page (opcode 02h; NVMe Base 2.0, section 5.16, Figures 197–201).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetLogPage {
    pub nsid: u32,
    /// Log Page Identifier, CDW10 bits 7:0.
    pub lid: u8,
    /// Log Specific Parameter, CDW10 bits 14:8 (e.g. ANA bit 0 = return groups only).
    pub lsp: u8,
    /// Retain Asynchronous Event, CDW10 bit 15.
    pub rae: bool,
    /// Bytes asked for: (NUMDU:NUMDL + 1) dwords * 4.
    pub numd_bytes: u64,
    /// Log Specific Identifier, CDW11 bits 31:16.
    pub lsi: u16,
    /// Log Page Offset in bytes (CDW13:CDW12); dword aligned.
    pub lpo: u64,
    /// UUID Index, CDW14 bits 6:0.
    pub uuid_index: u8,
    /// Command Set Identifier, CDW14 bits 31:24.
    pub csi: u8,
}

impl GetLogPage {
    /// The part of a `page_len`-byte log page to return: `(start, copy_len)`. The transfer is
    /// always `numd_bytes` long; bytes past `copy_len` are zero (NVMe Base 2.0, section 5.16:
    /// reading past the end of a log page returns undefined data; we return zeros).
    ///
    /// Decision: an offset *beyond* the end of the page is Invalid Field in Command (the spec
    /// says so for offsets greater than the log page size); an offset equal to the size returns
    /// only zeros.
    pub fn window(&self, page_len: usize) -> Result<(usize, usize), Status> {
        let start = usize::try_from(self.lpo).map_err(|_| INVALID_FIELD)?;
        if start > page_len {
            return Err(INVALID_FIELD);
        }
        let want = usize::try_from(self.numd_bytes).unwrap_or(usize::MAX);
        Ok((start, want.min(page_len - start)))
    }
}

/// Feature Identifier (NVMe Base 2.0, Figure 317): an open code space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FeatureId(pub u8);

impl FeatureId {
    pub const ARBITRATION: FeatureId = FeatureId(0x01);
    pub const POWER_MANAGEMENT: FeatureId = FeatureId(0x02);
    pub const LBA_RANGE_TYPE: FeatureId = FeatureId(0x03);
    pub const TEMPERATURE_THRESHOLD: FeatureId = FeatureId(0x04);
    pub const ERROR_RECOVERY: FeatureId = FeatureId(0x05);
    pub const VOLATILE_WRITE_CACHE: FeatureId = FeatureId(0x06);
    pub const NUMBER_OF_QUEUES: FeatureId = FeatureId(0x07);
    pub const INTERRUPT_COALESCING: FeatureId = FeatureId(0x08);
    pub const INTERRUPT_VECTOR_CONFIG: FeatureId = FeatureId(0x09);
    pub const WRITE_ATOMICITY: FeatureId = FeatureId(0x0a);
    pub const ASYNC_EVENT_CONFIG: FeatureId = FeatureId(0x0b);
    pub const AUTONOMOUS_POWER_STATE: FeatureId = FeatureId(0x0c);
    pub const HOST_MEMORY_BUFFER: FeatureId = FeatureId(0x0d);
    pub const TIMESTAMP: FeatureId = FeatureId(0x0e);
    pub const KEEP_ALIVE_TIMER: FeatureId = FeatureId(0x0f);
    pub const HOST_CONTROLLED_THERMAL: FeatureId = FeatureId(0x10);
    pub const NON_OPERATIONAL_POWER_STATE: FeatureId = FeatureId(0x11);
    pub const READ_RECOVERY_LEVEL: FeatureId = FeatureId(0x12);
    pub const PLM_CONFIG: FeatureId = FeatureId(0x13);
    pub const PLM_WINDOW: FeatureId = FeatureId(0x14);
    pub const HOST_BEHAVIOR: FeatureId = FeatureId(0x16);
    pub const SANITIZE_CONFIG: FeatureId = FeatureId(0x17);
    pub const SOFTWARE_PROGRESS_MARKER: FeatureId = FeatureId(0x80);
    pub const HOST_IDENTIFIER: FeatureId = FeatureId(0x81);
    pub const RESERVATION_NOTIFICATION_MASK: FeatureId = FeatureId(0x82);
    pub const RESERVATION_PERSISTENCE: FeatureId = FeatureId(0x83);
    pub const NS_WRITE_PROTECTION: FeatureId = FeatureId(0x84);
}

/// Get Features Select values (CDW10 bits 10:8; NVMe Base 2.0, Figure 316).
pub mod sel {
    pub const CURRENT: u8 = 0;
    pub const DEFAULT: u8 = 1;
    pub const SAVED: u8 = 2;
    /// Returns the capabilities in DW0, no data.
    pub const SUPPORTED_CAPABILITIES: u8 = 3;
}

/// The data buffer length of a Get/Set Features command for `fid` (NVMe Base 2.0, section
/// 5.27.1, per-feature figures), or 0 for features whose value travels in CDW11 / DW0 only.
/// `set` selects Set Features; `cdw11` matters for LBA Range Type (Set: NUM + 1 entries of 64
/// bytes) and Host Identifier (EXHID bit 0: 16 bytes, else 8).
pub fn feature_data_len(fid: FeatureId, set: bool, cdw11: u32) -> u64 {
    match fid {
        FeatureId::LBA_RANGE_TYPE if set => (u64::from(cdw11 & 0x3f) + 1) * 64,
        FeatureId::LBA_RANGE_TYPE => 4096,
        FeatureId::AUTONOMOUS_POWER_STATE => 256,
        FeatureId::TIMESTAMP => 8,
        FeatureId::HOST_BEHAVIOR | FeatureId::PLM_CONFIG => 512,
        FeatureId::HOST_MEMORY_BUFFER if !set => 4096,
        FeatureId::HOST_IDENTIFIER if cdw11 & 1 == 1 => 16,
        FeatureId::HOST_IDENTIFIER => 8,
        _ => 0,
    }
}

/// Get Features (opcode 0Ah; NVMe Base 2.0, section 5.15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetFeatures {
    pub nsid: u32,
    /// CDW10 bits 7:0.
    pub fid: FeatureId,
    /// Select, CDW10 bits 10:8, see [`sel`].
    pub sel: u8,
    /// Feature specific.
    pub cdw11: u32,
    /// UUID Index, CDW14 bits 6:0.
    pub uuid_index: u8,
}

/// Set Features (opcode 09h; NVMe Base 2.0, section 5.27).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetFeatures {
    pub nsid: u32,
    /// CDW10 bits 7:0.
    pub fid: FeatureId,
    /// Save, CDW10 bit 31.
    pub sv: bool,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    /// UUID Index, CDW14 bits 6:0.
    pub uuid_index: u8,
}

/// Abort (opcode 08h; NVMe Base 2.0, section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort {
    /// CDW10 bits 15:0.
    pub sqid: u16,
    /// CDW10 bits 31:16.
    pub cid: u16,
}

/// An Admin command the target implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCommand {
    GetLogPage(GetLogPage),
    Identify(Identify),
    Abort(Abort),
    SetFeatures(SetFeatures),
    GetFeatures(GetFeatures),
    /// Asynchronous Event Request (0Ch): no fields; completes when an event occurs.
    AsyncEventRequest,
    /// Keep Alive (18h): no fields.
    KeepAlive,
}

impl AdminCommand {
    pub fn opcode(&self) -> AdminOpcode {
        match self {
            Self::GetLogPage(_) => AdminOpcode::GET_LOG_PAGE,
            Self::Identify(_) => AdminOpcode::IDENTIFY,
            Self::Abort(_) => AdminOpcode::ABORT,
            Self::SetFeatures(_) => AdminOpcode::SET_FEATURES,
            Self::GetFeatures(_) => AdminOpcode::GET_FEATURES,
            Self::AsyncEventRequest => AdminOpcode::ASYNC_EVENT_REQUEST,
            Self::KeepAlive => AdminOpcode::KEEP_ALIVE,
        }
    }

    /// Direction and length of the command's data.
    pub fn data_dir(&self) -> DataDir {
        match self {
            Self::GetLogPage(g) => DataDir::CtrlToHost(g.numd_bytes),
            Self::Identify(_) => DataDir::CtrlToHost(IDENTIFY_LEN),
            Self::GetFeatures(g) if g.sel == sel::SUPPORTED_CAPABILITIES => DataDir::None,
            Self::GetFeatures(g) => match feature_data_len(g.fid, false, g.cdw11) {
                0 => DataDir::None,
                n => DataDir::CtrlToHost(n),
            },
            Self::SetFeatures(s) => match feature_data_len(s.fid, true, s.cdw11) {
                0 => DataDir::None,
                n => DataDir::HostToCtrl(n),
            },
            Self::Abort(_) | Self::AsyncEventRequest | Self::KeepAlive => DataDir::None,
        }
    }

    /// Build the SQE (the inverse of [`parse_admin`]); `sgl` describes the data, if any.
    pub fn to_sqe(&self, cid: u16, sgl: SglDescriptor) -> Sqe {
        let mut s = Sqe::default();
        s.set_opcode(self.opcode().0);
        s.set_flags(PSDT_SGL);
        s.set_cid(cid);
        s.set_dptr(sgl.to_bytes());
        match *self {
            Self::GetLogPage(g) => {
                s.set_nsid(g.nsid);
                // NUMD is 0's based in dwords; lengths that are not a whole number of dwords
                // round down, and 0 bytes is not expressible (it encodes as 1 dword).
                let numd = (g.numd_bytes / 4).saturating_sub(1);
                let numdl = u32::try_from(numd & 0xffff).unwrap_or(0);
                let numdu = u32::try_from((numd >> 16) & 0xffff).unwrap_or(0);
                s.set_cdw10(
                    u32::from(g.lid)
                        | (u32::from(g.lsp & 0x7f) << 8)
                        | (u32::from(g.rae) << 15)
                        | (numdl << 16),
                );
                s.set_cdw11(numdu | (u32::from(g.lsi) << 16));
                s.set_cdw12(lo32(g.lpo));
                s.set_cdw13(hi32(g.lpo));
                s.set_cdw14(u32::from(g.uuid_index & 0x7f) | (u32::from(g.csi) << 24));
            }
            Self::Identify(i) => {
                s.set_nsid(i.nsid);
                s.set_cdw10(u32::from(i.cns) | (u32::from(i.cntid) << 16));
                s.set_cdw11(u32::from(i.cnssid) | (u32::from(i.csi) << 24));
                s.set_cdw14(u32::from(i.uuid_index & 0x7f));
            }
            Self::Abort(a) => s.set_cdw10(u32::from(a.sqid) | (u32::from(a.cid) << 16)),
            Self::SetFeatures(f) => {
                s.set_nsid(f.nsid);
                s.set_cdw10(u32::from(f.fid.0) | (u32::from(f.sv) << 31));
                s.set_cdw11(f.cdw11);
                s.set_cdw12(f.cdw12);
                s.set_cdw13(f.cdw13);
                s.set_cdw14(u32::from(f.uuid_index & 0x7f));
            }
            Self::GetFeatures(f) => {
                s.set_nsid(f.nsid);
                s.set_cdw10(u32::from(f.fid.0) | (u32::from(f.sel & 0x7) << 8));
                s.set_cdw11(f.cdw11);
                s.set_cdw14(u32::from(f.uuid_index & 0x7f));
            }
            Self::AsyncEventRequest | Self::KeepAlive => {}
        }
        s
    }
}

/// Parse an Admin Queue command. Fabrics commands (7Fh) are not Admin commands here: use
/// [`super::parse`] or [`super::parse_fabrics`].
pub fn parse_admin(sqe: &Sqe) -> Result<AdminCommand, Status> {
    let cdw10 = sqe.cdw10();
    let cdw11 = sqe.cdw11();
    let cdw14 = sqe.cdw14();
    let uuid_index = bits_u8(cdw14, 0, 0x7f);
    let cmd = match AdminOpcode(sqe.opcode()) {
        AdminOpcode::GET_LOG_PAGE => {
            let numd = (cdw10 >> 16) | ((cdw11 & 0xffff) << 16);
            let lpo = u64::from(sqe.cdw12()) | (u64::from(sqe.cdw13()) << 32);
            // CDW14 bit 23 is Offset Type (index-based offsets); we do not report support for
            // it (LPA bit 6 clear), and byte offsets must be dword aligned (Figure 200).
            if cdw14 & (1 << 23) != 0 || lpo & 0x3 != 0 {
                return Err(INVALID_FIELD);
            }
            AdminCommand::GetLogPage(GetLogPage {
                nsid: sqe.nsid(),
                lid: bits_u8(cdw10, 0, 0xff),
                lsp: bits_u8(cdw10, 8, 0x7f),
                rae: cdw10 & (1 << 15) != 0,
                numd_bytes: (u64::from(numd) + 1) * 4,
                lsi: bits_u16(cdw11, 16),
                lpo,
                uuid_index,
                csi: bits_u8(cdw14, 24, 0xff),
            })
        }
        AdminOpcode::IDENTIFY => {
            // CDW10 bits 15:8 and CDW11 bits 23:16 are reserved (Figure 271).
            if cdw10 & 0xff00 != 0 || cdw11 & 0x00ff_0000 != 0 {
                return Err(INVALID_FIELD);
            }
            AdminCommand::Identify(Identify {
                nsid: sqe.nsid(),
                cns: bits_u8(cdw10, 0, 0xff),
                cntid: bits_u16(cdw10, 16),
                cnssid: bits_u16(cdw11, 0),
                csi: bits_u8(cdw11, 24, 0xff),
                uuid_index,
            })
        }
        AdminOpcode::ABORT => AdminCommand::Abort(Abort {
            sqid: bits_u16(cdw10, 0),
            cid: bits_u16(cdw10, 16),
        }),
        AdminOpcode::SET_FEATURES => {
            // CDW10 bits 30:8 are reserved (Figure 317 of 2.0: SV bit 31, FID bits 7:0).
            if cdw10 & 0x7fff_ff00 != 0 {
                return Err(INVALID_FIELD);
            }
            AdminCommand::SetFeatures(SetFeatures {
                nsid: sqe.nsid(),
                fid: FeatureId(bits_u8(cdw10, 0, 0xff)),
                sv: cdw10 & (1 << 31) != 0,
                cdw11,
                cdw12: sqe.cdw12(),
                cdw13: sqe.cdw13(),
                uuid_index,
            })
        }
        AdminOpcode::GET_FEATURES => {
            let sel = bits_u8(cdw10, 8, 0x7);
            // SEL 100b..111b and CDW10 bits 31:11 are reserved (Figure 313).
            if sel > sel::SUPPORTED_CAPABILITIES || cdw10 & 0xffff_f800 != 0 {
                return Err(INVALID_FIELD);
            }
            AdminCommand::GetFeatures(GetFeatures {
                nsid: sqe.nsid(),
                fid: FeatureId(bits_u8(cdw10, 0, 0xff)),
                sel,
                cdw11,
                uuid_index,
            })
        }
        AdminOpcode::ASYNC_EVENT_REQUEST => AdminCommand::AsyncEventRequest,
        AdminOpcode::KEEP_ALIVE => AdminCommand::KeepAlive,
        // Everything else, including the queue-management commands a fabric forbids (queues are
        // created with Connect) and 7Fh (see `parse_fabrics`), is not an Admin command we run.
        _ => return Err(INVALID_OPCODE),
    };
    check_flags(sqe, !cmd.data_dir().is_empty())?;
    Ok(cmd)
}
