//! Batched, vectored PDU output for one connection.
//!
//! PDUs are encoded as they complete into a list of segments: header areas go into one growing
//! buffer, data `Bytes` are referenced as they are (never copied), and the whole batch leaves in
//! as few `writev` calls as the kernel allows when the connection loop has nothing else ready.

use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use codec::pdu::{Pdu, PduCodec, PduError};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

/// Data smaller than this is copied next to its header instead of getting its own iovec: a
/// short copy is cheaper than an extra segment (and keeps iovec counts low for 4 KiB reads).
const COPY_DATA_MAX: usize = 512;

/// Most iovecs handed to one `writev` (Linux IOV_MAX is 1024).
const IOV_MAX: usize = 64;

/// Queued output of one connection.
pub struct Writer {
    half: OwnedWriteHalf,
    head: BytesMut,
    segments: Vec<Bytes>,
    queued_bytes: usize,
}

impl Writer {
    pub fn new(half: OwnedWriteHalf) -> Self {
        Self {
            half,
            head: BytesMut::with_capacity(16 * 1024),
            segments: Vec::with_capacity(IOV_MAX),
            queued_bytes: 0,
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Encodes `pdu` at the end of the queue.
    pub fn push(&mut self, codec: &mut PduCodec, pdu: &Pdu) -> Result<(), PduError> {
        let before = self.head.len();
        let tail = codec.encode_head(pdu, &mut self.head)?;
        self.queued_bytes += self.head.len() - before;
        if let Some(tail) = tail {
            self.queued_bytes += tail.wire_len();
            if tail.data.len() <= COPY_DATA_MAX {
                self.head.extend_from_slice(&tail.data);
            } else {
                self.seal_head();
                self.segments.push(tail.data.clone());
            }
            self.head.extend_from_slice(tail.trailer());
        }
        Ok(())
    }

    fn seal_head(&mut self) {
        if !self.head.is_empty() {
            self.segments.push(self.head.split().freeze());
        }
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.seal_head();
        let mut first = 0;
        while first < self.segments.len() {
            let n = {
                let end = self.segments.len().min(first + IOV_MAX);
                let iov: Vec<IoSlice<'_>> = self.segments[first..end]
                    .iter()
                    .map(|b| IoSlice::new(b))
                    .collect();
                self.half.write_vectored(&iov).await?
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.queued_bytes = self.queued_bytes.saturating_sub(n);
            let mut left = n;
            while left > 0 && first < self.segments.len() {
                let seg = &mut self.segments[first];
                if seg.len() <= left {
                    left -= seg.len();
                    first += 1;
                } else {
                    seg.advance(left);
                    left = 0;
                }
            }
        }
        self.segments.clear();
        self.queued_bytes = 0;
        Ok(())
    }

    /// Flushes and shuts the write side down (FIN).
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = self.half.shutdown().await;
    }
}
