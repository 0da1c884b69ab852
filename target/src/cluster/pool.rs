//! A storage server's pool: one `hw` backend holding every extent this server stores, at the
//! byte offsets the map gives. Writes into a region being moved away are recorded in that
//! region's dirty map so the mover can re-copy them (copy-then-switch).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use bitvec::prelude::{BitVec, Lsb0};
use bytes::Bytes;
use hw::Backend;
use manager::map::PoolId;

use crate::subsystem::volume::{IoFuture, IoResult, LocalVolume, Volume};

/// Dirty-tracking granularity: 4 KiB (a 64 MiB extent is a 2 KiB bitmap).
pub const TRACK_CHUNK: u64 = 4096;

/// Blocks of one pool range written since the last `take`.
#[derive(Debug)]
pub struct DirtyRegion {
    pub start: u64,
    pub len: u64,
    /// One bit per TRACK_CHUNK, in atomic words so writers never lock.
    words: Vec<AtomicU64>,
}

impl DirtyRegion {
    fn new(start: u64, len: u64) -> Self {
        let chunks = len.div_ceil(TRACK_CHUNK);
        let words = usize::try_from(chunks.div_ceil(64)).unwrap_or(0);
        Self {
            start,
            len,
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn mark(&self, off: u64, len: u64) {
        let end = (off + len).min(self.start + self.len);
        let off = off.max(self.start);
        if off >= end {
            return;
        }
        let first = (off - self.start) / TRACK_CHUNK;
        let last = (end - 1 - self.start) / TRACK_CHUNK;
        for c in first..=last {
            let (w, b) = (usize::try_from(c / 64).unwrap_or(usize::MAX), c % 64);
            if let Some(word) = self.words.get(w) {
                word.fetch_or(1 << b, Ordering::AcqRel);
            }
        }
    }

    /// Takes (and clears) the dirty map: bit i = chunk i of the region was written.
    pub fn take(&self) -> BitVec<u64, Lsb0> {
        let mut bits: BitVec<u64, Lsb0> = BitVec::with_capacity(self.words.len() * 64);
        for w in &self.words {
            let v = w.swap(0, Ordering::AcqRel);
            bits.extend_from_raw_slice(&[v]);
        }
        let chunks = usize::try_from(self.len.div_ceil(TRACK_CHUNK)).unwrap_or(0);
        bits.truncate(chunks);
        bits
    }

    /// Marks `[off, off+len)` (pool offsets) dirty.
    pub fn mark_range(&self, off: u64, len: u64) {
        self.mark(off, len);
    }

    /// Marks everything dirty (the first pass copies the whole region).
    pub fn mark_all(&self) {
        self.mark(self.start, self.len);
    }
}

/// The pool, with dirty tracking for regions being moved.
pub struct TrackedPool {
    inner: LocalVolume,
    regions: ArcSwap<Vec<Arc<DirtyRegion>>>,
}

impl TrackedPool {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            inner: LocalVolume::new(backend),
            regions: ArcSwap::from_pointee(Vec::new()),
        }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        self.inner.backend()
    }

    /// Starts tracking writes to `[start, start+len)`.
    pub fn track(&self, start: u64, len: u64) -> Arc<DirtyRegion> {
        let r = Arc::new(DirtyRegion::new(start, len));
        let mut v = Vec::clone(&self.regions.load());
        v.push(Arc::clone(&r));
        self.regions.store(Arc::new(v));
        r
    }

    pub fn untrack(&self, region: &Arc<DirtyRegion>) {
        let v: Vec<_> = self
            .regions
            .load()
            .iter()
            .filter(|r| !Arc::ptr_eq(r, region))
            .cloned()
            .collect();
        self.regions.store(Arc::new(v));
    }

    fn mark(&self, off: u64, len: u64) {
        for r in self.regions.load().iter() {
            if off < r.start + r.len && off + len > r.start {
                r.mark(off, len);
            }
        }
    }

    fn marked<T: Send + 'static>(
        self: &Arc<Self>,
        off: u64,
        len: u64,
        f: IoFuture<T>,
    ) -> IoFuture<T> {
        if self.regions.load().is_empty() {
            return f;
        }
        // The bit is set after the write lands, so a copier that took the map before it will
        // see it on its next pass (docs/cluster-protocol.md).
        let me = Arc::clone(self);
        IoFuture::Boxed(Box::pin(async move {
            let r = f.await;
            me.mark(off, len);
            r
        }))
    }
}

/// `Arc<TrackedPool>` is the pool's Volume: the internal namespace and local extents use it.
#[derive(Clone)]
pub struct PoolVolume(pub Arc<TrackedPool>);

