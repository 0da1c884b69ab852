//! Changed Namespace List (04h), Commands Supported and Effects (05h) and Asymmetric Namespace
//! Access (0Ch) log pages (NVMe Base 2.0, sections 5.16.1.5, 5.16.1.6 and 5.16.1.13).

use super::{le_u16, le_u32, le_u64, put};

/// Size of the Changed Namespace List log page (NVMe Base 2.0, Figure 209).
pub const CHANGED_NS_LOG_LEN: usize = 4096;
/// Most NSIDs the list holds.
pub const CHANGED_NS_MAX: usize = CHANGED_NS_LOG_LEN / 4;
/// First entry when more than [`CHANGED_NS_MAX`] namespaces changed.
pub const CHANGED_NS_OVERFLOW: u32 = 0xffff_ffff;

/// Build the Changed Namespace List: the NSIDs in order, zero-terminated; more than 1024 is
/// reported as a single FFFFFFFFh entry.
pub fn changed_ns_list(nsids: &[u32]) -> [u8; CHANGED_NS_LOG_LEN] {
    let mut b = [0u8; CHANGED_NS_LOG_LEN];
    if nsids.len() > CHANGED_NS_MAX {
        put(&mut b, 0, &CHANGED_NS_OVERFLOW.to_le_bytes());
        return b;
    }
    for (i, n) in nsids.iter().enumerate() {
        put(&mut b, 4 * i, &n.to_le_bytes());
    }
    b
}

/// Read a Changed Namespace List up to its first zero entry.
pub fn parse_changed_ns_list(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .take(CHANGED_NS_MAX)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take_while(|&n| n != 0)
        .collect()
}

/// Size of the Commands Supported and Effects log page (NVMe Base 2.0, Figure 210).
pub const EFFECTS_LOG_LEN: usize = 4096;
/// Offset of the I/O Command Supported entries (256 Admin entries of 4 bytes precede them).
pub const EFFECTS_IOCS: usize = 1024;

/// Bits of a Commands Supported and Effects entry (NVMe Base 2.0, Figure 211).
pub mod effects {
    /// Command Supported.
    pub const CSUPP: u32 = 1 << 0;
    /// Logical Block Content Change.
    pub const LBCC: u32 = 1 << 1;
    /// Namespace Capability Change.
    pub const NCC: u32 = 1 << 2;
    /// Namespace Inventory Change.
    pub const NIC: u32 = 1 << 3;
    /// Controller Capability Change.
    pub const CCC: u32 = 1 << 4;
    /// Command Submission and Execution (bits 18:16): 001b = no other command for the same
    /// namespace at the same time, 010b = no other command at all.
    pub const CSE_SHIFT: u32 = 16;
}

/// Commands Supported and Effects: one entry per opcode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandsEffectsLog {
    pub acs: [u32; 256],
    pub iocs: [u32; 256],
}

impl Default for CommandsEffectsLog {
    fn default() -> Self {
        Self {
            acs: [0; 256],
            iocs: [0; 256],
        }
    }
}

impl CommandsEffectsLog {
    pub fn to_bytes(&self) -> [u8; EFFECTS_LOG_LEN] {
        let mut b = [0u8; EFFECTS_LOG_LEN];
        for (i, v) in self.acs.iter().enumerate() {
            put(&mut b, 4 * i, &v.to_le_bytes());
        }
        for (i, v) in self.iocs.iter().enumerate() {
            put(&mut b, EFFECTS_IOCS + 4 * i, &v.to_le_bytes());
        }
        b
    }

    pub fn parse(b: &[u8]) -> Self {
        Self {
            acs: std::array::from_fn(|i| le_u32(b, 4 * i)),
            iocs: std::array::from_fn(|i| le_u32(b, EFFECTS_IOCS + 4 * i)),
        }
    }
}

/// ANA log page header length (NVMe Base 2.0, Figure 227).
pub const ANA_HEADER_LEN: usize = 16;
/// ANA Group Descriptor length without its NSID list (NVMe Base 2.0, Figure 228).
pub const ANA_GROUP_DESC_LEN: usize = 32;
/// LSP bit 0 of Get Log Page for the ANA log: Return Groups Only (no NSID lists).
pub const ANA_LSP_RGO: u8 = 1 << 0;

