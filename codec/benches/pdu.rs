//! Micro-benchmarks: CapsuleCmd decode + encode (with and without digests and in-capsule data),
//! and CRC32C over 4 KiB and 128 KiB (the data digest of a page and of a 128 KiB H2CData).
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use codec::nvme::Sqe;
use codec::pdu::{CapsuleCmd, ConnParams, Pdu, PduCodec, Role, crc32c};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::codec::{Decoder, Encoder};

fn capsule(data_len: usize) -> Pdu {
    let mut sqe = Sqe::default();
    sqe.set_opcode(0x01); // Write
    sqe.set_cid(0x1234);
    sqe.set_nsid(1);
    Pdu::CapsuleCmd(CapsuleCmd {
        sqe,
        data: Bytes::from(vec![0xA5u8; data_len]),
    })
}

fn bench_capsule(c: &mut Criterion) {
    let mut g = c.benchmark_group("capsule_cmd");
    for (name, digests, data_len) in [
        ("no_data/plain", false, 0),
        ("no_data/digests", true, 0),
        ("4k_data/plain", false, 4096),
        ("4k_data/digests", true, 4096),
    ] {
        let p = ConnParams {
            hdgst: digests,
            ddgst: digests,
            ..ConnParams::default()
        };
        let pdu = capsule(data_len);
        let mut wire = BytesMut::new();
        PduCodec::new_established(Role::Host, p)
            .encode(pdu.clone(), &mut wire)
            .unwrap();
        let wire = wire.freeze();
        g.throughput(Throughput::Bytes(wire.len() as u64));
        // Decode as the target does (from a receive buffer), then encode as the host does.
        let mut rx = PduCodec::new_established(Role::Target, p);
        let mut tx = PduCodec::new_established(Role::Host, p);
        let mut out = BytesMut::with_capacity(wire.len());
        g.bench_function(format!("decode+encode/{name}"), |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                let pdu = rx.decode(&mut buf).unwrap().unwrap();
                out.clear();
                tx.encode(black_box(pdu), &mut out).unwrap();
                black_box(out.len())
            })
        });
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                black_box(rx.decode(&mut buf).unwrap().unwrap())
            })
        });
    }
    g.finish();
}

fn bench_crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for (name, len) in [("4KiB", 4096usize), ("128KiB", 128 * 1024)] {
        let data = vec![0x5Au8; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(name, |b| b.iter(|| crc32c(black_box(&data))));
    }
    g.finish();
}

criterion_group!(benches, bench_capsule, bench_crc);
criterion_main!(benches);
