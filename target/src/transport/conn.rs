//! One NVMe/TCP connection (= one queue): IC exchange, command capsules, R2T/H2CData for writes,
//! C2HData for reads, responses, and the connection-fatal error path (C2HTermReq, then close).
//!
//! A connection lives in one task. It reads PDUs; each command gets one entry in the queue's
//! [`CommandTable`] (a CID already in flight is refused), is parsed, has its namespace resolved
//! and where its data comes from (in-capsule or R2T) decided before anything runs, runs (inline
//! or as a future kept in `inflight`), and its completion is queued into a [`Writer`] that
//! flushes when nothing else is ready; then its entry is free again.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codec::nvme::Status;
use codec::nvme::cmd::{self, Command, QueueKind};
use codec::nvme::{Cqe, Sqe};
use codec::pdu::{
    C2HData, CapsuleCmd, CapsuleResp, ConnParams, Fes, H2CData, IcReq, IcResp, Pdu, PduCodec,
    PduError, R2T, Role, TermReq,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{Instrument, debug, info_span, warn};

use super::TransportConfig;
use super::command::{CmdState, CommandTable, DataPlan, H2cTransfer, plan_data};
use super::writer::Writer;
use crate::controller::exec::{self, Completion, Outcome, Queue};
use crate::subsystem::Registry;

/// How long a connection waits for in-flight commands when the target shuts down.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// How long a new connection may take to send its ICReq (Linux sends it at once).
const IC_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read from the socket per `read` call at most (many PDUs per syscall).
const READ_CHUNK: usize = 256 * 1024;

/// Free space below which the receive buffer is topped up before the next read.
const READ_FREE_MIN: usize = 16 * 1024;

/// Where a connection is in its life (one doc line per state; transitions in `set_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Waiting for the host's ICReq.
    AwaitIcReq,
    /// IC exchange done; only a Fabrics Connect may come.
    AwaitConnect,
    /// Connect accepted: admin or I/O commands flow.
    Live,
    /// Stopped reading: draining in-flight commands before closing.
    Draining,
}

/// A command running on a backend: resolves to its tag and its completion.
type InflightFuture = Pin<Box<dyn std::future::Future<Output = (u16, Completion)> + Send>>;

/// Serves one TCP connection until it ends.
pub async fn serve(
    registry: Arc<Registry>,
    stream: TcpStream,
    peer: SocketAddr,
    cfg: TransportConfig,
    shutdown: watch::Receiver<bool>,
) {
    let span = info_span!("conn", %peer);
    async move {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        let mut c = Conn::new(registry, stream, local, cfg);
        match c.run(shutdown).await {
            Ok(()) => debug!("connection closed"),
            Err(e) => debug!(error = %e, "connection ended"),
        }
        c.out.close(&mut c.queue.pool).await;
        c.release();
    }
    .instrument(span)
    .await
}

struct Conn {
    registry: Arc<Registry>,
    cfg: TransportConfig,
    state: ConnState,
    codec: PduCodec,
    rd: tokio::net::tcp::OwnedReadHalf,
    rbuf: BytesMut,
    out: Writer,
    queue: Queue,
    /// Every command the queue holds, from its capsule to its completion.
    table: CommandTable,
    /// The table's commands that are running on a backend (their tags).
    inflight: FuturesUnordered<InflightFuture>,
    /// SQ head pointer reported in every CQE (NVMe-oF 1.1, section 3.3.2.x: SQ flow control).
    sqhd: u16,
    /// R2Ts the host accepts outstanding per command (ICReq MAXR2T + 1).
    host_maxr2t: u32,
    /// The table's size as scrapes see it (`tessera_commands_in_flight`).
    in_flight: crate::metrics::InFlight,
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The peer closed or the socket failed.
    Io(std::io::Error),
    /// The peer broke the protocol; a C2HTermReq was sent.
    Fatal(String),
    /// Controller torn down (keep-alive expiry, Disconnect) or target shutdown.
    Closed(&'static str),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Io(e) => write!(f, "I/O: {e}"),
            End::Fatal(s) => write!(f, "protocol error: {s}"),
            End::Closed(s) => write!(f, "closed: {s}"),
        }
    }
}

