//! Every kind of malformed input gets a typed error with the FES and FEI the spec asks for
//! (NVMe/TCP 1.0, section 3.6.2.4, Figure 14): FEI is the byte offset of the offending field for
//! Invalid PDU Header Field and Unsupported Parameter, the received digest for Header Digest
//! Error, 0 otherwise.
#![allow(clippy::unwrap_used, clippy::panic)]

use bytes::{Bytes, BytesMut};
use codec::nvme::Sqe;
use codec::pdu::{
    C2HData, CapsuleCmd, ConnParams, Fes, H2CData, IcReq, IcResp, Pdu, PduCodec, PduError, PduType,
    R2T, Role, crc32c, decode_one,
};
use tokio_util::codec::{Decoder, Encoder};

fn encode(sender: Role, p: ConnParams, pdu: Pdu) -> Vec<u8> {
    let mut out = BytesMut::new();
    PduCodec::new_established(sender, p)
        .encode(pdu, &mut out)
        .unwrap();
    out.to_vec()
}

fn cmd(data: &[u8]) -> Pdu {
    let mut sqe = Sqe::default();
    sqe.set_cid(0x77);
    Pdu::CapsuleCmd(CapsuleCmd {
        sqe,
        data: Bytes::copy_from_slice(data),
    })
}

fn h2c(data: &[u8]) -> Pdu {
    Pdu::H2CData(H2CData {
        cccid: 5,
        ttag: 6,
        datao: 0,
        last: true,
        data: Bytes::copy_from_slice(data),
    })
}

#[track_caller]
fn expect_fatal(r: Result<Option<(Pdu, usize)>, PduError>, fes: Fes, fei: u32) -> Bytes {
    match r {
        Err(PduError::Fatal {
            fes: f,
            fei: i,
            header,
            what,
        }) => {
            assert_eq!((f, i), (fes, fei), "{what}");
            assert!(header.len() <= 128);
            header
        }
        other => panic!("expected Fatal {fes:?}/{fei}, got {other:?}"),
    }
}

fn target(p: ConnParams, b: &[u8]) -> Result<Option<(Pdu, usize)>, PduError> {
    decode_one(Role::Target, &p, b)
}

fn host(p: ConnParams, b: &[u8]) -> Result<Option<(Pdu, usize)>, PduError> {
    decode_one(Role::Host, &p, b)
}

const D: ConnParams = ConnParams {
    hdgst: false,
    ddgst: false,
    cpda: 0,
    hpda: 0,
    max_pdu_len: 65536 + 255 + 4,
    max_h2c_data: 65536,
    max_incapsule_data: 8192,
};

#[test]
fn unknown_type() {
    let mut b = encode(Role::Host, D, cmd(b""));
    b[0] = 0x08;
    let h = expect_fatal(target(D, &b), Fes::INVALID_PDU_HEADER_FIELD, 0);
    assert_eq!(&h[..], &b[..72], "the TermReq data is the offending header");
    b[0] = 0xFF;
    expect_fatal(target(D, &b), Fes::INVALID_PDU_HEADER_FIELD, 0);
}

#[test]
fn wrong_direction() {
    let r2t = encode(
        Role::Target,
        D,
        Pdu::R2T(R2T {
            cccid: 1,
            ttag: 1,
            r2to: 0,
            r2tl: 1,
        }),
    );
    expect_fatal(target(D, &r2t), Fes::INVALID_PDU_HEADER_FIELD, 0);
    let c = encode(Role::Host, D, cmd(b""));
    expect_fatal(host(D, &c), Fes::INVALID_PDU_HEADER_FIELD, 0);
}

