//! The engine behind a [`super::Queue`]: one writer task and one reader task per connection,
//! joined by channels. No lock is taken per command.
//!
//! ```text
//!  submitters ──Submit──▶ writer ──Register──▶ reader ◀── socket (CapsuleResp, C2HData, R2T)
//!   (permit)             │  ▲                   │
//!                        │  └──H2C / Free / Terminate──┘
//!                        ▼
//!                      socket (CapsuleCmd, H2CData; batched, vectored)
//! ```
//!
//! * The writer owns the free list of CID slots. A submitter first takes a semaphore permit
//!   (one per slot), so the writer always finds a free slot. The permit travels with the
//!   command and returns to the pool only when the writer gets the slot back.
//! * The writer hands each command to the reader (`Register`) *before* its capsule is
//!   written, so the reader always knows a CID before the target can answer it.
//! * The reader owns the in-flight table: it reassembles C2HData, answers R2T by asking the
//!   writer to send H2CData, and completes the submitter's oneshot. It gives the slot back
//!   through the writer's control channel, behind any H2CData still queued for it, so a slot
//!   is never reused while data for its previous command is still to be sent.
//! * Reader and writer are separate tasks so that a write blocked on a full socket never stops
//!   us from reading (a target blocked writing C2HData to us would otherwise deadlock us both).

use std::io::IoSlice;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use codec::nvme::{Cqe, Sqe, Status};
use codec::pdu::{
    C2HData, CapsuleCmd, Fes, H2CData, Pdu, PduCodec, PduError, PduType, R2T, TermReq, flags,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::error::{InitiatorError, Result};
use super::queue::Completion;
use super::{
    CID_GEN_MASK, CID_INDEX_BITS, CID_INDEX_MASK, INLINE_COPY_MAX, READ_BUF_INITIAL,
    TERM_REQ_GRACE, WRITE_BATCH_BYTES_MAX, WRITE_BATCH_PDUS_MAX, WRITE_IOVECS_MAX,
};

/// State shared by a queue's handles and its two tasks.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Cancelled when the connection ends, for whatever reason.
    pub(crate) cancel: CancellationToken,
    /// The first error that ended the connection.
    error: OnceLock<InitiatorError>,
}

impl Shared {
    /// Record `e` (unless an earlier error is recorded) and stop both tasks.
    pub(crate) fn fail(&self, e: InitiatorError) {
        let _ = self.error.set(e);
        self.cancel.cancel();
    }

    /// Why the connection ended ([`InitiatorError::Closed`] if it was closed on purpose).
    pub(crate) fn error(&self) -> InitiatorError {
        self.error.get().cloned().unwrap_or(InitiatorError::Closed)
    }
}

type Reply = oneshot::Sender<Result<Completion>>;

/// A command on its way from a submitter to the writer. SGL1 is already set.
pub(crate) struct Submit {
    pub(crate) sqe: Sqe,
    /// In-capsule data (empty: none).
    pub(crate) incapsule: Bytes,
    /// Data the target will solicit with R2T (empty: none).
    pub(crate) r2t_data: Bytes,
    /// Bytes expected through C2HData.
    pub(crate) data_in_len: u32,
    pub(crate) reply: Reply,
    pub(crate) permit: OwnedSemaphorePermit,
}

/// A command handed from the writer to the reader, under its CID.
struct Register {
    cid: u16,
    reply: Reply,
    data_in_len: u32,
    r2t_data: Bytes,
    permit: OwnedSemaphorePermit,
}

/// Reader to writer.
enum ToWriter {
    /// Send `data` (the R2T's range of the command's data, starting at `r2to`) as H2CData.
    H2C {
        cid: u16,
        ttag: u16,
        r2to: u32,
        data: Bytes,
    },
    /// The command in slot `index` is complete: the slot and its permit are free again.
    Free {
        index: usize,
        permit: OwnedSemaphorePermit,
    },
    /// The target broke the protocol: send this H2CTermReq, then close.
    Terminate(TermReq),
}

/// Spawn the two tasks of a connection whose IC exchange is done. `rx_codec` and `tx_codec`
/// carry the negotiated parameters; `buf` holds whatever arrived after the ICResp.
pub(crate) struct Engine {
    pub(crate) rd: OwnedReadHalf,
    pub(crate) wr: OwnedWriteHalf,
    pub(crate) rx_codec: PduCodec,
    pub(crate) tx_codec: PduCodec,
    pub(crate) buf: BytesMut,
    pub(crate) depth: usize,
    pub(crate) maxh2cdata: u32,
    pub(crate) shared: Arc<Shared>,
    pub(crate) span: tracing::Span,
}

