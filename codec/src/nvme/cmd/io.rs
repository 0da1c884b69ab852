//! NVM Command Set I/O command parsing (NVM Command Set 1.0, section 3).

use std::num::NonZeroU64;

use super::{DataDir, INVALID_FIELD, INVALID_OPCODE, bits_u8, bits_u16, check_flags};
use crate::nvme::Status;
use crate::nvme::generation::{get_expiry, get_generation, set_expiry, set_generation};
use crate::nvme::opcode::IoOpcode;
use crate::nvme::sgl::SglDescriptor;
use crate::nvme::sqe::{PSDT_SGL, Sqe};
use crate::wire::{Reader, get_u32, get_u64, put_u32, put_u64};

/// CDW12 bits shared by Read, Write, Compare, Verify and Write Zeroes (NVM Command Set 1.0,
/// Figures 40, 61, 16, 57, 64).
mod cdw12 {
    /// Number of Logical Blocks, 0's based.
    pub const NLB_MASK: u32 = 0xffff;
    /// Directive Type (Write), bits 23:20.
    pub const DTYPE_SHIFT: u32 = 20;
    /// Storage Tag Check, bit 24: meaningful only with protection information.
    pub const STC: u32 = 1 << 24;
    /// Deallocate (Write Zeroes), bit 25.
    pub const DEAC: u32 = 1 << 25;
    /// Protection Information field, bits 29:26.
    pub const PRINFO_SHIFT: u32 = 26;
    /// Force Unit Access, bit 30.
    pub const FUA: u32 = 1 << 30;
    /// Limited Retry, bit 31.
    pub const LR: u32 = 1 << 31;
}

/// Read (02h), Write (01h), Compare (05h) and Verify (0Ch): a range of logical blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rw {
    pub nsid: u32,
    /// Starting LBA (CDW11:CDW10).
    pub slba: u64,
    /// Number of logical blocks, already +1 (1..=65536).
    pub nlb: u32,
    /// Force Unit Access.
    pub fua: bool,
    /// Limited Retry.
    pub lr: bool,
    /// PRINFO (bits 29:26): ignored, our namespaces carry no protection information.
    pub prinfo: u8,
    /// Dataset Management hints (CDW13 bits 7:0).
    pub dsm: u8,
    /// Directive Type (Write only; CDW12 bits 23:20).
    pub dtype: u8,
    /// Directive Specific (CDW13 bits 31:16).
    pub dspec: u16,
    /// Tessera generation stamp (CDW3:CDW2), `None` when unstamped.
    pub generation: Option<NonZeroU64>,
    /// Tessera expiry of an internal command (MPTR; 0: none): see
    /// [`crate::nvme::generation::get_expiry`].
    pub expires: u64,
}

impl Rw {
    /// Bytes covered for a namespace of `lba_size`-byte blocks.
    pub fn bytes(&self, lba_size: u32) -> u64 {
        // nlb <= 2^16 and lba_size < 2^32: the product fits in 48 bits.
        u64::from(self.nlb) * u64::from(lba_size)
    }

    /// A plain range: no FUA, no hints, given stamp (0 = unstamped).
    pub fn new(nsid: u32, slba: u64, nlb: u32, generation: u64) -> Self {
        Self {
            nsid,
            slba,
            nlb,
            fua: false,
            lr: false,
            prinfo: 0,
            dsm: 0,
            dtype: 0,
            dspec: 0,
            generation: NonZeroU64::new(generation),
            expires: 0,
        }
    }
}

/// Write Zeroes (08h; NVM Command Set 1.0, section 3.2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteZeroes {
    pub nsid: u32,
    pub slba: u64,
    /// Number of logical blocks, already +1.
    pub nlb: u32,
    /// Deallocate (CDW12 bit 25): the host allows the range to be deallocated.
    pub deac: bool,
    pub fua: bool,
    pub lr: bool,
    pub generation: Option<NonZeroU64>,
    /// Expiry of an internal command (MPTR; 0: none).
    pub expires: u64,
}

/// Write Uncorrectable (04h; NVM Command Set 1.0, section 3.2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteUncorrectable {
    pub nsid: u32,
    pub slba: u64,
    /// Number of logical blocks, already +1.
    pub nlb: u32,
    pub generation: Option<NonZeroU64>,
}

