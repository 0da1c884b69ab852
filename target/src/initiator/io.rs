//! NVM I/O helpers (NVM Command Set 1.0, section 3), optionally stamped with a map generation
//! in CDW2 (low) / CDW3 (high) (docs/cluster-protocol.md, "The generation on the wire").

use bytes::{Bytes, BytesMut};
use codec::nvme::cmd::{
    DSM_RANGE_LEN, DatasetManagement, DsmRange, Flush, IoCommand, Rw, WriteZeroes,
};
use codec::nvme::sgl::SglDescriptor;
use std::num::NonZeroU64;

use super::error::{InitiatorError, Result};
use super::queue::{Completion, Queue};

/// Most blocks in one command: NLB is a 0's based 16-bit field.
pub const NLB_MAX: u32 = 1 << 16;

/// Most ranges in one Dataset Management command: NR is a 0's based 8-bit field.
pub const DSM_RANGES_MAX: usize = 256;

/// A queue whose I/O helpers stamp a chosen generation (0: unstamped). Made by
/// [`Queue::with_generation`]; the helpers on [`Queue`] itself stamp [`Queue::generation`].
#[derive(Debug, Clone, Copy)]
pub struct Stamped<'a> {
    queue: &'a Queue,
    generation: u64,
    /// Expiry in MPTR (CLOCK_REALTIME milliseconds; 0: none): [`Stamped::expiring`].
    expires: u64,
}

impl Queue {
    /// The I/O helpers with `generation` in CDW2/CDW3.
    pub fn with_generation(&self, generation: u64) -> Stamped<'_> {
        Stamped {
            queue: self,
            generation,
            expires: 0,
        }
    }

    fn stamped(&self) -> Stamped<'_> {
        self.with_generation(self.generation())
    }

    /// Read `nlb` blocks of `lba_size` bytes at `slba`. See [`Stamped::read`].
    pub async fn read(&self, nsid: u32, slba: u64, nlb: u32, lba_size: u32) -> Result<Bytes> {
        self.stamped().read(nsid, slba, nlb, lba_size).await
    }

    /// Write `data` (whole blocks of `lba_size`) at `slba`. See [`Stamped::write`].
    pub async fn write(
        &self,
        nsid: u32,
        slba: u64,
        lba_size: u32,
        data: Bytes,
        fua: bool,
    ) -> Result<()> {
        self.stamped().write(nsid, slba, lba_size, data, fua).await
    }

    /// Compare `data` with the blocks at `slba`. See [`Stamped::compare`].
    pub async fn compare(&self, nsid: u32, slba: u64, lba_size: u32, data: Bytes) -> Result<()> {
        self.stamped().compare(nsid, slba, lba_size, data).await
    }

    /// Flush. See [`Stamped::flush`].
    pub async fn flush(&self, nsid: u32) -> Result<()> {
        self.stamped().flush(nsid).await
    }

    /// Write Zeroes. See [`Stamped::write_zeroes`].
    pub async fn write_zeroes(&self, nsid: u32, slba: u64, nlb: u32, deac: bool) -> Result<()> {
        self.stamped().write_zeroes(nsid, slba, nlb, deac).await
    }

    /// Dataset Management, Deallocate. See [`Stamped::dsm_deallocate`].
    pub async fn dsm_deallocate(&self, nsid: u32, ranges: &[(u64, u32)]) -> Result<()> {
        self.stamped().dsm_deallocate(nsid, ranges).await
    }
}

