//! One NVMe/TCP connection = one NVMe queue: ICReq/ICResp, Fabrics Connect, and command
//! submission with many commands in flight.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codec::nvme::fabrics::{
    CATTR_DISABLE_SQ_FLOW_CONTROL, CONNECT_DATA_LEN, Connect, ConnectData, ConnectReject,
    NQN_MAX_LEN, connect_response_cntlid,
};
use codec::nvme::generation::cqe_generation;
use codec::nvme::opcode::AdminOpcode;
use codec::nvme::sgl::SglDescriptor;
use codec::nvme::sqe::PSDT_SGL;
use codec::nvme::{Cqe, Sqe, Status};
use codec::pdu::params::{ADMIN_INCAPSULE_DATA, MAX_PDU_LEN_CAP, MAXH2CDATA_MIN};
use codec::pdu::{ConnParams, IcReq, IcResp, Pdu, PduCodec, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, Encoder};

use super::conn::{Engine, Shared, Submit};
use super::error::{InitiatorError, Result};
use super::options::{QueueOptions, TransportOptions};
use super::{CID_INDEX_MASK, QUEUE_DEPTH_MAX, READ_BUF_INITIAL};

/// A completed command: its CQE and the data the target sent (C2HData), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The completion queue entry. When the target completed a read with C2HData SUCCESS
    /// instead of a response capsule, a CQE with this CID, status 0 and DW0/DW1 0.
    pub cqe: Cqe,
    /// Data received through C2HData, reassembled in DATAO order (empty for none).
    pub data: Bytes,
}

impl Completion {
    /// Status field of the CQE.
    pub fn status(&self) -> Status {
        self.cqe.status()
    }

    /// CQE Dword 0 (command specific).
    pub fn dw0(&self) -> u32 {
        self.cqe.dw0()
    }

    /// CQE Dword 1 (command specific).
    pub fn dw1(&self) -> u32 {
        self.cqe.dw1()
    }

    /// `Ok(self)` on success; otherwise [`InitiatorError::Generation`] for the generation
    /// statuses (SCT 7h, SC 80h/81h) and [`InitiatorError::Status`] for any other.
    pub fn into_result(self) -> Result<Completion> {
        let status = self.status();
        if status.is_success() {
            Ok(self)
        } else if status.same_code(Status::STALE_MAP) || status.same_code(Status::SERVER_BEHIND) {
            Err(InitiatorError::Generation {
                status,
                server_generation: cqe_generation(&self.cqe),
            })
        } else {
            Err(InitiatorError::Status(status))
        }
    }
}

/// A command handed to the queue; resolves to its completion. Dropping it does not cancel the
/// command (NVMe/TCP cannot): its CID stays busy until the target answers.
#[must_use = "a submitted command's completion should be awaited"]
pub struct PendingCompletion {
    rx: oneshot::Receiver<Result<Completion>>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    shared: Arc<Shared>,
}

impl Future for PendingCompletion {
    type Output = Result<Completion>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(r) = Pin::new(&mut self.rx).poll(cx) {
            return Poll::Ready(r.unwrap_or_else(|_| Err(self.shared.error())));
        }
        if let Some(d) = self.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(InitiatorError::Timeout {
                what: "command completion",
            }));
        }
        Poll::Pending
    }
}

struct Inner {
    submit_tx: mpsc::Sender<Submit>,
    permits: Arc<Semaphore>,
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    qid: u16,
    cntlid: AtomicU16,
    depth: usize,
    incapsule_data_max: u32,
    params: ConnParams,
    peer: SocketAddr,
    command_timeout: Option<Duration>,
    generation: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: stop both tasks (in-flight commands fail with Closed).
        self.shared.cancel.cancel();
    }
}