impl Engine {
    pub(crate) fn spawn(
        self,
        submit_rx: mpsc::Receiver<Submit>,
    ) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
        use tracing::Instrument;
        let (reg_tx, reg_rx) = mpsc::unbounded_channel();
        let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
        debug_assert!(
            self.depth <= CID_INDEX_MASK + 1,
            "queue depth above the CID index space"
        );
        let writer = Writer {
            wr: self.wr,
            codec: self.tx_codec,
            // MAXH2CDATA was checked to be at least 4096 in the ICResp.
            maxh2cdata: usize::try_from(self.maxh2cdata).unwrap_or(usize::MAX),
            // Pop from the end: hand out low indices first.
            free: (0..self.depth).rev().collect(),
            gens: vec![0; self.depth],
            reg_tx,
            batch: Batch::default(),
            shared: self.shared.clone(),
        };
        let reader = Reader {
            rd: self.rd,
            codec: self.rx_codec,
            buf: self.buf,
            slots: (0..self.depth).map(|_| None).collect(),
            reg_rx,
            to_writer: ctrl_tx,
            shared: self.shared,
        };
        let w = tokio::spawn(writer.run(submit_rx, ctrl_rx).instrument(self.span.clone()));
        let r = tokio::spawn(reader.run().instrument(self.span));
        (r, w)
    }
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

/// PDUs encoded for one vectored write: header bytes and small data are copied into `cur`,
/// large data stays in its own `Bytes` (no copy).
#[derive(Default)]
struct Batch {
    parts: Vec<Bytes>,
    cur: BytesMut,
    len: usize,
    pdus: usize,
}

impl Batch {
    fn push(&mut self, codec: &mut PduCodec, pdu: &Pdu) -> std::result::Result<(), PduError> {
        let before = self.cur.len();
        let tail = codec.encode_head(pdu, &mut self.cur)?;
        self.len += self.cur.len() - before;
        self.pdus += 1;
        if let Some(t) = tail {
            if t.data.len() <= INLINE_COPY_MAX {
                self.cur.extend_from_slice(&t.data);
            } else {
                self.seal();
                self.parts.push(t.data.clone());
            }
            self.cur.extend_from_slice(t.trailer());
            self.len += t.wire_len();
        }
        Ok(())
    }

    fn seal(&mut self) {
        if !self.cur.is_empty() {
            self.parts.push(self.cur.split().freeze());
        }
    }

    fn is_full(&self) -> bool {
        self.len >= WRITE_BATCH_BYTES_MAX || self.pdus >= WRITE_BATCH_PDUS_MAX
    }

    /// Write everything with as few `writev` calls as the socket allows.
    async fn flush(&mut self, wr: &mut OwnedWriteHalf) -> std::io::Result<()> {
        self.seal();
        let (mut i, mut off) = (0usize, 0usize);
        while i < self.parts.len() {
            let n = {
                let mut slices = Vec::with_capacity(WRITE_IOVECS_MAX.min(self.parts.len() - i));
                slices.push(IoSlice::new(self.parts[i].get(off..).unwrap_or_default()));
                slices.extend(
                    self.parts[i + 1..]
                        .iter()
                        .take(WRITE_IOVECS_MAX - 1)
                        .map(|p| IoSlice::new(p)),
                );
                wr.write_vectored(&slices).await?
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            let mut n = n;
            while n > 0 && i < self.parts.len() {
                let rem = self.parts[i].len() - off;
                if n >= rem {
                    n -= rem;
                    i += 1;
                    off = 0;
                } else {
                    off += n;
                    n = 0;
                }
            }
        }
        self.parts.clear();
        self.len = 0;
        self.pdus = 0;
        Ok(())
    }
}

enum WriterMsg {
    Submit(Submit),
    Ctrl(ToWriter),
}

struct Writer {
    wr: OwnedWriteHalf,
    codec: PduCodec,
    maxh2cdata: usize,
    /// Free slot indices.
    free: Vec<usize>,
    /// Per slot, the generation put in the CID's upper bits: a response for a previous user
    /// of the slot does not match the CID in flight.
    gens: Vec<u16>,
    reg_tx: mpsc::UnboundedSender<Register>,
    batch: Batch,
    shared: Arc<Shared>,
}

impl Writer {
    async fn run(
        mut self,
        mut submit_rx: mpsc::Receiver<Submit>,
        mut ctrl_rx: mpsc::UnboundedReceiver<ToWriter>,
    ) {
        match self.run_inner(&mut submit_rx, &mut ctrl_rx).await {
            Ok(()) => self.shared.cancel.cancel(),
            Err(e) => {
                tracing::debug!(error = %e, "writer stopped");
                self.shared.fail(e);
            }
        }
        let _ = self.wr.shutdown().await;
    }

