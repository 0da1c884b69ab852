//! Per-connection pool of data buffers, so that steady-state reads allocate nothing.
//!
//! A read takes a buffer of exactly its transfer length (`Vec` with `len == capacity`), the
//! backend fills it, and it travels as a uniquely owned `Bytes` (no shared header is allocated
//! for a `Vec` whose length equals its capacity) into the connection's writer. When the writer
//! has sent it, the buffer comes back here ([`BufPool::give`]). The pool lives in one
//! connection's task: no lock. It is bounded in bytes and per size, so a burst of odd sizes
//! cannot pin memory.

use bytes::Bytes;

/// Most bytes one connection keeps for reuse by default: a queue depth of 128 KiB reads
/// (16 MiB) would be more than an idle connection should hold; 4 MiB covers QD32 of 128 KiB or
/// QD1024 of 4 KiB.
pub const POOL_BYTES_MAX: usize = 4 << 20;

/// With a larger MDTS the pool keeps up to this many MDTS-sized buffers (so QD4 of the largest
/// reads recycles), never more than [`POOL_BYTES_CAP`]. Nothing is preallocated: buffers enter
/// the pool only after a read used them.
pub const POOL_MDTS_BUFFERS: usize = 4;

/// Most bytes any connection's pool keeps, whatever MDTS is: 32 MiB.
pub const POOL_BYTES_CAP: usize = 32 << 20;

/// Distinct transfer sizes kept (hosts use a handful: 4 KiB, 8 KiB, 128 KiB...).
pub const POOL_CLASSES_MAX: usize = 8;

#[derive(Debug)]
pub struct BufPool {
    classes: Vec<(usize, Vec<Vec<u8>>)>,
    bytes: usize,
    /// Most bytes kept for reuse.
    bytes_max: usize,
    /// Buffers handed out that had to be allocated (for tests and figures).
    pub misses: u64,
}

impl Default for BufPool {
    fn default() -> Self {
        Self {
            classes: Vec::new(),
            bytes: 0,
            bytes_max: POOL_BYTES_MAX,
            misses: 0,
        }
    }
}

impl BufPool {
    /// A pool for a connection whose commands move at most `mdts` bytes: it keeps
    /// [`POOL_BYTES_MAX`], or [`POOL_MDTS_BUFFERS`] buffers of `mdts` bytes if that is more,
    /// capped at [`POOL_BYTES_CAP`].
    pub fn for_mdts(mdts: u32) -> Self {
        let mdts = usize::try_from(mdts).unwrap_or(usize::MAX);
        Self {
            bytes_max: mdts
                .saturating_mul(POOL_MDTS_BUFFERS)
                .clamp(POOL_BYTES_MAX, POOL_BYTES_CAP),
            ..Self::default()
        }
    }

    /// A zero-filled or recycled buffer of exactly `len` bytes (its old contents are stale data
    /// of this same connection, overwritten in full by the read before anyone sees them).
    pub fn take(&mut self, len: usize) -> Vec<u8> {
        if let Some((_, free)) = self.classes.iter_mut().find(|(l, _)| *l == len)
            && let Some(v) = free.pop()
        {
            self.bytes -= len;
            return v;
        }
        self.misses += 1;
        vec![0u8; len]
    }

    /// Returns a buffer sent by the writer; kept if it is ours alone and there is room.
    pub fn give(&mut self, b: Bytes) {
        if b.is_empty() || self.bytes + b.len() > self.bytes_max {
            return;
        }
        let Ok(m) = b.try_into_mut() else { return };
        let v: Vec<u8> = m.into();
        let len = v.len();
        if len != v.capacity() {
            return;
        }
        if let Some(i) = self.classes.iter().position(|(l, _)| *l == len) {
            self.classes[i].1.push(v);
        } else if self.classes.len() < POOL_CLASSES_MAX {
            self.classes.push((len, vec![v]));
        } else {
            return;
        }
        self.bytes += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_buffer_is_reused_without_allocating() {
        let mut p = BufPool::default();
        let v = p.take(4096);
        let ptr = v.as_ptr();
        let b = Bytes::from(v);
        p.give(b);
        let again = p.take(4096);
        assert_eq!(again.as_ptr(), ptr, "the buffer was not recycled");
        assert_eq!(p.misses, 1);
    }

    #[test]
    fn shared_buffers_are_not_taken_back_and_the_pool_is_bounded() {
        let mut p = BufPool::default();
        let b = Bytes::from(p.take(4096));
        let other = b.clone();
        p.give(b);
        assert_eq!(p.bytes, 0, "a buffer someone still reads was recycled");
        drop(other);
        for _ in 0..(POOL_BYTES_MAX / 65536 + 4) {
            p.give(Bytes::from(vec![0u8; 65536]));
        }
        assert!(p.bytes <= POOL_BYTES_MAX);
    }

    #[test]
    fn the_bound_follows_mdts_within_the_cap() {
        assert_eq!(BufPool::for_mdts(128 * 1024).bytes_max, POOL_BYTES_MAX);
        assert_eq!(BufPool::for_mdts(4 << 20).bytes_max, 16 << 20);
        assert_eq!(BufPool::for_mdts(8 << 20).bytes_max, POOL_BYTES_CAP);
        let mut p = BufPool::for_mdts(2 << 20);
        for _ in 0..6 {
            p.give(Bytes::from(vec![0u8; 2 << 20]));
        }
        assert_eq!(p.bytes, 8 << 20, "four 2 MiB buffers kept, no more");
    }
}