/// Byte offsets in the ANA header and in a group descriptor.
pub mod ana_off {
    pub const CHGCNT: usize = 0;
    pub const NGRPS: usize = 8;
    pub const GRP_ANAGRPID: usize = 0;
    pub const GRP_NNSIDS: usize = 4;
    pub const GRP_CHGCNT: usize = 8;
    /// ANA State (bits 3:0).
    pub const GRP_STATE: usize = 16;
    pub const GRP_NSIDS: usize = 32;
}

const _: () = assert!(ana_off::GRP_NSIDS == ANA_GROUP_DESC_LEN);

/// Asymmetric Namespace Access states (NVMe Base 2.0, Figure 228).
pub mod ana_state {
    pub const OPTIMIZED: u8 = 0x1;
    pub const NON_OPTIMIZED: u8 = 0x2;
    pub const INACCESSIBLE: u8 = 0x3;
    pub const PERSISTENT_LOSS: u8 = 0x4;
    pub const CHANGE: u8 = 0xf;
}

/// One ANA group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnaGroup {
    pub anagrpid: u32,
    pub chgcnt: u64,
    /// See [`ana_state`].
    pub state: u8,
    /// Namespaces in the group, ascending.
    pub nsids: Vec<u32>,
}

/// The ANA log page.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnaLog {
    pub chgcnt: u64,
    pub groups: Vec<AnaGroup>,
}

impl AnaLog {
    /// Encode; with `rgo` (LSP bit 0) the groups carry no NSID lists and NNSIDS is 0.
    pub fn to_bytes(&self, rgo: bool) -> Vec<u8> {
        let nsid_bytes: usize = if rgo {
            0
        } else {
            self.groups.iter().map(|g| 4 * g.nsids.len()).sum()
        };
        let mut b = vec![0u8; ANA_HEADER_LEN + ANA_GROUP_DESC_LEN * self.groups.len() + nsid_bytes];
        put(&mut b, ana_off::CHGCNT, &self.chgcnt.to_le_bytes());
        let ngrps = u16::try_from(self.groups.len()).unwrap_or(u16::MAX);
        put(&mut b, ana_off::NGRPS, &ngrps.to_le_bytes());
        let mut at = ANA_HEADER_LEN;
        for g in self.groups.iter().take(usize::from(ngrps)) {
            let nnsids = if rgo {
                0
            } else {
                u32::try_from(g.nsids.len()).unwrap_or(0)
            };
            put(
                &mut b,
                at + ana_off::GRP_ANAGRPID,
                &g.anagrpid.to_le_bytes(),
            );
            put(&mut b, at + ana_off::GRP_NNSIDS, &nnsids.to_le_bytes());
            put(&mut b, at + ana_off::GRP_CHGCNT, &g.chgcnt.to_le_bytes());
            b[at + ana_off::GRP_STATE] = g.state & 0xf;
            at += ANA_GROUP_DESC_LEN;
            if !rgo {
                for n in &g.nsids {
                    put(&mut b, at, &n.to_le_bytes());
                    at += 4;
                }
            }
        }
        b
    }

    /// Decode; `None` if a group descriptor or NSID list runs past the end of `b`.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < ANA_HEADER_LEN {
            return None;
        }
        let ngrps = le_u16(b, ana_off::NGRPS);
        let mut at = ANA_HEADER_LEN;
        let mut groups = Vec::new();
        for _ in 0..ngrps {
            let desc = b.get(at..at.checked_add(ANA_GROUP_DESC_LEN)?)?;
            let nnsids = usize::try_from(le_u32(desc, ana_off::GRP_NNSIDS)).ok()?;
            at += ANA_GROUP_DESC_LEN;
            let list = b.get(at..at.checked_add(nnsids.checked_mul(4)?)?)?;
            groups.push(AnaGroup {
                anagrpid: le_u32(desc, ana_off::GRP_ANAGRPID),
                chgcnt: le_u64(desc, ana_off::GRP_CHGCNT),
                state: desc[ana_off::GRP_STATE] & 0xf,
                nsids: list
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            });
            at += list.len();
        }
        Some(Self {
            chgcnt: le_u64(b, ana_off::CHGCNT),
            groups,
        })
    }
}
