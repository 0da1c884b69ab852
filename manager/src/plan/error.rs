//! Why a change is refused. Every message names the value at fault and what was expected.

use std::net::SocketAddr;

use crate::map::{MapError, ServerState};

/// A refused change; the map and generation do not move.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No such volume.
    #[error("unknown volume {0:?}")]
    UnknownVolume(String),
    /// No such server.
    #[error("unknown server {0:?}")]
    UnknownServer(String),
    /// The volume name is taken.
    #[error("volume {0:?} already exists")]
    VolumeExists(String),
    /// The server id is taken.
    #[error("server {0:?} already exists")]
    ServerExists(String),
    /// A name with characters outside `A-Z a-z 0-9 . _ -`, empty, or too long.
    #[error("invalid {what} {name:?} (expected 1 to 64 characters among A-Z a-z 0-9 . _ -)")]
    BadName {
        /// Which name.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// More entries than the limit.
    #[error("more than {max} {what}")]
    TooMany {
        /// What.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// Block size other than 512 or 4096.
    #[error("unsupported block size {0} (expected 512 or 4096)")]
    BadBlockSize(u32),
    /// A zero size.
    #[error("{0} is 0 bytes (expected at least one block)")]
    ZeroSize(&'static str),
    /// A size that is not whole blocks.
    #[error("{what} {value} bytes is not a multiple of the block size {block_size}")]
    NotMultiple {
        /// Which size.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The block size.
        block_size: u32,
    },
    /// More extents than a volume may have.
    #[error("{count} extents (expected at most {max}: use a larger extent size)")]
    TooManyExtents {
        /// Extents the size needs.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// A replica count of 0 or above the limit.
    #[error("invalid replica count {0} (expected 1 to 3)")]
    BadReplicas(u32),
    /// Fewer `up` servers than replicas.
    #[error("{replicas} replicas need {replicas} up servers, the cluster has {up}")]
    NotEnoughServers {
        /// Replicas asked for.
        replicas: u32,
        /// Up servers.
        up: usize,
    },
    /// No server had room for an extent.
    #[error(
        "no pool space left for extent {extent} of volume {volume:?} ({bytes} bytes per replica)"
    )]
    NoSpace {
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
        /// Bytes needed.
        bytes: u64,
    },
    /// The move destination has no room.
    #[error("no pool space left on server {server:?} ({bytes} bytes needed)")]
    NoSpaceOn {
        /// Server id.
        server: String,
        /// Bytes needed.
        bytes: u64,
    },
    /// Shrinking is not supported.
    #[error(
        "volume {volume:?} cannot shrink from {from} to {to} bytes (only growing is supported)"
    )]
    Shrink {
        /// Volume name.
        volume: String,
        /// Current size.
        from: u64,
        /// Requested size.
        to: u64,
    },
    /// NSID 0 or broadcast.
    #[error("invalid NSID {0} (expected 1 to 4294967294)")]
    BadNsid(u32),
    /// The NSID is taken in that subsystem.
    #[error("NSID {nsid} of subsystem {nqn} is already volume {volume:?}")]
    NsidTaken {
        /// Subsystem NQN.
        nqn: String,
        /// The NSID.
        nsid: u32,
        /// The volume that has it.
        volume: String,
    },
    /// The (derived or declared) UUID is another volume's.
    #[error("volume UUID already used by volume {0:?}")]
    UuidTaken(String),
    /// A bad NQN (subsystem or host).
    #[error("{0}")]
    BadNqn(String),
    /// A new subsystem needs a host policy.
    #[error(
        "subsystem {0} does not exist; give \"hosts\" (\"any\" or {{\"only\": [host NQNs]}}) to create it"
    )]
    HostsRequired(String),
    /// `hosts` given for an existing subsystem, and different from its policy.
    #[error("subsystem {0} exists with a different host policy (omit \"hosts\" or give the same)")]
    HostsDiffer(String),
    /// A server address that cannot be dialed.
    #[error(
        "address {0} cannot be dialed (expected a specific IP address and a port from 1 to 65535)"
    )]
    BadAddress(SocketAddr),
    /// A server address already used.
    #[error("address {addr} is already used by server {server:?}")]
    AddressInUse {
        /// The address.
        addr: SocketAddr,
        /// Who uses it.
        server: String,
    },
    /// An extent index past the end.
    #[error("volume {volume:?} has no extent {extent} (it has {count})")]
    NoSuchExtent {
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
        /// Extents it has.
        count: usize,
    },
    /// A move of a moving extent.
    #[error("extent {extent} of volume {volume:?} is already moving to {to:?}")]
    AlreadyMoving {
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
        /// Its destination.
        to: String,
    },
    /// A move to a server holding the extent.
    #[error("extent {extent} of volume {volume:?} is already on server {server:?}")]
    AlreadyThere {
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
        /// Server id.
        server: String,
    },
    /// A move to a server that is not `up`.
    #[error("server {server:?} is {state:?}, not up (new extents go only to up servers)")]
    ServerNotUp {
        /// Server id.
        server: String,
        /// Its state.
        state: ServerState,
    },
    /// move-ready for an extent that is not moving.
    #[error("extent {extent} of volume {volume:?} is not moving")]
    NotMoving {
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
    },
    /// move-ready from a server that does not own the extent.
    #[error("server {server:?} does not own extent {extent} of volume {volume:?} ({owner:?} does)")]
    NotOwner {
        /// The sender.
        server: String,
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
        /// The owner.
        owner: String,
    },
    /// A replica report names a server that holds no copy of the extent.
    #[error("server {server:?} holds no copy of extent {extent} of volume {volume:?}")]
    NoSuchReplica {
        /// The copy's server, as reported.
        server: String,
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
    },
    /// A replica report from a server that is not the extent's primary, or about the primary
    /// itself.
    #[error(
        "server {server:?} is not the primary of extent {extent} of volume {volume:?} \
         ({primary}): only the primary reports its copies, never itself"
    )]
    NotPrimary {
        /// The sender.
        server: String,
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
        /// The primary (or "no primary").
        primary: String,
    },
    /// A rebuild reported done for a copy that is not `rebuilding` (it went stale since).
    #[error(
        "server {server:?}'s copy of extent {extent} of volume {volume:?} is stale, not \
         rebuilding: it missed writes since the rebuild began"
    )]
    NotRebuilding {
        /// The copy's server.
        server: String,
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
    },
    /// A rebuild-done report sent at a generation older than the one in which the copy last
    /// became `rebuilding`: it comes from an earlier rebuild of the copy, which the copy left
    /// (stale) since.
    #[error(
        "rebuild-done report for server {server:?}'s copy of extent {extent} of volume \
         {volume:?} was sent at generation {generation}, before generation {since} in which the \
         copy last became rebuilding: it is from an earlier rebuild (rebuild it and report \
         again from generation {since} or later)"
    )]
    StaleRebuildDone {
        /// The copy's server.
        server: String,
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
        /// The report's generation.
        generation: u64,
        /// The generation in which the copy last became `rebuilding`.
        since: u64,
    },
    /// A generation newer than the manager's.
    #[error("generation {generation} is newer than the manager's {current}")]
    FutureGeneration {
        /// The one sent.
        generation: u64,
        /// The manager's.
        current: u64,
    },
    /// The cluster file no longer declares something it declared at the last load.
    #[error(
        "reload cannot remove {what} {name:?}: the cluster file declared it at the last load and \
         no longer does (removal is not supported; declare it again)"
    )]
    ReloadRemoves {
        /// What kind of entry.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// The cluster file changes something that cannot change.
    #[error("reload cannot change {field} of {what} {name:?} ({detail})")]
    ReloadChanges {
        /// What kind of entry.
        what: &'static str,
        /// Its name.
        name: String,
        /// The field.
        field: &'static str,
        /// Old and new value, or why.
        detail: String,
    },
    /// The cluster file could not be read or is invalid.
    #[error("{0}")]
    Layout(String),
    /// u64 generations ran out (never, in practice).
    #[error("generation counter exhausted")]
    GenerationExhausted,
    /// The result would break a map invariant (a bug; the change is refused).
    #[error("internal error: the change would break a map invariant: {0}")]
    Invalid(MapError),
    /// A move of a copy of a replicated extent refused (docs/replication.md, "Moving a copy").
    #[error(transparent)]
    CopyMove(Box<super::copy_move::CopyMoveError>),
}

