//! The streaming codec: framing, digests, padding, limits, direction and sequence checks.
//!
//! Decoding validates in wire order so that the lowest offending field is the one reported
//! (SPDK and FreeBSD do the same): the 8-byte common header first (type, direction, sequence,
//! flags, HLEN, PDO, PLEN and its limits), then, once HLEN (+ header digest) bytes are there, the
//! header digest and the PDU-specific header, then, once PLEN bytes are there, the data digest.
//! Nothing is reserved in the receive buffer before PLEN has passed every check, so a peer can
//! make us hold at most [`ConnParams::max_pdu_len`] bytes.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::capsule::{CMD_HLEN, CapsuleCmd, CapsuleResp, RESP_HLEN};
use super::data::{C2HData, DATA_HLEN, H2CData, check_data_header};
use super::digest::{DIGEST_LEN, crc32c, read_digest};
use super::error::{Fes, PduError};
use super::header::{self, CH_LEN, CommonHeader, carries_data, flags, valid_flags};
use super::ic::{IC_HLEN, IcReq, IcResp};
use super::params::{ConnParams, MAX_PDU_LEN_CAP, MAXH2CDATA_MIN, PDA_MAX, Role};
use super::r2t::{R2T, R2T_HLEN};
use super::term::{TERM_DATA_MAX, TERM_HLEN, TERM_PLEN_MAX, TermReq};
use super::{Pdu, PduType};

/// Where the connection is in its life, as far as framing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but ICReq (target) / ICResp (host), or a TermReq, may arrive.
    AwaitIc,
    /// IC exchange done: every other PDU type for our direction may arrive.
    Established,
    /// A fatal error was reported; the stream is out of sync and nothing more is decoded.
    Failed,
}

/// Shape of a PDU whose common header passed every check.
#[derive(Debug, Clone, Copy)]
struct Layout {
    ty: PduType,
    flags: u8,
    hlen: usize,
    hdgst: bool,
    ddgst: bool,
    /// Offset of the data (PDO, or HLEN for a TermReq whose data follows its header).
    data_off: usize,
    data_len: usize,
    plen: usize,
}

impl Layout {
    fn header_end(&self) -> usize {
        self.hlen + if self.hdgst { DIGEST_LEN } else { 0 }
    }
}

/// A PDU whose header passed every check, waiting for the rest of its PLEN bytes.
#[derive(Debug, Clone)]
struct Pending {
    layout: Layout,
    /// The PDU with empty data; the data is attached once it has arrived.
    head: Pdu,
}

enum Step {
    /// At least this many bytes (from the start of the PDU) are needed.
    Need(usize),
    Ready(Pending),
}

/// NVMe/TCP PDU codec for one connection: `tokio_util` [`Decoder`] and [`Encoder`] of [`Pdu`].
///
/// Start with [`PduCodec::new`]; after the ICReq/ICResp exchange call [`PduCodec::set_params`]
/// with the negotiated digests and alignments (IC PDUs never carry digests).
#[derive(Debug, Clone)]
pub struct PduCodec {
    role: Role,
    params: ConnParams,
    state: State,
    pending: Option<Pending>,
}

/// What follows the header of a data-carrying PDU encoded by [`PduCodec::encode_head`]: the
/// data, untouched (same allocation as the `Pdu`'s), and the data digest trailer if any.
///
/// Write `head` (the buffer `encode_head` filled), then [`DataTail::data`], then
/// [`DataTail::trailer`], e.g. with one `writev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataTail {
    /// The PDU data.
    pub data: Bytes,
    ddgst: Option<[u8; DIGEST_LEN]>,
}

impl DataTail {
    /// The data digest bytes (empty when data digests are off).
    pub fn trailer(&self) -> &[u8] {
        match &self.ddgst {
            Some(d) => d,
            None => &[],
        }
    }

    /// Bytes on the wire after the header: data plus trailer.
    pub fn wire_len(&self) -> usize {
        self.data.len() + self.trailer().len()
    }
}

/// Decode one PDU from the start of `buf` on an established connection (IC exchange done, so an
/// ICReq/ICResp here is a sequence error), as `role` with `params`. Returns the PDU and the
/// number of bytes it took, `Ok(None)` if `buf` holds only part of it. Copies the PDU once;
/// for tests, fuzzing and one-off parsing. The streaming path is the [`Decoder`] impl.
pub fn decode_one(
    role: Role,
    params: &ConnParams,
    buf: &[u8],
) -> Result<Option<(Pdu, usize)>, PduError> {
    PduCodec::new_established(role, *params).decode_slice(buf)
}

