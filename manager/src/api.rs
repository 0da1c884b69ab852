//! Bodies of the control API (docs/cluster-protocol.md, "Control API"), shared by
//! [`crate::server`] and [`crate::client`] so both sides agree on every field.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::map::{Generation, HostPolicy, PoolId, ServerState};

/// Which map a caller gets (`role=` on `GET /v1/map` and `GET /v1/watch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A storage server with this id: the newest map whose phase 1a is done, or the map being
    /// published when this server is one of its phase-1a old owners.
    Server(String),
    /// A layout-aware client: the newest committed map.
    Client,
}

impl Role {
    /// A server role.
    #[must_use]
    pub fn server(id: impl Into<String>) -> Self {
        Self::Server(id.into())
    }

    /// The query string for this role (`role=server&server=s1` or `role=client`).
    #[must_use]
    pub fn query(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Server(id) => vec![("role", "server".to_owned()), ("server", id.clone())],
            Self::Client => vec![("role", "client".to_owned())],
        }
    }
}

/// `GET /v1/map` and `GET /v1/watch` query.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MapQuery {
    /// `server` or `client`.
    pub role: String,
    /// The calling server's id (role=server; without it the server gets the map every server
    /// gets, never a phase-1a map).
    pub server: Option<String>,
    /// Watch only: send maps newer than this generation (default 0: the current one first).
    pub after: Option<Generation>,
    /// role=server with `server=`: the identity of the pool the server runs on
    /// (docs/replication.md, "A server whose data is gone"). The manager records it in the
    /// server's map entry; one that differs from the recorded one marks the server's copies
    /// `stale` before the map is answered. Absent: nothing is checked (older servers).
    #[serde(default)]
    pub pool: Option<PoolId>,
}

/// `POST /v1/ack`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Server id.
    pub server: String,
    /// The generation it has installed.
    pub generation: Generation,
}

/// `POST /v1/lease`: a storage server asks for a read lease.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// Server id.
    pub server: String,
}

/// The answer to `POST /v1/lease`: the lease's length, counted by the server from when it
/// sent the request (docs/replication.md, "Read leases").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct LeaseGrant {
    /// Milliseconds.
    pub lease_ms: u64,
}

/// What a mismatch report is about (`POST /v1/report`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportKind {
    /// A command stamped older than the server's generation (SC 80h).
    Stale,
    /// A command stamped newer than the server could reach (SC 81h).
    Behind,
    /// An unstamped command on an internal connection.
    Unstamped,
}

/// `POST /v1/report`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// Reporting server.
    pub server: String,
    /// What was seen.
    pub kind: ReportKind,
    /// The stamp of the (last) offending command.
    pub stamp: Generation,
    /// The server's generation then.
    pub current: Generation,
    /// How many such commands this report stands for (the sender batches).
    pub count: u64,
}

/// `POST /v1/move-ready`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MoveReadyRequest {
    /// The owner that copied the extent.
    pub server: String,
    /// Volume name.
    pub volume: String,
    /// Extent index.
    pub extent: usize,
    /// The generation the owner was at when the copy converged.
    pub generation: Generation,
}

/// `POST /v1/replica-failed`: a primary's write to a copy failed (docs/replication.md,
/// "Failure"). Answered with the current map, in which that copy is `stale`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaFailedRequest {
    /// The sender: the extent's primary.
    pub primary: String,
    /// Volume name.
    pub volume: String,
    /// Extent index.
    pub extent: usize,
    /// The server of the copy whose write failed.
    pub server: String,
    /// The sender's generation when the write failed.
    pub generation: Generation,
}