/// One NVMe queue over one TCP connection. Cheap to clone (a handle); usable from many tasks
/// at once: every `submit` is pipelined, up to [`Queue::depth`] commands in flight. The
/// connection closes when the last handle is dropped or on [`Queue::close`].
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("peer", &self.inner.peer)
            .field("qid", &self.inner.qid)
            .field("cntlid", &self.cntlid())
            .field("depth", &self.inner.depth)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Connect: TCP, ICReq/ICResp, then Fabrics Connect with `opts`. Bounded by
    /// `opts.transport.connect_timeout`.
    pub async fn connect_tcp(addr: SocketAddr, opts: &QueueOptions) -> Result<Queue> {
        let run = async {
            let q = Self::establish(addr, opts).await?;
            let dw0 = q.fabrics_connect_dw0(opts).await?;
            if dw0 & super::auth::AUTHREQ_MASK != 0 {
                let Some(secrets) = &opts.dhchap else {
                    return Err(InitiatorError::AuthRequired);
                };
                super::auth::authenticate(&q, &opts.hostnqn, &opts.subnqn, secrets).await?;
                tracing::debug!(qid = opts.qid, "authenticated (DH-HMAC-CHAP)");
            }
            Ok(q)
        };
        tokio::time::timeout(opts.transport.connect_timeout, run)
            .await
            .map_err(|_| InitiatorError::Timeout {
                what: "queue connect",
            })?
    }

    /// TCP and ICReq/ICResp only: a running queue on which no Connect was sent yet (tests
    /// send their own, e.g. a malformed one; see [`Queue::fabrics_connect`]).
    pub async fn establish(addr: SocketAddr, opts: &QueueOptions) -> Result<Queue> {
        let t = &opts.transport;
        let connect = async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            ic_exchange(stream, t).await
        };
        let (stream, icresp, buf) = tokio::time::timeout(t.connect_timeout, connect)
            .await
            .map_err(|_| InitiatorError::Timeout {
                what: "TCP connect and ICReq/ICResp",
            })??;
        let peer = stream.peer_addr()?;
        let params = ConnParams {
            hdgst: t.hdgst,
            ddgst: t.ddgst,
            cpda: 0,
            hpda: 0,
            // At least the 128-byte IC PDUs, at most the codec's cap (ConnParams::validate).
            max_pdu_len: t.max_pdu_len.clamp(128, MAX_PDU_LEN_CAP),
            max_h2c_data: icresp.maxh2cdata,
            max_incapsule_data: ADMIN_INCAPSULE_DATA,
        };
        // With SQ flow control the queue holds SQSIZE commands (one entry stays empty);
        // without it SQSIZE + 1 (Linux: queue_depth = sqsize + 1).
        let entries = u32::from(opts.sqsize) + u32::from(opts.disable_sq_flow_control);
        let depth = usize::try_from(entries.clamp(1, QUEUE_DEPTH_MAX)).unwrap_or(1);
        debug_assert!(
            depth <= CID_INDEX_MASK + 1,
            "QUEUE_DEPTH_MAX exceeds the CID index space"
        );
        let shared = Arc::new(Shared::default());
        let (submit_tx, submit_rx) = mpsc::channel(depth);
        let (rd, wr) = stream.into_split();
        let span = tracing::debug_span!("nvme_tcp_queue", %peer, qid = opts.qid);
        let engine = Engine {
            rd,
            wr,
            rx_codec: PduCodec::new_established(Role::Host, params),
            tx_codec: PduCodec::new_established(Role::Host, params),
            buf,
            depth,
            maxh2cdata: icresp.maxh2cdata,
            shared: shared.clone(),
            span,
        };
        let (r, w) = engine.spawn(submit_rx);
        Ok(Queue {
            inner: Arc::new(Inner {
                submit_tx,
                permits: Arc::new(Semaphore::new(depth)),
                shared,
                tasks: Mutex::new(vec![r, w]),
                qid: opts.qid,
                cntlid: AtomicU16::new(opts.cntlid),
                depth,
                incapsule_data_max: if opts.qid == 0 {
                    ADMIN_INCAPSULE_DATA
                } else {
                    opts.incapsule_data_max
                },
                params,
                peer,
                command_timeout: t.command_timeout,
                generation: AtomicU64::new(opts.generation),
            }),
        })
    }

    /// Send Fabrics Connect (NVMe Base 2.0, section 6.3) with the QID, SQSIZE, CATTR, KATO,
    /// HOSTID, CNTLID, SUBNQN and HOSTNQN of `opts`; the 1024-byte data goes in-capsule.
    /// Returns the controller ID the target assigned (response DW0 bits 15:0).
    pub async fn fabrics_connect(&self, opts: &QueueOptions) -> Result<u16> {
        let dw0 = self.fabrics_connect_dw0(opts).await?;
        Ok(connect_response_cntlid(dw0))
    }

    /// [`Queue::fabrics_connect`] returning the whole response DW0 (CNTLID and AUTHREQ).
    pub async fn fabrics_connect_dw0(&self, opts: &QueueOptions) -> Result<u32> {
        if opts.subnqn.len() > NQN_MAX_LEN || opts.hostnqn.len() > NQN_MAX_LEN {
            return Err(InitiatorError::InvalidArgument {
                what: "NQN longer than 223 bytes",
            });
        }
        let (sqe, data) = connect_capsule(opts);
        let c = self.submit(sqe, Some(data), 0).await?;
        if !c.status().is_success() {
            return Err(InitiatorError::ConnectRejected(ConnectReject::from_dw0(
                c.status(),
                c.dw0(),
            )));
        }
        let cntlid = connect_response_cntlid(c.dw0());
        self.inner.cntlid.store(cntlid, Ordering::Relaxed);
        tracing::debug!(qid = opts.qid, cntlid, "connected");
        Ok(c.dw0())
    }

    /// Submit `sqe` and wait for its completion. The queue sets the CID, PSDT (SGL) and SGL1:
    /// `data_out` goes in-capsule when it fits the queue's in-capsule limit, otherwise through
    /// R2T/H2CData; `data_in_len` bytes are expected through C2HData. A command cannot move
    /// data both ways. Any NVMe status is returned as a [`Completion`] (see
    /// [`Completion::into_result`]); errors are transport errors and timeouts.
    pub async fn submit(
        &self,
        sqe: Sqe,
        data_out: Option<Bytes>,
        data_in_len: u32,
    ) -> Result<Completion> {
        self.start(sqe, data_out, data_in_len).await?.await
    }

    /// Like [`Queue::submit`] but returns as soon as the command is queued for sending, with a
    /// future of its completion: many commands can be started from one task (pipelining).
    /// Waits only if [`Queue::depth`] commands are already in flight.
    pub async fn start(
        &self,
        sqe: Sqe,
        data_out: Option<Bytes>,
        data_in_len: u32,
    ) -> Result<PendingCompletion> {
        self.start_with_timeout(sqe, data_out, data_in_len, self.inner.command_timeout)
            .await
    }

    pub(crate) async fn start_with_timeout(
        &self,
        mut sqe: Sqe,
        data_out: Option<Bytes>,
        data_in_len: u32,
        timeout: Option<Duration>,
    ) -> Result<PendingCompletion> {
        let inner = &*self.inner;
        let (sgl, incapsule, r2t_data) =
            place_data(&sqe, data_out, data_in_len, inner.incapsule_data_max)?;
        sqe.set_dptr(sgl.to_bytes());
        sqe.set_flags((sqe.flags() & 0x3f) | PSDT_SGL);
        let cancel = inner.shared.cancel.clone();
        if cancel.is_cancelled() {
            return Err(inner.shared.error());
        }
        let permit = tokio::select! {
            p = inner.permits.clone().acquire_owned() => p.map_err(|_| InitiatorError::Closed)?,
            () = cancel.cancelled() => return Err(inner.shared.error()),
        };
        let (reply, rx) = oneshot::channel();
        let submit = Submit {
            sqe,
            incapsule,
            r2t_data,
            data_in_len,
            reply,
            permit,
        };
        inner
            .submit_tx
            .send(submit)
            .await
            .map_err(|_| inner.shared.error())?;
        Ok(PendingCompletion {
            rx,
            deadline: timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            shared: inner.shared.clone(),
        })
    }

    /// Queue ID.
    pub fn qid(&self) -> u16 {
        self.inner.qid
    }

    /// Controller ID (from the Connect response; FFFFh before an admin Connect).
    pub fn cntlid(&self) -> u16 {
        self.inner.cntlid.load(Ordering::Relaxed)
    }

    /// Most commands in flight at once.
    pub fn depth(&self) -> usize {
        self.inner.depth
    }

    /// Most in-capsule write data (larger writes go through R2T).
    pub fn incapsule_data_max(&self) -> u32 {
        self.inner.incapsule_data_max
    }

    /// The connection parameters in force (digests, MAXH2CDATA from the ICResp).
    pub fn params(&self) -> &ConnParams {
        &self.inner.params
    }

    /// The target's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer
    }

    /// Generation stamped by the I/O helpers by default (0: unstamped).
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Relaxed)
    }

    /// Change the default generation of the I/O helpers (e.g. after a map change).
    pub fn set_generation(&self, generation: u64) {
        self.inner.generation.store(generation, Ordering::Relaxed);
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.cancel.is_cancelled()
    }

    /// Why the connection ended, if it has.
    pub fn close_reason(&self) -> Option<InitiatorError> {
        self.is_closed().then(|| self.inner.shared.error())
    }

    /// Wait until the connection ends (the target closed it, an error, or [`Queue::close`]),
    /// and return why.
    pub async fn closed(&self) -> InitiatorError {
        self.inner.shared.cancel.cancelled().await;
        self.inner.shared.error()
    }

    /// Close the connection: commands in flight fail with [`InitiatorError::Closed`]. Waits
    /// for both tasks to finish, so the socket is closed on return.
    pub async fn close(&self) {
        self.inner.shared.cancel.cancel();
        let tasks = match self.inner.tasks.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Where a command's data goes: SGL1 for it, the in-capsule data, and the data to send
/// through R2T/H2CData. Writes up to `incapsule_max` (8 KiB on the admin queue and for Fabrics
/// commands, whatever the I/O limit) go in the capsule; no data at all is a null Transport SGL
/// Data Block, as Linux sends.
pub(crate) fn place_data(
    sqe: &Sqe,
    data_out: Option<Bytes>,
    data_in_len: u32,
    incapsule_max: u32,
) -> Result<(SglDescriptor, Bytes, Bytes)> {
    match data_out.filter(|d| !d.is_empty()) {
        Some(_) if data_in_len > 0 => Err(InitiatorError::InvalidArgument {
            what: "NVMe/TCP commands move data in one direction only",
        }),
        Some(d) => {
            let len = u32::try_from(d.len()).map_err(|_| InitiatorError::InvalidArgument {
                what: "data above 4 GiB",
            })?;
            let max = if sqe.opcode() == AdminOpcode::FABRICS.0 {
                incapsule_max.max(ADMIN_INCAPSULE_DATA)
            } else {
                incapsule_max
            };
            Ok(if len <= max {
                (SglDescriptor::in_capsule(len), d, Bytes::new())
            } else {
                (SglDescriptor::transport(len), Bytes::new(), d)
            })
        }
        None => Ok((
            SglDescriptor::transport(data_in_len),
            Bytes::new(),
            Bytes::new(),
        )),
    }
}

/// Build the Connect SQE and its 1024-byte data for `opts` (SGL1 is set by `submit`).
pub(crate) fn connect_capsule(opts: &QueueOptions) -> (Sqe, Bytes) {
    let connect = Connect {
        recfmt: 0,
        qid: opts.qid,
        sqsize: opts.sqsize,
        cattr: if opts.disable_sq_flow_control {
            CATTR_DISABLE_SQ_FLOW_CONTROL
        } else {
            0
        },
        kato_ms: opts.kato_ms,
    };
    let data = ConnectData {
        hostid: opts.hostid,
        cntlid: opts.cntlid,
        subnqn: opts.subnqn.clone(),
        hostnqn: opts.hostnqn.clone(),
    };
    // CONNECT_DATA_LEN is 1024: fits a u32.
    let len = u32::try_from(CONNECT_DATA_LEN).unwrap_or(1024);
    let sqe = connect.to_sqe(0, SglDescriptor::in_capsule(len));
    (sqe, Bytes::copy_from_slice(&data.to_bytes()))
}

/// The ICReq for `t`: PFV 0, no host PDU alignment, the digests and MAXR2T asked for.
pub(crate) fn icreq(t: &TransportOptions) -> IcReq {
    IcReq {
        pfv: 0,
        hpda: 0,
        hdgst: t.hdgst,
        ddgst: t.ddgst,
        maxr2t: t.maxr2t,
    }
}

/// Send the ICReq, read the ICResp and check it as Linux does (`nvme_tcp_init_connection`).
pub(crate) async fn ic_exchange(
    mut stream: TcpStream,
    t: &TransportOptions,
) -> Result<(TcpStream, IcResp, BytesMut)> {
    let mut codec = PduCodec::new(Role::Host, ConnParams::default());
    let icreq = icreq(t);
    let mut out = BytesMut::new();
    codec.encode(Pdu::IcReq(icreq), &mut out)?;
    stream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(READ_BUF_INITIAL);
    let pdu = loop {
        if let Some(pdu) = codec.decode(&mut buf)? {
            break pdu;
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(InitiatorError::eof());
        }
    };
    match pdu {
        Pdu::IcResp(r) => {
            check_icresp(&icreq, &r)?;
            Ok((stream, r, buf))
        }
        Pdu::C2HTermReq(t) => Err(InitiatorError::TermReq {
            fes: t.fes,
            fei: t.fei,
        }),
        _ => Err(InitiatorError::Protocol {
            what: "expected an ICResp",
        }),
    }
}

/// The checks the Linux host makes on an ICResp (PLEN 128 and the PDU layout are the codec's).
pub(crate) fn check_icresp(req: &IcReq, r: &IcResp) -> Result<()> {
    let bad = |what| Err(InitiatorError::Protocol { what });
    if r.pfv != 0 {
        return bad("ICResp PFV is not 0");
    }
    if r.cpda != 0 {
        return bad("ICResp CPDA is not 0 (Linux refuses a data alignment)");
    }
    if r.hdgst != req.hdgst || r.ddgst != req.ddgst {
        return bad("ICResp digest settings differ from the ICReq");
    }
    if r.maxh2cdata < MAXH2CDATA_MIN || !r.maxh2cdata.is_multiple_of(4) {
        return bad("ICResp MAXH2CDATA below 4096 or not a multiple of 4");
    }
    Ok(())
}