impl PduCodec {
    /// A codec for a new connection, before the IC exchange. `limits` supplies the receive
    /// limits (`max_pdu_len`, `max_h2c_data`, `max_incapsule_data`); its digest and alignment
    /// fields take effect only after [`PduCodec::set_params`].
    pub fn new(role: Role, limits: ConnParams) -> Self {
        PduCodec {
            role,
            params: sanitize(limits),
            state: State::AwaitIc,
            pending: None,
        }
    }

    /// A codec for a connection whose IC exchange already happened with `params` (tests,
    /// fuzzing, or a connection handed over mid-life).
    pub fn new_established(role: Role, params: ConnParams) -> Self {
        PduCodec {
            role,
            params: sanitize(params),
            state: State::Established,
            pending: None,
        }
    }

    /// Apply the parameters negotiated by ICReq/ICResp (or new limits). Call between PDUs.
    ///
    /// These are our own configuration, not peer input: out-of-range values are a bug, caught
    /// by a debug assertion and clamped in release builds (see [`ConnParams::validate`]).
    pub fn set_params(&mut self, params: ConnParams) {
        debug_assert!(
            self.pending.is_none(),
            "set_params called in the middle of a PDU"
        );
        self.params = sanitize(params);
    }

    /// The parameters in force.
    pub fn params(&self) -> &ConnParams {
        &self.params
    }

    /// Which side this codec is on.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the IC exchange has been seen (an ICReq decoded by a target, an ICResp by a host).
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Decode one PDU from the start of `buf`, copying it out; like [`Decoder::decode`] but on
    /// a slice. Returns the PDU and the bytes it took.
    pub fn decode_slice(&mut self, buf: &[u8]) -> Result<Option<(Pdu, usize)>, PduError> {
        let p = match self.step(buf)? {
            Step::Need(_) => return Ok(None),
            Step::Ready(p) => p,
        };
        let plen = p.layout.plen;
        let whole = Bytes::copy_from_slice(buf.get(..plen).unwrap_or_default());
        self.finish(p, whole).map(|pdu| Some((pdu, plen)))
    }

    /// Run every check possible on what `buf` holds; keeps state (IC sequence, failure).
    fn step(&mut self, buf: &[u8]) -> Result<Step, PduError> {
        if self.state == State::Failed {
            return Err(PduError::Abort {
                what: "decoder used after a fatal error",
            });
        }
        let pending = match self.pending.take() {
            Some(p) => p,
            None => match self.check_head(buf) {
                Ok(Step::Ready(p)) => p,
                Ok(need) => return Ok(need),
                Err(e) => return Err(self.fail(e)),
            },
        };
        if buf.len() < pending.layout.plen {
            let need = pending.layout.plen;
            self.pending = Some(pending);
            return Ok(Step::Need(need));
        }
        Ok(Step::Ready(pending))
    }

    fn fail(&mut self, e: PduError) -> PduError {
        if matches!(e, PduError::Fatal { .. } | PduError::Abort { .. }) {
            self.state = State::Failed;
            self.pending = None;
        }
        e
    }

    /// Validate the common header and, once it has arrived, the PDU-specific header.
    fn check_head(&self, buf: &[u8]) -> Result<Step, PduError> {
        let Some(ch) = CommonHeader::read(buf) else {
            return Ok(Step::Need(CH_LEN));
        };
        let layout = self.check_common(&ch, buf)?;
        let header_end = layout.header_end();
        let Some(head) = buf.get(..header_end) else {
            // PLEN passed its limit: reserve room for the whole PDU in one go.
            return Ok(Step::Need(layout.plen));
        };
        let (hdr, hdgst) = head.split_at(layout.hlen);
        if layout.hdgst {
            // Section 3.6.2.1: the header digest covers the HLEN header bytes.
            let received = read_digest(hdgst).unwrap_or(0);
            if received != crc32c(hdr) {
                return Err(PduError::fatal(
                    Fes::HDR_DIGEST_ERROR,
                    received,
                    "header digest mismatch",
                    hdr,
                ));
            }
        }
        let head = load_head(&layout, hdr)?;
        Ok(Step::Ready(Pending { layout, head }))
    }