/// Flush (00h; NVM Command Set 1.0, section 3.2.2). NSID may be FFFFFFFFh (all namespaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flush {
    pub nsid: u32,
    pub generation: Option<NonZeroU64>,
}

/// Dataset Management (09h; NVM Command Set 1.0, section 3.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetManagement {
    pub nsid: u32,
    /// Number of ranges, already +1 (1..=256); the data is `nr` 16-byte [`DsmRange`]s.
    pub nr: u16,
    /// Attribute – Deallocate (CDW11 bit 2).
    pub ad: bool,
    /// Attribute – Integral Dataset for Write (bit 1).
    pub idw: bool,
    /// Attribute – Integral Dataset for Read (bit 0).
    pub idr: bool,
    pub generation: Option<NonZeroU64>,
    /// Expiry of an internal command (MPTR; 0: none).
    pub expires: u64,
}

/// Size of a Dataset Management range (NVM Command Set 1.0, Figure 39).
pub const DSM_RANGE_LEN: usize = 16;

/// One Dataset Management range: context attributes, length in blocks (not 0's based), SLBA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DsmRange {
    pub cattr: u32,
    pub nlb: u32,
    pub slba: u64,
}

impl DsmRange {
    /// Decode the first `nr` ranges of `data` (`None` if it is too short).
    pub fn parse_list(data: &[u8], nr: u16) -> Option<Vec<DsmRange>> {
        let mut r = Reader::new(data);
        (0..nr)
            .map(|_| {
                Some(DsmRange {
                    cattr: r.u32("cattr").ok()?,
                    nlb: r.u32("nlb").ok()?,
                    slba: r.u64("slba").ok()?,
                })
            })
            .collect()
    }

    pub fn to_bytes(&self) -> [u8; DSM_RANGE_LEN] {
        let mut b = [0u8; DSM_RANGE_LEN];
        put_u32(&mut b, 0, self.cattr);
        put_u32(&mut b, 4, self.nlb);
        put_u64(&mut b, 8, self.slba);
        b
    }

    pub fn from_bytes(b: &[u8; DSM_RANGE_LEN]) -> Self {
        Self {
            cattr: get_u32(b, 0),
            nlb: get_u32(b, 4),
            slba: get_u64(b, 8),
        }
    }
}

/// An NVM I/O command the target implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoCommand {
    Flush(Flush),
    Write(Rw),
    Read(Rw),
    WriteUncorrectable(WriteUncorrectable),
    Compare(Rw),
    WriteZeroes(WriteZeroes),
    DatasetManagement(DatasetManagement),
    Verify(Rw),
}

impl IoCommand {
    pub fn opcode(&self) -> IoOpcode {
        match self {
            Self::Flush(_) => IoOpcode::FLUSH,
            Self::Write(_) => IoOpcode::WRITE,
            Self::Read(_) => IoOpcode::READ,
            Self::WriteUncorrectable(_) => IoOpcode::WRITE_UNCORRECTABLE,
            Self::Compare(_) => IoOpcode::COMPARE,
            Self::WriteZeroes(_) => IoOpcode::WRITE_ZEROES,
            Self::DatasetManagement(_) => IoOpcode::DATASET_MANAGEMENT,
            Self::Verify(_) => IoOpcode::VERIFY,
        }
    }

    pub fn nsid(&self) -> u32 {
        match self {
            Self::Flush(c) => c.nsid,
            Self::Write(c) | Self::Read(c) | Self::Compare(c) | Self::Verify(c) => c.nsid,
            Self::WriteUncorrectable(c) => c.nsid,
            Self::WriteZeroes(c) => c.nsid,
            Self::DatasetManagement(c) => c.nsid,
        }
    }

    /// The generation stamp. docs/cluster-protocol.md lists Read, Write, Write Zeroes, Dataset Management,
    /// Flush and Compare; Verify and Write Uncorrectable address blocks the same way and their
    /// CDW2/CDW3 carry nothing else for our (PI-less) namespaces, so they are checked too.
    pub fn generation(&self) -> Option<NonZeroU64> {
        match self {
            Self::Flush(c) => c.generation,
            Self::Write(c) | Self::Read(c) | Self::Compare(c) | Self::Verify(c) => c.generation,
            Self::WriteUncorrectable(c) => c.generation,
            Self::WriteZeroes(c) => c.generation,
            Self::DatasetManagement(c) => c.generation,
        }
    }

