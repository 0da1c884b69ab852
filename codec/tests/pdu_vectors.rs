//! Byte-exact vectors for every NVMe/TCP PDU type, built field by field from the NVMe/TCP
//! Transport Specification 1.0 (section 3.6) and checked against what the Linux host
//! (drivers/nvme/host/tcp.c) sends and expects. Each vector is decoded by the receiving side and
//! encoded by the sending side, and both must agree with the bytes.
#![allow(clippy::unwrap_used, clippy::panic, clippy::cast_possible_truncation)]

use bytes::{Bytes, BytesMut};
use codec::nvme::{Cqe, Sqe};
use codec::pdu::{
    C2HData, CapsuleCmd, CapsuleResp, ConnParams, Fes, H2CData, IcReq, IcResp, Pdu, PduCodec, R2T,
    Role, TermReq, crc32c,
};
use tokio_util::codec::{Decoder, Encoder};

/// Little-endian helpers to spell vectors field by field.
fn le16(v: u16) -> [u8; 2] {
    v.to_le_bytes()
}
fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

/// Common header (section 3.6.1, Figure 8): PDU-Type, FLAGS, HLEN, PDO, PLEN.
fn ch(ty: u8, flags: u8, hlen: u8, pdo: u8, plen: u32) -> Vec<u8> {
    let mut v = vec![ty, flags, hlen, pdo];
    v.extend_from_slice(&le32(plen));
    v
}

fn params(hdgst: bool, ddgst: bool) -> ConnParams {
    ConnParams {
        hdgst,
        ddgst,
        ..ConnParams::default()
    }
}

/// `bytes`, sent by `receiver.peer()`, decodes on `receiver` to `pdu`, and `pdu` encodes (on the
/// sender) to exactly `bytes`; also split at every byte boundary.
fn check(receiver: Role, p: ConnParams, established: bool, bytes: &[u8], pdu: &Pdu) {
    let new = |role| {
        if established {
            PduCodec::new_established(role, p)
        } else {
            PduCodec::new(role, p)
        }
    };
    // Encode.
    let mut out = BytesMut::new();
    new(receiver.peer()).encode(pdu.clone(), &mut out).unwrap();
    assert_eq!(&out[..], bytes, "encoding of {pdu:?}");
    // Decode whole.
    let mut rx = new(receiver);
    let mut buf = BytesMut::from(bytes);
    assert_eq!(rx.decode(&mut buf).unwrap().as_ref(), Some(pdu));
    assert!(buf.is_empty());
    // Decode split at every boundary: need-more until the last byte, then the same PDU.
    for cut in 0..bytes.len() {
        let mut rx = new(receiver);
        let mut buf = BytesMut::from(&bytes[..cut]);
        assert!(rx.decode(&mut buf).unwrap().is_none(), "cut at {cut}");
        assert_eq!(buf.len(), cut);
        buf.extend_from_slice(&bytes[cut..]);
        assert_eq!(
            rx.decode(&mut buf).unwrap().as_ref(),
            Some(pdu),
            "cut at {cut}"
        );
    }
}

fn sample_sqe() -> Sqe {
    let mut b = [0u8; 64];
    for (i, x) in b.iter_mut().enumerate() {
        *x = i as u8;
    }
    Sqe(b)
}

fn sample_cqe() -> Cqe {
    let mut b = [0u8; 16];
    for (i, x) in b.iter_mut().enumerate() {
        *x = 0xA0 + i as u8;
    }
    Cqe(b)
}

#[test]
fn icreq_from_linux_host_with_header_digest() {
    // Linux nvme_tcp_init_connection: HLEN = PLEN = 128, PDO 0, flags 0, PFV 0, HPDA 0,
    // DGST bit 0 for `-g`, MAXR2T 0.
    let mut v = ch(0x00, 0x00, 128, 0, 128);
    v.extend_from_slice(&le16(0)); // PFV (byte 8)
    v.push(0); // HPDA (byte 10)
    v.push(0b01); // DGST: HDGST_ENABLE (byte 11)
    v.extend_from_slice(&le32(0)); // MAXR2T (byte 12)
    v.resize(128, 0); // reserved (bytes 16..128)
    let pdu = Pdu::IcReq(IcReq {
        pfv: 0,
        hpda: 0,
        hdgst: true,
        ddgst: false,
        maxr2t: 0,
    });
    check(Role::Target, ConnParams::default(), false, &v, &pdu);
}