    /// Every check that needs only the 8-byte common header (section 3.6.1), in field order.
    fn check_common(&self, ch: &CommonHeader, buf: &[u8]) -> Result<Layout, PduError> {
        use header::off;
        let ty = ch.pdu_type;
        let report = &buf[..buf.len().min(usize::from(ch.hlen).max(CH_LEN))];
        let invalid = |field: usize, what: &'static str| {
            PduError::fatal(Fes::INVALID_PDU_HEADER_FIELD, fei(field), what, report)
        };

        // PDU-Type: defined, and sent in our direction (bit 0 is the direction).
        if !ty.is_known() {
            return Err(invalid(off::TYPE, "reserved PDU-Type"));
        }
        if !self.role.may_receive(ty) {
            return Err(invalid(off::TYPE, "PDU-Type not sent in this direction"));
        }
        let is_ic = matches!(ty, PduType::ICREQ | PduType::ICRESP);
        let is_term = matches!(ty, PduType::H2C_TERM_REQ | PduType::C2H_TERM_REQ);
        // Section 3.3: ICReq is the host's first PDU and is sent once; ICResp likewise. A TermReq
        // may come at any time (a controller rejects a bad ICReq with one).
        match self.state {
            State::AwaitIc if !is_ic && !is_term => {
                return Err(PduError::fatal(
                    Fes::PDU_SEQUENCE_ERROR,
                    0,
                    "PDU before the ICReq/ICResp exchange",
                    report,
                ));
            }
            State::Established if is_ic => {
                return Err(PduError::fatal(
                    Fes::PDU_SEQUENCE_ERROR,
                    0,
                    "second ICReq/ICResp",
                    report,
                ));
            }
            _ => {}
        }
        let plen = usize::try_from(ch.plen).unwrap_or(usize::MAX);

        if is_term {
            // Section 3.6.2.4: HLEN 24, PLEN 24..=152, no flags, no PDO. A malformed TermReq is
            // not answered with a TermReq.
            let ok = ch.flags == 0
                && usize::from(ch.hlen) == TERM_HLEN
                && ch.pdo == 0
                && (TERM_HLEN..=TERM_PLEN_MAX).contains(&plen);
            if !ok {
                return Err(PduError::Abort {
                    what: "malformed TermReq",
                });
            }
            return Ok(Layout {
                ty,
                flags: 0,
                hlen: TERM_HLEN,
                hdgst: false,
                ddgst: false,
                data_off: TERM_HLEN,
                data_len: plen - TERM_HLEN,
                plen,
            });
        }

        // FLAGS: only the bits defined for the type; digests present iff negotiated (section
        // 3.6.2.1: every PDU but IC and TermReq has a header digest when enabled, every PDU with
        // data a data digest); SUCCESS only with LAST_PDU (section 3.6.2.9).
        let valid = valid_flags(ty);
        if ch.flags & !valid != 0 {
            return Err(invalid(
                off::FLAGS,
                "FLAGS bit not defined for this PDU type",
            ));
        }
        let hdgst = ch.flags & flags::HDGSTF != 0;
        if hdgst != (self.params.hdgst && valid & flags::HDGSTF != 0) {
            return Err(invalid(
                off::FLAGS,
                "HDGSTF does not match the negotiated header digest",
            ));
        }
        let hlen = ty.hlen().unwrap_or(0);
        let header_end = hlen + if hdgst { DIGEST_LEN } else { 0 };
        let has_data = carries_data(ty) && plen > header_end;
        let ddgst = ch.flags & flags::DDGSTF != 0;
        if ddgst != (self.params.ddgst && has_data) {
            return Err(invalid(
                off::FLAGS,
                "DDGSTF does not match the negotiated data digest",
            ));
        }
        if ch.flags & (flags::SUCCESS | flags::LAST_PDU) == flags::SUCCESS {
            return Err(invalid(off::FLAGS, "C2HData SUCCESS without LAST_PDU"));
        }

        // HLEN: fixed per type.
        if usize::from(ch.hlen) != hlen {
            return Err(invalid(off::HLEN, "HLEN wrong for the PDU type"));
        }

