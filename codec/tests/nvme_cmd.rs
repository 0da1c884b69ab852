//! Parse, then execute: byte-exact SQE vectors built field by field from the spec (NVMe Base
//! 2.0 Figure 88 and the per-command figures; NVM Command Set 1.0), round trips through the
//! builders, and the "never panic" property for all three parsers.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::num::NonZeroU64;

use codec::nvme::cmd::{
    self, Abort, AdminCommand, AuthReceive, AuthSend, DatasetManagement, Disconnect, DsmRange,
    FabricsCommand, FeatureId, Flush, GetFeatures, GetLogPage, Identify, IoCommand, Rw,
    SetFeatures, WriteUncorrectable, WriteZeroes, cns, sel,
};
use codec::nvme::fabrics::{Connect, PropertyGet, PropertySet, prop};
use codec::nvme::{
    Command, DataDir, QueueKind, SglDescriptor, Sqe, Status, check_sgl, parse, parse_admin,
    parse_fabrics, parse_io,
};
use proptest::prelude::*;

const INVALID_FIELD: Status = Status::INVALID_FIELD.with_dnr();
const INVALID_OPCODE: Status = Status::INVALID_OPCODE.with_dnr();

/// An SQE from (offset, bytes) pairs over a zeroed entry.
fn sqe(fields: &[(usize, &[u8])]) -> Sqe {
    let mut b = [0u8; 64];
    for (off, bytes) in fields {
        b[*off..*off + bytes.len()].copy_from_slice(bytes);
    }
    Sqe(b)
}

/// SGL1 = Transport SGL Data Block (5Ah) of `len` bytes, as Linux nvme-tcp sends.
fn transport_sgl(len: u32) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[15] = 0x5a;
    d
}

/// SGL1 = in-capsule Data Block, Offset subtype (01h), of `len` bytes at offset 0.
fn in_capsule_sgl(len: u32) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[15] = 0x01;
    d
}

// ----- NVM I/O --------------------------------------------------------------------------------

#[test]
fn linux_read_vector() {
    // Read, PSDT 01b, CID 7, NSID 1, SLBA 0x12345, NLB 8 blocks (0's based 7), 4 KiB by R2T-less
    // C2HData: SGL1 is a Transport SGL Data Block of 4096 bytes.
    let s = sqe(&[
        (0, &[0x02, 0x40]),
        (2, &7u16.to_le_bytes()),
        (4, &1u32.to_le_bytes()),
        (24, &transport_sgl(4096)),
        (40, &0x12345u64.to_le_bytes()),
        (48, &7u32.to_le_bytes()),
    ]);
    let c = parse_io(&s).unwrap();
    assert_eq!(c, IoCommand::Read(Rw::new(1, 0x12345, 8, 0)));
    assert_eq!(c.data_dir(512), DataDir::CtrlToHost(4096));
    assert_eq!(c.generation(), None);
    assert_eq!(
        check_sgl(&s, c.data_dir(512)),
        Ok(Some(SglDescriptor::transport(4096)))
    );
    // The builder writes the same bytes.
    assert_eq!(c.to_sqe(7, SglDescriptor::transport(4096)), s);
}

#[test]
fn in_capsule_fua_write_vector() {
    // Write, FUA (CDW12 bit 30), 1 block of 4 KiB in the capsule, stamped with generation
    // 0x0000_0002_0000_0001 in CDW2 (low) / CDW3 (high).
    let s = sqe(&[
        (0, &[0x01, 0x40]),
        (2, &0x0102u16.to_le_bytes()),
        (4, &3u32.to_le_bytes()),
        (8, &1u32.to_le_bytes()),
        (12, &2u32.to_le_bytes()),
        (24, &in_capsule_sgl(4096)),
        (40, &100u64.to_le_bytes()),
        (48, &(1u32 << 30).to_le_bytes()),
    ]);
    let IoCommand::Write(w) = parse_io(&s).unwrap() else {
        panic!("not a write")
    };
    assert_eq!(
        (w.nsid, w.slba, w.nlb, w.fua, w.lr),
        (3, 100, 1, true, false)
    );
    assert_eq!(w.generation, NonZeroU64::new(0x0000_0002_0000_0001));
    assert_eq!(
        IoCommand::Write(w).data_dir(4096),
        DataDir::HostToCtrl(4096)
    );
    assert_eq!(
        IoCommand::Write(w).to_sqe(0x0102, SglDescriptor::in_capsule(4096)),
        s
    );
}