impl Conn {
    /// A connection that has just been accepted: waiting for its ICReq.
    fn new(
        registry: Arc<Registry>,
        stream: TcpStream,
        local: Option<SocketAddr>,
        cfg: TransportConfig,
    ) -> Self {
        let (rd, wr) = stream.into_split();
        Conn {
            registry,
            cfg,
            state: ConnState::AwaitIcReq,
            codec: PduCodec::new(Role::Target, cfg.limits(cfg.admin_incapsule)),
            rd,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            out: Writer::new(wr),
            queue: Queue {
                pool: crate::transport::bufpool::BufPool::for_mdts(cfg.mdts_bytes),
                local,
                ..Queue::default()
            },
            table: CommandTable::new(exec::UNCONNECTED_DEPTH),
            inflight: FuturesUnordered::new(),
            sqhd: 0,
            host_maxr2t: 1,
            in_flight: crate::metrics::InFlight::default(),
        }
    }

    fn set_state(&mut self, next: ConnState) {
        use ConnState::*;
        debug_assert!(
            matches!(
                (self.state, next),
                (AwaitIcReq, AwaitConnect)
                    | (AwaitConnect, Live)
                    | (AwaitIcReq | AwaitConnect | Live, Draining)
            ),
            "illegal connection transition {:?} -> {next:?}",
            self.state
        );
        self.state = next;
    }