/// `POST /v1/copies-diverged`: the sender, the extent's primary at `generation`, lost the role
/// while a write it had applied to its own copy was failing (a forward refused by a copy on a
/// newer map): the copies of the extent may differ on blocks whose last write failed
/// (docs/replication.md, "A primary that loses the role mid-write"). Answered with the current
/// map, in which every `in_sync` copy but the primary's is `rebuilding` (rebuilt whole).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CopiesDivergedRequest {
    /// The sender: a server holding a copy of the extent.
    pub server: String,
    /// Volume name.
    pub volume: String,
    /// Extent index.
    pub extent: usize,
    /// The sender's generation when the write failed.
    pub generation: Generation,
}

/// `POST /v1/rebuild-done`: the primary copied every block a `rebuilding` copy missed
/// (docs/replication.md, "Rebuild"). Answered with the current map, in which that copy is
/// `in_sync`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RebuildDoneRequest {
    /// The sender: the extent's primary.
    pub primary: String,
    /// Volume name.
    pub volume: String,
    /// Extent index.
    pub extent: usize,
    /// The server of the rebuilt copy.
    pub server: String,
    /// The sender's generation when the rebuild finished.
    pub generation: Generation,
}

/// `POST /v1/rebuild-progress`: how far the primary is with rebuilding a copy (sent about once
/// a second while a rebuild runs; kept in the manager's memory for [`Status`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RebuildProgressRequest {
    /// The sender: the extent's primary.
    pub primary: String,
    /// Volume name.
    pub volume: String,
    /// Extent index.
    pub extent: usize,
    /// The server of the copy being rebuilt.
    pub server: String,
    /// Bytes copied so far in this rebuild.
    pub done_bytes: u64,
    /// Bytes this rebuild copies (what the copy missed; the whole extent without a dirty map).
    pub total_bytes: u64,
}

/// `POST /v1/server-unreachable`: a server could not reach a peer (a lost connection or no
/// answer to a forwarded command). Answered with the current map, in which that peer is
/// `down` when the manager itself has had no watch stream from it for 3 s
/// (docs/replication.md, "Failover").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerUnreachableRequest {
    /// The sender.
    pub from: String,
    /// The peer it could not reach.
    pub server: String,
}

/// `POST /v1/volumes`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeRequest {
    /// Volume name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Logical block size (default 512).
    #[serde(default)]
    pub block_size: Option<u32>,
    /// Extent size in bytes (default 64 MiB).
    #[serde(default)]
    pub extent_size: Option<u64>,
    /// Replicas per extent (default 1).
    #[serde(default)]
    pub replicas: Option<u32>,
    /// Subsystem NQN; created when absent from the map (then `hosts` is required).
    pub subsystem: String,
    /// NSID (default: the lowest free one in the subsystem).
    #[serde(default)]
    pub nsid: Option<u32>,
    /// Host policy of a new subsystem; for an existing one it must be absent or equal.
    #[serde(default)]
    pub hosts: Option<HostPolicy>,
}

/// `POST /v1/volumes/{name}/resize`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeRequest {
    /// New size in bytes (grow only).
    pub size: u64,
}

/// `POST /v1/volumes/{name}/clear-lost`: clear the `lost` mark of one extent, or of every
/// extent of the volume when `extent` is absent (docs/replication.md, "The last copy").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClearLostRequest {
    /// Extent index; absent: every extent of the volume.
    #[serde(default)]
    pub extent: Option<usize>,
}

/// `POST /v1/servers`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AddServerRequest {
    /// Server id.
    pub id: String,
    /// Host-facing portal.
    pub portal: SocketAddr,
    /// Internal portal.
    pub internal: SocketAddr,
    /// Pool size in bytes.
    pub pool_bytes: u64,
    /// Failure domain (`--rack`; absent: the server is a domain of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
}

