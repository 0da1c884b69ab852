//! Discovery log page (LID 70h; NVMe Base 2.0, section 5.16.1.23, Figures 261–262; NVMe over
//! Fabrics 1.1, section 5.3).
//!
//! A 1024-byte header (GENCTR, NUMREC, RECFMT) followed by NUMREC 1024-byte entries.

use super::{get_array, le_u16, le_u64, put};
use crate::nvme::fabrics::{NQN_FIELD_LEN, put_nqn};

/// Length of the header and of each entry.
pub const DISCOVERY_HEADER_LEN: usize = 1024;
pub const DISCOVERY_ENTRY_LEN: usize = 1024;

/// Header offsets (Figure 261).
pub mod disc_hdr_off {
    /// Generation Counter: changes whenever the log page changes.
    pub const GENCTR: usize = 0;
    /// Number of Records.
    pub const NUMREC: usize = 8;
    /// Record Format (0).
    pub const RECFMT: usize = 16;
}

/// Entry offsets (Figure 262).
pub mod disc_off {
    pub const TRTYPE: usize = 0;
    pub const ADRFAM: usize = 1;
    pub const SUBTYPE: usize = 2;
    pub const TREQ: usize = 3;
    pub const PORTID: usize = 4;
    pub const CNTLID: usize = 6;
    /// Admin Max SQ Size.
    pub const ASQSZ: usize = 8;
    /// Entry Flags.
    pub const EFLAGS: usize = 10;
    /// Transport Service Identifier (the TCP port, as ASCII), 32 bytes, space padded.
    pub const TRSVCID: usize = 32;
    pub const TRSVCID_LEN: usize = 32;
    /// Subsystem NQN, 256 bytes, NUL terminated.
    pub const SUBNQN: usize = 256;
    /// Transport Address (the IP address, as ASCII), 256 bytes, space padded.
    pub const TRADDR: usize = 512;
    pub const TRADDR_LEN: usize = 256;
    /// Transport Specific Address Subtype, 256 bytes; for TCP byte 0 is SECTYPE.
    pub const TSAS: usize = 768;
}

const _: () = {
    use disc_off::*;
    assert!(TRSVCID + TRSVCID_LEN == 64);
    assert!(SUBNQN + NQN_FIELD_LEN == TRADDR);
    assert!(TRADDR + TRADDR_LEN == TSAS);
    assert!(TSAS + 256 == DISCOVERY_ENTRY_LEN);
};

/// Transport Type (TRTYPE).
pub mod trtype {
    pub const RDMA: u8 = 1;
    pub const FC: u8 = 2;
    pub const TCP: u8 = 3;
}
/// Address Family (ADRFAM).
pub mod adrfam {
    pub const IPV4: u8 = 1;
    pub const IPV6: u8 = 2;
    pub const IB: u8 = 3;
    pub const FC: u8 = 4;
}
/// Subsystem Type (SUBTYPE).
pub mod subtype {
    /// Referral to another discovery service.
    pub const DISCOVERY_REFERRAL: u8 = 1;
    /// An NVM subsystem with I/O controllers.
    pub const NVME: u8 = 2;
    /// The discovery subsystem being queried (current discovery subsystem).
    pub const CURRENT_DISCOVERY: u8 = 3;
}
/// Transport Requirements (TREQ).
pub mod treq {
    /// Bits 1:0, secure channel.
    pub const SECURE_NOT_SPECIFIED: u8 = 0;
    pub const SECURE_REQUIRED: u8 = 1;
    pub const SECURE_NOT_REQUIRED: u8 = 2;
    /// Bit 2: SQ flow control may be disabled.
    pub const SQ_FLOW_CONTROL_DISABLE: u8 = 1 << 2;
}
/// TCP TSAS Security Type (SECTYPE).
pub mod sectype {
    pub const NONE: u8 = 0;
    pub const TLS12: u8 = 1;
    pub const TLS13: u8 = 2;
}
/// Entry Flags (EFLAGS).
pub mod eflags {
    /// Duplicate Returned Information.
    pub const DUPRETINFO: u16 = 1 << 0;
    /// Explicit Persistent Connection Support for Discovery.
    pub const EPCSD: u16 = 1 << 1;
}

/// One Discovery log page entry for an NVMe/TCP port.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiscoveryLogEntry {
    pub trtype: u8,
    pub adrfam: u8,
    pub subtype: u8,
    pub treq: u8,
    pub portid: u16,
    /// FFFFh: dynamic controller model.
    pub cntlid: u16,
    /// Admin max SQ size (entries).
    pub asqsz: u16,
    pub eflags: u16,
    /// E.g. "4420".
    pub trsvcid: String,
    pub subnqn: String,
    /// E.g. "10.0.2.2".
    pub traddr: String,
    /// TCP TSAS SECTYPE (byte 0 of TSAS); the other TSAS bytes are zero.
    pub sectype: u8,
}