#[test]
fn write_zeroes_dsm_flush_verify_uncorrectable_vectors() {
    // Write Zeroes with DEAC (bit 25): no data.
    let s = sqe(&[
        (0, &[0x08, 0x40]),
        (4, &1u32.to_le_bytes()),
        (40, &[9]),
        (48, &[0xff, 0x00, 0x00, 0x02]),
    ]);
    let c = parse_io(&s).unwrap();
    assert_eq!(
        c,
        IoCommand::WriteZeroes(WriteZeroes {
            nsid: 1,
            slba: 9,
            nlb: 256,
            deac: true,
            fua: false,
            lr: false,
            generation: None,
            expires: 0,
        })
    );
    assert_eq!(c.data_dir(512), DataDir::None);

    // DSM, NR 0's based 1 (2 ranges), AD: 32 bytes host to controller.
    let s = sqe(&[
        (0, &[0x09, 0x40]),
        (4, &1u32.to_le_bytes()),
        (40, &[1]),
        (44, &[4]),
    ]);
    let c = parse_io(&s).unwrap();
    assert_eq!(
        c,
        IoCommand::DatasetManagement(DatasetManagement {
            nsid: 1,
            nr: 2,
            ad: true,
            idw: false,
            idr: false,
            generation: None,
            expires: 0,
        })
    );
    assert_eq!(c.data_dir(512), DataDir::HostToCtrl(32));

    // Flush to all namespaces, stamped; PSDT 0 is fine without data.
    let s = sqe(&[
        (0, &[0x00, 0x00]),
        (4, &u32::MAX.to_le_bytes()),
        (8, &5u32.to_le_bytes()),
    ]);
    assert_eq!(
        parse_io(&s).unwrap(),
        IoCommand::Flush(Flush {
            nsid: u32::MAX,
            generation: NonZeroU64::new(5)
        })
    );

    let s = sqe(&[(0, &[0x0c, 0x40]), (40, &[1]), (48, &[3])]);
    assert_eq!(
        parse_io(&s).unwrap(),
        IoCommand::Verify(Rw::new(0, 1, 4, 0))
    );
    assert_eq!(parse_io(&s).unwrap().data_dir(4096), DataDir::None);

    let s = sqe(&[(0, &[0x04, 0x40]), (40, &[1]), (48, &[3])]);
    assert_eq!(
        parse_io(&s).unwrap(),
        IoCommand::WriteUncorrectable(WriteUncorrectable {
            nsid: 0,
            slba: 1,
            nlb: 4,
            generation: None
        })
    );
}

