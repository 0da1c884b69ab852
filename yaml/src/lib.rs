#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod build;
mod cluster;
mod error;
mod ids;
mod model;
mod namespace;
mod nqn;
mod size;
mod tree;

use std::io::Read;
use std::path::Path;

pub use build::{
    DEFAULT_IN_CAPSULE_DATA, DEFAULT_MAX_IO_SIZE, DEFAULT_MODEL, DEFAULT_PORT, HOSTS_MAX,
    IN_CAPSULE_DATA_MAX, LAYOUT_BYTES_MAX, LISTENERS_MAX, MAX_IO_SIZE_MAX, MAX_IO_SIZE_MIN,
    SECRET_FILE_BYTES_MAX, SUBSYSTEMS_MAX,
};
pub use cluster::{
    CLUSTER_SERVERS_MAX, CLUSTER_VOLUMES_MAX, Cluster, ClusterServer, ClusterSubsystem,
    ClusterVolume, DEFAULT_EXTENT_SIZE, DeclaredState, NAME_CHARS_MAX, REPLICAS_MAX, is_name,
    load_cluster, load_cluster_text, parse_cluster_str,
};
pub use error::{ErrorKind, LayoutError, Location};
pub use ids::{
    MODEL_BYTES_MAX, SERIAL_BYTES_MAX, derived_namespace_id, derived_serial, derived_volume_uuid,
    hex16, uuid_string,
};
pub use model::{
    BackendDecl, DhGroupDecl, HostAuth, HostPolicy, Layout, Listener, Namespace, SecretFile,
    Subsystem, TransportDecl,
};
pub use namespace::{BLOCK_SIZES, DEFAULT_BLOCK_SIZE, NAMESPACES_MAX};
pub use nqn::{DISCOVERY_NQN, NQN_BYTES_MAX, check_nqn};
pub use size::parse_size;

/// The layout served when `tessera-target` is started without `--config`
/// (also `examples/default.yaml`).
pub const DEFAULT_YAML: &str = include_str!("../default.yaml");

/// The source name of [`DEFAULT_YAML`] in locations.
pub const DEFAULT_SOURCE: &str = "<embedded default.yaml>";

/// Reads and validates the layout file at `path`.
///
/// Locations name the file as `path` displays. A relative backend path is resolved against the
/// directory that holds the file (made absolute, so the daemon may change directory later).
/// File and block backends are checked to exist; the target checks again when opening them.
///
/// # Errors
/// The first problem found, with its file, line, column and field.
pub fn load(path: &Path) -> Result<Layout, LayoutError> {
    let (file, text) = read_source(path)?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let base_dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    build::build(&file, &text, &base_dir)
}

/// Reads a layout or cluster file: at most [`LAYOUT_BYTES_MAX`] bytes of UTF-8. Returns the
/// source name (the path as displayed) and the text.
pub(crate) fn read_source(path: &Path) -> Result<(String, String), LayoutError> {
    let file = path.display().to_string();
    let io_err = |message: String| {
        LayoutError::new(
            ErrorKind::Io,
            Location {
                file: file.clone(),
                ..Location::default()
            },
            message,
        )
    };
    let mut bytes = Vec::new();
    // Read at most one byte past the limit: enough to know the file is too large.
    let limit = u64::try_from(LAYOUT_BYTES_MAX)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    std::fs::File::open(path)
        .and_then(|f| f.take(limit).read_to_end(&mut bytes))
        .map_err(|e| {
            io_err(format!(
                "cannot read layout: {e} (expected a readable YAML file)"
            ))
        })?;
    if bytes.len() > LAYOUT_BYTES_MAX {
        return Err(io_err(format!(
            "layout is larger than {LAYOUT_BYTES_MAX} bytes (expected a YAML layout file)"
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = e
            .as_bytes()
            .get(..e.utf8_error().valid_up_to())
            .unwrap_or_default();
        let before = String::from_utf8_lossy(valid);
        let line = before.matches('\n').count().saturating_add(1);
        let column = before
            .rsplit('\n')
            .next()
            .map_or(0, |l| l.chars().count())
            .saturating_add(1);
        LayoutError::new(
            ErrorKind::Io,
            Location {
                file: file.clone(),
                line,
                column,
                field: "(syntax)".to_owned(),
            },
            "invalid UTF-8 (expected a UTF-8 text file)",
        )
    })?;
    Ok((file, text))
}

/// Validates layout `text` whose locations will name `source_name`.
///
/// A relative backend path is resolved against the directory part of `source_name` (none: the
/// current directory). File and block backends are checked to exist.
///
/// # Errors
/// The first problem found, with its file, line, column and field.
pub fn parse_str(source_name: &str, text: &str) -> Result<Layout, LayoutError> {
    let base_dir = Path::new(source_name).parent().unwrap_or(Path::new(""));
    build::build(source_name, text, base_dir)
}

/// The embedded default layout: a listener on 127.0.0.1:4420 and subsystem
/// `nqn.2026-11.dev.tessera:default` open to any host, with one 1 GiB sparse RAM namespace
/// (NSID 1, 512-byte blocks). Validated by the same code as any file.
#[must_use]
pub fn default_layout() -> Layout {
    // Only RAM backends, so nothing outside the string can make it fail.
    #[allow(clippy::expect_used)]
    parse_str(DEFAULT_SOURCE, DEFAULT_YAML)
        .expect("the embedded default layout is valid (tests/default.rs checks it)")
}
