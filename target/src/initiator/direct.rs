//! A polled queue for load generators: one NVMe/TCP I/O queue driven by its owner's thread,
//! with no task, channel, lock or allocation per command.
//!
//! [`super::Queue`] is the general initiator: many tasks may submit to it at once, so each
//! command crosses a channel to a writer task, and its completion comes back through a
//! oneshot from a reader task (three task wake-ups and a few atomics per command; about
//! 1.5–2 µs of CPU per I/O here). `tessera bench` must drive more I/Os per second from one core
//! than the target serves, like `spdk_nvme_perf`, so it uses this queue instead: the caller
//! [`DirectQueue::submit`]s commands (encoded into the output batch at once),
//! [`DirectQueue::flush`]es the batch with one `writev`, and [`DirectQueue::poll`]s for
//! completions (one non-blocking `recv` of up to [`RECV_BUF`] bytes, every complete PDU in it
//! decoded and handled). The socket is non-blocking after the connect; the caller decides
//! whether to spin or to sleep in `poll(2)` on [`DirectQueue::fd`].
//!
//! The protocol is the same as [`super::Queue`]'s: ICReq/ICResp checked as Linux does, Fabrics
//! Connect with SQ flow control disabled (a read completes with its C2HData SUCCESS), writes
//! in-capsule up to the queue's limit and through R2T/H2CData above, C2HData reassembled by
//! DATAO (a single PDU carrying the whole read is kept where it landed), data digest errors
//! failing only their command (Data Transfer Error, as Linux). The CID is the slot index.

