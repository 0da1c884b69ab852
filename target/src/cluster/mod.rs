//! Cluster mode: a storage server driven by the management service's map
//! (docs/cluster-protocol.md).
//!
//! `start` fetches the first map before serving anything, opens the pool, exports every
//! volume's subsystem on the host portal (namespaces are [`routed::RoutedVolume`]s) and the
//! internal subsystem (the pool, stamps required) on the internal portal, then follows the
//! manager's watch stream: each new generation is installed (fencing and final-copying extents
//! this server loses, phase 1a) and acknowledged. What to do, step by step, is decided by the
//! sans-I/O node (`node.rs`, `node/`: the install, the copiers, the retries); this code
//! carries out its actions.

pub mod gate;
pub mod generation;
pub mod lease;
pub mod mover;
pub mod node;
pub mod peers;
pub mod pool;
pub mod rebuild;
pub mod replica;
pub mod routed;

/// Unit tests of a moved copy of a replicated extent on the target (docs/replication.md,
/// "Moving a copy").
#[cfg(test)]
mod copy_move_tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use manager::api::{ReportKind, ReportRequest, Role};
use manager::client::Client;
use manager::map::ClusterMap;

use crate::cluster::generation::{MismatchKind, MismatchReport, REPORT_QUEUE_MAX};
pub use crate::controller::auth::ClusterSecrets;
use crate::server::{Target, TargetOptions};
use crate::subsystem::namespace::Namespace;
use crate::subsystem::{HostPolicy, NamespaceMap, Registry, Subsystem, lock};
use peers::{INTERNAL_BLOCK, INTERNAL_NSID, Peers, internal_nqn, server_hostnqn};
use pool::{PoolVolume, TrackedPool};
use routed::RoutedVolume;

/// How long a starting server keeps asking for its first map.
pub const FIRST_MAP_WAIT: Duration = Duration::from_secs(30);
/// Mismatch reports sent to the manager per second at most (docs/cluster-protocol.md: rate-limited).
pub const REPORTS_PER_SECOND: u32 = 10;

/// The fencing rule on internal connections (docs/cluster-protocol.md, "Fencing"): the
/// daemon's side of [`node::Ownership::admit`], rebuilt at every install.
pub struct Admission {
    ownership: ArcSwap<node::Ownership>,
    /// The watch loop's machine (`node::watch::Watch`), with the fence: whether the server
    /// has installed the current map since it started (a restart from an older persisted map
    /// catches up first) and since it was last frozen. Locked briefly, never across an await,
    /// and not on the I/O path (which reads `ownership`); the ownership view changes under it.
    watch: std::sync::Mutex<node::watch::Watch>,
    /// The heartbeat's last tick, in ms since `started` (a frozen process misses ticks).
    last_tick: AtomicU64,
    started: std::time::Instant,
    /// Where replica writes refused as stale go ([`Admission::refused_stale`]): a task of the
    /// node decides whether to report copies-diverged (`replica::refused_stale`).
    stale_copy_writes: std::sync::OnceLock<tokio::sync::mpsc::Sender<replica::StaleCopyWrite>>,
}

impl Admission {
    fn new(map: &ClusterMap, me: &str, watch: node::watch::Watch) -> Self {
        Self {
            ownership: ArcSwap::from_pointee(node::Ownership::new(map, me, watch.caught_up())),
            watch: std::sync::Mutex::new(watch),
            last_tick: AtomicU64::new(0),
            started: std::time::Instant::now(),
            stale_copy_writes: std::sync::OnceLock::new(),
        }
    }

    /// An internal command was refused because its stamp is older than this server's map
    /// (80h). A replica write (namespace [`node::REPLICA_NSID`]) is handed to the node
    /// (`replica::refused_stale`), which may report copies-diverged: its sender may have lost
    /// the primary role with the write on other copies already (docs/replication.md, "A primary
    /// that loses the role mid-write"). Never waits: the refusal is answered at once (a full
    /// queue drops it).
    pub fn refused_stale(
        &self,
        stamp: u64,
        hostnqn: &str,
        cmd: &codec::nvme::cmd::IoCommand,
        data: &[u8],
    ) {
        use codec::nvme::cmd::IoCommand;
        if cmd.nsid() != node::REPLICA_NSID {
            return;
        }
        let Some(tx) = self.stale_copy_writes.get() else {
            return;
        };
        let slba = match cmd {
            IoCommand::Write(rw) => rw.slba,
            IoCommand::WriteZeroes(wz) => wz.slba,
            // The first range (bytes 8..16 of each 16-byte range): all lie in one extent.
            IoCommand::DatasetManagement(_) => match data.get(8..16) {
                Some(b) => {
                    let mut slba = [0u8; 8];
                    slba.copy_from_slice(b);
                    u64::from_le_bytes(slba)
                }
                None => return,
            },
            _ => return,
        };
        let sender = hostnqn
            .strip_prefix(peers::SERVER_HOSTNQN_PREFIX)
            .unwrap_or("");
        if sender.is_empty() {
            return;
        }
        let _ = tx.try_send(replica::StaleCopyWrite {
            sender: sender.to_owned(),
            offset: slba.saturating_mul(u64::from(INTERNAL_BLOCK)),
            stamp,
        });
    }

    /// Feeds the watch loop one event (`map`: the installed map); a thaw serves again at once.
    fn feed(&self, ev: node::watch::Event, map: &ClusterMap, me: &str) -> Vec<node::watch::Action> {
        let mut w = lock(&self.watch);
        let actions = w.on(ev);
        if actions.contains(&node::watch::Action::Thaw) {
            self.ownership
                .store(Arc::new(node::Ownership::new(map, me, true)));
        }
        actions
    }

    /// A map was installed: the fencing view follows it (still not serving while fenced).
    fn installed(&self, map: &ClusterMap, me: &str) {
        let mut w = lock(&self.watch);
        w.installed(map.generation);
        self.ownership
            .store(Arc::new(node::Ownership::new(map, me, w.caught_up())));
    }

