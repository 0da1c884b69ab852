//! The cluster map (docs/cluster-protocol.md, "The map"): its JSON shape, the lookups the target
//! routes with, and the invariants every map the manager publishes satisfies.
//!
//! Pool space: every replica of an extent reserves `extent_size` bytes of its server's pool at
//! `offset`, the last extent of a volume included (even when the volume ends inside it), so a
//! grow extends the last extent in place and a range never has to be re-allocated.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The map generation: strictly increasing, bumped by one on every change.
pub type Generation = u64;

/// Block size of a server's internal namespace (its whole pool); pool sizes and offsets are
/// multiples of it (docs/cluster-protocol.md, "The stamp on the wire").
pub const POOL_BLOCK_BYTES: u64 = 512;
/// Servers per cluster: CNTLID ranges are 1000 wide per server and CNTLIDs stop at FFEFh
/// (NVMe Base 2.0 section 5.27.1), so 65 would fit; 64 leaves the top range unused.
pub const SERVERS_MAX: usize = 64;
/// Width of each server's CNTLID range (docs/cluster-protocol.md, "CNTLID ranges").
pub const CNTLID_STRIDE: u16 = 1000;
/// Replicas per extent (docs/replication.md: each write goes to every copy, ordered by the
/// extent's primary).
pub const REPLICAS_MAX: u32 = 3;
/// Volumes per cluster (bounds map size and every linear scan below).
pub const VOLUMES_MAX: usize = 4096;
/// Extents per volume: 4 TiB in 64 MiB extents; bounds the map's size (a few MiB of JSON) and
/// the work of placing one volume.
pub const EXTENTS_PER_VOLUME_MAX: u64 = 1 << 16;

/// The whole cluster layout at one generation (docs/cluster-protocol.md, "The map").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Strictly increasing; every change bumps it by one. 0 only for [`ClusterMap::empty`].
    pub generation: Generation,
    /// Storage servers in declaration order (server *k* owns CNTLIDs `k*1000+1..=k*1000+999`).
    pub servers: Vec<ServerEntry>,
    /// NVM subsystems; every server exports all of them.
    pub subsystems: Vec<SubsystemEntry>,
    /// Virtual volumes; each is one namespace of its subsystem.
    pub volumes: Vec<VolumeEntry>,
}

/// One storage server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerEntry {
    /// Unique id (`s1`), also in the internal subsystem NQN.
    pub id: String,
    /// Host-facing NVMe/TCP portal.
    pub portal: SocketAddr,
    /// Portal for peers (internal connections, stamped commands).
    pub internal: SocketAddr,
    /// Up, down or draining.
    pub state: ServerState,
    /// Size of the local pool in bytes (a multiple of [`POOL_BLOCK_BYTES`]).
    pub pool_bytes: u64,
    /// First CNTLID this server may assign.
    pub cntlid_min: u16,
    /// Last CNTLID this server may assign.
    pub cntlid_max: u16,
    /// Failure domain (`rack:` in the cluster YAML): placement puts the copies of an extent on
    /// distinct racks when the `up` servers span enough of them; a server without one is a
    /// domain of its own. JSON: absent when `None`, so maps stored before it load unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    /// The identity of the pool this server last joined with (docs/replication.md, "A server
    /// whose data is gone"): a server that comes back with another one has lost its copies.
    /// JSON: absent until the server first connects, so maps stored before it load unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolId>,
}

/// A pool's identity: 128 random bits a storage server draws when it creates a fresh pool (a
/// RAM pool at every start; a file pool that does not exist yet). JSON and query strings: 32
/// lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolId(pub u128);

impl std::fmt::Display for PoolId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for PoolId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "pool id {s:?}: expected 32 hex digits (a 128-bit pool identity)"
            ));
        }
        u128::from_str_radix(s, 16)
            .map(Self)
            .map_err(|e| format!("pool id {s:?}: {e}"))
    }
}

