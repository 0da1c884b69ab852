//! `encode_head_owned` writes exactly what `encode_head` writes and hands the data over uncloned.
#![allow(clippy::unwrap_used)]

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