        // PDO: 0 without data; with data at or past the header (and its digest), aligned to
        // what we asked for (CPDA on a target, HPDA on a host), before PLEN (section 3.6.1).
        let pdo = usize::from(ch.pdo);
        let tail = if ddgst { DIGEST_LEN } else { 0 };
        if has_data {
            if pdo < header_end {
                return Err(invalid(off::PDO, "PDO inside the header or its digest"));
            }
            if pdo % self.params.rx_alignment(self.role) != 0 {
                return Err(invalid(
                    off::PDO,
                    "PDO not aligned to the PDU data alignment",
                ));
            }
            if pdo > plen {
                return Err(invalid(off::PDO, "PDO past PLEN"));
            }
        } else if pdo != 0 && !(carries_data(ty) && pdo == plen && pdo == header_end) {
            return Err(invalid(off::PDO, "PDO set on a PDU without data"));
        }

        // PLEN: at least the header; exactly the header for types without data; within our
        // limits before anything is reserved for it.
        if plen < header_end {
            return Err(invalid(off::PLEN, "PLEN shorter than the header"));
        }
        if !carries_data(ty) && plen != header_end {
            return Err(invalid(
                off::PLEN,
                "PLEN longer than a PDU type without data",
            ));
        }
        let data_off = if has_data { pdo } else { header_end };
        let data_len = if has_data {
            match plen.checked_sub(pdo + tail) {
                Some(n) if n > 0 => n,
                _ => return Err(invalid(off::PLEN, "PLEN leaves no data after PDO")),
            }
        } else {
            0
        };
        let limit = usize::try_from(self.params.max_pdu_len).unwrap_or(usize::MAX);
        if plen > limit {
            return Err(PduError::fatal(
                Fes::DATA_LIMIT_EXCEEDED,
                0,
                "PLEN above the largest PDU we accept",
                report,
            ));
        }
        // Section 3.6.2.3: at most MAXH2CDATA per H2CData; in-capsule data within what the
        // queue allows (8 KiB on admin queues, IOCCSZ on I/O queues).
        let data_max = match ty {
            PduType::CAPSULE_CMD => self.params.max_incapsule_data,
            PduType::H2C_DATA => self.params.max_h2c_data,
            _ => u32::MAX,
        };
        if data_len > usize::try_from(data_max).unwrap_or(usize::MAX) {
            let what = if ty == PduType::CAPSULE_CMD {
                "in-capsule data above the limit"
            } else {
                "H2CData DATAL above MAXH2CDATA"
            };
            return Err(PduError::fatal(Fes::DATA_LIMIT_EXCEEDED, 0, what, report));
        }
        Ok(Layout {
            ty,
            flags: ch.flags,
            hlen,
            hdgst,
            ddgst,
            data_off,
            data_len,
            plen,
        })
    }

    /// Attach the data (checking its digest) and advance the IC sequence.
    fn finish(&mut self, p: Pending, whole: Bytes) -> Result<Pdu, PduError> {
        let Layout {
            ty,
            ddgst,
            data_off,
            data_len,
            ..
        } = p.layout;
        let data_end = data_off + data_len;
        let data = whole.slice(data_off..data_end);
        if ddgst {
            let received = read_digest(&whole[data_end..]).unwrap_or(0);
            let computed = crc32c(&data);
            if received != computed {
                let datal = u32::try_from(data_len).unwrap_or(u32::MAX);
                let (cccid, ttag, datao, last) = match &p.head {
                    Pdu::CapsuleCmd(c) => (c.sqe.cid(), 0, 0, true),
                    Pdu::H2CData(d) => (d.cccid, d.ttag, d.datao, d.last),
                    Pdu::C2HData(d) => (d.cccid, 0, d.datao, d.last),
                    _ => (0, 0, 0, true),
                };
                return Err(PduError::DataDigest {
                    pdu_type: ty,
                    cccid,
                    received,
                    computed,
                    ttag,
                    datao,
                    datal,
                    last,
                });
            }
        }
        let mut pdu = p.head;
        match &mut pdu {
            Pdu::CapsuleCmd(c) => c.data = data,
            Pdu::H2CData(d) => d.data = data,
            Pdu::C2HData(d) => d.data = data,
            Pdu::H2CTermReq(t) | Pdu::C2HTermReq(t) => t.data = data,
            Pdu::IcReq(_) | Pdu::IcResp(_) => self.state = State::Established,
            Pdu::CapsuleResp(_) | Pdu::R2T(_) => {}
        }
        Ok(pdu)
    }

    /// Encode `pdu`'s header area into `dst`: common and PDU-specific header, header digest,
    /// PDO padding. Returns the data and its digest trailer, untouched and uncopied, for PDUs
    /// that carry data (`None` for the others, and for TermReq whose few bytes of data are
    /// copied into `dst`). This is the zero-copy send path: `writev(dst, tail.data,
    /// tail.trailer())`.
    ///
    /// Fails with `PduError::Io(InvalidInput)` for a PDU this side may not send or a field we
    /// would refuse on receipt (never emit what we would not accept).
    pub fn encode_head(
        &mut self,
        pdu: &Pdu,
        dst: &mut BytesMut,
    ) -> Result<Option<DataTail>, PduError> {
        Ok(self
            .encode_head_inner(pdu, None, dst)?
            .map(|ddgst| DataTail {
                data: pdu.data().cloned().unwrap_or_default(),
                ddgst,
            }))
    }

    /// [`PduCodec::encode_head`] that takes the PDU by value and moves its data into the
    /// [`DataTail`] instead of cloning the `Bytes` handle: no reference-count traffic, and a
    /// `Bytes` built from a `Vec` stays uniquely owned, so the caller can recycle its buffer
    /// after the write (the target's per-connection buffer pool relies on this).
    pub fn encode_head_owned(
        &mut self,
        mut pdu: Pdu,
        dst: &mut BytesMut,
    ) -> Result<Option<DataTail>, PduError> {
        let Some(ddgst) = self.encode_head_inner(&pdu, None, dst)? else {
            return Ok(None);
        };
        let data = match &mut pdu {
            Pdu::CapsuleCmd(c) => std::mem::take(&mut c.data),
            Pdu::H2CData(d) => std::mem::take(&mut d.data),
            Pdu::C2HData(d) => std::mem::take(&mut d.data),
            _ => Bytes::new(),
        };
        Ok(Some(DataTail { data, ddgst }))
    }

    /// Encodes the header area of a C2HData whose `data_len` (> 0) bytes of data the caller
    /// sends itself, from memory the codec never sees (zero-copy reads from a backend's
    /// memory): `c2h.data` must be empty. Refused when data digests are on (the digest needs
    /// the data: copy it into the PDU and use [`PduCodec::encode_head_owned`] instead).
    pub fn encode_c2h_head_external(
        &mut self,
        c2h: &C2HData,
        data_len: usize,
        dst: &mut BytesMut,
    ) -> Result<(), PduError> {
        if self.params.ddgst {
            return Err(PduError::invalid_input(
                "a data digest needs the data: external C2HData data is for digest-free queues",
            ));
        }
        if !c2h.data.is_empty() || data_len == 0 {
            return Err(PduError::invalid_input(
                "external C2HData data: the PDU must carry none and the length must be > 0",
            ));
        }
        let end = u32::try_from(data_len)
            .ok()
            .and_then(|l| c2h.datao.checked_add(l));
        if end.is_none() {
            return Err(PduError::invalid_input("DATAO + DATAL overflows 32 bits"));
        }
        let pdu = Pdu::C2HData(c2h.clone());
        self.encode_head_inner(&pdu, Some(data_len), dst)?;
        Ok(())
    }

    /// Encodes the header area; `Some(digest trailer)` when data follows. `ext_len`: the data
    /// is not in the PDU but this long (no data digest then).
    fn encode_head_inner(
        &mut self,
        pdu: &Pdu,
        ext_len: Option<usize>,
        dst: &mut BytesMut,
    ) -> Result<Option<Option<[u8; DIGEST_LEN]>>, PduError> {
        let ty = pdu.pdu_type();
        if !self.role.may_send(ty) {
            return Err(PduError::invalid_input(
                "this side may not send this PDU type",
            ));
        }
        check_encodable(pdu, &self.params)?;
        let data: &[u8] = pdu.data().map_or(&[], |b| &b[..]);
        let data_len = ext_len.unwrap_or(data.len());
        let hdgst = self.params.hdgst && valid_flags(ty) & flags::HDGSTF != 0;
        let ddgst = self.params.ddgst && data_len > 0 && ext_len.is_none();
        let hlen = ty.hlen().unwrap_or(0);
        let header_end = hlen + if hdgst { DIGEST_LEN } else { 0 };
        let pdo = if data_len == 0 {
            0
        } else {
            header_end.next_multiple_of(self.params.tx_alignment(self.role))
        };
        let tail = if ddgst { DIGEST_LEN } else { 0 };
        let plen = match pdu {
            Pdu::H2CTermReq(t) | Pdu::C2HTermReq(t) => TERM_HLEN + t.wire_data().len(),
            _ if data_len == 0 => header_end,
            _ => pdo + data_len + tail,
        };
        let plen = u32::try_from(plen).map_err(|_| PduError::invalid_input("PLEN above 4 GiB"))?;
        let datal =
            u32::try_from(data_len).map_err(|_| PduError::invalid_input("DATAL above 4 GiB"))?;
        let mut fl = if hdgst { flags::HDGSTF } else { 0 } | if ddgst { flags::DDGSTF } else { 0 };
        let ch = |fl: u8| CommonHeader {
            pdu_type: ty,
            flags: fl,
            // HLEN is at most 128 and PDO at most 255 (an alignment of at most 128 past a
            // header area of at most 76 bytes), so neither conversion can fail.
            hlen: u8::try_from(hlen).unwrap_or(u8::MAX),
            pdo: u8::try_from(pdo).unwrap_or(u8::MAX),
            plen,
        };
        dst.reserve(header_end.max(pdo) + TERM_DATA_MAX);
        let start = dst.len();
        match pdu {
            Pdu::IcReq(p) => put_header::<IC_HLEN>(dst, ch(0), false, |h| p.encode_psh(h)),
            Pdu::IcResp(p) => put_header::<IC_HLEN>(dst, ch(0), false, |h| p.encode_psh(h)),
            Pdu::H2CTermReq(t) | Pdu::C2HTermReq(t) => {
                put_header::<TERM_HLEN>(dst, ch(0), false, |h| t.encode_psh(h));
                dst.extend_from_slice(&t.wire_data());
                return Ok(None);
            }
            Pdu::CapsuleCmd(c) => put_header::<CMD_HLEN>(dst, ch(fl), hdgst, |h| c.encode_psh(h)),
            Pdu::CapsuleResp(c) => put_header::<RESP_HLEN>(dst, ch(fl), hdgst, |h| c.encode_psh(h)),
            Pdu::H2CData(d) => {
                fl |= if d.last { flags::LAST_PDU } else { 0 };
                put_header::<DATA_HLEN>(dst, ch(fl), hdgst, |h| d.encode_psh(h, datal))
            }
            Pdu::C2HData(d) => {
                fl |= if d.last { flags::LAST_PDU } else { 0 };
                fl |= if d.success { flags::SUCCESS } else { 0 };
                put_header::<DATA_HLEN>(dst, ch(fl), hdgst, |h| d.encode_psh(h, datal))
            }
            Pdu::R2T(r) => put_header::<R2T_HLEN>(dst, ch(fl), hdgst, |h| r.encode_psh(h)),
        }
        if data_len == 0 {
            return Ok(None);
        }
        // PAD: zeros up to PDO.
        dst.put_bytes(0, (start + pdo).saturating_sub(dst.len()));
        let ddgst = ddgst.then(|| crc32c(data).to_le_bytes());
        Ok(Some(ddgst))
    }
}

