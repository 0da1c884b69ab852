//! NVMe/TCP PDUs (NVMe/TCP Transport Specification 1.0, section 3.6).
//!
//! Section and figure numbers in this module refer to NVMe/TCP Transport Specification 1.0.
//! Field offsets, flag bits, type codes and FES values are also cross-checked against the Linux
//! host (`include/linux/nvme-tcp.h`, `drivers/nvme/host/tcp.c`), whose behaviour the vectors in
//! `codec/tests/pdu_vectors.rs` reproduce.
//!
//! One file per PDU type, each with the same pair: `load` (header bytes, already bounds-checked
//! and digest-verified, plus the data as [`Bytes`]) and `encode_psh` (fill the PDU-specific
//! header). The framing that is common to every type (common header, header digest, PDO padding,
//! data digest, limits, which side may send what, and in which order) lives in [`header`] and
//! [`stream`].
//!
//! # Wire layout of every PDU (section 3.6.1)
//! ```text
//! +----+-----+------+-----+------+---------------+------+-----+-------------+------+
//! |type|flags| hlen | pdo | plen | PDU-specific  | HDGST| PAD |    DATA     | DDGST|
//! | 1  |  1  |  1   |  1  |  4   | header (PSH)  |  0/4 |     |  (optional) |  0/4 |
//! +----+-----+------+-----+------+---------------+------+-----+-------------+------+
//! |<------------- hlen bytes (CH + PSH) -------->|      |     |<- at pdo -->|
//! |<----------------------------------- plen bytes ------------------------------->|
//! ```
//! The header digest covers the `hlen` header bytes; the data digest covers the data only (not
//! the padding). Both are CRC32C ([`digest`]).
//!
//! # Using the codec
//! Target side (a Linux host connects to us):
//! ```
//! use bytes::BytesMut;
//! use codec::pdu::{ConnParams, IcResp, Pdu, PduCodec, Role};
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! # use codec::pdu::IcReq;
//! # let mut rx = BytesMut::new();
//! # let host_ic = IcReq { pfv: 0, hpda: 0, hdgst: true, ddgst: false, maxr2t: 0 };
//! # PduCodec::new(Role::Host, ConnParams::default()).encode(Pdu::IcReq(host_ic), &mut rx)?;
//! let mut codec = PduCodec::new(Role::Target, ConnParams::default());
//! // `rx` holds what the socket delivered: the host's ICReq.
//! let Some(Pdu::IcReq(icreq)) = codec.decode(&mut rx)? else { panic!("expected an ICReq") };
//! // Negotiate: digests as the host asked, no alignment requirement from us (Linux needs CPDA 0).
//! let params = ConnParams { hdgst: icreq.hdgst, ddgst: icreq.ddgst, hpda: icreq.hpda,
//!                           ..ConnParams::default() };
//! let mut tx = BytesMut::new();
//! codec.encode(Pdu::IcResp(IcResp { pfv: 0, cpda: 0, hdgst: icreq.hdgst, ddgst: icreq.ddgst,
//!                                   maxh2cdata: params.max_h2c_data }), &mut tx)?;
//! // IC PDUs never carry digests; everything after them does, as negotiated.
//! codec.set_params(params);
//! # Ok::<(), codec::pdu::PduError>(())
//! ```
//! Wrap the codec in `tokio_util::codec::Framed` for a stream of [`Pdu`], or call
//! [`PduCodec::encode_head`] for the zero-copy data path (header into a buffer, data `Bytes` and
//! the digest trailer handed to `writev` as they are).
//!
//! A peer's protocol error surfaces as [`PduError::Fatal`]: send the C2HTermReq it describes
//! ([`PduError::term_req`]) and close the connection.

pub mod capsule;
pub mod data;
pub mod digest;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod header;
pub mod ic;
pub mod params;
pub mod r2t;
pub mod stream;
pub mod term;

use bytes::Bytes;

pub use capsule::{CapsuleCmd, CapsuleResp};
pub use data::{C2HData, H2CData};
pub use digest::{DIGEST_LEN, crc32c};
pub use error::{Fes, PduError};
pub use header::{CH_LEN, flags};
pub use ic::{IcReq, IcResp};
pub use params::{ConnParams, Role};
pub use r2t::R2T;
pub use stream::{DataTail, PduCodec, decode_one};
pub use term::TermReq;

/// PDU-Type field of the common header (NVMe/TCP 1.0, section 3.6.1, Figure 8).
///
/// Kept lossless: an unknown value survives as itself so that it can be reported (FEI 0,
/// the PDU-Type field) and logged.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PduType(pub u8);

