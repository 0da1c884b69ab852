//! Fatal Error Status and the codec's error type (NVMe/TCP 1.0, section 3.6.2.3, Figure 14).

use bytes::Bytes;

use super::{PduType, TermReq};

/// Fatal Error Status (FES) of a TermReq (NVMe/TCP 1.0, section 3.6.2.3, Figure 14).
///
/// Lossless: a value the spec reserves survives as itself (a peer's TermReq may carry one).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Fes(pub u16);

impl Fes {
    /// A PDU header field is invalid. FEI: byte offset of the field from the start of the PDU.
    pub const INVALID_PDU_HEADER_FIELD: Self = Self(0x01);
    /// A PDU arrived that is not allowed at this point (e.g. anything before ICReq). FEI reserved.
    pub const PDU_SEQUENCE_ERROR: Self = Self(0x02);
    /// The header digest does not match. FEI: the header digest value that was received.
    pub const HDR_DIGEST_ERROR: Self = Self(0x03);
    /// H2CData/C2HData outside the range of the command's data. FEI reserved.
    pub const DATA_OUT_OF_RANGE: Self = Self(0x04);
    /// More data than allowed (MAXH2CDATA, in-capsule size); also "R2T Limit Exceeded" in
    /// NVMe/TCP 1.0 and Linux' `NVME_TCP_FES_R2T_LIMIT_EXCEEDED`, same value. FEI reserved.
    pub const DATA_LIMIT_EXCEEDED: Self = Self(0x05);
    /// An ICReq/ICResp parameter is not supported. FEI: byte offset of the parameter.
    pub const UNSUPPORTED_PARAMETER: Self = Self(0x06);

    /// Every value defined by the spec.
    pub const ALL: [Self; 6] = [
        Self::INVALID_PDU_HEADER_FIELD,
        Self::PDU_SEQUENCE_ERROR,
        Self::HDR_DIGEST_ERROR,
        Self::DATA_OUT_OF_RANGE,
        Self::DATA_LIMIT_EXCEEDED,
        Self::UNSUPPORTED_PARAMETER,
    ];

    /// Spec name, `None` for a reserved value.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::INVALID_PDU_HEADER_FIELD => "Invalid PDU Header Field",
            Self::PDU_SEQUENCE_ERROR => "PDU Sequence Error",
            Self::HDR_DIGEST_ERROR => "Header Digest Error",
            Self::DATA_OUT_OF_RANGE => "Data Transfer Out of Range",
            Self::DATA_LIMIT_EXCEEDED => "Data Transfer Limit Exceeded",
            Self::UNSUPPORTED_PARAMETER => "Unsupported Parameter",
            _ => return None,
        })
    }
}

impl std::fmt::Debug for Fes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({:#04x})", self.0),
            None => write!(f, "Fes({:#06x})", self.0),
        }
    }
}

impl std::fmt::Display for Fes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Everything that can go wrong decoding or encoding a PDU.
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    /// The peer broke the protocol; the connection is over. The target sends a C2HTermReq (the
    /// host an H2CTermReq) with exactly these FES, FEI and data ([`PduError::term_req`]), then
    /// closes. FEI follows Figure 14: the byte offset of the offending field for
    /// `INVALID_PDU_HEADER_FIELD` and `UNSUPPORTED_PARAMETER`, the received header digest for
    /// `HDR_DIGEST_ERROR`, 0 (reserved) otherwise; `what` names the check that failed.
    #[error("NVMe/TCP fatal error {fes}, FEI {fei:#x}: {what}")]
    Fatal {
        fes: Fes,
        fei: u32,
        what: &'static str,
        /// The offending PDU's header bytes (at most [`super::term::TERM_DATA_MAX`]), the data
        /// of the TermReq.
        header: Bytes,
    },
    /// Close the connection without sending a TermReq: a malformed TermReq was received
    /// (NVMe/TCP 1.0, section 3.6.2.3: a TermReq is never answered with a TermReq), or the
    /// decoder is being used again after a fatal error.
    #[error("NVMe/TCP connection must be closed without a TermReq: {what}")]
    Abort { what: &'static str },
    /// The data digest of a data-carrying PDU did not match. The PDU was consumed and the stream
    /// is still in sync: the spec (section 3.6.2.1, "Data Digest") has the command completed
    /// with status Transient Transport Error (22h) rather than the connection torn down.
    /// (`tokio_util::codec::FramedRead` ends the stream after any error; drive
    /// [`tokio_util::codec::Decoder::decode`] directly to keep the connection.)
    #[error(
        "NVMe/TCP data digest error on {pdu_type} for command {cccid:#06x}: received {received:#010x}, computed {computed:#010x}"
    )]
    DataDigest {
        pdu_type: PduType,
        cccid: u16,
        received: u32,
        computed: u32,
        /// For H2CData/C2HData: where the failed data belongs, so the receiver can account for
        /// it (the transfer goes on; only the command fails). Zero for a CapsuleCmd.
        ttag: u16,
        datao: u32,
        datal: u32,
        last: bool,
    },
    /// The underlying transport failed, or the caller asked to encode something this side may
    /// not send (`ErrorKind::InvalidInput`).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl PduError {
    pub(crate) fn fatal(fes: Fes, fei: u32, what: &'static str, header: &[u8]) -> Self {
        let n = header.len().min(super::term::TERM_DATA_MAX);
        PduError::Fatal {
            fes,
            fei,
            what,
            header: Bytes::copy_from_slice(&header[..n]),
        }
    }

    /// An encode request this side may not make (our bug, not the peer's).
    pub(crate) fn invalid_input(what: &'static str) -> Self {
        PduError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, what))
    }

    /// The TermReq to send for a [`PduError::Fatal`], `None` for every other variant.
    pub fn term_req(&self) -> Option<TermReq> {
        match self {
            PduError::Fatal {
                fes, fei, header, ..
            } => Some(TermReq {
                fes: *fes,
                fei: *fei,
                data: header.clone(),
            }),
            _ => None,
        }
    }

    /// The FES, for a fatal error.
    pub fn fes(&self) -> Option<Fes> {
        match self {
            PduError::Fatal { fes, .. } => Some(*fes),
            _ => None,
        }
    }
}
