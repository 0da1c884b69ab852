//! Bounds-checked little-endian access to untrusted bytes.
//!
//! Every wire value is read through [`Reader`] (or the `get_*` helpers on fixed-size arrays whose
//! offsets are compile-time constants), so a short buffer becomes an error naming the field, never
//! a panic. NVMe and NVMe/TCP are little-endian throughout (NVMe Base 2.0, section 1.5).

/// A field that was missing from a buffer that was too short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Short {
    /// Name of the field that could not be read (spec name where there is one).
    pub field: &'static str,
    /// Byte offset at which the field starts.
    pub offset: usize,
}

impl std::fmt::Display for Short {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "buffer too short for field `{}` at byte {}",
            self.field, self.offset
        )
    }
}

impl std::error::Error for Short {}

/// A cursor over untrusted bytes; every read is bounds-checked.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Take `n` bytes, or fail naming `field`.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], Short> {
        let short = Short {
            field,
            offset: self.pos,
        };
        let end = self.pos.checked_add(n).ok_or(short)?;
        let s = self.buf.get(self.pos..end).ok_or(short)?;
        self.pos = end;
        Ok(s)
    }

    pub fn skip(&mut self, n: usize, field: &'static str) -> Result<(), Short> {
        self.take(n, field).map(|_| ())
    }

    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Short> {
        let s = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, Short> {
        Ok(self.array::<1>(field)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, Short> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, Short> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, Short> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
}

/// Read a little-endian `u16` at a constant offset of a fixed-size structure.
///
/// The offsets passed are compile-time constants checked against `N` by the callers' static
/// asserts; out-of-range offsets are our bug, so they are reported by `debug_assert` and read as 0.
#[inline]
pub fn get_u16<const N: usize>(b: &[u8; N], off: usize) -> u16 {
    debug_assert!(
        off + 2 <= N,
        "get_u16 offset {off} outside a {N}-byte structure"
    );
    match b.get(off..off + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

#[inline]
pub fn get_u32<const N: usize>(b: &[u8; N], off: usize) -> u32 {
    debug_assert!(
        off + 4 <= N,
        "get_u32 offset {off} outside a {N}-byte structure"
    );
    match b.get(off..off + 4) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

#[inline]
pub fn get_u64<const N: usize>(b: &[u8; N], off: usize) -> u64 {
    debug_assert!(
        off + 8 <= N,
        "get_u64 offset {off} outside a {N}-byte structure"
    );
    match b.get(off..off + 8) {
        Some(s) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        }
        None => 0,
    }
}

#[inline]
pub fn put_u16<const N: usize>(b: &mut [u8; N], off: usize, v: u16) {
    debug_assert!(
        off + 2 <= N,
        "put_u16 offset {off} outside a {N}-byte structure"
    );
    if let Some(s) = b.get_mut(off..off + 2) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

#[inline]
pub fn put_u32<const N: usize>(b: &mut [u8; N], off: usize, v: u32) {
    debug_assert!(
        off + 4 <= N,
        "put_u32 offset {off} outside a {N}-byte structure"
    );
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

#[inline]
pub fn put_u64<const N: usize>(b: &mut [u8; N], off: usize, v: u64) {
    debug_assert!(
        off + 8 <= N,
        "put_u64 offset {off} outside a {N}-byte structure"
    );
    if let Some(s) = b.get_mut(off..off + 8) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// Copy `src` into `b[off..off+len]`, space-padding (as NVMe ASCII fields are) or truncating.
pub fn put_ascii<const N: usize>(b: &mut [u8; N], off: usize, len: usize, src: &str) {
    if let Some(dst) = b.get_mut(off..off + len) {
        dst.fill(b' ');
        let n = src.len().min(len);
        dst[..n].copy_from_slice(&src.as_bytes()[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_names_the_missing_field() {
        let mut r = Reader::new(&[1, 0, 2]);
        assert_eq!(r.u16("hlen"), Ok(1));
        assert_eq!(
            r.u16("plen"),
            Err(Short {
                field: "plen",
                offset: 2
            })
        );
        // A failed read consumes nothing.
        assert_eq!(r.u8("pdo"), Ok(2));
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn fixed_offsets_round_trip() {
        let mut b = [0u8; 16];
        put_u16(&mut b, 0, 0xBEEF);
        put_u32(&mut b, 2, 0xDEAD_BEEF);
        put_u64(&mut b, 8, 0x0102_0304_0506_0708);
        assert_eq!(get_u16(&b, 0), 0xBEEF);
        assert_eq!(get_u32(&b, 2), 0xDEAD_BEEF);
        assert_eq!(get_u64(&b, 8), 0x0102_0304_0506_0708);
        assert_eq!(b[8], 0x08);
    }
}