#[test]
fn sequence_errors() {
    // Anything but ICReq first.
    let c = encode(Role::Host, D, cmd(b""));
    let mut fresh = PduCodec::new(Role::Target, D);
    expect_fatal(fresh.decode_slice(&c), Fes::PDU_SEQUENCE_ERROR, 0);
    // A second ICReq.
    let ic = encode(Role::Host, D, Pdu::IcReq(IcReq::default()));
    let mut t = PduCodec::new(Role::Target, D);
    assert!(matches!(
        t.decode_slice(&ic).unwrap(),
        Some((Pdu::IcReq(_), 128))
    ));
    assert!(t.is_established());
    expect_fatal(t.decode_slice(&ic), Fes::PDU_SEQUENCE_ERROR, 0);
    // Host side: anything but ICResp first, and a second ICResp.
    let resp = encode(
        Role::Target,
        D,
        Pdu::IcResp(IcResp {
            maxh2cdata: 4096,
            ..IcResp::default()
        }),
    );
    let r2t = encode(
        Role::Target,
        D,
        Pdu::R2T(R2T {
            cccid: 1,
            ttag: 1,
            r2to: 0,
            r2tl: 1,
        }),
    );
    expect_fatal(
        PduCodec::new(Role::Host, D).decode_slice(&r2t),
        Fes::PDU_SEQUENCE_ERROR,
        0,
    );
    expect_fatal(host(D, &resp), Fes::PDU_SEQUENCE_ERROR, 0);
}

#[test]
fn flags_not_allowed() {
    // LAST_PDU on a CapsuleCmd.
    let mut b = encode(Role::Host, D, cmd(b""));
    b[1] = 0x04;
    expect_fatal(target(D, &b), Fes::INVALID_PDU_HEADER_FIELD, 1);
    // SUCCESS on H2CData.
    let mut b = encode(Role::Host, D, h2c(b"abcd"));
    b[1] |= 0x08;
    expect_fatal(target(D, &b), Fes::INVALID_PDU_HEADER_FIELD, 1);
    // Any flag on an ICReq.
    let mut b = encode(Role::Host, D, Pdu::IcReq(IcReq::default()));
    b[1] = 0x01;
    expect_fatal(
        PduCodec::new(Role::Target, D).decode_slice(&b),
        Fes::INVALID_PDU_HEADER_FIELD,
        1,
    );
    // SUCCESS without LAST_PDU on C2HData.
    let c2h = Pdu::C2HData(C2HData {
        cccid: 1,
        datao: 0,
        last: true,
        success: true,
        data: Bytes::from_static(b"xy"),
    });
    let mut b = encode(Role::Target, D, c2h);
    b[1] &= !0x04;
    expect_fatal(host(D, &b), Fes::INVALID_PDU_HEADER_FIELD, 1);
}

#[test]
fn digest_flags_must_match_negotiation() {
    let hd = ConnParams { hdgst: true, ..D };
    let dd = ConnParams { ddgst: true, ..D };
    // Header digest negotiated but HDGSTF clear (the Linux host checks the same).
    let b = encode(Role::Host, D, cmd(b""));
    expect_fatal(target(hd, &b), Fes::INVALID_PDU_HEADER_FIELD, 1);
    // HDGSTF set but not negotiated.
    let b = encode(Role::Host, hd, cmd(b""));
    expect_fatal(target(D, &b), Fes::INVALID_PDU_HEADER_FIELD, 1);
    // Data digest negotiated, data present, DDGSTF clear.
    let b = encode(Role::Host, D, cmd(b"data"));
    expect_fatal(target(dd, &b), Fes::INVALID_PDU_HEADER_FIELD, 1);
    // DDGSTF on a PDU without data.
    let mut b = encode(Role::Host, dd, cmd(b""));
    b[1] |= 0x02;
    expect_fatal(target(dd, &b), Fes::INVALID_PDU_HEADER_FIELD, 1);
}

#[test]
fn bad_hlen() {
    let mut b = encode(Role::Host, D, cmd(b""));
    b[2] = 24;
    expect_fatal(target(D, &b), Fes::INVALID_PDU_HEADER_FIELD, 2);
    let mut b = encode(
        Role::Target,
        D,
        Pdu::R2T(R2T {
            cccid: 1,
            ttag: 1,
            r2to: 0,
            r2tl: 1,
        }),
    );
    b[2] = 128;
    expect_fatal(host(D, &b), Fes::INVALID_PDU_HEADER_FIELD, 2);
}

