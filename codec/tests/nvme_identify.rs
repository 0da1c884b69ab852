//! Identify data structures: key offsets checked byte by byte against NVMe Base 2.0 Figure 275
//! (Identify Controller) and NVM Command Set 1.0 Figure 97 (Identify Namespace), and builder ->
//! parser round trips.
#![allow(clippy::unwrap_used, clippy::panic)]

use codec::nvme::fabrics::VS_1_4;
use codec::nvme::generation::{GENCHK_VERSION, GenCheckInfo, advertises_generation_check};
use codec::nvme::identify::{
    IdentifyController, IdentifyCtrlNvm, IdentifyNamespace, IdentifyNsIndependent, IdentifyNsNvm,
    LbaFormat, NsIdDescriptor, PowerState, active_ns_list, cmic, ns_id_descriptor_list, oncs,
    parse_active_ns_list, parse_ns_id_descriptors, sgls,
};
use proptest::prelude::*;

fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn sample_ctrl() -> IdentifyController {
    IdentifyController {
        vid: 0x1b36,
        ssvid: 0x1af4,
        sn: "TESSERA0001".into(),
        mn: "Tessera virtual volume".into(),
        fr: "0.1.0".into(),
        rab: 6,
        ieee: [0x01, 0x02, 0x03],
        cmic: cmic::MULTI_PORT | cmic::MULTI_CONTROLLER | cmic::ANA_REPORTING,
        mdts: 5,
        cntlid: 0x0102,
        ver: VS_1_4,
        oaes: 1 << 8 | 1 << 11,
        ctratt: 1,
        cntrltype: 1,
        crdt: [1, 10, 100],
        oacs: 0,
        acl: 3,
        aerl: 3,
        frmw: 0x3,
        lpa: 0x06,
        elpe: 127,
        kas: 10,
        anatt: 10,
        anacap: 0x47,
        anagrpmax: 32,
        nanagrpid: 32,
        sqes: 0x66,
        cqes: 0x44,
        maxcmd: 128,
        nn: 1024,
        oncs: oncs::COMPARE | oncs::DSM | oncs::WRITE_ZEROES,
        fuses: 0,
        vwc: 0x07,
        awun: 0,
        awupf: 0,
        sgls: sgls::SUPPORTED | sgls::OFFSET | sgls::TRANSPORT,
        mnan: 1024,
        subnqn: "nqn.2024-01.io.tessera:vol0".into(),
        ioccsz: 260,
        iorcsz: 1,
        icdoff: 0,
        fcatt: 0,
        msdbd: 1,
        ofcs: 1,
        psd0: PowerState {
            mp: 2500,
            enlat: 16,
            exlat: 4,
            ..PowerState::default()
        },
        genchk: Some(GenCheckInfo {
            version: GENCHK_VERSION,
            flags: 1,
            generation: 42,
        }),
        ..IdentifyController::default()
    }
}