impl Serialize for PoolId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PoolId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A server's state in the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Serving; new extents may be placed on it.
    Up,
    /// Declared failed by the operator: no new extents, and it is not waited for.
    Down,
    /// Serving, but no new extents go there (extents are being moved away).
    Draining,
}

/// One NVM subsystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubsystemEntry {
    /// Subsystem NQN.
    pub nqn: String,
    /// Which hosts may connect.
    pub hosts: HostPolicy,
}

/// Which host NQNs may connect: `"any"` or `{"only": [...]}` (the YAML's type).
pub use yaml::HostPolicy;

/// One virtual volume: a namespace of its subsystem, cut into extents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeEntry {
    /// Unique name.
    pub name: String,
    /// Namespace NGUID and UUID; JSON: 32 hex digits.
    #[serde(with = "hex_uuid")]
    pub uuid: [u8; 16],
    /// Size in bytes, a multiple of `block_size`.
    pub size_bytes: u64,
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
    /// Extent size in bytes, a multiple of `block_size`.
    pub extent_size: u64,
    /// Replicas per extent.
    pub replicas: u32,
    /// NQN of the subsystem this volume is a namespace of.
    pub subsystem: String,
    /// Namespace ID in that subsystem.
    pub nsid: u32,
    /// `ceil(size_bytes / extent_size)` extents, in order.
    pub extents: Vec<ExtentEntry>,
}

/// Where one extent lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentEntry {
    /// Servers holding it; `replicas[0]` is the owner (placement makes it the primary, see
    /// [`ClusterMap::primary`]).
    pub replicas: Vec<Replica>,
    /// A copy in progress (copy-then-switch), or `null`.
    pub moving: Option<Move>,
    /// The extent's data is gone: its only `in_sync` copy was on a server that came back with
    /// another pool identity. Host reads of it fail (Unrecovered Read Error) until an operator
    /// clears the mark (docs/replication.md, "The last copy"). JSON `lost`, absent when false,
    /// so maps stored before it load unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lost: bool,
}

/// One copy of an extent: a server and the byte offset in its pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Replica {
    /// Server id.
    pub server: String,
    /// Byte offset of the extent in the server's pool.
    pub offset: u64,
    /// Whether this copy has every acknowledged write (JSON `state`, absent: `in_sync`, so
    /// maps stored before it load unchanged, and maps of unreplicated volumes look the same).
    #[serde(default, skip_serializing_if = "ReplicaState::is_in_sync")]
    pub state: ReplicaState,
    /// The generation in which this copy last became `rebuilding` (JSON `rebuilding_since`),
    /// kept while it is `rebuilding` only: the manager refuses a rebuild-done report older than
    /// it, which comes from an earlier rebuild (docs/replication.md, "The end of a rebuild").
    /// Absent otherwise, and in maps stored before it (a report is then not checked against it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuilding_since: Option<Generation>,
    /// The copy this one replaces (JSON `replaces`, a server id): set on the copy a move of a
    /// replicated extent adds (docs/replication.md, "Moving a copy"); when the manager accepts
    /// its rebuild-done report it becomes `in_sync` and the copy on that server leaves the
    /// extent in the same generation. An extent has at most one such copy, beyond its
    /// `replicas`. Absent otherwise, and in maps stored before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

impl Replica {
    /// Whether `other` is the same copy (server and offset), whatever the states: what "the
    /// owner changed" means for moves, switches and their cancellation.
    #[must_use]
    pub fn same_place(&self, other: &Replica) -> bool {
        self.server == other.server && self.offset == other.offset
    }
}

/// How far one copy of an extent is trusted (docs/replication.md, "The map").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Has every acknowledged write: takes writes, serves reads, counts for the ack.
    #[default]
    InSync,
    /// Being rebuilt: takes the primary's writes, serves no reads, does not count for the ack.
    Rebuilding,
    /// Missed writes: takes none, serves none.
    Stale,
}

