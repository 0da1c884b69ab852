//! Namespaces and their backends.

use std::fs::File;
use std::io::{ErrorKind as IoKind, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::build::check_count;
use crate::error::{ErrorKind, LayoutError, Location};
use crate::ids::{derived_namespace_id, hex16, parse_nguid, parse_uuid, uuid_string};
use crate::model::{BackendDecl, Namespace};
use crate::size::{SIZE_EXPECTED, parse_size};
use crate::tree::{At, IntOrStr, Map};

/// Namespaces per subsystem: one Identify Active Namespace ID list page (CNS 02h) holds 1024
/// NSIDs (NVMe Base 2.0 section 5.17.2.2), so a host sees them all in one command.
pub const NAMESPACES_MAX: usize = 1024;
/// Default logical block size.
pub const DEFAULT_BLOCK_SIZE: u32 = 512;
/// Logical block sizes a namespace may have.
pub const BLOCK_SIZES: [u32; 2] = [512, 4096];
/// NSID FFFFFFFFh is the broadcast value (NVMe Base 2.0 section 3.2.1.2); 0 is invalid.
const NSID_BROADCAST: u32 = 0xFFFF_FFFF;

const NAMESPACE_KEYS: &[&str] = &["nsid", "block_size", "backend", "nguid", "uuid"];
const BACKEND_KINDS: &str = "null, ram, file, block";
const NULL_KEYS: &[&str] = &["kind", "size"];
const RAM_KEYS: &[&str] = &["kind", "size", "preallocate"];
const FILE_KEYS: &[&str] = &["kind", "path", "size", "create"];
const BLOCK_KEYS: &[&str] = &["kind", "path"];
const BACKEND_EXPECTED: &str =
    "a backend mapping such as { kind: ram, size: 1GiB } (kinds: null, ram, file, block)";

/// NGUIDs and UUIDs seen so far in the layout: they identify namespaces globally, so they are
/// unique across subsystems, not only within one.
#[derive(Default)]
pub(crate) struct IdRegistry {
    nguids: Vec<([u8; 16], Location)>,
    uuids: Vec<([u8; 16], Location)>,
}

impl IdRegistry {
    fn claim(
        list: &mut Vec<([u8; 16], Location)>,
        what: &str,
        shown: String,
        id: [u8; 16],
        loc: Location,
    ) -> Result<(), LayoutError> {
        if let Some((_, first)) = list.iter().find(|(seen, _)| *seen == id) {
            return Err(LayoutError::new(
                ErrorKind::DuplicateId,
                loc,
                format!(
                    "duplicate {what} {shown} (first used by {} at line {}; expected \
                     identifiers unique across the layout)",
                    first.field, first.line
                ),
            ));
        }
        list.push((id, loc));
        Ok(())
    }
}

pub(crate) fn build_namespaces(
    subsystem: &Map<'_, '_>,
    nqn: &str,
    base_dir: &Path,
    ids: &mut IdRegistry,
) -> Result<Vec<Namespace>, LayoutError> {
    let expected = "a list of namespaces {nsid, backend}";
    let node = subsystem.require("namespaces", expected)?;
    let items = node.seq(expected)?;
    check_count(&items, NAMESPACES_MAX, "namespaces")?;
    let mut out: Vec<Namespace> = Vec::with_capacity(items.len());
    let mut nsid_lines: Vec<(u32, usize)> = Vec::with_capacity(items.len());
    for item in &items {
        let map = item.map(NAMESPACE_KEYS, "a mapping {nsid, backend, block_size}")?;

        let nsid_expected = "an integer from 1 to 4294967294";
        let nsid_node = map.require("nsid", nsid_expected)?;
        let n = nsid_node.int(nsid_expected)?;
        let nsid = match u32::try_from(n) {
            Ok(v) if v != 0 && v != NSID_BROADCAST => v,
            _ => {
                return Err(nsid_node.err(
                    ErrorKind::BadNsid,
                    format!(
                        "invalid NSID {n} (expected {nsid_expected}: 0 is invalid and \
                         0xFFFFFFFF is the broadcast NSID)"
                    ),
                ));
            }
        };
        if let Some((_, line)) = nsid_lines.iter().find(|(id, _)| *id == nsid) {
            return Err(nsid_node.err(
                ErrorKind::DuplicateNsid,
                format!("duplicate NSID {nsid} (first declared at line {line})"),
            ));
        }
        nsid_lines.push((nsid, nsid_node.line()));

        let block_size = match map.get("block_size") {
            None => DEFAULT_BLOCK_SIZE,
            Some(b) => {
                let n = b.int("512 or 4096")?;
                match u32::try_from(n) {
                    Ok(v) if BLOCK_SIZES.contains(&v) => v,
                    _ => {
                        return Err(b.err(
                            ErrorKind::BadBlockSize,
                            format!("unsupported block size {n} (expected 512 or 4096)"),
                        ));
                    }
                }
            }
        };

        let backend_node = map.require("backend", BACKEND_EXPECTED)?;
        let (backend, size_bytes, backend_loc) = backend(&backend_node, block_size, base_dir)?;

        let nguid_decl = match map.get("nguid") {
            Some(n) => {
                let text = n.str("32 hex digits")?;
                Some((
                    parse_nguid(text).map_err(|m| n.err(ErrorKind::BadId, m))?,
                    n.loc(),
                ))
            }
            None => None,
        };
        let uuid_decl = match map.get("uuid") {
            Some(u) => {
                let text = u.str("a UUID such as 123e4567-e89b-12d3-a456-426614174000")?;
                Some((
                    parse_uuid(text).map_err(|m| u.err(ErrorKind::BadId, m))?,
                    u.loc(),
                ))
            }
            None => None,
        };
        let nguid_decl_given = nguid_decl.as_ref().map(|(id, _)| *id);
        let uuid_given = uuid_decl.is_some();
        // One declared identifier serves as both, as a cluster volume's UUID does; with none,
        // both are derived from the subsystem NQN and NSID.
        let derived = || {
            let mut loc = item.loc();
            loc.field.push_str(".nguid");
            (derived_namespace_id(nqn, nsid), loc)
        };
        let (nguid, nguid_loc) = nguid_decl
            .clone()
            .or_else(|| uuid_decl.clone())
            .unwrap_or_else(derived);
        let (uuid, uuid_loc) = uuid_decl.or(nguid_decl).unwrap_or_else(|| {
            let (id, mut loc) = derived();
            loc.field = item.loc().field + ".uuid";
            (id, loc)
        });
        // Report a clash under the name the layout used: a declared uuid is checked first.
        let uuid_first = nguid_decl_given.is_none() && uuid_given;
        if uuid_first {
            IdRegistry::claim(
                &mut ids.uuids,
                "UUID",
                uuid_string(&uuid),
                uuid,
                uuid_loc.clone(),
            )?;
        }
        IdRegistry::claim(&mut ids.nguids, "NGUID", hex16(&nguid), nguid, nguid_loc)?;
        if !uuid_first {
            IdRegistry::claim(&mut ids.uuids, "UUID", uuid_string(&uuid), uuid, uuid_loc)?;
        }

        out.push(Namespace {
            nsid,
            block_size,
            size_bytes,
            backend,
            nguid,
            uuid,
            loc: item.loc(),
            backend_loc,
        });
    }
    Ok(out)
}

/// Parses a backend declaration; returns it with the namespace size and the location the target
/// should name if opening it fails.
fn backend(
    node: &At<'_, '_>,
    block_size: u32,
    base_dir: &Path,
) -> Result<(BackendDecl, u64, Location), LayoutError> {
    // The kind decides which keys are allowed, so read it before checking keys.
    let Some(kind_node) = kind_of(node) else {
        // Not a mapping, or no kind: the generic checks say which.
        let all_keys = ["kind", "size", "preallocate", "path", "create"];
        return Err(node
            .map(&all_keys, BACKEND_EXPECTED)?
            .missing("kind", BACKEND_KINDS));
    };
    // A plain `null` is YAML's null value, but here it names the null backend. Only the spelled
    // word counts: an empty `kind:` or `~` stays an error rather than a disk that drops writes.
    let kind = match &kind_node.node.data {
        saphyr::YamlData::Value(saphyr::Scalar::Null)
            if matches!(kind_node.raw(), Some("null" | "Null" | "NULL")) =>
        {
            "null"
        }
        _ => kind_node.str(BACKEND_KINDS)?,
    };
    let keys = match kind {
        "null" => NULL_KEYS,
        "ram" => RAM_KEYS,
        "file" => FILE_KEYS,
        "block" => BLOCK_KEYS,
        other => {
            return Err(kind_node.err(
                ErrorKind::BadBackend,
                format!("unknown backend kind {other:?} (expected one of: {BACKEND_KINDS})"),
            ));
        }
    };
    let map = node.map(keys, BACKEND_EXPECTED)?;
    let block = u64::from(block_size);
    match kind {
        "null" => {
            let size = declared_size(&map.require("size", SIZE_EXPECTED)?, block)?;
            Ok((BackendDecl::Null { size }, size, node.loc()))
        }
        "ram" => {
            let size = declared_size(&map.require("size", SIZE_EXPECTED)?, block)?;
            let preallocate = match map.get("preallocate") {
                Some(p) => p.bool()?,
                None => false,
            };
            Ok((BackendDecl::Ram { size, preallocate }, size, node.loc()))
        }
        "file" => file_backend(&map, block, base_dir),
        _ => block_backend(&map, block, base_dir),
    }
}

/// The `kind` value of a backend mapping with an unknown key, if it has a readable one.
fn kind_of<'a, 'y>(node: &At<'a, 'y>) -> Option<At<'a, 'y>> {
    let saphyr::YamlData::Mapping(m) = &node.node.data else {
        return None;
    };
    m.iter().find_map(|(k, v)| {
        (k.data.as_str() == Some("kind")).then(|| At {
            node: v,
            path: format!("{}.kind", node.path),
            file: node.file,
            src: node.src,
        })
    })
}

/// A `size` value: an integer byte count or a string with a unit; non-zero, whole blocks.
pub(crate) fn declared_size(node: &At<'_, '_>, block: u64) -> Result<u64, LayoutError> {
    let size = match node.int_or_str(SIZE_EXPECTED)? {
        IntOrStr::Int(i) => u64::try_from(i).map_err(|_| {
            node.err(
                ErrorKind::BadSize,
                format!("negative size {i} (expected {SIZE_EXPECTED})"),
            )
        })?,
        IntOrStr::Str(s) => parse_size(s).map_err(|m| node.err(ErrorKind::BadSize, m))?,
    };
    check_blocks(node, size, block, "size")?;
    Ok(size)
}

/// Refuses a zero size or one that is not a whole number of blocks.
pub(crate) fn check_blocks(
    node: &At<'_, '_>,
    size: u64,
    block: u64,
    what: &str,
) -> Result<(), LayoutError> {
    if size == 0 {
        return Err(node.err(
            ErrorKind::ZeroSize,
            format!("{what} is 0 bytes (expected at least one {block}-byte block)"),
        ));
    }
    // `u64::is_multiple_of` is newer (1.87) than the workspace's rust-version (1.85).
    #[allow(clippy::manual_is_multiple_of)]
    let partial = size % block != 0;
    if partial {
        return Err(node.err(
            ErrorKind::SizeNotMultiple,
            format!(
                "{what} {size} bytes is not a multiple of the block size {block} (expected a \
                 multiple of {block}, e.g. {})",
                size.div_ceil(block).saturating_mul(block)
            ),
        ));
    }
    Ok(())
}

/// A backend path: non-empty; relative paths are relative to the layout file's directory.
fn backend_path(node: &At<'_, '_>, base_dir: &Path) -> Result<PathBuf, LayoutError> {
    let text = node.str("a path")?;
    if text.is_empty() {
        return Err(node.err(ErrorKind::BadBackend, "empty path (expected a path)"));
    }
    let p = Path::new(text);
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    })
}

