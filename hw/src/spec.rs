//! What to open: the plain description the target builds from its configuration.

use std::path::PathBuf;
use std::sync::Arc;

use crate::{Backend, BlockBackend, FileBackend, NullBackend, OpenError, RamBackend};

/// Which backend to open, and with what parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// Reads zeros, drops writes: `size` bytes of nothing.
    Null { size: u64 },
    /// `size` zeroed bytes of RAM; `preallocate` faults every page in at open.
    Ram { size: u64, preallocate: bool },
    /// A regular file. `size: None` uses the existing size; `create` creates a missing file
    /// and grows a smaller one to `size` (never shrinks). See [`crate::file`].
    File {
        path: PathBuf,
        size: Option<u64>,
        create: bool,
    },
    /// A block device or a regular file with O_DIRECT. See [`crate::block`].
    Block { path: PathBuf },
}

/// Opens the backend `spec` describes.
pub fn open(spec: &BackendSpec) -> Result<Arc<dyn Backend>, OpenError> {
    Ok(match spec {
        BackendSpec::Null { size } => Arc::new(NullBackend::new(*size)?),
        BackendSpec::Ram { size, preallocate } => Arc::new(RamBackend::new(*size, *preallocate)?),
        BackendSpec::File { path, size, create } => {
            Arc::new(FileBackend::open(path, *size, *create)?)
        }
        BackendSpec::Block { path } => Arc::new(BlockBackend::open(path)?),
    })
}
