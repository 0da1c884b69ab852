//! Changes to the cluster map, as pure functions: each takes the current map and a change and
//! returns the next map (generation + 1, validated) or a [`PlanError`] saying why the change is
//! refused. Nothing here does I/O; the server runs every change through here, then the store,
//! then the coordinator.
//!
//! A change that alters nothing (resize to the current size, a reload of an unchanged file,
//! a server set to the state it has) returns the map unchanged, generation included, and the
//! server publishes nothing.

mod alloc;
mod copy_move;
mod error;
mod lost;
mod reload;
mod replica;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;

use yaml::derived_volume_uuid;

pub use copy_move::{CopyMoveError, pending as pending_copy_move, rebuild_done};
pub use error::PlanError;
pub use lost::{clear_lost, lost_with, pool_seen};
use reload::reload_holding;
pub use reload::{initial_map, reload, reload_from};
pub use replica::{
    copies_diverged, holds_replicated_copy, pool_lost_extents, rebuild_due, rebuild_start,
    replica_failed,
};

use crate::api::{AddServerRequest, CreateVolumeRequest, MoveReadyRequest, MoveRequest};
use crate::map::{
    ClusterMap, EXTENTS_PER_VOLUME_MAX, ExtentEntry, HostPolicy, Move, POOL_BLOCK_BYTES,
    REPLICAS_MAX, Replica, SERVERS_MAX, ServerEntry, ServerState, SubsystemEntry, VOLUMES_MAX,
    VolumeEntry, cntlid_range,
};
pub use alloc::{Held, SharedDomains, new_shared_domains, shared_domains};
use alloc::{Pools, place_extent, stripe_start, up_servers};

/// Default extent size of a created volume (same as the cluster YAML's).
pub const DEFAULT_EXTENT_SIZE: u64 = yaml::DEFAULT_EXTENT_SIZE;
/// Default logical block size of a created volume.
pub const DEFAULT_BLOCK_SIZE: u32 = 512;
/// Longest server id or volume name (they appear in URLs and internal NQNs).
pub const NAME_CHARS_MAX: usize = yaml::NAME_CHARS_MAX;

/// One change, as the server receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `POST /v1/volumes`.
    CreateVolume(CreateVolumeRequest),
    /// `POST /v1/volumes/{name}/resize`.
    ResizeVolume {
        /// Volume name.
        name: String,
        /// New size in bytes.
        size: u64,
    },
    /// `POST /v1/servers`.
    AddServer(AddServerRequest),
    /// `POST /v1/extents/move`.
    StartMove(MoveRequest),
    /// `POST /v1/move-ready`.
    SwitchMove(MoveReadyRequest),
    /// `POST /v1/replica-failed`; `server_gone`: the copy's server has no watch stream open
    /// (every copy of it that is not a primary goes stale).
    ReplicaFailed {
        /// The report.
        req: crate::api::ReplicaFailedRequest,
        /// The copy's server is not connected to the manager.
        server_gone: bool,
    },
    /// A server whose copies are stale is back: they become `rebuilding`.
    RebuildStart {
        /// Server id.
        id: String,
    },
    /// `POST /v1/rebuild-done`.
    RebuildDone(crate::api::RebuildDoneRequest),
    /// `POST /v1/copies-diverged`.
    CopiesDiverged(crate::api::CopiesDivergedRequest),
    /// A server fetched or watched the map with its pool identity: recorded; when it differs
    /// from the recorded one, its copies are stale ([`replica::pool_seen`]) and the extents
    /// whose only `in_sync` copy it held are marked `lost` ([`lost::pool_seen`]).
    PoolSeen {
        /// Server id.
        id: String,
        /// The pool identity it sent.
        pool: crate::map::PoolId,
        /// The identity the manager saw from it before, kept in memory only (the map records
        /// none): a different `pool` means its data is gone all the same.
        previous: Option<crate::map::PoolId>,
    },
    /// `POST /v1/volumes/{name}/clear-lost`: the `lost` mark off one extent (or all).
    ClearLost {
        /// Volume name.
        volume: String,
        /// Extent index; `None`: every extent of the volume.
        extent: Option<usize>,
    },
    /// A server's state (from a reload, or an operator).
    SetServerState {
        /// Server id.
        id: String,
        /// New state.
        state: ServerState,
    },
    /// `POST /v1/reload`: the re-read cluster file, and the one applied last (if recorded).
    Reload {
        /// The file at the last load.
        previous: Option<Box<yaml::Cluster>>,
        /// The file now.
        cluster: Box<yaml::Cluster>,
    },
}