    async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), End> {
        let ic_deadline = tokio::time::Instant::now() + IC_TIMEOUT;
        let mut dead: Option<watch::Receiver<bool>> = None;
        loop {
            // Handle every complete PDU already buffered before reading more.
            self.drain_input().await?;
            if dead.is_none()
                && let Some(c) = &self.queue.ctrl
            {
                dead = Some(c.watch_dead());
            }
            if !self.inflight.is_empty() || self.out.queued_bytes() > 0 {
                // Complete whatever is ready without waiting, then flush once for the batch.
                while let Some(Some((tag, done))) =
                    futures::FutureExt::now_or_never(self.inflight.next())
                {
                    self.finish(tag, done)?;
                }
                self.out
                    .flush(&mut self.queue.pool)
                    .await
                    .map_err(End::Io)?;
            }
            self.in_flight.set(self.table.len());
            // Back-pressure: stop reading while the queue is full (a host may not exceed SQSIZE
            // anyway); completions make room. Measured after the completions above: measured
            // before them, a full queue whose commands all completed at once left the select
            // below with no branch that could ever wake it (nothing in flight, reading off).
            let can_read = self.inflight.len() < self.queue.depth_limit();
            let auth_deadline = self.queue.auth.as_ref().and_then(|s| s.deadline());
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    return self.drain("target shutting down").await;
                }
                () = tokio::time::sleep_until(auth_deadline.map_or(ic_deadline, tokio::time::Instant::from_std)), if auth_deadline.is_some() => {
                    return self.drain("in-band authentication not completed in time").await;
                }
                _ = wait_dead(&mut dead) => {
                    return self.drain("controller torn down").await;
                }
                Some((tag, done)) = self.inflight.next(), if !self.inflight.is_empty() => {
                    self.finish(tag, done)?;
                }
                r = self.rd.read_buf(&mut self.rbuf), if can_read => {
                    match r {
                        Ok(0) => return Err(End::Closed("peer closed the connection")),
                        Ok(_) => crate::transport::busypoll::note_activity(),
                        Err(e) => return Err(End::Io(e)),
                    }
                }
                () = tokio::time::sleep_until(ic_deadline), if self.state == ConnState::AwaitIcReq => {
                    return Err(End::Closed("no ICReq in time"));
                }
            }
            if self.rbuf.capacity() - self.rbuf.len() < READ_FREE_MIN {
                // Ask for no more than the original buffer holds: once every PDU carved out of
                // it has been dropped, BytesMut takes the same allocation back instead of
                // allocating (the decoder reserves a whole large PDU itself when it needs to).
                let want = READ_CHUNK
                    .saturating_sub(self.rbuf.len())
                    .max(READ_FREE_MIN);
                self.rbuf.reserve(want);
            }
        }
    }

    /// Stops reading, waits (bounded) for in-flight commands, sends their completions, closes.
    async fn drain(&mut self, why: &'static str) -> Result<(), End> {
        self.set_state(ConnState::Draining);
        // An admin queue takes its controller down first: parked AERs complete (aborted) at
        // once instead of holding the drain, and the controller's I/O queues drain too.
        if let Some(c) = &self.queue.ctrl
            && self.queue.qid == 0
        {
            c.teardown(why);
        }
        let deadline = tokio::time::sleep(SHUTDOWN_DRAIN);
        tokio::pin!(deadline);
        while !self.inflight.is_empty() {
            tokio::select! {
                Some((tag, done)) = self.inflight.next() => self.finish(tag, done)?,
                () = &mut deadline => break,
            }
        }
        self.out.close(&mut self.queue.pool).await;
        Err(End::Closed(why))
    }

    /// Decodes and handles every complete PDU in the receive buffer.
    async fn drain_input(&mut self) -> Result<(), End> {
        use tokio_util::codec::Decoder;
        loop {
            if !self.state_accepts_input() {
                return Ok(());
            }
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(pdu)) => self.on_pdu(pdu)?,
                Ok(None) => return Ok(()),
                Err(PduError::DataDigest {
                    pdu_type,
                    cccid,
                    ttag,
                    datao,
                    datal,
                    ..
                }) => {
                    // NVMe/TCP 1.0, section 3.6.2.1: a data digest error fails the command
                    // with Transient Transport Error; the connection stays up. For H2CData the
                    // rest of the transfer may already be on its way: it is received and
                    // discarded before the command completes.
                    warn!(cid = cccid, "data digest error");
                    if pdu_type == codec::pdu::PduType::H2C_DATA {
                        self.h2c_arrived(cccid, ttag, datao, datal, None)?;
                    } else {
                        let st = Status::TRANSIENT_TRANSPORT_ERROR;
                        self.respond(cccid, Completion::status(st))?;
                    }
                }
                Err(e) => return Err(self.fatal_pdu_error(e).await),
            }
        }
    }

    fn state_accepts_input(&self) -> bool {
        self.state != ConnState::Draining
    }

    /// Sends the C2HTermReq a malformed PDU calls for, then ends the connection.
    async fn fatal_pdu_error(&mut self, e: PduError) -> End {
        let msg = e.to_string();
        if let Some(term) = e.term_req() {
            debug!(error = %msg, "malformed PDU: sending C2HTermReq");
            crate::metrics::count_term_req(term.fes);
            let _ = self
                .out
                .push(&mut self.codec, Pdu::C2HTermReq(term), &mut self.queue.pool);
        }
        self.out.close(&mut self.queue.pool).await;
        End::Fatal(msg)
    }

    /// A protocol violation found above the codec (e.g. H2CData for an unknown TTAG).
    fn fatal(&mut self, fes: Fes, fei: u32, what: &'static str) -> End {
        crate::metrics::count_term_req(fes);
        let term = TermReq {
            fes,
            fei,
            data: Bytes::new(),
        };
        let _ = self
            .out
            .push(&mut self.codec, Pdu::C2HTermReq(term), &mut self.queue.pool);
        End::Fatal(what.to_string())
    }

    fn on_pdu(&mut self, pdu: Pdu) -> Result<(), End> {
        match pdu {
            Pdu::IcReq(ic) => self.on_icreq(ic),
            Pdu::CapsuleCmd(c) => self.on_command(c),
            Pdu::H2CData(d) => self.on_h2c_data(d),
            Pdu::H2CTermReq(t) => {
                debug!(fes = %t.fes, fei = t.fei, "host terminated the connection");
                Err(End::Closed("H2CTermReq"))
            }
            // The codec only yields PDUs a target may receive.
            other => Err(self.fatal(
                Fes::INVALID_PDU_HEADER_FIELD,
                0,
                match other.pdu_type().name() {
                    Some(_) => "PDU type not valid from a host",
                    None => "unknown PDU type",
                },
            )),
        }
    }

    fn on_icreq(&mut self, ic: IcReq) -> Result<(), End> {
        // NVMe/TCP 1.0, section 3.6.2.2: PFV 0 is the only version.
        if ic.pfv != 0 {
            return Err(self.fatal(Fes::UNSUPPORTED_PARAMETER, 8, "ICReq PFV not 0"));
        }
        // HPDA above 31 is reserved (the field is 5 bits wide).
        if ic.hpda > codec::pdu::params::PDA_MAX {
            return Err(self.fatal(Fes::UNSUPPORTED_PARAMETER, 10, "ICReq HPDA out of range"));
        }
        self.host_maxr2t = ic.maxr2t.saturating_add(1);
        let resp = IcResp {
            pfv: 0,
            cpda: 0,
            hdgst: ic.hdgst,
            ddgst: ic.ddgst,
            maxh2cdata: self.cfg.max_h2c_data,
        };
        self.out
            .push(&mut self.codec, Pdu::IcResp(resp), &mut self.queue.pool)
            .map_err(|e| End::Fatal(e.to_string()))?;
        let mut p = self.cfg.limits(self.cfg.admin_incapsule);
        p.hdgst = ic.hdgst;
        p.ddgst = ic.ddgst;
        p.hpda = ic.hpda;
        p.cpda = 0;
        self.codec.set_params(p);
        self.set_state(ConnState::AwaitConnect);
        Ok(())
    }

    fn on_command(&mut self, cap: CapsuleCmd) -> Result<(), End> {
        let CapsuleCmd { sqe, data } = cap;
        let cid = sqe.cid();
        // SQ head after this command is consumed (the Connect itself counts: its response
        // carries SQHD 1, as Linux nvmet and SPDK report).
        self.sqhd = if self.queue.sqsize == 0 {
            self.sqhd.wrapping_add(1)
        } else {
            (self.sqhd + 1) % self.queue.sqsize.saturating_add(1)
        };
        // Any admin command restarts the keep-alive timer (Keep Alive itself does in admin.rs).
        // I/O commands do not: we do not advertise traffic-based keep alive (CTRATT.TBKAS), so
        // hosts send Keep Alive every KATO/2 anyway, and the I/O path saves a clock read.
        if self.queue.qid == 0
            && let Some(c) = &self.queue.ctrl
        {
            c.keep_alive();
        }
        // One entry per command from here to its completion; a CID already in flight on this
        // queue is refused before anything else (Command ID Conflict).
        let tag = match self.table.begin(cid) {
            Ok(t) => t,
            Err(why) => {
                debug!(cid, opcode = sqe.opcode(), ?why, "command refused");
                return self.respond(cid, Completion::status(why.status()));
            }
        };
        let plan = match self.admit(tag, &sqe, data.len()) {
            Ok(p) => p,
            Err(st) => return self.finish(tag, Completion::status(st)),
        };
        match plan {
            DataPlan::InCapsule { len } => {
                // Of the bytes the capsule carries, the command uses the first `len`.
                let mut data = data;
                data.truncate(len as usize);
                self.table.set_state(tag, CmdState::ReadyToExecute);
                self.execute(tag, data)
            }
            DataPlan::Solicit { len } => self.solicit(tag, len),
            // Reads send `len` bytes by C2HData whatever the host's buffer holds beyond.
            DataPlan::ToHost { .. } | DataPlan::None => {
                self.table.set_state(tag, CmdState::ReadyToExecute);
                self.execute(tag, Bytes::new())
            }
        }
    }

    /// Parses the command of `tag`, resolves its namespace and decides where its data comes
    /// from, filling its entry once.
    fn admit(&mut self, tag: u16, sqe: &Sqe, capsule_len: usize) -> Result<DataPlan, Status> {
        let kind = if self.queue.qid == 0 {
            QueueKind::Admin
        } else {
            QueueKind::Io
        };
        let cmd = cmd::parse(sqe, kind).inspect_err(|st| {
            debug!(cid = sqe.cid(), opcode = sqe.opcode(), status = %st, "command rejected at parse");
        })?;
        if self.state == ConnState::AwaitConnect && !matches!(cmd, Command::Fabrics(_)) {
            return Err(Status::CMD_SEQ_ERROR.with_dnr());
        }
        let (dir, ns) = exec::resolve(&self.queue, &cmd)?;
        // MDTS and the one SGL rule (docs/transport.md): at least the transfer described,
        // longer accepted, in-capsule data exactly as described.
        let plan = plan_data(sqe, dir, capsule_len, self.cfg.mdts_bytes)?;
        if let Some(e) = self.table.get_mut(tag) {
            e.cmd = Some(cmd);
            e.ns = ns;
        }
        Ok(plan)
    }

    /// Starts the R2T/H2CData transfer of a write's `len` bytes: its TTAG is its tag.
    fn solicit(&mut self, tag: u16, len: u32) -> Result<(), End> {
        if let Some(e) = self.table.get_mut(tag) {
            // The buffer is reserved on the first H2CData that does not carry everything.
            e.h2c = H2cTransfer {
                len,
                ..H2cTransfer::default()
            };
        }
        self.table.set_state(tag, CmdState::AwaitingH2cData);
        self.send_r2ts(tag)
    }

    /// Sends R2Ts for `ttag` while fewer than MAXR2T are outstanding and data remains.
    fn send_r2ts(&mut self, ttag: u16) -> Result<(), End> {
        let max_r2t_len = self.cfg.r2t_len_max;
        let outstanding_max = self.host_maxr2t.min(self.cfg.r2t_outstanding_max);
        // Borrow the fields apart: the command's entry and the output queue are disjoint.
        let Conn {
            table,
            out,
            codec,
            queue,
            ..
        } = self;
        let Some(e) = table.awaiting_data(ttag) else {
            return Ok(());
        };
        let cid = e.cid;
        let p = &mut e.h2c;
        let received = p.received;
        while p.solicited < p.len {
            let outstanding = (p.solicited - received).div_ceil(max_r2t_len);
            if outstanding >= outstanding_max {
                break;
            }
            let n = (p.len - p.solicited).min(max_r2t_len);
            let r2t = R2T {
                cccid: cid,
                ttag,
                r2to: p.solicited,
                r2tl: n,
            };
            p.solicited += n;
            out.push(codec, Pdu::R2T(r2t), &mut queue.pool)
                .map_err(|e| End::Fatal(e.to_string()))?;
        }
        Ok(())
    }

    fn on_h2c_data(&mut self, d: H2CData) -> Result<(), End> {
        let datal = u32::try_from(d.data.len()).unwrap_or(u32::MAX);
        self.h2c_arrived(d.cccid, d.ttag, d.datao, datal, Some(d.data))
    }

    /// One H2CData PDU for `ttag`: its data, or `None` when its data digest failed.
    fn h2c_arrived(
        &mut self,
        cccid: u16,
        ttag: u16,
        datao: u32,
        datal: u32,
        data: Option<Bytes>,
    ) -> Result<(), End> {
        // NVMe/TCP 1.0, section 3.6.2.8: TTAG names the R2T; an unknown one is a header field
        // error at TTAG's offset (byte 10); DATAO must be where the data so far ends and the
        // data must stay inside what was solicited (Data Transfer Out of Range otherwise).
        let Some(e) = self.table.awaiting_data(ttag) else {
            return Err(self.fatal(
                Fes::INVALID_PDU_HEADER_FIELD,
                10,
                "H2CData for an unknown TTAG",
            ));
        };
        if e.cid != cccid {
            return Err(self.fatal(
                Fes::INVALID_PDU_HEADER_FIELD,
                8,
                "H2CData CCCID does not match its TTAG",
            ));
        }
        let p = &mut e.h2c;
        let received = p.received;
        if datao != received {
            return Err(self.fatal(
                Fes::DATA_OUT_OF_RANGE,
                0,
                "H2CData DATAO is not the next expected offset",
            ));
        }
        let end = received.saturating_add(datal);
        if end > p.solicited {
            return Err(self.fatal(
                Fes::DATA_OUT_OF_RANGE,
                0,
                "H2CData beyond the solicited range",
            ));
        }
        p.received = end;
        match data {
            None => p.failed = true,
            Some(data) if !p.failed => {
                if received == 0 && end == p.len {
                    // One H2CData carries the whole transfer (Linux: R2TL = MAXH2CDATA =
                    // MDTS): use its bytes where they landed in the receive buffer, no copy.
                    self.table.set_state(ttag, CmdState::ReadyToExecute);
                    return self.execute(ttag, data);
                }
                if p.buf.capacity() == 0 {
                    p.buf.reserve(p.len as usize);
                }
                p.buf.extend_from_slice(&data);
            }
            Some(_) => {}
        }
        if end == p.len || (p.failed && end == p.solicited) {
            // All data is in, or a failed transfer has no R2T left outstanding: finish.
            if p.failed {
                let st = Status::TRANSIENT_TRANSPORT_ERROR;
                return self.finish(ttag, Completion::status(st));
            }
            let data = std::mem::take(&mut p.buf).freeze();
            self.table.set_state(ttag, CmdState::ReadyToExecute);
            return self.execute(ttag, data);
        }
        // The R2T window is used up: solicit the next one.
        if end == p.solicited {
            return self.send_r2ts(ttag);
        }
        Ok(())
    }

    /// Runs the command of `tag`, whose data (if any) is all here.
    fn execute(&mut self, tag: u16, data: Bytes) -> Result<(), End> {
        let Some(e) = self.table.get_mut(tag) else {
            debug_assert!(false, "execute: tag {tag} holds no command");
            return Ok(());
        };
        let (Some(cmd), ns) = (e.cmd.take(), e.ns.take()) else {
            debug_assert!(false, "execute: tag {tag} has no parsed command");
            return self.finish(tag, Completion::status(Status::INTERNAL));
        };
        self.table.set_state(tag, CmdState::Executing);
        let outcome = exec::execute(&self.registry, &mut self.queue, cmd, ns, data);
        match outcome {
            Outcome::Done(c) => self.finish(tag, c),
            Outcome::Pending(mut f) => {
                // Inline backends (RAM, null) finish on the first poll: complete at once rather
                // than parking the command in `inflight`.
                if let Some(c) = futures::FutureExt::now_or_never(f.as_mut()) {
                    return self.finish(tag, c);
                }
                self.inflight.push(Box::pin(async move { (tag, f.await) }));
                Ok(())
            }
            Outcome::Connected(c) => {
                self.on_connected();
                self.finish(tag, c)
            }
        }
    }

    /// The queue's Connect was accepted: I/O queues get the I/O in-capsule limit.
    fn on_connected(&mut self) {
        if self.state == ConnState::AwaitConnect {
            self.set_state(ConnState::Live);
        }
        // The queue's real depth (SQSIZE + 1) is known now.
        self.table.grow(self.queue.depth_limit());
        let incapsule = if self.queue.qid == 0 {
            self.cfg.admin_incapsule
        } else {
            self.cfg.io_incapsule
        };
        let old = *self.codec.params();
        let mut p = self.cfg.limits(incapsule);
        p.hdgst = old.hdgst;
        p.ddgst = old.ddgst;
        p.hpda = old.hpda;
        p.cpda = old.cpda;
        self.codec.set_params(p);
    }

    /// Ends the command of `tag`: frees its entry (and its CID) and queues its completion.
    fn finish(&mut self, tag: u16, done: Completion) -> Result<(), End> {
        match self.table.complete(tag) {
            Some(cid) => self.respond(cid, done),
            None => {
                debug_assert!(false, "finish: tag {tag} holds no command");
                Ok(())
            }
        }
    }

    /// Queues the completion of `cid`: C2HData (with SUCCESS when SQ flow control is off, so
    /// no response capsule follows), and/or a response capsule.
    fn respond(&mut self, cid: u16, done: Completion) -> Result<(), End> {
        let ok = done.status.is_success();
        if !ok {
            crate::metrics::count_error_status(done.status);
        }
        // SUCCESS in the C2HData replaces the response capsule (NVMe/TCP 1.0, 3.6.2.9) when SQ
        // flow control is off and the completion carries nothing else.
        let success = self.queue.sq_flow_disabled && done.dw0 == 0 && done.dw1 == 0;
        let head = C2HData {
            cccid: cid,
            datao: 0,
            last: true,
            success,
            data: Bytes::new(),
        };
        let mut resp_needed = true;
        if let Some(data) = done.mapped.filter(|d| ok && !d.is_empty()) {
            self.out
                .push_mapped(&mut self.codec, head, data, &mut self.queue.pool)
                .map_err(|e| End::Fatal(e.to_string()))?;
            resp_needed = !success;
        } else if let Some(data) = done.data.filter(|d| ok && !d.is_empty()) {
            let pdu = Pdu::C2HData(C2HData { data, ..head });
            self.out
                .push(&mut self.codec, pdu, &mut self.queue.pool)
                .map_err(|e| End::Fatal(e.to_string()))?;
            resp_needed = !success;
        }
        if resp_needed {
            let mut cqe = Cqe::default();
            cqe.set_cid(cid);
            cqe.set_dw0(done.dw0);
            cqe.set_dw1(done.dw1);
            cqe.set_sqhd(self.sqhd);
            cqe.set_sqid(self.queue.qid);
            cqe.set_status_field(done.status.field());
            self.out
                .push(
                    &mut self.codec,
                    Pdu::CapsuleResp(CapsuleResp { cqe }),
                    &mut self.queue.pool,
                )
                .map_err(|e| End::Fatal(e.to_string()))?;
        }
        if done.close_after {
            return Err(End::Closed("Disconnect"));
        }
        Ok(())
    }

    /// Releases what the queue holds in its controller.
    fn release(&mut self) {
        exec::queue_closed(&self.queue);
    }
}