use std::io::{IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use codec::nvme::fabrics::ConnectReject;
use codec::nvme::sqe::PSDT_SGL;
use codec::nvme::{Cqe, Sqe, Status};
use codec::pdu::params::{ADMIN_INCAPSULE_DATA, MAX_PDU_LEN_CAP};
use codec::pdu::{
    C2HData, CapsuleCmd, ConnParams, H2CData, Pdu, PduCodec, PduError, PduType, R2T, Role,
};
use tokio_util::codec::{Decoder, Encoder};

use super::QUEUE_DEPTH_MAX;
use super::error::{InitiatorError, Result};
use super::options::QueueOptions;
use super::queue::{check_icresp, connect_capsule, icreq, place_data};

/// The receive buffer: every `recv` fills what is free of it (hundreds of 4 KiB completions or
/// a dozen 128 KiB ones per call). PDUs are split out of it without a copy; once the caller
/// has dropped them, the same allocation is taken back (the partial PDU at its end moves to the
/// front once per buffer, not once per `recv`), so steady state neither allocates nor faults.
pub const RECV_BUF: usize = 2 * 1024 * 1024;

/// Free space below which the receive buffer is recycled before the next `recv`: more than a
/// 128 KiB C2HData, so a whole one always fits.
pub const RECV_FREE_MIN: usize = 256 * 1024;

/// Data up to this size is copied next to its PDU header instead of getting its own iovec.
const COPY_DATA_MAX: usize = 512;

/// Most iovecs per `writev`.
const IOV_MAX: usize = 64;

/// One finished command.
#[derive(Debug)]
pub struct DirectCompletion {
    /// The caller's tag given to [`DirectQueue::submit`].
    pub tag: u64,
    /// The CQE (for a read completed by C2HData SUCCESS: CID, status 0).
    pub cqe: Cqe,
    /// Read data, reassembled (empty for other commands).
    pub data: Bytes,
}

#[derive(Default)]
struct Slot {
    busy: bool,
    tag: u64,
    /// Write data sent through R2T/H2CData.
    data_out: Bytes,
    /// Read data expected, and received so far.
    data_in_len: u32,
    got: u32,
    whole: Bytes,
    parts: BytesMut,
    /// A C2HData of this command failed its data digest.
    ddgst_error: bool,
}

/// One I/O queue (one TCP connection) polled by its owner.
pub struct DirectQueue {
    stream: TcpStream,
    rx: PduCodec,
    tx: PduCodec,
    rbuf: BytesMut,
    head: BytesMut,
    segs: Vec<Bytes>,
    /// Bytes of `segs` (and `head`) not yet written.
    pending_out: usize,
    slots: Vec<Slot>,
    free: Vec<u16>,
    maxh2cdata: u32,
    incapsule_data_max: u32,
    qid: u16,
}

impl std::fmt::Debug for DirectQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectQueue")
            .field("qid", &self.qid)
            .field("depth", &self.slots.len())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl DirectQueue {
    /// TCP connect, ICReq/ICResp and Fabrics Connect with `opts` (blocking, bounded by
    /// `opts.transport.connect_timeout`); the socket is non-blocking afterwards.
    pub fn connect(addr: SocketAddr, opts: &QueueOptions) -> Result<DirectQueue> {
        let t = &opts.transport;
        let deadline = Instant::now() + t.connect_timeout;
        let stream = TcpStream::connect_timeout(&addr, t.connect_timeout)?;
        stream.set_nodelay(true)?;
        let limits = ConnParams {
            max_pdu_len: t.max_pdu_len.clamp(128, MAX_PDU_LEN_CAP),
            ..ConnParams::default()
        };
        let entries = u32::from(opts.sqsize) + u32::from(opts.disable_sq_flow_control);
        let depth = usize::try_from(entries.clamp(1, QUEUE_DEPTH_MAX)).unwrap_or(1);
        let mut q = DirectQueue {
            stream,
            rx: PduCodec::new(Role::Host, limits),
            tx: PduCodec::new(Role::Host, limits),
            rbuf: BytesMut::with_capacity(RECV_BUF),
            head: BytesMut::with_capacity(16 * 1024),
            segs: Vec::with_capacity(IOV_MAX),
            pending_out: 0,
            slots: (0..depth).map(|_| Slot::default()).collect(),
            free: (0..depth)
                .rev()
                .map(|i| u16::try_from(i).unwrap_or(0))
                .collect(),
            maxh2cdata: 0,
            incapsule_data_max: if opts.qid == 0 {
                ADMIN_INCAPSULE_DATA
            } else {
                opts.incapsule_data_max
            },
            qid: opts.qid,
        };
        // IC exchange.
        let icreq = icreq(t);
        let mut out = BytesMut::new();
        q.tx.encode(Pdu::IcReq(icreq), &mut out)?;
        q.stream.write_all(&out)?;
        let icresp = match q.recv_blocking(deadline)? {
            Pdu::IcResp(r) => r,
            Pdu::C2HTermReq(t) => {
                return Err(InitiatorError::TermReq {
                    fes: t.fes,
                    fei: t.fei,
                });
            }
            _ => {
                return Err(InitiatorError::Protocol {
                    what: "expected an ICResp",
                });
            }
        };
        check_icresp(&icreq, &icresp)?;
        let params = ConnParams {
            hdgst: t.hdgst,
            ddgst: t.ddgst,
            cpda: 0,
            hpda: 0,
            max_pdu_len: limits.max_pdu_len,
            max_h2c_data: icresp.maxh2cdata,
            max_incapsule_data: ADMIN_INCAPSULE_DATA,
        };
        q.rx = PduCodec::new_established(Role::Host, params);
        q.tx = PduCodec::new_established(Role::Host, params);
        q.maxh2cdata = icresp.maxh2cdata;
        // Fabrics Connect (its 1 KiB of data in-capsule).
        let (sqe, data) = connect_capsule(opts);
        q.submit(sqe, Some(data), 0, 0)?;
        q.stream.set_write_timeout(Some(t.connect_timeout))?;
        q.flush()?;
        let c = loop {
            let pdu = q.recv_blocking(deadline)?;
            let mut done = Vec::new();
            q.handle(pdu, &mut done)?;
            if let Some(c) = done.pop() {
                break c;
            }
        };
        if !c.cqe.status().is_success() {
            return Err(InitiatorError::ConnectRejected(ConnectReject::from_dw0(
                c.cqe.status(),
                c.cqe.dw0(),
            )));
        }
        if c.cqe.dw0() & super::auth::AUTHREQ_MASK != 0 {
            // This polled queue has no authentication: use a Queue for such targets.
            return Err(InitiatorError::AuthRequired);
        }
        q.stream.set_nonblocking(true)?;
        Ok(q)
    }

    /// Reads (blocking, until `deadline`) until one PDU is complete.
    fn recv_blocking(&mut self, deadline: Instant) -> Result<Pdu> {
        loop {
            if let Some(pdu) = self.rx.decode(&mut self.rbuf)? {
                return Ok(pdu);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(InitiatorError::Timeout {
                    what: "TCP connect, ICReq/ICResp and Fabrics Connect",
                });
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let mut b = [0u8; 4096];
            match self.stream.read(&mut b) {
                Ok(0) => return Err(InitiatorError::eof()),
                Ok(n) => self.rbuf.extend_from_slice(&b[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The socket, for `poll(2)`.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Queue ID.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Commands in flight at most (SQSIZE + 1: SQ flow control is off).
    pub fn depth(&self) -> usize {
        self.slots.len()
    }

    /// Commands in flight now.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether output is waiting for [`DirectQueue::flush`] (or for room in the socket).
    pub fn has_output(&self) -> bool {
        self.pending_out > 0
    }

    /// Queues `sqe` (its CID, PSDT and SGL1 are set here) for the next flush: `data_out` goes
    /// in-capsule up to the queue's limit, through R2T above; `data_in_len` bytes come back
    /// through C2HData. Fails when `depth` commands are in flight.
    pub fn submit(
        &mut self,
        mut sqe: Sqe,
        data_out: Option<Bytes>,
        data_in_len: u32,
        tag: u64,
    ) -> Result<()> {
        let Some(&cid) = self.free.last() else {
            return Err(InitiatorError::InvalidArgument {
                what: "queue full: depth commands already in flight",
            });
        };
        let (sgl, incapsule, r2t) =
            place_data(&sqe, data_out, data_in_len, self.incapsule_data_max)?;
        sqe.set_cid(cid);
        sqe.set_dptr(sgl.to_bytes());
        sqe.set_flags((sqe.flags() & 0x3f) | PSDT_SGL);
        self.push(Pdu::CapsuleCmd(CapsuleCmd {
            sqe,
            data: incapsule,
        }))?;
        self.free.pop();
        let s = &mut self.slots[usize::from(cid)];
        s.busy = true;
        s.tag = tag;
        s.data_out = r2t;
        s.data_in_len = data_in_len;
        s.got = 0;
        s.ddgst_error = false;
        Ok(())
    }

    /// Encodes `pdu` at the end of the output batch.
    fn push(&mut self, pdu: Pdu) -> Result<()> {
        let before = self.head.len();
        let tail = self.tx.encode_head_owned(pdu, &mut self.head)?;
        self.pending_out += self.head.len() - before;
        if let Some(tail) = tail {
            self.pending_out += tail.wire_len();
            let mut trailer = [0u8; 4];
            let tl = tail.trailer().len().min(4);
            trailer[..tl].copy_from_slice(&tail.trailer()[..tl]);
            if tail.data.len() <= COPY_DATA_MAX {
                self.head.extend_from_slice(&tail.data);
            } else {
                if !self.head.is_empty() {
                    self.segs.push(self.head.split().freeze());
                }
                self.segs.push(tail.data);
            }
            self.head.extend_from_slice(&trailer[..tl]);
        }
        Ok(())
    }

    /// Writes as much of the output batch as the socket takes now (one `writev` per 64
    /// segments). Returns whether everything went out; what did not stays queued.
    pub fn flush(&mut self) -> Result<bool> {
        if !self.head.is_empty() {
            self.segs.push(self.head.split().freeze());
        }
        let mut first = 0;
        let mut result = Ok(true);
        while first < self.segs.len() {
            let end = self.segs.len().min(first + IOV_MAX);
            let mut iov = [IoSlice::new(&[]); IOV_MAX];
            for (slot, seg) in iov.iter_mut().zip(&self.segs[first..end]) {
                *slot = IoSlice::new(seg);
            }
            let n = match self.stream.write_vectored(&iov[..end - first]) {
                Ok(0) => {
                    result = Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    result = Ok(false);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            };
            self.pending_out = self.pending_out.saturating_sub(n);
            let mut left = n;
            while left > 0 && first < self.segs.len() {
                let seg = &mut self.segs[first];
                if seg.len() <= left {
                    left -= seg.len();
                    first += 1;
                } else {
                    seg.advance(left);
                    left = 0;
                }
            }
        }
        self.segs.drain(..first);
        if self.segs.is_empty() {
            self.pending_out = 0;
            if self.head.capacity() < 8 * 1024 {
                self.head.reserve(16 * 1024);
            }
        }
        result
    }

    /// One non-blocking `recv` (nothing if no data is waiting), then every complete PDU it
    /// holds: finished commands are appended to `done`. Returns the bytes received. R2Ts are
    /// answered into the output batch (call [`DirectQueue::flush`]).
    pub fn poll(&mut self, done: &mut Vec<DirectCompletion>) -> Result<usize> {
        if self.rbuf.capacity() - self.rbuf.len() < RECV_FREE_MIN {
            // Ask for no more than the original allocation holds: BytesMut then reclaims it.
            let want = RECV_BUF.saturating_sub(self.rbuf.len()).max(RECV_FREE_MIN);
            self.rbuf.reserve(want);
        }
        let n = recv_into(self.stream.as_raw_fd(), &mut self.rbuf)?;
        if n == 0 {
            return Ok(0);
        }
        loop {
            let pdu_flags = self.rbuf.get(1).copied().unwrap_or(0);
            match self.rx.decode(&mut self.rbuf) {
                Ok(Some(pdu)) => self.handle(pdu, done)?,
                Ok(None) => break,
                Err(PduError::DataDigest {
                    pdu_type: PduType::C2H_DATA,
                    cccid,
                    ..
                }) => {
                    let s = self.slot_mut(cccid, "C2HData for a CID not in flight")?;
                    s.ddgst_error = true;
                    if pdu_flags & codec::pdu::flags::SUCCESS != 0 {
                        self.finish(cccid, Cqe::new(cccid, Status::SUCCESS), done);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }

    fn slot_mut(&mut self, cid: u16, what: &'static str) -> Result<&mut Slot> {
        match self.slots.get_mut(usize::from(cid)) {
            Some(s) if s.busy => Ok(s),
            _ => Err(InitiatorError::Protocol { what }),
        }
    }

    fn handle(&mut self, pdu: Pdu, done: &mut Vec<DirectCompletion>) -> Result<()> {
        match pdu {
            Pdu::CapsuleResp(r) => {
                let cid = r.cqe.cid();
                self.slot_mut(cid, "response for a CID not in flight")?;
                self.finish(cid, r.cqe, done);
                Ok(())
            }
            Pdu::C2HData(d) => self.c2h_data(d, done),
            Pdu::R2T(r) => self.r2t(r),
            Pdu::C2HTermReq(t) => Err(InitiatorError::TermReq {
                fes: t.fes,
                fei: t.fei,
            }),
            _ => Err(InitiatorError::Protocol {
                what: "unexpected PDU type from the target",
            }),
        }
    }

    fn c2h_data(&mut self, d: C2HData, done: &mut Vec<DirectCompletion>) -> Result<()> {
        let C2HData {
            cccid,
            datao,
            last,
            success,
            data,
        } = d;
        let s = self.slot_mut(cccid, "C2HData for a CID not in flight")?;
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        if datao != s.got || s.got.saturating_add(len) > s.data_in_len {
            return Err(InitiatorError::Protocol {
                what: "C2HData out of order or beyond the command's data",
            });
        }
        if s.got == 0 && len == s.data_in_len {
            s.whole = data;
        } else {
            if s.parts.capacity() == 0 {
                s.parts.reserve(s.data_in_len as usize);
            }
            s.parts.put_slice(&data);
        }
        s.got += len;
        if success {
            if !last || s.got != s.data_in_len {
                return Err(InitiatorError::Protocol {
                    what: "C2HData SUCCESS before the last of the data",
                });
            }
            self.finish(cccid, Cqe::new(cccid, Status::SUCCESS), done);
        }
        Ok(())
    }

    fn r2t(&mut self, r: R2T) -> Result<()> {
        let maxh2c = self.maxh2cdata.max(4096);
        let s = self.slot_mut(r.cccid, "R2T for a CID not in flight")?;
        let end = r.r2to.saturating_add(r.r2tl);
        if r.r2tl == 0 || end as usize > s.data_out.len() {
            return Err(InitiatorError::Protocol {
                what: "R2T outside the command's data",
            });
        }
        let data = s.data_out.slice(r.r2to as usize..end as usize);
        let mut off = 0u32;
        while off < r.r2tl {
            let n = (r.r2tl - off).min(maxh2c);
            self.push(Pdu::H2CData(H2CData {
                cccid: r.cccid,
                ttag: r.ttag,
                datao: r.r2to + off,
                last: off + n == r.r2tl,
                data: data.slice(off as usize..(off + n) as usize),
            }))?;
            off += n;
        }
        Ok(())
    }

    fn finish(&mut self, cid: u16, mut cqe: Cqe, done: &mut Vec<DirectCompletion>) {
        let Some(s) = self.slots.get_mut(usize::from(cid)) else {
            return;
        };
        let data = if s.parts.is_empty() {
            std::mem::take(&mut s.whole)
        } else {
            s.parts.split().freeze()
        };
        if s.ddgst_error && cqe.status().is_success() {
            cqe.set_status(Status::DATA_XFER_ERROR);
        }
        s.busy = false;
        s.data_out = Bytes::new();
        self.free.push(cid);
        done.push(DirectCompletion {
            tag: s.tag,
            cqe,
            data,
        });
    }
}

/// One non-blocking `recv` into the spare capacity of `buf`: the bytes read (0 when nothing is
/// waiting), or an error (the peer's close included).
// A raw non-blocking recv into uninitialised spare capacity is the point (no zeroing per
// read, no await on the polled path).
#[allow(unsafe_code)]
fn recv_into(fd: RawFd, buf: &mut BytesMut) -> Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: `spare` is writable memory owned by `buf` of `spare.len()` bytes; recv writes at
    // most that many bytes into it and we mark as initialised only the count it returns.
    let rc = unsafe {
        libc::recv(
            fd,
            spare.as_mut_ptr().cast::<libc::c_void>(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(0),
            _ => Err(e.into()),
        };
    }
    if rc == 0 {
        return Err(InitiatorError::eof());
    }
    let n = usize::try_from(rc).unwrap_or(0);
    // SAFETY: recv initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}
