//! Batched, vectored PDU output for one connection.
//!
//! PDUs are encoded as they complete into a list of segments: header areas go into one growing
//! buffer, data `Bytes` are moved in as they are (never copied, never cloned), read data that
//! lives in a backend's memory ([`hw::Mapped`], RAM and null) is referenced where it lies, and
//! the whole batch leaves in as few `writev` calls as the kernel allows when the connection loop
//! has nothing else ready. Data buffers that were ours alone go back to the connection's
//! [`BufPool`] once written.
//!
//! `writev` is called on the raw socket with iovecs built from raw addresses: a `Mapped` range
//! must never become a Rust reference (`hw`'s `region` module doc), and `IoSlice` would be one.

use bytes::{Buf, Bytes, BytesMut};
use codec::pdu::{C2HData, Pdu, PduCodec, PduError};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::tcp::OwnedWriteHalf;

use crate::transport::bufpool::BufPool;

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
    /// Backend memory sent in place of `bytes` (which is then empty).
    mapped: Option<hw::Mapped>,
}

impl Segment {
    fn len(&self) -> usize {
        self.mapped
            .as_ref()
            .map_or(self.bytes.len(), hw::Mapped::len)
    }

    fn iovec(&self) -> libc::iovec {
        let (ptr, len) = match &self.mapped {
            Some(m) => (m.as_ptr(), m.len()),
            None => (self.bytes.as_ptr(), self.bytes.len()),
        };
        // writev only reads through iov_base; the C type is not const.
        libc::iovec {
            iov_base: ptr.cast_mut().cast::<libc::c_void>(),
            iov_len: len,
        }
    }

    fn advance(&mut self, n: usize) {
        match &mut self.mapped {
            Some(m) => m.advance(n),
            None => self.bytes.advance(n),
        }
        // A partly sent buffer no longer starts where it was allocated.
        self.recycle = false;
    }
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
                    mapped: None,
                });
            }
            self.head.extend_from_slice(trailer.as_slice());
        }
        Ok(())
    }

    /// Encodes a C2HData whose data is backend memory: referenced in place, or copied into a
    /// pooled buffer when the queue uses data digests (the digest needs the bytes).
    pub fn push_mapped(
        &mut self,
        codec: &mut PduCodec,
        head: C2HData,
        data: hw::Mapped,
        pool: &mut BufPool,
    ) -> Result<(), PduError> {
        if codec.params().ddgst || data.len() <= COPY_DATA_MAX {
            let mut buf = pool.take(data.len());
            data.copy_to(&mut buf);
            let pdu = Pdu::C2HData(C2HData {
                data: Bytes::from(buf),
                ..head
            });
            return self.push(codec, pdu, pool);
        }
        let before = self.head.len();
        codec.encode_c2h_head_external(&head, data.len(), &mut self.head)?;
        self.queued_bytes += self.head.len() - before + data.len();
        self.seal_head();
        self.segments.push(Segment {
            bytes: Bytes::new(),
            recycle: false,
            mapped: Some(data),
        });
        Ok(())
    }

    fn seal_head(&mut self) {
        if !self.head.is_empty() {
            let bytes = self.head.split().freeze();
            self.segments.push(Segment {
                bytes,
                recycle: false,
                mapped: None,
            });
        }
    }

    /// Writes everything queued; data buffers go back to `pool`.
    pub async fn flush(&mut self, pool: &mut BufPool) -> std::io::Result<()> {
        self.seal_head();
        let mut first = 0;
        while first < self.segments.len() {
            let n = self.writev(first).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.queued_bytes = self.queued_bytes.saturating_sub(n);
            let mut left = n;
            while left > 0 && first < self.segments.len() {
                let seg = &mut self.segments[first];
                let len = seg.len();
                if len <= left {
                    left -= len;
                    first += 1;
                } else {
                    seg.advance(left);
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

    /// One `writev` of the segments from `first` (at most [`IOV_MAX`]), waiting while the
    /// socket is full. The iovecs are rebuilt on every attempt (they hold raw addresses, which
    /// must not live across an await: the connection's future moves between polls).
    // The one raw syscall of the transport: iovecs of raw addresses are the point (see the
    // module doc), so std's `IoSlice` (a reference) cannot be used.
    #[allow(unsafe_code)]
    async fn writev(&self, first: usize) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let sock: &tokio::net::TcpStream = self.half.as_ref();
        let fd = sock.as_raw_fd();
        let segs = &self.segments[first..self.segments.len().min(first + IOV_MAX)];
        loop {
            let r = sock.try_io(Interest::WRITABLE, || {
                let mut iov = [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; IOV_MAX];
                for (slot, seg) in iov.iter_mut().zip(segs) {
                    *slot = seg.iovec();
                }
                let cnt = libc::c_int::try_from(segs.len()).unwrap_or(0);
                // SAFETY: `iov` holds `cnt` iovecs, each naming memory that stays valid until
                // this call returns: a `Bytes` held by its segment, or a `hw::Mapped` range
                // whose mapping the segment keeps alive. writev only reads that memory.
                let rc = unsafe { libc::writev(fd, iov.as_ptr(), cnt) };
                usize::try_from(rc).map_err(|_| std::io::Error::last_os_error())
            });
            match r {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => sock.writable().await?,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
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
