//! A polled queue for a storage server's internal hop: one NVMe/TCP I/O queue whose commands
//! are driven by the tasks that wait for them, with no task, channel, semaphore, oneshot or
//! timer of its own and no allocation per command in steady state.
//!
//! [`super::Queue`] runs a writer and a reader task per connection: a command crosses a channel
//! to the writer, and its completion comes back from the reader through a oneshot (three task
//! wake-ups per command). A forwarded host command waits on that path twice as long as the
//! target itself takes to serve it. Here instead:
//!
//! * [`PolledQueue::submit`] returns a [`PolledCommand`] future. Its first poll takes a free slot
//!   (the slot index is the CID), encodes the capsule and writes it to the socket at once (one
//!   non-blocking `writev`), from the task that submitted it.
//! * Every poll of a waiting command receives what the socket holds (one non-blocking `recv`
//!   into a reused buffer), handles every complete PDU (completions land in their slots and wake
//!   their waiters, R2Ts are answered), and, if its own command is still out, registers the
//!   task for the socket's readiness with the runtime that owns the socket. So the one wake-up
//!   per completion is the waiting task's own, and on a reactor that polls its sockets
//!   (`transport::busypoll`) the completion is found on the next turn.
//! * The runtime keeps one reader waker per socket: when the task that registered last gets its
//!   completion while other commands are still out, it wakes one of them to take over.
//!
//! A command cannot be cancelled in NVMe/TCP: a [`PolledCommand`] dropped before its completion
//! leaves its slot busy until the target answers, then the answer is discarded. A connection
//! error (the peer closed, a protocol violation, [`PolledQueue::close`]) fails every command in
//! flight and every later submission with the same error. There is no per-command timeout: the
//! caller bounds its wait (the routed path has its forwarding deadline).
//!
//! The socket is a tokio `TcpStream` registered with the runtime that connected it: a storage
//! server keeps one such queue per reactor and peer, so its commands and their wake-ups never
//! leave the reactor. (Another runtime's task may still use it: a lock guards the state, and the
//! owning runtime's I/O driver wakes the waiter wherever it runs.)

use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use codec::nvme::cmd::{IoCommand, Rw, WriteZeroes};
use codec::nvme::fabrics::{ConnectReject, NQN_MAX_LEN};
use codec::nvme::sgl::SglDescriptor;
use codec::nvme::sqe::PSDT_SGL;
use codec::nvme::{Cqe, Sqe, Status};
use codec::pdu::params::{ADMIN_INCAPSULE_DATA, MAX_PDU_LEN_CAP};
use codec::pdu::{
    C2HData, CapsuleCmd, ConnParams, H2CData, Pdu, PduCodec, PduError, PduType, R2T, Role,
};
use std::num::NonZeroU64;
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use super::QUEUE_DEPTH_MAX;
use super::auth::AuthQueue;
use super::error::{InitiatorError, Result};
use super::options::QueueOptions;
use super::queue::{Completion, connect_capsule, ic_exchange, place_data};

/// Receive buffer of an internal queue: every `recv` fills what is free of it; PDUs are split
/// out of it without a copy and the allocation is taken back once they are dropped.
const RECV_BUF: usize = 512 * 1024;

/// Free space below which the receive buffer is recycled before the next `recv`: more than a
/// 128 KiB C2HData (the peers' MDTS), so a whole one always fits.
const RECV_FREE_MIN: usize = 160 * 1024;

/// Data up to this size is copied next to its PDU header instead of getting its own iovec.
const COPY_DATA_MAX: usize = 512;

/// Most iovecs per `writev`.
const IOV_MAX: usize = 64;