#[test]
fn dsm_ranges() {
    let r = [
        DsmRange {
            cattr: 0,
            nlb: 8,
            slba: 0,
        },
        DsmRange {
            cattr: 1,
            nlb: 0x10,
            slba: 0x1_0000_0000,
        },
    ];
    let mut data = Vec::new();
    for x in &r {
        data.extend_from_slice(&x.to_bytes());
    }
    assert_eq!(
        &data[16..32],
        &[1, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    );
    assert_eq!(DsmRange::parse_list(&data, 2).unwrap(), r.to_vec());
    assert_eq!(DsmRange::parse_list(&data[..20], 2), None);
}

#[test]
fn io_rejections() {
    // Unknown and unimplemented opcodes.
    for opc in [0x03u8, 0x0d, 0x19, 0x7d, 0x80, 0xff] {
        assert_eq!(
            parse_io(&sqe(&[(0, &[opc, 0x40])])),
            Err(INVALID_OPCODE),
            "{opc:#x}"
        );
    }
    // Fabrics opcode is not an I/O command; `parse` dispatches it.
    assert_eq!(parse_io(&sqe(&[(0, &[0x7f, 0x40])])), Err(INVALID_OPCODE));
    // Fused operations are not supported.
    assert_eq!(parse_io(&sqe(&[(0, &[0x02, 0x41])])), Err(INVALID_FIELD));
    // PSDT 11b is reserved; PSDT 00b cannot describe data on a fabric.
    assert_eq!(parse_io(&sqe(&[(0, &[0x02, 0xc0])])), Err(INVALID_FIELD));
    assert_eq!(parse_io(&sqe(&[(0, &[0x02, 0x00])])), Err(INVALID_FIELD));
    // Storage tag check without protection information.
    assert_eq!(
        parse_io(&sqe(&[(0, &[0x02, 0x40]), (51, &[0x01])])),
        Err(INVALID_FIELD)
    );
    // DTYPE on a Read (reserved there).
    assert_eq!(
        parse_io(&sqe(&[(0, &[0x02, 0x40]), (50, &[0x10])])),
        Err(INVALID_FIELD)
    );
    // DSM reserved bits.
    assert_eq!(
        parse_io(&sqe(&[(0, &[0x09, 0x40]), (41, &[1])])),
        Err(INVALID_FIELD)
    );
    assert_eq!(
        parse_io(&sqe(&[(0, &[0x09, 0x40]), (44, &[8])])),
        Err(INVALID_FIELD)
    );
}

// ----- Admin ----------------------------------------------------------------------------------

#[test]
fn identify_vectors() {
    // Identify Controller: CNS 01h, 4096 bytes to the host.
    let s = sqe(&[
        (0, &[0x06, 0x40]),
        (24, &transport_sgl(4096)),
        (40, &[0x01]),
    ]);
    let c = parse_admin(&s).unwrap();
    assert_eq!(
        c,
        AdminCommand::Identify(Identify {
            nsid: 0,
            cns: cns::CONTROLLER,
            cntid: 0,
            cnssid: 0,
            csi: 0,
            uuid_index: 0
        })
    );
    assert_eq!(c.data_dir(), DataDir::CtrlToHost(4096));
    assert_eq!(c.to_sqe(0, SglDescriptor::transport(4096)), s);

    // CNS 05h with CSI 0 for NSID 2, CNTID 0x0a0b: CNTID is CDW10 bits 31:16, CSI CDW11 31:24.
    let s = sqe(&[
        (0, &[0x06, 0x40]),
        (4, &2u32.to_le_bytes()),
        (40, &[0x05, 0, 0x0b, 0x0a]),
        (47, &[0]),
    ]);
    let AdminCommand::Identify(i) = parse_admin(&s).unwrap() else {
        panic!()
    };
    assert_eq!(
        (i.nsid, i.cns, i.cntid, i.csi),
        (2, cns::CS_NAMESPACE, 0x0a0b, 0)
    );

    // Reserved CDW10 bits 15:8.
    assert_eq!(
        parse_admin(&sqe(&[(0, &[0x06, 0x40]), (41, &[1])])),
        Err(INVALID_FIELD)
    );
}

#[test]
fn get_log_page_vectors() {
    // SMART log, 512 bytes: NUMDL = 127 (0's based dwords) in CDW10 bits 31:16, RAE bit 15.
    let s = sqe(&[
        (0, &[0x02, 0x40]),
        (4, &u32::MAX.to_le_bytes()),
        (40, &[0x02, 0x80, 127, 0]),
    ]);
    let AdminCommand::GetLogPage(g) = parse_admin(&s).unwrap() else {
        panic!()
    };
    assert_eq!(
        (g.lid, g.rae, g.lsp, g.numd_bytes, g.lpo, g.nsid),
        (0x02, true, 0, 512, 0, u32::MAX)
    );
    assert_eq!(
        AdminCommand::GetLogPage(g).data_dir(),
        DataDir::CtrlToHost(512)
    );
    assert_eq!(
        AdminCommand::GetLogPage(g)
            .to_sqe(0, SglDescriptor::transport(512))
            .0[40..44],
        s.0[40..44]
    );

    // Discovery log page header read then entries: NUMDU carries the high 16 bits, LPO 1024.
    let s = sqe(&[
        (0, &[0x02, 0x40]),
        (40, &[0x70, 0x00, 0xff, 0xff]),
        (44, &[0x01, 0x00, 0, 0]),
        (48, &1024u32.to_le_bytes()),
    ]);
    let AdminCommand::GetLogPage(g) = parse_admin(&s).unwrap() else {
        panic!()
    };
    assert_eq!(g.numd_bytes, (0x1_ffff + 1) * 4);
    assert_eq!(g.lpo, 1024);
    assert_eq!(g.window(2048), Ok((1024, 1024)));
    assert_eq!(g.window(1024), Ok((1024, 0)));
    assert_eq!(g.window(1000), Err(INVALID_FIELD));

    // ANA log with RGO: LSP = 1 in CDW10 bits 14:8.
    let s = sqe(&[(0, &[0x02, 0x40]), (40, &[0x0c, 0x01, 3, 0])]);
    let AdminCommand::GetLogPage(g) = parse_admin(&s).unwrap() else {
        panic!()
    };
    assert_eq!((g.lid, g.lsp, g.numd_bytes), (0x0c, 1, 16));

    // LPO not dword aligned; index offsets (OT, CDW14 bit 23) unsupported.
    assert_eq!(
        parse_admin(&sqe(&[(0, &[0x02, 0x40]), (48, &[2])])),
        Err(INVALID_FIELD)
    );
    assert_eq!(
        parse_admin(&sqe(&[(0, &[0x02, 0x40]), (58, &[0x80])])),
        Err(INVALID_FIELD)
    );
}

#[test]
fn features_abort_aer_keep_alive_vectors() {
    // Set Features Number of Queues (07h): NSQR/NCQR 0's based in CDW11.
    let s = sqe(&[
        (0, &[0x09, 0x40]),
        (40, &[0x07]),
        (44, &0x0003_0003u32.to_le_bytes()),
    ]);
    let c = parse_admin(&s).unwrap();
    assert_eq!(
        c,
        AdminCommand::SetFeatures(SetFeatures {
            nsid: 0,
            fid: FeatureId::NUMBER_OF_QUEUES,
            sv: false,
            cdw11: 0x0003_0003,
            cdw12: 0,
            cdw13: 0,
            uuid_index: 0
        })
    );
    assert_eq!(c.data_dir(), DataDir::None);
    // Host Behavior Support (16h) carries 512 bytes; Timestamp 8.
    let s = sqe(&[(0, &[0x09, 0x40]), (40, &[0x16])]);
    assert_eq!(
        parse_admin(&s).unwrap().data_dir(),
        DataDir::HostToCtrl(512)
    );
    let s = sqe(&[(0, &[0x0a, 0x40]), (40, &[0x0e])]);
    assert_eq!(parse_admin(&s).unwrap().data_dir(), DataDir::CtrlToHost(8));
    // Get Features SEL = 3 (supported capabilities): no data even for a data feature.
    let s = sqe(&[(0, &[0x0a, 0x40]), (40, &[0x0e, 0x03])]);
    let c = parse_admin(&s).unwrap();
    assert!(matches!(
        c,
        AdminCommand::GetFeatures(GetFeatures {
            sel: sel::SUPPORTED_CAPABILITIES,
            ..
        })
    ));
    assert_eq!(c.data_dir(), DataDir::None);
    // SEL 4 is reserved.
    assert_eq!(
        parse_admin(&sqe(&[(0, &[0x0a, 0x40]), (40, &[0x0e, 0x04])])),
        Err(INVALID_FIELD)
    );
    // Save bit 31 of Set Features.
    let s = sqe(&[(0, &[0x09, 0x40]), (40, &[0x0b, 0, 0, 0x80])]);
    assert!(matches!(
        parse_admin(&s).unwrap(),
        AdminCommand::SetFeatures(SetFeatures { sv: true, .. })
    ));

    // Abort: SQID CDW10 15:0, CID 31:16.
    let s = sqe(&[(0, &[0x08, 0x40]), (40, &[1, 0, 0x34, 0x12])]);
    assert_eq!(
        parse_admin(&s).unwrap(),
        AdminCommand::Abort(Abort {
            sqid: 1,
            cid: 0x1234
        })
    );
    assert_eq!(
        parse_admin(&sqe(&[(0, &[0x0c, 0x40])])).unwrap(),
        AdminCommand::AsyncEventRequest
    );
    assert_eq!(
        parse_admin(&sqe(&[(0, &[0x18, 0x00])])).unwrap(),
        AdminCommand::KeepAlive
    );
}

#[test]
fn admin_rejections() {
    // Queue management is done with Connect on a fabric; other opcodes are not implemented.
    for opc in [0x00u8, 0x01, 0x04, 0x05, 0x0d, 0x10, 0x7c, 0x7f, 0x80, 0xc0] {
        assert_eq!(
            parse_admin(&sqe(&[(0, &[opc, 0x40])])),
            Err(INVALID_OPCODE),
            "{opc:#x}"
        );
    }
    // Identify with PRPs.
    assert_eq!(
        parse_admin(&sqe(&[(0, &[0x06, 0x00]), (40, &[1])])),
        Err(INVALID_FIELD)
    );
}

// ----- Fabrics --------------------------------------------------------------------------------

#[test]
fn connect_vector() {
    // Admin queue Connect as Linux sends it: SQSIZE 31, KATO 5000 ms, 1024 bytes in capsule.
    let s = sqe(&[
        (0, &[0x7f, 0x40]),
        (2, &0x0001u16.to_le_bytes()),
        (4, &[0x01]),
        (24, &in_capsule_sgl(1024)),
        (40, &0u16.to_le_bytes()),
        (42, &0u16.to_le_bytes()),
        (44, &31u16.to_le_bytes()),
        (46, &[0x00]),
        (48, &5000u32.to_le_bytes()),
    ]);
    let c = parse_fabrics(&s).unwrap();
    let want = Connect {
        recfmt: 0,
        qid: 0,
        sqsize: 31,
        cattr: 0,
        kato_ms: 5000,
    };
    assert_eq!(c, FabricsCommand::Connect(want));
    assert_eq!(c.data_dir(), DataDir::HostToCtrl(1024));
    assert_eq!(want.queue_entries(), 32);
    assert_eq!(want.to_sqe(1, SglDescriptor::in_capsule(1024)), s);
    assert_eq!(
        check_sgl(&s, c.data_dir()),
        Ok(Some(SglDescriptor::in_capsule(1024)))
    );
    // The same bytes on an I/O queue go to the fabrics parser too.
    assert_eq!(parse(&s, QueueKind::Io), Ok(Command::Fabrics(c)));
    assert_eq!(parse(&s, QueueKind::Admin), Ok(Command::Fabrics(c)));
    // Validation against the controller's limits.
    assert_eq!(want.validate(127), Ok(()));
    let r = Connect { sqsize: 0, ..want }.validate(127).unwrap_err();
    assert_eq!(
        (r.status, r.dw0()),
        (Status::CONNECT_INVALID_PARAMETERS.with_dnr(), 44)
    );
    let r = Connect { recfmt: 1, ..want }.validate(127).unwrap_err();
    assert_eq!(r.status, Status::CONNECT_INCOMPATIBLE_FORMAT.with_dnr());
}

#[test]
fn property_vectors() {
    // Property Get CAP (8 bytes): ATTRIB 1 at byte 40, OFST 0 at byte 44.
    let s = sqe(&[(0, &[0x7f, 0x40]), (4, &[0x04]), (40, &[1])]);
    let c = parse_fabrics(&s).unwrap();
    assert_eq!(
        c,
        FabricsCommand::PropertyGet(PropertyGet {
            size8: true,
            offset: prop::CAP
        })
    );
    assert_eq!(c.data_dir(), DataDir::None);
    assert_eq!(
        c.to_sqe(0, SglDescriptor::transport(0)).0[..48],
        {
            let mut e = s;
            e.0[24..40].copy_from_slice(&transport_sgl(0));
            e
        }
        .0[..48]
    );

    // Property Set CC = 0x00460001 (4 bytes): ATTRIB 0, OFST 14h, VALUE at byte 48.
    let s = sqe(&[
        (0, &[0x7f, 0x40]),
        (4, &[0x00]),
        (44, &[0x14]),
        (48, &0x0046_0001u64.to_le_bytes()),
    ]);
    assert_eq!(
        parse_fabrics(&s).unwrap(),
        FabricsCommand::PropertySet(PropertySet {
            size8: false,
            offset: prop::CC,
            value: 0x0046_0001
        })
    );
    // A 4-byte set ignores the upper dword.
    let s = sqe(&[
        (0, &[0x7f, 0x40]),
        (44, &[0x14]),
        (48, &0xdead_0000_0000_0001u64.to_le_bytes()),
    ]);
    let FabricsCommand::PropertySet(p) = parse_fabrics(&s).unwrap() else {
        panic!()
    };
    assert_eq!(p.value, 1);
    // ATTRIB size 2..7 is reserved.
    assert_eq!(
        parse_fabrics(&sqe(&[(0, &[0x7f, 0x40]), (4, &[0x04]), (40, &[2])])),
        Err(INVALID_FIELD)
    );
}

#[test]
fn auth_disconnect_and_unknown_fctype() {
    let s = sqe(&[
        (0, &[0x7f, 0x40]),
        (4, &[0x05]),
        (41, &[0x01, 0x01, 0xe9]),
        (44, &36u32.to_le_bytes()),
    ]);
    let c = parse_fabrics(&s).unwrap();
    assert_eq!(
        c,
        FabricsCommand::AuthSend(AuthSend {
            secp: 0xe9,
            spsp0: 1,
            spsp1: 1,
            tl: 36
        })
    );
    assert_eq!(c.data_dir(), DataDir::HostToCtrl(36));
    let s = sqe(&[
        (0, &[0x7f, 0x40]),
        (4, &[0x06]),
        (43, &[0xe9]),
        (44, &64u32.to_le_bytes()),
    ]);
    assert_eq!(
        parse_fabrics(&s).unwrap(),
        FabricsCommand::AuthReceive(AuthReceive {
            secp: 0xe9,
            spsp0: 0,
            spsp1: 0,
            al: 64
        })
    );
    let s = sqe(&[(0, &[0x7f, 0x40]), (4, &[0x08])]);
    assert_eq!(
        parse_fabrics(&s).unwrap(),
        FabricsCommand::Disconnect(Disconnect { recfmt: 0 })
    );
    for t in [0x02u8, 0x03, 0x07, 0x09, 0xc0, 0xff] {
        assert_eq!(
            parse_fabrics(&sqe(&[(0, &[0x7f, 0x40]), (4, &[t])])),
            Err(INVALID_OPCODE)
        );
    }
    // Not opcode 7Fh.
    assert_eq!(
        parse_fabrics(&sqe(&[(0, &[0x06, 0x40])])),
        Err(INVALID_OPCODE)
    );
}

#[test]
fn check_sgl_rules() {
    let mut s = Sqe::default();
    s.set_dptr(transport_sgl(0));
    assert_eq!(check_sgl(&s, DataDir::None), Ok(None));
    // No data moves: DPTR is not looked at (a longer buffer, or PRP bits under PSDT 00b).
    s.set_dptr(transport_sgl(8));
    assert_eq!(check_sgl(&s, DataDir::None), Ok(None));
    s.set_dptr([0xff; 16]);
    assert_eq!(check_sgl(&s, DataDir::None), Ok(None));
    s.set_dptr(transport_sgl(8));
    assert_eq!(
        check_sgl(&s, DataDir::CtrlToHost(16)),
        Err(Status::SGL_INVALID_DATA_LEN.with_dnr())
    );
    assert_eq!(
        check_sgl(&s, DataDir::CtrlToHost(8)),
        Ok(Some(SglDescriptor::transport(8)))
    );
    // Longer than the transfer: accepted for every direction and kind (SGLS bit 18); the
    // descriptor comes back as sent, the caller moves only `dir.len()` bytes.
    assert_eq!(
        check_sgl(&s, DataDir::CtrlToHost(4)),
        Ok(Some(SglDescriptor::transport(8)))
    );
    assert_eq!(
        check_sgl(&s, DataDir::HostToCtrl(4)),
        Ok(Some(SglDescriptor::transport(8)))
    );
    // Linux's discard: 2 ranges (32 bytes) in a 4 KiB page, in-capsule or by R2T.
    s.set_dptr(in_capsule_sgl(4096));
    assert_eq!(
        check_sgl(&s, DataDir::HostToCtrl(32)),
        Ok(Some(SglDescriptor::in_capsule(4096)))
    );
    assert_eq!(
        check_sgl(&s, DataDir::HostToCtrl(4097)),
        Err(Status::SGL_INVALID_DATA_LEN.with_dnr())
    );
    // In-capsule data cannot carry data back to the host.
    assert_eq!(
        check_sgl(&s, DataDir::CtrlToHost(16)),
        Err(Status::SGL_INVALID_TYPE.with_dnr())
    );
    s.set_dptr(transport_sgl(4096));
    assert_eq!(
        check_sgl(&s, DataDir::HostToCtrl(32)),
        Ok(Some(SglDescriptor::transport(4096)))
    );
    // A keyed (RDMA) descriptor is not an NVMe/TCP one.
    let mut d = transport_sgl(8);
    d[15] = 0x40;
    s.set_dptr(d);
    assert_eq!(
        check_sgl(&s, DataDir::HostToCtrl(8)),
        Err(Status::SGL_INVALID_TYPE.with_dnr())
    );
    // In-capsule data not at offset 0.
    let mut d = in_capsule_sgl(8);
    d[0] = 16;
    s.set_dptr(d);
    assert_eq!(
        check_sgl(&s, DataDir::HostToCtrl(8)),
        Err(Status::SGL_OFFSET_INVALID.with_dnr())
    );
    // Reserved descriptor type.
    let mut d = [0u8; 16];
    d[15] = 0x60;
    s.set_dptr(d);
    assert_eq!(
        check_sgl(&s, DataDir::HostToCtrl(8)),
        Err(Status::SGL_INVALID_TYPE.with_dnr())
    );
}

// ----- Properties -----------------------------------------------------------------------------

fn any_sqe() -> impl Strategy<Value = Sqe> {
    proptest::array::uniform32(any::<u8>()).prop_flat_map(|a| {
        proptest::array::uniform32(any::<u8>()).prop_map(move |b| {
            let mut s = [0u8; 64];
            s[..32].copy_from_slice(&a);
            s[32..].copy_from_slice(&b);
            Sqe(s)
        })
    })
}

/// SQEs biased toward opcodes and flags the parsers implement, so the property reaches deep.
fn plausible_sqe() -> impl Strategy<Value = Sqe> {
    let opcodes = proptest::sample::select(vec![
        0x00u8, 0x01, 0x02, 0x04, 0x05, 0x06, 0x08, 0x09, 0x0a, 0x0c, 0x18, 0x7f,
    ]);
    (
        any_sqe(),
        opcodes,
        proptest::sample::select(vec![0x00u8, 0x40, 0x80]),
        0u8..10,
    )
        .prop_map(|(mut s, opc, flags, fctype)| {
            s.0[0] = opc;
            s.0[1] = flags;
            s.0[4] = fctype;
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic(s in any_sqe()) {
        let _ = parse_admin(&s);
        let _ = parse_io(&s);
        let _ = parse_fabrics(&s);
        let _ = parse(&s, QueueKind::Admin);
        let _ = parse(&s, QueueKind::Io);
    }

    #[test]
    fn parsed_commands_rebuild_to_the_same_command(s in plausible_sqe(), lba_shift in 9u32..13) {
        let lba = 1u32 << lba_shift;
        for kind in [QueueKind::Admin, QueueKind::Io] {
            let Ok(c) = parse(&s, kind) else { continue };
            let dir = match &c {
                Command::Admin(a) => a.data_dir(),
                Command::Io(i) => i.data_dir(lba),
                Command::Fabrics(f) => f.data_dir(),
            };
            let _ = check_sgl(&s, dir);
            let sgl = SglDescriptor::transport(u32::try_from(dir.len()).unwrap_or(u32::MAX));
            let rebuilt = match &c {
                Command::Admin(a) => a.to_sqe(s.cid(), sgl),
                Command::Io(i) => i.to_sqe(s.cid(), sgl),
                Command::Fabrics(f) => f.to_sqe(s.cid(), sgl),
            };
            prop_assert_eq!(parse(&rebuilt, kind), Ok(c.clone()));
            prop_assert_eq!(rebuilt.cid(), s.cid());
        }
    }

    #[test]
    fn rw_builder_round_trips(
        nsid in any::<u32>(), slba in any::<u64>(), nlb in 1u32..=65536, fua: bool, lr: bool,
        dsm: u8, dspec: u16, dtype in 0u8..16, generation: u64, op in 0usize..4,
    ) {
        let rw = Rw { fua, lr, dsm, dspec, dtype: if op == 0 { dtype } else { 0 }, ..Rw::new(nsid, slba, nlb, generation) };
        let c = [IoCommand::Write(rw), IoCommand::Read(rw), IoCommand::Compare(rw), IoCommand::Verify(rw)][op];
        let s = c.to_sqe(3, SglDescriptor::transport(0));
        prop_assert_eq!(parse_io(&s), Ok(c));
        prop_assert_eq!(c.generation().map_or(0, NonZeroU64::get), generation);
    }

    #[test]
    fn get_log_page_builder_round_trips(
        lid: u8, lsp in 0u8..128, rae: bool, numd in 0u32.., lsi: u16, lpo_dw in 0u64..(1 << 40),
        uuid_index in 0u8..128, csi: u8, nsid: u32,
    ) {
        let g = GetLogPage {
            nsid, lid, lsp, rae, numd_bytes: (u64::from(numd) + 1) * 4, lsi, lpo: lpo_dw * 4,
            uuid_index, csi,
        };
        let s = AdminCommand::GetLogPage(g).to_sqe(1, SglDescriptor::transport(0));
        prop_assert_eq!(parse_admin(&s), Ok(AdminCommand::GetLogPage(g)));
    }

    #[test]
    fn connect_builder_round_trips(qid: u16, sqsize: u16, cattr: u8, kato_ms: u32) {
        let c = Connect { recfmt: 0, qid, sqsize, cattr, kato_ms };
        let s = c.to_sqe(9, SglDescriptor::in_capsule(1024));
        prop_assert_eq!(parse_fabrics(&s), Ok(FabricsCommand::Connect(c)));
        prop_assert_eq!(cmd::check_sgl(&s, DataDir::HostToCtrl(1024)), Ok(Some(SglDescriptor::in_capsule(1024))));
    }
}