impl Volume for PoolVolume {
    fn len_bytes(&self) -> u64 {
        self.0.inner.len_bytes()
    }
    fn volatile_write_cache(&self) -> bool {
        self.0.inner.volatile_write_cache()
    }
    fn kind(&self) -> &'static str {
        self.0.inner.kind()
    }
    fn read(&self, offset: u64, buf: Vec<u8>) -> IoFuture<Bytes> {
        self.0.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> IoFuture<()> {
        let len = data.len() as u64;
        let f = self.0.inner.write(offset, data, fua);
        self.0.marked(offset, len, f)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> IoFuture<()> {
        let f = self.0.inner.write_zeroes(offset, len);
        self.0.marked(offset, len, f)
    }
    fn deallocate(&self, offset: u64, len: u64) -> IoFuture<()> {
        let f = self.0.inner.deallocate(offset, len);
        self.0.marked(offset, len, f)
    }
    fn flush(&self) -> IoFuture<()> {
        self.0.inner.flush()
    }
}

/// A fresh pool's identity: 128 bits from the OS random source (docs/replication.md, "A
/// server whose data is gone").
///
/// # Errors
/// The OS random source failed.
pub fn draw_pool_id() -> Result<PoolId, String> {
    let mut b = [0u8; 16];
    codec::nvme::fabrics::auth::random_fill(&mut b)
        .map_err(|e| format!("cannot draw a pool identity: {e}"))?;
    Ok(PoolId(u128::from_le_bytes(b)))
}

/// Where a file pool's identity is kept: `PATH.tessera-pool-id` beside the pool file `PATH`.
#[must_use]
pub fn pool_id_path(pool: &Path) -> PathBuf {
    PathBuf::from(format!("{}.tessera-pool-id", pool.display()))
}

/// A file pool's identity, and whether the pool is fresh (its file does not exist yet: it is
/// created empty, and nothing persisted beside it applies). A pool file without a readable
/// identity file gets a new identity (a server from before pool identities, or a damaged
/// file): the manager records it, or, if it recorded another, rebuilds the server's copies.
///
/// # Errors
/// The OS random source failed.
pub fn file_pool_id(pool: &Path) -> Result<(PoolId, bool), String> {
    if !pool.exists() {
        return Ok((draw_pool_id()?, true));
    }
    let path = pool_id_path(pool);
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse() {
            Ok(id) => Ok((id, false)),
            Err(e) => {
                tracing::warn!(path = %path.display(), "{e}: drawing a new pool identity");
                Ok((draw_pool_id()?, false))
            }
        },
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e,
                    "cannot read the pool identity: drawing a new one");
            }
            Ok((draw_pool_id()?, false))
        }
    }
}

/// Writes a file pool's identity beside it durably (temporary file, fsync, rename, fsync of
/// the directory).
///
/// # Errors
/// Any I/O error.
pub fn write_pool_id(pool: &Path, id: PoolId) -> std::io::Result<()> {
    use std::io::Write;
    let path = pool_id_path(pool);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{id}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads `len` bytes of the pool synchronously-or-not (for the mover).
pub async fn read_pool(pool: &PoolVolume, off: u64, len: usize) -> IoResult<Bytes> {
    pool.read(off, vec![0u8; len]).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_file_pool_keeps_its_identity_and_a_missing_pool_file_is_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("pool.img");
        let (a, fresh) = file_pool_id(&pool).unwrap();
        assert!(fresh, "no pool file yet");
        std::fs::write(&pool, b"data").unwrap();
        write_pool_id(&pool, a).unwrap();
        assert_eq!(file_pool_id(&pool).unwrap(), (a, false));
        // The pool file is gone, its identity file is not: a fresh pool, a new identity.
        std::fs::remove_file(&pool).unwrap();
        let (b, fresh) = file_pool_id(&pool).unwrap();
        assert!(fresh);
        assert_ne!(a, b);
        // A damaged identity file: a new identity (never the old one guessed).
        std::fs::write(&pool, b"data").unwrap();
        std::fs::write(pool_id_path(&pool), b"not hex\n").unwrap();
        let (c, fresh) = file_pool_id(&pool).unwrap();
        assert!(!fresh);
        assert_ne!(c, a);
    }

    #[test]
    fn marks_cover_exactly_the_written_chunks() {
        let r = DirtyRegion::new(1 << 20, 64 * 1024);
        r.mark((1 << 20) + 4096, 1); // chunk 1
        r.mark((1 << 20) + 3 * 4096 - 1, 2); // chunks 2 and 3
        r.mark(0, 100); // outside
        let bits = r.take();
        assert_eq!(bits.len(), 16);
        let set: Vec<usize> = bits.iter_ones().collect();
        assert_eq!(set, vec![1, 2, 3]);
        assert_eq!(r.take().count_ones(), 0, "take must clear");
    }
}