    /// The process was frozen: serve nothing until the current map has been fetched (and
    /// installed if newer).
    fn freeze(&self, map: &ClusterMap, me: &str) {
        let mut w = lock(&self.watch);
        w.freeze();
        self.ownership
            .store(Arc::new(node::Ownership::new(map, me, false)));
    }

    /// An install of generation `g` was postponed: the watch loop's timers to set.
    fn postpone(&self, g: u64) -> Vec<node::watch::Action> {
        lock(&self.watch).postpone(g)
    }

    /// Lifts the fence if `map` (installed) is at least the map fetched after the latest
    /// fence (`Watch::try_thaw`). A fetch older than the latest fence lifts nothing.
    fn try_thaw(&self, map: &ClusterMap, me: &str) -> bool {
        let mut w = lock(&self.watch);
        let thawed = w.try_thaw(map.generation);
        if thawed {
            self.ownership
                .store(Arc::new(node::Ownership::new(map, me, true)));
        }
        thawed
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The heartbeat: true when the clock jumped since the last tick (the process was frozen).
    fn tick(&self) -> bool {
        let now = self.now_ms();
        let last = self.last_tick.swap(now, Ordering::AcqRel);
        node::frozen(last, now)
    }

    /// A command that runs before the heartbeat noticed a freeze is refused too.
    fn frozen_now(&self) -> bool {
        node::frozen(self.last_tick.load(Ordering::Acquire), self.now_ms())
    }

    /// The fencing view of the installed map (for the primary's fan-out and local reads).
    pub fn ownership(&self) -> Arc<node::Ownership> {
        self.ownership.load_full()
    }

    /// Whether this server serves extents and writes to peers now.
    pub fn serving(&self) -> bool {
        self.ownership.load().serving() && !self.frozen_now()
    }

    fn caught_up(&self) -> bool {
        lock(&self.watch).caught_up()
    }

    /// Checks an internal command stamped `stamp` (the stamp already passed) from the peer
    /// `hostnqn`.
    pub fn check(
        &self,
        stamp: u64,
        hostnqn: &str,
        cmd: &codec::nvme::cmd::IoCommand,
        data: &[u8],
    ) -> Result<(), node::Refusal> {
        use codec::nvme::cmd::IoCommand;
        let sender = hostnqn
            .strip_prefix(peers::SERVER_HOSTNQN_PREFIX)
            .unwrap_or("");
        let via = match cmd.nsid() {
            node::COPY_NSID => node::Via::Copy,
            node::REPLICA_NSID => node::Via::Replica,
            _ => node::Via::Routed,
        };
        let block = u64::from(INTERNAL_BLOCK);
        let write = !matches!(
            cmd,
            IoCommand::Read(_) | IoCommand::Compare(_) | IoCommand::Verify(_) | IoCommand::Flush(_)
        );
        if self.frozen_now() {
            return Err(node::Refusal::NotServing);
        }
        // A forwarded write past its expiry is not started: its sender gave it up (its host
        // got a retryable path error and may have written the blocks again since).
        if write && node::expired(cmd.expires(), wall_clock_ms()) {
            tracing::warn!(
                sender,
                expires = cmd.expires(),
                "forwarded write refused: it expired before it could start (if this repeats, \
                 check that the servers' clocks agree)"
            );
            return Err(node::Refusal::Expired);
        }
        let own = self.ownership.load();
        let admit = |slba: u64, nlb: u64| {
            let range = (slba.saturating_mul(block), nlb.saturating_mul(block));
            own.admit_stamped(stamp, sender, via, range, write)
                .inspect_err(|why| {
                    tracing::debug!(sender, ?via, ?why, slba, nlb, "internal command refused");
                })
        };
        match cmd {
            IoCommand::Read(rw)
            | IoCommand::Write(rw)
            | IoCommand::Compare(rw)
            | IoCommand::Verify(rw) => admit(rw.slba, u64::from(rw.nlb)),
            IoCommand::WriteZeroes(wz) => admit(wz.slba, u64::from(wz.nlb)),
            IoCommand::WriteUncorrectable(_) => admit(0, u64::MAX / block),
            // Each range: NLB in bytes 4..8, SLBA in bytes 8..16 (little endian).
            IoCommand::DatasetManagement(_) => data.chunks_exact(16).try_for_each(|r| {
                let nlb = u32::from_le_bytes([r[4], r[5], r[6], r[7]]);
                let mut slba = [0u8; 8];
                slba.copy_from_slice(&r[8..16]);
                admit(u64::from_le_bytes(slba), u64::from(nlb))
            }),
            IoCommand::Flush(_) => admit(0, 0),
        }
    }
}

/// CLOCK_REALTIME in milliseconds: what forwarded commands' expiries are measured in.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The completion of a refused internal command: a server that is not serving answers
/// "server behind" (retryable: the sender retries, then its host gets a path error); a peer
/// that may not touch the range gets Access Denied (DNR).
pub fn refusal_completion(why: node::Refusal) -> crate::controller::exec::Completion {
    use codec::nvme::Status;
    let status = match why {
        node::Refusal::NotServing | node::Refusal::Expired => {
            Status::SERVER_BEHIND.with_crd(generation::SERVER_BEHIND_CRD)
        }
        node::Refusal::SenderFenced
        | node::Refusal::NotOwner
        | node::Refusal::NotSource
        | node::Refusal::NotPrimary => Status::ACCESS_DENIED.with_dnr(),
    };
    crate::controller::exec::Completion {
        status,
        ..crate::controller::exec::Completion::default()
    }
}

/// The pool backend kind (its size comes from the map).
#[derive(Debug, Clone)]
pub enum PoolSpec {
    Ram,
    Null,
    File(std::path::PathBuf),
    /// A block device with a pool label (its identity) in its last 64 KiB.
    Block(std::path::PathBuf),
    /// A block device used without a label (no identity): a pool from before labels that uses
    /// the whole device (`block-unlabeled:PATH`).
    BlockUnlabeled(std::path::PathBuf),
}

impl std::str::FromStr for PoolSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "ram" => Ok(Self::Ram),
            None if s == "null" => Ok(Self::Null),
            Some(("file", p)) => Ok(Self::File(p.into())),
            Some(("block", p)) => Ok(Self::Block(p.into())),
            Some(("block-unlabeled", p)) => Ok(Self::BlockUnlabeled(p.into())),
            _ => Err(format!(
                "pool `{s}`: expected ram, null, file:PATH, block:PATH or block-unlabeled:PATH"
            )),
        }
    }
}

