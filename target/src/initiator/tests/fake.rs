//! A small NVMe/TCP target for the initiator's own tests: enough of the protocol to drive every
//! path of the state machine (IC, Connect, properties, Identify, in-capsule and R2T writes,
//! C2HData reads with or without SUCCESS), plus misbehaviours on demand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use codec::nvme::fabrics::{Cap, Cc, Csts, prop};
use codec::nvme::generation::{get_generation, stale_map_cqe};
use codec::nvme::sgl::SglDescriptor;
use codec::nvme::{Cqe, Sqe, Status};
use codec::pdu::params::MAX_PDU_LEN_CAP;
use codec::pdu::{
    C2HData, CapsuleResp, ConnParams, Fes, IcResp, Pdu, PduCodec, R2T, Role, TermReq,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, Encoder};

pub const LBA: usize = 512;
pub const STORE_LEN: usize = 8 << 20;
pub const CNTLID: u16 = 7;
/// The fake target's map generation.
pub const GENERATION: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehave {
    None,
    /// Never answer Read.
    SilentReads,
    /// Answer Read with a C2HTermReq and close.
    TermReqOnRead,
    /// Answer Read with a response capsule for another CID.
    WrongCid,
    /// ICResp with CPDA 1.
    BadCpda,
}

#[derive(Debug, Clone, Copy)]
pub struct FakeOpts {
    pub maxh2cdata: u32,
    /// Bytes per R2T.
    pub r2t_chunk: u32,
    /// Bytes per C2HData.
    pub c2h_chunk: usize,
    /// Complete reads with C2HData SUCCESS instead of a response capsule.
    pub success_flag: bool,
    pub misbehave: Misbehave,
}

impl Default for FakeOpts {
    fn default() -> Self {
        Self {
            maxh2cdata: 4096,
            r2t_chunk: 16384,
            c2h_chunk: 8192,
            success_flag: true,
            misbehave: Misbehave::None,
        }
    }
}

struct PendingWrite {
    slba: usize,
    len: u32,
    buf: BytesMut,
    /// End of the range solicited so far; the R2T in flight ends here.
    solicited: u32,
    ttag: u16,
    opcode: u8,
}

struct Conn {
    s: TcpStream,
    codec: PduCodec,
    opts: FakeOpts,
    store: Arc<Mutex<Vec<u8>>>,
    cc: Arc<Mutex<u32>>,
    writes: HashMap<u16, PendingWrite>,
    next_ttag: u16,
}

pub async fn spawn(opts: FakeOpts) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = l.local_addr().expect("local addr");
    let store = Arc::new(Mutex::new(vec![0u8; STORE_LEN]));
    let cc = Arc::new(Mutex::new(0u32));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let limits = ConnParams {
                max_pdu_len: MAX_PDU_LEN_CAP,
                max_h2c_data: opts.maxh2cdata,
                max_incapsule_data: 1 << 20,
                ..ConnParams::default()
            };
            let c = Conn {
                s,
                codec: PduCodec::new(Role::Target, limits),
                opts,
                store: store.clone(),
                cc: cc.clone(),
                writes: HashMap::new(),
                next_ttag: 1,
            };
            tokio::spawn(c.run());
        }
    });
    addr
}

impl Conn {
    async fn send(&mut self, pdu: Pdu) {
        let mut out = BytesMut::new();
        self.codec
            .encode(pdu, &mut out)
            .expect("fake target encodes");
        let _ = self.s.write_all(&out).await;
    }

    async fn resp(&mut self, cqe: Cqe) {
        self.send(Pdu::CapsuleResp(CapsuleResp { cqe })).await;
    }

