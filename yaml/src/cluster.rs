//! Cluster layout declarations: the storage servers, subsystems and volumes from which
//! `tessera-manager` builds generation 1 of the cluster map, and which `POST /v1/reload`
//! re-reads. Parsed with the same spanned-tree walker and messages as target layouts.
//!
//! ```yaml
//! servers:                          # required, 1 to 64
//!   - id: s1                        # required, unique: 1-64 of A-Z a-z 0-9 . _ -
//!     portal: 127.0.0.1:4420        # required: host-facing NVMe/TCP portal (IP:port)
//!     internal: 127.0.0.1:4430      # required: portal for peers (stamped internal I/O)
//!     pool: 2GiB                    # required: pool size, a multiple of 512
//!     state: up                     # optional: up (default), down or draining
//!     rack: r1                      # optional failure domain (same characters as ids)
//!     credential: keys/s1.key       # the server's token file (with credentials.operator)
//! credentials:                      # optional: authenticate the control API
//!   operator: keys/operator.key     # the operator's token file; then every server needs one
//! subsystems:                       # required (may be [])
//!   - nqn: nqn.2026-11.dev.tessera:vol1
//!     allow_any_host: true          # or hosts: [host NQNs]
//! volumes:                          # optional, up to 4096
//!   - name: vol1                    # required, unique, same characters as server ids
//!     size: 1GiB                    # required, a multiple of block_size
//!     subsystem: nqn.2026-11.dev.tessera:vol1   # required, declared above
//!     nsid: 1                       # required, unique within the subsystem
//!     block_size: 512               # optional: 512 (default) or 4096
//!     extent_size: 64MiB            # optional, default 64 MiB, a multiple of block_size
//!     replicas: 1                   # optional, 1 (default) to 3
//!     uuid: 123e4567-e89b-12d3-a456-426614174000   # optional; derived from the name
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::build::{check_count, host_policy, load_docs, single_root};
use crate::error::{ErrorKind, LayoutError, Location};
use crate::ids::{derived_volume_uuid, parse_uuid, uuid_string};
use crate::model::HostPolicy;
use crate::namespace::{BLOCK_SIZES, DEFAULT_BLOCK_SIZE, check_blocks, declared_size};
use crate::nqn::{DISCOVERY_NQN, NQN_EXPECTED, check_nqn};
use crate::tree::{At, Map};

/// Servers per cluster: the map gives server *k* CNTLIDs `k*1000+1..=k*1000+999`, and CNTLIDs
/// stop at FFEFh (NVMe Base 2.0 section 5.27.1).
pub const CLUSTER_SERVERS_MAX: usize = 64;
/// Volumes per cluster: bounds the map every server and client holds.
pub const CLUSTER_VOLUMES_MAX: usize = 4096;
/// Default extent size: 64 MiB moves in well under a second on a 10 GbE link, and a 1 TiB
/// volume has 16384 extents.
pub const DEFAULT_EXTENT_SIZE: u64 = 64 << 20;
/// Replicas per extent.
pub const REPLICAS_MAX: u32 = 3;
/// Server ids and volume names: they appear in URLs and in internal NQNs
/// (`nqn.2026-11.dev.tessera:internal:<id>`), so they are short and plain.
pub const NAME_CHARS_MAX: usize = 64;
/// Pool sizes are whole blocks of a server's internal namespace.
const POOL_BLOCK_BYTES: u64 = 512;

const ROOT_KEYS: &[&str] = &["servers", "subsystems", "volumes", "credentials"];
const SERVER_KEYS: &[&str] = &[
    "id",
    "portal",
    "internal",
    "pool",
    "state",
    "rack",
    "credential",
];
const CREDENTIALS_KEYS: &[&str] = &["operator"];
const PATH_EXPECTED: &str = "the path of a token file (relative to this file's directory)";
const SUBSYSTEM_KEYS: &[&str] = &["nqn", "allow_any_host", "hosts"];
const VOLUME_KEYS: &[&str] = &[
    "name",
    "size",
    "subsystem",
    "nsid",
    "block_size",
    "extent_size",
    "replicas",
    "uuid",
];
const NAME_EXPECTED: &str = "1 to 64 characters among A-Z a-z 0-9 . _ -";
const RACK_EXPECTED: &str =
    "a rack name: 1 to 64 characters among A-Z a-z 0-9 . _ - (quote a number: rack: \"12\")";
