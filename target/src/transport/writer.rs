//! Batched, vectored PDU output for one connection.
//!
//! PDUs are encoded as they complete into a list of segments: header areas go into one growing
//! buffer, data `Bytes` are moved in as they are (never copied, never cloned), and the whole
//! batch leaves in as few `writev` calls as the kernel allows when the connection loop has
//! nothing else ready. Data buffers that were ours alone go back to the connection's
//! [`BufPool`] once written.

use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use codec::pdu::{Pdu, PduCodec, PduError};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

use crate::bufpool::BufPool;

/// Data smaller than this is copied next to its header instead of getting its own iovec: a
/// short copy is cheaper than an extra segment.
const COPY_DATA_MAX: usize = 512;

/// Most iovecs handed to one `writev` (Linux IOV_MAX is 1024; 64 keeps the array on the stack
/// small while batching dozens of PDUs per call).
const IOV_MAX: usize = 64;

/// Header-area buffer kept per connection; it regrows in place once its segments are sent.
const HEAD_CAPACITY: usize = 16 * 1024;

struct Segment {
    bytes: Bytes,
    /// A data buffer to hand back to the pool after the write.
    recycle: bool,
}

/// Queued output of one connection.
pub struct Writer {
    half: OwnedWriteHalf,
    head: BytesMut,
    segments: Vec<Segment>,
    queued_bytes: usize,
}

impl Writer {
    pub fn new(half: OwnedWriteHalf) -> Self {
        Self {
            half,
            head: BytesMut::with_capacity(HEAD_CAPACITY),
            segments: Vec::with_capacity(IOV_MAX),
            queued_bytes: 0,
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Encodes `pdu` at the end of the queue.
    pub fn push(
        &mut self,
        codec: &mut PduCodec,
        pdu: Pdu,
        pool: &mut BufPool,
    ) -> Result<(), PduError> {
        let before = self.head.len();
        let tail = codec.encode_head_owned(pdu, &mut self.head)?;
        self.queued_bytes += self.head.len() - before;
        if let Some(tail) = tail {
            self.queued_bytes += tail.wire_len();
            let trailer = tail.trailer().to_owned_array();
            if tail.data.len() <= COPY_DATA_MAX {
                self.head.extend_from_slice(&tail.data);
                pool.give(tail.data);
            } else {
                self.seal_head();
                self.segments.push(Segment {
                    bytes: tail.data,
                    recycle: true,
                });
            }
            self.head.extend_from_slice(trailer.as_slice());
        }
        Ok(())
    }

    fn seal_head(&mut self) {
        if !self.head.is_empty() {
            let bytes = self.head.split().freeze();
            self.segments.push(Segment {
                bytes,
                recycle: false,
            });
        }
    }

    /// Writes everything queued; data buffers go back to `pool`.
    pub async fn flush(&mut self, pool: &mut BufPool) -> std::io::Result<()> {
        self.seal_head();
        let mut first = 0;
        while first < self.segments.len() {
            let n = {
                let end = self.segments.len().min(first + IOV_MAX);
                let mut iov = [IoSlice::new(&[]); IOV_MAX];
                for (slot, seg) in iov.iter_mut().zip(&self.segments[first..end]) {
                    *slot = IoSlice::new(&seg.bytes);
                }
                self.half.write_vectored(&iov[..end - first]).await?
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.queued_bytes = self.queued_bytes.saturating_sub(n);
            let mut left = n;
            while left > 0 && first < self.segments.len() {
                let seg = &mut self.segments[first];
                if seg.bytes.len() <= left {
                    left -= seg.bytes.len();
                    first += 1;
                } else {
                    seg.bytes.advance(left);
                    // A partly sent buffer no longer starts where it was allocated.
                    seg.recycle = false;
                    left = 0;
                }
            }
        }
        for seg in self.segments.drain(..) {
            if seg.recycle {
                pool.give(seg.bytes);
            }
        }
        self.queued_bytes = 0;
        if self.head.capacity() < HEAD_CAPACITY / 2 {
            // Every earlier segment is gone: this reclaims the same allocation.
            self.head.reserve(HEAD_CAPACITY);
        }
        Ok(())
    }

    /// Flushes and shuts the write side down (FIN).
    pub async fn close(&mut self, pool: &mut BufPool) {
        let _ = self.flush(pool).await;
        let _ = self.half.shutdown().await;
    }
}

/// The 0 or 4 bytes of a data digest trailer, copied out so the tail can be moved.
trait TrailerExt {
    fn to_owned_array(&self) -> Trailer;
}

#[derive(Clone, Copy)]
struct Trailer {
    b: [u8; 4],
    len: usize,
}

impl Trailer {
    fn as_slice(&self) -> &[u8] {
        &self.b[..self.len]
    }
}

impl TrailerExt for [u8] {
    fn to_owned_array(&self) -> Trailer {
        let mut b = [0u8; 4];
        let len = self.len().min(4);
        b[..len].copy_from_slice(&self[..len]);
        Trailer { b, len }
    }
}
