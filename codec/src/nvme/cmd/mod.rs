//! Parse, then execute: a submission entry becomes a typed command that knows its
//! data direction and transfer length before anything runs, so the transport can decide between
//! in-capsule data and R2T (NVMe/TCP 1.0, section 3.3) without looking at opcodes itself.
//!
//! * [`parse_admin`]: Admin Queue commands (NVMe Base 2.0, section 5);
//! * [`parse_io`]: NVM Command Set I/O commands (NVM Command Set 1.0, section 3);
//! * [`parse_fabrics`]: Fabrics commands, opcode 7Fh with FCTYPE in byte 4 (NVMe Base 2.0,
//!   section 6), which arrive on both kinds of queue;
//! * [`parse`]: dispatch on the queue kind and opcode 7Fh.
//!
//! Each parser is pure and total: any 64 bytes give `Ok` or an NVMe [`Status`], never a panic
//! (a property test and a fuzz target hold them to it). Unknown opcodes are Invalid Command
//! Opcode; reserved or invalid field values are Invalid Field in Command; both with DNR.

mod admin;
mod fabrics;
mod io;

pub use admin::{
    Abort, AdminCommand, FeatureId, GetFeatures, GetLogPage, Identify, SetFeatures, cns,
    feature_data_len, parse_admin, sel,
};
pub use fabrics::{AuthReceive, AuthSend, Disconnect, FabricsCommand, parse_fabrics};
pub use io::{
    DSM_RANGE_LEN, DatasetManagement, DsmRange, Flush, IoCommand, Rw, WriteUncorrectable,
    WriteZeroes, parse_io,
};

use crate::nvme::Status;
use crate::nvme::opcode::AdminOpcode;
use crate::nvme::sgl::SglDescriptor;
use crate::nvme::sqe::Sqe;

/// Which way a command's data moves, and how many bytes, as far as the SQE alone says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDir {
    /// No data transfer.
    None,
    /// Host to controller (write-like): in-capsule or through R2T/H2CData.
    HostToCtrl(u64),
    /// Controller to host (read-like): through C2HData.
    CtrlToHost(u64),
}

impl DataDir {
    /// Transfer length in bytes (0 for [`DataDir::None`]).
    pub fn len(&self) -> u64 {
        match *self {
            Self::None => 0,
            Self::HostToCtrl(n) | Self::CtrlToHost(n) => n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which queue a command arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// Queue 0.
    Admin,
    /// Any other queue.
    Io,
}

/// A parsed command of any kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Admin(AdminCommand),
    Io(IoCommand),
    Fabrics(FabricsCommand),
}

/// Parse a command arriving on a queue of kind `queue`: opcode 7Fh goes to [`parse_fabrics`],
/// anything else to [`parse_admin`] or [`parse_io`].
pub fn parse(sqe: &Sqe, queue: QueueKind) -> Result<Command, Status> {
    if sqe.opcode() == AdminOpcode::FABRICS.0 {
        return parse_fabrics(sqe).map(Command::Fabrics);
    }
    match queue {
        QueueKind::Admin => parse_admin(sqe).map(Command::Admin),
        QueueKind::Io => parse_io(sqe).map(Command::Io),
    }
}

/// Check SGL1 of a command against the data it needs, `dir` (from the parsed command), the way
/// an NVMe/TCP controller must (NVMe/TCP 1.0, section 3.3.2; NVMe Base 2.0, section 4.1.8).
/// This is the one SGL rule of the whole transport (docs/transport.md):
///
/// * no data: DPTR is not looked at (nothing moves; PSDT may even be 00b, PRPs, which a fabric
///   cannot use but a command without data may leave there); a non-empty descriptor is simply
///   longer than the 0 bytes moved, which the next rule accepts;
/// * data: the descriptor must be in-capsule (Data Block, Offset subtype, at offset 0 since
///   ICDOFF is 0 and the capsule holds one data block), only for host-to-controller data (a
///   capsule carries no data back), or a Transport SGL Data Block; anything else is SGL
///   Descriptor Type Invalid;
/// * it must describe at least the bytes the command moves, else Data SGL Length Invalid. A
///   longer buffer is accepted and only `dir.len()` bytes move: we advertise SGLS bit 18 ("SGL
///   Length", NVMe Base 2.0, Figure 275: commands may carry a data SGL longer than the data
///   they transfer), and Linux sends such a buffer for Dataset Management (a 4 KiB range
///   page for fewer than 256 ranges).
///
/// Returns the descriptor when data moves.
pub fn check_sgl(sqe: &Sqe, dir: DataDir) -> Result<Option<SglDescriptor>, Status> {
    if dir.is_empty() {
        return Ok(None);
    }
    let sgl = SglDescriptor::from_sqe(sqe)?;
    match (sgl, dir) {
        (SglDescriptor::InCapsule { offset: 0, .. }, DataDir::HostToCtrl(_))
        | (SglDescriptor::Transport { .. }, _) => {}
        (SglDescriptor::InCapsule { offset: 0, .. }, _) => {
            return Err(Status::SGL_INVALID_TYPE.with_dnr());
        }
        (SglDescriptor::InCapsule { .. }, _) => return Err(Status::SGL_OFFSET_INVALID.with_dnr()),
        _ => return Err(Status::SGL_INVALID_TYPE.with_dnr()),
    }
    if sgl.len() < dir.len() {
        return Err(Status::SGL_INVALID_DATA_LEN.with_dnr());
    }
    Ok(Some(sgl))
}

/// Invalid Field in Command, DNR: the answer to reserved or invalid field values.
pub(crate) const INVALID_FIELD: Status = Status::INVALID_FIELD.with_dnr();
/// Invalid Command Opcode, DNR.
pub(crate) const INVALID_OPCODE: Status = Status::INVALID_OPCODE.with_dnr();

/// Checks of byte 1 common to every command (NVMe Base 2.0, Figure 88):
/// * FUSE must be 00b: we report FUSES = 0 (no fused operations);
/// * PSDT 11b is reserved; PSDT 00b (PRPs) cannot describe data on a fabric, so a command that
///   transfers data must use SGLs (01b or 10b). A command without data may leave PSDT 0.
pub(crate) fn check_flags(sqe: &Sqe, transfers_data: bool) -> Result<(), Status> {
    if sqe.fuse() != 0 {
        return Err(INVALID_FIELD);
    }
    match sqe.psdt() {
        0b01 | 0b10 => Ok(()),
        0b00 if !transfers_data => Ok(()),
        _ => Err(INVALID_FIELD),
    }
}

/// `(v >> shift) & mask` narrowed to `u8`; callers pass masks of at most 8 bits.
#[inline]
pub(crate) fn bits_u8(v: u32, shift: u32, mask: u32) -> u8 {
    debug_assert!(mask <= 0xff, "bits_u8 mask {mask:#x} wider than 8 bits");
    u8::try_from((v >> shift) & mask).unwrap_or(u8::MAX)
}

/// `(v >> shift) & 0xffff` as `u16`.
#[inline]
pub(crate) fn bits_u16(v: u32, shift: u32) -> u16 {
    u16::try_from((v >> shift) & 0xffff).unwrap_or(u16::MAX)
}

/// Low 32 bits of `v`.
#[inline]
#[allow(clippy::cast_possible_truncation)] // Taking the low half is the point.
pub(crate) fn lo32(v: u64) -> u32 {
    v as u32
}

/// High 32 bits of `v`.
#[inline]
pub(crate) fn hi32(v: u64) -> u32 {
    u32::try_from(v >> 32).unwrap_or(u32::MAX)
}