fn put_padded(b: &mut [u8], off: usize, len: usize, s: &str) {
    let mut field = vec![b' '; len];
    let n = s.len().min(len);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
    put(b, off, &field);
}

fn get_padded(b: &[u8], off: usize, len: usize) -> String {
    let field = b.get(off..off + len).unwrap_or(&[]);
    // Accept both space padding (SPDK) and NUL padding (Linux nvmet).
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    let field = &field[..end];
    let end = field.iter().rposition(|&c| c != b' ').map_or(0, |p| p + 1);
    String::from_utf8_lossy(&field[..end]).into_owned()
}

impl DiscoveryLogEntry {
    pub fn to_bytes(&self) -> [u8; DISCOVERY_ENTRY_LEN] {
        use disc_off as o;
        let mut b = [0u8; DISCOVERY_ENTRY_LEN];
        b[o::TRTYPE] = self.trtype;
        b[o::ADRFAM] = self.adrfam;
        b[o::SUBTYPE] = self.subtype;
        b[o::TREQ] = self.treq;
        put(&mut b, o::PORTID, &self.portid.to_le_bytes());
        put(&mut b, o::CNTLID, &self.cntlid.to_le_bytes());
        put(&mut b, o::ASQSZ, &self.asqsz.to_le_bytes());
        put(&mut b, o::EFLAGS, &self.eflags.to_le_bytes());
        put_padded(&mut b, o::TRSVCID, o::TRSVCID_LEN, &self.trsvcid);
        put_nqn(&mut b, o::SUBNQN, &self.subnqn);
        put_padded(&mut b, o::TRADDR, o::TRADDR_LEN, &self.traddr);
        b[o::TSAS] = self.sectype;
        b
    }

    pub fn parse(b: &[u8]) -> Self {
        use disc_off as o;
        let byte = |off: usize| b.get(off).copied().unwrap_or(0);
        let nqn: [u8; NQN_FIELD_LEN] = get_array(b, o::SUBNQN);
        let end = nqn.iter().position(|&c| c == 0).unwrap_or(NQN_FIELD_LEN);
        Self {
            trtype: byte(o::TRTYPE),
            adrfam: byte(o::ADRFAM),
            subtype: byte(o::SUBTYPE),
            treq: byte(o::TREQ),
            portid: le_u16(b, o::PORTID),
            cntlid: le_u16(b, o::CNTLID),
            asqsz: le_u16(b, o::ASQSZ),
            eflags: le_u16(b, o::EFLAGS),
            trsvcid: get_padded(b, o::TRSVCID, o::TRSVCID_LEN),
            subnqn: String::from_utf8_lossy(&nqn[..end]).into_owned(),
            traddr: get_padded(b, o::TRADDR, o::TRADDR_LEN),
            sectype: byte(o::TSAS),
        }
    }
}

/// The Discovery log page.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiscoveryLog {
    pub genctr: u64,
    pub recfmt: u16,
    pub entries: Vec<DiscoveryLogEntry>,
}

impl DiscoveryLog {
    /// The full page: header with NUMREC = number of entries, then the entries.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; DISCOVERY_HEADER_LEN + DISCOVERY_ENTRY_LEN * self.entries.len()];
        put(&mut b, disc_hdr_off::GENCTR, &self.genctr.to_le_bytes());
        put(
            &mut b,
            disc_hdr_off::NUMREC,
            &(self.entries.len() as u64).to_le_bytes(),
        );
        put(&mut b, disc_hdr_off::RECFMT, &self.recfmt.to_le_bytes());
        for (i, e) in self.entries.iter().enumerate() {
            put(
                &mut b,
                DISCOVERY_HEADER_LEN + DISCOVERY_ENTRY_LEN * i,
                &e.to_bytes(),
            );
        }
        b
    }

    /// NUMREC from a (possibly partial) page, as hosts read the header first.
    pub fn numrec(b: &[u8]) -> u64 {
        le_u64(b, disc_hdr_off::NUMREC)
    }

    /// Decode the header and as many of NUMREC entries as `b` holds.
    pub fn parse(b: &[u8]) -> Self {
        let numrec = usize::try_from(Self::numrec(b)).unwrap_or(usize::MAX);
        let entries = b
            .get(DISCOVERY_HEADER_LEN..)
            .unwrap_or(&[])
            .chunks_exact(DISCOVERY_ENTRY_LEN)
            .take(numrec)
            .map(DiscoveryLogEntry::parse)
            .collect();
        Self {
            genctr: le_u64(b, disc_hdr_off::GENCTR),
            recfmt: le_u16(b, disc_hdr_off::RECFMT),
            entries,
        }
    }
}
