//! Where a namespace's blocks live.
//!
//! A namespace (see [`crate::subsystem::namespace`]) speaks in LBAs and NVMe status; a [`Volume`] speaks in
//! byte ranges and [`VolumeError`]s. This trait is the one seam between the two. Its
//! implementations: [`LocalVolume`] (a `hw` backend on this server), the cluster's pool volume
//! (the storage server's own backend, tracking writes for extent moves) and its routed volume
//! (each extent goes to the server the map names, stamped with this server's generation).
//!
//! A [`VolumeError`] keeps apart the two ways an operation fails: the backend that holds the
//! blocks failed ([`VolumeError::Backend`], its `hw::IoError` as it came), or there is no path
//! to that backend right now ([`VolumeError::NoPath`]: a routed volume's owner is unreachable
//! or the map is settling). They become different NVMe statuses (`controller::status`): a
//! backend's own EAGAIN is an Internal Error like any other unexpected errno, never a path error.
//!
//! Operations return [`IoFuture`], which completes inline for backends that never sleep (null, RAM)
//! and runs on tokio's bounded blocking pool for those that may (file, block), so no blocking
//! syscall ever runs on a reactor thread and the inline path allocates nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hw::{Backend, IoError};

/// Result of a volume operation.
pub type IoResult<T> = Result<T, VolumeError>;

/// Why a volume operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeError {
    /// The backend holding the blocks failed (media, space, range...).
    Backend(IoError),
    /// No path to the blocks right now; the host should retry, on this path or another.
    NoPath(NoPath),
    /// The blocks' data is gone for good (a routed extent the cluster map marks `lost`): a
    /// retry cannot help.
    Lost,
}

/// Why a routed volume has no path to an extent (each becomes the same retryable path status;
/// the reason is for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPath {
    /// The map has no such volume, or no owner for the extent (the map is being changed).
    Unmapped,
    /// The server that owns the extent could not be reached.
    Unreachable,
    /// The owner and this server disagreed on the map generation until the retries ran out.
    MapSettling,
}

impl VolumeError {
    /// The backend error, if the backend is what failed.
    pub fn backend(&self) -> Option<&IoError> {
        match self {
            VolumeError::Backend(e) => Some(e),
            VolumeError::NoPath(_) | VolumeError::Lost => None,
        }
    }
}

impl From<IoError> for VolumeError {
    fn from(e: IoError) -> Self {
        VolumeError::Backend(e)
    }
}

impl std::fmt::Display for VolumeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VolumeError::Backend(e) => e.fmt(f),
            VolumeError::NoPath(NoPath::Unmapped) => {
                f.write_str("no path: the map names no owner for this range")
            }
            VolumeError::NoPath(NoPath::Unreachable) => {
                f.write_str("no path: the server owning this range is unreachable")
            }
            VolumeError::NoPath(NoPath::MapSettling) => {
                f.write_str("no path: the map generation did not settle in time")
            }
            VolumeError::Lost => f.write_str(
                "data lost: the map marks this extent lost (its only copy's pool was replaced)",
            ),
        }
    }
}

impl std::error::Error for VolumeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.backend()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A future for a volume operation: ready at once, on the blocking pool, or boxed (routed I/O).
pub enum IoFuture<T> {
    /// Completed inline (non-blocking backend). `None` once taken.
    Ready(Option<IoResult<T>>),
    /// Running on tokio's blocking pool.
    Blocking(tokio::task::JoinHandle<IoResult<T>>),
    /// Anything else (e.g. forwarded to another server).
    Boxed(Pin<Box<dyn Future<Output = IoResult<T>> + Send>>),
}

impl<T> IoFuture<T> {
    /// The result, if the operation already finished (inline backends).
    pub fn take_ready(&mut self) -> Option<IoResult<T>> {
        match self {
            IoFuture::Ready(r) => r.take(),
            _ => None,
        }
    }

    /// Runs `f` inline when the backend never blocks, else on the blocking pool.
    fn run<F>(inline: bool, f: F) -> Self
    where
        F: FnOnce() -> IoResult<T> + Send + 'static,
        T: Send + 'static,
    {
        if inline {
            IoFuture::Ready(Some(f()))
        } else {
            IoFuture::Blocking(tokio::task::spawn_blocking(f))
        }
    }
}

// The value of a `Ready` future is moved out, never pinned; JoinHandle and Pin<Box<..>> are
// Unpin: nothing in IoFuture relies on staying at one address.
impl<T> Unpin for IoFuture<T> {}