    /// The expiry of an internal command (CLOCK_REALTIME milliseconds; 0: none), carried by the
    /// commands a server forwards: Read, Write, Compare, Verify, Write Zeroes and Dataset
    /// Management (docs/cluster-protocol.md, "Bounds").
    pub fn expires(&self) -> u64 {
        match self {
            Self::Write(c) | Self::Read(c) | Self::Compare(c) | Self::Verify(c) => c.expires,
            Self::WriteZeroes(c) => c.expires,
            Self::DatasetManagement(c) => c.expires,
            Self::Flush(_) | Self::WriteUncorrectable(_) => 0,
        }
    }

    /// Whether the command moves data (independent of the block size).
    pub fn transfers_data(&self) -> bool {
        matches!(
            self,
            Self::Write(_) | Self::Read(_) | Self::Compare(_) | Self::DatasetManagement(_)
        )
    }

    /// Direction and length of the data for a namespace of `lba_size`-byte blocks.
    pub fn data_dir(&self, lba_size: u32) -> DataDir {
        match self {
            Self::Write(c) | Self::Compare(c) => DataDir::HostToCtrl(c.bytes(lba_size)),
            Self::Read(c) => DataDir::CtrlToHost(c.bytes(lba_size)),
            Self::DatasetManagement(c) => {
                DataDir::HostToCtrl(u64::from(c.nr) * DSM_RANGE_LEN as u64)
            }
            Self::Flush(_)
            | Self::WriteUncorrectable(_)
            | Self::WriteZeroes(_)
            | Self::Verify(_) => DataDir::None,
        }
    }

    /// Build the SQE (the inverse of [`parse_io`]); `sgl` describes the data, if any.
    pub fn to_sqe(&self, cid: u16, sgl: SglDescriptor) -> Sqe {
        let mut s = Sqe::default();
        s.set_opcode(self.opcode().0);
        s.set_flags(PSDT_SGL);
        s.set_cid(cid);
        s.set_nsid(self.nsid());
        s.set_dptr(sgl.to_bytes());
        set_generation(&mut s, self.generation().map_or(0, NonZeroU64::get));
        set_expiry(&mut s, self.expires());
        let nlb0 = |nlb: u32| nlb.saturating_sub(1) & cdw12::NLB_MASK;
        let flags = |fua: bool, lr: bool| {
            (if fua { cdw12::FUA } else { 0 }) | (if lr { cdw12::LR } else { 0 })
        };
        match *self {
            Self::Flush(_) => {}
            Self::Write(c) | Self::Read(c) | Self::Compare(c) | Self::Verify(c) => {
                s.set_cdw10_11(c.slba);
                s.set_cdw12(
                    nlb0(c.nlb)
                        | (u32::from(c.dtype & 0xf) << cdw12::DTYPE_SHIFT)
                        | (u32::from(c.prinfo & 0xf) << cdw12::PRINFO_SHIFT)
                        | flags(c.fua, c.lr),
                );
                s.set_cdw13(u32::from(c.dsm) | (u32::from(c.dspec) << 16));
            }
            Self::WriteUncorrectable(c) => {
                s.set_cdw10_11(c.slba);
                s.set_cdw12(nlb0(c.nlb));
            }
            Self::WriteZeroes(c) => {
                s.set_cdw10_11(c.slba);
                let deac = if c.deac { cdw12::DEAC } else { 0 };
                s.set_cdw12(nlb0(c.nlb) | deac | flags(c.fua, c.lr));
            }
            Self::DatasetManagement(c) => {
                s.set_cdw10(u32::from(c.nr.saturating_sub(1) & 0xff));
                s.set_cdw11(u32::from(c.idr) | (u32::from(c.idw) << 1) | (u32::from(c.ad) << 2));
            }
        }
        s
    }
}

