//! Property tests: encode/decode round trips for arbitrary valid PDUs (digests on and off,
//! padding from CPDA/HPDA), streams split anywhere, and arbitrary bytes never panicking.
#![allow(clippy::unwrap_used, clippy::panic)]

use bytes::{Bytes, BytesMut};
use codec::nvme::{Cqe, Sqe};
use codec::pdu::{
    C2HData, CapsuleCmd, CapsuleResp, ConnParams, Fes, H2CData, IcReq, IcResp, Pdu, PduCodec,
    PduError, R2T, Role, TermReq, decode_one, fuzz,
};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

const MAX_DATA: u32 = 4096;

fn arb_params() -> impl Strategy<Value = ConnParams> {
    let pda = prop_oneof![Just(0u8), Just(1), Just(3), Just(7), Just(31)];
    (any::<bool>(), any::<bool>(), pda.clone(), pda).prop_map(|(hdgst, ddgst, cpda, hpda)| {
        ConnParams {
            hdgst,
            ddgst,
            cpda,
            hpda,
            max_pdu_len: ConnParams::derived_max_pdu_len(MAX_DATA, MAX_DATA),
            max_h2c_data: MAX_DATA,
            max_incapsule_data: MAX_DATA,
        }
    })
}

fn arb_data() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Bytes::new()),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Bytes::from),
        proptest::collection::vec(any::<u8>(), 1..=MAX_DATA as usize).prop_map(Bytes::from),
    ]
}

fn arb_term() -> impl Strategy<Value = TermReq> {
    (
        any::<u16>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..=128),
    )
        .prop_map(|(fes, fei, d)| TermReq {
            fes: Fes(fes),
            fei,
            data: Bytes::from(d),
        })
}

/// PDUs the host sends after the IC exchange (what a target decodes).
fn arb_host_pdu() -> impl Strategy<Value = Pdu> {
    prop_oneof![
        arb_term().prop_map(Pdu::H2CTermReq),
        (any::<[u8; 32]>(), any::<[u8; 32]>(), arb_data()).prop_map(|(a, b, data)| {
            let mut s = [0u8; 64];
            s[..32].copy_from_slice(&a);
            s[32..].copy_from_slice(&b);
            Pdu::CapsuleCmd(CapsuleCmd { sqe: Sqe(s), data })
        }),
        (
            any::<u16>(),
            any::<u16>(),
            0u32..u32::MAX / 2,
            any::<bool>(),
            arb_data()
        )
            .prop_map(|(cccid, ttag, datao, last, data)| Pdu::H2CData(H2CData {
                cccid,
                ttag,
                datao,
                last,
                data
            })),
    ]
}

/// PDUs the controller sends after the IC exchange (what a host decodes).
fn arb_target_pdu() -> impl Strategy<Value = Pdu> {
    prop_oneof![
        arb_term().prop_map(Pdu::C2HTermReq),
        any::<[u8; 16]>().prop_map(|c| Pdu::CapsuleResp(CapsuleResp { cqe: Cqe(c) })),
        (
            any::<u16>(),
            0u32..u32::MAX / 2,
            any::<bool>(),
            any::<bool>(),
            arb_data()
        )
            .prop_map(|(cccid, datao, last, success, data)| Pdu::C2HData(C2HData {
                cccid,
                datao,
                last: last || success,
                success,
                data
            })),
        (
            any::<u16>(),
            any::<u16>(),
            0u32..u32::MAX / 2,
            1u32..u32::MAX / 2
        )
            .prop_map(|(cccid, ttag, r2to, r2tl)| Pdu::R2T(R2T {
                cccid,
                ttag,
                r2to,
                r2tl
            })),
    ]
}

fn arb_ic() -> impl Strategy<Value = (Role, Pdu)> {
    prop_oneof![
        (0u8..=31, any::<bool>(), any::<bool>(), any::<u32>()).prop_map(
            |(hpda, hdgst, ddgst, maxr2t)| {
                (
                    Role::Target,
                    Pdu::IcReq(IcReq {
                        pfv: 0,
                        hpda,
                        hdgst,
                        ddgst,
                        maxr2t,
                    }),
                )
            }
        ),
        (
            0u8..=31,
            any::<bool>(),
            any::<bool>(),
            1024u32..=u32::MAX / 4
        )
            .prop_map(|(cpda, hdgst, ddgst, m)| {
                (
                    Role::Host,
                    Pdu::IcResp(IcResp {
                        pfv: 0,
                        cpda,
                        hdgst,
                        ddgst,
                        maxh2cdata: m * 4,
                    }),
                )
            }),
    ]
}