/// State shared by the routing volumes, the watcher and the movers of one server.
pub struct NodeShared {
    pub me: String,
    pub map: ArcSwap<ClusterMap>,
    pub pool: PoolVolume,
    pub peers: Peers,
    pub registry: Arc<Registry>,
    pub client: Client,
    /// Wakes the watcher to fetch the map now (a peer answered "stale map").
    pub refresh: tokio::sync::Notify,
    /// Routed pieces retried after a generation mismatch (figures for tests).
    pub stale_retries: AtomicU64,
    pub movers: mover::Movers,
    /// Where the installed map is persisted (durable pools only).
    pub state: Option<std::path::PathBuf>,
    /// The fencing rule on internal connections, and whether this server serves.
    pub admission: Arc<Admission>,
    /// Deadline of a forwarded command, in ms ([`routed::FORWARD_TIMEOUT`] by default).
    forward_timeout_ms: AtomicU64,
    /// Per-server DH-HMAC-CHAP secrets of internal connections (docs/authentication.md).
    pub dhchap: Option<ClusterSecrets>,
    /// Ranges of the pool held by replicated writes in flight (this server as primary).
    pub replica_locks: replica::RangeLocks,
    /// Failed copies reported to the manager (deduplicated, rate-limited).
    pub replica_reports: replica::Reports,
    /// Dirty maps of copies out of the write set, and the rebuild rate (this server as primary).
    pub rebuilds: rebuild::Rebuilds,
    /// The read lease from the manager (docs/replication.md, "Read leases").
    pub lease: lease::Lease,
    /// The map an install that closes the gate is installing, until it is installed: a
    /// write waiting for a newer map looks at it (its own gate holds that map back).
    pub installing: arc_swap::ArcSwapOption<ClusterMap>,
}

impl NodeShared {
    /// How long a forwarded command may take before the host gets a retryable path error.
    pub fn forward_timeout(&self) -> Duration {
        Duration::from_millis(self.forward_timeout_ms.load(Ordering::Relaxed))
    }

    /// Sets it (`tessera-target --forward-timeout`); at least 1 ms.
    pub fn set_forward_timeout(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        self.forward_timeout_ms.store(ms, Ordering::Relaxed);
    }
}

/// A running cluster storage server.
pub struct Node {
    pub target: Target,
    pub shared: Arc<NodeShared>,
}

#[derive(Debug)]
pub struct NodeError(pub String);

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NodeError {}

