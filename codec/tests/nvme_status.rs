//! Status Field encoding (NVMe Base 2.0, section 4.6.1): every named code round-trips through
//! the 15-bit field and through a CQE, and its bits sit where Figure 98 puts them.
#![allow(clippy::unwrap_used, clippy::panic)]

use codec::nvme::status::{ALL, sct};
use codec::nvme::{Cqe, Status};
use proptest::prelude::*;

#[test]
fn every_named_status_round_trips_through_a_cqe() {
    for &(s, name) in ALL {
        for variant in [
            s,
            s.with_dnr(),
            s.with_crd(3),
            s.with_more().with_dnr().with_crd(1),
        ] {
            assert_eq!(Status::from_field(variant.field()), variant, "{name}");
            let mut c = Cqe::new(0xbeef, variant);
            assert_eq!(c.status(), variant, "{name}");
            assert_eq!(c.cid(), 0xbeef);
            // The wire word is the field shifted above the phase tag.
            let word = u16::from_le_bytes([c.0[14], c.0[15]]);
            assert_eq!(word, variant.field() << 1, "{name}");
            // Phase tag set by the transport does not disturb it.
            c.0[14] |= 1;
            assert_eq!(c.status(), variant, "{name}");
        }
        assert_eq!(Status::new(s.sct(), s.sc()), s, "{name}");
        assert!(s.name().is_some());
        assert!(s.to_string().contains(name), "{name}: {s}");
    }
}

#[test]
fn names_are_unique_per_code_except_the_documented_shared_ones() {
    for (i, &(a, an)) in ALL.iter().enumerate() {
        for &(b, bn) in &ALL[i + 1..] {
            if a == b {
                // Only the command-specific 80h..84h range is shared (NVM vs Fabrics).
                assert_eq!(a.sct(), sct::COMMAND_SPECIFIC, "{an} / {bn}");
                assert!((0x80..=0x84).contains(&a.sc()), "{an} / {bn}");
            }
        }
    }
}