#[test]
fn icresp_as_linux_host_requires() {
    // CPDA 0, digests as asked, MAXH2CDATA >= 4096 and a multiple of 4.
    let mut v = ch(0x01, 0x00, 128, 0, 128);
    v.extend_from_slice(&le16(0)); // PFV
    v.push(0); // CPDA
    v.push(0b11); // DGST: HDGST_ENABLE | DDGST_ENABLE
    v.extend_from_slice(&le32(0x0002_0000)); // MAXH2CDATA 128 KiB
    v.resize(128, 0);
    let pdu = Pdu::IcResp(IcResp {
        pfv: 0,
        cpda: 0,
        hdgst: true,
        ddgst: true,
        maxh2cdata: 131072,
    });
    check(Role::Host, ConnParams::default(), false, &v, &pdu);
}

#[test]
fn term_reqs_both_directions() {
    // Figure 16: FES (8), FEI (10), reserved (14..24), then the offending header.
    let offending = [0x04u8, 0x00, 0x48, 0x00, 0x48, 0x00, 0x00, 0x00];
    let mut v = ch(0x03, 0, 24, 0, 24 + 8);
    v.extend_from_slice(&le16(0x0001)); // FES: Invalid PDU Header Field
    v.extend_from_slice(&le32(2)); // FEI: offset of HLEN
    v.resize(24, 0);
    v.extend_from_slice(&offending);
    let t = TermReq {
        fes: Fes::INVALID_PDU_HEADER_FIELD,
        fei: 2,
        data: Bytes::copy_from_slice(&offending),
    };
    // A TermReq may arrive before the IC exchange (a rejected ICReq), and with digests
    // negotiated it still carries none.
    check(
        Role::Host,
        ConnParams::default(),
        false,
        &v,
        &Pdu::C2HTermReq(t.clone()),
    );
    check(
        Role::Host,
        params(true, true),
        true,
        &v,
        &Pdu::C2HTermReq(t.clone()),
    );
    v[0] = 0x02;
    check(
        Role::Target,
        params(true, true),
        true,
        &v,
        &Pdu::H2CTermReq(t),
    );
}

#[test]
fn capsule_cmd_without_data_as_linux_sends_it() {
    // nvme_tcp_setup_cmd_pdu: no data => PDO 0, no DDGSTF even with data digests on.
    let mut v = ch(0x04, 0, 72, 0, 72);
    v.extend_from_slice(&sample_sqe().0);
    let pdu = Pdu::CapsuleCmd(CapsuleCmd {
        sqe: sample_sqe(),
        data: Bytes::new(),
    });
    check(Role::Target, ConnParams::default(), true, &v, &pdu);
    check(Role::Target, params(false, true), true, &v, &pdu);

    // Header digest on: HDGSTF, PLEN 76, digest over the 72 header bytes.
    let mut v = ch(0x04, 0x01, 72, 0, 76);
    v.extend_from_slice(&sample_sqe().0);
    let d = crc32c(&v);
    v.extend_from_slice(&le32(d));
    check(Role::Target, params(true, true), true, &v, &pdu);
}

#[test]
fn capsule_cmd_with_in_capsule_data_and_both_digests() {
    // Linux: PDO = HLEN + HDGST = 76, PLEN = 72 + 4 + len + 4.
    let data = b"in-capsule data!";
    let mut v = ch(0x04, 0x03, 72, 76, 72 + 4 + 16 + 4);
    v.extend_from_slice(&sample_sqe().0);
    let hd = crc32c(&v);
    v.extend_from_slice(&le32(hd));
    v.extend_from_slice(data);
    v.extend_from_slice(&le32(crc32c(data)));
    let pdu = Pdu::CapsuleCmd(CapsuleCmd {
        sqe: sample_sqe(),
        data: Bytes::from_static(data),
    });
    check(Role::Target, params(true, true), true, &v, &pdu);
}

#[test]
fn capsule_cmd_padded_to_cpda() {
    // CPDA 3: data aligned to 16 bytes; header 72 + digest 4 = 76 -> PDO 80, 4 bytes of PAD.
    let p = ConnParams {
        cpda: 3,
        ..params(true, false)
    };
    let data = [0x5Au8; 12];
    let mut v = ch(0x04, 0x01, 72, 80, 80 + 12);
    v.extend_from_slice(&sample_sqe().0);
    let hd = crc32c(&v);
    v.extend_from_slice(&le32(hd));
    v.extend_from_slice(&[0; 4]); // PAD
    v.extend_from_slice(&data);
    let pdu = Pdu::CapsuleCmd(CapsuleCmd {
        sqe: sample_sqe(),
        data: Bytes::copy_from_slice(&data),
    });
    check(Role::Target, p, true, &v, &pdu);
}