/// Starts a storage server `server_id` of the cluster managed at `manager`, keeping a labeled
/// block pool's installed map in `state_dir` (other pools ignore it), presenting
/// `credential` (the token of its credential file) on every control API call, and
/// authenticating internal connections with `dhchap` (DH-HMAC-CHAP, per-server secrets;
/// without it the internal portal must be a loopback address).
pub async fn start(
    manager: &str,
    credential: Option<String>,
    server_id: &str,
    pool_spec: &PoolSpec,
    state_dir: &std::path::Path,
    opts: TargetOptions,
    dhchap: Option<ClusterSecrets>,
) -> Result<Node, NodeError> {
    // The pool's identity (docs/replication.md, "A server whose data is gone"): a fresh pool
    // (RAM at every start, a file pool whose file does not exist yet, a block device without a
    // valid label) gets a new one, and the manager, seeing it differ from the one it recorded,
    // marks this server's copies stale before answering. A block pool's is in its label.
    let block = match pool_spec {
        PoolSpec::Block(p) | PoolSpec::BlockUnlabeled(p) => Some(
            hw::BlockBackend::open(p)
                .map_err(|e| NodeError(format!("cannot open the pool: {e}")))?,
        ),
        _ => None,
    };
    // Where a labeled block pool's label is (the end of the device as opened).
    let label_at = match (pool_spec, &block) {
        (PoolSpec::Block(_), Some(dev)) => pool::label_offset(hw::Backend::len_bytes(dev)),
        _ => None,
    };
    let (mut pool_id, mut fresh) = match (pool_spec, &block) {
        (PoolSpec::Ram | PoolSpec::Null, _) => {
            (Some(pool::draw_pool_id().map_err(NodeError)?), true)
        }
        (PoolSpec::File(p), _) => {
            let (id, fresh) = pool::file_pool_id(p).map_err(NodeError)?;
            (Some(id), fresh)
        }
        (PoolSpec::Block(p), Some(dev)) => match block_label(p, dev)? {
            Some(id) => (Some(id), false),
            // Labeled below, once the map says how large the pool is.
            None => (None, false),
        },
        _ => (None, false),
    };
    let client = match credential {
        Some(token) => Client::with_credential(manager, token),
        None => Client::new(manager),
    };
    let role = Role::Server(server_id.to_string());
    let deadline = tokio::time::Instant::now() + FIRST_MAP_WAIT;
    if let (PoolSpec::Block(p), Some(dev), None) = (pool_spec, &block, pool_id) {
        // A block device without a valid label: a new identity, written in the label before
        // any manager sees it (a crash between the two leaves the label, never an identity the
        // manager has but the device has not). The label goes past the map's pool size only,
        // which the map fetched without an identity (as older servers do) tells.
        let map = first_map(&client, &role, server_id, None, manager, deadline).await?;
        let pool_bytes = map
            .server(server_id)
            .ok_or_else(|| NodeError(format!("server id `{server_id}` is not in the cluster map")))?
            .pool_bytes;
        pool::check_label_room(dev, pool_bytes).map_err(|e| {
            NodeError(format!(
                "block pool {} has no pool label, and {e}: nothing was written. A pool from \
                 before pool labels that uses the device up to its end runs without a label \
                 (and without a pool identity) with --pool block-unlabeled:{} \
                 (docs/cluster.md)",
                p.display(),
                p.display()
            ))
        })?;
        // The device may have grown: the label of the identity the map records for this
        // server is then where the last start saw it, no longer at the end. It moves to the
        // end (written before anything else, the old one left in place: the pool never
        // reaches either), and the identity, with the data, is kept.
        let recorded = map.server(server_id).and_then(|e| e.pool);
        let grown = recorded.and_then(|id| {
            let at = pool::read_label_hint(state_dir, id)?;
            pool::label_found_at(dev, at, id).then_some((id, at))
        });
        let (id, moved_from) = match grown {
            Some((id, at)) => (id, Some(at)),
            None => (pool::draw_pool_id().map_err(NodeError)?, None),
        };
        pool::write_block_label(dev, id, pool_bytes)
            .map_err(|e| NodeError(format!("block pool {}: {e}", p.display())))?;
        if let Some(at) = moved_from {
            tracing::warn!(path = %p.display(), pool = %id, from = at,
                to = pool::label_offset(hw::Backend::len_bytes(dev)),
                "block pool device grew: its label moved to the new end, identity kept");
        } else {
            tracing::warn!(path = %p.display(), pool = %id,
                "block pool without a label: labeled with a new pool identity");
            fresh = true;
        }
        pool_id = Some(id);
    }
    let client = match pool_id {
        Some(id) => client.with_pool(id),
        None => client,
    };
    if let Some(id) = pool_id {
        tracing::info!(pool = %id, fresh, "pool identity");
    }
    let map = first_map(&client, &role, server_id, pool_id, manager, deadline).await?;
    let entry = map
        .server(server_id)
        .ok_or_else(|| NodeError(format!("server id `{server_id}` is not in the cluster map")))?
        .clone();
    if dhchap.is_none() && !entry.internal.ip().is_loopback() {
        return Err(NodeError(format!(
            "internal portal {} is not a loopback address: start with --dhchap-dir so that \
             internal connections are authenticated",
            entry.internal
        )));
    }
    let backend: Arc<dyn hw::Backend> = if let Some(mut dev) = block {
        let path = dev.path().display().to_string();
        let room = match pool_spec {
            // The pool never reaches the label (past the map's pool size).
            PoolSpec::Block(_) => pool::check_label_room(&dev, entry.pool_bytes)
                .map_err(|e| NodeError(format!("block pool {path}: {e}")))?,
            _ => hw::Backend::len_bytes(&dev),
        };
        if entry.pool_bytes > room {
            return Err(NodeError(format!(
                "block pool {path}: the map's pool size for this server is {} bytes, the \
                 device has {room}",
                entry.pool_bytes
            )));
        }
        dev.limit_len(room);
        Arc::new(dev)
    } else {
        let spec = match pool_spec {
            PoolSpec::Ram => hw::BackendSpec::Ram {
                size: entry.pool_bytes,
                preallocate: false,
            },
            PoolSpec::Null => hw::BackendSpec::Null {
                size: entry.pool_bytes,
            },
            PoolSpec::File(p) => hw::BackendSpec::File {
                path: p.clone(),
                size: Some(entry.pool_bytes),
                create: true,
            },
            PoolSpec::Block(p) | PoolSpec::BlockUnlabeled(p) => {
                hw::BackendSpec::Block { path: p.clone() }
            }
        };
        hw::open(&spec).map_err(|e| NodeError(format!("cannot open the pool: {e}")))?
    };
    let pool = PoolVolume(Arc::new(TrackedPool::new(backend)));
    if let (PoolSpec::File(p), Some(id)) = (pool_spec, pool_id) {
        pool::write_pool_id(p, id).map_err(|e| {
            NodeError(format!(
                "cannot write the pool identity {}: {e}",
                pool::pool_id_path(p).display()
            ))
        })?;
    }

    // A durable pool keeps the map this server last installed beside it, and the server starts
    // from that map: a newer map then arrives through the normal install path, so extents lost
    // while it was down are fenced and copied (docs/cluster-protocol.md, "restarting during
    // phase 1a"). A RAM pool starts empty: the fetched map is all there is.
    // It serves nothing and writes to no peer until it has installed the fetched map (the
    // catch-up install: docs/cluster-protocol.md, "Fencing").
    // A fresh pool holds none of the data the persisted map places on it: that map is dropped.
    let state = state_path(pool_spec, state_dir, pool_id)?;
    if let (Some(at), Some(id)) = (label_at, pool_id)
        && let Err(e) = pool::write_label_hint(state_dir, id, at)
    {
        tracing::warn!(dir = %state_dir.display(), error = %e,
            "cannot record where the pool label is (a grown device would get a new identity)");
    }
    if fresh && let Some(path) = &state {
        match std::fs::remove_file(path) {
            Ok(()) => tracing::warn!(path = %path.display(),
                "fresh pool: dropping the map persisted for the pool that was here"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(NodeError(format!(
                    "fresh pool: cannot remove the stale map state file {}: {e}",
                    path.display()
                )));
            }
        }
    }
    let persisted = if fresh {
        None
    } else {
        state.as_deref().and_then(load_state)
    };
    let boot = node::boot(persisted, map, server_id);
    if let Some(current) = &boot.catch_up {
        tracing::info!(
            persisted = boot.map.generation,
            current = current.generation,
            "starting from the persisted map; not serving until the current map is installed"
        );
    }
    // The watch loop: fenced until the catch-up install, if any, is done.
    let watcher = node::watch::Watch::new(boot.catch_up.map(Arc::new));
    let map = boot.map;

    let internal = Subsystem::with_cntlid_range(
        internal_nqn(server_id),
        yaml::derived_serial(&internal_nqn(server_id)),
        "Tessera internal".to_string(),
        HostPolicy::Only(map.servers.iter().map(|s| server_hostnqn(&s.id)).collect()),
        NamespaceMap::new(),
        entry.cntlid_min,
        entry.cntlid_max,
    )
    .into_internal();
    // The same pool under a second namespace for copies of moving extents (the source rule).
    let copy_ns = Namespace::new(
        node::COPY_NSID,
        INTERNAL_BLOCK,
        uuid_of(&format!("{}:copy", internal_nqn(server_id))),
        uuid_of(&format!("{}:copy", internal_nqn(server_id))),
        Arc::new(pool.clone()),
    );
    // (Namespaces 1 and 3 are added once the node's shared state exists, below.)
    internal.set_namespaces(BTreeMap::from([(node::COPY_NSID, Arc::new(copy_ns))]));
    if let Some(s) = &dhchap {
        internal.set_auth(s.policy(map.servers.iter().map(|s| s.id.as_str()), server_hostnqn));
    }
    let registry = Arc::new(Registry::new_cluster(vec![internal], map.generation));
    // The internal portal serves the internal subsystem only, and discovery never lists it.
    registry.add_internal_portal(entry.internal);
    // Only a cluster node waits for a newer map (its manager will push it); a standalone
    // target never does (generation.rs).
    registry
        .generation
        .set_behind_wait(crate::controller::io::BEHIND_WAIT);
    let admission = Arc::new(Admission::new(&map, server_id, watcher));
    let _ = registry.admission.set(Arc::clone(&admission));
    let (report_tx, report_rx) = tokio::sync::mpsc::channel(REPORT_QUEUE_MAX);
    registry.generation.set_reporter(report_tx);
    let (stale_tx, stale_rx) = tokio::sync::mpsc::channel(REPORT_QUEUE_MAX);
    let _ = admission.stale_copy_writes.set(stale_tx);

    let shared = Arc::new(NodeShared {
        me: server_id.to_string(),
        map: ArcSwap::from_pointee(map.clone()),
        pool,
        peers: Peers::new(server_id).with_dhchap(dhchap.clone()),
        registry: Arc::clone(&registry),
        client: client.clone(),
        refresh: tokio::sync::Notify::new(),
        stale_retries: AtomicU64::new(0),
        movers: mover::Movers::default(),
        state,
        admission,
        forward_timeout_ms: AtomicU64::new(
            u64::try_from(routed::FORWARD_TIMEOUT.as_millis()).unwrap_or(5_000),
        ),
        dhchap,
        replica_locks: replica::RangeLocks::default(),
        replica_reports: replica::Reports::default(),
        rebuilds: rebuild::Rebuilds::default(),
        lease: lease::Lease::default(),
        installing: arc_swap::ArcSwapOption::empty(),
    });
    // Copies out of the write set in the first map: this process has no record of what they
    // missed (a rebuild copies their whole extent).
    rebuild::reconcile(&shared, None, &map);
    // Namespace 1, the pool for routed commands: writes to extents this server is the primary
    // of reach every copy; the copies take them on namespace 3, under the primary rule
    // (docs/replication.md). Both are in place before the portals open.
    if let Some(internal) = shared.registry.subsystem(&internal_nqn(server_id)) {
        let mut namespaces = internal.namespaces().as_ref().clone();
        let replicated = Namespace::new(
            INTERNAL_NSID,
            INTERNAL_BLOCK,
            uuid_of(&internal_nqn(server_id)),
            uuid_of(&internal_nqn(server_id)),
            Arc::new(replica::FanoutPool::new(&shared)),
        );
        let replica_ns = Namespace::new(
            node::REPLICA_NSID,
            INTERNAL_BLOCK,
            uuid_of(&format!("{}:replica", internal_nqn(server_id))),
            uuid_of(&format!("{}:replica", internal_nqn(server_id))),
            Arc::new(shared.pool.clone()),
        );
        namespaces.insert(INTERNAL_NSID, Arc::new(replicated));
        namespaces.insert(node::REPLICA_NSID, Arc::new(replica_ns));
        internal.set_namespaces(namespaces);
    }
    sync_subsystems(&shared, &map);
    let target = Target::start_with(registry, &[entry.portal, entry.internal], opts)
        .await
        .map_err(|e| NodeError(e.to_string()))?;
    mover::sync(&shared, &map);
    persist(&shared, &map).await;
    if let Err(e) = client.ack(server_id, map.generation).await {
        tracing::warn!(error = %e, "first ack failed");
    }
    tokio::spawn(watch(Arc::clone(&shared)));
    tokio::spawn(heartbeat(Arc::clone(&shared)));
    tokio::spawn(lease::renew(Arc::clone(&shared)));
    tokio::spawn(report(Arc::clone(&shared), report_rx));
    tokio::spawn(replica::stale_copy_writes(
        Arc::downgrade(&shared),
        stale_rx,
    ));
    tokio::spawn(rebuild::supervise(Arc::downgrade(&shared)));
    tracing::info!(
        server = server_id,
        generation = map.generation,
        "cluster storage server up"
    );
    Ok(Node { target, shared })
}

