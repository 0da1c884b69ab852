//! Submission Queue Entry (NVMe Base 2.0, section 4.2, Figure 88 "Common Command Format").

use crate::wire::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};

/// Size of a submission queue entry in bytes (NVMe Base 2.0, section 4.2).
pub const SQE_LEN: usize = 64;

/// Byte offsets of the common command fields (NVMe Base 2.0, Figure 88).
pub mod off {
    pub const OPC: usize = 0;
    /// FUSE (bits 1:0) and PSDT (bits 7:6).
    pub const FLAGS: usize = 1;
    pub const CID: usize = 2;
    pub const NSID: usize = 4;
    pub const CDW2: usize = 8;
    pub const CDW3: usize = 12;
    pub const MPTR: usize = 16;
    /// Data Pointer: on fabrics an SGL descriptor (NVMe Base 2.0, section 4.1.8).
    pub const DPTR: usize = 24;
    pub const CDW10: usize = 40;
    pub const CDW11: usize = 44;
    pub const CDW12: usize = 48;
    pub const CDW13: usize = 52;
    pub const CDW14: usize = 56;
    pub const CDW15: usize = 60;
}

const _: () = assert!(off::CDW15 + 4 == SQE_LEN);

/// PSDT (byte 1 bits 7:6) = 01b: SGLs for data, MPTR a contiguous buffer. What NVMe/TCP hosts
/// (Linux `NVME_CMD_SGL_METABUF`, SPDK) send in byte 1; fabrics require SGLs (NVMe Base 2.0,
/// section 4.1.8; NVMe over Fabrics 1.1, section 2.2).
pub const PSDT_SGL: u8 = 0b01 << 6;
/// PSDT = 10b: SGLs for data, MPTR points to an SGL segment.
pub const PSDT_SGL_MPTR_SEGMENT: u8 = 0b10 << 6;
const _: () = assert!(off::DPTR + 16 == off::CDW10);

/// A 64-byte submission queue entry, kept as bytes with typed accessors so that every field the
/// wire carries (including ones we do not interpret) survives a round trip.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sqe(pub [u8; SQE_LEN]);

impl Default for Sqe {
    fn default() -> Self {
        Self([0; SQE_LEN])
    }
}

impl std::fmt::Debug for Sqe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqe")
            .field("opc", &format_args!("{:#04x}", self.opcode()))
            .field("cid", &self.cid())
            .field("nsid", &self.nsid())
            .field("cdw10", &format_args!("{:#x}", self.cdw10()))
            .field("cdw11", &format_args!("{:#x}", self.cdw11()))
            .field("cdw12", &format_args!("{:#x}", self.cdw12()))
            .finish_non_exhaustive()
    }
}

macro_rules! dword {
    ($get:ident, $set:ident, $off:expr) => {
        #[inline]
        pub fn $get(&self) -> u32 {
            get_u32(&self.0, $off)
        }
        #[inline]
        pub fn $set(&mut self, v: u32) {
            put_u32(&mut self.0, $off, v)
        }
    };
}

impl Sqe {
    pub fn from_bytes(b: [u8; SQE_LEN]) -> Self {
        Self(b)
    }

    pub fn as_bytes(&self) -> &[u8; SQE_LEN] {
        &self.0
    }

    #[inline]
    pub fn opcode(&self) -> u8 {
        self.0[off::OPC]
    }
    #[inline]
    pub fn set_opcode(&mut self, v: u8) {
        self.0[off::OPC] = v;
    }
    /// Fused operation (bits 1:0 of byte 1).
    #[inline]
    pub fn fuse(&self) -> u8 {
        self.0[off::FLAGS] & 0x3
    }
    /// PRP or SGL for Data Transfer (bits 7:6 of byte 1): fabrics requires 01b or 10b (SGL).
    #[inline]
    pub fn psdt(&self) -> u8 {
        self.0[off::FLAGS] >> 6
    }
    #[inline]
    pub fn flags(&self) -> u8 {
        self.0[off::FLAGS]
    }
    #[inline]
    pub fn set_flags(&mut self, v: u8) {
        self.0[off::FLAGS] = v;
    }
    #[inline]
    pub fn cid(&self) -> u16 {
        get_u16(&self.0, off::CID)
    }
    #[inline]
    pub fn set_cid(&mut self, v: u16) {
        put_u16(&mut self.0, off::CID, v)
    }
    dword!(nsid, set_nsid, off::NSID);
    dword!(cdw2, set_cdw2, off::CDW2);
    dword!(cdw3, set_cdw3, off::CDW3);
    dword!(cdw10, set_cdw10, off::CDW10);
    dword!(cdw11, set_cdw11, off::CDW11);
    dword!(cdw12, set_cdw12, off::CDW12);
    dword!(cdw13, set_cdw13, off::CDW13);
    dword!(cdw14, set_cdw14, off::CDW14);
    dword!(cdw15, set_cdw15, off::CDW15);

    #[inline]
    pub fn mptr(&self) -> u64 {
        get_u64(&self.0, off::MPTR)
    }
    #[inline]
    pub fn set_mptr(&mut self, v: u64) {
        put_u64(&mut self.0, off::MPTR, v)
    }

    /// The 16-byte data pointer (an SGL descriptor on fabrics).
    #[inline]
    pub fn dptr(&self) -> [u8; 16] {
        let mut d = [0u8; 16];
        d.copy_from_slice(&self.0[off::DPTR..off::DPTR + 16]);
        d
    }
    #[inline]
    pub fn set_dptr(&mut self, d: [u8; 16]) {
        self.0[off::DPTR..off::DPTR + 16].copy_from_slice(&d);
    }

    /// CDW10 and CDW11 as one little-endian u64 (e.g. SLBA of NVM I/O commands).
    #[inline]
    pub fn cdw10_11(&self) -> u64 {
        get_u64(&self.0, off::CDW10)
    }
    #[inline]
    pub fn set_cdw10_11(&mut self, v: u64) {
        put_u64(&mut self.0, off::CDW10, v)
    }
}