#[test]
fn capsule_resp() {
    let mut v = ch(0x05, 0, 24, 0, 24);
    v.extend_from_slice(&sample_cqe().0);
    let pdu = Pdu::CapsuleResp(CapsuleResp { cqe: sample_cqe() });
    check(Role::Host, params(false, true), true, &v, &pdu);

    let mut v = ch(0x05, 0x01, 24, 0, 28);
    v.extend_from_slice(&sample_cqe().0);
    let d = crc32c(&v);
    v.extend_from_slice(&le32(d));
    check(Role::Host, params(true, true), true, &v, &pdu);
}

#[test]
fn h2c_data_as_linux_sends_it() {
    // nvme_tcp_setup_h2c_data_pdu: LAST_PDU on the last, PDO = HLEN + HDGST,
    // PLEN = HLEN + HDGST + len + DDGST.
    let data = [0xC3u8; 32];
    let mut v = ch(0x06, 0x04 | 0x01 | 0x02, 24, 28, 24 + 4 + 32 + 4);
    v.extend_from_slice(&le16(0x1234)); // CCCID
    v.extend_from_slice(&le16(0x0007)); // TTAG
    v.extend_from_slice(&le32(4096)); // DATAO
    v.extend_from_slice(&le32(32)); // DATAL
    v.extend_from_slice(&[0; 4]); // reserved
    let hd = crc32c(&v);
    v.extend_from_slice(&le32(hd));
    v.extend_from_slice(&data);
    v.extend_from_slice(&le32(crc32c(&data)));
    let pdu = Pdu::H2CData(H2CData {
        cccid: 0x1234,
        ttag: 7,
        datao: 4096,
        last: true,
        data: Bytes::copy_from_slice(&data),
    });
    check(Role::Target, params(true, true), true, &v, &pdu);

    // No digests, not last.
    let mut v = ch(0x06, 0, 24, 24, 24 + 32);
    v.extend_from_slice(&le16(0x1234));
    v.extend_from_slice(&le16(0x0007));
    v.extend_from_slice(&le32(0));
    v.extend_from_slice(&le32(32));
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&data);
    let pdu = Pdu::H2CData(H2CData {
        cccid: 0x1234,
        ttag: 7,
        datao: 0,
        last: false,
        data: Bytes::copy_from_slice(&data),
    });
    check(Role::Target, ConnParams::default(), true, &v, &pdu);
}

#[test]
fn c2h_data_with_success_and_last() {
    // The Linux host reads C2HData data right after HLEN + HDGST (HPDA 0): PDO must be 24/28.
    let data = b"0123456789abcdef";
    let mut v = ch(0x07, 0x08 | 0x04 | 0x01, 24, 28, 24 + 4 + 16);
    v.extend_from_slice(&le16(0x0042)); // CCCID
    v.extend_from_slice(&[0; 2]); // reserved
    v.extend_from_slice(&le32(0)); // DATAO
    v.extend_from_slice(&le32(16)); // DATAL
    v.extend_from_slice(&[0; 4]);
    let hd = crc32c(&v);
    v.extend_from_slice(&le32(hd));
    v.extend_from_slice(data);
    let pdu = Pdu::C2HData(C2HData {
        cccid: 0x42,
        datao: 0,
        last: true,
        success: true,
        data: Bytes::from_static(data),
    });
    check(Role::Host, params(true, false), true, &v, &pdu);
}

#[test]
fn c2h_data_padded_to_hpda() {
    // HPDA 7: 32-byte alignment; header 24 -> PDO 32 with 8 bytes of PAD; DDGST after data.
    let p = ConnParams {
        hpda: 7,
        ..params(false, true)
    };
    let data = [1u8, 2, 3, 4, 5];
    let mut v = ch(0x07, 0x02, 24, 32, 32 + 5 + 4);
    v.extend_from_slice(&le16(9));
    v.extend_from_slice(&[0; 2]);
    v.extend_from_slice(&le32(512));
    v.extend_from_slice(&le32(5));
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&[0; 8]); // PAD
    v.extend_from_slice(&data);
    v.extend_from_slice(&le32(crc32c(&data)));
    let pdu = Pdu::C2HData(C2HData {
        cccid: 9,
        datao: 512,
        last: false,
        success: false,
        data: Bytes::copy_from_slice(&data),
    });
    check(Role::Host, p, true, &v, &pdu);
}