async fn wait_dead(dead: &mut Option<watch::Receiver<bool>>) {
    match dead {
        Some(rx) => {
            if rx.wait_for(|d| *d).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

impl TransportConfig {
    /// Codec limits for a queue whose in-capsule data limit is `incapsule`.
    pub fn limits(&self, incapsule: u32) -> ConnParams {
        ConnParams {
            max_pdu_len: ConnParams::derived_max_pdu_len(self.max_h2c_data, incapsule),
            max_h2c_data: self.max_h2c_data,
            max_incapsule_data: incapsule,
            ..ConnParams::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Size of a response capsule without digests: 8-byte header, 16-byte CQE.
    const RESP_LEN: usize = 24;

    /// A queue whose every command completes at once, while the queue is full, goes on reading
    /// the socket. (It used to decide whether to read before completing what was ready: with
    /// the queue full it read nothing, and with nothing left in flight no completion could
    /// wake it either; the host's next command was never read.)
    #[tokio::test]
    async fn a_full_queue_that_completes_at_once_does_not_stop_reading() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut host = TcpStream::connect(l.local_addr().expect("address"))
            .await
            .expect("connect");
        let (stream, _) = l.accept().await.expect("accept");
        let registry = Arc::new(Registry::new(Vec::new(), 0));
        let mut c = Conn::new(registry, stream, None, TransportConfig::default());
        c.state = ConnState::Live;
        let depth = c.queue.depth_limit();
        for cid in 0..depth {
            let cid = u16::try_from(cid).expect("small depth");
            let tag = c.table.begin(cid).expect("a free entry");
            c.table.set_state(tag, CmdState::ReadyToExecute);
            c.table.set_state(tag, CmdState::Executing);
            // Already done: the first poll of the in-flight set completes all of them.
            c.inflight
                .push(Box::pin(async move { (tag, Completion::ok()) }));
        }
        let (_shutdown, rx) = watch::channel(false);
        let run = tokio::spawn(async move { c.run(rx).await.map_err(|e| e.to_string()) });
        let mut resps = vec![0u8; depth * RESP_LEN];
        tokio::time::timeout(Duration::from_secs(20), host.read_exact(&mut resps))
            .await
            .expect("every completion within 20 s")
            .expect("read the completions");
        // The host hangs up: a connection that still reads sees it and ends.
        host.shutdown().await.expect("shutdown");
        let end = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the connection stopped reading: it never saw the host hang up")
            .expect("the connection task");
        assert!(
            matches!(&end, Err(s) if s.contains("peer closed")),
            "ended with {end:?}"
        );
    }
}