#[derive(Default)]
struct Slot {
    busy: bool,
    /// Its future was dropped: the answer is discarded when it comes.
    abandoned: bool,
    waker: Option<Waker>,
    result: Option<Result<Completion>>,
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

struct State {
    /// `None` once the connection has ended.
    stream: Option<TcpStream>,
    rx: PduCodec,
    tx: PduCodec,
    rbuf: BytesMut,
    head: BytesMut,
    segs: Vec<Bytes>,
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// Tasks waiting for a free slot.
    waiters: Vec<Waker>,
    /// The slot whose task registered for read readiness last.
    reader: Option<u16>,
    /// Why the connection ended.
    error: Option<InitiatorError>,
    maxh2cdata: u32,
    incapsule_data_max: u32,
}

/// One polled NVMe/TCP I/O queue (see the module documentation). Shared through an `Arc`.
pub struct PolledQueue {
    state: Mutex<State>,
    closed: AtomicBool,
    qid: u16,
    depth: usize,
    peer: SocketAddr,
}

impl std::fmt::Debug for PolledQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolledQueue")
            .field("peer", &self.peer)
            .field("qid", &self.qid)
            .field("depth", &self.depth)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl PolledQueue {
    /// TCP connect, ICReq/ICResp, Fabrics Connect with `opts` and, when the target asks for it,
    /// DH-HMAC-CHAP with `opts.dhchap`; bounded by `opts.transport.connect_timeout`. The socket
    /// belongs to the calling runtime.
    pub async fn connect(addr: SocketAddr, opts: &QueueOptions) -> Result<Arc<PolledQueue>> {
        if opts.subnqn.len() > NQN_MAX_LEN || opts.hostnqn.len() > NQN_MAX_LEN {
            return Err(InitiatorError::InvalidArgument {
                what: "NQN longer than 223 bytes",
            });
        }
        let run = async {
            let t = &opts.transport;
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (stream, icresp, buf) = ic_exchange(stream, t).await?;
            let params = ConnParams {
                hdgst: t.hdgst,
                ddgst: t.ddgst,
                cpda: 0,
                hpda: 0,
                max_pdu_len: t.max_pdu_len.clamp(128, MAX_PDU_LEN_CAP),
                max_h2c_data: icresp.maxh2cdata,
                max_incapsule_data: ADMIN_INCAPSULE_DATA,
            };
            let entries = u32::from(opts.sqsize) + u32::from(opts.disable_sq_flow_control);
            let depth = usize::try_from(entries.clamp(1, QUEUE_DEPTH_MAX)).unwrap_or(1);
            let mut rbuf = BytesMut::with_capacity(RECV_BUF);
            rbuf.extend_from_slice(&buf);
            let q = Arc::new(PolledQueue {
                state: Mutex::new(State {
                    stream: Some(stream),
                    rx: PduCodec::new_established(Role::Host, params),
                    tx: PduCodec::new_established(Role::Host, params),
                    rbuf,
                    head: BytesMut::with_capacity(16 * 1024),
                    segs: Vec::with_capacity(IOV_MAX),
                    slots: (0..depth).map(|_| Slot::default()).collect(),
                    free: (0..depth)
                        .rev()
                        .map(|i| u16::try_from(i).unwrap_or(0))
                        .collect(),
                    waiters: Vec::new(),
                    reader: None,
                    error: None,
                    maxh2cdata: icresp.maxh2cdata,
                    incapsule_data_max: if opts.qid == 0 {
                        ADMIN_INCAPSULE_DATA
                    } else {
                        opts.incapsule_data_max
                    },
                }),
                closed: AtomicBool::new(false),
                qid: opts.qid,
                depth,
                peer: addr,
            });
            let (sqe, data) = connect_capsule(opts);
            let c = q.submit(sqe, Some(data), 0).await?;
            if !c.status().is_success() {
                return Err(InitiatorError::ConnectRejected(ConnectReject::from_dw0(
                    c.status(),
                    c.dw0(),
                )));
            }
            if c.dw0() & super::auth::AUTHREQ_MASK != 0 {
                let Some(secrets) = &opts.dhchap else {
                    return Err(InitiatorError::AuthRequired);
                };
                super::auth::authenticate_on(&q, &opts.hostnqn, &opts.subnqn, secrets).await?;
            }
            Ok(q)
        };
        let q = tokio::time::timeout(opts.transport.connect_timeout, run)
            .await
            .map_err(|_| InitiatorError::Timeout {
                what: "queue connect",
            })??;
        Ok(q)
    }

    /// Queue ID.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Most commands in flight at once.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// The target's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Ends the connection: commands in flight and later submissions fail with
    /// [`InitiatorError::Closed`].
    pub fn close(&self) {
        let mut st = self.lock();
        self.fail(&mut st, InitiatorError::Closed);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The connection ended with `e`: every command in flight fails with it.
    fn fail(&self, st: &mut State, e: InitiatorError) {
        if st.error.is_none() {
            st.error = Some(e.clone());
        }
        self.closed.store(true, Ordering::Relaxed);
        st.stream = None;
        st.reader = None;
        let err = st.error.clone().unwrap_or(e);
        for i in 0..st.slots.len() {
            if !st.slots[i].busy {
                continue;
            }
            if st.slots[i].abandoned {
                release(st, i);
                continue;
            }
            let s = &mut st.slots[i];
            if s.result.is_none() {
                s.result = Some(Err(err.clone()));
            }
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
        for w in st.waiters.drain(..) {
            w.wake();
        }
    }

    /// Submit `sqe` (its CID, PSDT and SGL1 are set here): `data_out` goes in-capsule up to
    /// the queue's limit, through R2T above; `data_in_len` bytes come back through C2HData.
    /// The future resolves to the completion (any NVMe status); it waits for a free slot when
    /// the queue is full.
    pub fn submit(
        self: &Arc<Self>,
        sqe: Sqe,
        data_out: Option<Bytes>,
        data_in_len: u32,
    ) -> PolledCommand {
        PolledCommand {
            q: Arc::clone(self),
            stage: Stage::Start {
                sqe,
                data_out,
                data_in_len,
            },
        }
    }

    /// Read `nlb` blocks of `lba_size` at `slba`, stamped with `generation` and `expires`
    /// (docs/cluster-protocol.md): the data.
    pub async fn read(
        self: &Arc<Self>,
        (generation, expires): (u64, u64),
        nsid: u32,
        slba: u64,
        nlb: u32,
        lba_size: u32,
    ) -> Result<Bytes> {
        super::io::check_nlb(nlb)?;
        let len = u32::try_from(u64::from(nlb) * u64::from(lba_size)).map_err(|_| {
            InitiatorError::InvalidArgument {
                what: "read above 4 GiB",
            }
        })?;
        let cmd = IoCommand::Read(Rw {
            expires,
            ..Rw::new(nsid, slba, nlb, generation)
        });
        let c = self
            .submit(cmd.to_sqe(0, SglDescriptor::transport(0)), None, len)
            .await?;
        Ok(c.into_result()?.data)
    }

    /// Write `data` (whole blocks of `lba_size`) at `slba`, stamped; FUA as asked.
    pub async fn write(
        self: &Arc<Self>,
        (generation, expires): (u64, u64),
        nsid: u32,
        slba: u64,
        lba_size: u32,
        data: Bytes,
        fua: bool,
    ) -> Result<()> {
        let nlb = super::io::blocks(data.len(), lba_size)?;
        let cmd = IoCommand::Write(Rw {
            fua,
            expires,
            ..Rw::new(nsid, slba, nlb, generation)
        });
        self.submit(cmd.to_sqe(0, SglDescriptor::transport(0)), Some(data), 0)
            .await?
            .into_result()
            .map(drop)
    }

    /// Write Zeroes over `nlb` blocks at `slba`, stamped; `deac` also deallocates them.
    pub async fn write_zeroes(
        self: &Arc<Self>,
        (generation, expires): (u64, u64),
        nsid: u32,
        slba: u64,
        nlb: u32,
        deac: bool,
    ) -> Result<()> {
        super::io::check_nlb(nlb)?;
        let cmd = IoCommand::WriteZeroes(WriteZeroes {
            nsid,
            slba,
            nlb,
            deac,
            fua: false,
            lr: false,
            generation: NonZeroU64::new(generation),
            expires,
        });
        self.submit(cmd.to_sqe(0, SglDescriptor::transport(0)), None, 0)
            .await?
            .into_result()
            .map(drop)
    }
}

impl AuthQueue for Arc<PolledQueue> {
    fn run(
        &self,
        sqe: Sqe,
        data_out: Option<Bytes>,
        data_in_len: u32,
    ) -> impl Future<Output = Result<Completion>> + Send {
        self.submit(sqe, data_out, data_in_len)
    }
}

/// Frees slot `i` and lets the tasks waiting for a slot try again.
fn release(st: &mut State, i: usize) {
    let s = &mut st.slots[i];
    s.busy = false;
    s.abandoned = false;
    s.waker = None;
    s.result = None;
    s.data_out = Bytes::new();
    s.whole = Bytes::new();
    s.parts.clear();
    if let Ok(cid) = u16::try_from(i) {
        st.free.push(cid);
    }
    if st.reader == u16::try_from(i).ok() {
        st.reader = None;
    }
    // Every task waiting for a slot looks again (one woken alone might be gone already);
    // those that find none wait again.
    for w in st.waiters.drain(..) {
        w.wake();
    }
}

/// Clears `stream`'s cached read readiness without a syscall (the closure's `WouldBlock` is
/// how tokio lets a caller say "drained"). Readiness raised by the I/O driver after it was
/// observed here is kept (tokio compares the event's tick).
fn clear_read_readiness(stream: &TcpStream) {
    let _ = stream.try_io(tokio::io::Interest::READABLE, || {
        Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
    });
}

/// Whether a read would try the socket now (its cached read readiness is set): tests.
#[cfg(test)]
pub(super) fn read_ready_cached(q: &PolledQueue) -> bool {
    let st = q.lock();
    st.stream
        .as_ref()
        .is_some_and(|s| s.try_io(tokio::io::Interest::READABLE, || Ok(())).is_ok())
}

/// After the task registered for read readiness stops waiting, another waiting command's task
/// takes over (the runtime keeps one reader waker per socket).
fn hand_over(st: &mut State, from: usize) {
    if st.reader != u16::try_from(from).ok() {
        return;
    }
    st.reader = None;
    if let Some(w) = st
        .slots
        .iter_mut()
        .find(|s| s.busy && !s.abandoned && s.result.is_none() && s.waker.is_some())
        .and_then(|s| s.waker.take())
    {
        w.wake();
    }
}

enum Stage {
    Start {
        sqe: Sqe,
        data_out: Option<Bytes>,
        data_in_len: u32,
    },
    Waiting(u16),
    Done,
}

/// A command submitted to a [`PolledQueue`]: resolves to its completion. Dropping it does not
/// cancel the command (NVMe/TCP cannot): its slot stays busy until the target answers.
#[must_use = "a submitted command runs only when its future is polled"]
pub struct PolledCommand {
    q: Arc<PolledQueue>,
    stage: Stage,
}

impl Drop for PolledCommand {
    fn drop(&mut self) {
        if let Stage::Waiting(cid) = self.stage {
            let mut st = self.q.lock();
            let i = usize::from(cid);
            if st.slots.get(i).is_some_and(|s| s.busy) {
                if st.slots[i].result.is_some() {
                    // Like a command that takes its result: another waiting command becomes
                    // the reader, then the slot is freed (waking the tasks waiting for one).
                    hand_over(&mut st, i);
                    release(&mut st, i);
                } else {
                    st.slots[i].abandoned = true;
                    st.slots[i].waker = None;
                    hand_over(&mut st, i);
                }
            }
        }
    }
}

impl Future for PolledCommand {
    type Output = Result<Completion>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let q = &*this.q;
        let mut st = q.lock();
        let st = &mut *st;
        if let Stage::Start { .. } = this.stage {
            if let Some(e) = &st.error {
                this.stage = Stage::Done;
                return Poll::Ready(Err(e.clone()));
            }
            let Some(cid) = st.free.pop() else {
                if !st.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    st.waiters.push(cx.waker().clone());
                }
                return Poll::Pending;
            };
            let Stage::Start {
                sqe,
                data_out,
                data_in_len,
            } = std::mem::replace(&mut this.stage, Stage::Waiting(cid))
            else {
                return Poll::Pending;
            };
            if let Err(e) = st.start(cid, sqe, data_out, data_in_len) {
                // Nothing was queued for this command: the slot is free again (and the tasks
                // waiting for one are told).
                release(st, usize::from(cid));
                this.stage = Stage::Done;
                return Poll::Ready(Err(e));
            }
            if let Err(e) = st.flush() {
                q.fail(st, e);
            }
        }
        let Stage::Waiting(cid) = this.stage else {
            return Poll::Ready(Err(InitiatorError::Protocol {
                what: "a polled command was polled after its completion",
            }));
        };
        let i = usize::from(cid);
        // While this task drives the queue nobody needs to wake it (no wake-up of itself when
        // it receives its own completion); it registers again before it waits.
        st.slots[i].waker = None;
        loop {
            if let Some(r) = st.slots[i].result.take() {
                hand_over(st, i);
                release(st, i);
                this.stage = Stage::Done;
                return Poll::Ready(r);
            }
            if st.error.is_some() || st.stream.is_none() {
                let e = st.error.clone().unwrap_or(InitiatorError::Closed);
                q.fail(st, e);
                continue;
            }
            // Receive and handle what is there; answer R2Ts.
            match st.receive() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    q.fail(st, e);
                    continue;
                }
            }
            if st.has_output()
                && let Err(e) = st.flush()
            {
                q.fail(st, e);
                continue;
            }
            // Nothing more now: wait for the socket (or for whoever receives our completion).
            let slot = &mut st.slots[i];
            if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                slot.waker = Some(cx.waker().clone());
            }
            let Some(stream) = st.stream.as_ref() else {
                continue;
            };
            if (!st.segs.is_empty() || !st.head.is_empty())
                && stream.poll_write_ready(cx).is_ready()
            {
                st.slots[i].waker = None;
                continue;
            }
            match stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {
                    // Readiness without data is cleared by the next `try_read_buf`; look again.
                    st.slots[i].waker = None;
                    continue;
                }
                Poll::Ready(Err(e)) => {
                    q.fail(st, e.into());
                    continue;
                }
                Poll::Pending => {
                    st.reader = Some(cid);
                    return Poll::Pending;
                }
            }
        }
    }
}

