//! Tessera's map-generation check on the wire (docs/cluster-protocol.md, "The generation on the wire").
//!
//! * The stamp: a 64-bit generation in CDW2 (low 32 bits) and CDW3 (high 32 bits) of NVM I/O
//!   submission entries. In the NVM Command Set those dwords carry storage/reference tags only
//!   for namespaces formatted with extended protection information; ours never are, so this is
//!   the project's vendor-specific use of them. A standard host sends 0 there: "unstamped".
//! * The expiry: a forwarded command may carry the time after which its receiver must not start
//!   it, in MPTR (bytes 16..24: CLOCK_REALTIME milliseconds; 0: none). NVMe/TCP carries no
//!   separate metadata buffer, so MPTR is unused there (NVMe over Fabrics 1.1, section 2.2:
//!   metadata is interleaved with the data); only internal connections look at it.
//! * The answer: on SCT 7h / SC 80h (stale map) the server's generation rides in CQE DW0 (low)
//!   and DW1 (high).
//! * The advertisement: a magic string and a version in the vendor-specific area of Identify
//!   Controller (bytes 3072..4095, NVMe Base 2.0 Figure 275 "Vendor Specific").
//! * The counters: vendor log page C0h ([`GenerationLog`], 512 bytes).

use std::num::NonZeroU64;

use crate::nvme::cqe::Cqe;
use crate::nvme::sqe::Sqe;
use crate::nvme::status::Status;
use crate::wire::{get_u32, get_u64, put_u32, put_u64};

/// The generation a command was stamped with, or `None` for 0 ("unstamped").
pub fn get_generation(sqe: &Sqe) -> Option<NonZeroU64> {
    NonZeroU64::new(u64::from(sqe.cdw2()) | (u64::from(sqe.cdw3()) << 32))
}

/// Stamp `generation` into CDW2 (low) / CDW3 (high); 0 clears the stamp.
pub fn set_generation(sqe: &mut Sqe, generation: u64) {
    // Low and high halves: the truncation is the point.
    sqe.set_cdw2((generation & 0xffff_ffff) as u32);
    sqe.set_cdw3((generation >> 32) as u32);
}

/// The expiry a command carries in MPTR (CLOCK_REALTIME milliseconds), 0 for none.
pub fn get_expiry(sqe: &Sqe) -> u64 {
    sqe.mptr()
}

/// Put the expiry `ms` (CLOCK_REALTIME milliseconds; 0: none) in MPTR.
pub fn set_expiry(sqe: &mut Sqe, ms: u64) {
    sqe.set_mptr(ms);
}

/// A stale-map completion: SCT 7h / SC 80h, DNR clear (the client refreshes and retries), and the
/// server's generation in DW0/DW1.
pub fn stale_map_cqe(cid: u16, server_generation: u64) -> Cqe {
    let mut c = Cqe::new(cid, Status::STALE_MAP);
    set_cqe_generation(&mut c, server_generation);
    c
}

/// Put `generation` in CQE DW0 (low) / DW1 (high).
pub fn set_cqe_generation(cqe: &mut Cqe, generation: u64) {
    cqe.set_dw0_1(generation);
}

/// The generation a server reported in a completion's DW0/DW1 (meaningful on SC 80h/81h).
pub fn cqe_generation(cqe: &Cqe) -> u64 {
    cqe.dw0_1()
}

// ---------------------------------------------------------------------------------------------
// Identify Controller vendor-specific area
// ---------------------------------------------------------------------------------------------

/// Offset of the vendor-specific area in Identify Controller (NVMe Base 2.0, Figure 275).
pub const VENDOR_AREA_OFFSET: usize = 3072;
/// Length of that area.
pub const VENDOR_AREA_LEN: usize = 1024;
/// The magic string at the start of the area, NUL padded to [`vendor_off::MAGIC_LEN`] bytes.
pub const GENCHK_MAGIC: &[u8] = b"TESSERA-GENCHK";
/// Version of the generation-check protocol this code speaks.
pub const GENCHK_VERSION: u32 = 1;