/// `POST /v1/extents/move`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// Volume name.
    pub volume: String,
    /// Extent index.
    pub extent: usize,
    /// Destination server id.
    pub to: String,
    /// The server whose copy the move replaces (docs/replication.md, "Moving a copy"):
    /// required for a volume with several copies (its copy there leaves the extent once the
    /// copy on `to` is rebuilt); for a volume with one copy, optional and then the owner.
    /// Absent in requests of older clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Status {
    /// Newest durable generation (being published, or committed).
    pub generation: Generation,
    /// Newest committed generation (what clients have).
    pub committed: Generation,
    /// Newest generation whose phase 1a is done (what servers fetch).
    pub servers_generation: Generation,
    /// Per server.
    pub servers: Vec<ServerStatus>,
    /// Mismatch reports received, by kind.
    pub reports: ReportCounts,
    /// Extents being moved.
    pub moves: Vec<MoveStatus>,
    /// The publication in progress, if any.
    pub publishing: Option<PublishStatus>,
    /// Copies marked `stale` in the newest map (they take no writes until rebuilt).
    #[serde(default)]
    pub stale_replicas: Vec<StaleReplica>,
    /// Copies marked `rebuilding` in the newest map, with the primary's last progress report.
    #[serde(default)]
    pub rebuilding_replicas: Vec<RebuildingReplica>,
    /// Extents marked `lost` in the newest map (their reads fail until an operator clears
    /// the mark: `POST /v1/volumes/{name}/clear-lost`).
    #[serde(default)]
    pub lost_extents: Vec<LostExtent>,
}

/// One extent marked `lost` in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct LostExtent {
    /// Volume name.
    pub volume: String,
    /// Extent index.
    pub extent: usize,
}

/// One `rebuilding` copy in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RebuildingReplica {
    /// Volume name.
    pub volume: String,
    /// Extent index.
    pub extent: usize,
    /// The copy's server.
    pub server: String,
    /// The extent's primary (which copies it), if it has one.
    pub primary: Option<String>,
    /// Bytes copied so far (`None`: no progress report yet).
    pub done_bytes: Option<u64>,
    /// Bytes to copy in this rebuild (`None`: no progress report yet).
    pub total_bytes: Option<u64>,
}

/// One `stale` copy in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct StaleReplica {
    /// Volume name.
    pub volume: String,
    /// Extent index.
    pub extent: usize,
    /// The copy's server.
    pub server: String,
}

/// One server in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ServerStatus {
    /// Server id.
    pub id: String,
    /// Newest generation it acked (0: none yet).
    pub acked: Generation,
    /// Its state in the newest map.
    pub state: ServerState,
    /// It missed the phase-1b deadline of a publication and has not acked since.
    pub late: bool,
}

/// Counters of `POST /v1/report`, summed over `count`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct ReportCounts {
    /// Stale-stamp reports.
    pub stale: u64,
    /// Server-behind reports.
    pub behind: u64,
    /// Unstamped-command reports.
    pub unstamped: u64,
}

/// One move in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct MoveStatus {
    /// Volume name.
    pub volume: String,
    /// Extent index.
    pub extent: usize,
    /// Current owner.
    pub from: String,
    /// Destination.
    pub to: String,
    /// A copy of a replicated extent being moved (add, rebuild, drop: `from`'s copy leaves
    /// once the copy on `to` is rebuilt), not a copy-then-switch. Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub copy: bool,
}

/// The publication in progress, in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct PublishStatus {
    /// Its generation.
    pub generation: Generation,
    /// `1a` or `1b`.
    pub phase: String,
    /// Servers whose ack is awaited.
    pub waiting: Vec<String>,
    /// Durable maps queued behind it.
    pub queued: usize,
}

/// The body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ErrorBody {
    /// What went wrong, specifically.
    pub error: String,
    /// The generation of the manager's newest map when it refused a change against that map
    /// (a planner's refusal, e.g. a rebuild-done report answered 409): every change the
    /// manager accepted before the refusal is in that generation or an older one. Absent on
    /// other errors, and from managers that predate it (readers treat it as unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// `POST /v1/servers/{id}/state`: set a server's state (e.g. `up` again after the manager marked
/// it `down`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerStateRequest {
    /// `up`, `draining` or `down`.
    pub state: ServerState,
}

/// The body of answers that carry nothing (`{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Empty {}