impl State {
    fn has_output(&self) -> bool {
        !self.segs.is_empty() || !self.head.is_empty()
    }

    /// Encodes the command's capsule into the output batch and fills its slot.
    fn start(
        &mut self,
        cid: u16,
        mut sqe: Sqe,
        data_out: Option<Bytes>,
        data_in_len: u32,
    ) -> Result<()> {
        let (sgl, incapsule, r2t) =
            place_data(&sqe, data_out, data_in_len, self.incapsule_data_max)?;
        sqe.set_cid(cid);
        sqe.set_dptr(sgl.to_bytes());
        sqe.set_flags((sqe.flags() & 0x3f) | PSDT_SGL);
        self.push(Pdu::CapsuleCmd(CapsuleCmd {
            sqe,
            data: incapsule,
        }))?;
        let s = &mut self.slots[usize::from(cid)];
        s.busy = true;
        s.abandoned = false;
        s.result = None;
        s.data_out = r2t;
        s.data_in_len = data_in_len;
        s.got = 0;
        s.ddgst_error = false;
        Ok(())
    }

    /// Encodes `pdu` at the end of the output batch.
    fn push(&mut self, pdu: Pdu) -> Result<()> {
        let tail = self.tx.encode_head_owned(pdu, &mut self.head)?;
        if let Some(tail) = tail {
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

    /// Writes as much of the output batch as the socket takes now; the rest stays queued.
    fn flush(&mut self) -> Result<()> {
        if !self.head.is_empty() {
            self.segs.push(self.head.split().freeze());
        }
        let Some(stream) = self.stream.as_ref() else {
            return Err(InitiatorError::Closed);
        };
        let mut first = 0;
        while first < self.segs.len() {
            let end = self.segs.len().min(first + IOV_MAX);
            let mut iov = [IoSlice::new(&[]); IOV_MAX];
            for (slot, seg) in iov.iter_mut().zip(&self.segs[first..end]) {
                *slot = IoSlice::new(seg);
            }
            let n = match stream.try_write_vectored(&iov[..end - first]) {
                Ok(0) => {
                    return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
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
        if self.segs.is_empty() && self.head.capacity() < 8 * 1024 {
            self.head.reserve(16 * 1024);
        }
        Ok(())
    }

    /// One non-blocking `recv`, then every complete PDU it completed. Returns whether
    /// anything was received.
    fn receive(&mut self) -> Result<bool> {
        if self.rbuf.capacity() - self.rbuf.len() < RECV_FREE_MIN {
            // Ask for no more than the original allocation holds: BytesMut then reclaims it.
            let want = RECV_BUF.saturating_sub(self.rbuf.len()).max(RECV_FREE_MIN);
            self.rbuf.reserve(want);
        }
        let Some(stream) = self.stream.as_ref() else {
            return Err(InitiatorError::Closed);
        };
        let room = self.rbuf.capacity() - self.rbuf.len();
        let n = match stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => return Err(InitiatorError::eof()),
            Ok(n) => {
                if n < room {
                    // A short read drained the socket: forget its readiness now, as tokio's
                    // own `poll_read` does, instead of learning it from one more `recv` that
                    // fails with EAGAIN (the next command's first poll would make it, on every
                    // forwarded read and copy write). Data arriving later raises a new event.
                    clear_read_readiness(stream);
                }
                n
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                0
            }
            Err(e) => return Err(e.into()),
        };
        self.decode_all()?;
        if self.has_output() {
            self.flush()?;
        }
        Ok(n > 0)
    }

    /// Handles every complete PDU in the receive buffer.
    fn decode_all(&mut self) -> Result<()> {
        loop {
            let pdu_flags = self.rbuf.get(1).copied().unwrap_or(0);
            match self.rx.decode(&mut self.rbuf) {
                Ok(Some(pdu)) => self.handle(pdu)?,
                Ok(None) => return Ok(()),
                Err(PduError::DataDigest {
                    pdu_type: PduType::C2H_DATA,
                    cccid,
                    ..
                }) => {
                    let s = self.slot_mut(cccid, "C2HData for a CID not in flight")?;
                    s.ddgst_error = true;
                    if pdu_flags & codec::pdu::flags::SUCCESS != 0 {
                        self.finish(cccid, Cqe::new(cccid, Status::SUCCESS));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn slot_mut(&mut self, cid: u16, what: &'static str) -> Result<&mut Slot> {
        match self.slots.get_mut(usize::from(cid)) {
            Some(s) if s.busy && s.result.is_none() => Ok(s),
            _ => Err(InitiatorError::Protocol { what }),
        }
    }

    fn handle(&mut self, pdu: Pdu) -> Result<()> {
        match pdu {
            Pdu::CapsuleResp(r) => {
                let cid = r.cqe.cid();
                self.slot_mut(cid, "response for a CID not in flight")?;
                self.finish(cid, r.cqe);
                Ok(())
            }
            Pdu::C2HData(d) => self.c2h_data(d),
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

    fn c2h_data(&mut self, d: C2HData) -> Result<()> {
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
            self.finish(cccid, Cqe::new(cccid, Status::SUCCESS));
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

    /// Command `cid` completed with `cqe`: its result goes to its slot and its task is woken
    /// (an abandoned command's slot is freed).
    fn finish(&mut self, cid: u16, mut cqe: Cqe) {
        let i = usize::from(cid);
        let Some(s) = self.slots.get_mut(i) else {
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
        s.data_out = Bytes::new();
        if s.abandoned {
            release(self, i);
            return;
        }
        s.result = Some(Ok(Completion { cqe, data }));
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }
}
