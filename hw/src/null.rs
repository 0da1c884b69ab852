//! The `null` backend: a capacity and nothing behind it. Reads return zeros, writes are
//! dropped. For protocol benchmarks, where the storage must not be the bottleneck.

use crate::{Backend, IoError, Mapped, Op, OpenError, buf_len, check_range};

/// Zeroes every zero-copy read of up to this size points into (in `.bss`: the pages are the
/// kernel's zero page until touched, and nothing touches them). Larger reads copy.
const ZEROES_LEN: usize = 1 << 20;
static ZEROES: [u8; ZEROES_LEN] = [0; ZEROES_LEN];

/// Reads zeros, discards writes; every range is still checked against the capacity.
#[derive(Debug, Clone)]
pub struct NullBackend {
    len_bytes: u64,
}

impl NullBackend {
    /// A null volume of `len_bytes` (> 0) bytes.
    pub fn new(len_bytes: u64) -> Result<NullBackend, OpenError> {
        if len_bytes == 0 {
            return Err(OpenError::InvalidSize {
                backend: "null",
                size: 0,
                reason: "a volume needs at least one byte",
            });
        }
        Ok(NullBackend { len_bytes })
    }

    fn check(&self, op: Op, offset: u64, len: u64) -> Result<(), IoError> {
        check_range(op, offset, len, self.len_bytes, 1)
    }
}

impl Backend for NullBackend {
    fn kind(&self) -> &'static str {
        "null"
    }

    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn block_align(&self) -> usize {
        1
    }

    fn may_block(&self) -> bool {
        false
    }

    /// Nothing is stored, so nothing can be lost: no cache to flush.
    fn volatile_write_cache(&self) -> bool {
        false
    }

    /// Zero-copy: up to 1 MiB of shared static zeroes.
    fn read_mapped(&self, offset: u64, len: u64) -> Option<Result<Mapped, IoError>> {
        let n = usize::try_from(len).ok().filter(|&n| n <= ZEROES_LEN)?;
        Some(self.check(Op::Read, offset, len).map(|()| {
            // SAFETY: `ZEROES` is static, immutable and at least `n` bytes long.
            unsafe { Mapped::new(ZEROES.as_ptr(), n, None) }
        }))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.check(Op::Read, offset, buf_len(buf))?;
        buf.fill(0);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.check(Op::Write, offset, buf_len(buf))
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.check(Op::WriteZeroes, offset, len)
    }

    fn deallocate(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.check(Op::Deallocate, offset, len)
    }

    fn flush(&self) -> Result<(), IoError> {
        Ok(())
    }

    fn write_fua(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.write_at(offset, buf)
    }
}