impl PduType {
    /// Initialize Connection Request (host to controller).
    pub const ICREQ: Self = Self(0x00);
    /// Initialize Connection Response (controller to host).
    pub const ICRESP: Self = Self(0x01);
    /// Host to Controller Terminate Connection Request.
    pub const H2C_TERM_REQ: Self = Self(0x02);
    /// Controller to Host Terminate Connection Request.
    pub const C2H_TERM_REQ: Self = Self(0x03);
    /// Command Capsule (host to controller).
    pub const CAPSULE_CMD: Self = Self(0x04);
    /// Response Capsule (controller to host).
    pub const CAPSULE_RESP: Self = Self(0x05);
    /// Host to Controller Data.
    pub const H2C_DATA: Self = Self(0x06);
    /// Controller to Host Data.
    pub const C2H_DATA: Self = Self(0x07);
    /// Ready to Transfer (controller to host). 08h is reserved.
    pub const R2T: Self = Self(0x09);

    /// Every type defined by NVMe/TCP 1.0.
    pub const ALL: [Self; 9] = [
        Self::ICREQ,
        Self::ICRESP,
        Self::H2C_TERM_REQ,
        Self::C2H_TERM_REQ,
        Self::CAPSULE_CMD,
        Self::CAPSULE_RESP,
        Self::H2C_DATA,
        Self::C2H_DATA,
        Self::R2T,
    ];

    /// Spec name of the type, `None` for a reserved value.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::ICREQ => "ICReq",
            Self::ICRESP => "ICResp",
            Self::H2C_TERM_REQ => "H2CTermReq",
            Self::C2H_TERM_REQ => "C2HTermReq",
            Self::CAPSULE_CMD => "CapsuleCmd",
            Self::CAPSULE_RESP => "CapsuleResp",
            Self::H2C_DATA => "H2CData",
            Self::C2H_DATA => "C2HData",
            Self::R2T => "R2T",
            _ => return None,
        })
    }

    /// Whether the type is defined by the spec.
    pub fn is_known(self) -> bool {
        self.name().is_some()
    }

    /// The side that sends this type: every host-to-controller type is even (section 3.6.1:
    /// "bit 0 of PDU-Type is the PDU direction").
    pub fn sender(self) -> Role {
        if self.0 & 1 == 0 {
            Role::Host
        } else {
            Role::Target
        }
    }

    /// The required HLEN for the type (section 3.6.2, one figure per PDU type).
    pub fn hlen(self) -> Option<usize> {
        Some(match self {
            Self::ICREQ => ic::IC_HLEN,
            Self::ICRESP => ic::IC_HLEN,
            Self::H2C_TERM_REQ | Self::C2H_TERM_REQ => term::TERM_HLEN,
            Self::CAPSULE_CMD => capsule::CMD_HLEN,
            Self::CAPSULE_RESP => capsule::RESP_HLEN,
            Self::H2C_DATA | Self::C2H_DATA => data::DATA_HLEN,
            Self::R2T => r2t::R2T_HLEN,
            _ => return None,
        })
    }
}

impl std::fmt::Debug for PduType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "PduType({:#04x})", self.0),
        }
    }
}

impl std::fmt::Display for PduType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// One NVMe/TCP PDU, decoded. Data-carrying PDUs hold their data as [`Bytes`] sliced from the
/// receive buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    IcReq(IcReq),
    IcResp(IcResp),
    H2CTermReq(TermReq),
    C2HTermReq(TermReq),
    CapsuleCmd(CapsuleCmd),
    CapsuleResp(CapsuleResp),
    H2CData(H2CData),
    C2HData(C2HData),
    R2T(R2T),
}

impl Pdu {
    /// The PDU-Type this PDU is sent with.
    pub fn pdu_type(&self) -> PduType {
        match self {
            Pdu::IcReq(_) => PduType::ICREQ,
            Pdu::IcResp(_) => PduType::ICRESP,
            Pdu::H2CTermReq(_) => PduType::H2C_TERM_REQ,
            Pdu::C2HTermReq(_) => PduType::C2H_TERM_REQ,
            Pdu::CapsuleCmd(_) => PduType::CAPSULE_CMD,
            Pdu::CapsuleResp(_) => PduType::CAPSULE_RESP,
            Pdu::H2CData(_) => PduType::H2C_DATA,
            Pdu::C2HData(_) => PduType::C2H_DATA,
            Pdu::R2T(_) => PduType::R2T,
        }
    }

    /// The PDU data that digests and PDO apply to: in-capsule data, H2C/C2H data. TermReq data
    /// (the offending header) is part of the PDU but not "PDU data" in the digest sense
    /// (section 3.6.2.4), so it is not returned here.
    pub fn data(&self) -> Option<&Bytes> {
        match self {
            Pdu::CapsuleCmd(c) => Some(&c.data),
            Pdu::H2CData(d) => Some(&d.data),
            Pdu::C2HData(d) => Some(&d.data),
            _ => None,
        }
    }
}
