//! Header and data digests (NVMe/TCP 1.0, section 3.6.2.1 "PDU Header and Data Digests").
//!
//! Both digests are CRC32C (the Castagnoli polynomial 1EDC6F41h, as in iSCSI, RFC 3720 appendix
//! B.4): initial value FFFFFFFFh, reflected, final XOR FFFFFFFFh, stored little-endian. The check
//! value of "123456789" is E3069283h. The header digest covers the `hlen` header bytes; the data
//! digest covers the PDU data only, never the PDO padding.

/// Size of either digest on the wire.
pub const DIGEST_LEN: usize = 4;

/// CRC32C of `bytes`: what goes on the wire, little-endian, as HDGST or DDGST.
#[inline]
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(bytes)
}

/// Read a digest field (little-endian) from exactly four bytes.
#[inline]
pub(crate) fn read_digest(b: &[u8]) -> Option<u32> {
    let a: [u8; DIGEST_LEN] = b.get(..DIGEST_LEN)?.try_into().ok()?;
    Some(u32::from_le_bytes(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        // CRC-32C check value (RFC 3720 B.4; the "check" of CRC-32/ISCSI in the CRC catalogue).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn rfc3720_vectors() {
        // RFC 3720, appendix B.4: 32 bytes of zeros, of ones, incrementing, decrementing.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46DD_794E);
        let dec: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(crc32c(&dec), 0x113F_DB5C);
    }
}
