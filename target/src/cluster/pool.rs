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
    write_durably(&pool_id_path(pool), format!("{id}\n").as_bytes())
}

/// Writes `data` to `path` durably: a temporary file beside it, fsync, rename, fsync of the
/// directory.
///
/// # Errors
/// Any I/O error.
pub(crate) fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Where a block pool's label was last seen, kept in the server's state directory: a device
/// that grew has its label at this offset, no longer at its end (docs/replication.md, "Block
/// pools: a device that grows").
#[must_use]
pub fn label_hint_path(state_dir: &Path, id: PoolId) -> std::path::PathBuf {
    state_dir.join(format!("pool-{id}.label-offset"))
}

/// Records that pool `id`'s label is at byte `offset` (durably; rewritten only when it
/// changed).
///
/// # Errors
/// Any I/O error.
pub fn write_label_hint(state_dir: &Path, id: PoolId, offset: u64) -> std::io::Result<()> {
    if read_label_hint(state_dir, id) == Some(offset) {
        return Ok(());
    }
    write_durably(
        &label_hint_path(state_dir, id),
        format!("{offset}\n").as_bytes(),
    )
}

/// The offset recorded for pool `id`'s label, if any (an unreadable record is none).
#[must_use]
pub fn read_label_hint(state_dir: &Path, id: PoolId) -> Option<u64> {
    std::fs::read_to_string(label_hint_path(state_dir, id))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The label of pool `id` at byte `offset` of `dev`, where an earlier start saw it: true when
/// a valid label of that identity is there (the device grew since). Any failure (the offset
/// past the device, a read error, no label, another identity) is false.
#[must_use]
pub fn label_found_at(dev: &dyn Backend, offset: u64, id: PoolId) -> bool {
    if !offset.is_multiple_of(LABEL_AREA_BYTES)
        || offset
            .checked_add(LABEL_AREA_BYTES)
            .is_none_or(|end| end > dev.len_bytes())
    {
        return false;
    }
    read_label_at(dev, offset).is_ok_and(|l| l == BlockLabel::Found(id))
}

/// Reads and decodes the label area at `at` (a whole area: a read of any logical block size,
/// up to 64 KiB, is aligned).
fn read_label_at(dev: &dyn Backend, at: u64) -> Result<BlockLabel, String> {
    let mut area = vec![0u8; usize::try_from(LABEL_AREA_BYTES).unwrap_or(LABEL_BYTES)];
    dev.read_at(at, &mut area)
        .map_err(|e| format!("cannot read the pool label at byte {at}: {e}"))?;
    decode_label(&area, at)
}

/// A block pool's label area: the last 64 KiB of the device, from an offset that is a
/// multiple of 64 KiB (so aligned for every logical block size), after the pool's usable
/// bytes. Offsets of the pool's data are device offsets, as without a label (docs/replication.md,
/// "A server whose data is gone", has the format).
pub const LABEL_AREA_BYTES: u64 = 64 * 1024;

/// The label's first 16 bytes.
pub const LABEL_MAGIC: [u8; 16] = *b"TESSERA-POOL-LBL";

/// The label format written (and the only one read).
pub const LABEL_VERSION: u32 = 1;

/// Bytes of the label that carry data (the rest of the area is zeros).
const LABEL_BYTES: usize = 64;

/// Where the label area of a device of `device_bytes` starts, which is also the pool's usable
/// size; None when the device is too small to hold a pool and a label (less than 128 KiB).
#[must_use]
pub fn label_offset(device_bytes: u64) -> Option<u64> {
    let at = (device_bytes / LABEL_AREA_BYTES).checked_sub(1)? * LABEL_AREA_BYTES;
    (at > 0).then_some(at)
}

/// The label for identity `id` in an area at `offset`: magic, version, the area's own offset,
/// the identity, CRC32C of the bytes before it (all little-endian).
#[must_use]
pub fn encode_label(id: PoolId, offset: u64) -> [u8; LABEL_BYTES] {
    let mut b = [0u8; LABEL_BYTES];
    b[..16].copy_from_slice(&LABEL_MAGIC);
    b[16..20].copy_from_slice(&LABEL_VERSION.to_le_bytes());
    b[24..32].copy_from_slice(&offset.to_le_bytes());
    b[32..48].copy_from_slice(&id.0.to_le_bytes());
    let crc = codec::pdu::digest::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

/// What the label area of a block pool holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockLabel {
    /// A valid label: the pool's identity.
    Found(PoolId),
    /// No label magic: a new disk, or a pool from before labels.
    Missing,
    /// The magic but a bad checksum or offset (a torn or damaged label): the reason.
    Damaged(String),
}

/// Reads the label of a device whose area starts at `offset`.
///
/// # Errors
/// A label of a newer format (never overwritten), or a read of fewer than 64 bytes.
pub fn decode_label(b: &[u8], offset: u64) -> Result<BlockLabel, String> {
    let Some(b) = b.get(..LABEL_BYTES) else {
        return Err(format!(
            "a pool label is {LABEL_BYTES} bytes, got {}",
            b.len()
        ));
    };
    if b[..16] != LABEL_MAGIC {
        return Ok(BlockLabel::Missing);
    }
    // Little-endian integer of `b[r]` (at most 16 bytes).
    let word = |r: std::ops::Range<usize>| {
        b[r].iter()
            .rev()
            .fold(0u128, |a, &x| (a << 8) | u128::from(x))
    };
    let stored = word(60..64);
    let crc = codec::pdu::digest::crc32c(&b[..60]);
    if stored != u128::from(crc) {
        return Ok(BlockLabel::Damaged(format!(
            "checksum {stored:08x}, computed {crc:08x}"
        )));
    }
    let version = word(16..20);
    if version != u128::from(LABEL_VERSION) {
        return Err(format!(
            "pool label version {version}: this server reads version {LABEL_VERSION} only \
             (written by a newer release?); nothing was written to the device"
        ));
    }
    if word(24..32) != u128::from(offset) {
        return Ok(BlockLabel::Damaged(format!(
            "written for a label area at byte {}, found at byte {offset} (the device's size \
             changed?)",
            word(24..32)
        )));
    }
    Ok(BlockLabel::Found(PoolId(word(32..48))))
}

fn device_offset(dev: &dyn Backend) -> Result<u64, String> {
    label_offset(dev.len_bytes()).ok_or_else(|| {
        format!(
            "the device has {} bytes: a labeled pool needs at least {} (the label takes the \
             last {LABEL_AREA_BYTES})",
            dev.len_bytes(),
            2 * LABEL_AREA_BYTES
        )
    })
}

/// Reads a block pool's label from the end of `dev` (opened whole).
///
/// # Errors
/// The device is too small, the read failed, or the label is of a newer format.
pub fn read_block_label(dev: &dyn Backend) -> Result<BlockLabel, String> {
    read_label_at(dev, device_offset(dev)?)
}

/// Checks that a pool of `pool_bytes` (the map's size) fits on `dev` beside its label: the
/// pool never writes the label area, and the label never overwrites the pool.
///
/// # Errors
/// The pool reaches into the label area, or the device is too small.
pub fn check_label_room(dev: &dyn Backend, pool_bytes: u64) -> Result<u64, String> {
    let at = device_offset(dev)?;
    if pool_bytes > at {
        return Err(format!(
            "the map's pool size for this server is {pool_bytes} bytes, but the device has \
             {at} bytes before its last {LABEL_AREA_BYTES}, which hold the pool label"
        ));
    }
    Ok(at)
}

/// Writes a label with identity `id` at the end of `dev` (the whole 64 KiB area, durably),
/// after checking that a pool of `pool_bytes` does not reach into it.
///
/// # Errors
/// As [`check_label_room`], or the write or the flush failed.
pub fn write_block_label(dev: &dyn Backend, id: PoolId, pool_bytes: u64) -> Result<(), String> {
    let at = check_label_room(dev, pool_bytes)?;
    let mut area = vec![0u8; usize::try_from(LABEL_AREA_BYTES).unwrap_or(LABEL_BYTES)];
    area[..LABEL_BYTES].copy_from_slice(&encode_label(id, at));
    dev.write_fua(at, &area)
        .and_then(|()| dev.flush())
        .map_err(|e| format!("cannot write the pool label at byte {at}: {e}"))
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
    fn the_label_area_is_the_last_aligned_64_kib() {
        assert_eq!(label_offset(0), None);
        assert_eq!(label_offset(LABEL_AREA_BYTES), None, "no room for a pool");
        assert_eq!(label_offset(2 * LABEL_AREA_BYTES - 512), None);
        assert_eq!(label_offset(2 * LABEL_AREA_BYTES), Some(LABEL_AREA_BYTES));
        // A size that is not a multiple of 64 KiB: the area ends before the device does.
        assert_eq!(
            label_offset((1 << 20) + 4096),
            Some((1 << 20) - LABEL_AREA_BYTES)
        );
        assert_eq!(label_offset(1 << 30), Some((1 << 30) - LABEL_AREA_BYTES));
    }

    #[test]
    fn a_block_label_is_found_only_whole_and_at_its_offset() {
        let id = PoolId(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
        let at = 5 * LABEL_AREA_BYTES;
        let label = encode_label(id, at);
        assert_eq!(&label[..16], b"TESSERA-POOL-LBL");
        assert_eq!(decode_label(&label, at), Ok(BlockLabel::Found(id)));
        assert_eq!(decode_label(&[0u8; 64], at), Ok(BlockLabel::Missing));
        // Any flipped bit of the identity (or elsewhere) fails the checksum.
        for byte in 16..64 {
            let mut bad = label;
            bad[byte] ^= 0x10;
            assert!(
                matches!(decode_label(&bad, at), Ok(BlockLabel::Damaged(_))),
                "byte {byte} flipped"
            );
        }
        // The same label read at another offset (the device's size changed): not trusted.
        assert!(matches!(
            decode_label(&label, at + LABEL_AREA_BYTES),
            Ok(BlockLabel::Damaged(_))
        ));
        // A newer format is refused, never overwritten.
        let mut newer = label;
        newer[16..20].copy_from_slice(&2u32.to_le_bytes());
        let crc = codec::pdu::digest::crc32c(&newer[..60]);
        newer[60..64].copy_from_slice(&crc.to_le_bytes());
        let e = decode_label(&newer, at).unwrap_err();
        assert!(e.contains("version 2"), "{e}");
        assert!(decode_label(&label[..63], at).is_err());
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from((i * 31 + i / 4096) % 251).unwrap())
            .collect()
    }

    /// A directory beside the test binary, on the build's filesystem: O_DIRECT may fail on the
    /// temporary directory (an older tmpfs).
    fn scratch() -> tempfile::TempDir {
        let exe = std::env::current_exe().unwrap();
        tempfile::Builder::new()
            .prefix("pool-label-test-")
            .tempdir_in(exe.parent().unwrap())
            .unwrap()
    }

    /// A device that grew: the label is found where the recorded hint says, only with the
    /// identity asked for, and never past the device or off the 64 KiB grid.
    #[test]
    fn a_grown_devices_label_is_found_at_its_recorded_offset() {
        let dir = scratch();
        let path = dir.path().join("disk");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(512 * 1024)
            .unwrap();
        let id = PoolId(0x5eed);
        let at = {
            let dev = hw::BlockBackend::open(&path).unwrap();
            write_block_label(&dev, id, 256 * 1024).unwrap();
            label_offset(dev.len_bytes()).unwrap()
        };
        assert_eq!(at, 448 * 1024);
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        assert_eq!(read_label_hint(&state, id), None);
        write_label_hint(&state, id, at).unwrap();
        assert_eq!(read_label_hint(&state, id), Some(at));
        assert_eq!(read_label_hint(&state, PoolId(1)), None, "another pool's");
        // Grown by 1 MiB: no label at the end, the old one where the hint says.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(512 * 1024 + (1 << 20))
            .unwrap();
        let dev = hw::BlockBackend::open(&path).unwrap();
        assert_eq!(read_block_label(&dev).unwrap(), BlockLabel::Missing);
        assert!(label_found_at(&dev, at, id));
        assert!(!label_found_at(&dev, at, PoolId(1)), "another identity");
        assert!(
            !label_found_at(&dev, at - LABEL_AREA_BYTES, id),
            "no label there"
        );
        assert!(!label_found_at(&dev, at + 512, id), "off the grid");
        assert!(!label_found_at(&dev, dev.len_bytes(), id), "past the end");
        assert!(!label_found_at(&dev, u64::MAX - 10, id), "overflow");
        // A damaged hint is none.
        std::fs::write(label_hint_path(&state, id), b"not a number\n").unwrap();
        assert_eq!(read_label_hint(&state, id), None);
    }

    /// A regular file stands in for the device (the block backend opens both with O_DIRECT).
    #[test]
    fn a_block_label_follows_the_device_and_never_overwrites_pool_data() {
        const DEV: usize = 1 << 20;
        let dir = scratch();
        let path = dir.path().join("disk");
        // A pool from before labels, with data in every block.
        std::fs::write(&path, pattern(DEV)).unwrap();
        let dev = hw::BlockBackend::open(&path).unwrap();
        assert_eq!(read_block_label(&dev), Ok(BlockLabel::Missing));
        let at = label_offset(DEV as u64).unwrap();
        // Its pool uses the whole device: no label is written, nothing changes.
        let id = draw_pool_id().unwrap();
        let e = write_block_label(&dev, id, DEV as u64).unwrap_err();
        assert!(e.contains("hold the pool label"), "{e}");
        assert!(check_label_room(&dev, at + 512).is_err());
        drop(dev);
        assert!(
            std::fs::read(&path).unwrap() == pattern(DEV),
            "pool data changed"
        );

        // Its pool ends where the label area starts: labeled, the pool's bytes untouched.
        let mut dev = hw::BlockBackend::open(&path).unwrap();
        write_block_label(&dev, id, at).unwrap();
        assert_eq!(read_block_label(&dev), Ok(BlockLabel::Found(id)));
        // Limited to the pool's size, the backend refuses I/O into the label area.
        dev.limit_len(at);
        assert_eq!(hw::Backend::len_bytes(&dev), at);
        assert!(hw::Backend::write_at(&dev, at, &[0u8; 4096]).is_err());
        drop(dev);
        let bytes = std::fs::read(&path).unwrap();
        let at_usize = usize::try_from(at).unwrap();
        assert!(
            bytes[..at_usize] == pattern(DEV)[..at_usize],
            "pool data changed"
        );
        assert_eq!(bytes.len(), DEV);

        // The same device under another path keeps its identity.
        let moved = dir.path().join("by-id-link");
        std::fs::rename(&path, &moved).unwrap();
        let dev = hw::BlockBackend::open(&moved).unwrap();
        assert_eq!(read_block_label(&dev), Ok(BlockLabel::Found(id)));
        drop(dev);
        // Another (empty) device at the old path has none: it gets a new identity.
        std::fs::write(&path, vec![0u8; DEV]).unwrap();
        let dev = hw::BlockBackend::open(&path).unwrap();
        assert_eq!(read_block_label(&dev), Ok(BlockLabel::Missing));
        let other = draw_pool_id().unwrap();
        assert_ne!(other, id);
        write_block_label(&dev, other, at).unwrap();
        assert_eq!(read_block_label(&dev), Ok(BlockLabel::Found(other)));
        // Too small a device for a pool and a label: a clear error, nothing written.
        let tiny = dir.path().join("tiny");
        std::fs::write(&tiny, pattern(64 * 1024)).unwrap();
        let dev = hw::BlockBackend::open(&tiny).unwrap();
        let e = read_block_label(&dev).unwrap_err();
        assert!(e.contains("at least 131072"), "{e}");
        assert!(write_block_label(&dev, other, 0).is_err());
        drop(dev);
        assert!(std::fs::read(&tiny).unwrap() == pattern(64 * 1024));
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