/// Write CH + PSH (built by `psh` in a fixed-size array) and, if asked, the header digest.
fn put_header<const N: usize>(
    dst: &mut BytesMut,
    ch: CommonHeader,
    hdgst: bool,
    psh: impl FnOnce(&mut [u8; N]),
) {
    let mut h = [0u8; N];
    ch.write(&mut h);
    psh(&mut h);
    dst.extend_from_slice(&h);
    if hdgst {
        dst.put_u32_le(crc32c(&h));
    }
}

/// Refuse to emit a PDU that a peer following the spec (or we) would reject.
fn check_encodable(pdu: &Pdu, params: &ConnParams) -> Result<(), PduError> {
    let bad = |what| Err(PduError::invalid_input(what));
    match pdu {
        Pdu::IcReq(p) if p.pfv != 0 || p.hpda > PDA_MAX => bad("ICReq PFV not 0 or HPDA above 31"),
        Pdu::IcResp(p) if p.pfv != 0 || p.cpda > PDA_MAX => {
            bad("ICResp PFV not 0 or CPDA above 31")
        }
        Pdu::IcResp(p) if p.maxh2cdata < MAXH2CDATA_MIN || p.maxh2cdata % 4 != 0 => {
            bad("ICResp MAXH2CDATA below 4096 or not a multiple of 4")
        }
        Pdu::C2HData(d) if d.success && !d.last => bad("C2HData SUCCESS without LAST_PDU"),
        Pdu::H2CData(d) if d.data.len() > usize::try_from(params.max_h2c_data).unwrap_or(0) => {
            bad("H2CData longer than MAXH2CDATA")
        }
        Pdu::H2CData(H2CData { datao, data, .. }) | Pdu::C2HData(C2HData { datao, data, .. })
            if u32::try_from(data.len())
                .ok()
                .and_then(|l| datao.checked_add(l))
                .is_none() =>
        {
            bad("DATAO + DATAL overflows 32 bits")
        }
        Pdu::R2T(r) if r.r2tl == 0 || r.r2to.checked_add(r.r2tl).is_none() => {
            bad("R2T R2TL 0 or R2TO + R2TL overflows 32 bits")
        }
        _ => Ok(()),
    }
}