/// A stable 16-byte id from a name (for the internal namespace's NGUID/UUID).
fn uuid_of(name: &str) -> [u8; 16] {
    yaml::derived_namespace_id(name, INTERNAL_NSID)
}

/// Makes the registry's subsystems and namespaces match `map`; tells controllers about
/// namespaces that appeared, disappeared or changed size (Namespace Attribute Changed), about
/// this server's ANA state (ANA Change) and, through discovery, about servers that joined or
/// left (Discovery Log Page Change).
pub fn sync_subsystems(node: &Arc<NodeShared>, map: &ClusterMap) {
    let Some(me) = map.server(&node.me) else {
        return;
    };
    let reg = &node.registry;
    let paths = crate::subsystem::paths::from_map(map, &node.me);
    if let Some(internal) = reg.subsystem(&internal_nqn(&node.me)) {
        internal.set_hosts(HostPolicy::Only(
            map.servers.iter().map(|s| server_hostnqn(&s.id)).collect(),
        ));
        if let Some(s) = &node.dhchap {
            internal.set_auth(s.policy(map.servers.iter().map(|s| s.id.as_str()), server_hostnqn));
        }
    }
    for sub in &map.subsystems {
        let hosts = sub.hosts.clone();
        let s = match reg.subsystem(&sub.nqn) {
            Some(s) => {
                s.set_hosts(hosts);
                s
            }
            None => {
                let s = Arc::new(Subsystem::with_cntlid_range(
                    sub.nqn.clone(),
                    yaml::derived_serial(&sub.nqn),
                    "Tessera".to_string(),
                    hosts,
                    NamespaceMap::new(),
                    me.cntlid_min,
                    me.cntlid_max,
                ));
                reg.add_subsystem(Arc::clone(&s));
                s
            }
        };
        let old = s.namespaces();
        let mut next = NamespaceMap::new();
        for vol in map.namespaces_of(&sub.nqn) {
            let keep = old.get(&vol.nsid).filter(|n| {
                n.volume.len_bytes() == vol.size_bytes
                    && n.block_size == vol.block_size
                    && n.nguid == vol.uuid
            });
            let ns = match keep {
                Some(n) => Arc::clone(n),
                None => Arc::new(Namespace::new(
                    vol.nsid,
                    vol.block_size,
                    vol.uuid,
                    vol.uuid,
                    Arc::new(RoutedVolume::new(
                        Arc::clone(node),
                        &vol.name,
                        vol.size_bytes,
                    )),
                )),
            };
            next.insert(vol.nsid, ns);
        }
        let changed = s.set_namespaces(next);
        if !changed.is_empty() && !old.is_empty() {
            for c in s.controllers() {
                c.namespaces_changed(&changed);
            }
        }
    }
    // After the subsystems exist, so that their controllers hear about an ANA change.
    if let Some((portid, state, portals)) = paths {
        reg.set_cluster_paths(portid, state, portals);
    }
}