fn file_backend(
    map: &Map<'_, '_>,
    block: u64,
    base_dir: &Path,
) -> Result<(BackendDecl, u64, Location), LayoutError> {
    let path_node = map.require("path", "a path to a regular file")?;
    let path = backend_path(&path_node, base_dir)?;
    let size_node = map.get("size");
    let size = match &size_node {
        Some(n) => Some(declared_size(n, block)?),
        None => None,
    };
    let create = match map.get("create") {
        Some(c) => c.bool()?,
        None => false,
    };
    let shown = path.display();
    let size_bytes = match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => {
            return Err(path_node.err(
                ErrorKind::BadBackend,
                format!("{shown} is a directory (expected a regular file)"),
            ));
        }
        Ok(m) if !m.is_file() => {
            return Err(path_node.err(
                ErrorKind::BadBackend,
                format!(
                    "{shown} is not a regular file (expected a regular file; use kind: block \
                     for a block device)"
                ),
            ));
        }
        Ok(m) => match (size, &size_node) {
            (Some(declared), Some(n)) if declared != m.len() => {
                return Err(n.err(
                    ErrorKind::BadBackend,
                    format!(
                        "size {declared} bytes differs from the length of {shown}, {} bytes \
                         (expected the file's length; omit size to use it)",
                        m.len()
                    ),
                ));
            }
            (Some(declared), _) => declared,
            (None, _) => {
                check_blocks(&path_node, m.len(), block, &format!("file {shown}"))?;
                m.len()
            }
        },
        Err(e) if e.kind() == IoKind::NotFound => {
            if !create {
                return Err(path_node.err(
                    ErrorKind::MissingFile,
                    format!(
                        "missing file {shown} (expected an existing file, or create: true with \
                         a size)"
                    ),
                ));
            }
            size.ok_or_else(|| {
                map.missing(
                    "size",
                    &format!("a size: {shown} does not exist and create: true needs one"),
                )
            })?
        }
        Err(e) => {
            return Err(path_node.err(
                ErrorKind::Io,
                format!("cannot examine {shown}: {e} (expected a readable file)"),
            ));
        }
    };
    Ok((
        BackendDecl::File { path, size, create },
        size_bytes,
        path_node.loc(),
    ))
}