/// Parse the PDU-specific header of a PDU whose common header passed [`PduCodec::check_common`];
/// data is attached later.
fn load_head(l: &Layout, hdr: &[u8]) -> Result<Pdu, PduError> {
    fn arr<const N: usize>(hdr: &[u8]) -> Result<&[u8; N], PduError> {
        // HLEN was checked against the type, so this only fails on our own bug.
        hdr.try_into().map_err(|_| PduError::Abort {
            what: "internal: header length mismatch",
        })
    }
    let last = l.flags & flags::LAST_PDU != 0;
    Ok(match l.ty {
        PduType::ICREQ => Pdu::IcReq(IcReq::load(arr(hdr)?)?),
        PduType::ICRESP => Pdu::IcResp(IcResp::load(arr(hdr)?)?),
        PduType::H2C_TERM_REQ => Pdu::H2CTermReq(TermReq::load(arr(hdr)?, Bytes::new())),
        PduType::C2H_TERM_REQ => Pdu::C2HTermReq(TermReq::load(arr(hdr)?, Bytes::new())),
        PduType::CAPSULE_CMD => Pdu::CapsuleCmd(CapsuleCmd::load(arr(hdr)?, Bytes::new())),
        PduType::CAPSULE_RESP => Pdu::CapsuleResp(CapsuleResp::load(arr(hdr)?)),
        PduType::H2C_DATA => {
            let (cccid, ttag, datao) = check_data_header(arr(hdr)?, l.data_len)?;
            Pdu::H2CData(H2CData {
                cccid,
                ttag,
                datao,
                last,
                data: Bytes::new(),
            })
        }
        PduType::C2H_DATA => {
            let (cccid, _, datao) = check_data_header(arr(hdr)?, l.data_len)?;
            let success = l.flags & flags::SUCCESS != 0;
            Pdu::C2HData(C2HData {
                cccid,
                datao,
                last,
                success,
                data: Bytes::new(),
            })
        }
        PduType::R2T => Pdu::R2T(R2T::load(arr(hdr)?)?),
        _ => {
            return Err(PduError::Abort {
                what: "internal: unchecked PDU type",
            });
        }
    })
}