#[test]
fn bad_pdo() {
    // Inside the header.
    let mut b = encode(Role::Host, D, cmd(b"abcdefgh"));
    assert_eq!(b[3], 72);
    b[3] = 68;
    expect_fatal(target(D, &b), Fes::INVALID_PDU_HEADER_FIELD, 3);
    // Misaligned for CPDA 3 (16 bytes): 72 is not a multiple of 16.
    let b = encode(Role::Host, D, cmd(b"abcdefgh"));
    expect_fatal(
        target(ConnParams { cpda: 3, ..D }, &b),
        Fes::INVALID_PDU_HEADER_FIELD,
        3,
    );
    // Past PLEN.
    let mut b = encode(Role::Host, D, h2c(b"abcd"));
    b[3] = 252;
    expect_fatal(target(D, &b), Fes::INVALID_PDU_HEADER_FIELD, 3);
    // Data present but PDO 0.
    let mut b = encode(Role::Host, D, h2c(b"abcd"));
    b[3] = 0;
    expect_fatal(target(D, &b), Fes::INVALID_PDU_HEADER_FIELD, 3);
    // PDO on a PDU that carries no data.
    let mut b = encode(
        Role::Target,
        D,
        Pdu::R2T(R2T {
            cccid: 1,
            ttag: 1,
            r2to: 0,
            r2tl: 1,
        }),
    );
    b[3] = 24;
    expect_fatal(host(D, &b), Fes::INVALID_PDU_HEADER_FIELD, 3);
}

#[test]
fn bad_plen() {
    // Shorter than the header.
    let mut b = encode(Role::Host, D, cmd(b""));
    b[4] = 71;
    expect_fatal(target(D, &b), Fes::INVALID_PDU_HEADER_FIELD, 4);
    // Longer than a fixed-size PDU.
    let mut b = encode(
        Role::Target,
        D,
        Pdu::R2T(R2T {
            cccid: 1,
            ttag: 1,
            r2to: 0,
            r2tl: 1,
        }),
    );
    b[4] = 25;
    expect_fatal(host(D, &b), Fes::INVALID_PDU_HEADER_FIELD, 4);
    // An IC PDU must be exactly 128.
    let mut b = encode(Role::Host, D, Pdu::IcReq(IcReq::default()));
    b[4] = 129;
    expect_fatal(
        PduCodec::new(Role::Target, D).decode_slice(&b),
        Fes::INVALID_PDU_HEADER_FIELD,
        4,
    );
    // Data digest but nothing between PDO and the digest.
    let dd = ConnParams { ddgst: true, ..D };
    let mut b = encode(Role::Host, dd, h2c(b"abcd"));
    b[4..8].copy_from_slice(&(24u32 + 4).to_le_bytes());
    expect_fatal(target(dd, &b), Fes::INVALID_PDU_HEADER_FIELD, 4);
}

