//! Fabrics structures: Connect data, Connect response DW0, properties (CAP, VS, CC, CSTS) and
//! the queue entries themselves, as byte vectors from NVMe Base 2.0 (Figures 36-42, 88, 97,
//! 548-551, 556-558) and round trips.
#![allow(clippy::unwrap_used, clippy::panic)]

use codec::nvme::fabrics::{
    CNTLID_DYNAMIC, CONNECT_DATA_LEN, Cap, Cc, ConnectData, ConnectReject, Csts, NSSR_RESET_VALUE,
    VS_1_4, VS_2_0, Version, connect_response_cntlid, connect_success_dw0, prop, property_size,
    shn, shst,
};
use codec::nvme::generation::stale_map_cqe;
use codec::nvme::sgl::SglDescriptor;
use codec::nvme::{Cqe, Sqe, Status};
use proptest::prelude::*;

#[test]
fn connect_data_vector() {
    let d = ConnectData {
        hostid: *b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10",
        cntlid: CNTLID_DYNAMIC,
        subnqn: "nqn.2024-01.io.tessera:vol0".into(),
        hostnqn: "nqn.2014-08.org.nvmexpress:uuid:0f0e".into(),
    };
    let b = d.to_bytes();
    assert_eq!(b.len(), CONNECT_DATA_LEN);
    assert_eq!(b[0], 1, "HOSTID at 0");
    assert_eq!(b[15], 0x10);
    assert_eq!(&b[16..18], &[0xff, 0xff], "CNTLID at 16");
    assert!(b[18..256].iter().all(|&x| x == 0), "reserved 18..256");
    assert_eq!(
        &b[256..283],
        b"nqn.2024-01.io.tessera:vol0",
        "SUBNQN at 256"
    );
    assert_eq!(b[283], 0);
    assert_eq!(
        &b[512..548],
        b"nqn.2014-08.org.nvmexpress:uuid:0f0e",
        "HOSTNQN at 512"
    );
    assert!(b[768..].iter().all(|&x| x == 0), "reserved 768..1024");
    assert_eq!(ConnectData::parse(&b), Ok(d));
}

#[test]
fn connect_data_rejections_name_the_field() {
    let mut b = [0u8; 1024];
    b[256..260].copy_from_slice(b"nqn.");
    // HOSTNQN empty: decoded (the subsystem's host policy decides, not the decoder).
    assert_eq!(ConnectData::parse(&b).unwrap().hostnqn, "");
    // HOSTNQN with no NUL in its 256 bytes: refused, naming HOSTNQN.
    b[512..768].fill(b'h');
    let r = ConnectData::parse(&b).unwrap_err();
    assert_eq!(
        (r.status, r.iattr, r.ipo),
        (Status::CONNECT_INVALID_PARAMETERS.with_dnr(), 1, 512)
    );
    assert_eq!(r.dw0(), 0x0001_0200);
    // HOSTNQN that is not UTF-8: refused (NQNs are UTF-8, NVMe Base 2.0, section 4.5).
    b[512..768].fill(0);
    b[512] = 0xff;
    assert_eq!(ConnectData::parse(&b).unwrap_err().ipo, 512);
    // Invalid UTF-8 in SUBNQN.
    b[512..516].copy_from_slice(b"nqn.");
    b[258] = 0xff;
    assert_eq!(ConnectData::parse(&b).unwrap_err().ipo, 256);
    // A 224-byte NQN (longer than 223) is rejected.
    let mut b = ConnectData {
        hostid: [0; 16],
        cntlid: 1,
        subnqn: "a".into(),
        hostnqn: "b".into(),
    }
    .to_bytes();
    b[256..480].fill(b'x');
    assert_eq!(ConnectData::parse(&b).unwrap_err().ipo, 256);
}

#[test]
fn connect_response_dw0() {
    let c = Cqe::new(1, Status::SUCCESS);
    let mut c = c;
    c.set_dw0(connect_success_dw0(0x0005, 0));
    assert_eq!(&c.0[0..4], &[5, 0, 0, 0]);
    assert_eq!(connect_response_cntlid(c.dw0()), 5);
    let r = ConnectReject::invalid_sqe_field(42);
    assert_eq!(r.dw0(), 42, "IPO = QID offset, IATTR 0 = SQE");
    assert_eq!(
        ConnectReject::controller_busy().status,
        Status::CONTROLLER_BUSY
    );
    assert!(!ConnectReject::controller_busy().status.dnr());
}

#[test]
fn property_offsets_and_values() {
    assert_eq!(
        (prop::CAP, prop::VS, prop::CC, prop::CSTS, prop::NSSR),
        (0x00, 0x08, 0x14, 0x1c, 0x20)
    );
    assert_eq!(property_size(prop::CAP), Some(8));
    assert_eq!(property_size(prop::CC), Some(4));
    assert_eq!(property_size(0x0c), None);
    assert_eq!(NSSR_RESET_VALUE.to_be_bytes(), *b"NVMe");
    assert_eq!(VS_1_4, 0x0001_0400);
    assert_eq!(VS_2_0, 0x0002_0000);
    assert_eq!(
        Version::from_u32(0x0001_0302),
        Version {
            major: 1,
            minor: 3,
            tertiary: 2
        }
    );
    assert!(Version::V2_0 > Version::V1_4);
}