impl ReplicaState {
    /// `in_sync` (serde's skip test).
    #[allow(clippy::trivially_copy_pass_by_ref)]
    pub fn is_in_sync(&self) -> bool {
        *self == Self::InSync
    }

    /// Whether the primary forwards writes to a copy in this state.
    pub fn takes_writes(self) -> bool {
        matches!(self, Self::InSync | Self::Rebuilding)
    }
}

impl Replica {
    /// An `in_sync` copy at `offset` of `server`'s pool.
    pub fn new(server: impl Into<String>, offset: u64) -> Self {
        Self {
            server: server.into(),
            offset,
            state: ReplicaState::InSync,
            rebuilding_since: None,
            replaces: None,
        }
    }
}

/// A move in progress: the owner copies the extent to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The destination (space already allocated there).
    pub to: Replica,
}

/// An extent whose owner changes between two maps (phase 1a of a publication).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LostExtent {
    /// Volume name.
    pub volume: String,
    /// Extent index.
    pub extent: usize,
    /// The owner in the old map, which must fence the extent before anyone else learns the new map.
    pub old_owner: String,
}

impl VolumeEntry {
    /// Number of extents `size_bytes` needs.
    #[must_use]
    pub fn extent_count(&self) -> u64 {
        if self.extent_size == 0 {
            return 0;
        }
        self.size_bytes.div_ceil(self.extent_size)
    }

    /// Bytes `[start, start + len)` of the volume that extent `i` covers, or `None` past the end.
    #[must_use]
    pub fn extent_range(&self, i: usize) -> Option<(u64, u64)> {
        let i = u64::try_from(i).ok()?;
        if i >= self.extent_count() {
            return None;
        }
        let start = i.checked_mul(self.extent_size)?;
        let end = start.checked_add(self.extent_size)?.min(self.size_bytes);
        Some((start, end - start))
    }

    /// The extent holding volume byte `byte`, or `None` past the end.
    #[must_use]
    pub fn extent_of(&self, byte: u64) -> Option<usize> {
        if byte >= self.size_bytes || self.extent_size == 0 {
            return None;
        }
        usize::try_from(byte / self.extent_size).ok()
    }

    /// The owner (`replicas[0]`) of extent `i`.
    #[must_use]
    pub fn owner(&self, i: usize) -> Option<&Replica> {
        self.extents.get(i)?.replicas.first()
    }
}

impl ClusterMap {
    /// The map before anything is declared: generation 0, which [`ClusterMap::validate`] refuses;
    /// only a starting point for building generation 1.
    #[must_use]
    pub fn empty() -> Self {
        Self {
            generation: 0,
            servers: Vec::new(),
            subsystems: Vec::new(),
            volumes: Vec::new(),
        }
    }

    /// The volume named `name`.
    #[must_use]
    pub fn volume(&self, name: &str) -> Option<&VolumeEntry> {
        self.volumes.iter().find(|v| v.name == name)
    }

    /// The server with id `id`.
    #[must_use]
    pub fn server(&self, id: &str) -> Option<&ServerEntry> {
        self.servers.iter().find(|s| s.id == id)
    }

    /// The subsystem with NQN `nqn`.
    #[must_use]
    pub fn subsystem(&self, nqn: &str) -> Option<&SubsystemEntry> {
        self.subsystems.iter().find(|s| s.nqn == nqn)
    }

    /// Volumes that are namespaces of subsystem `nqn`, in map order.
    pub fn namespaces_of<'a>(&'a self, nqn: &'a str) -> impl Iterator<Item = &'a VolumeEntry> {
        self.volumes.iter().filter(move |v| v.subsystem == nqn)
    }

    /// `(start, len)` of extent `i` of volume `vol`.
    #[must_use]
    pub fn extent_range(&self, vol: &str, i: usize) -> Option<(u64, u64)> {
        self.volume(vol)?.extent_range(i)
    }

    /// The extent of volume `vol` holding byte `byte`.
    #[must_use]
    pub fn extent_of(&self, vol: &str, byte: u64) -> Option<usize> {
        self.volume(vol)?.extent_of(byte)
    }

