//! Which side the codec sits on, and the per-connection parameters negotiated by ICReq/ICResp.

use super::PduType;
use super::digest::DIGEST_LEN;
use super::error::PduError;
use super::ic::IC_HLEN;

/// Which side of the connection this codec sits on. It decides which PDU types may be received
/// (a target receives the even, host-to-controller types: ICReq, H2CTermReq, CapsuleCmd,
/// H2CData; a host the odd ones) and which may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The NVMe controller side (this project's daemon).
    Target,
    /// The host side (our initiator: forwarding, `tessera bench`, tests).
    Host,
}

impl Role {
    /// The other side.
    pub fn peer(self) -> Role {
        match self {
            Role::Target => Role::Host,
            Role::Host => Role::Target,
        }
    }

    /// Whether this side may receive `ty` (section 3.6.1: the direction is bit 0 of PDU-Type).
    pub fn may_receive(self, ty: PduType) -> bool {
        ty.is_known() && ty.sender() == self.peer()
    }

    /// Whether this side may send `ty`.
    pub fn may_send(self, ty: PduType) -> bool {
        ty.is_known() && ty.sender() == self
    }
}

/// Largest value of CPDA/HPDA: 0's based dwords, so alignment up to 128 bytes (section 3.6.2.2,
/// ICReq HPDA / ICResp CPDA: "valid values are 0 to 31").
pub const PDA_MAX: u8 = 31;

/// MAXH2CDATA may not be below 4 KiB and must be a multiple of 4 (section 3.6.2.3, ICResp;
/// Linux `NVME_TCP_MIN_MAXH2CDATA`, and the host refuses anything else).
pub const MAXH2CDATA_MIN: u32 = 4096;

/// The admin queue and Fabrics commands may carry 8 KiB in-capsule whatever IOCCSZ says (Linux
/// `NVME_TCP_ADMIN_CCSZ`; a Connect command carries 1 KiB of data in-capsule).
pub const ADMIN_INCAPSULE_DATA: u32 = 8192;

/// Default MAXH2CDATA we advertise: 128 KiB. One H2CData PDU is buffered whole before it is
/// handed on, so this bounds per-connection receive memory; it is also a common MDTS-sized
/// transfer, so a typical write takes one R2T.
pub const DEFAULT_MAX_H2C_DATA: u32 = 128 * 1024;

/// Hard cap on `max_pdu_len`, whatever the configuration: 16 MiB. A PDU is held in memory in
/// one piece, so no peer gets to make us reserve more than this.
pub const MAX_PDU_LEN_CAP: u32 = 16 * 1024 * 1024;

/// Largest header area of a data PDU: the 72-byte CapsuleCmd header, its digest, and padding to
/// the coarsest alignment (128 bytes); PDO is a byte, so never more than 255 anyway.
pub const MAX_HEADER_AREA: u32 = 255;

/// Per-connection parameters: digests and alignments from ICReq/ICResp, and our limits.
///
/// Before the IC exchange completes the codec ignores digests (IC PDUs never carry them);
/// call [`super::PduCodec::set_params`] with the negotiated values right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnParams {
    /// Header digests enabled (HDGST_ENABLE in both ICReq and ICResp).
    pub hdgst: bool,
    /// Data digests enabled (DDGST_ENABLE in both ICReq and ICResp).
    pub ddgst: bool,
    /// Controller PDU data alignment, 0's based dwords: the host pads the data of the PDUs it
    /// sends (CapsuleCmd, H2CData) to `(cpda + 1) * 4` bytes. The Linux host only accepts 0.
    pub cpda: u8,
    /// Host PDU data alignment, 0's based dwords: the target pads the data of C2HData to
    /// `(hpda + 1) * 4` bytes. The Linux host asks for 0.
    pub hpda: u8,
    /// Largest PDU (PLEN) we accept; anything longer is refused before any buffer is reserved.
    pub max_pdu_len: u32,
    /// MAXH2CDATA: the most data one H2CData PDU may carry (advertised by the target in ICResp).
    pub max_h2c_data: u32,
    /// Most in-capsule data one CapsuleCmd may carry (8 KiB on admin queues, IOCCSZ*16-64 on
    /// I/O queues).
    pub max_incapsule_data: u32,
}

