//! `encode_head_owned` writes exactly what `encode_head` writes and hands the data over uncloned.
#![allow(clippy::unwrap_used, clippy::panic)]

use bytes::{Bytes, BytesMut};
use codec::pdu::{C2HData, ConnParams, Pdu, PduCodec, Role};

#[test]
fn owned_encoding_matches_borrowed_and_moves_the_buffer() {
    for (hdgst, ddgst) in [(false, false), (true, true)] {
        let params = ConnParams {
            hdgst,
            ddgst,
            ..ConnParams::default()
        };
        let data = Bytes::from(vec![0xA5u8; 4096]);
        let ptr = data.as_ptr();
        let pdu = Pdu::C2HData(C2HData {
            cccid: 7,
            datao: 0,
            last: true,
            success: true,
            data,
        });
        let mut a = PduCodec::new_established(Role::Target, params);
        let mut b = PduCodec::new_established(Role::Target, params);
        let (mut ha, mut hb) = (BytesMut::new(), BytesMut::new());
        let ta = a.encode_head(&pdu, &mut ha).unwrap().unwrap();
        drop(ta);
        let tb = b.encode_head_owned(pdu, &mut hb).unwrap().unwrap();
        assert_eq!(ha, hb, "header areas differ");
        assert_eq!(tb.data.as_ptr(), ptr, "data was copied");
        assert_eq!(tb.trailer().len(), if ddgst { 4 } else { 0 });
        // The only handle left: the buffer can be reclaimed.
        assert!(tb.data.try_into_mut().is_ok(), "data handle is shared");
    }
}

/// A C2HData header encoded for data the caller sends itself, followed by that data, is the
/// same wire bytes as the whole PDU encoded normally; with data digests on it is refused.
#[test]
fn external_c2h_head_matches_the_full_encoding() {
    for hdgst in [false, true] {
        let params = ConnParams {
            hdgst,
            ..ConnParams::default()
        };
        let data = Bytes::from((0..8192u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let head = C2HData {
            cccid: 9,
            datao: 0,
            last: true,
            success: true,
            data: Bytes::new(),
        };
        let mut full = BytesMut::new();
        let mut a = PduCodec::new_established(Role::Target, params);
        let tail = a
            .encode_head_owned(
                Pdu::C2HData(C2HData {
                    data: data.clone(),
                    ..head.clone()
                }),
                &mut full,
            )
            .unwrap()
            .unwrap();
        full.extend_from_slice(&tail.data);
        let mut ext = BytesMut::new();
        let mut b = PduCodec::new_established(Role::Target, params);
        b.encode_c2h_head_external(&head, data.len(), &mut ext)
            .unwrap();
        ext.extend_from_slice(&data);
        assert_eq!(full, ext, "hdgst {hdgst}: wire bytes differ");
        // And the host side decodes it back.
        let mut host = PduCodec::new_established(Role::Host, params);
        let pdu = tokio_util::codec::Decoder::decode(&mut host, &mut ext)
            .unwrap()
            .unwrap();
        match pdu {
            Pdu::C2HData(d) => {
                assert_eq!(d.data, data);
                assert!(d.success && d.last);
            }
            other => panic!("decoded {other:?}"),
        }
    }
    let params = ConnParams {
        ddgst: true,
        ..ConnParams::default()
    };
    let mut c = PduCodec::new_established(Role::Target, params);
    let head = C2HData {
        cccid: 1,
        datao: 0,
        last: true,
        success: false,
        data: Bytes::new(),
    };
    assert!(
        c.encode_c2h_head_external(&head, 4096, &mut BytesMut::new())
            .is_err(),
        "a data digest cannot be computed over data the codec does not see"
    );
    assert!(
        PduCodec::new_established(Role::Target, ConnParams::default())
            .encode_c2h_head_external(&head, 0, &mut BytesMut::new())
            .is_err(),
        "zero-length external data"
    );
}
