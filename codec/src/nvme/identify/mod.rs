//! Identify data structures (NVMe Base 2.0, section 5.17.2; NVM Command Set 1.0, section 4.1.5).
//!
//! Every structure is 4096 bytes. Each has a typed struct with the spec's field names, a
//! `to_bytes()` builder and a `parse()` that reads it back (a host-side view for our own
//! initiator and for tests). Field offsets are named constants pinned by static asserts.

mod ctrl;
mod ns;

pub use ctrl::*;
pub use ns::*;

pub use crate::nvme::IDENTIFY_DATA_LEN;

/// A zeroed Identify buffer.
pub(crate) fn zeroed() -> [u8; IDENTIFY_DATA_LEN] {
    [0u8; IDENTIFY_DATA_LEN]
}

/// Copy `b` into a fixed Identify buffer, zero-extending a short one (a peer's truncated reply
/// reads as zeros rather than panicking).
pub(crate) fn fixed(b: &[u8]) -> [u8; IDENTIFY_DATA_LEN] {
    let mut out = zeroed();
    let n = b.len().min(IDENTIFY_DATA_LEN);
    out[..n].copy_from_slice(&b[..n]);
    out
}

/// Read a space- or NUL-padded ASCII field as a string (invalid UTF-8 replaced).
pub(crate) fn get_ascii(b: &[u8], off: usize, len: usize) -> String {
    let field = b.get(off..off + len).unwrap_or(&[]);
    let end = field
        .iter()
        .rposition(|&c| c != b' ' && c != 0)
        .map_or(0, |p| p + 1);
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Read a NUL-terminated string field (e.g. SUBNQN).
pub(crate) fn get_cstr(b: &[u8], off: usize, len: usize) -> String {
    let field = b.get(off..off + len).unwrap_or(&[]);
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// `N` bytes at `off` of `b`.
pub(crate) fn get_array<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    if let Some(s) = b.get(off..off + N) {
        a.copy_from_slice(s);
    }
    a
}

/// Write `src` at `off` of `b`.
pub(crate) fn put_bytes(b: &mut [u8], off: usize, src: &[u8]) {
    if let Some(d) = b.get_mut(off..off + src.len()) {
        d.copy_from_slice(src);
    }
}