    async fn run_inner(
        &mut self,
        submit_rx: &mut mpsc::Receiver<Submit>,
        ctrl_rx: &mut mpsc::UnboundedReceiver<ToWriter>,
    ) -> Result<()> {
        let cancel = self.shared.cancel.clone();
        loop {
            let first = tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                m = ctrl_rx.recv() => match m {
                    Some(m) => WriterMsg::Ctrl(m),
                    None => return Ok(()),
                },
                m = submit_rx.recv() => match m {
                    Some(m) => WriterMsg::Submit(m),
                    // Every handle of the queue is gone: close.
                    None => return Ok(()),
                },
            };
            let mut terminate = self.handle(first)?;
            // Batch whatever else is already waiting (control first: it frees slots and
            // moves data the target is waiting for).
            while !terminate && !self.batch.is_full() {
                let m = if let Ok(m) = ctrl_rx.try_recv() {
                    WriterMsg::Ctrl(m)
                } else if let Ok(m) = submit_rx.try_recv() {
                    WriterMsg::Submit(m)
                } else {
                    break;
                };
                terminate = self.handle(m)?;
            }
            if terminate {
                // Best effort: the target may have stopped reading.
                let _ = tokio::time::timeout(TERM_REQ_GRACE, self.batch.flush(&mut self.wr)).await;
                return Ok(());
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                r = self.batch.flush(&mut self.wr) => r?,
            }
        }
    }