/// (receiver, PDU) pairs for an established connection.
fn arb_established() -> impl Strategy<Value = (Role, Pdu)> {
    prop_oneof![
        arb_host_pdu().prop_map(|p| (Role::Target, p)),
        arb_target_pdu().prop_map(|p| (Role::Host, p)),
    ]
}

fn encode_all(sender: Role, p: ConnParams, pdus: &[Pdu]) -> Vec<u8> {
    let mut codec = PduCodec::new_established(sender, p);
    let mut out = BytesMut::new();
    for pdu in pdus {
        codec.encode(pdu.clone(), &mut out).unwrap();
    }
    out.to_vec()
}

/// Decode a stream delivered in the given chunk sizes (cycled), collecting PDUs until an error.
fn decode_chunked(receiver: Role, p: ConnParams, wire: &[u8], chunks: &[usize]) -> Vec<Pdu> {
    let mut codec = PduCodec::new_established(receiver, p);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < wire.len() {
        let n = chunks[i % chunks.len()].clamp(1, wire.len() - pos);
        i += 1;
        buf.extend_from_slice(&wire[pos..pos + n]);
        pos += n;
        while let Some(pdu) = codec.decode(&mut buf).unwrap() {
            out.push(pdu);
        }
    }
    assert!(buf.is_empty());
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_established((receiver, pdu) in arb_established(), p in arb_params()) {
        let wire = encode_all(receiver.peer(), p, std::slice::from_ref(&pdu));
        let (back, used) = decode_one(receiver, &p, &wire).unwrap().unwrap();
        prop_assert_eq!(used, wire.len());
        prop_assert_eq!(&back, &pdu);
        // Data lands at an offset aligned as the receiver asked.
        if let Some(d) = pdu.data().filter(|d| !d.is_empty()) {
            let pdo = usize::from(wire[3]);
            prop_assert_eq!(pdo % p.rx_alignment(receiver), 0);
            prop_assert_eq!(&wire[pdo..pdo + d.len()], &d[..]);
        }
    }

    #[test]
    fn round_trip_ic((receiver, pdu) in arb_ic(), p in arb_params()) {
        // IC PDUs never carry digests, whatever the parameters say.
        let wire = encode_all(receiver.peer(), p, std::slice::from_ref(&pdu));
        prop_assert_eq!(wire.len(), 128);
        prop_assert_eq!(wire[1], 0);
        let mut codec = PduCodec::new(receiver, p);
        let (back, _) = codec.decode_slice(&wire).unwrap().unwrap();
        prop_assert_eq!(back, pdu);
        prop_assert!(codec.is_established());
    }

    #[test]
    fn stream_split_anywhere(
        pdus in proptest::collection::vec(arb_host_pdu(), 1..6),
        p in arb_params(),
        chunks in proptest::collection::vec(1usize..300, 1..8),
    ) {
        let wire = encode_all(Role::Host, p, &pdus);
        prop_assert_eq!(decode_chunked(Role::Target, p, &wire, &chunks), pdus);
    }

    #[test]
    fn stream_split_anywhere_host_side(
        pdus in proptest::collection::vec(arb_target_pdu(), 1..6),
        p in arb_params(),
        chunks in proptest::collection::vec(1usize..300, 1..8),
    ) {
        let wire = encode_all(Role::Target, p, &pdus);
        prop_assert_eq!(decode_chunked(Role::Host, p, &wire, &chunks), pdus);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        p in arb_params(),
        host in any::<bool>(),
        fresh in any::<bool>(),
    ) {
        let role = if host { Role::Host } else { Role::Target };
        let mut codec = if fresh { PduCodec::new(role, p) } else { PduCodec::new_established(role, p) };
        let mut buf = BytesMut::from(&bytes[..]);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(_)) => prop_assert!(buf.len() < before),
                Ok(None) => { prop_assert_eq!(buf.len(), before); break }
                Err(PduError::DataDigest { .. }) => prop_assert!(buf.len() < before),
                Err(PduError::Fatal { header, .. }) => { prop_assert!(header.len() <= 128); break }
                Err(PduError::Abort { .. }) => break,
                Err(PduError::Io(e)) => prop_assert!(false, "unexpected I/O error {}", e),
            }
        }
    }

    #[test]
    fn mutated_valid_pdus_never_panic(
        (receiver, pdu) in arb_established(),
        p in arb_params(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut wire = encode_all(receiver.peer(), p, std::slice::from_ref(&pdu));
        for (i, v) in flips {
            let i = i.index(wire.len().min(160));
            wire[i] = v;
        }
        let _ = decode_one(receiver, &p, &wire);
    }

    #[test]
    fn fuzz_entry_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..800)) {
        fuzz::pdu_stream(&bytes);
    }
}