/// Layout of the vendor area, offsets from the start of Identify Controller.
pub mod vendor_off {
    use super::VENDOR_AREA_OFFSET;
    /// Magic string, 16 bytes, NUL padded.
    pub const MAGIC: usize = VENDOR_AREA_OFFSET;
    pub const MAGIC_LEN: usize = 16;
    /// Protocol version, u32.
    pub const VERSION: usize = VENDOR_AREA_OFFSET + 16;
    /// Flags, u32: bit 0 = unstamped commands are rejected on this connection's controller.
    pub const FLAGS: usize = VENDOR_AREA_OFFSET + 20;
    /// The server's generation when the Identify data was built (informational), u64.
    pub const GENERATION: usize = VENDOR_AREA_OFFSET + 24;
    /// First byte after the fields defined here (the rest of the area is zero).
    pub const END: usize = VENDOR_AREA_OFFSET + 32;
}

const _: () = assert!(GENCHK_MAGIC.len() <= vendor_off::MAGIC_LEN);
const _: () = assert!(vendor_off::MAGIC + vendor_off::MAGIC_LEN == vendor_off::VERSION);
const _: () = assert!(vendor_off::END <= VENDOR_AREA_OFFSET + VENDOR_AREA_LEN);
const _: () = assert!(VENDOR_AREA_OFFSET + VENDOR_AREA_LEN == crate::nvme::IDENTIFY_DATA_LEN);

/// [`GenCheckInfo::flags`] bit 0: this controller rejects unstamped I/O.
pub const GENCHK_FLAG_REQUIRE_STAMP: u32 = 1 << 0;

/// What a storage server advertises in the Identify Controller vendor area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenCheckInfo {
    pub version: u32,
    pub flags: u32,
    pub generation: u64,
}

impl GenCheckInfo {
    /// Write the advertisement into Identify Controller data.
    pub fn write(&self, id: &mut [u8; crate::nvme::IDENTIFY_DATA_LEN]) {
        let magic = &mut id[vendor_off::MAGIC..vendor_off::MAGIC + vendor_off::MAGIC_LEN];
        magic.fill(0);
        magic[..GENCHK_MAGIC.len()].copy_from_slice(GENCHK_MAGIC);
        put_u32(id, vendor_off::VERSION, self.version);
        put_u32(id, vendor_off::FLAGS, self.flags);
        put_u64(id, vendor_off::GENERATION, self.generation);
    }

    /// Read the advertisement, or `None` when the magic string is absent (a peer that does not
    /// check generations: a layout-aware client refuses it).
    pub fn parse(id: &[u8; crate::nvme::IDENTIFY_DATA_LEN]) -> Option<Self> {
        let magic = &id[vendor_off::MAGIC..vendor_off::MAGIC + vendor_off::MAGIC_LEN];
        let (text, pad) = magic.split_at(GENCHK_MAGIC.len());
        if text != GENCHK_MAGIC || pad.iter().any(|&b| b != 0) {
            return None;
        }
        Some(Self {
            version: get_u32(id, vendor_off::VERSION),
            flags: get_u32(id, vendor_off::FLAGS),
            generation: get_u64(id, vendor_off::GENERATION),
        })
    }
}

/// Whether Identify Controller data advertises the generation check at a version we speak.
pub fn advertises_generation_check(id: &[u8; crate::nvme::IDENTIFY_DATA_LEN]) -> bool {
    GenCheckInfo::parse(id).is_some_and(|i| i.version >= GENCHK_VERSION)
}

// ---------------------------------------------------------------------------------------------
// Vendor log page C0h
// ---------------------------------------------------------------------------------------------

/// Log Identifier of the generation log (C0h..FFh are vendor specific, NVMe Base 2.0 Fig. 202).
pub const GENERATION_LOG_LID: u8 = 0xc0;
/// Size of the generation log page.
pub const GENERATION_LOG_LEN: usize = 512;

/// Byte offsets in the generation log page. All counters are u64, little-endian, monotonic
/// since the server started, never reset by reading.
pub mod genlog_off {
    /// Layout version (u32), = [`super::GENCHK_VERSION`].
    pub const VERSION: usize = 0;
    /// Bytes 4..8 reserved.
    /// The server's current generation.
    pub const CURRENT_GENERATION: usize = 8;
    /// Stamped commands older than the server's map (answered SC 80h).
    pub const STALE_MAP_SEEN: usize = 16;
    /// Stamped commands newer than the server's map (the server fetched the map, then executed
    /// or answered SC 81h).
    pub const SERVER_BEHIND_SEEN: usize = 24;
    /// Mismatch reports delivered to the management service.
    pub const REPORTS_SENT: usize = 32;
    /// Mismatch reports dropped by the report rate limit.
    pub const REPORTS_DROPPED: usize = 40;
    /// Unstamped commands rejected on internal connections.
    pub const UNSTAMPED_REJECTED: usize = 48;
    /// First byte after the defined fields; the rest is reserved (zero).
    pub const END: usize = 56;
}