    /// Encode one message into the batch; `Ok(true)` to terminate after the flush.
    fn handle(&mut self, m: WriterMsg) -> Result<bool> {
        match m {
            WriterMsg::Submit(s) => self.submit(s),
            WriterMsg::Ctrl(ToWriter::H2C {
                cid,
                ttag,
                r2to,
                data,
            }) => {
                self.h2c(cid, ttag, r2to, &data)?;
            }
            WriterMsg::Ctrl(ToWriter::Free { index, permit }) => {
                debug_assert!(!self.free.contains(&index), "slot {index} freed twice");
                self.free.push(index);
                // The slot is free before the permit is: a submitter holding a permit always
                // finds a slot.
                drop(permit);
            }
            WriterMsg::Ctrl(ToWriter::Terminate(t)) => {
                self.batch.push(&mut self.codec, &Pdu::H2CTermReq(t))?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn submit(&mut self, s: Submit) {
        let Submit {
            mut sqe,
            incapsule,
            r2t_data,
            data_in_len,
            reply,
            permit,
        } = s;
        let Some(index) = self.free.pop() else {
            // Permits and slots are created equal and returned together; this is our bug.
            debug_assert!(false, "a permit was held but no CID slot was free");
            let _ = reply.send(Err(InitiatorError::Protocol {
                what: "internal: no free CID",
            }));
            return;
        };
        let generation = (self.gens[index] + 1) & CID_GEN_MASK;
        self.gens[index] = generation;
        // index < depth <= 2^CID_INDEX_BITS and generation <= CID_GEN_MASK: 16 bits in all.
        let cid = (generation << CID_INDEX_BITS) | u16::try_from(index).unwrap_or(0);
        sqe.set_cid(cid);
        let pdu = Pdu::CapsuleCmd(CapsuleCmd {
            sqe,
            data: incapsule,
        });
        if let Err(e) = self.batch.push(&mut self.codec, &pdu) {
            self.free.push(index);
            let _ = reply.send(Err(e.into()));
            return;
        }
        tracing::trace!(cid, opcode = sqe.opcode(), "submit");
        // Registered before the batch is flushed, so before the target can answer.
        let _ = self.reg_tx.send(Register {
            cid,
            reply,
            data_in_len,
            r2t_data,
            permit,
        });
    }

    fn h2c(&mut self, cid: u16, ttag: u16, r2to: u32, data: &Bytes) -> Result<()> {
        let mut off = 0usize;
        while off < data.len() {
            let end = data.len().min(off + self.maxh2cdata);
            // off < data.len() <= R2TL, a u32; R2TO + R2TL was checked not to overflow.
            let datao = r2to.saturating_add(u32::try_from(off).unwrap_or(u32::MAX));
            let pdu = Pdu::H2CData(H2CData {
                cccid: cid,
                ttag,
                datao,
                last: end == data.len(),
                data: data.slice(off..end),
            });
            self.batch.push(&mut self.codec, &pdu)?;
            off = end;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------

/// Read data of one command, reassembled by DATAO.
#[derive(Default)]
enum RxData {
    #[default]
    Empty,
    /// One C2HData carried the whole transfer: kept as received, no copy.
    Whole(Bytes),
    /// Several PDUs: copied into place.
    Buf(BytesMut),
}

/// A command in flight, as the reader sees it.
struct Slot {
    cid: u16,
    reply: Reply,
    data_in_len: u32,
    rx: RxData,
    /// Read bytes received so far, and the end of the highest range received (PDUs must not
    /// overlap or go backwards).
    received: u32,
    rx_end: u32,
    r2t_data: Bytes,
    /// End of the data solicited by R2Ts so far.
    solicited: u32,
    /// A C2HData for this command failed its data digest: complete it with Data Transfer
    /// Error, as Linux does.
    ddgst_error: bool,
    permit: OwnedSemaphorePermit,
}

impl Slot {
    fn place(&mut self, datao: u32, data: Bytes) {
        // The caller checked datao + len <= data_in_len, and data_in_len is a u32.
        let start = usize::try_from(datao).unwrap_or(usize::MAX);
        let total = usize::try_from(self.data_in_len).unwrap_or(usize::MAX);
        let len = data.len();
        match &mut self.rx {
            RxData::Empty if start == 0 && len == total => self.rx = RxData::Whole(data),
            RxData::Buf(b) => b[start..start + len].copy_from_slice(&data),
            other => {
                let mut b = BytesMut::zeroed(total);
                if let RxData::Whole(w) = other {
                    b[..w.len()].copy_from_slice(w);
                }
                b[start..start + len].copy_from_slice(&data);
                *other = RxData::Buf(b);
            }
        }
    }

    fn complete(self, mut cqe: Cqe) -> (usize, OwnedSemaphorePermit) {
        if self.ddgst_error {
            cqe.set_status(Status::DATA_XFER_ERROR);
        }
        let index = usize::from(self.cid) & CID_INDEX_MASK;
        let result = if cqe.status().is_success() && self.received != self.data_in_len {
            Err(InitiatorError::Protocol {
                what: "command completed before all its data arrived",
            })
        } else {
            let data = match self.rx {
                RxData::Empty => Bytes::new(),
                RxData::Whole(b) => b,
                RxData::Buf(b) => b.freeze(),
            };
            Ok(Completion { cqe, data })
        };
        // The submitter may have given up (timeout, dropped future): nothing to do then.
        let _ = self.reply.send(result);
        (index, self.permit)
    }
}

/// Why the reader stopped, and the H2CTermReq to send if the target broke the protocol.
struct Stop {
    err: InitiatorError,
    term: Option<TermReq>,
}

impl From<InitiatorError> for Stop {
    fn from(err: InitiatorError) -> Self {
        Stop { err, term: None }
    }
}

impl From<PduError> for Stop {
    fn from(e: PduError) -> Self {
        Stop {
            term: e.term_req(),
            err: e.into(),
        }
    }
}

/// A fatal error we detected ourselves (not the codec): report it with FES and close.
fn fatal(fes: Fes, fei: u32, what: &'static str) -> Stop {
    Stop {
        err: InitiatorError::Protocol { what },
        term: Some(TermReq {
            fes,
            fei,
            data: Bytes::new(),
        }),
    }
}

struct Reader {
    rd: OwnedReadHalf,
    codec: PduCodec,
    buf: BytesMut,
    slots: Vec<Option<Slot>>,
    reg_rx: mpsc::UnboundedReceiver<Register>,
    to_writer: mpsc::UnboundedSender<ToWriter>,
    shared: Arc<Shared>,
}

impl Reader {
    async fn run(mut self) {
        let Stop { err, term } = self.run_inner().await;
        match &err {
            InitiatorError::Closed => tracing::debug!("reader stopped: queue closed"),
            e => tracing::debug!(error = %e, "reader stopped"),
        }
        // First error wins: if the writer failed or the queue was closed, that is the cause.
        if !self.shared.cancel.is_cancelled() {
            let _ = self.shared.error.set(err);
        }
        let err = self.shared.error();
        self.fail_all(&err);
        if let Some(t) = term
            && self.to_writer.send(ToWriter::Terminate(t)).is_ok()
        {
            let _ = tokio::time::timeout(TERM_REQ_GRACE, self.shared.cancel.cancelled()).await;
        }
        self.shared.cancel.cancel();
    }

    fn fail_all(&mut self, err: &InitiatorError) {
        self.reg_rx.close();
        while let Ok(r) = self.reg_rx.try_recv() {
            let _ = r.reply.send(Err(err.clone()));
        }
        for slot in self.slots.iter_mut().filter_map(Option::take) {
            let _ = slot.reply.send(Err(err.clone()));
        }
    }

    async fn run_inner(&mut self) -> Stop {
        let cancel = self.shared.cancel.clone();
        self.buf.reserve(READ_BUF_INITIAL);
        loop {
            loop {
                // FLAGS of the PDU at the head of the buffer: a data digest error loses the
                // PDU, but whether it carried SUCCESS still decides how to finish the command.
                let pdu_flags = self.buf.get(1).copied().unwrap_or(0);
                let r = match self.codec.decode(&mut self.buf) {
                    Ok(Some(pdu)) => self.handle(pdu),
                    Ok(None) => break,
                    Err(PduError::DataDigest {
                        pdu_type: PduType::C2H_DATA,
                        cccid,
                        ..
                    }) => self.c2h_digest_error(cccid, pdu_flags),
                    Err(e) => Err(Stop::from(e)),
                };
                if let Err(stop) = r {
                    return stop;
                }
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return InitiatorError::Closed.into(),
                r = self.rd.read_buf(&mut self.buf) => match r {
                    Ok(0) => return InitiatorError::eof().into(),
                    Ok(_) => {}
                    Err(e) => return InitiatorError::io(e).into(),
                },
            }
        }
    }

    /// Move commands the writer registered into the table.
    fn take_registrations(&mut self) {
        while let Ok(r) = self.reg_rx.try_recv() {
            let index = usize::from(r.cid) & CID_INDEX_MASK;
            let slot = Slot {
                cid: r.cid,
                reply: r.reply,
                data_in_len: r.data_in_len,
                rx: RxData::Empty,
                received: 0,
                rx_end: 0,
                r2t_data: r.r2t_data,
                solicited: 0,
                ddgst_error: false,
                permit: r.permit,
            };
            match self.slots.get_mut(index) {
                Some(s @ None) => *s = Some(slot),
                _ => {
                    debug_assert!(false, "CID {:#x} registered over a busy slot", r.cid);
                    let _ = slot.reply.send(Err(InitiatorError::Protocol {
                        what: "internal: CID slot busy",
                    }));
                }
            }
        }
    }

    fn slot_mut(&mut self, cid: u16) -> Option<&mut Slot> {
        self.take_registrations();
        let index = usize::from(cid) & CID_INDEX_MASK;
        self.slots.get_mut(index)?.as_mut().filter(|s| s.cid == cid)
    }

    fn take_slot(&mut self, cid: u16) -> Option<Slot> {
        self.slot_mut(cid)?;
        self.slots
            .get_mut(usize::from(cid) & CID_INDEX_MASK)?
            .take()
    }

    fn free(&mut self, index: usize, permit: OwnedSemaphorePermit) {
        // If the writer is gone the connection is ending anyway.
        let _ = self.to_writer.send(ToWriter::Free { index, permit });
    }

    fn handle(&mut self, pdu: Pdu) -> std::result::Result<(), Stop> {
        match pdu {
            Pdu::CapsuleResp(r) => {
                let cid = r.cqe.cid();
                // Linux: "queue %d tag %#x not found" and error recovery.
                let slot = self.take_slot(cid).ok_or(InitiatorError::Protocol {
                    what: "response capsule for a CID not in flight",
                })?;
                let (index, permit) = slot.complete(r.cqe);
                self.free(index, permit);
                Ok(())
            }
            Pdu::C2HData(d) => self.c2h(d),
            Pdu::R2T(r) => self.r2t(r),
            Pdu::C2HTermReq(t) => {
                tracing::debug!(fes = ?t.fes, fei = t.fei, "C2HTermReq");
                Err(InitiatorError::TermReq {
                    fes: t.fes,
                    fei: t.fei,
                }
                .into())
            }
            // The codec lets only controller-to-host types through, and ICResp only once.
            other => Err(fatal(
                Fes::PDU_SEQUENCE_ERROR,
                0,
                match other.pdu_type() {
                    PduType::ICRESP => "ICResp after the connection was established",
                    _ => "unexpected PDU type",
                },
            )),
        }
    }

    fn c2h(&mut self, d: C2HData) -> std::result::Result<(), Stop> {
        let C2HData {
            cccid,
            datao,
            success,
            data,
            ..
        } = d;
        let Some(slot) = self.slot_mut(cccid) else {
            return Err(fatal(
                Fes::INVALID_PDU_HEADER_FIELD,
                8,
                "C2HData for a CID not in flight",
            ));
        };
        // DATAO + DATAL was checked not to overflow by the codec; DATAL fits in a u32 then.
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let end = datao.saturating_add(len);
        if end > slot.data_in_len {
            return Err(fatal(
                Fes::DATA_OUT_OF_RANGE,
                0,
                "C2HData beyond the command's data",
            ));
        }
        if datao < slot.rx_end {
            return Err(fatal(
                Fes::DATA_OUT_OF_RANGE,
                0,
                "C2HData overlaps data already received",
            ));
        }
        slot.place(datao, data);
        slot.received += len;
        slot.rx_end = end;
        if success {
            // Section 3.6.2.8: SUCCESS replaces the response capsule (only with LAST_PDU,
            // which the codec checked).
            self.complete_without_capsule(cccid);
        }
        Ok(())
    }

    fn c2h_digest_error(&mut self, cccid: u16, pdu_flags: u8) -> std::result::Result<(), Stop> {
        tracing::debug!(cccid, "C2HData data digest error");
        let Some(slot) = self.slot_mut(cccid) else {
            return Err(fatal(
                Fes::INVALID_PDU_HEADER_FIELD,
                8,
                "C2HData for a CID not in flight",
            ));
        };
        slot.ddgst_error = true;
        if pdu_flags & flags::SUCCESS != 0 {
            self.complete_without_capsule(cccid);
        }
        Ok(())
    }

    fn complete_without_capsule(&mut self, cid: u16) {
        if let Some(slot) = self.take_slot(cid) {
            let (index, permit) = slot.complete(Cqe::new(cid, Status::SUCCESS));
            self.free(index, permit);
        }
    }

    fn r2t(&mut self, r: R2T) -> std::result::Result<(), Stop> {
        let R2T {
            cccid,
            ttag,
            r2to,
            r2tl,
        } = r;
        let Some(slot) = self.slot_mut(cccid) else {
            return Err(fatal(
                Fes::INVALID_PDU_HEADER_FIELD,
                8,
                "R2T for a CID not in flight",
            ));
        };
        let total = u32::try_from(slot.r2t_data.len()).unwrap_or(u32::MAX);
        if slot.r2t_data.is_empty() {
            return Err(fatal(
                Fes::INVALID_PDU_HEADER_FIELD,
                8,
                "R2T for a command without R2T data",
            ));
        }
        // Linux: "R2T data overflow" / "Unexpected R2T offset". The codec checked R2TL != 0
        // and that R2TO + R2TL does not overflow.
        let end = r2to.saturating_add(r2tl);
        if end > total || r2to < slot.solicited {
            return Err(fatal(
                Fes::DATA_OUT_OF_RANGE,
                0,
                "R2T outside the command's data",
            ));
        }
        slot.solicited = end;
        // r2to < end <= total, the data length: in range.
        let range = usize::try_from(r2to).unwrap_or(0)..usize::try_from(end).unwrap_or(0);
        let data = slot.r2t_data.slice(range);
        tracing::trace!(cid = cccid, ttag, r2to, r2tl, "R2T");
        let _ = self.to_writer.send(ToWriter::H2C {
            cid: cccid,
            ttag,
            r2to,
            data,
        });
        Ok(())
    }
}
