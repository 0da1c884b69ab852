//! Completion Queue Entry (NVMe Base 2.0, section 4.6, Figure 97 "Common Completion Queue Entry").

use crate::wire::{get_u16, get_u32, put_u16, put_u32};

/// Size of a completion queue entry in bytes (NVMe Base 2.0, section 4.6).
pub const CQE_LEN: usize = 16;

/// Byte offsets (NVMe Base 2.0, Figure 97).
pub mod off {
    /// Dword 0: command specific.
    pub const DW0: usize = 0;
    /// Dword 1: command specific.
    pub const DW1: usize = 4;
    pub const SQHD: usize = 8;
    pub const SQID: usize = 10;
    pub const CID: usize = 12;
    /// Phase tag (bit 0) and Status Field (bits 15:1).
    pub const STATUS: usize = 14;
}

const _: () = assert!(off::STATUS + 2 == CQE_LEN);

/// A 16-byte completion queue entry.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Cqe(pub [u8; CQE_LEN]);

impl std::fmt::Debug for Cqe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cqe")
            .field("cid", &self.cid())
            .field("status", &format_args!("{:#06x}", self.status_field()))
            .field("dw0", &format_args!("{:#x}", self.dw0()))
            .field("dw1", &format_args!("{:#x}", self.dw1()))
            .field("sqhd", &self.sqhd())
            .finish()
    }
}

impl Cqe {
    pub fn from_bytes(b: [u8; CQE_LEN]) -> Self {
        Self(b)
    }
    pub fn as_bytes(&self) -> &[u8; CQE_LEN] {
        &self.0
    }
    #[inline]
    pub fn dw0(&self) -> u32 {
        get_u32(&self.0, off::DW0)
    }
    #[inline]
    pub fn set_dw0(&mut self, v: u32) {
        put_u32(&mut self.0, off::DW0, v)
    }
    #[inline]
    pub fn dw1(&self) -> u32 {
        get_u32(&self.0, off::DW1)
    }
    #[inline]
    pub fn set_dw1(&mut self, v: u32) {
        put_u32(&mut self.0, off::DW1, v)
    }
    #[inline]
    pub fn sqhd(&self) -> u16 {
        get_u16(&self.0, off::SQHD)
    }
    #[inline]
    pub fn set_sqhd(&mut self, v: u16) {
        put_u16(&mut self.0, off::SQHD, v)
    }
    #[inline]
    pub fn sqid(&self) -> u16 {
        get_u16(&self.0, off::SQID)
    }
    #[inline]
    pub fn set_sqid(&mut self, v: u16) {
        put_u16(&mut self.0, off::SQID, v)
    }
    #[inline]
    pub fn cid(&self) -> u16 {
        get_u16(&self.0, off::CID)
    }
    #[inline]
    pub fn set_cid(&mut self, v: u16) {
        put_u16(&mut self.0, off::CID, v)
    }
    /// The 15-bit Status Field (bits 15:1 of the last word), without the phase tag.
    #[inline]
    pub fn status_field(&self) -> u16 {
        get_u16(&self.0, off::STATUS) >> 1
    }
    /// Set the 15-bit Status Field; the phase tag is left as it was (fabrics ignore it).
    #[inline]
    pub fn set_status_field(&mut self, v: u16) {
        let p = get_u16(&self.0, off::STATUS) & 1;
        put_u16(&mut self.0, off::STATUS, (v << 1) | p)
    }
}

impl Cqe {
    /// A completion for `cid` with `status` (phase tag 0: fabrics do not use it).
    pub fn new(cid: u16, status: crate::nvme::Status) -> Self {
        let mut c = Self::default();
        c.set_cid(cid);
        c.set_status(status);
        c
    }
    /// The Status Field as a typed [`Status`](crate::nvme::Status).
    #[inline]
    pub fn status(&self) -> crate::nvme::Status {
        crate::nvme::Status::from_field(self.status_field())
    }
    /// Set the Status Field (phase tag unchanged).
    #[inline]
    pub fn set_status(&mut self, s: crate::nvme::Status) {
        self.set_status_field(s.field())
    }
    /// DW0 and DW1 as one little-endian u64 (e.g. a Property Get value, or the server's
    /// generation on a stale-map completion).
    #[inline]
    pub fn dw0_1(&self) -> u64 {
        crate::wire::get_u64(&self.0, off::DW0)
    }
    #[inline]
    pub fn set_dw0_1(&mut self, v: u64) {
        crate::wire::put_u64(&mut self.0, off::DW0, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::Status;

    #[test]
    fn status_sits_above_the_phase_tag() {
        let mut c = Cqe::new(0x1234, Status::INVALID_FIELD.with_dnr());
        // Status 0x4002 shifted left by one: 0x8004, little-endian at bytes 14..16.
        assert_eq!(&c.0[12..16], &[0x34, 0x12, 0x04, 0x80]);
        c.0[14] |= 1; // phase tag set by someone else survives
        c.set_status(Status::SUCCESS);
        assert_eq!(&c.0[14..16], &[0x01, 0x00]);
        assert_eq!(c.status(), Status::SUCCESS);
        c.set_dw0_1(0x1122_3344_5566_7788);
        assert_eq!((c.dw0(), c.dw1()), (0x5566_7788, 0x1122_3344));
    }
}
