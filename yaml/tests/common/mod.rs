//! Shared by the yaml crate's integration tests (`mod common;`).

use std::path::{Path, PathBuf};

/// The repository's `examples/` directory.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}