#[test]
fn spec_vectors() {
    // (status, SCT, SC) from NVMe Base 2.0 Figures 101-104, Fabrics Figure 20, docs/cluster-protocol.md.
    let v: &[(Status, u8, u8)] = &[
        (Status::SUCCESS, 0, 0x00),
        (Status::INVALID_OPCODE, 0, 0x01),
        (Status::INVALID_FIELD, 0, 0x02),
        (Status::CID_CONFLICT, 0, 0x03),
        (Status::DATA_XFER_ERROR, 0, 0x04),
        (Status::ABORTED_POWER_LOSS, 0, 0x05),
        (Status::INTERNAL, 0, 0x06),
        (Status::ABORT_REQ, 0, 0x07),
        (Status::ABORT_SQ_DELETED, 0, 0x08),
        (Status::FUSED_FAIL, 0, 0x09),
        (Status::FUSED_MISSING, 0, 0x0a),
        (Status::INVALID_NS, 0, 0x0b),
        (Status::CMD_SEQ_ERROR, 0, 0x0c),
        (Status::SGL_INVALID_LAST, 0, 0x0d),
        (Status::SGL_INVALID_COUNT, 0, 0x0e),
        (Status::SGL_INVALID_DATA_LEN, 0, 0x0f),
        (Status::SGL_INVALID_METADATA_LEN, 0, 0x10),
        (Status::SGL_INVALID_TYPE, 0, 0x11),
        (Status::INVALID_USE_CMB, 0, 0x12),
        (Status::SGL_OFFSET_INVALID, 0, 0x16),
        (Status::KEEP_ALIVE_EXPIRED, 0, 0x19),
        (Status::KEEP_ALIVE_INVALID, 0, 0x1a),
        (Status::NS_WRITE_PROTECTED, 0, 0x20),
        (Status::CMD_INTERRUPTED, 0, 0x21),
        (Status::TRANSIENT_TRANSPORT_ERROR, 0, 0x22),
        (Status::LBA_RANGE, 0, 0x80),
        (Status::CAP_EXCEEDED, 0, 0x81),
        (Status::NS_NOT_READY, 0, 0x82),
        (Status::RESERVATION_CONFLICT, 0, 0x83),
        (Status::INVALID_CQ, 1, 0x00),
        (Status::INVALID_QID, 1, 0x01),
        (Status::INVALID_QSIZE, 1, 0x02),
        (Status::ABORT_LIMIT, 1, 0x03),
        (Status::ASYNC_LIMIT, 1, 0x05),
        (Status::INVALID_LOG_PAGE, 1, 0x09),
        (Status::FEATURE_NOT_SAVEABLE, 1, 0x0d),
        (Status::FEATURE_NOT_CHANGEABLE, 1, 0x0e),
        (Status::FEATURE_NOT_NS_SPECIFIC, 1, 0x0f),
        (Status::ANA_GROUP_ID_INVALID, 1, 0x24),
        (Status::CONFLICTING_ATTRS, 1, 0x80),
        (Status::INVALID_PROT_INFO, 1, 0x81),
        (Status::WRITE_TO_RO, 1, 0x82),
        (Status::CONNECT_INCOMPATIBLE_FORMAT, 1, 0x80),
        (Status::CONTROLLER_BUSY, 1, 0x81),
        (Status::CONNECT_INVALID_PARAMETERS, 1, 0x82),
        (Status::CONNECT_RESTART_DISCOVERY, 1, 0x83),
        (Status::CONNECT_INVALID_HOST, 1, 0x84),
        (Status::DISCOVERY_RESTART, 1, 0x90),
        (Status::AUTH_REQUIRED, 1, 0x91),
        (Status::WRITE_FAULT, 2, 0x80),
        (Status::UNRECOVERED_READ, 2, 0x81),
        (Status::GUARD_CHECK, 2, 0x82),
        (Status::APPTAG_CHECK, 2, 0x83),
        (Status::REFTAG_CHECK, 2, 0x84),
        (Status::COMPARE_FAILURE, 2, 0x85),
        (Status::ACCESS_DENIED, 2, 0x86),
        (Status::DEALLOCATED, 2, 0x87),
        (Status::INTERNAL_PATH_ERROR, 3, 0x00),
        (Status::ANA_PERSISTENT_LOSS, 3, 0x01),
        (Status::ANA_INACCESSIBLE, 3, 0x02),
        (Status::ANA_TRANSITION, 3, 0x03),
        (Status::CTRL_PATH_ERROR, 3, 0x60),
        (Status::HOST_PATH_ERROR, 3, 0x70),
        (Status::CMD_ABORTED_BY_HOST, 3, 0x71),
        (Status::STALE_MAP, 7, 0x80),
        (Status::SERVER_BEHIND, 7, 0x81),
    ];
    for &(s, sct, sc) in v {
        assert_eq!((s.sct(), s.sc()), (sct, sc), "{s}");
        assert_eq!(s.0, (u16::from(sct) << 8) | u16::from(sc), "{s}");
        assert!(!s.dnr() && !s.more() && s.crd() == 0, "{s}");
    }
    // Linux's shifted constants: NVME_SC_DNR 0x4000, NVME_STATUS_CRD 0x1800, MORE 0x2000.
    assert_eq!(Status::SUCCESS.with_dnr().0, 0x4000);
    assert_eq!(Status::SUCCESS.with_crd(3).0, 0x1800);
    assert_eq!(Status::SUCCESS.with_more().0, 0x2000);
    assert!(Status::ANA_TRANSITION.is_path_error());
    assert!(Status::STALE_MAP.is_vendor());
}

proptest! {
    #[test]
    fn any_field_value_survives(v in 0u16..0x8000) {
        let s = Status::from_field(v);
        prop_assert_eq!(s.0, v);
        prop_assert_eq!(Cqe::new(1, s).status(), s);
        let rebuilt = Status::new(s.sct(), s.sc()).with_crd(s.crd());
        let rebuilt = if s.more() { rebuilt.with_more() } else { rebuilt };
        let rebuilt = if s.dnr() { rebuilt.with_dnr() } else { rebuilt };
        prop_assert_eq!(rebuilt, s);
        let _ = s.to_string();
    }
}