#[test]
fn plen_above_limit_is_refused_before_reserving() {
    let mut b = encode(Role::Host, D, h2c(b"abcd"));
    b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut codec = PduCodec::new_established(Role::Target, D);
    let mut buf = BytesMut::from(&b[..8]);
    let cap = buf.capacity();
    match codec.decode(&mut buf) {
        Err(PduError::Fatal { fes, .. }) => assert_eq!(fes, Fes::DATA_LIMIT_EXCEEDED),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        buf.capacity(),
        cap,
        "nothing reserved for a PLEN over the limit"
    );
    // A PLEN within the limit makes the decoder reserve exactly up to it.
    let ok = encode(Role::Host, D, h2c(&[0u8; 3000]));
    let mut codec = PduCodec::new_established(Role::Target, D);
    let mut buf = BytesMut::from(&ok[..8]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert!(buf.capacity() >= ok.len());
}

#[test]
fn data_limits() {
    // In-capsule data above the limit.
    let small = ConnParams {
        max_incapsule_data: 16,
        ..D
    };
    let b = encode(Role::Host, D, cmd(&[0u8; 17]));
    expect_fatal(target(small, &b), Fes::DATA_LIMIT_EXCEEDED, 0);
    assert!(
        target(small, &encode(Role::Host, D, cmd(&[0u8; 16])))
            .unwrap()
            .is_some()
    );
    // H2CData above MAXH2CDATA.
    let small = ConnParams {
        max_h2c_data: 4096,
        ..D
    };
    let b = encode(Role::Host, D, h2c(&[0u8; 4100]));
    expect_fatal(target(small, &b), Fes::DATA_LIMIT_EXCEEDED, 0);
}

#[test]
fn datal_inconsistent_with_plen() {
    let mut b = encode(Role::Host, D, h2c(b"abcdefgh"));
    b[16..20].copy_from_slice(&7u32.to_le_bytes());
    expect_fatal(target(D, &b), Fes::INVALID_PDU_HEADER_FIELD, 16);
    // DATAO + DATAL past 4 GiB.
    let mut b = encode(Role::Host, D, h2c(b"abcdefgh"));
    b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    expect_fatal(target(D, &b), Fes::DATA_OUT_OF_RANGE, 0);
}

#[test]
fn header_digest_mismatch_reports_the_received_digest() {
    let hd = ConnParams { hdgst: true, ..D };
    let mut b = encode(Role::Host, hd, cmd(b""));
    b[72..76].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
    expect_fatal(target(hd, &b), Fes::HDR_DIGEST_ERROR, 0xDEAD_BEEF);
    // A corrupted header byte is caught by the digest too.
    let mut b = encode(Role::Host, hd, cmd(b""));
    b[20] ^= 1;
    let received = u32::from_le_bytes(b[72..76].try_into().unwrap());
    expect_fatal(target(hd, &b), Fes::HDR_DIGEST_ERROR, received);
}

#[test]
fn data_digest_mismatch_is_per_command_and_keeps_the_stream() {
    let dd = ConnParams { ddgst: true, ..D };
    let mut bad = encode(Role::Host, dd, cmd(b"payload!"));
    let n = bad.len();
    bad[n - 1] ^= 0xFF;
    let good = encode(Role::Host, dd, h2c(b"more"));
    let mut buf = BytesMut::from(&bad[..]);
    buf.extend_from_slice(&good);
    let mut codec = PduCodec::new_established(Role::Target, dd);
    match codec.decode(&mut buf) {
        Err(PduError::DataDigest {
            pdu_type,
            cccid,
            computed,
            ..
        }) => {
            assert_eq!(pdu_type, PduType::CAPSULE_CMD);
            assert_eq!(cccid, 0x77);
            assert_eq!(computed, crc32c(b"payload!"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        codec.decode(&mut buf).unwrap(),
        Some(Pdu::H2CData(_))
    ));
}

#[test]
fn ic_unsupported_parameters() {
    let fresh = || PduCodec::new(Role::Target, D);
    let mut b = encode(Role::Host, D, Pdu::IcReq(IcReq::default()));
    b[8] = 1; // PFV
    expect_fatal(fresh().decode_slice(&b), Fes::UNSUPPORTED_PARAMETER, 8);
    let mut b = encode(Role::Host, D, Pdu::IcReq(IcReq::default()));
    b[10] = 32; // HPDA
    expect_fatal(fresh().decode_slice(&b), Fes::UNSUPPORTED_PARAMETER, 10);
    // Host side: MAXH2CDATA below 4096 / not a multiple of 4, CPDA above 31.
    let resp = |m: u32, cpda: u8| {
        let mut b = encode(
            Role::Target,
            D,
            Pdu::IcResp(IcResp {
                maxh2cdata: 8192,
                ..IcResp::default()
            }),
        );
        b[12..16].copy_from_slice(&m.to_le_bytes());
        b[10] = cpda;
        PduCodec::new(Role::Host, D).decode_slice(&b)
    };
    expect_fatal(resp(4095, 0), Fes::UNSUPPORTED_PARAMETER, 12);
    expect_fatal(resp(4098, 0), Fes::UNSUPPORTED_PARAMETER, 12);
    expect_fatal(resp(4096, 32), Fes::UNSUPPORTED_PARAMETER, 10);
    assert!(resp(4096, 31).unwrap().is_some());
}

#[test]
fn r2t_length_zero() {
    let mut b = encode(
        Role::Target,
        D,
        Pdu::R2T(R2T {
            cccid: 1,
            ttag: 1,
            r2to: 0,
            r2tl: 1,
        }),
    );
    b[16..20].copy_from_slice(&0u32.to_le_bytes());
    expect_fatal(host(D, &b), Fes::INVALID_PDU_HEADER_FIELD, 16);
}

#[test]
fn malformed_term_req_aborts_without_term_req() {
    let t = Pdu::H2CTermReq(codec::pdu::TermReq {
        fes: Fes::PDU_SEQUENCE_ERROR,
        fei: 0,
        data: Bytes::new(),
    });
    let mut b = encode(Role::Host, D, t);
    b[4..8].copy_from_slice(&153u32.to_le_bytes());
    assert!(matches!(target(D, &b), Err(PduError::Abort { .. })));
    let mut b2 = b.clone();
    b2[4..8].copy_from_slice(&24u32.to_le_bytes());
    b2[1] = 0x01; // digests never apply to TermReq
    assert!(matches!(
        target(ConnParams { hdgst: true, ..D }, &b2),
        Err(PduError::Abort { .. })
    ));
}

#[test]
fn decoder_refuses_to_continue_after_a_fatal_error() {
    let mut codec = PduCodec::new_established(Role::Target, D);
    let mut b = encode(Role::Host, D, cmd(b""));
    b[0] = 0x0A;
    let mut buf = BytesMut::from(&b[..]);
    let e = codec.decode(&mut buf).unwrap_err();
    let term = e.term_req().unwrap();
    assert_eq!(term.fes, Fes::INVALID_PDU_HEADER_FIELD);
    let good = encode(Role::Host, D, cmd(b""));
    let mut buf = BytesMut::from(&good[..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(PduError::Abort { .. })
    ));
}

#[test]
fn term_req_for_fatal_encodes_as_c2h_term_req() {
    let mut b = encode(Role::Host, D, cmd(b""));
    b[2] = 80;
    let e = target(D, &b).unwrap_err();
    let term = e.term_req().unwrap();
    let wire = encode(Role::Target, D, Pdu::C2HTermReq(term));
    assert_eq!(&wire[..4], &[0x03, 0, 24, 0]);
    assert_eq!(u32::from_le_bytes(wire[4..8].try_into().unwrap()), 24 + 72);
    assert_eq!(&wire[8..10], &1u16.to_le_bytes());
    assert_eq!(&wire[10..14], &2u32.to_le_bytes());
    assert_eq!(&wire[24..], &b[..72]);
}

#[test]
fn encoder_refuses_what_this_side_may_not_send() {
    let mut t = PduCodec::new_established(Role::Target, D);
    let mut out = BytesMut::new();
    assert!(matches!(t.encode(cmd(b""), &mut out), Err(PduError::Io(_))));
    let bad = Pdu::C2HData(C2HData {
        cccid: 1,
        datao: 0,
        last: false,
        success: true,
        data: Bytes::from_static(b"x"),
    });
    assert!(matches!(t.encode(bad, &mut out), Err(PduError::Io(_))));
    assert!(
        t.encode(Pdu::R2T(R2T::default()), &mut out).is_err(),
        "R2TL 0"
    );
    let mut h = PduCodec::new_established(
        Role::Host,
        ConnParams {
            max_h2c_data: 4096,
            ..D
        },
    );
    assert!(h.encode(h2c(&[0; 4097]), &mut out).is_err());
    assert!(out.is_empty());
}

#[test]
fn need_more_on_every_prefix_of_a_header() {
    let b = encode(Role::Host, ConnParams { hdgst: true, ..D }, cmd(b"abc"));
    for cut in 0..b.len() {
        assert!(
            decode_one(Role::Target, &ConnParams { hdgst: true, ..D }, &b[..cut])
                .unwrap()
                .is_none()
        );
    }
}
