//! NVMe structures: NVMe Base 2.x, NVMe over Fabrics 1.1 and the NVM Command Set.
//!
//! One module per spec area: [`sqe`]/[`cqe`] (queue entries), [`status`], [`opcode`], [`sgl`],
//! [`fabrics`] (Connect, properties), [`identify`], [`log`], [`generation`] (Tessera's vendor
//! use of CDW2/CDW3, Identify vendor area and log page C0h) and [`cmd`] (parse, then execute).

pub mod cmd;
pub mod cqe;
pub mod fabrics;
pub mod generation;
pub mod identify;
pub mod log;
pub mod opcode;
pub mod sgl;
pub mod sqe;
pub mod status;

pub use cmd::{
    AdminCommand, Command, DataDir, FabricsCommand, IoCommand, QueueKind, check_sgl, parse,
    parse_admin, parse_fabrics, parse_io,
};
pub use cqe::{CQE_LEN, Cqe};
pub use opcode::{AdminOpcode, FabricsType, IoOpcode};
pub use sgl::SglDescriptor;
pub use sqe::{SQE_LEN, Sqe};
pub use status::Status;

/// Size of every Identify data structure (NVMe Base 2.0, section 5.17.2).
pub const IDENTIFY_DATA_LEN: usize = 4096;