impl Change {
    /// A short name for logs (a reload's whole file is not logged).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::CreateVolume(_) => "create volume",
            Self::ResizeVolume { .. } => "resize volume",
            Self::AddServer(_) => "add server",
            Self::StartMove(_) => "start move",
            Self::SwitchMove(_) => "switch move",
            Self::ReplicaFailed { .. } => "replica failed",
            Self::RebuildStart { .. } => "rebuild start",
            Self::RebuildDone(_) => "rebuild done",
            Self::CopiesDiverged(_) => "copies diverged",
            Self::PoolSeen { .. } => "pool seen",
            Self::ClearLost { .. } => "clear lost",
            Self::SetServerState { .. } => "server state",
            Self::Reload { .. } => "reload",
        }
    }
}

/// Applies `change` to `map`.
///
/// # Errors
/// Why the change is refused; `map` is unchanged either way.
pub fn apply(map: &ClusterMap, change: &Change) -> Result<ClusterMap, PlanError> {
    apply_holding(map, change, &[])
}

/// [`apply`] with the pool ranges `held` kept out of every allocation (they are free in `map`
/// but may be given back: [`held_ranges`]).
fn apply_holding(
    map: &ClusterMap,
    change: &Change,
    held: &[Held],
) -> Result<ClusterMap, PlanError> {
    match change {
        Change::CreateVolume(req) => {
            let spec = VolumeSpec::of(req);
            step(map, |m| edit_create_volume(m, &spec, held))
        }
        Change::ResizeVolume { name, size } => step(map, |m| edit_resize(m, name, *size, held)),
        Change::AddServer(req) => add_server(map, req),
        Change::StartMove(req) => step(map, |m| edit_start_move(m, req, held)),
        Change::SwitchMove(req) => switch_move(map, req),
        Change::ReplicaFailed { req, server_gone } => replica_failed(map, req, *server_gone),
        Change::RebuildStart { id } => replica::rebuild_start(map, id),
        Change::RebuildDone(req) => copy_move::rebuild_done(map, req),
        Change::CopiesDiverged(req) => replica::copies_diverged(map, req),
        Change::PoolSeen { id, pool, previous } => lost::pool_seen(map, id, *pool, *previous),
        Change::ClearLost { volume, extent } => clear_lost(map, volume, *extent),
        Change::SetServerState { id, state } => set_server_state(map, id, *state),
        Change::Reload { previous, cluster } => {
            reload_holding(map, previous.as_deref(), cluster, held)
        }
    }
}

/// Runs `edit` on a copy of `map`; if it changed anything, bumps the generation and validates.
fn step(
    map: &ClusterMap,
    edit: impl FnOnce(&mut ClusterMap) -> Result<(), PlanError>,
) -> Result<ClusterMap, PlanError> {
    let mut next = map.clone();
    edit(&mut next)?;
    finish(map, next)
}

/// `next` with generation `map.generation + 1`, validated; or `map` itself if nothing changed.
/// Server `id` of `m` as a move's destination: it must exist (404) and be `up` (409).
fn up_destination<'m>(
    m: &'m ClusterMap,
    id: &str,
) -> Result<&'m crate::map::ServerEntry, PlanError> {
    let to = m
        .server(id)
        .ok_or_else(|| PlanError::UnknownServer(id.to_owned()))?;
    if to.state != ServerState::Up {
        return Err(PlanError::ServerNotUp {
            server: id.to_owned(),
            state: to.state,
        });
    }
    Ok(to)
}

fn finish(map: &ClusterMap, mut next: ClusterMap) -> Result<ClusterMap, PlanError> {
    replica::down_copies_stale(&mut next);
    if next == *map {
        return Ok(next);
    }
    next.generation = map
        .generation
        .checked_add(1)
        .ok_or(PlanError::GenerationExhausted)?;
    next.validate().map_err(PlanError::Invalid)?;
    Ok(next)
}