/// Follows the manager's pushes for this server; installs and acknowledges each generation:
/// the shell of [`node::watch::Watch`], which decides what to do next (install a map, fetch
/// the current one, repeat the ack, retry a postponed install, serve again after a fence);
/// this carries it out, one install, fetch or re-ack at a time.
async fn watch(node: Arc<NodeShared>) {
    use node::watch::{Action, Event};
    let role = Role::Server(node.me.clone());
    let (timer_tx, mut timers) = tokio::sync::mpsc::unbounded_channel();
    let mut events = std::collections::VecDeque::from([Event::Started]);
    loop {
        let after = node.registry.generation.current();
        let mut stream = Box::pin(node.client.watch(role.clone(), after));
        loop {
            while let Some(ev) = events.pop_front() {
                let installed = node.map.load_full();
                let mut todo: std::collections::VecDeque<Action> =
                    node.admission.feed(ev, &installed, &node.me).into();
                while let Some(action) = todo.pop_front() {
                    match action {
                        Action::Install(map) => {
                            // A postponed install sets the timers of its retry.
                            todo.extend(install(&node, map).await);
                            events.push_back(Event::InstallDone);
                        }
                        Action::Fetch => {
                            let map = match node.client.map(&role).await {
                                Ok(m) => Some(Arc::new(m)),
                                Err(e) => {
                                    if !node.admission.caught_up() {
                                        tracing::warn!(error = %e,
                                            "fenced: cannot fetch the current map yet");
                                    }
                                    None
                                }
                            };
                            let installed = node.registry.generation.current();
                            events.push_back(Event::Fetched { map, installed });
                        }
                        Action::ReAck => {
                            // Acks are idempotent. Repeating ours covers a manager that
                            // restarted and forgot it (its publication would otherwise wait
                            // for an ack we already sent, while our watch stream, already at
                            // that generation, brings nothing new).
                            let g = node.registry.generation.current();
                            let _ = node.client.ack(&node.me, g).await;
                            events.push_back(Event::ReAcked);
                        }
                        Action::After { ms, timer } => {
                            let tx = timer_tx.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                                let _ = tx.send(timer);
                            });
                        }
                        Action::Thaw => {
                            // (Serving again already: `Admission::feed`.)
                            tracing::info!(
                                generation = installed.generation,
                                "map current: serving"
                            );
                            mover::sync(&node, &installed);
                        }
                    }
                }
            }
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(map)) => events.push_back(Event::Pushed(Arc::new(map))),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "watch stream error (reconnecting)");
                    }
                    None => break,
                },
                () = node.refresh.notified() => events.push_back(Event::Refresh),
                Some(t) = timers.recv() => events.push_back(Event::Timer(t)),
            }
        }
        tokio::time::sleep(Duration::from_millis(node::policy::RECONNECT_MS)).await;
    }
}

/// Lifts the fence if the installed map is at least what a fetch after the latest fence
/// brought (`node::watch::Watch::try_thaw`): serve again, and start the copiers the fence
/// held back.
fn thaw(node: &Arc<NodeShared>) -> bool {
    let current = node.map.load_full();
    let thawed = node.admission.try_thaw(&current, &node.me);
    if thawed {
        tracing::info!(generation = current.generation, "map current: serving");
        mover::sync(node, &current);
    }
    thawed
}