    /// The owner of extent `i` of volume `vol`.
    #[must_use]
    pub fn owner(&self, vol: &str, i: usize) -> Option<&Replica> {
        self.volume(vol)?.owner(i)
    }

    /// The primary of extent `ext` (docs/replication.md): its first `in_sync` replica on a
    /// server that is `up` or `draining`. `None` when there is none (every copy stale, or on a
    /// server marked `down`).
    #[must_use]
    pub fn primary<'e>(&self, ext: &'e ExtentEntry) -> Option<&'e Replica> {
        ext.replicas.iter().find(|r| {
            r.state == ReplicaState::InSync
                && self
                    .server(&r.server)
                    .is_some_and(|s| s.state != ServerState::Down)
        })
    }

    /// Where extent `ext`'s writes are ordered: its [`primary`](Self::primary), or, when it
    /// has none, `replicas[0]` (which then refuses or cannot be reached: the writer gets a
    /// retryable path error, as with one copy on a server marked `down`).
    #[must_use]
    pub fn write_owner<'e>(&self, ext: &'e ExtentEntry) -> Option<&'e Replica> {
        self.primary(ext).or_else(|| ext.replicas.first())
    }

    /// Extents whose owner in `old` is not their owner in `new` (or that `new` no longer has),
    /// with the old owner: the servers of phase 1a, which fence these extents before acking.
    /// Sorted by volume, then extent.
    #[must_use]
    pub fn changed_owners(old: &Self, new: &Self) -> Vec<LostExtent> {
        let mut out = Vec::new();
        for vol in &old.volumes {
            let new_vol = new.volume(&vol.name);
            for (i, ext) in vol.extents.iter().enumerate() {
                let Some(old_owner) = ext.replicas.first() else {
                    continue;
                };
                let new_owner = new_vol.and_then(|v| v.owner(i));
                if new_owner.is_none_or(|r| r.server != old_owner.server) {
                    out.push(LostExtent {
                        volume: vol.name.clone(),
                        extent: i,
                        old_owner: old_owner.server.clone(),
                    });
                }
            }
        }
        out.sort();
        out
    }

    /// Every range reserved in each server's pool: `(offset, len, what)` sorted by offset, where
    /// `what` names the user (`vol1[3]` or `vol1[3] (move target)`). Servers without ranges are
    /// absent.
    #[must_use]
    pub fn pool_ranges(&self) -> BTreeMap<&str, Vec<(u64, u64, String)>> {
        let mut out: BTreeMap<&str, Vec<(u64, u64, String)>> = BTreeMap::new();
        for vol in &self.volumes {
            for (i, ext) in vol.extents.iter().enumerate() {
                for r in &ext.replicas {
                    out.entry(r.server.as_str()).or_default().push((
                        r.offset,
                        vol.extent_size,
                        format!("{}[{i}]", vol.name),
                    ));
                }
                if let Some(m) = &ext.moving {
                    out.entry(m.to.server.as_str()).or_default().push((
                        m.to.offset,
                        vol.extent_size,
                        format!("{}[{i}] (move target)", vol.name),
                    ));
                }
            }
        }
        for ranges in out.values_mut() {
            ranges.sort();
        }
        out
    }

    /// Bytes of `server`'s pool not reserved by any extent.
    #[must_use]
    pub fn free_bytes(&self, server: &str) -> u64 {
        let Some(s) = self.server(server) else {
            return 0;
        };
        let used: u64 = self
            .pool_ranges()
            .get(server)
            .map_or(0, |r| r.iter().map(|(_, len, _)| *len).sum());
        s.pool_bytes.saturating_sub(used)
    }

    /// Checks every invariant of a publishable map.
    ///
    /// # Errors
    /// The first invariant broken.
    pub fn validate(&self) -> Result<(), MapError> {
        if self.generation == 0 {
            return Err(MapError::GenerationZero);
        }
        self.validate_servers()?;
        self.validate_subsystems()?;
        self.validate_volumes()?;
        self.validate_pools()
    }

    fn validate_servers(&self) -> Result<(), MapError> {
        if self.servers.len() > SERVERS_MAX {
            return Err(MapError::TooMany {
                what: "servers",
                max: SERVERS_MAX,
            });
        }
        for (k, s) in self.servers.iter().enumerate() {
            if self.servers.iter().take(k).any(|e| e.id == s.id) {
                return Err(MapError::Duplicate {
                    what: "server id",
                    name: s.id.clone(),
                });
            }
            for e in self.servers.iter().take(k) {
                for a in [s.portal, s.internal] {
                    if a == e.portal || a == e.internal {
                        return Err(MapError::Duplicate {
                            what: "server address",
                            name: a.to_string(),
                        });
                    }
                }
            }
            if s.portal == s.internal {
                return Err(MapError::Duplicate {
                    what: "server address",
                    name: s.portal.to_string(),
                });
            }
            if s.pool_bytes % POOL_BLOCK_BYTES != 0 {
                return Err(MapError::PoolNotAligned {
                    server: s.id.clone(),
                    pool_bytes: s.pool_bytes,
                });
            }
            let (min, max) = cntlid_range(k).ok_or(MapError::TooMany {
                what: "servers",
                max: SERVERS_MAX,
            })?;
            if (s.cntlid_min, s.cntlid_max) != (min, max) {
                return Err(MapError::CntlidRange {
                    server: s.id.clone(),
                    expected_min: min,
                    expected_max: max,
                });
            }
        }
        Ok(())
    }

    fn validate_subsystems(&self) -> Result<(), MapError> {
        for (k, s) in self.subsystems.iter().enumerate() {
            if self.subsystems.iter().take(k).any(|e| e.nqn == s.nqn) {
                return Err(MapError::Duplicate {
                    what: "subsystem NQN",
                    name: s.nqn.clone(),
                });
            }
        }
        Ok(())
    }

    fn validate_volumes(&self) -> Result<(), MapError> {
        if self.volumes.len() > VOLUMES_MAX {
            return Err(MapError::TooMany {
                what: "volumes",
                max: VOLUMES_MAX,
            });
        }
        for (k, v) in self.volumes.iter().enumerate() {
            let earlier = || self.volumes.iter().take(k);
            if earlier().any(|e| e.name == v.name) {
                return Err(MapError::Duplicate {
                    what: "volume name",
                    name: v.name.clone(),
                });
            }
            if v.uuid == [0; 16] || earlier().any(|e| e.uuid == v.uuid) {
                return Err(MapError::Duplicate {
                    what: "volume UUID (or nil UUID)",
                    name: v.name.clone(),
                });
            }
            if self.subsystem(&v.subsystem).is_none() {
                return Err(MapError::UnknownSubsystem {
                    volume: v.name.clone(),
                    nqn: v.subsystem.clone(),
                });
            }
            if v.nsid == 0 || v.nsid == u32::MAX {
                return Err(MapError::BadNsid {
                    volume: v.name.clone(),
                    nsid: v.nsid,
                });
            }
            if let Some(e) = earlier().find(|e| e.subsystem == v.subsystem && e.nsid == v.nsid) {
                return Err(MapError::DuplicateNsid {
                    nqn: v.subsystem.clone(),
                    nsid: v.nsid,
                    first: e.name.clone(),
                    second: v.name.clone(),
                });
            }
            let block = u64::from(v.block_size);
            let geometry_ok = matches!(v.block_size, 512 | 4096)
                && v.size_bytes != 0
                && v.size_bytes % block == 0
                && v.extent_size != 0
                && v.extent_size % block == 0
                && v.extent_count() <= EXTENTS_PER_VOLUME_MAX;
            if !geometry_ok {
                return Err(MapError::Geometry {
                    volume: v.name.clone(),
                });
            }
            if u64::try_from(v.extents.len()).ok() != Some(v.extent_count()) {
                return Err(MapError::ExtentCount {
                    volume: v.name.clone(),
                    expected: v.extent_count(),
                    found: v.extents.len(),
                });
            }
            if v.replicas == 0 || v.replicas > REPLICAS_MAX {
                return Err(MapError::Replicas {
                    volume: v.name.clone(),
                    extent: 0,
                });
            }
            for (i, ext) in v.extents.iter().enumerate() {
                self.validate_extent(v, i, ext)?;
            }
        }
        Ok(())
    }

    fn validate_extent(
        &self,
        v: &VolumeEntry,
        i: usize,
        ext: &ExtentEntry,
    ) -> Result<(), MapError> {
        // A copy being moved (docs/replication.md, "Moving a copy"): at most one copy that
        // replaces another copy of the extent, beyond the volume's count.
        let pending: Vec<&Replica> = ext
            .replicas
            .iter()
            .filter(|r| r.replaces.is_some())
            .collect();
        let pending_ok = pending.len() <= 1
            && pending.iter().all(|p| {
                ext.replicas
                    .iter()
                    .any(|r| r.replaces.is_none() && Some(&r.server) == p.replaces.as_ref())
            });
        let replicas_ok = pending_ok
            && u32::try_from(ext.replicas.len() - pending.len()).ok() == Some(v.replicas)
            && ext
                .replicas
                .iter()
                .enumerate()
                .all(|(k, r)| ext.replicas.iter().take(k).all(|e| e.server != r.server));
        if !replicas_ok {
            return Err(MapError::Replicas {
                volume: v.name.clone(),
                extent: i,
            });
        }
        let moving = ext.moving.iter().map(|m| &m.to);
        for r in ext.replicas.iter().chain(moving) {
            let Some(server) = self.server(&r.server) else {
                return Err(MapError::UnknownServer {
                    volume: v.name.clone(),
                    extent: i,
                    server: r.server.clone(),
                });
            };
            let in_pool = r
                .offset
                .checked_add(v.extent_size)
                .is_some_and(|end| end <= server.pool_bytes);
            if !in_pool || r.offset % POOL_BLOCK_BYTES != 0 {
                return Err(MapError::OutOfPool {
                    volume: v.name.clone(),
                    extent: i,
                    server: r.server.clone(),
                    offset: r.offset,
                });
            }
        }
        if let Some(m) = &ext.moving
            && ext.replicas.iter().any(|r| r.server == m.to.server)
        {
            return Err(MapError::MoveToReplica {
                volume: v.name.clone(),
                extent: i,
                server: m.to.server.clone(),
            });
        }
        Ok(())
    }

    fn validate_pools(&self) -> Result<(), MapError> {
        for (server, ranges) in self.pool_ranges() {
            for pair in ranges.windows(2) {
                let [(a_off, a_len, a), (b_off, _, b)] = pair else {
                    continue;
                };
                if a_off.saturating_add(*a_len) > *b_off {
                    return Err(MapError::Overlap {
                        server: server.to_owned(),
                        first: a.clone(),
                        second: b.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The CNTLID range of the server at 0-based declaration index `k`:
/// `[k*1000+1, k*1000+999]`, or `None` beyond [`SERVERS_MAX`].
#[must_use]
pub fn cntlid_range(k: usize) -> Option<(u16, u16)> {
    if k >= SERVERS_MAX {
        return None;
    }
    let base = u16::try_from(k).ok()?.checked_mul(CNTLID_STRIDE)?;
    Some((base.checked_add(1)?, base.checked_add(CNTLID_STRIDE - 1)?))
}

/// A broken map invariant (a bug in the manager, or a hand-edited map).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// Generation 0 is never published.
    #[error("generation 0 (expected a generation of at least 1)")]
    GenerationZero,
    /// A list is longer than its limit.
    #[error("more than {max} {what}")]
    TooMany {
        /// What.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// Two entries share a name that must be unique.
    #[error("duplicate {what} {name}")]
    Duplicate {
        /// Which kind of name.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A pool size that is not a whole number of pool blocks.
    #[error("server {server}: pool of {pool_bytes} bytes is not a multiple of {POOL_BLOCK_BYTES}")]
    PoolNotAligned {
        /// Server id.
        server: String,
        /// Its pool size.
        pool_bytes: u64,
    },
    /// A server whose CNTLID range is not the one its position gives.
    #[error("server {server}: CNTLID range is not {expected_min}..={expected_max}")]
    CntlidRange {
        /// Server id.
        server: String,
        /// Expected first CNTLID.
        expected_min: u16,
        /// Expected last CNTLID.
        expected_max: u16,
    },
    /// A volume names a subsystem the map does not have.
    #[error("volume {volume}: unknown subsystem {nqn}")]
    UnknownSubsystem {
        /// Volume name.
        volume: String,
        /// The NQN it names.
        nqn: String,
    },
    /// NSID 0 or the broadcast NSID.
    #[error("volume {volume}: invalid NSID {nsid}")]
    BadNsid {
        /// Volume name.
        volume: String,
        /// The NSID.
        nsid: u32,
    },
    /// Two volumes are the same namespace of one subsystem.
    #[error("subsystem {nqn}: NSID {nsid} used by both {first} and {second}")]
    DuplicateNsid {
        /// Subsystem NQN.
        nqn: String,
        /// The NSID.
        nsid: u32,
        /// First volume.
        first: String,
        /// Second volume.
        second: String,
    },
    /// Block size, size or extent size out of rule.
    #[error(
        "volume {volume}: block size must be 512 or 4096 and size and extent size non-zero multiples of it"
    )]
    Geometry {
        /// Volume name.
        volume: String,
    },
    /// The extent list does not cover the volume exactly.
    #[error("volume {volume}: {found} extents, expected {expected}")]
    ExtentCount {
        /// Volume name.
        volume: String,
        /// `ceil(size / extent_size)`.
        expected: u64,
        /// Entries present.
        found: usize,
    },
    /// An extent without exactly `replicas` distinct servers.
    #[error(
        "volume {volume} extent {extent}: not placed on the volume's replica count of distinct servers"
    )]
    Replicas {
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
    },
    /// An extent placed on a server the map does not have.
    #[error("volume {volume} extent {extent}: unknown server {server}")]
    UnknownServer {
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
        /// The server it names.
        server: String,
    },
    /// A replica range outside its server's pool, or not pool-block aligned.
    #[error("volume {volume} extent {extent}: offset {offset} is outside server {server}'s pool")]
    OutOfPool {
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
        /// Server id.
        server: String,
        /// The offset.
        offset: u64,
    },
    /// A move to a server that already holds the extent.
    #[error("volume {volume} extent {extent}: moving to {server}, which already holds it")]
    MoveToReplica {
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
        /// Server id.
        server: String,
    },
    /// Two reserved ranges of one pool overlap.
    #[error("server {server}: pool ranges of {first} and {second} overlap")]
    Overlap {
        /// Server id.
        server: String,
        /// The range at the lower offset.
        first: String,
        /// The range that starts inside it.
        second: String,
    },
}

/// `[u8; 16]` as 32 lower-case hex digits; also reads the hyphenated form.
mod hex_uuid {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(id: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&uuid::Uuid::from_bytes(*id).simple().to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        uuid::Uuid::try_parse(&text)
            .map(|u| *u.as_bytes())
            .map_err(|_| {
                D::Error::custom(format!(
                    "invalid volume uuid {text:?} (expected 32 hex digits)"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn server(id: &str, state: ServerState) -> ServerEntry {
        ServerEntry {
            id: id.to_string(),
            portal: "127.0.0.1:1".parse().unwrap(),
            internal: "127.0.0.1:2".parse().unwrap(),
            state,
            pool_bytes: 1 << 20,
            cntlid_min: 1,
            cntlid_max: 999,
            rack: None,
            pool: None,
        }
    }

    #[test]
    fn a_pool_id_is_32_hex_digits_and_absent_when_unknown() {
        let id: PoolId = "0123456789abcdef0123456789ABCDEF".parse().unwrap();
        assert_eq!(id.0, 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(id.to_string(), "0123456789abcdef0123456789abcdef");
        assert!(
            "0123"
                .parse::<PoolId>()
                .unwrap_err()
                .contains("32 hex digits")
        );
        assert!(
            "g123456789abcdef0123456789abcdef"
                .parse::<PoolId>()
                .is_err()
        );
        let mut e = server("s1", ServerState::Up);
        assert!(!serde_json::to_string(&e).unwrap().contains("pool\""));
        e.pool = Some(id);
        let json = serde_json::to_string(&e).unwrap();
        assert!(
            json.contains(r#""pool":"0123456789abcdef0123456789abcdef""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<ServerEntry>(&json).unwrap(), e);
    }

    #[test]
    fn a_replica_without_state_is_in_sync_and_in_sync_is_not_written() {
        let r: Replica = serde_json::from_str(r#"{"server":"s1","offset":4096}"#).unwrap();
        assert_eq!(r, Replica::new("s1", 4096));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"server":"s1","offset":4096}"#
        );
        let mut stale = r.clone();
        stale.state = ReplicaState::Stale;
        let json = serde_json::to_string(&stale).unwrap();
        assert_eq!(json, r#"{"server":"s1","offset":4096,"state":"stale"}"#);
        let back: Replica = serde_json::from_str(&json).unwrap();
        assert_eq!(back, stale);
        let rebuilding: Replica =
            serde_json::from_str(r#"{"server":"s1","offset":0,"state":"rebuilding"}"#).unwrap();
        assert_eq!(rebuilding.state, ReplicaState::Rebuilding);
        // A map stored before `rebuilding_since`: no record (not written back either).
        assert_eq!(rebuilding.rebuilding_since, None);
        assert!(
            !serde_json::to_string(&rebuilding)
                .unwrap()
                .contains("rebuilding_since")
        );
        let mut since = rebuilding.clone();
        since.rebuilding_since = Some(42);
        let json = serde_json::to_string(&since).unwrap();
        assert_eq!(
            json,
            r#"{"server":"s1","offset":0,"state":"rebuilding","rebuilding_since":42}"#
        );
        assert_eq!(serde_json::from_str::<Replica>(&json).unwrap(), since);
        assert!(
            serde_json::from_str::<Replica>(r#"{"server":"s1","offset":0,"state":"x"}"#).is_err()
        );
    }

    #[test]
    fn the_primary_is_the_first_in_sync_copy_on_a_server_not_down() {
        let mut m = ClusterMap::empty();
        m.servers = vec![
            server("s1", ServerState::Up),
            server("s2", ServerState::Draining),
            server("s3", ServerState::Up),
        ];
        let mut ext = ExtentEntry {
            lost: false,
            replicas: vec![
                Replica::new("s1", 0),
                Replica::new("s2", 0),
                Replica::new("s3", 0),
            ],
            moving: None,
        };
        let primary = |m: &ClusterMap, e: &ExtentEntry| m.primary(e).map(|r| r.server.clone());
        assert_eq!(primary(&m, &ext).as_deref(), Some("s1"));
        m.servers[0].state = ServerState::Down;
        assert_eq!(
            primary(&m, &ext).as_deref(),
            Some("s2"),
            "draining still serves"
        );
        ext.replicas[1].state = ReplicaState::Rebuilding;
        assert_eq!(primary(&m, &ext).as_deref(), Some("s3"));
        ext.replicas[2].state = ReplicaState::Stale;
        assert_eq!(primary(&m, &ext), None);
        // No primary: writes still go to `replicas[0]` (which refuses them).
        assert_eq!(m.write_owner(&ext).map(|r| r.server.as_str()), Some("s1"));
    }
}
