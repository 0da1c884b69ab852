//! SGL descriptors (NVMe Base 2.0, section 4.1.8, Figures 90–96; NVMe/TCP Transport 1.0,
//! section 3.3.2 for the descriptors an NVMe/TCP host sends).
//!
//! Every descriptor is 16 bytes; byte 15 is the SGL Identifier: Descriptor Type in bits 7:4,
//! Descriptor Sub Type in bits 3:0. On fabrics the command's DPTR (SQE bytes 24..40) holds one
//! descriptor, SGL1. An NVMe/TCP host uses exactly two kinds:
//!
//! * Data Block with the Offset subtype (`01h`): the data is in the command capsule, `offset`
//!   bytes after its start (ICDOFF, always 0 for us);
//! * Transport SGL Data Block, transport-specific subtype (`5Ah`): the data moves through
//!   R2T/H2CData (host to controller) or C2HData (controller to host) PDUs.
//!
//! A zero-length descriptor of either kind is how a host says "no data".

use crate::nvme::Status;
use crate::nvme::sqe::Sqe;
use crate::wire::{get_u32, get_u64, put_u32, put_u64};

/// Size of an SGL descriptor (NVMe Base 2.0, section 4.1.8).
pub const SGL_DESC_LEN: usize = 16;

/// Byte offsets inside a descriptor (NVMe Base 2.0, Figures 91–96).
pub mod off {
    /// Address (Data Block, Segment, Keyed Data Block); reserved in a Transport SGL Data Block.
    pub const ADDRESS: usize = 0;
    /// Length: 4 bytes for unkeyed descriptors, 3 bytes for a Keyed Data Block.
    pub const LENGTH: usize = 8;
    /// Key of a Keyed Data Block (bytes 14:11).
    pub const KEY: usize = 11;
    /// SGL Identifier: type (bits 7:4) and subtype (bits 3:0).
    pub const SGL_ID: usize = 15;
}

const _: () = assert!(off::SGL_ID + 1 == SGL_DESC_LEN);
const _: () = assert!(off::KEY + 4 == off::SGL_ID);

/// SGL Descriptor Type values, bits 7:4 of the SGL Identifier (NVMe Base 2.0, Figure 90).
pub mod desc_type {
    pub const DATA_BLOCK: u8 = 0x0;
    pub const BIT_BUCKET: u8 = 0x1;
    pub const SEGMENT: u8 = 0x2;
    pub const LAST_SEGMENT: u8 = 0x3;
    pub const KEYED_DATA_BLOCK: u8 = 0x4;
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5;
    pub const VENDOR: u8 = 0xf;
}

/// SGL Descriptor Sub Type values, bits 3:0 of the SGL Identifier (NVMe Base 2.0, Figure 90).
pub mod subtype {
    pub const ADDRESS: u8 = 0x0;
    pub const OFFSET: u8 = 0x1;
    /// Transport specific (used by NVMe/TCP with the Transport SGL Data Block).
    pub const TRANSPORT_A: u8 = 0xa;
    /// Keyed Data Block: invalidate the key after the transfer (RDMA).
    pub const INVALIDATE_KEY: u8 = 0xf;
}

/// SGL Identifier byte of an in-capsule Data Block (type 0h, subtype 1h).
pub const SGL_ID_DATA_BLOCK_OFFSET: u8 = 0x01;
/// SGL Identifier byte of a Transport SGL Data Block (type 5h, subtype Ah).
pub const SGL_ID_TRANSPORT_DATA_BLOCK: u8 = 0x5a;

/// Whether an address/length pair is an absolute address or an offset into the capsule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrKind {
    /// Subtype 0h: an address in the host's memory space.
    Address,
    /// Subtype 1h: an offset from the start of the capsule's data (in-capsule data).
    Offset,
}

/// A decoded SGL descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SglDescriptor {
    /// Data Block (type 0h), subtype Address (0h).
    DataBlock { addr: u64, len: u32 },
    /// Data Block (type 0h), subtype Offset (1h): in-capsule data `offset` bytes into the capsule.
    InCapsule { offset: u64, len: u32 },
    /// Bit Bucket (type 1h): `len` bytes of read data to discard.
    BitBucket { len: u32 },
    /// Segment (type 2h) or Last Segment (type 3h): points to a list of further descriptors.
    Segment {
        kind: AddrKind,
        addr: u64,
        len: u32,
        last: bool,
    },
    /// Keyed SGL Data Block (type 4h), used by RDMA: 24-bit length and a 32-bit key.
    Keyed {
        addr: u64,
        len: u32,
        key: u32,
        invalidate: bool,
    },
    /// Transport SGL Data Block (type 5h) with its transport-specific subtype (Ah for NVMe/TCP):
    /// the data moves in data PDUs, not in the capsule.
    Transport { subtype: u8, len: u32 },
    /// Vendor Specific (type Fh): the raw descriptor.
    Vendor([u8; SGL_DESC_LEN]),
}