fn block_backend(
    map: &Map<'_, '_>,
    block: u64,
    base_dir: &Path,
) -> Result<(BackendDecl, u64, Location), LayoutError> {
    let path_node = map.require("path", "a block device path such as /dev/nvme0n1")?;
    let path = backend_path(&path_node, base_dir)?;
    let shown = path.display();
    match std::fs::metadata(&path) {
        Ok(m) if m.file_type().is_block_device() => {}
        Ok(_) => {
            return Err(path_node.err(
                ErrorKind::BadBackend,
                format!(
                    "{shown} is not a block device (expected a block device such as \
                     /dev/nvme0n1; use kind: file for a regular file)"
                ),
            ));
        }
        Err(e) if e.kind() == IoKind::NotFound => {
            return Err(path_node.err(
                ErrorKind::MissingFile,
                format!("missing block device {shown} (expected an existing block device)"),
            ));
        }
        Err(e) => {
            return Err(path_node.err(
                ErrorKind::Io,
                format!("cannot examine {shown}: {e} (expected a readable block device)"),
            ));
        }
    }
    // A block device's length is where a seek to its end lands; no ioctl (and no unsafe) needed.
    let size_bytes = File::open(&path)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .map_err(|e| {
            path_node.err(
                ErrorKind::Io,
                format!(
                    "cannot open {shown} to read its size: {e} (expected a readable block device)"
                ),
            )
        })?;
    check_blocks(&path_node, size_bytes, block, &format!("device {shown}"))?;
    Ok((BackendDecl::Block { path }, size_bytes, path_node.loc()))
}