fn parse_rw(sqe: &Sqe, opcode: IoOpcode) -> Result<Rw, Status> {
    let c12 = sqe.cdw12();
    let c13 = sqe.cdw13();
    let nlb = (c12 & cdw12::NLB_MASK) + 1;
    // STC asks for a storage tag check: there is no protection information to check.
    // DTYPE is defined for Write only; Read, Compare and Verify have those bits reserved.
    let dtype = bits_u8(c12, cdw12::DTYPE_SHIFT, 0xf);
    if c12 & cdw12::STC != 0 || (opcode != IoOpcode::WRITE && dtype != 0) {
        return Err(INVALID_FIELD);
    }
    Ok(Rw {
        nsid: sqe.nsid(),
        slba: sqe.cdw10_11(),
        nlb,
        fua: c12 & cdw12::FUA != 0,
        lr: c12 & cdw12::LR != 0,
        prinfo: bits_u8(c12, cdw12::PRINFO_SHIFT, 0xf),
        dsm: bits_u8(c13, 0, 0xff),
        dtype,
        dspec: bits_u16(c13, 16),
        generation: get_generation(sqe),
        expires: get_expiry(sqe),
    })
}

/// Parse an NVM I/O command. Fabrics commands (7Fh) are handled by [`super::parse_fabrics`].
pub fn parse_io(sqe: &Sqe) -> Result<IoCommand, Status> {
    let opcode = IoOpcode(sqe.opcode());
    let generation = get_generation(sqe);
    let cmd = match opcode {
        IoOpcode::FLUSH => IoCommand::Flush(Flush {
            nsid: sqe.nsid(),
            generation,
        }),
        IoOpcode::WRITE => IoCommand::Write(parse_rw(sqe, opcode)?),
        IoOpcode::READ => IoCommand::Read(parse_rw(sqe, opcode)?),
        IoOpcode::COMPARE => IoCommand::Compare(parse_rw(sqe, opcode)?),
        IoOpcode::VERIFY => IoCommand::Verify(parse_rw(sqe, opcode)?),
        IoOpcode::WRITE_UNCORRECTABLE => {
            // CDW12 bits 31:16 are reserved (NVM Command Set 1.0, Figure 60).
            if sqe.cdw12() & 0xffff_0000 != 0 {
                return Err(INVALID_FIELD);
            }
            IoCommand::WriteUncorrectable(WriteUncorrectable {
                nsid: sqe.nsid(),
                slba: sqe.cdw10_11(),
                nlb: (sqe.cdw12() & cdw12::NLB_MASK) + 1,
                generation,
            })
        }
        IoOpcode::WRITE_ZEROES => {
            let c12 = sqe.cdw12();
            if c12 & cdw12::STC != 0 {
                return Err(INVALID_FIELD);
            }
            IoCommand::WriteZeroes(WriteZeroes {
                nsid: sqe.nsid(),
                slba: sqe.cdw10_11(),
                nlb: (c12 & cdw12::NLB_MASK) + 1,
                deac: c12 & cdw12::DEAC != 0,
                fua: c12 & cdw12::FUA != 0,
                lr: c12 & cdw12::LR != 0,
                generation,
                expires: get_expiry(sqe),
            })
        }
        IoOpcode::DATASET_MANAGEMENT => {
            let (c10, c11) = (sqe.cdw10(), sqe.cdw11());
            // CDW10 bits 31:8 and CDW11 bits 31:3 are reserved (NVM Command Set 1.0, Fig. 37-38).
            if c10 & 0xffff_ff00 != 0 || c11 & 0xffff_fff8 != 0 {
                return Err(INVALID_FIELD);
            }
            IoCommand::DatasetManagement(DatasetManagement {
                nsid: sqe.nsid(),
                nr: u16::from(bits_u8(c10, 0, 0xff)) + 1,
                idr: c11 & 1 != 0,
                idw: c11 & 2 != 0,
                ad: c11 & 4 != 0,
                generation,
                expires: get_expiry(sqe),
            })
        }
        // Reservations, Copy, zoned and vendor commands: not implemented.
        _ => return Err(INVALID_OPCODE),
    };
    check_flags(sqe, cmd.transfers_data())?;
    Ok(cmd)
}