/// Installs `new` if it is newer (docs/cluster-protocol.md, "Publishing a change"): the shell
/// of [`node::install::Install`], which decides every step; this carries them out. Returns
/// what the watch loop must do next (the timers of a postponed install's retry).
pub async fn install(node: &Arc<NodeShared>, new: Arc<ClusterMap>) -> Vec<node::watch::Action> {
    use node::install::{Action, Event};
    let _one = node.movers.install_lock.lock().await;
    let old = node.map.load_full();
    // A server that is not serving yet (catching up after a restart) runs no I/O: its
    // install closes no gate, so nothing waits on it (docs/cluster-protocol.md, "Bounds").
    let gate = node
        .registry
        .gate
        .clone()
        .filter(|_| node.admission.caught_up());
    let Some(mut ins) = node::install::Install::start(old, new, &node.me, gate.is_some()) else {
        return Vec::new();
    };
    // Shown to writes in flight while it closes the gate, until installed (or given up).
    struct Installing<'a>(&'a NodeShared);
    impl Drop for Installing<'_> {
        fn drop(&mut self) {
            self.0.installing.store(None);
        }
    }
    let _installing = ins.closes_gate().then(|| {
        node.installing.store(Some(Arc::clone(ins.map())));
        Installing(node)
    });
    let mut then = Vec::new();
    let generation = ins.map().generation;
    let lost = ins.lost().len();
    // The region of the lost extent being finished (its copier stopped).
    let mut region: Option<Arc<pool::DirtyRegion>> = None;
    let mut event = Event::Start;
    loop {
        let mut next = None;
        for action in ins.on_event_at(event, node.admission.now_ms()) {
            match action {
                Action::CloseGate => {
                    // Phase 1a: fence the extents we lose. No I/O runs while the gate is
                    // closed; the last writes are copied to the new owner (stamped with the
                    // generation it still has), and only then does our generation move, so a
                    // stale stamp can never land on the old copy.
                    if let Some(g) = &gate {
                        g.close().await;
                    }
                    next = Some(Event::Drained);
                }
                Action::StopCopier { key, whole } => {
                    region = mover::stop_copier(node, &key, whole).await;
                    next = Some(Event::CopierStopped {
                        tracked: region.is_some(),
                    });
                }
                Action::FinalPass { key, dest } => {
                    let outcome = match &region {
                        Some(r) => mover::final_pass(node, r, &dest).await,
                        None => node::install::PassOutcome::Clean,
                    };
                    match outcome {
                        node::install::PassOutcome::Clean => {
                            tracing::info!(volume = %key.0, extent = key.1, to = %dest.server,
                                "extent switched");
                            crate::metrics::count_extent_move(crate::metrics::MoveOutcome::Done);
                        }
                        node::install::PassOutcome::NotSource => {
                            crate::metrics::count_extent_move(
                                crate::metrics::MoveOutcome::Cancelled,
                            );
                        }
                        _ => {}
                    }
                    next = Some(Event::Pass(outcome));
                }
                Action::FinalCheck { .. } => {
                    let clean = region.as_deref().is_none_or(mover::final_check);
                    next = Some(Event::Checked { clean });
                }
                Action::Untrack { .. } => {
                    if let Some(r) = region.take() {
                        mover::untrack(node, &r);
                    }
                }
                Action::Forget { key } => {
                    if let Some(r) = region.take() {
                        mover::untrack(node, &r);
                    }
                    mover::forget(node, &key);
                }
                Action::KeepTracked { key } => {
                    let dest = ins.map().owner(&key.0, key.1).cloned();
                    if let (Some(r), Some(dest)) = (region.take(), dest) {
                        mover::keep_tracked(node, key, r, dest);
                    }
                }
                Action::RetryAfter(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    next = Some(Event::Timer);
                }
                Action::Install(map) => {
                    // Dirty maps first: a write that sees the new map finds them.
                    rebuild::reconcile(node, Some(&node.map.load_full()), &map);
                    node.map.store(Arc::clone(&map));
                    sync_subsystems(node, &map);
                    node.admission.installed(&map, &node.me);
                    node.registry.generation.install(map.generation);
                    node.installing.store(None);
                }
                // Durable before the ack: a restart resumes from here (see `start`).
                Action::Persist(map) => persist(node, &map).await,
                Action::OpenGate => {
                    if let Some(g) = &gate {
                        g.open();
                    }
                }
                Action::SyncMovers => {
                    tracing::info!(generation, lost, "map installed");
                    // A fenced server whose fetch after its latest fence brought this
                    // generation (or an older one) serves again (`thaw` syncs the movers).
                    if !thaw(node) {
                        mover::sync(node, &node.map.load_full());
                    }
                }
                Action::Ack(g) => {
                    let ok = match node.client.ack(&node.me, g).await {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, generation = g, "ack failed");
                            false
                        }
                    };
                    next = Some(Event::AckDone { ok });
                }
                Action::Postpone(g) => {
                    // Not installed, not acked: we keep serving at the old generation (the
                    // lost extents stay tracked).
                    tracing::warn!(generation = g, "install postponed: final copy incomplete");
                    crate::metrics::count_extent_move(crate::metrics::MoveOutcome::Failed);
                    then.extend(node.admission.postpone(g));
                }
                Action::Done => return then,
            }
        }
        match next {
            Some(e) => event = e,
            None => {
                tracing::error!(generation, "install stopped without finishing");
                return then;
            }
        }
    }
}

