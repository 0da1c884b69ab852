//! The common header (CH) every PDU starts with, its flags, and the checks that need nothing but
//! those 8 bytes (NVMe/TCP 1.0, section 3.6.1, Figures 8 and 9).

use super::PduType;

/// Length of the common header.
pub const CH_LEN: usize = 8;

/// Byte offsets of the common header fields (section 3.6.1, Figure 8). These are also the FEI
/// values reported for an invalid field.
pub mod off {
    /// PDU-Type.
    pub const TYPE: usize = 0;
    /// FLAGS: type-specific flags, see [`super::flags`].
    pub const FLAGS: usize = 1;
    /// HLEN: length of CH + PSH in bytes (digest and padding excluded).
    pub const HLEN: usize = 2;
    /// PDO: offset of the PDU data from the start of the PDU, 0 when there is none.
    pub const PDO: usize = 3;
    /// PLEN: total length of the PDU on the wire, digests and padding included.
    pub const PLEN: usize = 4;
}

const _: () = assert!(off::PLEN + 4 == CH_LEN);

/// FLAGS bits (section 3.6.1, Figure 9 and the per-type figures; Linux `enum nvme_tcp_pdu_flags`).
pub mod flags {
    /// HDGSTF: a header digest follows the header. Valid in CapsuleCmd, CapsuleResp, H2CData,
    /// C2HData and R2T.
    pub const HDGSTF: u8 = 1 << 0;
    /// DDGSTF: a data digest follows the data. Valid in CapsuleCmd, H2CData and C2HData.
    pub const DDGSTF: u8 = 1 << 1;
    /// LAST_PDU: the last data PDU of the command's transfer (H2CData: of the R2T). H2CData and
    /// C2HData only.
    pub const LAST_PDU: u8 = 1 << 2;
    /// SUCCESS: the command completed successfully, no CapsuleResp follows; requires LAST_PDU.
    /// C2HData only.
    pub const SUCCESS: u8 = 1 << 3;
}

/// The FLAGS bits a PDU type may carry (section 3.6.2, per-type figures). IC and TermReq PDUs
/// have all flags reserved: they never carry digests.
pub fn valid_flags(ty: PduType) -> u8 {
    use flags::*;
    match ty {
        PduType::CAPSULE_CMD => HDGSTF | DDGSTF,
        PduType::CAPSULE_RESP | PduType::R2T => HDGSTF,
        PduType::H2C_DATA => HDGSTF | DDGSTF | LAST_PDU,
        PduType::C2H_DATA => HDGSTF | DDGSTF | LAST_PDU | SUCCESS,
        _ => 0,
    }
}

/// Whether the type carries PDU data (and so a PDO and possibly a data digest).
pub fn carries_data(ty: PduType) -> bool {
    matches!(
        ty,
        PduType::CAPSULE_CMD | PduType::H2C_DATA | PduType::C2H_DATA
    )
}

/// The common header, as read from the wire (values unchecked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommonHeader {
    pub pdu_type: PduType,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: u32,
}

impl CommonHeader {
    /// Read the 8 common-header bytes; `None` if fewer are available.
    pub fn read(buf: &[u8]) -> Option<Self> {
        let mut r = crate::wire::Reader::new(buf);
        Some(CommonHeader {
            pdu_type: PduType(r.u8("PDU-Type").ok()?),
            flags: r.u8("FLAGS").ok()?,
            hlen: r.u8("HLEN").ok()?,
            pdo: r.u8("PDO").ok()?,
            plen: r.u32("PLEN").ok()?,
        })
    }

    /// Write the common header into the first 8 bytes of a PDU header.
    pub fn write<const N: usize>(&self, h: &mut [u8; N]) {
        const { assert!(N >= CH_LEN) };
        h[off::TYPE] = self.pdu_type.0;
        h[off::FLAGS] = self.flags;
        h[off::HLEN] = self.hlen;
        h[off::PDO] = self.pdo;
        crate::wire::put_u32(h, off::PLEN, self.plen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values_match_the_spec_and_linux() {
        // Linux include/linux/nvme-tcp.h: NVME_TCP_F_HDGST (1<<0), _DDGST (1<<1),
        // _DATA_LAST (1<<2), _DATA_SUCCESS (1<<3).
        assert_eq!(flags::HDGSTF, 0x01);
        assert_eq!(flags::DDGSTF, 0x02);
        assert_eq!(flags::LAST_PDU, 0x04);
        assert_eq!(flags::SUCCESS, 0x08);
    }

    #[test]
    fn common_header_round_trip() {
        let ch = CommonHeader {
            pdu_type: PduType::C2H_DATA,
            flags: 0x0d,
            hlen: 24,
            pdo: 28,
            plen: 0x0102_0304,
        };
        let mut h = [0u8; CH_LEN];
        ch.write(&mut h);
        assert_eq!(h, [0x07, 0x0d, 24, 28, 0x04, 0x03, 0x02, 0x01]);
        assert_eq!(CommonHeader::read(&h), Some(ch));
        assert_eq!(CommonHeader::read(&h[..7]), None);
    }
}