/// What a new volume needs; from the API ([`CreateVolumeRequest`]) or the cluster file.
#[derive(Debug, Clone)]
pub(crate) struct VolumeSpec {
    pub name: String,
    pub size_bytes: u64,
    pub block_size: u32,
    pub extent_size: u64,
    pub replicas: u32,
    pub subsystem: String,
    pub nsid: Option<u32>,
    pub hosts: Option<HostPolicy>,
    pub uuid: Option<[u8; 16]>,
}

/// Creates a volume: its subsystem too when `hosts` is given and the subsystem is new; extents
/// striped round-robin over the `up` servers from the one with the most free space, each
/// replica at the first free range of its server's pool that fits.
///
/// # Errors
/// A bad name, size, block or extent size, replica count, NQN or NSID; a name, NSID or UUID
/// already taken; a new subsystem without `hosts`, or `hosts` that differ from an existing
/// subsystem's; too few `up` servers or not enough pool space.
pub fn create_volume(map: &ClusterMap, req: &CreateVolumeRequest) -> Result<ClusterMap, PlanError> {
    let spec = VolumeSpec::of(req);
    step(map, |m| edit_create_volume(m, &spec, &[]))
}

impl VolumeSpec {
    fn of(req: &CreateVolumeRequest) -> Self {
        Self {
            name: req.name.clone(),
            size_bytes: req.size,
            block_size: req.block_size.unwrap_or(DEFAULT_BLOCK_SIZE),
            extent_size: req.extent_size.unwrap_or(DEFAULT_EXTENT_SIZE),
            replicas: req.replicas.unwrap_or(1),
            subsystem: req.subsystem.clone(),
            nsid: req.nsid,
            hosts: req.hosts.clone(),
            uuid: None,
        }
    }
}

/// Grows volume `name` to `size` bytes: the last extent extends in place (its whole
/// `extent_size` is reserved already), further extents are placed like a new volume's,
/// continuing its stripe.
///
/// # Errors
/// Unknown volume, a size that shrinks it or is not whole blocks, too many extents, no space.
pub fn resize_volume(map: &ClusterMap, name: &str, size: u64) -> Result<ClusterMap, PlanError> {
    step(map, |m| edit_resize(m, name, size, &[]))
}

/// Adds a storage server (state `up`, the next CNTLID range).
///
/// # Errors
/// A bad or taken id, an address already used, a pool that is empty or not whole 512-byte
/// blocks, too many servers.
pub fn add_server(map: &ClusterMap, req: &AddServerRequest) -> Result<ClusterMap, PlanError> {
    step(map, |m| edit_add_server(m, req))
}

/// Starts moving extent `req.extent` of `req.volume` to server `req.to`: reserves the space
/// there and sets `moving`.
///
/// # Errors
/// Unknown volume, extent or server; the extent is already moving or already on `to`; `to` is
/// not `up`; no space on `to`.
pub fn start_move(map: &ClusterMap, req: &MoveRequest) -> Result<ClusterMap, PlanError> {
    step(map, |m| edit_start_move(m, req, &[]))
}

/// Switches a moving extent to its destination (`replicas[0] = to`, `moving = null`); the old
/// owner's range is free in the result.
///
/// # Errors
/// Unknown volume or extent; the extent is not moving; `req.server` is not its owner;
/// `req.generation` is newer than the map.
pub fn switch_move(map: &ClusterMap, req: &MoveReadyRequest) -> Result<ClusterMap, PlanError> {
    step(map, |m| edit_switch_move(m, req))
}

/// Sets server `id`'s state.
///
/// # Errors
/// Unknown server.
pub fn set_server_state(
    map: &ClusterMap,
    id: &str,
    state: ServerState,
) -> Result<ClusterMap, PlanError> {
    step(map, |m| {
        let s = server_mut(m, id)?;
        s.state = state;
        Ok(())
    })
}

fn server_mut<'a>(m: &'a mut ClusterMap, id: &str) -> Result<&'a mut ServerEntry, PlanError> {
    m.servers
        .iter_mut()
        .find(|s| s.id == id)
        .ok_or_else(|| PlanError::UnknownServer(id.to_owned()))
}

