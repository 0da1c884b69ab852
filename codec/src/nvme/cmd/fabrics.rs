//! Fabrics command parsing (NVMe Base 2.0, section 6; opcode 7Fh, FCTYPE at byte 4).

use super::{DataDir, INVALID_OPCODE, check_flags};
use crate::nvme::Status;
use crate::nvme::fabrics::{
    CONNECT_DATA_LEN, Connect, FCTYPE_OFFSET, PropertyGet, PropertySet, fabrics_sqe,
};
use crate::nvme::opcode::{AdminOpcode, FabricsType};
use crate::nvme::sgl::SglDescriptor;
use crate::nvme::sqe::Sqe;
use crate::wire::{get_u16, get_u32, put_u16, put_u32};

/// Authentication Send/Receive field offsets (NVMe Base 2.0, Figures 544 and 546).
mod auth_off {
    /// SPSP0 (byte 41), SPSP1 (42), SECP (43); byte 40 is reserved.
    pub const SPSP0: usize = 41;
    pub const SPSP1: usize = 42;
    pub const SECP: usize = 43;
    /// Transfer Length (Send) / Allocation Length (Receive), CDW11.
    pub const LEN: usize = 44;
}

/// Authentication Send (FCTYPE 05h): `tl` bytes of host-to-controller data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthSend {
    /// Security Protocol (E9h = NVMe in-band authentication).
    pub secp: u8,
    pub spsp0: u8,
    pub spsp1: u8,
    /// Transfer Length in bytes.
    pub tl: u32,
}

/// Authentication Receive (FCTYPE 06h): up to `al` bytes of controller-to-host data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthReceive {
    pub secp: u8,
    pub spsp0: u8,
    pub spsp1: u8,
    /// Allocation Length in bytes.
    pub al: u32,
}

/// Disconnect (FCTYPE 08h; NVMe Base 2.0, section 6.4): tear down the queue it arrives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    /// Record Format, CDW10 bits 15:0; 0 is the only format.
    pub recfmt: u16,
}

/// A Fabrics command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FabricsCommand {
    PropertySet(PropertySet),
    /// The 1024-byte [`crate::nvme::fabrics::ConnectData`] follows as command data.
    Connect(Connect),
    PropertyGet(PropertyGet),
    AuthSend(AuthSend),
    AuthReceive(AuthReceive),
    Disconnect(Disconnect),
}

impl FabricsCommand {
    pub fn fctype(&self) -> FabricsType {
        match self {
            Self::PropertySet(_) => FabricsType::PROPERTY_SET,
            Self::Connect(_) => FabricsType::CONNECT,
            Self::PropertyGet(_) => FabricsType::PROPERTY_GET,
            Self::AuthSend(_) => FabricsType::AUTHENTICATION_SEND,
            Self::AuthReceive(_) => FabricsType::AUTHENTICATION_RECEIVE,
            Self::Disconnect(_) => FabricsType::DISCONNECT,
        }
    }

    /// Direction and length of the command's data.
    pub fn data_dir(&self) -> DataDir {
        match self {
            Self::Connect(_) => DataDir::HostToCtrl(CONNECT_DATA_LEN as u64),
            Self::AuthSend(a) => DataDir::HostToCtrl(u64::from(a.tl)),
            Self::AuthReceive(a) => DataDir::CtrlToHost(u64::from(a.al)),
            Self::PropertySet(_) | Self::PropertyGet(_) | Self::Disconnect(_) => DataDir::None,
        }
    }

    /// Build the SQE (the inverse of [`parse_fabrics`]); `sgl` describes the data, if any.
    pub fn to_sqe(&self, cid: u16, sgl: SglDescriptor) -> Sqe {
        let mut s = match self {
            Self::Connect(c) => return c.to_sqe(cid, sgl),
            Self::PropertyGet(p) => p.to_sqe(cid),
            Self::PropertySet(p) => p.to_sqe(cid),
            Self::AuthSend(a) => auth_sqe(
                FabricsType::AUTHENTICATION_SEND,
                cid,
                a.secp,
                a.spsp0,
                a.spsp1,
                a.tl,
            ),
            Self::AuthReceive(a) => auth_sqe(
                FabricsType::AUTHENTICATION_RECEIVE,
                cid,
                a.secp,
                a.spsp0,
                a.spsp1,
                a.al,
            ),
            Self::Disconnect(d) => {
                let mut s = fabrics_sqe(FabricsType::DISCONNECT, cid);
                put_u16(&mut s.0, crate::nvme::sqe::off::CDW10, d.recfmt);
                s
            }
        };
        s.set_dptr(sgl.to_bytes());
        s
    }
}

fn auth_sqe(t: FabricsType, cid: u16, secp: u8, spsp0: u8, spsp1: u8, len: u32) -> Sqe {
    let mut s = fabrics_sqe(t, cid);
    s.0[auth_off::SECP] = secp;
    s.0[auth_off::SPSP0] = spsp0;
    s.0[auth_off::SPSP1] = spsp1;
    put_u32(&mut s.0, auth_off::LEN, len);
    s
}

/// Parse a Fabrics command (opcode 7Fh). Another opcode is Invalid Command Opcode; an FCTYPE we
/// do not implement is Invalid Command Opcode too (as Linux nvmet answers).
pub fn parse_fabrics(sqe: &Sqe) -> Result<FabricsCommand, Status> {
    if sqe.opcode() != AdminOpcode::FABRICS.0 {
        return Err(INVALID_OPCODE);
    }
    let b = &sqe.0;
    let cmd = match FabricsType(b[FCTYPE_OFFSET]) {
        FabricsType::PROPERTY_SET => FabricsCommand::PropertySet(PropertySet::from_sqe(sqe)?),
        FabricsType::CONNECT => FabricsCommand::Connect(Connect::from_sqe(sqe)),
        FabricsType::PROPERTY_GET => FabricsCommand::PropertyGet(PropertyGet::from_sqe(sqe)?),
        t @ (FabricsType::AUTHENTICATION_SEND | FabricsType::AUTHENTICATION_RECEIVE) => {
            let (secp, spsp0, spsp1) = (b[auth_off::SECP], b[auth_off::SPSP0], b[auth_off::SPSP1]);
            let len = get_u32(b, auth_off::LEN);
            if t == FabricsType::AUTHENTICATION_SEND {
                FabricsCommand::AuthSend(AuthSend {
                    secp,
                    spsp0,
                    spsp1,
                    tl: len,
                })
            } else {
                FabricsCommand::AuthReceive(AuthReceive {
                    secp,
                    spsp0,
                    spsp1,
                    al: len,
                })
            }
        }
        FabricsType::DISCONNECT => FabricsCommand::Disconnect(Disconnect {
            recfmt: get_u16(b, crate::nvme::sqe::off::CDW10),
        }),
        _ => return Err(INVALID_OPCODE),
    };
    // Byte 1 of a Fabrics command is reserved except for PSDT, which NVMe/TCP hosts set.
    check_flags(sqe, !cmd.data_dir().is_empty())?;
    Ok(cmd)
}
