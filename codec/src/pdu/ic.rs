//! ICReq and ICResp: connection initialization (NVMe/TCP 1.0, sections 3.6.2.2 and 3.6.2.3,
//! Figures 10-13).
//!
//! Both are 128 bytes of header and nothing else: HLEN = PLEN = 128, PDO 0, no flags, and never
//! a digest (digests are what they negotiate).

use super::error::{Fes, PduError};
use super::params::{MAXH2CDATA_MIN, PDA_MAX};
use crate::wire::{get_u16, get_u32, put_u16, put_u32};

/// HLEN (and PLEN) of ICReq and ICResp.
pub const IC_HLEN: usize = 128;

/// PDU Format Version 1.0, the only one defined (Linux `NVME_TCP_PFV_1_0`).
pub const PFV_1_0: u16 = 0;

/// DGST byte bits (Figure 11/13; Linux `enum nvme_tcp_digest_option`).
pub mod dgst {
    /// HDGST_ENABLE: header digests requested / accepted.
    pub const HDGST_ENABLE: u8 = 1 << 0;
    /// DDGST_ENABLE: data digests requested / accepted.
    pub const DDGST_ENABLE: u8 = 1 << 1;
}

/// Byte offsets in ICReq (Figure 11). Bytes 16..128 are reserved.
pub mod req_off {
    /// PFV: PDU Format Version.
    pub const PFV: usize = 8;
    /// HPDA: host PDU data alignment, 0's based dwords.
    pub const HPDA: usize = 10;
    /// DGST: digest types the host asks for.
    pub const DGST: usize = 11;
    /// MAXR2T: maximum outstanding R2Ts per command, 0's based.
    pub const MAXR2T: usize = 12;
    /// First reserved byte.
    pub const RSVD: usize = 16;
}

/// Byte offsets in ICResp (Figure 13). Bytes 16..128 are reserved.
pub mod resp_off {
    /// PFV: PDU Format Version.
    pub const PFV: usize = 8;
    /// CPDA: controller PDU data alignment, 0's based dwords.
    pub const CPDA: usize = 10;
    /// DGST: digest types the controller enables.
    pub const DGST: usize = 11;
    /// MAXH2CDATA: most data one H2CData PDU may carry, in bytes.
    pub const MAXH2CDATA: usize = 12;
    /// First reserved byte.
    pub const RSVD: usize = 16;
}

const _: () = assert!(req_off::MAXR2T + 4 == req_off::RSVD && req_off::RSVD < IC_HLEN);
const _: () = assert!(resp_off::MAXH2CDATA + 4 == resp_off::RSVD && resp_off::RSVD < IC_HLEN);
const _: () = assert!(IC_HLEN == 128);

/// Initialize Connection Request, the host's first PDU (section 3.6.2.2, Figure 11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IcReq {
    /// PFV: PDU Format Version; 0 is 1.0.
    pub pfv: u16,
    /// HPDA: alignment the host wants for C2HData data, `(hpda + 1) * 4` bytes.
    pub hpda: u8,
    /// HDGST_ENABLE requested.
    pub hdgst: bool,
    /// DDGST_ENABLE requested.
    pub ddgst: bool,
    /// MAXR2T: outstanding R2Ts per command the host supports, 0's based.
    pub maxr2t: u32,
}

impl IcReq {
    /// Parse the PDU-specific fields. Section 3.6.2.2: a controller that does not support the
    /// PFV, or an HPDA above 31, reports Unsupported Parameter with the field's offset.
    pub(crate) fn load(h: &[u8; IC_HLEN]) -> Result<Self, PduError> {
        let pfv = get_u16(h, req_off::PFV);
        if pfv != PFV_1_0 {
            return Err(unsupported(req_off::PFV, "ICReq PFV is not 1.0", h));
        }
        let hpda = h[req_off::HPDA];
        if hpda > PDA_MAX {
            return Err(unsupported(req_off::HPDA, "ICReq HPDA above 31", h));
        }
        let d = h[req_off::DGST];
        // Bits 7:2 of DGST are reserved: ignored on receipt, as reserved fields are.
        Ok(IcReq {
            pfv,
            hpda,
            hdgst: d & dgst::HDGST_ENABLE != 0,
            ddgst: d & dgst::DDGST_ENABLE != 0,
            maxr2t: get_u32(h, req_off::MAXR2T),
        })
    }

    pub(crate) fn encode_psh(&self, h: &mut [u8; IC_HLEN]) {
        put_u16(h, req_off::PFV, self.pfv);
        h[req_off::HPDA] = self.hpda;
        h[req_off::DGST] = dgst_byte(self.hdgst, self.ddgst);
        put_u32(h, req_off::MAXR2T, self.maxr2t);
    }
}

/// Initialize Connection Response, the controller's answer (section 3.6.2.3, Figure 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IcResp {
    /// PFV: PDU Format Version; 0 is 1.0.
    pub pfv: u16,
    /// CPDA: alignment the controller wants for host-sent data, `(cpda + 1) * 4` bytes. The
    /// Linux host refuses anything but 0.
    pub cpda: u8,
    /// HDGST_ENABLE: header digests on. The Linux host requires it to equal what it asked.
    pub hdgst: bool,
    /// DDGST_ENABLE: data digests on. Same requirement.
    pub ddgst: bool,
    /// MAXH2CDATA: at least 4096 and a multiple of 4 (the Linux host checks both).
    pub maxh2cdata: u32,
}

impl IcResp {
    /// Parse the PDU-specific fields; a host reports an unsupported PFV, CPDA or MAXH2CDATA as
    /// Unsupported Parameter.
    pub(crate) fn load(h: &[u8; IC_HLEN]) -> Result<Self, PduError> {
        let pfv = get_u16(h, resp_off::PFV);
        if pfv != PFV_1_0 {
            return Err(unsupported(resp_off::PFV, "ICResp PFV is not 1.0", h));
        }
        let cpda = h[resp_off::CPDA];
        if cpda > PDA_MAX {
            return Err(unsupported(resp_off::CPDA, "ICResp CPDA above 31", h));
        }
        let maxh2cdata = get_u32(h, resp_off::MAXH2CDATA);
        if maxh2cdata < MAXH2CDATA_MIN || maxh2cdata % 4 != 0 {
            return Err(unsupported(
                resp_off::MAXH2CDATA,
                "ICResp MAXH2CDATA below 4096 or not a multiple of 4",
                h,
            ));
        }
        let d = h[resp_off::DGST];
        Ok(IcResp {
            pfv,
            cpda,
            hdgst: d & dgst::HDGST_ENABLE != 0,
            ddgst: d & dgst::DDGST_ENABLE != 0,
            maxh2cdata,
        })
    }

    pub(crate) fn encode_psh(&self, h: &mut [u8; IC_HLEN]) {
        put_u16(h, resp_off::PFV, self.pfv);
        h[resp_off::CPDA] = self.cpda;
        h[resp_off::DGST] = dgst_byte(self.hdgst, self.ddgst);
        put_u32(h, resp_off::MAXH2CDATA, self.maxh2cdata);
    }
}

fn dgst_byte(hdgst: bool, ddgst: bool) -> u8 {
    (if hdgst { dgst::HDGST_ENABLE } else { 0 }) | (if ddgst { dgst::DDGST_ENABLE } else { 0 })
}

fn unsupported(field: usize, what: &'static str, h: &[u8]) -> PduError {
    PduError::fatal(
        Fes::UNSUPPORTED_PARAMETER,
        u32::try_from(field).unwrap_or(0),
        what,
        h,
    )
}