fn volume_mut<'a>(m: &'a mut ClusterMap, name: &str) -> Result<&'a mut VolumeEntry, PlanError> {
    m.volumes
        .iter_mut()
        .find(|v| v.name == name)
        .ok_or_else(|| PlanError::UnknownVolume(name.to_owned()))
}

pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), PlanError> {
    let ok = !name.is_empty()
        && name.chars().count() <= NAME_CHARS_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(PlanError::BadName {
            what,
            name: name.to_owned(),
        })
    }
}

fn check_subsystem_nqn(nqn: &str) -> Result<(), PlanError> {
    yaml::check_nqn(nqn).map_err(PlanError::BadNqn)?;
    if nqn == yaml::DISCOVERY_NQN || nqn.contains(":internal:") {
        return Err(PlanError::BadNqn(format!(
            "{nqn} is reserved (the discovery NQN and NQNs containing \":internal:\" are served \
             by every server itself)"
        )));
    }
    Ok(())
}

fn check_hosts(hosts: &HostPolicy) -> Result<(), PlanError> {
    if let HostPolicy::Only(list) = hosts {
        if list.is_empty() {
            return Err(PlanError::BadNqn(
                "empty host list: no host could connect (expected \"any\" or {\"only\": [host NQNs]})"
                    .to_owned(),
            ));
        }
        if list.len() > yaml::HOSTS_MAX {
            return Err(PlanError::TooMany {
                what: "hosts",
                max: yaml::HOSTS_MAX,
            });
        }
        for h in list {
            yaml::check_nqn(h).map_err(PlanError::BadNqn)?;
        }
    }
    Ok(())
}

/// Checks block size, size and extent size; returns the extent count.
fn check_geometry(size_bytes: u64, block_size: u32, extent_size: u64) -> Result<u64, PlanError> {
    if !yaml::BLOCK_SIZES.contains(&block_size) {
        return Err(PlanError::BadBlockSize(block_size));
    }
    let block = u64::from(block_size);
    for (what, value) in [("size", size_bytes), ("extent size", extent_size)] {
        if value == 0 {
            return Err(PlanError::ZeroSize(what));
        }
        if value % block != 0 {
            return Err(PlanError::NotMultiple {
                what,
                value,
                block_size,
            });
        }
    }
    let count = size_bytes.div_ceil(extent_size);
    if count > EXTENTS_PER_VOLUME_MAX {
        return Err(PlanError::TooManyExtents {
            count,
            max: EXTENTS_PER_VOLUME_MAX,
        });
    }
    Ok(count)
}