impl ConnParams {
    /// The `max_pdu_len` that admits every PDU the other two limits allow (and nothing longer):
    /// the largest header area plus the largest data plus a data digest.
    pub fn derived_max_pdu_len(max_h2c_data: u32, max_incapsule_data: u32) -> u32 {
        let data = max_h2c_data.max(max_incapsule_data);
        let digest = u32::try_from(DIGEST_LEN).unwrap_or(4);
        MAX_HEADER_AREA
            .saturating_add(data)
            .saturating_add(digest)
            .min(MAX_PDU_LEN_CAP)
    }

    /// Data alignment in bytes for PDUs that `role` sends with these parameters.
    pub fn tx_alignment(&self, role: Role) -> usize {
        pda_bytes(match role {
            Role::Target => self.hpda,
            Role::Host => self.cpda,
        })
    }

    /// Data alignment in bytes for PDUs that `role` receives with these parameters.
    pub fn rx_alignment(&self, role: Role) -> usize {
        self.tx_alignment(role.peer())
    }

    /// Check our own configuration (not peer input): alignments in range, `max_pdu_len` under
    /// the cap and large enough for the fixed-size PDUs.
    pub fn validate(&self) -> Result<(), PduError> {
        if self.cpda > PDA_MAX || self.hpda > PDA_MAX {
            return Err(PduError::invalid_input("CPDA/HPDA above 31"));
        }
        if self.max_pdu_len > MAX_PDU_LEN_CAP {
            return Err(PduError::invalid_input("max_pdu_len above MAX_PDU_LEN_CAP"));
        }
        // Smallest sensible limit: the 128-byte ICReq/ICResp, the longest fixed-size PDU.
        let min = u32::try_from(IC_HLEN).unwrap_or(u32::MAX);
        if self.max_pdu_len < min {
            return Err(PduError::invalid_input(
                "max_pdu_len below the 128-byte IC PDUs",
            ));
        }
        Ok(())
    }
}

impl Default for ConnParams {
    /// No digests, no alignment (what the Linux host asks for unless `-g`/`-G`), MAXH2CDATA
    /// 128 KiB, 8 KiB in-capsule (the admin-queue size), `max_pdu_len` derived from both.
    fn default() -> Self {
        ConnParams {
            hdgst: false,
            ddgst: false,
            cpda: 0,
            hpda: 0,
            max_pdu_len: Self::derived_max_pdu_len(DEFAULT_MAX_H2C_DATA, ADMIN_INCAPSULE_DATA),
            max_h2c_data: DEFAULT_MAX_H2C_DATA,
            max_incapsule_data: ADMIN_INCAPSULE_DATA,
        }
    }
}

/// Alignment in bytes for a 0's based dword count (section 3.6.2.2): `(pda + 1) * 4`.
pub fn pda_bytes(pda: u8) -> usize {
    (usize::from(pda) + 1) * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions() {
        for ty in PduType::ALL {
            assert_ne!(
                Role::Target.may_receive(ty),
                Role::Host.may_receive(ty),
                "{ty}"
            );
            assert_eq!(
                Role::Target.may_receive(ty),
                Role::Host.may_send(ty),
                "{ty}"
            );
        }
        assert!(Role::Target.may_receive(PduType::ICREQ));
        assert!(Role::Target.may_receive(PduType::H2C_DATA));
        assert!(Role::Host.may_receive(PduType::R2T));
        assert!(!Role::Host.may_receive(PduType(0x08)));
        assert!(!Role::Target.may_receive(PduType(0x0a)));
    }

    #[test]
    fn default_is_valid_and_admits_its_own_limits() {
        let p = ConnParams::default();
        p.validate().expect("default ConnParams must be valid");
        assert!(p.max_pdu_len >= p.max_h2c_data + 24 + 8);
        assert_eq!(pda_bytes(0), 4);
        assert_eq!(pda_bytes(PDA_MAX), 128);
    }
}