const ADDR_EXPECTED: &str = "an IP address and port such as 127.0.0.1:4420 or \"[::1]:4420\"";

/// A validated cluster declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Storage servers, in declaration order (which fixes their CNTLID ranges).
    pub servers: Vec<ClusterServer>,
    /// Subsystems; NQNs are unique.
    pub subsystems: Vec<ClusterSubsystem>,
    /// Volumes; names and UUIDs are unique, NSIDs unique per subsystem.
    pub volumes: Vec<ClusterVolume>,
    /// `credentials.operator`: the operator's token file, as written (relative paths are
    /// relative to the cluster file's directory). When present, every server has a
    /// [`ClusterServer::credential`] too, and the control API authenticates every call.
    pub operator_credential: Option<PathBuf>,
    /// The source name the cluster was read from.
    pub source: String,
}

/// A server's declared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeclaredState {
    /// Serving; new extents may go there.
    Up,
    /// Failed: no new extents, not waited for.
    Down,
    /// Serving, no new extents.
    Draining,
}

/// One storage server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterServer {
    /// Unique id.
    pub id: String,
    /// Host-facing portal.
    pub portal: SocketAddr,
    /// Internal portal.
    pub internal: SocketAddr,
    /// Pool size in bytes, a non-zero multiple of 512.
    pub pool_bytes: u64,
    /// Declared state.
    pub state: DeclaredState,
    /// `credential`: the server's token file, as written (see [`Cluster::operator_credential`]).
    pub credential: Option<PathBuf>,
    /// `rack`: the server's failure domain. The copies of an extent go to distinct racks when
    /// the `up` servers span enough of them; a server without one is a domain of its own.
    pub rack: Option<String>,
    /// The server entry (`servers[0]`).
    pub loc: Location,
}

/// One subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSubsystem {
    /// NQN.
    pub nqn: String,
    /// Allowed hosts.
    pub hosts: HostPolicy,
    /// The subsystem entry (`subsystems[0]`).
    pub loc: Location,
}

/// One volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterVolume {
    /// Unique name.
    pub name: String,
    /// UUID and NGUID: declared, or [`crate::derived_volume_uuid`] of the name.
    pub uuid: [u8; 16],
    /// Size in bytes, a non-zero multiple of `block_size`.
    pub size_bytes: u64,
    /// 512 or 4096.
    pub block_size: u32,
    /// Extent size, a non-zero multiple of `block_size`.
    pub extent_size: u64,
    /// Replicas per extent, 1..=[`REPLICAS_MAX`].
    pub replicas: u32,
    /// NQN of a declared subsystem.
    pub subsystem: String,
    /// NSID within that subsystem.
    pub nsid: u32,
    /// The volume entry (`volumes[0]`).
    pub loc: Location,
}

/// Reads and validates the cluster file at `path`.
///
/// # Errors
/// The first problem found, with its file, line, column and field.
pub fn load_cluster(path: &Path) -> Result<Cluster, LayoutError> {
    let (file, text) = crate::read_source(path)?;
    parse_cluster_str(&file, &text)
}

/// Reads and validates the cluster file at `path`; returns its text too (the manager records the
/// file it applied).
///
/// # Errors
/// The first problem found, with its file, line, column and field.
pub fn load_cluster_text(path: &Path) -> Result<(Cluster, String), LayoutError> {
    let (file, text) = crate::read_source(path)?;
    let c = parse_cluster_str(&file, &text)?;
    Ok((c, text))
}

/// Validates cluster `text` whose locations will name `source_name`.
///
/// # Errors
/// The first problem found, with its file, line, column and field.
pub fn parse_cluster_str(source_name: &str, text: &str) -> Result<Cluster, LayoutError> {
    let docs = load_docs(source_name, text)?;
    let root = single_root(
        source_name,
        &docs,
        "empty cluster file (expected a mapping with servers, subsystems and volumes)",
    )?;
    let root = At::root(source_name, text, root);
    let map = root.map(ROOT_KEYS, "a mapping with servers, subsystems and volumes")?;
    let servers = servers(&map)?;
    let subsystems = subsystems(&map)?;
    let volumes = volumes(&map, &subsystems)?;
    let operator_credential = credentials(&map, &servers)?;
    Ok(Cluster {
        servers,
        subsystems,
        volumes,
        operator_credential,
        source: source_name.to_owned(),
    })
}