#[test]
fn r2t() {
    let mut v = ch(0x09, 0, 24, 0, 24);
    v.extend_from_slice(&le16(0x0101)); // CCCID
    v.extend_from_slice(&le16(0x0202)); // TTAG
    v.extend_from_slice(&le32(8192)); // R2TO
    v.extend_from_slice(&le32(65536)); // R2TL
    v.extend_from_slice(&[0; 4]);
    let pdu = Pdu::R2T(R2T {
        cccid: 0x0101,
        ttag: 0x0202,
        r2to: 8192,
        r2tl: 65536,
    });
    check(Role::Host, ConnParams::default(), true, &v, &pdu);

    let mut with_digest = v.clone();
    with_digest[1] = 0x01;
    with_digest[4] = 28;
    let d = crc32c(&with_digest[..24]);
    with_digest.extend_from_slice(&le32(d));
    check(Role::Host, params(true, true), true, &with_digest, &pdu);
}

#[test]
fn zero_copy_encode_head_matches_encode() {
    let p = ConnParams {
        hpda: 3,
        ..params(true, true)
    };
    let data = Bytes::from(vec![0xEEu8; 4096]);
    let pdu = Pdu::C2HData(C2HData {
        cccid: 1,
        datao: 0,
        last: true,
        success: true,
        data: data.clone(),
    });
    let mut codec = PduCodec::new_established(Role::Target, p);
    let mut head = BytesMut::new();
    let tail = codec.encode_head(&pdu, &mut head).unwrap().unwrap();
    // The data is the caller's allocation, not a copy.
    assert_eq!(tail.data.as_ptr(), data.as_ptr());
    assert_eq!(head.len(), 32); // 24 + 4 digest, padded to 16
    assert_eq!(tail.trailer(), &crc32c(&data).to_le_bytes());
    let mut whole = BytesMut::new();
    codec.encode(pdu, &mut whole).unwrap();
    let mut cat = head.to_vec();
    cat.extend_from_slice(&tail.data);
    cat.extend_from_slice(tail.trailer());
    assert_eq!(&whole[..], &cat[..]);
    // Header-only PDUs have no tail.
    let mut head = BytesMut::new();
    let r = Pdu::R2T(R2T {
        cccid: 1,
        ttag: 1,
        r2to: 0,
        r2tl: 1,
    });
    assert!(codec.encode_head(&r, &mut head).unwrap().is_none());
    assert_eq!(head.len(), 28);
}

#[test]
fn decode_does_not_copy_data() {
    let data = vec![7u8; 1000];
    let mut wire = BytesMut::new();
    let pdu = Pdu::H2CData(H2CData {
        cccid: 3,
        ttag: 4,
        datao: 0,
        last: true,
        data: Bytes::from(data),
    });
    PduCodec::new_established(Role::Host, ConnParams::default())
        .encode(pdu, &mut wire)
        .unwrap();
    let base = wire.as_ptr() as usize;
    let Some(Pdu::H2CData(d)) = PduCodec::new_established(Role::Target, ConnParams::default())
        .decode(&mut wire)
        .unwrap()
    else {
        panic!("expected H2CData")
    };
    // The data is a slice of the receive buffer, 24 bytes in.
    assert_eq!(d.data.as_ptr() as usize, base + 24);
}

#[test]
fn pdu_type_and_fes_codes_round_trip() {
    use codec::pdu::PduType;
    let expect = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x09];
    for (t, v) in PduType::ALL.iter().zip(expect) {
        assert_eq!(t.0, v);
        assert_eq!(PduType(t.0), *t);
        assert!(t.name().is_some());
    }
    assert_eq!(PduType(0x08).name(), None);
    assert_eq!(format!("{:?}", PduType(0x42)), "PduType(0x42)");
    for (f, v) in Fes::ALL.iter().zip(1u16..) {
        assert_eq!(f.0, v);
        assert!(f.name().is_some());
    }
    assert_eq!(Fes(0x77).name(), None);
}