pub(crate) fn edit_create_volume(
    m: &mut ClusterMap,
    spec: &VolumeSpec,
    held: &[Held],
) -> Result<(), PlanError> {
    check_name("volume name", &spec.name)?;
    if m.volume(&spec.name).is_some() {
        return Err(PlanError::VolumeExists(spec.name.clone()));
    }
    if m.volumes.len() >= VOLUMES_MAX {
        return Err(PlanError::TooMany {
            what: "volumes",
            max: VOLUMES_MAX,
        });
    }
    let count = check_geometry(spec.size_bytes, spec.block_size, spec.extent_size)?;
    if spec.replicas == 0 || spec.replicas > REPLICAS_MAX {
        return Err(PlanError::BadReplicas(spec.replicas));
    }
    check_subsystem_nqn(&spec.subsystem)?;
    match (m.subsystem(&spec.subsystem), &spec.hosts) {
        (Some(existing), Some(h)) if existing.hosts != *h => {
            return Err(PlanError::HostsDiffer(spec.subsystem.clone()));
        }
        (Some(_), _) => {}
        (None, None) => return Err(PlanError::HostsRequired(spec.subsystem.clone())),
        (None, Some(h)) => {
            check_hosts(h)?;
            m.subsystems.push(SubsystemEntry {
                nqn: spec.subsystem.clone(),
                hosts: h.clone(),
            });
        }
    }
    let taken = |nsid: u32| m.namespaces_of(&spec.subsystem).find(|v| v.nsid == nsid);
    let nsid = match spec.nsid {
        Some(n) if n == 0 || n == u32::MAX => return Err(PlanError::BadNsid(n)),
        Some(n) => {
            if let Some(v) = taken(n) {
                return Err(PlanError::NsidTaken {
                    nqn: spec.subsystem.clone(),
                    nsid: n,
                    volume: v.name.clone(),
                });
            }
            n
        }
        // At most VOLUMES_MAX are taken, so one of the first VOLUMES_MAX + 1 is free.
        None => (1..u32::MAX)
            .find(|&n| taken(n).is_none())
            .ok_or(PlanError::BadNsid(0))?,
    };
    let uuid = spec.uuid.unwrap_or_else(|| derived_volume_uuid(&spec.name));
    if let Some(v) = m.volumes.iter().find(|v| v.uuid == uuid) {
        return Err(PlanError::UuidTaken(v.name.clone()));
    }
    let up = up_servers(m);
    let wanted = usize::try_from(spec.replicas).unwrap_or(usize::MAX);
    if up.len() < wanted {
        return Err(PlanError::NotEnoughServers {
            replicas: spec.replicas,
            up: up.len(),
        });
    }
    let mut pools = Pools::of(m, held);
    let start = stripe_start(&pools, &up);
    let mut extents = Vec::new();
    for i in 0..count {
        let index = usize::try_from(i).unwrap_or(usize::MAX);
        let replicas = place_extent(
            &mut pools,
            &up,
            start,
            index,
            spec.replicas,
            spec.extent_size,
        )
        .ok_or_else(|| PlanError::NoSpace {
            volume: spec.name.clone(),
            extent: index,
            bytes: spec.extent_size,
        })?;
        extents.push(ExtentEntry {
            replicas,
            moving: None,
            lost: false,
        });
    }
    m.volumes.push(VolumeEntry {
        name: spec.name.clone(),
        uuid,
        size_bytes: spec.size_bytes,
        block_size: spec.block_size,
        extent_size: spec.extent_size,
        replicas: spec.replicas,
        subsystem: spec.subsystem.clone(),
        nsid,
        extents,
    });
    Ok(())
}

pub(crate) fn edit_resize(
    m: &mut ClusterMap,
    name: &str,
    size: u64,
    held: &[Held],
) -> Result<(), PlanError> {
    let vol = m
        .volume(name)
        .ok_or_else(|| PlanError::UnknownVolume(name.to_owned()))?;
    if size < vol.size_bytes {
        return Err(PlanError::Shrink {
            volume: name.to_owned(),
            from: vol.size_bytes,
            to: size,
        });
    }
    let count = check_geometry(size, vol.block_size, vol.extent_size)?;
    let old_count = vol.extents.len();
    let (replicas, extent_size) = (vol.replicas, vol.extent_size);
    // Continue the volume's stripe where its first extent's owner sits among the up servers.
    let up = up_servers(m);
    let mut pools = Pools::of(m, held);
    let start = vol
        .owner(0)
        .and_then(|o| up.iter().position(|id| *id == o.server))
        .unwrap_or_else(|| stripe_start(&pools, &up));
    let mut new_extents = Vec::new();
    for index in old_count..usize::try_from(count).unwrap_or(usize::MAX) {
        let replicas = place_extent(&mut pools, &up, start, index, replicas, extent_size)
            .ok_or_else(|| PlanError::NoSpace {
                volume: name.to_owned(),
                extent: index,
                bytes: extent_size,
            })?;
        new_extents.push(ExtentEntry {
            replicas,
            moving: None,
            lost: false,
        });
    }
    let vol = volume_mut(m, name)?;
    vol.size_bytes = size;
    vol.extents.extend(new_extents);
    Ok(())
}