#[test]
fn cap_vector() {
    // MQES 127, CQR, TO 20 (10 s), CSS NVM + I/O sets, MPSMIN/MAX 0.
    let cap = Cap::fabrics_io(127, 20);
    let v = cap.to_u64();
    assert_eq!(v & 0xffff, 127, "MQES bits 15:0");
    assert_eq!((v >> 16) & 1, 1, "CQR bit 16");
    assert_eq!((v >> 24) & 0xff, 20, "TO bits 31:24");
    assert_eq!((v >> 37) & 0xff, 0x41, "CSS bits 44:37");
    assert_eq!(v, 0x0000_0820_1401_007f);
    assert_eq!(Cap::from_u64(v), cap);
    let named = Cap {
        mpsmin: 0,
        mpsmax: 4,
        nssrs: true,
        dstrd: 0,
        ..cap
    };
    assert_eq!((named.to_u64() >> 52) & 0xf, 4, "MPSMAX bits 55:52");
    assert_eq!((named.to_u64() >> 36) & 1, 1, "NSSRS bit 36");
}

#[test]
fn cc_csts_vectors() {
    let cc = Cc {
        en: true,
        css: 0,
        mps: 0,
        ams: 0,
        shn: shn::NONE,
        iosqes: 6,
        iocqes: 4,
        crime: false,
    };
    assert_eq!(cc.to_u32(), 0x0046_0001);
    assert_eq!(
        Cc {
            shn: shn::ABRUPT,
            ..cc
        }
        .to_u32(),
        0x0046_8001
    );
    assert_eq!(
        Cc {
            css: 0b110,
            mps: 1,
            ams: 1,
            ..cc
        }
        .to_u32(),
        0x0046_0001 | 0x60 | 0x80 | 0x800
    );
    let csts = Csts {
        rdy: true,
        cfs: false,
        shst: shst::OCCURRING,
        nssro: true,
        pp: false,
        st: false,
    };
    assert_eq!(csts.to_u32(), 0x15);
    assert_eq!(Csts::from_u32(0x15), csts);
    assert_eq!(
        Csts {
            cfs: true,
            ..Csts::default()
        }
        .to_u32(),
        2
    );
}

#[test]
fn sqe_and_cqe_layout() {
    let mut s = Sqe::default();
    s.set_opcode(0x02);
    s.set_flags(0x40);
    s.set_cid(0xabcd);
    s.set_nsid(0x0102_0304);
    s.set_cdw2(0x1111_1111);
    s.set_cdw3(0x2222_2222);
    s.set_dptr(SglDescriptor::transport(512).to_bytes());
    s.set_cdw10_11(0x0807_0605_0403_0201);
    s.set_cdw12(0xaaaa_aaaa);
    s.set_cdw15(0xbbbb_bbbb);
    assert_eq!(&s.0[0..4], &[0x02, 0x40, 0xcd, 0xab]);
    assert_eq!(&s.0[4..8], &[4, 3, 2, 1], "NSID at 4");
    assert_eq!(
        &s.0[8..16],
        &[0x11, 0x11, 0x11, 0x11, 0x22, 0x22, 0x22, 0x22],
        "CDW2/3"
    );
    assert_eq!(&s.0[32..36], &512u32.to_le_bytes(), "SGL length at DPTR+8");
    assert_eq!(s.0[39], 0x5a, "SGL identifier at DPTR+15");
    assert_eq!(&s.0[40..48], &[1, 2, 3, 4, 5, 6, 7, 8], "CDW10/11");
    assert_eq!(&s.0[48..52], &[0xaa; 4]);
    assert_eq!(&s.0[60..64], &[0xbb; 4]);
    assert_eq!((s.psdt(), s.fuse()), (1, 0));

    let mut c = Cqe::new(0xabcd, Status::LBA_RANGE.with_dnr());
    c.set_dw0(0x0403_0201);
    c.set_sqhd(7);
    c.set_sqid(1);
    assert_eq!(&c.0[0..4], &[1, 2, 3, 4], "DW0");
    assert_eq!(&c.0[8..12], &[7, 0, 1, 0], "SQHD, SQID");
    assert_eq!(&c.0[12..14], &[0xcd, 0xab], "CID");
    // Status 4080h << 1 = 8100h.
    assert_eq!(&c.0[14..16], &[0x00, 0x81]);
    let stale = stale_map_cqe(3, 0x0000_0001_0000_0000);
    assert_eq!(&stale.0[0..8], &[0, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(&stale.0[14..16], &[0x00, 0x0f], "SCT 7h SC 80h: 0780h << 1");
}

proptest! {
    #[test]
    fn cap_cc_csts_round_trip(cap: u64, cc: u32, csts in 0u32..128) {
        // Reserved bits do not survive; defined fields do.
        let c = Cap::from_u64(cap);
        prop_assert_eq!(Cap::from_u64(c.to_u64()), c);
        let c = Cc::from_u32(cc);
        prop_assert_eq!(Cc::from_u32(c.to_u32()), c);
        prop_assert_eq!(Csts::from_u32(csts).to_u32(), csts);
    }

    #[test]
    fn connect_data_round_trips(
        hostid: [u8; 16], cntlid: u16,
        subnqn in "nqn\\.[a-z0-9.:-]{1,219}", hostnqn in "nqn\\.[a-z0-9.:-]{1,219}",
    ) {
        let d = ConnectData { hostid, cntlid, subnqn, hostnqn };
        prop_assert_eq!(ConnectData::parse(&d.to_bytes()), Ok(d));
    }

    #[test]
    fn connect_data_parser_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..1100)) {
        let _ = ConnectData::parse(&raw);
    }

    #[test]
    fn sgl_parser_never_panics_and_round_trips(raw: [u8; 16]) {
        if let Ok(d) = SglDescriptor::parse(&raw) {
            prop_assert_eq!(SglDescriptor::parse(&d.to_bytes()), Ok(d));
        }
    }
}