#[test]
fn controller_key_offsets() {
    let c = sample_ctrl();
    let b = c.to_bytes();
    assert_eq!(le16(&b, 0), 0x1b36, "VID at 0");
    assert_eq!(le16(&b, 2), 0x1af4, "SSVID at 2");
    assert_eq!(&b[4..24], b"TESSERA0001         ", "SN at 4, space padded");
    assert_eq!(&b[24..46], b"Tessera virtual volume", "MN at 24");
    assert_eq!(b[63], b' ');
    assert_eq!(&b[64..72], b"0.1.0   ", "FR at 64");
    assert_eq!(b[72], 6, "RAB at 72");
    assert_eq!(&b[73..76], &[1, 2, 3], "IEEE at 73");
    assert_eq!(b[76], 0x0b, "CMIC at 76");
    assert_eq!(b[77], 5, "MDTS at 77");
    assert_eq!(le16(&b, 78), 0x0102, "CNTLID at 78");
    assert_eq!(le32(&b, 80), 0x0001_0400, "VER at 80");
    assert_eq!(le32(&b, 92), 0x900, "OAES at 92");
    assert_eq!(le32(&b, 96), 1, "CTRATT at 96");
    assert_eq!(b[111], 1, "CNTRLTYPE at 111");
    assert_eq!(
        (le16(&b, 128), le16(&b, 130), le16(&b, 132)),
        (1, 10, 100),
        "CRDT1-3"
    );
    assert_eq!(b[258], 3, "ACL at 258");
    assert_eq!(b[259], 3, "AERL at 259");
    assert_eq!(b[261], 6, "LPA at 261");
    assert_eq!(b[262], 127, "ELPE at 262");
    assert_eq!(le16(&b, 320), 10, "KAS at 320");
    assert_eq!(b[342], 10, "ANATT at 342");
    assert_eq!(b[343], 0x47, "ANACAP at 343");
    assert_eq!(le32(&b, 344), 32, "ANAGRPMAX at 344");
    assert_eq!(le32(&b, 348), 32, "NANAGRPID at 348");
    assert_eq!(b[512], 0x66, "SQES at 512");
    assert_eq!(b[513], 0x44, "CQES at 513");
    assert_eq!(le16(&b, 514), 128, "MAXCMD at 514");
    assert_eq!(le32(&b, 516), 1024, "NN at 516");
    assert_eq!(le16(&b, 520), 0b1101, "ONCS at 520");
    assert_eq!(b[525], 0x07, "VWC at 525");
    assert_eq!(le32(&b, 536), 0x30_0001, "SGLS at 536");
    assert_eq!(le32(&b, 540), 1024, "MNAN at 540");
    assert_eq!(
        &b[768..795],
        b"nqn.2024-01.io.tessera:vol0",
        "SUBNQN at 768"
    );
    assert_eq!(b[795], 0, "SUBNQN NUL terminated");
    assert_eq!(le32(&b, 1792), 260, "IOCCSZ at 1792");
    assert_eq!(le32(&b, 1796), 1, "IORCSZ at 1796");
    assert_eq!(le16(&b, 1800), 0, "ICDOFF at 1800");
    assert_eq!(b[1803], 1, "MSDBD at 1803");
    assert_eq!(le16(&b, 1804), 1, "OFCS at 1804");
    assert_eq!(le16(&b, 2048), 2500, "PSD0.MP at 2048");
    assert_eq!(le32(&b, 2052), 16, "PSD0.ENLAT at 2052");
    assert_eq!(le32(&b, 2056), 4, "PSD0.EXLAT at 2056");
    assert_eq!(&b[3072..3086], b"TESSERA-GENCHK", "vendor magic at 3072");
    assert_eq!(le32(&b, 3088), GENCHK_VERSION, "vendor version at 3088");
    assert!(advertises_generation_check(&b));
    assert_eq!(IdentifyController::parse(&b), c);
}

#[test]
fn controller_without_vendor_area_does_not_advertise() {
    let c = IdentifyController {
        genchk: None,
        ..sample_ctrl()
    };
    let b = c.to_bytes();
    assert!(!advertises_generation_check(&b));
    assert_eq!(IdentifyController::parse(&b), c);
    // A short buffer reads as zero-extended, never panics.
    assert_eq!(IdentifyController::parse(&b[..80]).cntlid, 0x0102);
    assert_eq!(
        IdentifyController::parse(&[]),
        IdentifyController::default()
    );
}

fn sample_ns() -> IdentifyNamespace {
    IdentifyNamespace {
        nsze: 0x20_0000,
        ncap: 0x20_0000,
        nuse: 0x1000,
        nsfeat: 1,
        flbas: 1,
        dlfeat: 0x09,
        nmic: 1,
        anagrpid: 3,
        nguid: [0xa5; 16],
        eui64: [0x5a; 8],
        lbaf: vec![
            LbaFormat {
                ms: 0,
                lbads: 9,
                rp: 0,
            },
            LbaFormat {
                ms: 0,
                lbads: 12,
                rp: 0,
            },
        ],
        ..IdentifyNamespace::default()
    }
}

#[test]
fn namespace_key_offsets() {
    let n = sample_ns();
    let b = n.to_bytes();
    assert_eq!(&b[0..8], &0x20_0000u64.to_le_bytes(), "NSZE at 0");
    assert_eq!(&b[8..16], &0x20_0000u64.to_le_bytes(), "NCAP at 8");
    assert_eq!(&b[16..24], &0x1000u64.to_le_bytes(), "NUSE at 16");
    assert_eq!(b[24], 1, "NSFEAT at 24");
    assert_eq!(b[25], 1, "NLBAF (0's based) at 25");
    assert_eq!(b[26], 1, "FLBAS at 26");
    assert_eq!(b[30], 1, "NMIC at 30");
    assert_eq!(b[33], 0x09, "DLFEAT at 33");
    assert_eq!(le32(&b, 92), 3, "ANAGRPID at 92");
    assert_eq!(&b[104..120], &[0xa5; 16], "NGUID at 104");
    assert_eq!(&b[120..128], &[0x5a; 8], "EUI64 at 120");
    assert_eq!(&b[128..132], &[0, 0, 9, 0], "LBAF0 at 128: MS, LBADS 9");
    assert_eq!(&b[132..136], &[0, 0, 12, 0], "LBAF1 at 132: LBADS 12");
    assert_eq!(n.lba_size(), Some(4096));
    assert_eq!(IdentifyNamespace::parse(&b), n);
}