fn fei(offset: usize) -> u32 {
    u32::try_from(offset).unwrap_or(0)
}

/// Clamp our own configuration into range (see [`ConnParams::validate`]).
fn sanitize(mut p: ConnParams) -> ConnParams {
    debug_assert!(p.validate().is_ok(), "invalid ConnParams: {p:?}");
    p.cpda = p.cpda.min(PDA_MAX);
    p.hpda = p.hpda.min(PDA_MAX);
    p.max_pdu_len = p.max_pdu_len.min(MAX_PDU_LEN_CAP);
    p
}

impl Decoder for PduCodec {
    type Item = Pdu;
    type Error = PduError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Pdu>, PduError> {
        match self.step(src)? {
            Step::Need(n) => {
                // `n` is at most PLEN, which passed the limit check, or a header size.
                src.reserve(n.saturating_sub(src.len()));
                Ok(None)
            }
            Step::Ready(p) => {
                let whole = src.split_to(p.layout.plen).freeze();
                self.finish(p, whole).map(Some)
            }
        }
    }
}

impl Encoder<Pdu> for PduCodec {
    type Error = PduError;

    fn encode(&mut self, pdu: Pdu, dst: &mut BytesMut) -> Result<(), PduError> {
        if let Some(tail) = self.encode_head(&pdu, dst)? {
            dst.reserve(tail.wire_len());
            dst.extend_from_slice(&tail.data);
            dst.extend_from_slice(tail.trailer());
        }
        Ok(())
    }
}