impl<T> Future for IoFuture<T> {
    type Output = IoResult<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // IoFuture holds no self-references: JoinHandle and Pin<Box<..>> are Unpin.
        let this = self.get_mut();
        match this {
            IoFuture::Ready(r) => match r.take() {
                Some(r) => Poll::Ready(r),
                None => Poll::Ready(Err(VolumeError::Backend(IoError::Io {
                    op: hw::Op::Read,
                    errno: libc_eio(),
                }))),
            },
            IoFuture::Blocking(h) => match Pin::new(h).poll(cx) {
                Poll::Ready(Ok(r)) => Poll::Ready(r),
                // The blocking task panicked or was cancelled by runtime shutdown.
                Poll::Ready(Err(_)) => Poll::Ready(Err(VolumeError::Backend(IoError::Io {
                    op: hw::Op::Read,
                    errno: libc_eio(),
                }))),
                Poll::Pending => Poll::Pending,
            },
            IoFuture::Boxed(f) => f.as_mut().poll(cx),
        }
    }
}

/// EIO, for failures that are not the backend's own (a lost blocking task).
const fn libc_eio() -> i32 {
    5
}

/// Byte-addressed storage behind one namespace.
pub trait Volume: Send + Sync + 'static {
    /// Capacity in bytes.
    fn len_bytes(&self) -> u64;
    /// True when acknowledged writes need a flush to be durable (reported as VWC).
    fn volatile_write_cache(&self) -> bool;
    /// Backend kind, for logs and the SMART page.
    fn kind(&self) -> &'static str;
    /// Fills `buf` (all of its length) from `offset` and returns it frozen. The caller supplies
    /// the buffer so that it can come from a per-connection pool.
    fn read(&self, offset: u64, buf: Vec<u8>) -> IoFuture<Bytes>;
    /// A read without a copy: the bytes at `[offset, offset + len)` in the backend's own memory
    /// (RAM, null), which the transport hands to `writev` as they are. `None` when the volume
    /// has no such memory: the caller uses [`Volume::read`].
    fn read_mapped(&self, offset: u64, len: u64) -> Option<IoResult<hw::Mapped>> {
        let _ = (offset, len);
        None
    }
    /// Writes `data` at `offset`; with `fua` it is durable on completion.
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> IoFuture<()>;
    /// Zeroes a range.
    fn write_zeroes(&self, offset: u64, len: u64) -> IoFuture<()>;
    /// Discards a range (reads return zeros afterwards).
    fn deallocate(&self, offset: u64, len: u64) -> IoFuture<()>;
    /// Makes every acknowledged write durable.
    fn flush(&self) -> IoFuture<()>;
}

/// A volume whose blocks all live in one local backend.
pub struct LocalVolume {
    backend: Arc<dyn Backend>,
    inline: bool,
}

impl LocalVolume {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        let inline = !backend.may_block();
        Self { backend, inline }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
}

impl Volume for LocalVolume {
    fn len_bytes(&self) -> u64 {
        self.backend.len_bytes()
    }

    fn volatile_write_cache(&self) -> bool {
        self.backend.volatile_write_cache()
    }

    fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    fn read_mapped(&self, offset: u64, len: u64) -> Option<IoResult<hw::Mapped>> {
        if self.inline {
            self.backend
                .read_mapped(offset, len)
                .map(|r| r.map_err(VolumeError::Backend))
        } else {
            None
        }
    }

    fn read(&self, offset: u64, mut buf: Vec<u8>) -> IoFuture<Bytes> {
        if self.inline {
            // No Arc clone, no closure: the inline path is a plain call. `Bytes::from` a Vec
            // whose length equals its capacity allocates nothing.
            return IoFuture::Ready(Some(
                self.backend
                    .read_at(offset, &mut buf)
                    .map(|()| Bytes::from(buf))
                    .map_err(VolumeError::Backend),
            ));
        }
        let b = Arc::clone(&self.backend);
        IoFuture::run(false, move || {
            b.read_at(offset, &mut buf)?;
            Ok(Bytes::from(buf))
        })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> IoFuture<()> {
        if self.inline {
            let b = &self.backend;
            return IoFuture::Ready(Some(
                if fua {
                    b.write_fua(offset, &data)
                } else {
                    b.write_at(offset, &data)
                }
                .map_err(VolumeError::Backend),
            ));
        }
        let b = Arc::clone(&self.backend);
        IoFuture::run(self.inline, move || {
            Ok(if fua {
                b.write_fua(offset, &data)
            } else {
                b.write_at(offset, &data)
            }?)
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> IoFuture<()> {
        let b = Arc::clone(&self.backend);
        IoFuture::run(self.inline, move || Ok(b.write_zeroes(offset, len)?))
    }

    fn deallocate(&self, offset: u64, len: u64) -> IoFuture<()> {
        let b = Arc::clone(&self.backend);
        IoFuture::run(self.inline, move || Ok(b.deallocate(offset, len)?))
    }

    fn flush(&self) -> IoFuture<()> {
        let b = Arc::clone(&self.backend);
        IoFuture::run(self.inline, move || Ok(b.flush()?))
    }
}