/// Whether `text` is a valid server id, volume name or rack: 1 to [`NAME_CHARS_MAX`] of
/// `A-Z a-z 0-9 . _ -` (the manager checks API input with the same rule).
#[must_use]
pub fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.chars().count() <= NAME_CHARS_MAX
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A server id or volume name.
fn name(node: &At<'_, '_>, what: &str) -> Result<String, LayoutError> {
    let text = node.str(NAME_EXPECTED)?;
    if !is_name(text) {
        return Err(node.err(
            ErrorKind::BadName,
            format!("invalid {what} {text:?} (expected {NAME_EXPECTED})"),
        ));
    }
    Ok(text.to_owned())
}

/// A credential file path: a non-empty string.
fn path(node: &At<'_, '_>) -> Result<PathBuf, LayoutError> {
    let text = node.str(PATH_EXPECTED)?;
    if text.trim().is_empty() {
        return Err(node.err(
            ErrorKind::BadString,
            format!("empty path (expected {PATH_EXPECTED})"),
        ));
    }
    Ok(PathBuf::from(text))
}

/// `credentials:`: all or nothing. With an operator credential every server names its own
/// file, and no two entries name the same file (one token per identity).
fn credentials(
    root: &Map<'_, '_>,
    servers: &[ClusterServer],
) -> Result<Option<PathBuf>, LayoutError> {
    let expected = "a mapping {operator: FILE}";
    let Some(node) = root.get("credentials") else {
        if let Some(s) = servers.iter().find(|s| s.credential.is_some()) {
            return Err(LayoutError::new(
                ErrorKind::MissingField,
                s.loc.clone(),
                format!(
                    "server {} names a credential but there is no credentials.operator (expected \
                     credentials: {{operator: FILE}} with a credential for every server, or no \
                     credentials at all)",
                    s.id
                ),
            ));
        }
        return Ok(None);
    };
    let map = node.map(CREDENTIALS_KEYS, expected)?;
    let op_node = map.require("operator", PATH_EXPECTED)?;
    let operator = path(&op_node)?;
    let mut seen: Vec<(&Path, String)> = vec![(operator.as_path(), "credentials.operator".into())];
    for s in servers {
        let Some(c) = &s.credential else {
            return Err(LayoutError::new(
                ErrorKind::MissingField,
                s.loc.clone(),
                format!(
                    "server {} has no credential (expected credential: FILE on every server when \
                     credentials.operator is set)",
                    s.id
                ),
            ));
        };
        if let Some((_, first)) = seen.iter().find(|(p, _)| *p == c.as_path()) {
            return Err(LayoutError::new(
                ErrorKind::DuplicateName,
                s.loc.clone(),
                format!(
                    "server {} names credential file {} already named by {first} (expected one \
                     file per server: a token identifies its holder)",
                    s.id,
                    c.display()
                ),
            ));
        }
        seen.push((c.as_path(), format!("server {}", s.id)));
    }
    Ok(Some(operator))
}

fn socket_addr(node: &At<'_, '_>) -> Result<SocketAddr, LayoutError> {
    let text = node.str(ADDR_EXPECTED)?;
    let addr: SocketAddr = text.parse().map_err(|_| {
        node.err(
            ErrorKind::BadAddress,
            format!("not an address and port: {text:?} (expected {ADDR_EXPECTED}; host names are not resolved)"),
        )
    })?;
    if addr.port() == 0 || addr.ip().is_unspecified() {
        return Err(node.err(
            ErrorKind::BadAddress,
            format!(
                "{addr} cannot be dialed (expected {ADDR_EXPECTED}, with a port from 1 to 65535 \
                 and a specific address: peers and hosts connect to it)"
            ),
        ));
    }
    Ok(addr)
}