pub(crate) fn edit_add_server(m: &mut ClusterMap, req: &AddServerRequest) -> Result<(), PlanError> {
    check_name("server id", &req.id)?;
    if m.server(&req.id).is_some() {
        return Err(PlanError::ServerExists(req.id.clone()));
    }
    let (cntlid_min, cntlid_max) = cntlid_range(m.servers.len()).ok_or(PlanError::TooMany {
        what: "servers",
        max: SERVERS_MAX,
    })?;
    if req.portal == req.internal {
        return Err(PlanError::AddressInUse {
            addr: req.portal,
            server: req.id.clone(),
        });
    }
    for a in [req.portal, req.internal] {
        if a.port() == 0 || a.ip().is_unspecified() {
            return Err(PlanError::BadAddress(a));
        }
        if let Some(s) = m.servers.iter().find(|s| s.portal == a || s.internal == a) {
            return Err(PlanError::AddressInUse {
                addr: a,
                server: s.id.clone(),
            });
        }
    }
    if let Some(rack) = &req.rack {
        check_name("rack", rack)?;
    }
    if req.pool_bytes == 0 {
        return Err(PlanError::ZeroSize("pool"));
    }
    if !req.pool_bytes.is_multiple_of(POOL_BLOCK_BYTES) {
        return Err(PlanError::NotMultiple {
            what: "pool",
            value: req.pool_bytes,
            block_size: 512,
        });
    }
    m.servers.push(ServerEntry {
        id: req.id.clone(),
        portal: req.portal,
        internal: req.internal,
        state: ServerState::Up,
        pool_bytes: req.pool_bytes,
        cntlid_min,
        cntlid_max,
        rack: req.rack.clone(),
        pool: None,
    });
    Ok(())
}

/// The extent `i` of volume `name`, mutably, or the error naming what is missing.
fn extent_mut<'a>(
    m: &'a mut ClusterMap,
    name: &str,
    i: usize,
) -> Result<(u64, &'a mut ExtentEntry), PlanError> {
    let vol = volume_mut(m, name)?;
    let count = vol.extents.len();
    let size = vol.extent_size;
    let ext = vol.extents.get_mut(i).ok_or(PlanError::NoSuchExtent {
        volume: name.to_owned(),
        extent: i,
        count,
    })?;
    Ok((size, ext))
}

pub(crate) fn edit_start_move(
    m: &mut ClusterMap,
    req: &MoveRequest,
    held: &[Held],
) -> Result<(), PlanError> {
    // A volume with several copies moves one copy: add, rebuild, drop.
    if copy_move::is_copy_move(m, req) {
        return copy_move::edit_start_copy_move(m, req, held);
    }
    copy_move::check_from_owner(m, req)?;
    up_destination(m, &req.to)?;
    let mut pools = Pools::of(m, held);
    let (size, ext) = extent_mut(m, &req.volume, req.extent)?;
    if let Some(mv) = &ext.moving {
        return Err(PlanError::AlreadyMoving {
            volume: req.volume.clone(),
            extent: req.extent,
            to: mv.to.server.clone(),
        });
    }
    if ext.replicas.iter().any(|r| r.server == req.to) {
        return Err(PlanError::AlreadyThere {
            volume: req.volume.clone(),
            extent: req.extent,
            server: req.to.clone(),
        });
    }
    let offset = pools
        .alloc(&req.to, size)
        .ok_or_else(|| PlanError::NoSpaceOn {
            server: req.to.clone(),
            bytes: size,
        })?;
    ext.moving = Some(Move {
        to: Replica::new(req.to.clone(), offset),
    });
    Ok(())
}

pub(crate) fn edit_switch_move(
    m: &mut ClusterMap,
    req: &MoveReadyRequest,
) -> Result<(), PlanError> {
    let generation = m.generation;
    if req.generation > generation {
        return Err(PlanError::FutureGeneration {
            generation: req.generation,
            current: generation,
        });
    }
    let (_, ext) = extent_mut(m, &req.volume, req.extent)?;
    let Some(mv) = ext.moving.take() else {
        return Err(PlanError::NotMoving {
            volume: req.volume.clone(),
            extent: req.extent,
        });
    };
    let owner = ext.replicas.first_mut().ok_or(PlanError::NotMoving {
        volume: req.volume.clone(),
        extent: req.extent,
    })?;
    if owner.server != req.server {
        return Err(PlanError::NotOwner {
            server: req.server.clone(),
            volume: req.volume.clone(),
            extent: req.extent,
            owner: owner.server.clone(),
        });
    }
    *owner = mv.to;
    Ok(())
}