/// A descriptor whose type or subtype is reserved or unsupported; kept for tracing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unsupported SGL descriptor identifier {sgl_id:#04x}")]
pub struct SglError {
    /// The SGL Identifier byte (byte 15) that was rejected.
    pub sgl_id: u8,
}

impl SglError {
    /// The status the target completes the command with: SGL Descriptor Type Invalid, DNR
    /// (NVMe Base 2.0, section 4.1.8: an unsupported type or subtype is reported this way).
    pub const fn status(self) -> Status {
        Status::SGL_INVALID_TYPE.with_dnr()
    }
}

impl From<SglError> for Status {
    fn from(e: SglError) -> Status {
        e.status()
    }
}

impl SglDescriptor {
    /// Decode a 16-byte descriptor. Reserved types and subtypes are an [`SglError`].
    pub fn parse(d: &[u8; SGL_DESC_LEN]) -> Result<Self, SglError> {
        let sgl_id = d[off::SGL_ID];
        let err = SglError { sgl_id };
        let addr = get_u64(d, off::ADDRESS);
        let len = get_u32(d, off::LENGTH);
        let kind = match sgl_id & 0x0f {
            subtype::ADDRESS => Some(AddrKind::Address),
            subtype::OFFSET => Some(AddrKind::Offset),
            _ => None,
        };
        match sgl_id >> 4 {
            desc_type::DATA_BLOCK => match kind.ok_or(err)? {
                AddrKind::Address => Ok(Self::DataBlock { addr, len }),
                AddrKind::Offset => Ok(Self::InCapsule { offset: addr, len }),
            },
            desc_type::BIT_BUCKET if sgl_id & 0x0f == 0 => Ok(Self::BitBucket { len }),
            t @ (desc_type::SEGMENT | desc_type::LAST_SEGMENT) => Ok(Self::Segment {
                kind: kind.ok_or(err)?,
                addr,
                len,
                last: t == desc_type::LAST_SEGMENT,
            }),
            desc_type::KEYED_DATA_BLOCK => {
                let invalidate = match sgl_id & 0x0f {
                    subtype::ADDRESS => false,
                    subtype::INVALIDATE_KEY => true,
                    _ => return Err(err),
                };
                let len = u32::from_le_bytes([d[8], d[9], d[10], 0]);
                let key = get_u32(d, off::KEY);
                Ok(Self::Keyed {
                    addr,
                    len,
                    key,
                    invalidate,
                })
            }
            // The Base spec leaves the subtype's meaning to the transport; NVMe/TCP defines
            // only Ah (NVMe/TCP 1.0, section 3.3.2), so only Ah is accepted.
            desc_type::TRANSPORT_DATA_BLOCK if sgl_id & 0x0f == subtype::TRANSPORT_A => {
                Ok(Self::Transport {
                    subtype: subtype::TRANSPORT_A,
                    len,
                })
            }
            desc_type::VENDOR => Ok(Self::Vendor(*d)),
            _ => Err(err),
        }
    }

    /// Decode SGL1 from a command's DPTR.
    pub fn from_sqe(sqe: &Sqe) -> Result<Self, SglError> {
        Self::parse(&sqe.dptr())
    }