fn servers(root: &Map<'_, '_>) -> Result<Vec<ClusterServer>, LayoutError> {
    let expected = "a list of servers {id, portal, internal, pool}";
    let node = root.require("servers", expected)?;
    let items = node.seq(expected)?;
    if items.is_empty() {
        return Err(node.err(
            ErrorKind::MissingField,
            "no servers (expected at least one {id, portal, internal, pool})",
        ));
    }
    check_count(&items, CLUSTER_SERVERS_MAX, "servers")?;
    let mut out: Vec<ClusterServer> = Vec::with_capacity(items.len());
    // Every address declared so far, with the line of its declaration.
    let mut addrs: Vec<(SocketAddr, usize)> = Vec::new();
    for item in &items {
        let map = item.map(SERVER_KEYS, "a mapping {id, portal, internal, pool, state}")?;
        let id_node = map.require("id", NAME_EXPECTED)?;
        let id = name(&id_node, "server id")?;
        if let Some(first) = out.iter().find(|s| s.id == id) {
            return Err(id_node.err(
                ErrorKind::DuplicateName,
                format!(
                    "duplicate server id {id:?} (first declared at line {})",
                    first.loc.line
                ),
            ));
        }
        let mut addr = |key: &str| -> Result<SocketAddr, LayoutError> {
            let n = map.require(key, ADDR_EXPECTED)?;
            let a = socket_addr(&n)?;
            if let Some((_, line)) = addrs.iter().find(|(seen, _)| *seen == a) {
                return Err(n.err(
                    ErrorKind::DuplicateListener,
                    format!(
                        "address {a} is already declared at line {line} (expected every portal \
                         and internal address once)"
                    ),
                ));
            }
            addrs.push((a, n.line()));
            Ok(a)
        };
        let portal = addr("portal")?;
        let internal = addr("internal")?;
        let pool_node = map.require("pool", "the pool size, such as 2GiB")?;
        let pool_bytes = declared_size(&pool_node, POOL_BLOCK_BYTES)?;
        let state = match map.get("state") {
            None => DeclaredState::Up,
            Some(n) => match n.str("up, down or draining")? {
                "up" => DeclaredState::Up,
                "down" => DeclaredState::Down,
                "draining" => DeclaredState::Draining,
                other => {
                    return Err(n.err(
                        ErrorKind::WrongType,
                        format!("unknown server state {other:?} (expected up, down or draining)"),
                    ));
                }
            },
        };
        let credential = map.get("credential").map(|n| path(&n)).transpose()?;
        let rack = map.get("rack").map(|n| rack(&n)).transpose()?;
        out.push(ClusterServer {
            id,
            portal,
            internal,
            pool_bytes,
            state,
            credential,
            rack,
            loc: item.loc(),
        });
    }
    Ok(out)
}

/// `rack:` a failure domain name. A number or `true` is refused rather than turned into a
/// string, so `rack: 010` and `rack: 10` cannot silently name the same rack.
fn rack(node: &At<'_, '_>) -> Result<String, LayoutError> {
    let text = node.str(RACK_EXPECTED)?;
    if !is_name(text) {
        return Err(node.err(
            ErrorKind::BadName,
            format!("invalid rack {text:?} (expected {RACK_EXPECTED})"),
        ));
    }
    Ok(text.to_owned())
}

fn subsystems(root: &Map<'_, '_>) -> Result<Vec<ClusterSubsystem>, LayoutError> {
    let expected = "a list of subsystems {nqn, hosts or allow_any_host}";
    let node = root.require("subsystems", expected)?;
    let items = node.seq(expected)?;
    check_count(&items, CLUSTER_VOLUMES_MAX, "subsystems")?;
    let mut out: Vec<ClusterSubsystem> = Vec::with_capacity(items.len());
    for item in &items {
        let map = item.map(SUBSYSTEM_KEYS, "a mapping {nqn, hosts or allow_any_host}")?;
        let nqn_node = map.require("nqn", NQN_EXPECTED)?;
        let nqn = nqn_node.str(NQN_EXPECTED)?;
        check_nqn(nqn).map_err(|m| nqn_node.err(ErrorKind::BadNqn, m))?;
        if nqn == DISCOVERY_NQN || nqn.contains(":internal:") {
            return Err(nqn_node.err(
                ErrorKind::BadNqn,
                format!(
                    "{nqn} is reserved: the discovery NQN and NQNs containing \":internal:\" \
                     are served by every server itself (expected the NQN of an NVM subsystem)"
                ),
            ));
        }
        if let Some(first) = out.iter().find(|s| s.nqn == nqn) {
            return Err(nqn_node.err(
                ErrorKind::DuplicateNqn,
                format!(
                    "duplicate subsystem NQN {nqn} (first declared at line {})",
                    first.loc.line
                ),
            ));
        }
        let hosts = host_policy(item, &map)?;
        out.push(ClusterSubsystem {
            nqn: nqn.to_owned(),
            hosts,
            loc: item.loc(),
        });
    }
    Ok(out)
}

