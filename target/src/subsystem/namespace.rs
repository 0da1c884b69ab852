//! A namespace: LBAs, identity (NGUID/UUID) and the [`Volume`] that holds its blocks.

use std::sync::Arc;

use codec::nvme::Status;

use crate::subsystem::volume::Volume;

/// One namespace of a subsystem.
pub struct Namespace {
    pub nsid: u32,
    /// Logical block size in bytes (512 or 4096).
    pub block_size: u32,
    /// log2(block_size), for LBA ↔ byte conversions.
    pub lba_shift: u32,
    /// Namespace size in logical blocks (NSZE = NCAP).
    pub nlbas: u64,
    pub nguid: [u8; 16],
    pub uuid: [u8; 16],
    pub volume: Arc<dyn Volume>,
    /// Read and write statistics for the metrics endpoint.
    pub stats: crate::metrics::NsStats,
}

impl Namespace {
    /// Builds a namespace over `volume`; its size is the volume's, truncated to whole blocks.
    pub fn new(
        nsid: u32,
        block_size: u32,
        nguid: [u8; 16],
        uuid: [u8; 16],
        volume: Arc<dyn Volume>,
    ) -> Self {
        debug_assert!(
            block_size.is_power_of_two() && block_size >= 512,
            "validated by yaml"
        );
        let lba_shift = block_size.trailing_zeros();
        let nlbas = volume.len_bytes() >> lba_shift;
        Self {
            nsid,
            block_size,
            lba_shift,
            nlbas,
            nguid,
            uuid,
            volume,
            stats: crate::metrics::NsStats::default(),
        }
    }

    /// Checks `[slba, slba + nlb)` against the namespace and returns (byte offset, byte length).
    ///
    /// NVM Command Set 1.0, section 3.3.x: a range beyond NSZE completes with LBA Out of Range.
    pub fn byte_range(&self, slba: u64, nlb: u64) -> Result<(u64, u64), Status> {
        let end = slba.checked_add(nlb).ok_or(Status::LBA_RANGE.with_dnr())?;
        if end > self.nlbas {
            return Err(Status::LBA_RANGE.with_dnr());
        }
        // end <= nlbas, and nlbas << lba_shift is the volume's length, so neither shift overflows.
        Ok((slba << self.lba_shift, nlb << self.lba_shift))
    }
}