/// A move or switch that [`cancel_moves_to_down`] undid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    /// Volume name.
    pub volume: String,
    /// Extent index.
    pub extent: usize,
    /// The server that keeps (or gets back) the extent.
    pub owner: String,
    /// The destination of the move or switch.
    pub to: String,
    /// A switch whose phase 1a was not done (the extent goes back to `owner` at its old
    /// offset); false: a move to a server marked down (`moving` cleared).
    pub switch: bool,
    /// A switch given back whose destination is `up`: the move is on again (`moving` names
    /// the destination), and the owner copies again before a new switch.
    pub moving_again: bool,
}

/// Cancels, in `next` (a map just planned, not yet stored), what a server marked `down` in it
/// can no longer finish (docs/cluster-protocol.md, "Cancelling a switch to a server marked
/// down"). `chain`: the newest map whose phase 1a is done, then every durable map whose phase 1a
/// is not done, oldest first (`Coordinator::phase_1a_chain`).
/// - **Switches.** If a switch not through phase 1a (an extent whose owner in `next` differs
///   from its owner in `chain[0]`) goes to a server marked down, every switch not through
///   phase 1a is given back: the extent's owner is its owner in `chain[0]` again, at the same
///   pool offset (for an extent that a later map of the chain added, by a resize or a new
///   volume, its owner in the first map that has it). Nobody but that owner has seen those
///   switches, so nobody else took writes for their extents (and nobody at all for an extent
///   added after `chain[0]`: no host has a map with it). A switch to an `up` server (after exactly one owner change along the chain)
///   becomes its move again (`moving` = the destination), any other loses its `moving`. The
///   coordinator then publishes `next` in place of every map not through phase 1a
///   (`Coordinator`, "abandoned"), which is safe because `next` changes no owner over
///   `chain[0]`. If an old range is taken (`next` would not validate; the manager holds them,
///   [`held_ranges`]), no switch is given back (and they wait).
/// - **Moves** to a server marked down (`moving.to`): `moving` is cleared (the owner keeps the
///   extent, the destination's range is freed).
///
/// `next` keeps its generation and stays valid. Returns what was cancelled, in map order.
pub fn cancel_moves_to_down(chain: &[Arc<ClusterMap>], next: &mut ClusterMap) -> Vec<Cancelled> {
    let mut out = Vec::new();
    if chain.is_empty() {
        return out;
    }
    let is_down =
        |m: &ClusterMap, id: &str| m.server(id).is_none_or(|s| s.state == ServerState::Down);
    if !next.servers.iter().any(|s| s.state == ServerState::Down) {
        return out;
    }
    // Extents whose owner (server and offset) changes along the chain or in `next` (a switch
    // there and back counts), each with its first owner: in `done`, or, for an extent that a
    // later map of the chain added (a resize or a new volume not through phase 1a), in the
    // first map that has it. Nobody took writes for such an extent: no host has a map with it.
    let mut keys: Vec<(&str, usize)> = Vec::new();
    for m in chain
        .iter()
        .map(AsRef::as_ref)
        .chain(std::iter::once(&*next))
    {
        // A volume with several copies changes `replicas[0]` only when a moved copy drops the
        // first one (docs/replication.md, "Moving a copy"): not a switch, nothing to give back.
        for v in m.volumes.iter().filter(|v| v.replicas == 1) {
            for i in 0..v.extents.len() {
                if !keys.contains(&(v.name.as_str(), i)) {
                    keys.push((v.name.as_str(), i));
                }
            }
        }
    }
    let switched: Vec<(String, usize, Replica)> = keys
        .into_iter()
        .filter_map(|(vol, i)| {
            let mut owners = chain
                .iter()
                .map(|m| m.owner(vol, i))
                .chain(std::iter::once(next.owner(vol, i)))
                .skip_while(Option::is_none);
            let was = owners.next()??;
            let moved = owners.any(|o| o.is_none_or(|o| !o.same_place(was)));
            moved.then(|| (vol.to_owned(), i, was.clone()))
        })
        .collect();
    // A switch to a server marked down, last or along the chain (a later switch away from it
    // waits for it as an old owner).
    let trigger = switched.iter().any(|(vol, i, was)| {
        chain
            .iter()
            .skip(1)
            .filter_map(|m| m.owner(vol, *i))
            .chain(next.owner(vol, *i))
            .any(|r| !r.same_place(was) && is_down(next, &r.server))
    });
    if trigger {
        let mut trial = next.clone();
        let mut given = Vec::new();
        for (volume, extent, back) in &switched {
            let Some(now) = next.owner(volume, *extent).cloned() else {
                continue;
            };
            let again = !is_down(next, &now.server)
                && now.server != back.server
                && owner_changes(chain, volume, *extent, &now) == 1;
            let Some(e) = trial
                .volumes
                .iter_mut()
                .find(|v| v.name == *volume)
                .and_then(|v| v.extents.get_mut(*extent))
            else {
                continue;
            };
            if let Some(r) = e.replicas.first_mut() {
                *r = back.clone();
            }
            e.moving = again.then(|| Move { to: now.clone() });
            given.push(Cancelled {
                volume: volume.clone(),
                extent: *extent,
                owner: back.server.clone(),
                to: now.server,
                switch: true,
                moving_again: again,
            });
        }
        if trial.validate().is_ok() {
            *next = trial;
            out = given;
        }
    }
    let down: Vec<String> = next
        .servers
        .iter()
        .filter(|s| s.state == ServerState::Down)
        .map(|s| s.id.clone())
        .collect();
    for vol in &mut next.volumes {
        for (i, e) in vol.extents.iter_mut().enumerate() {
            let Some(to) = e.moving.as_ref().map(|m| m.to.server.clone()) else {
                continue;
            };
            if !down.contains(&to) {
                continue;
            }
            e.moving = None;
            out.push(Cancelled {
                volume: vol.name.clone(),
                extent: i,
                owner: e
                    .replicas
                    .first()
                    .map(|r| r.server.clone())
                    .unwrap_or_default(),
                to,
                switch: false,
                moving_again: false,
            });
        }
    }
    out
}