fn volumes(
    root: &Map<'_, '_>,
    subsystems: &[ClusterSubsystem],
) -> Result<Vec<ClusterVolume>, LayoutError> {
    let expected = "a list of volumes {name, size, subsystem, nsid}";
    let Some(node) = root.get("volumes") else {
        return Ok(Vec::new());
    };
    let items = node.seq(expected)?;
    check_count(&items, CLUSTER_VOLUMES_MAX, "volumes")?;
    let mut out: Vec<ClusterVolume> = Vec::with_capacity(items.len());
    for item in &items {
        let map = item.map(VOLUME_KEYS, "a mapping {name, size, subsystem, nsid, ...}")?;
        let v = volume(item, &map, subsystems, &out)?;
        out.push(v);
    }
    Ok(out)
}

fn volume(
    item: &At<'_, '_>,
    map: &Map<'_, '_>,
    subsystems: &[ClusterSubsystem],
    earlier: &[ClusterVolume],
) -> Result<ClusterVolume, LayoutError> {
    let name_node = map.require("name", NAME_EXPECTED)?;
    let name = name(&name_node, "volume name")?;
    if let Some(first) = earlier.iter().find(|v| v.name == name) {
        return Err(name_node.err(
            ErrorKind::DuplicateName,
            format!(
                "duplicate volume name {name:?} (first declared at line {})",
                first.loc.line
            ),
        ));
    }

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
    let block = u64::from(block_size);
    let size_node = map.require("size", "the volume size, such as 1GiB")?;
    let size_bytes = declared_size(&size_node, block)?;
    let extent_size = match map.get("extent_size") {
        None => {
            // The default is a multiple of both block sizes.
            DEFAULT_EXTENT_SIZE
        }
        Some(n) => {
            let s = declared_size(&n, 1)?;
            check_blocks(&n, s, block, "extent_size")?;
            s
        }
    };
    let replicas = match map.get("replicas") {
        None => 1,
        Some(n) => {
            let expected = format!("an integer from 1 to {REPLICAS_MAX}");
            let r = n.int(&expected)?;
            match u32::try_from(r) {
                Ok(v) if (1..=REPLICAS_MAX).contains(&v) => v,
                _ => {
                    return Err(n.err(
                        ErrorKind::BadReplicas,
                        format!("invalid replica count {r} (expected {expected})"),
                    ));
                }
            }
        }
    };

    let sub_node = map.require(
        "subsystem",
        "the NQN of a subsystem declared under subsystems",
    )?;
    let subsystem = sub_node.str(NQN_EXPECTED)?;
    if !subsystems.iter().any(|s| s.nqn == subsystem) {
        return Err(sub_node.err(
            ErrorKind::UnknownReference,
            format!(
                "unknown subsystem {subsystem} (expected the NQN of a subsystem declared under \
                 subsystems)"
            ),
        ));
    }

    let nsid_expected = "an integer from 1 to 4294967294";
    let nsid_node = map.require("nsid", nsid_expected)?;
    let n = nsid_node.int(nsid_expected)?;
    let nsid = match u32::try_from(n) {
        Ok(v) if v != 0 && v != u32::MAX => v,
        _ => {
            return Err(nsid_node.err(
                ErrorKind::BadNsid,
                format!(
                    "invalid NSID {n} (expected {nsid_expected}: 0 is invalid and 0xFFFFFFFF is \
                     the broadcast NSID)"
                ),
            ));
        }
    };
    if let Some(first) = earlier
        .iter()
        .find(|v| v.subsystem == subsystem && v.nsid == nsid)
    {
        return Err(nsid_node.err(
            ErrorKind::DuplicateNsid,
            format!(
                "duplicate NSID {nsid} in subsystem {subsystem} (first used by volume {} at line \
                 {})",
                first.name, first.loc.line
            ),
        ));
    }

    let uuid = match map.get("uuid") {
        None => derived_volume_uuid(&name),
        Some(u) => {
            let text = u.str("a UUID such as 123e4567-e89b-12d3-a456-426614174000")?;
            parse_uuid(text).map_err(|m| u.err(ErrorKind::BadId, m))?
        }
    };
    if let Some(first) = earlier.iter().find(|v| v.uuid == uuid) {
        return Err(item.err(
            ErrorKind::DuplicateId,
            format!(
                "duplicate volume UUID {} (first used by volume {} at line {}; expected \
                 identifiers unique across the cluster)",
                uuid_string(&uuid),
                first.name,
                first.loc.line
            ),
        ));
    }

    Ok(ClusterVolume {
        name,
        uuid,
        size_bytes,
        block_size,
        extent_size,
        replicas,
        subsystem: subsystem.to_owned(),
        nsid,
        loc: item.loc(),
    })
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
