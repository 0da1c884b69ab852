//! NVMe/TCP PDU codec and the NVMe structures a target needs.
//!
//! `pdu` is the NVMe/TCP transport (NVMe/TCP Transport Specification 1.0/1.1); `nvme` holds the
//! NVMe Base 2.x, NVMe over Fabrics 1.1 and NVM Command Set structures. This crate knows nothing of
//! sockets' owners or of storage.
#![forbid(unsafe_code)]

pub mod nvme;
pub mod pdu;
pub mod wire;
