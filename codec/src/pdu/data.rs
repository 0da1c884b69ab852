//! H2CData and C2HData: command data in either direction (NVMe/TCP 1.0, sections 3.6.2.8 and
//! 3.6.2.9, Figures 21-24).
//!
//! Both have a 24-byte header; the data starts at PDO and DATAL must equal what PLEN leaves for
//! it (PLEN - PDO - data digest).

use bytes::Bytes;

use super::error::{Fes, PduError};
use crate::wire::{get_u16, get_u32, put_u16, put_u32};

/// HLEN of H2CData and C2HData.
pub const DATA_HLEN: usize = 24;

/// Byte offsets in H2CData (Figure 22) and C2HData (Figure 24). Bytes 20..24 are reserved;
/// in C2HData bytes 10..12 (TTAG in H2CData) are reserved too.
pub mod off {
    /// CCCID: Command Capsule CID, the command this data belongs to.
    pub const CCCID: usize = 8;
    /// TTAG: Transfer Tag from the R2T (H2CData only).
    pub const TTAG: usize = 10;
    /// DATAO: offset of this PDU's data within the command's data.
    pub const DATAO: usize = 12;
    /// DATAL: length of this PDU's data.
    pub const DATAL: usize = 16;
    /// First reserved byte.
    pub const RSVD: usize = 20;
}

const _: () = assert!(off::DATAL + 4 == off::RSVD && off::RSVD + 4 == DATA_HLEN);

/// Host to Controller Data (section 3.6.2.8, Figure 22): data the controller asked for with R2T.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct H2CData {
    /// CCCID: the command's CID.
    pub cccid: u16,
    /// TTAG: the transfer tag of the R2T this data answers.
    pub ttag: u16,
    /// DATAO: offset of this data within the command's data.
    pub datao: u32,
    /// LAST_PDU: last H2CData for the R2T.
    pub last: bool,
    /// The data (DATAL bytes), sliced from the receive buffer.
    pub data: Bytes,
}

/// Controller to Host Data (section 3.6.2.9, Figure 24).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct C2HData {
    /// CCCID: the command's CID.
    pub cccid: u16,
    /// DATAO: offset of this data within the command's data.
    pub datao: u32,
    /// LAST_PDU: last C2HData of the command.
    pub last: bool,
    /// SUCCESS: the command succeeded and no CapsuleResp follows (requires `last`). Only when
    /// the host disabled SQ flow control, as Linux does by default.
    pub success: bool,
    /// The data (DATAL bytes), sliced from the receive buffer.
    pub data: Bytes,
}

/// Check DATAL and DATAO of a received H2CData/C2HData header against the data length PLEN
/// leaves (`data_len`); returns (CCCID, TTAG, DATAO).
pub(crate) fn check_data_header(
    h: &[u8; DATA_HLEN],
    data_len: usize,
) -> Result<(u16, u16, u32), PduError> {
    let datal = get_u32(h, off::DATAL);
    // Section 3.6.2.8/9: PLEN = HLEN + HDGST + PAD + DATAL + DDGST; anything else is an
    // inconsistent header, reported at DATAL.
    if usize::try_from(datal).ok() != Some(data_len) {
        return Err(PduError::fatal(
            Fes::INVALID_PDU_HEADER_FIELD,
            field(off::DATAL),
            "DATAL does not match PLEN - PDO - data digest",
            h,
        ));
    }
    // MAXH2CDATA was enforced on PLEN already (the common-header checks), DATAL equals it here.
    let datao = get_u32(h, off::DATAO);
    // A transfer that ends past 4 GiB cannot belong to any command (NVMe lengths are 32-bit).
    if datao.checked_add(datal).is_none() {
        return Err(PduError::fatal(
            Fes::DATA_OUT_OF_RANGE,
            0,
            "DATAO + DATAL overflows 32 bits",
            h,
        ));
    }
    Ok((get_u16(h, off::CCCID), get_u16(h, off::TTAG), datao))
}

impl H2CData {
    pub(crate) fn encode_psh(&self, h: &mut [u8; DATA_HLEN], datal: u32) {
        put_u16(h, off::CCCID, self.cccid);
        put_u16(h, off::TTAG, self.ttag);
        put_u32(h, off::DATAO, self.datao);
        put_u32(h, off::DATAL, datal);
    }
}

impl C2HData {
    pub(crate) fn encode_psh(&self, h: &mut [u8; DATA_HLEN], datal: u32) {
        put_u16(h, off::CCCID, self.cccid);
        put_u32(h, off::DATAO, self.datao);
        put_u32(h, off::DATAL, datal);
    }
}

fn field(offset: usize) -> u32 {
    u32::try_from(offset).unwrap_or(0)
}
