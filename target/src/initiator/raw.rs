//! A raw connection for malformed-PDU tests: write any bytes, read back the next PDU the target
//! sends (typically a C2HTermReq with FES/FEI) or the end of the connection, with timeouts.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use codec::pdu::params::MAX_PDU_LEN_CAP;
use codec::pdu::{ConnParams, IcReq, IcResp, Pdu, PduCodec, Role, TermReq};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

use super::READ_BUF_INITIAL;
use super::error::{InitiatorError, Result};
use super::queue::check_icresp;

/// What [`RawConn::recv`] saw next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    /// A PDU, decoded and checked by the host-side codec.
    Pdu(Pdu),
    /// The target closed the connection (FIN or RST).
    Eof,
}

/// A TCP connection to a target with no state machine: the test decides every byte.
#[derive(Debug)]
pub struct RawConn {
    stream: TcpStream,
    codec: PduCodec,
    buf: BytesMut,
    /// Bound on every receive (and on connecting).
    pub timeout: Duration,
}

impl RawConn {
    /// TCP connect only; the codec expects an ICResp (or a TermReq) first.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<RawConn> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| InitiatorError::Timeout {
                what: "TCP connect",
            })??;
        stream.set_nodelay(true)?;
        // Accept PDUs up to the codec's cap: a raw test reads whatever the target sends.
        let limits = ConnParams {
            max_pdu_len: MAX_PDU_LEN_CAP,
            ..ConnParams::default()
        };
        Ok(RawConn {
            stream,
            codec: PduCodec::new(Role::Host, limits),
            buf: BytesMut::with_capacity(READ_BUF_INITIAL),
            timeout,
        })
    }

    /// TCP connect, send `icreq`, read the ICResp, check it as the Linux host does, and apply
    /// the negotiated digests: afterwards [`RawConn::send_pdu`] frames PDUs correctly.
    pub async fn connect_ic(
        addr: SocketAddr,
        icreq: IcReq,
        timeout: Duration,
    ) -> Result<(RawConn, IcResp)> {
        let mut c = Self::connect(addr, timeout).await?;
        c.send_pdu(&Pdu::IcReq(icreq)).await?;
        let r = match c.recv().await? {
            RawEvent::Pdu(Pdu::IcResp(r)) => r,
            RawEvent::Pdu(Pdu::C2HTermReq(t)) => {
                return Err(InitiatorError::TermReq {
                    fes: t.fes,
                    fei: t.fei,
                });
            }
            RawEvent::Pdu(_) => {
                return Err(InitiatorError::Protocol {
                    what: "expected an ICResp",
                });
            }
            RawEvent::Eof => return Err(InitiatorError::eof()),
        };
        check_icresp(&icreq, &r)?;
        let params = ConnParams {
            hdgst: r.hdgst,
            ddgst: r.ddgst,
            max_h2c_data: r.maxh2cdata,
            ..*c.codec.params()
        };
        c.codec.set_params(params);
        Ok((c, r))
    }

    /// The codec's parameters (digests, limits).
    pub fn params(&self) -> &ConnParams {
        self.codec.params()
    }

    /// Change the codec's parameters (e.g. after an ICReq sent with [`RawConn::send_bytes`]).
    pub fn set_params(&mut self, params: ConnParams) {
        self.codec.set_params(params);
    }

    /// Encode `pdu` with the current parameters without sending it (to corrupt it first).
    pub fn encode(&mut self, pdu: &Pdu) -> Result<BytesMut> {
        let mut out = BytesMut::new();
        self.codec.encode(pdu.clone(), &mut out)?;
        Ok(out)
    }

    /// Encode and send `pdu`.
    pub async fn send_pdu(&mut self, pdu: &Pdu) -> Result<()> {
        let out = self.encode(pdu)?;
        self.send_bytes(&out).await
    }

    /// Send `bytes` as they are.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        tokio::time::timeout(self.timeout, self.stream.write_all(bytes))
            .await
            .map_err(|_| InitiatorError::Timeout { what: "raw send" })??;
        Ok(())
    }

    /// The next PDU from the target, or [`RawEvent::Eof`]; [`InitiatorError::Timeout`] if
    /// nothing complete arrives within [`RawConn::timeout`], [`InitiatorError::Protocol`] if
    /// what arrives is not a valid PDU.
    pub async fn recv(&mut self) -> Result<RawEvent> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some(pdu) = self.codec.decode(&mut self.buf)? {
                return Ok(RawEvent::Pdu(pdu));
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| InitiatorError::Timeout {
                    what: "raw receive",
                })?;
            match read {
                Ok(0) => return Ok(RawEvent::Eof),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Ok(RawEvent::Eof);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next PDU must be a C2HTermReq: return it.
    pub async fn expect_term_req(&mut self) -> Result<TermReq> {
        match self.recv().await? {
            RawEvent::Pdu(Pdu::C2HTermReq(t)) => Ok(t),
            RawEvent::Pdu(_) => Err(InitiatorError::Protocol {
                what: "expected a C2HTermReq",
            }),
            RawEvent::Eof => Err(InitiatorError::eof()),
        }
    }

    /// The connection must end next (no more PDUs).
    pub async fn expect_eof(&mut self) -> Result<()> {
        match self.recv().await? {
            RawEvent::Eof => Ok(()),
            RawEvent::Pdu(_) => Err(InitiatorError::Protocol {
                what: "expected the end of the connection",
            }),
        }
    }

    /// The underlying stream (e.g. to half-close it).
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}