    async fn run(mut self) {
        let mut buf = BytesMut::new();
        loop {
            let pdu = match self.codec.decode(&mut buf) {
                Ok(Some(p)) => p,
                Ok(None) => match self.s.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                },
                Err(e) => {
                    if let Some(t) = e.term_req() {
                        self.send(Pdu::C2HTermReq(t)).await;
                    }
                    return;
                }
            };
            match pdu {
                Pdu::IcReq(r) => {
                    let cpda = u8::from(self.opts.misbehave == Misbehave::BadCpda);
                    let ic = IcResp {
                        pfv: 0,
                        cpda,
                        hdgst: r.hdgst,
                        ddgst: r.ddgst,
                        maxh2cdata: self.opts.maxh2cdata,
                    };
                    self.send(Pdu::IcResp(ic)).await;
                    let p = ConnParams {
                        hdgst: r.hdgst,
                        ddgst: r.ddgst,
                        ..*self.codec.params()
                    };
                    self.codec.set_params(p);
                }
                Pdu::CapsuleCmd(c) => {
                    if !self.command(c.sqe, c.data).await {
                        return;
                    }
                }
                Pdu::H2CData(d) => self.h2c(d).await,
                _ => return,
            }
        }
    }

    /// Returns false to close the connection.
    async fn command(&mut self, sqe: Sqe, data: Bytes) -> bool {
        let cid = sqe.cid();
        let ok = Cqe::new(cid, Status::SUCCESS);
        let generation = get_generation(&sqe).map_or(0, |g| g.get());
        if generation != 0 && generation != GENERATION {
            self.resp(stale_map_cqe(cid, GENERATION)).await;
            return true;
        }
        match sqe.opcode() {
            0x7f => {
                let mut c = ok;
                match sqe.0[4] {
                    0x01 => {
                        assert_eq!(data.len(), 1024, "Connect data in-capsule");
                        c.set_dw0(u32::from(CNTLID));
                    }
                    0x04 => {
                        let v = match sqe.cdw11() {
                            prop::CAP => Cap::fabrics_io(127, 1).to_u64(),
                            prop::CC => u64::from(*self.cc.lock().expect("cc")),
                            prop::CSTS => {
                                let cc = Cc::from_u32(*self.cc.lock().expect("cc"));
                                let shst = if cc.shn != 0 { 2 } else { 0 };
                                u64::from(
                                    Csts {
                                        rdy: cc.en,
                                        shst,
                                        ..Csts::default()
                                    }
                                    .to_u32(),
                                )
                            }
                            prop::VS => 0x0002_0000,
                            _ => 0,
                        };
                        c.set_dw0_1(v);
                    }
                    0x00 => *self.cc.lock().expect("cc") = sqe.cdw12(),
                    _ => c.set_status(Status::INVALID_OPCODE.with_dnr()),
                }
                self.resp(c).await;
            }
            // Identify: a 4096-byte pattern with the CNS in byte 0.
            0x06 if sqe.nsid() == 0 || sqe.nsid() == 1 => {
                let mut id = vec![0xa5u8; 4096];
                id[0] = u8::try_from(sqe.cdw10() & 0xff).unwrap_or(0);
                if sqe.cdw10() & 0xff == 2 {
                    id.fill(0);
                    id[0] = 1;
                }
                self.read_reply(cid, Bytes::from(id)).await;
            }
            0x09 if sqe.cdw10() & 0xff == 0x07 => {
                let mut c = ok;
                c.set_dw0(0x0003_0003);
                self.resp(c).await;
            }
            0x18 | 0x00 => self.resp(ok).await,
            // Read.
            0x02 => {
                let (slba, len) = rw_range(&sqe);
                match self.opts.misbehave {
                    Misbehave::SilentReads => return true,
                    Misbehave::TermReqOnRead => {
                        let t = TermReq {
                            fes: Fes::DATA_LIMIT_EXCEEDED,
                            fei: 3,
                            data: Bytes::new(),
                        };
                        self.send(Pdu::C2HTermReq(t)).await;
                        return false;
                    }
                    Misbehave::WrongCid => {
                        self.resp(Cqe::new(cid ^ 0x8000, Status::SUCCESS)).await;
                        return true;
                    }
                    _ => {}
                }
                if slba * LBA + len > STORE_LEN {
                    self.resp(Cqe::new(cid, Status::LBA_RANGE.with_dnr())).await;
                    return true;
                }
                let d = {
                    let st = self.store.lock().expect("store");
                    Bytes::copy_from_slice(&st[slba * LBA..slba * LBA + len])
                };
                self.read_reply(cid, d).await;
            }
            // Write / Compare.
            0x01 | 0x05 => {
                let (slba, len) = rw_range(&sqe);
                match SglDescriptor::from_sqe(&sqe) {
                    Ok(SglDescriptor::InCapsule { len: l, .. }) => {
                        assert_eq!(usize::try_from(l).ok(), Some(data.len()));
                        assert_eq!(data.len(), len);
                        self.finish_write(cid, sqe.opcode(), slba, &data).await;
                    }
                    Ok(SglDescriptor::Transport { len: l, .. }) => {
                        let ttag = self.next_ttag;
                        self.next_ttag = self.next_ttag.wrapping_add(1);
                        let w = PendingWrite {
                            slba,
                            len: l,
                            buf: BytesMut::zeroed(usize::try_from(l).unwrap_or(0)),
                            solicited: 0,
                            ttag,
                            opcode: sqe.opcode(),
                        };
                        self.writes.insert(cid, w);
                        self.next_r2t(cid).await;
                    }
                    _ => {
                        self.resp(Cqe::new(cid, Status::SGL_INVALID_TYPE.with_dnr()))
                            .await
                    }
                }
            }
            _ => {
                self.resp(Cqe::new(cid, Status::INVALID_OPCODE.with_dnr()))
                    .await
            }
        }
        true
    }

    async fn read_reply(&mut self, cid: u16, d: Bytes) {
        let n = d.len();
        let mut off = 0;
        while off < n {
            let end = n.min(off + self.opts.c2h_chunk);
            let last = end == n;
            let pdu = C2HData {
                cccid: cid,
                datao: u32::try_from(off).unwrap_or(0),
                last,
                success: last && self.opts.success_flag,
                data: d.slice(off..end),
            };
            self.send(Pdu::C2HData(pdu)).await;
            off = end;
        }
        if !self.opts.success_flag {
            self.resp(Cqe::new(cid, Status::SUCCESS)).await;
        }
    }

    async fn next_r2t(&mut self, cid: u16) {
        let chunk = self.opts.r2t_chunk;
        let Some(w) = self.writes.get_mut(&cid) else {
            return;
        };
        let r2to = w.solicited;
        let r2tl = chunk.min(w.len - r2to);
        w.solicited += r2tl;
        let ttag = w.ttag;
        self.send(Pdu::R2T(R2T {
            cccid: cid,
            ttag,
            r2to,
            r2tl,
        }))
        .await;
    }

    async fn h2c(&mut self, d: codec::pdu::H2CData) {
        let key = d.cccid;
        let Some(w) = self.writes.get_mut(&key) else {
            return;
        };
        assert_eq!(d.ttag, w.ttag, "TTAG echoed");
        assert!(d.data.len() <= usize::try_from(self.opts.maxh2cdata).unwrap_or(0));
        let off = usize::try_from(d.datao).unwrap_or(0);
        w.buf[off..off + d.data.len()].copy_from_slice(&d.data);
        let end = d.datao + u32::try_from(d.data.len()).unwrap_or(0);
        assert_eq!(
            d.last,
            end == w.solicited,
            "LAST_PDU on the R2T's last PDU only"
        );
        if !d.last {
            return;
        }
        if w.solicited < w.len {
            self.next_r2t(d.cccid).await;
            return;
        }
        let Some(w) = self.writes.remove(&key) else {
            return;
        };
        self.finish_write(d.cccid, w.opcode, w.slba, &w.buf).await;
    }

    async fn finish_write(&mut self, cid: u16, opcode: u8, slba: usize, data: &[u8]) {
        let status = {
            let mut st = self.store.lock().expect("store");
            let range = slba * LBA..slba * LBA + data.len();
            if range.end > STORE_LEN {
                Status::LBA_RANGE.with_dnr()
            } else if opcode == 5 {
                if st[range] == *data {
                    Status::SUCCESS
                } else {
                    Status::COMPARE_FAILURE
                }
            } else {
                st[range].copy_from_slice(data);
                Status::SUCCESS
            }
        };
        self.resp(Cqe::new(cid, status)).await;
    }
}

fn rw_range(sqe: &Sqe) -> (usize, usize) {
    let slba = usize::try_from(sqe.cdw10_11()).unwrap_or(usize::MAX / 2);
    let nlb = usize::try_from(sqe.cdw12() & 0xffff).unwrap_or(0) + 1;
    (slba.min(STORE_LEN), nlb * LBA)
}