    /// Encode back to 16 bytes (reserved bytes zero).
    pub fn to_bytes(&self) -> [u8; SGL_DESC_LEN] {
        let mut d = [0u8; SGL_DESC_LEN];
        let sub = |k: &AddrKind| match k {
            AddrKind::Address => subtype::ADDRESS,
            AddrKind::Offset => subtype::OFFSET,
        };
        match *self {
            Self::DataBlock { addr, len } => {
                put_u64(&mut d, off::ADDRESS, addr);
                put_u32(&mut d, off::LENGTH, len);
                d[off::SGL_ID] = desc_type::DATA_BLOCK << 4;
            }
            Self::InCapsule { offset, len } => {
                put_u64(&mut d, off::ADDRESS, offset);
                put_u32(&mut d, off::LENGTH, len);
                d[off::SGL_ID] = SGL_ID_DATA_BLOCK_OFFSET;
            }
            Self::BitBucket { len } => {
                put_u32(&mut d, off::LENGTH, len);
                d[off::SGL_ID] = desc_type::BIT_BUCKET << 4;
            }
            Self::Segment {
                kind,
                addr,
                len,
                last,
            } => {
                put_u64(&mut d, off::ADDRESS, addr);
                put_u32(&mut d, off::LENGTH, len);
                let t = if last {
                    desc_type::LAST_SEGMENT
                } else {
                    desc_type::SEGMENT
                };
                d[off::SGL_ID] = (t << 4) | sub(&kind);
            }
            Self::Keyed {
                addr,
                len,
                key,
                invalidate,
            } => {
                put_u64(&mut d, off::ADDRESS, addr);
                let l = len.to_le_bytes();
                d[8..11].copy_from_slice(&l[..3]);
                put_u32(&mut d, off::KEY, key);
                let s = if invalidate {
                    subtype::INVALIDATE_KEY
                } else {
                    subtype::ADDRESS
                };
                d[off::SGL_ID] = (desc_type::KEYED_DATA_BLOCK << 4) | s;
            }
            Self::Transport { subtype, len } => {
                put_u32(&mut d, off::LENGTH, len);
                d[off::SGL_ID] = (desc_type::TRANSPORT_DATA_BLOCK << 4) | (subtype & 0x0f);
            }
            Self::Vendor(raw) => d = raw,
        }
        d
    }

    /// The in-capsule data descriptor an NVMe/TCP host sends for `len` bytes at ICDOFF 0.
    pub const fn in_capsule(len: u32) -> Self {
        Self::InCapsule { offset: 0, len }
    }

    /// The Transport SGL Data Block an NVMe/TCP host sends for `len` bytes moved by data PDUs.
    pub const fn transport(len: u32) -> Self {
        Self::Transport {
            subtype: subtype::TRANSPORT_A,
            len,
        }
    }

    /// Length in bytes of the data this descriptor describes (for Segment, of the segment).
    pub fn len(&self) -> u64 {
        match *self {
            Self::DataBlock { len, .. }
            | Self::InCapsule { len, .. }
            | Self::BitBucket { len }
            | Self::Segment { len, .. }
            | Self::Keyed { len, .. }
            | Self::Transport { len, .. } => u64::from(len),
            Self::Vendor(_) => 0,
        }
    }

    /// Whether the descriptor describes no data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_capsule_vector() {
        // Linux nvme-tcp in-capsule write of 4 KiB: address = ICDOFF (0), length 4096, id 01h.
        let mut raw = [0u8; 16];
        raw[8..12].copy_from_slice(&4096u32.to_le_bytes());
        raw[15] = 0x01;
        let d = SglDescriptor::parse(&raw).expect("valid");
        assert_eq!(d, SglDescriptor::in_capsule(4096));
        assert_eq!(d.to_bytes(), raw);
    }

    #[test]
    fn transport_vector() {
        let mut raw = [0u8; 16];
        raw[8..12].copy_from_slice(&0x20000u32.to_le_bytes());
        raw[15] = 0x5a;
        assert_eq!(
            SglDescriptor::parse(&raw),
            Ok(SglDescriptor::transport(0x20000))
        );
        assert_eq!(SglDescriptor::transport(0x20000).to_bytes(), raw);
    }

    #[test]
    fn keyed_vector() {
        let raw = [
            1, 2, 3, 4, 5, 6, 7, 8, 0x00, 0x10, 0x00, 0xef, 0xbe, 0xad, 0xde, 0x4f,
        ];
        let d = SglDescriptor::parse(&raw).expect("valid");
        assert_eq!(
            d,
            SglDescriptor::Keyed {
                addr: 0x0807_0605_0403_0201,
                len: 0x1000,
                key: 0xdead_beef,
                invalidate: true
            }
        );
        assert_eq!(d.to_bytes(), raw);
    }

    #[test]
    fn reserved_types_are_errors_with_the_right_status() {
        for id in [0x02u8, 0x0a, 0x11, 0x52, 0x60, 0x7a, 0xe0, 0x4a] {
            let mut raw = [0u8; 16];
            raw[15] = id;
            let e = SglDescriptor::parse(&raw).expect_err("reserved");
            assert_eq!(e.sgl_id, id);
            assert_eq!(e.status(), Status::SGL_INVALID_TYPE.with_dnr());
        }
    }
}