impl Stamped<'_> {
    /// The same helpers, each command also carrying `expires` (CLOCK_REALTIME milliseconds):
    /// a cluster server does not start a forwarded command past it (docs/cluster-protocol.md,
    /// "Bounds"). Flush carries none.
    pub fn expiring(self, expires: u64) -> Self {
        Self { expires, ..self }
    }

    /// The generation stamped (0: unstamped).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn rw(&self, nsid: u32, slba: u64, nlb: u32) -> Rw {
        Rw {
            expires: self.expires,
            ..Rw::new(nsid, slba, nlb, self.generation)
        }
    }

    /// Submit an I/O command built by the codec; the queue sets CID and SGL1.
    pub async fn submit_io(
        &self,
        cmd: &IoCommand,
        data_out: Option<Bytes>,
        data_in_len: u32,
    ) -> Result<Completion> {
        let sqe = cmd.to_sqe(0, SglDescriptor::transport(0));
        self.queue.submit(sqe, data_out, data_in_len).await
    }

    /// Read: returns the `nlb * lba_size` bytes.
    pub async fn read(&self, nsid: u32, slba: u64, nlb: u32, lba_size: u32) -> Result<Bytes> {
        check_nlb(nlb)?;
        let len = u64::from(nlb) * u64::from(lba_size);
        let len = u32::try_from(len).map_err(|_| InitiatorError::InvalidArgument {
            what: "read above 4 GiB",
        })?;
        let c = self
            .submit_io(&IoCommand::Read(self.rw(nsid, slba, nlb)), None, len)
            .await?;
        Ok(c.into_result()?.data)
    }

    /// Write `data`, a whole number of `lba_size` blocks; FUA as asked.
    pub async fn write(
        &self,
        nsid: u32,
        slba: u64,
        lba_size: u32,
        data: Bytes,
        fua: bool,
    ) -> Result<()> {
        let nlb = blocks(data.len(), lba_size)?;
        let cmd = IoCommand::Write(Rw {
            fua,
            ..self.rw(nsid, slba, nlb)
        });
        self.submit_io(&cmd, Some(data), 0)
            .await?
            .into_result()
            .map(drop)
    }

    /// Compare: `Err(Status(COMPARE_FAILURE))` when the blocks differ.
    pub async fn compare(&self, nsid: u32, slba: u64, lba_size: u32, data: Bytes) -> Result<()> {
        let nlb = blocks(data.len(), lba_size)?;
        let cmd = IoCommand::Compare(self.rw(nsid, slba, nlb));
        self.submit_io(&cmd, Some(data), 0)
            .await?
            .into_result()
            .map(drop)
    }

    /// Flush the namespace's volatile write cache.
    pub async fn flush(&self, nsid: u32) -> Result<()> {
        let cmd = IoCommand::Flush(Flush {
            nsid,
            generation: NonZeroU64::new(self.generation),
        });
        self.submit_io(&cmd, None, 0).await?.into_result().map(drop)
    }

    /// Write Zeroes over `nlb` blocks; `deac` also asks to deallocate them.
    pub async fn write_zeroes(&self, nsid: u32, slba: u64, nlb: u32, deac: bool) -> Result<()> {
        check_nlb(nlb)?;
        let cmd = IoCommand::WriteZeroes(WriteZeroes {
            nsid,
            slba,
            nlb,
            deac,
            fua: false,
            lr: false,
            generation: NonZeroU64::new(self.generation),
            expires: self.expires,
        });
        self.submit_io(&cmd, None, 0).await?.into_result().map(drop)
    }

    /// Dataset Management with the Deallocate attribute over `(slba, nlb)` ranges (1 to 256).
    pub async fn dsm_deallocate(&self, nsid: u32, ranges: &[(u64, u32)]) -> Result<()> {
        if ranges.is_empty() || ranges.len() > DSM_RANGES_MAX {
            return Err(InitiatorError::InvalidArgument {
                what: "DSM needs 1 to 256 ranges",
            });
        }
        let mut data = BytesMut::with_capacity(ranges.len() * DSM_RANGE_LEN);
        for &(slba, nlb) in ranges {
            data.extend_from_slice(
                &DsmRange {
                    cattr: 0,
                    nlb,
                    slba,
                }
                .to_bytes(),
            );
        }
        let cmd = IoCommand::DatasetManagement(DatasetManagement {
            nsid,
            // 1..=256 ranges, checked above.
            nr: u16::try_from(ranges.len()).unwrap_or(1),
            ad: true,
            idw: false,
            idr: false,
            generation: NonZeroU64::new(self.generation),
            expires: self.expires,
        });
        self.submit_io(&cmd, Some(data.freeze()), 0)
            .await?
            .into_result()
            .map(drop)
    }
}

pub(super) fn check_nlb(nlb: u32) -> Result<()> {
    if nlb == 0 || nlb > NLB_MAX {
        return Err(InitiatorError::InvalidArgument {
            what: "NLB must be 1 to 65536",
        });
    }
    Ok(())
}

/// Blocks in `len` bytes of `lba_size`: a whole, non-zero number, at most [`NLB_MAX`].
pub(super) fn blocks(len: usize, lba_size: u32) -> Result<u32> {
    let lba = usize::try_from(lba_size).unwrap_or(usize::MAX);
    if lba == 0 || len == 0 || !len.is_multiple_of(lba) {
        return Err(InitiatorError::InvalidArgument {
            what: "data must be a non-zero whole number of blocks",
        });
    }
    let nlb = u32::try_from(len / lba).unwrap_or(u32::MAX);
    check_nlb(nlb)?;
    Ok(nlb)
}
