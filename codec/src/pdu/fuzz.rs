//! Fuzzing entry points, shared by `codec/fuzz` (cargo-fuzz, nightly) and
//! `codec/tests/fuzz_corpus.rs` (replays the corpus and every crash on stable).
//!
//! Not part of the codec's API: the functions panic when one of our own invariants breaks,
//! which is exactly what a fuzzer wants to hear about.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::{ConnParams, Pdu, PduCodec, PduError, Role};

/// Receive limits used while fuzzing: small, so that inputs stay short and fast.
const FUZZ_MAX_DATA: u32 = 8192;

/// Feed `input` to the streaming decoder.
///
/// Byte 0 configures the connection: bit 0 the role (0 target, 1 host), bit 1 header digests,
/// bit 2 data digests, bit 3 start established (skip the IC exchange), bits 5:4 the receive
/// alignment (PDA 0, 1, 3 or 31). Byte 1 sets how the rest is chunked (1 to 256 bytes per
/// read), as if it arrived from a socket in pieces.
///
/// Checks, besides "never panics": a need-more answer consumes nothing; the buffer never grows
/// far past the PDU limit; every decoded PDU re-encodes and decodes back to itself.
pub fn pdu_stream(input: &[u8]) {
    let Some((&cfg, rest)) = input.split_first() else {
        return;
    };
    let (chunk, stream) = match rest.split_first() {
        Some((&c, s)) => (usize::from(c) + 1, s),
        None => (1, rest),
    };
    let role = if cfg & 1 == 0 {
        Role::Target
    } else {
        Role::Host
    };
    let pda = [0u8, 1, 3, 31][usize::from((cfg >> 4) & 3)];
    let mut params = ConnParams {
        hdgst: cfg & 2 != 0,
        ddgst: cfg & 4 != 0,
        cpda: pda,
        hpda: pda,
        max_pdu_len: ConnParams::derived_max_pdu_len(FUZZ_MAX_DATA, FUZZ_MAX_DATA),
        max_h2c_data: FUZZ_MAX_DATA,
        max_incapsule_data: FUZZ_MAX_DATA,
    };
    let mut codec = if cfg & 8 != 0 {
        PduCodec::new_established(role, params)
    } else {
        PduCodec::new(
            role,
            ConnParams {
                hdgst: false,
                ddgst: false,
                ..params
            },
        )
    };
    // What a buffer may legitimately grow to: one whole PDU, or everything fed so far.
    let bound = 2 * (usize::try_from(params.max_pdu_len).unwrap_or(usize::MAX) + stream.len());

    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            let established = codec.is_established();
            match codec.decode(&mut buf) {
                Ok(Some(pdu)) => {
                    round_trip(role, codec.params(), !established, &pdu);
                    if !established {
                        params = negotiated(role, params, &pdu);
                        codec.set_params(params);
                    }
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "need-more must consume nothing");
                    assert!(
                        buf.capacity() <= bound,
                        "receive buffer grew past the PDU limit"
                    );
                    break;
                }
                // Consumed; the stream is still in sync.
                Err(PduError::DataDigest { .. }) => assert!(buf.len() < before),
                Err(_) => return,
            }
        }
    }
}

/// The parameters a real connection would set after this IC PDU.
fn negotiated(role: Role, p: ConnParams, ic: &Pdu) -> ConnParams {
    match (role, ic) {
        (Role::Target, Pdu::IcReq(r)) => ConnParams {
            hdgst: r.hdgst,
            ddgst: r.ddgst,
            hpda: r.hpda,
            ..p
        },
        (Role::Host, Pdu::IcResp(r)) => ConnParams {
            hdgst: r.hdgst,
            ddgst: r.ddgst,
            cpda: r.cpda,
            max_h2c_data: r.maxh2cdata.min(p.max_h2c_data),
            ..p
        },
        _ => p,
    }
}

/// A decoded PDU must re-encode (as the peer would send it) and decode back to itself.
fn round_trip(role: Role, params: &ConnParams, is_ic: bool, pdu: &Pdu) {
    let mut tx = PduCodec::new_established(role.peer(), *params);
    let mut wire = BytesMut::new();
    tx.encode(pdu.clone(), &mut wire)
        .expect("invariant: a decoded PDU re-encodes");
    let mut rx = if is_ic {
        PduCodec::new(role, *params)
    } else {
        PduCodec::new_established(role, *params)
    };
    let again = rx
        .decode(&mut wire)
        .expect("invariant: our encoding decodes");
    assert_eq!(
        again.as_ref(),
        Some(pdu),
        "invariant: decode(encode(pdu)) == pdu"
    );
    assert!(
        wire.is_empty(),
        "invariant: our encoding is exactly one PDU"
    );
}

/// Feed `input` to command parsing: byte 0 picks the queue kind (bit 0: I/O) and the LBA size
/// (bit 1: 4096, else 512); the next 64 bytes are the SQE (zero-padded when short).
///
/// Checks, besides "never panics": a parsed I/O command's data length is its NLB times the LBA
/// size; a parsed command rebuilt with `to_sqe` parses back to the same command.
pub fn command(input: &[u8]) {
    use crate::nvme::cmd::{self, Command, QueueKind};
    use crate::nvme::{SQE_LEN, SglDescriptor, Sqe};

    let Some((&cfg, rest)) = input.split_first() else {
        return;
    };
    let mut raw = [0u8; SQE_LEN];
    let n = rest.len().min(SQE_LEN);
    raw[..n].copy_from_slice(&rest[..n]);
    let sqe = Sqe::from_bytes(raw);
    let kind = if cfg & 1 == 0 {
        QueueKind::Admin
    } else {
        QueueKind::Io
    };
    let lba: u32 = if cfg & 2 == 0 { 512 } else { 4096 };
    let Ok(parsed) = cmd::parse(&sqe, kind) else {
        return;
    };
    let dir_len = match &parsed {
        Command::Admin(a) => a.data_dir().len(),
        Command::Fabrics(f) => f.data_dir().len(),
        Command::Io(io) => {
            let d = io.data_dir(lba);
            if let cmd::IoCommand::Read(rw) | cmd::IoCommand::Write(rw) = io {
                assert_eq!(
                    d.len(),
                    u64::from(rw.nlb) * u64::from(lba),
                    "I/O data length"
                );
            }
            d.len()
        }
    };
    // Rebuild with a descriptor of the same length and parse again.
    let sgl = SglDescriptor::transport(u32::try_from(dir_len).unwrap_or(u32::MAX));
    let rebuilt = match &parsed {
        Command::Admin(a) => a.to_sqe(sqe.cid(), sgl),
        Command::Fabrics(f) => f.to_sqe(sqe.cid(), sgl),
        Command::Io(io) => io.to_sqe(sqe.cid(), sgl),
    };
    let again = cmd::parse(&rebuilt, kind);
    assert_eq!(
        again.as_ref(),
        Ok(&parsed),
        "command does not survive to_sqe + parse"
    );
}
