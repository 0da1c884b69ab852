//! Tessera's generation protocol on the wire (docs/cluster-protocol.md): the stamp in CDW2/CDW3, the server's
//! generation in CQE DW0/DW1, the Identify Controller vendor area and vendor log page C0h.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::num::NonZeroU64;

use codec::nvme::cmd::{IoCommand, Rw};
use codec::nvme::generation::{
    GENCHK_FLAG_REQUIRE_STAMP, GENCHK_VERSION, GENERATION_LOG_LEN, GENERATION_LOG_LID,
    GenCheckInfo, GenerationLog, advertises_generation_check, cqe_generation, get_generation,
    set_generation, stale_map_cqe,
};
use codec::nvme::{IDENTIFY_DATA_LEN, SglDescriptor, Sqe, Status, parse_io};
use proptest::prelude::*;

#[test]
fn stamp_vector() {
    let mut s = IoCommand::Read(Rw::new(1, 0, 1, 0)).to_sqe(1, SglDescriptor::transport(512));
    assert_eq!(&s.0[8..16], &[0; 8], "unstamped");
    assert_eq!(get_generation(&s), None);
    set_generation(&mut s, 0xdead_beef_0000_0007);
    assert_eq!(&s.0[8..12], &[0x07, 0, 0, 0], "low 32 bits in CDW2");
    assert_eq!(
        &s.0[12..16],
        &[0xef, 0xbe, 0xad, 0xde],
        "high 32 bits in CDW3"
    );
    assert_eq!(
        parse_io(&s).unwrap().generation(),
        NonZeroU64::new(0xdead_beef_0000_0007)
    );
}

#[test]
fn stale_map_response() {
    let c = stale_map_cqe(0x42, 0x0000_0003_0000_0009);
    assert_eq!(c.status(), Status::STALE_MAP);
    assert_eq!(
        (c.status().sct(), c.status().sc(), c.status().dnr()),
        (7, 0x80, false)
    );
    assert_eq!(c.dw0(), 9);
    assert_eq!(c.dw1(), 3);
    assert_eq!(cqe_generation(&c), 0x0000_0003_0000_0009);
}

#[test]
fn vendor_area_vector() {
    let mut id = [0u8; IDENTIFY_DATA_LEN];
    assert!(!advertises_generation_check(&id));
    let info = GenCheckInfo {
        version: GENCHK_VERSION,
        flags: GENCHK_FLAG_REQUIRE_STAMP,
        generation: 77,
    };
    info.write(&mut id);
    assert_eq!(&id[3072..3086], b"TESSERA-GENCHK");
    assert_eq!(&id[3086..3088], &[0, 0], "magic NUL padded to 16 bytes");
    assert_eq!(&id[3088..3092], &1u32.to_le_bytes(), "version at 3088");
    assert_eq!(&id[3092..3096], &1u32.to_le_bytes(), "flags at 3092");
    assert_eq!(&id[3096..3104], &77u64.to_le_bytes(), "generation at 3096");
    assert!(
        id[..3072].iter().all(|&b| b == 0),
        "nothing outside the vendor area"
    );
    assert_eq!(GenCheckInfo::parse(&id), Some(info));
    assert!(advertises_generation_check(&id));
    // A different magic, or version 0, does not advertise (fail closed).
    let mut bad = id;
    bad[3072] = b'X';
    assert!(!advertises_generation_check(&bad));
    let mut v0 = id;
    v0[3088..3092].fill(0);
    assert!(!advertises_generation_check(&v0));
}

#[test]
fn vendor_log_vector() {
    assert_eq!(GENERATION_LOG_LID, 0xc0);
    let l = GenerationLog {
        version: 1,
        current_generation: 0x1122,
        stale_map_seen: 2,
        server_behind_seen: 3,
        reports_sent: 4,
        reports_dropped: 5,
        unstamped_rejected: 6,
    };
    let b = l.to_bytes();
    assert_eq!(b.len(), GENERATION_LOG_LEN);
    assert_eq!(&b[0..4], &1u32.to_le_bytes());
    assert_eq!(&b[4..8], &[0; 4], "reserved");
    for (off, v) in [(8, 0x1122u64), (16, 2), (24, 3), (32, 4), (40, 5), (48, 6)] {
        assert_eq!(&b[off..off + 8], &v.to_le_bytes(), "field at {off}");
    }
    assert!(b[56..].iter().all(|&x| x == 0));
    assert_eq!(GenerationLog::parse(&b), Some(l));
    assert_eq!(GenerationLog::parse(&b[..55]), None);
}

proptest! {
    #[test]
    fn stamp_round_trips(g: u64, raw: [u8; 32]) {
        let mut s = Sqe::default();
        s.0[..32].copy_from_slice(&raw);
        set_generation(&mut s, g);
        prop_assert_eq!(get_generation(&s).map_or(0, NonZeroU64::get), g);
        prop_assert_eq!(cqe_generation(&stale_map_cqe(1, g)), g);
    }

    #[test]
    fn vendor_structures_round_trip(version: u32, flags: u32, generation: u64, counters: [u64; 6]) {
        let mut id = [0u8; IDENTIFY_DATA_LEN];
        let info = GenCheckInfo { version, flags, generation };
        info.write(&mut id);
        prop_assert_eq!(GenCheckInfo::parse(&id), Some(info));
        let l = GenerationLog {
            version,
            current_generation: generation,
            stale_map_seen: counters[0],
            server_behind_seen: counters[1],
            reports_sent: counters[2],
            reports_dropped: counters[3],
            unstamped_rejected: counters[4],
        };
        prop_assert_eq!(GenerationLog::parse(&l.to_bytes()), Some(l));
    }
}