#[test]
fn lists_and_descriptors() {
    let b = active_ns_list(&[5, 1, 3, 3, 0], 1);
    assert_eq!(&b[..12], &[3, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(parse_active_ns_list(&b), vec![3, 5]);
    let many: Vec<u32> = (1..=2000).collect();
    assert_eq!(parse_active_ns_list(&active_ns_list(&many, 0)).len(), 1024);

    let descs = vec![
        NsIdDescriptor::Eui64([1; 8]),
        NsIdDescriptor::Nguid([2; 16]),
        NsIdDescriptor::Uuid([3; 16]),
        NsIdDescriptor::Csi(0),
    ];
    let b = ns_id_descriptor_list(&descs);
    // NIDT, NIDL, 2 reserved, then NID; each descriptor follows the previous one.
    assert_eq!(&b[0..4], &[1, 8, 0, 0]);
    assert_eq!(&b[12..16], &[2, 16, 0, 0]);
    assert_eq!(&b[32..36], &[3, 16, 0, 0]);
    assert_eq!(&b[52..57], &[4, 1, 0, 0, 0]);
    assert_eq!(b[57], 0, "terminator");
    assert_eq!(parse_ns_id_descriptors(&b), descs);
    // A descriptor overrunning the buffer ends the list.
    assert_eq!(parse_ns_id_descriptors(&[2, 16, 0, 0, 1, 2]), vec![]);
}

#[test]
fn command_set_specific_structures() {
    let i = IdentifyNsIndependent {
        nsfeat: 1,
        nmic: 1,
        anagrpid: 7,
        nstat: 1,
        ..Default::default()
    };
    let b = i.to_bytes();
    assert_eq!((b[0], b[1], le32(&b, 4), b[14]), (1, 1, 7, 1));
    assert_eq!(IdentifyNsIndependent::parse(&b), i);

    let c = IdentifyCtrlNvm {
        wzsl: 5,
        dmrl: 1,
        dmrsl: 0x10_0000,
        ..Default::default()
    };
    let b = c.to_bytes();
    assert_eq!((b[1], b[3], le32(&b, 4)), (5, 1, 0x10_0000));
    assert_eq!(IdentifyCtrlNvm::parse(&b), c);

    let n = IdentifyNsNvm::default();
    assert!(n.to_bytes().iter().all(|&x| x == 0));
}

proptest! {
    #[test]
    fn controller_round_trips(
        vid: u16, cntlid: u16, mdts: u8, kas: u16, nn: u32, oncs: u16, sgls: u32, ioccsz: u32,
        sn in "[ -~]{0,20}", subnqn in "nqn\\.[a-z0-9.:-]{1,200}",
        generation: u64,
    ) {
        let c = IdentifyController {
            vid, cntlid, mdts, kas, nn, oncs, sgls, ioccsz,
            sn: sn.trim_end().to_string(),
            subnqn,
            genchk: Some(GenCheckInfo { version: 1, flags: 0, generation }),
            ..IdentifyController::default()
        };
        prop_assert_eq!(IdentifyController::parse(&c.to_bytes()), c);
    }

    #[test]
    fn namespace_round_trips(
        nsze: u64, nuse: u64, flbas in 0u8..16, nguid: [u8; 16], anagrpid: u32,
        lbads in proptest::collection::vec(9u8..16, 1..64),
    ) {
        let n = IdentifyNamespace {
            nsze, ncap: nsze, nuse, flbas, nguid, anagrpid,
            lbaf: lbads.iter().map(|&l| LbaFormat { ms: 0, lbads: l, rp: 0 }).collect(),
            ..IdentifyNamespace::default()
        };
        prop_assert_eq!(IdentifyNamespace::parse(&n.to_bytes()), n);
    }

    #[test]
    fn descriptor_parser_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_ns_id_descriptors(&raw);
        let _ = IdentifyNamespace::parse(&raw);
        let _ = IdentifyController::parse(&raw);
    }
}