const _: () = assert!(genlog_off::END <= GENERATION_LOG_LEN);

/// The vendor log page C0h.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GenerationLog {
    pub version: u32,
    pub current_generation: u64,
    pub stale_map_seen: u64,
    pub server_behind_seen: u64,
    pub reports_sent: u64,
    pub reports_dropped: u64,
    pub unstamped_rejected: u64,
}

impl GenerationLog {
    pub fn to_bytes(&self) -> [u8; GENERATION_LOG_LEN] {
        let mut b = [0u8; GENERATION_LOG_LEN];
        put_u32(&mut b, genlog_off::VERSION, self.version);
        put_u64(
            &mut b,
            genlog_off::CURRENT_GENERATION,
            self.current_generation,
        );
        put_u64(&mut b, genlog_off::STALE_MAP_SEEN, self.stale_map_seen);
        put_u64(
            &mut b,
            genlog_off::SERVER_BEHIND_SEEN,
            self.server_behind_seen,
        );
        put_u64(&mut b, genlog_off::REPORTS_SENT, self.reports_sent);
        put_u64(&mut b, genlog_off::REPORTS_DROPPED, self.reports_dropped);
        put_u64(
            &mut b,
            genlog_off::UNSTAMPED_REJECTED,
            self.unstamped_rejected,
        );
        b
    }

    /// Decode; `None` if `b` is shorter than the defined fields.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b: &[u8; genlog_off::END] = b.get(..genlog_off::END)?.try_into().ok()?;
        Some(Self {
            version: get_u32(b, genlog_off::VERSION),
            current_generation: get_u64(b, genlog_off::CURRENT_GENERATION),
            stale_map_seen: get_u64(b, genlog_off::STALE_MAP_SEEN),
            server_behind_seen: get_u64(b, genlog_off::SERVER_BEHIND_SEEN),
            reports_sent: get_u64(b, genlog_off::REPORTS_SENT),
            reports_dropped: get_u64(b, genlog_off::REPORTS_DROPPED),
            unstamped_rejected: get_u64(b, genlog_off::UNSTAMPED_REJECTED),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_lives_in_cdw2_cdw3() {
        let mut s = Sqe::default();
        assert_eq!(get_generation(&s), None);
        set_generation(&mut s, 0x0102_0304_0506_0708);
        assert_eq!(&s.0[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(
            get_generation(&s).map(NonZeroU64::get),
            Some(0x0102_0304_0506_0708)
        );
        set_generation(&mut s, 0);
        assert_eq!(get_generation(&s), None);
    }

    #[test]
    fn expiry_lives_in_mptr_and_survives_a_round_trip() {
        use crate::nvme::cmd::{IoCommand, Rw, parse_io};
        use crate::nvme::sgl::SglDescriptor;
        let mut s = Sqe::default();
        assert_eq!(get_expiry(&s), 0);
        set_expiry(&mut s, 0x0102_0304_0506_0708);
        assert_eq!(&s.0[16..24], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(get_expiry(&s), 0x0102_0304_0506_0708);
        let w = IoCommand::Write(Rw {
            expires: 1_700_000_000_123,
            ..Rw::new(1, 8, 8, 5)
        });
        let sqe = w.to_sqe(3, SglDescriptor::transport(4096));
        let back = parse_io(&sqe).expect("a valid write");
        assert_eq!(back.expires(), 1_700_000_000_123);
        assert_eq!(back, w);
    }

    #[test]
    fn stale_map_completion() {
        let c = stale_map_cqe(9, 0x1_0000_0002);
        assert_eq!(&c.0[0..8], &[2, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(c.status(), Status::STALE_MAP);
        assert!(!c.status().dnr());
        assert_eq!(cqe_generation(&c), 0x1_0000_0002);
    }
}