/// How many times extent `i` of `vol` changes owner along `chain`, then to `last`.
fn owner_changes(chain: &[Arc<ClusterMap>], vol: &str, i: usize, last: &Replica) -> usize {
    // From the first map that has the extent (a later map of the chain may add it).
    let owners: Vec<Option<&Replica>> = chain
        .iter()
        .map(|m| m.owner(vol, i))
        .chain(std::iter::once(Some(last)))
        .skip_while(Option::is_none)
        .collect();
    owners
        .windows(2)
        .filter(|w| match w {
            [Some(a), Some(b)] => !a.same_place(b),
            [a, b] => a.is_some() != b.is_some(),
            _ => false,
        })
        .count()
}

/// The pool ranges that the maps of `chain` (see [`cancel_moves_to_down`]) use: a cancellation
/// may give a switched extent back to its owner in the first of them, so no change allocates
/// any of them while a switch is not through phase 1a (ranges that `head` uses are taken
/// anyway).
#[must_use]
pub fn held_ranges(chain: &[Arc<ClusterMap>]) -> Vec<Held> {
    if chain.len() < 2 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for m in chain {
        for (server, ranges) in m.pool_ranges() {
            for (offset, len, _) in ranges {
                out.push(Held {
                    server: server.to_owned(),
                    offset,
                    len,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.server, a.offset, a.len).cmp(&(&b.server, b.offset, b.len)));
    out.dedup();
    out
}

/// [`apply`] (allocating nothing in [`held_ranges`]), then [`cancel_moves_to_down`] when the
/// change made a new map. `chain`: `Coordinator::phase_1a_chain` (its first map, the newest
/// whose phase 1a is done). What the manager runs for every change.
///
/// # Errors
/// As [`apply`].
pub fn apply_cancelling(
    map: &ClusterMap,
    change: &Change,
    chain: &[Arc<ClusterMap>],
) -> Result<(ClusterMap, Vec<Cancelled>), PlanError> {
    let held = held_ranges(chain);
    let mut next = apply_holding(map, change, &held)?;
    if next.generation == map.generation {
        return Ok((next, Vec::new()));
    }
    let cancelled = cancel_moves_to_down(chain, &mut next);
    if !cancelled.is_empty() {
        next.validate().map_err(PlanError::Invalid)?;
    }
    Ok((next, cancelled))
}