/// Notices a frozen process (SIGSTOP, a stalled VM): the manager may have marked this server
/// down and switched its extents meanwhile, so it fences itself until it has fetched the
/// current map (docs/cluster-protocol.md, "Fencing").
async fn heartbeat(node: Arc<NodeShared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(node::HEARTBEAT_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let a = &node.admission;
    a.last_tick.store(a.now_ms(), Ordering::Release);
    loop {
        tick.tick().await;
        if node.admission.tick() {
            tracing::warn!("this process was frozen: serving nothing until the map is fetched");
            node.admission.freeze(&node.map.load_full(), &node.me);
            node.refresh.notify_one();
        }
    }
}

/// Sends mismatch reports to the manager, batched and rate-limited.
async fn report(node: Arc<NodeShared>, mut rx: tokio::sync::mpsc::Receiver<MismatchReport>) {
    let period = Duration::from_millis(1000 / u64::from(REPORTS_PER_SECOND));
    while let Some(first) = rx.recv().await {
        // A command stamped ahead of us: a newer map exists; fetch it now rather than wait
        // for the watch stream (which may be broken or slow).
        if first.kind == MismatchKind::Behind {
            node.refresh.notify_one();
        }
        // Gather what else arrived within one period, then send one report per kind.
        let mut batch: BTreeMap<u8, (MismatchReport, u64)> = BTreeMap::new();
        let key = |r: &MismatchReport| match r.kind {
            MismatchKind::Stale => 0u8,
            MismatchKind::Behind => 1,
            MismatchKind::Unstamped => 2,
        };
        batch.insert(key(&first), (first, 1));
        let deadline = tokio::time::Instant::now() + period;
        while let Ok(Some(r)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            let e = batch.entry(key(&r)).or_insert((r, 0));
            e.0 = r;
            e.1 += 1;
        }
        for (r, count) in batch.into_values() {
            let kind = match r.kind {
                MismatchKind::Stale => ReportKind::Stale,
                MismatchKind::Behind => ReportKind::Behind,
                MismatchKind::Unstamped => ReportKind::Unstamped,
            };
            let req = ReportRequest {
                server: node.me.clone(),
                kind,
                stamp: r.stamp,
                current: r.current,
                count,
            };
            let g = &node.registry.generation;
            match node.client.report(&req).await {
                Ok(()) => {
                    g.reports_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    g.reports_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// Whether `map` may be served by server `me` on pool `pool`: it records that pool for it, or
/// none (docs/replication.md, "A server whose data is gone").
fn pool_usable(map: &ClusterMap, me: &str, pool: Option<manager::map::PoolId>) -> bool {
    pool.is_none()
        || map
            .server(me)
            .is_none_or(|e| e.pool.is_none() || e.pool == pool)
}

/// The identity in a block pool's label; None when it has no valid label (a new disk, a pool
/// from before labels, a damaged label): it gets a new one.
fn block_label(
    path: &std::path::Path,
    dev: &hw::BlockBackend,
) -> Result<Option<manager::map::PoolId>, NodeError> {
    match pool::read_block_label(dev) {
        Ok(pool::BlockLabel::Found(id)) => Ok(Some(id)),
        Ok(pool::BlockLabel::Missing) => Ok(None),
        Ok(pool::BlockLabel::Damaged(why)) => {
            tracing::warn!(path = %path.display(), reason = %why,
                "damaged pool label: the pool gets a new identity");
            Ok(None)
        }
        Err(e) => Err(NodeError(format!("block pool {}: {e}", path.display()))),
    }
}

/// The first map, fetched with the pool identity `pool_id` if any (the client's). Nothing is
/// served from a map that records another pool for this server: in such a map its copies may
/// still be in_sync although their data is gone. (A map that records none is fine: the
/// manager records a pool before it counts on the data of a copy there.)
async fn first_map(
    client: &Client,
    role: &Role,
    server_id: &str,
    pool_id: Option<manager::map::PoolId>,
    manager: &str,
    deadline: tokio::time::Instant,
) -> Result<ClusterMap, NodeError> {
    loop {
        let error = match client.map(role).await {
            Ok(m) if pool_usable(&m, server_id, pool_id) => return Ok(m),
            Ok(m) => format!(
                "map generation {} records another pool for this server (the manager is \
                 publishing the change)",
                m.generation
            ),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(NodeError(format!(
                "no map from the manager at {manager}: {error}"
            )));
        }
        tracing::warn!(error = %error, "waiting for the manager's first map");
        tokio::time::sleep(Duration::from_millis(node::policy::BOOT_RETRY_MS)).await;
    }
}

/// For tests: the stale-retry counter.
pub fn stale_retries(node: &NodeShared) -> u64 {
    node.stale_retries.load(Ordering::Relaxed)
}

/// The state file of a durable pool: the last installed map. A file pool's is beside the pool
/// file; a labeled block pool's is `pool-<identity>.tessera-map.json` in `state_dir` (created
/// if missing; checked writable here, so a server that could not keep its map does not start).
/// Keyed by the identity, a new disk under the same server never starts from the old disk's
/// map. RAM and null pools, and `block-unlabeled:` ones (no identity), have none: they start
/// from the fetched map.
fn state_path(
    pool: &PoolSpec,
    state_dir: &std::path::Path,
    pool_id: Option<manager::map::PoolId>,
) -> Result<Option<std::path::PathBuf>, NodeError> {
    match (pool, pool_id) {
        (PoolSpec::File(p), _) => Ok(Some(std::path::PathBuf::from(format!(
            "{}.tessera-map.json",
            p.display()
        )))),
        (PoolSpec::Block(_), Some(id)) => {
            let bad = |e: std::io::Error| {
                NodeError(format!(
                    "the state directory {} (--state-dir), where a block pool keeps its \
                     installed map: {e}",
                    state_dir.display()
                ))
            };
            std::fs::create_dir_all(state_dir).map_err(bad)?;
            let probe = state_dir.join(format!(".probe-{}", std::process::id()));
            std::fs::write(&probe, b"")
                .and_then(|()| std::fs::remove_file(&probe))
                .map_err(bad)?;
            Ok(Some(state_dir.join(format!("pool-{id}.tessera-map.json"))))
        }
        _ => Ok(None),
    }
}

fn load_state(path: &std::path::Path) -> Option<ClusterMap> {
    let text = std::fs::read(path).ok()?;
    match serde_json::from_slice(&text) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable map state file");
            None
        }
    }
}

/// Writes `map` to the state file durably (temporary file, fsync, rename, fsync directory).
async fn persist(node: &NodeShared, map: &ClusterMap) {
    let Some(path) = node.state.clone() else {
        return;
    };
    let Ok(json) = serde_json::to_vec(map) else {
        return;
    };
    let r = tokio::task::spawn_blocking(move || pool::write_durably(&path, &json)).await;
    if !matches!(r, Ok(Ok(()))) {
        tracing::error!(
            generation = map.generation,
            "cannot persist the installed map"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod state_path_tests {
    use super::*;

    #[test]
    fn a_block_pools_state_file_is_named_by_its_identity_and_an_unusable_dir_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let block = PoolSpec::Block("/dev/null".into());
        let id = manager::map::PoolId(0xabc);
        let state_dir = dir.path().join("state");
        let p = state_path(&block, &state_dir, Some(id)).unwrap().unwrap();
        assert_eq!(
            p,
            state_dir.join("pool-00000000000000000000000000000abc.tessera-map.json")
        );
        assert!(state_dir.is_dir(), "the directory is created");
        assert_eq!(
            std::fs::read_dir(&state_dir).unwrap().count(),
            0,
            "probe left"
        );
        // Under a regular file: no directory can be made there; the error names the flag.
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let e = state_path(&block, &file.join("sub"), Some(id)).unwrap_err();
        assert!(
            e.0.contains("--state-dir") && e.0.contains("file/sub"),
            "{e}"
        );
        // No identity (block-unlabeled, or RAM): no state file; a file pool's is beside it.
        let unlabeled = PoolSpec::BlockUnlabeled("/dev/null".into());
        assert_eq!(state_path(&unlabeled, &file, None).unwrap(), None);
        assert_eq!(state_path(&PoolSpec::Ram, &file, Some(id)).unwrap(), None);
        let f = PoolSpec::File("/x/p.img".into());
        assert_eq!(
            state_path(&f, &file, Some(id)).unwrap(),
            Some("/x/p.img.tessera-map.json".into())
        );
    }
}
