//! H2CTermReq and C2HTermReq: terminate the connection on a fatal error (NVMe/TCP 1.0, sections
//! 3.6.2.4 and 3.6.2.5, Figures 14-16).
//!
//! Both share one layout: a 24-byte header (FES, FEI) followed by the header of the PDU that
//! caused the error, at most 128 bytes (the largest HLEN), so PLEN is 24 to 152 (Linux
//! `NVME_TCP_MIN_C2HTERM_PLEN` / `NVME_TCP_MAX_C2HTERM_PLEN`). Never digests, PDO 0, no flags.
//! A malformed TermReq is not answered with another one: the connection is just closed.

use bytes::Bytes;

use super::error::Fes;
use crate::wire::{get_u16, get_u32, put_u16, put_u32};

/// HLEN of either TermReq.
pub const TERM_HLEN: usize = 24;

/// Most data a TermReq carries: the offending PDU's header, whose HLEN is at most 128.
pub const TERM_DATA_MAX: usize = 128;

/// Largest TermReq PLEN (Linux `NVME_TCP_MAX_C2HTERM_PLEN`).
pub const TERM_PLEN_MAX: usize = TERM_HLEN + TERM_DATA_MAX;

/// Byte offsets in a TermReq (Figure 16). Bytes 14..24 are reserved.
pub mod off {
    /// FES: Fatal Error Status.
    pub const FES: usize = 8;
    /// FEI: Fatal Error Information (meaning depends on FES).
    pub const FEI: usize = 10;
    /// First reserved byte.
    pub const RSVD: usize = 14;
}

const _: () = assert!(off::FEI + 4 == off::RSVD && off::RSVD < TERM_HLEN);
const _: () = assert!(TERM_PLEN_MAX == 152);

/// A Terminate Connection Request, either direction (section 3.6.2.4, Figure 16).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TermReq {
    /// FES: why the connection ends.
    pub fes: Fes,
    /// FEI: field offset (Invalid PDU Header Field, Unsupported Parameter), received header
    /// digest (Header Digest Error), reserved otherwise.
    pub fei: u32,
    /// The header of the PDU in error, at most [`TERM_DATA_MAX`] bytes (longer is truncated
    /// when encoding).
    pub data: Bytes,
}

impl TermReq {
    pub(crate) fn load(h: &[u8; TERM_HLEN], data: Bytes) -> Self {
        TermReq {
            fes: Fes(get_u16(h, off::FES)),
            fei: get_u32(h, off::FEI),
            data,
        }
    }

    pub(crate) fn encode_psh(&self, h: &mut [u8; TERM_HLEN]) {
        put_u16(h, off::FES, self.fes.0);
        put_u32(h, off::FEI, self.fei);
    }

    /// The data actually sent: at most [`TERM_DATA_MAX`] bytes.
    pub(crate) fn wire_data(&self) -> Bytes {
        self.data.slice(..self.data.len().min(TERM_DATA_MAX))
    }
}