impl PlanError {
    /// The HTTP status the control API answers with: 404 for unknown names, 409 for a conflict
    /// with the map's current state, 500 for a broken invariant (a bug), 400 otherwise.
    #[must_use]
    pub fn http_status(&self) -> u16 {
        match self {
            Self::CopyMove(e) => e.http_status(),
            Self::UnknownVolume(_)
            | Self::UnknownServer(_)
            | Self::NoSuchExtent { .. }
            | Self::NoSuchReplica { .. } => 404,
            Self::VolumeExists(_)
            | Self::ServerExists(_)
            | Self::NsidTaken { .. }
            | Self::UuidTaken(_)
            | Self::HostsDiffer(_)
            | Self::AddressInUse { .. }
            | Self::AlreadyMoving { .. }
            | Self::AlreadyThere { .. }
            | Self::NotMoving { .. }
            | Self::NotOwner { .. }
            | Self::NotPrimary { .. }
            | Self::NotRebuilding { .. }
            | Self::StaleRebuildDone { .. }
            | Self::ServerNotUp { .. }
            | Self::NoSpace { .. }
            | Self::NoSpaceOn { .. }
            | Self::NotEnoughServers { .. } => 409,
            Self::Invalid(_) | Self::GenerationExhausted => 500,
            _ => 400,
        }
    }
}
