//! R2T: Ready to Transfer, the controller asking for write data (NVMe/TCP 1.0, section
//! 3.6.2.10, Figures 25-26).

use super::error::{Fes, PduError};
use crate::wire::{get_u16, get_u32, put_u16, put_u32};

/// HLEN of an R2T.
pub const R2T_HLEN: usize = 24;

/// Byte offsets in an R2T (Figure 26). Bytes 20..24 are reserved.
pub mod off {
    /// CCCID: the command the data is for.
    pub const CCCID: usize = 8;
    /// TTAG: transfer tag the host echoes in its H2CData PDUs.
    pub const TTAG: usize = 10;
    /// R2TO: offset of the requested data within the command's data.
    pub const R2TO: usize = 12;
    /// R2TL: length of the requested data.
    pub const R2TL: usize = 16;
    /// First reserved byte.
    pub const RSVD: usize = 20;
}

const _: () = assert!(off::R2TL + 4 == off::RSVD && off::RSVD + 4 == R2T_HLEN);

/// Ready to Transfer (section 3.6.2.10, Figure 26).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct R2T {
    /// CCCID: the command's CID.
    pub cccid: u16,
    /// TTAG: transfer tag.
    pub ttag: u16,
    /// R2TO: offset of the requested data.
    pub r2to: u32,
    /// R2TL: length of the requested data; never 0 (the Linux host treats 0 as a protocol error).
    pub r2tl: u32,
}

impl R2T {
    pub(crate) fn load(h: &[u8; R2T_HLEN]) -> Result<Self, PduError> {
        let r2tl = get_u32(h, off::R2TL);
        // Section 3.6.2.10: R2TL of 0 requests nothing; the Linux host rejects it.
        if r2tl == 0 {
            return Err(PduError::fatal(
                Fes::INVALID_PDU_HEADER_FIELD,
                u32::try_from(off::R2TL).unwrap_or(0),
                "R2T R2TL is 0",
                h,
            ));
        }
        let r2to = get_u32(h, off::R2TO);
        if r2to.checked_add(r2tl).is_none() {
            return Err(PduError::fatal(
                Fes::DATA_OUT_OF_RANGE,
                0,
                "R2TO + R2TL overflows 32 bits",
                h,
            ));
        }
        Ok(R2T {
            cccid: get_u16(h, off::CCCID),
            ttag: get_u16(h, off::TTAG),
            r2to,
            r2tl,
        })
    }

    pub(crate) fn encode_psh(&self, h: &mut [u8; R2T_HLEN]) {
        put_u16(h, off::CCCID, self.cccid);
        put_u16(h, off::TTAG, self.ttag);
        put_u32(h, off::R2TO, self.r2to);
        put_u32(h, off::R2TL, self.r2tl);
    }
}
