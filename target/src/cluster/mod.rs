//! Cluster mode: a storage server driven by the management service's map
//! (docs/cluster-protocol.md).
//!
//! `start` fetches the first map before serving anything, opens the pool, exports every
//! volume's subsystem on the host portal (namespaces are [`routed::RoutedVolume`]s) and the
//! internal subsystem (the pool, stamps required) on the internal portal, then follows the
//! manager's watch stream: each new generation is installed (fencing and final-copying extents
//! this server loses, phase 1a) and acknowledged.

pub mod gate;
pub mod generation;
pub mod mover;
pub mod peers;
pub mod pool;
pub mod routed;

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
use crate::subsystem::{HostPolicy, NamespaceMap, Registry, Subsystem};
use peers::{INTERNAL_BLOCK, INTERNAL_NSID, Peers, internal_nqn, server_hostnqn};
use pool::{PoolVolume, TrackedPool};
use routed::RoutedVolume;

/// How long a starting server keeps asking for its first map.
pub const FIRST_MAP_WAIT: Duration = Duration::from_secs(30);
/// When a postponed install (its final copy failed) is tried again.
pub const POSTPONED_RETRY: Duration = Duration::from_secs(1);
/// How often a server repeats the ack of its installed generation (idempotent).
pub const REACK_PERIOD: Duration = Duration::from_secs(1);
/// Mismatch reports sent to the manager per second at most (docs/cluster-protocol.md: rate-limited).
pub const REPORTS_PER_SECOND: u32 = 10;

/// The pool backend kind (its size comes from the map).
#[derive(Debug, Clone)]
pub enum PoolSpec {
    Ram,
    Null,
    File(std::path::PathBuf),
    Block(std::path::PathBuf),
}

impl std::str::FromStr for PoolSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "ram" => Ok(Self::Ram),
            None if s == "null" => Ok(Self::Null),
            Some(("file", p)) => Ok(Self::File(p.into())),
            Some(("block", p)) => Ok(Self::Block(p.into())),
            _ => Err(format!(
                "pool `{s}`: expected ram, null, file:PATH or block:PATH"
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
    /// A postponed install's retry loop is running.
    pub retrying: std::sync::atomic::AtomicBool,
    /// Per-server DH-HMAC-CHAP secrets of internal connections (docs/authentication.md).
    pub dhchap: Option<ClusterSecrets>,
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

/// Starts a storage server `server_id` of the cluster managed at `manager`.
pub async fn start(
    manager: &str,
    server_id: &str,
    pool_spec: &PoolSpec,
    opts: TargetOptions,
) -> Result<Node, NodeError> {
    start_with_secrets(manager, server_id, pool_spec, opts, None).await
}

/// [`start`], internal connections authenticated with `dhchap` (DH-HMAC-CHAP, per-server
/// secrets). Without it the internal portal must be a loopback address.
pub async fn start_with_secrets(
    manager: &str,
    server_id: &str,
    pool_spec: &PoolSpec,
    opts: TargetOptions,
    dhchap: Option<ClusterSecrets>,
) -> Result<Node, NodeError> {
    let client = Client::new(manager);
    let role = Role::Server(server_id.to_string());
    let deadline = tokio::time::Instant::now() + FIRST_MAP_WAIT;
    let map = loop {
        match client.map(&role).await {
            Ok(m) => break m,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "waiting for the manager's first map");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(NodeError(format!(
                    "no map from the manager at {manager}: {e}"
                )));
            }
        }
    };
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
        PoolSpec::Block(p) => hw::BackendSpec::Block { path: p.clone() },
    };
    let backend = hw::open(&spec).map_err(|e| NodeError(format!("cannot open the pool: {e}")))?;
    let pool = PoolVolume(Arc::new(TrackedPool::new(backend)));

    // A durable pool keeps the map this server last installed beside it, and the server starts
    // from that map: a newer map then arrives through the normal install path, so extents lost
    // while it was down are fenced and copied (docs/cluster-protocol.md, "restarting during
    // phase 1a"). A RAM pool starts empty: the fetched map is all there is.
    let state = state_path(pool_spec);
    let boot = state
        .as_deref()
        .and_then(load_state)
        .filter(|m| m.generation <= map.generation && m.server(server_id).is_some())
        .unwrap_or_else(|| map.clone());
    if boot.generation < map.generation {
        tracing::info!(
            persisted = boot.generation,
            current = map.generation,
            "starting from the persisted map; catching up through installs"
        );
    }
    let map = boot;

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
    let pool_ns = Namespace::new(
        INTERNAL_NSID,
        INTERNAL_BLOCK,
        uuid_of(&internal_nqn(server_id)),
        uuid_of(&internal_nqn(server_id)),
        Arc::new(pool.clone()),
    );
    internal.set_namespaces(BTreeMap::from([(INTERNAL_NSID, Arc::new(pool_ns))]));
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
    let (report_tx, report_rx) = tokio::sync::mpsc::channel(REPORT_QUEUE_MAX);
    registry.generation.set_reporter(report_tx);

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
        retrying: std::sync::atomic::AtomicBool::new(false),
        dhchap,
    });
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
    tokio::spawn(report(Arc::clone(&shared), report_rx));
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
/// namespaces that appeared, disappeared or changed size (Namespace Attribute Changed).
pub fn sync_subsystems(node: &Arc<NodeShared>, map: &ClusterMap) {
    let Some(me) = map.server(&node.me) else {
        return;
    };
    let reg = &node.registry;
    if let Some(internal) = reg.subsystem(&internal_nqn(&node.me)) {
        internal.set_hosts(HostPolicy::Only(
            map.servers.iter().map(|s| server_hostnqn(&s.id)).collect(),
        ));
        if let Some(s) = &node.dhchap {
            internal.set_auth(s.policy(map.servers.iter().map(|s| s.id.as_str()), server_hostnqn));
        }
    }
    for sub in &map.subsystems {
        let hosts = match &sub.hosts {
            manager::map::HostPolicy::Any => HostPolicy::Any,
            manager::map::HostPolicy::Only(v) => HostPolicy::Only(v.clone()),
        };
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
}

/// Follows the manager's pushes for this server; installs and acknowledges each generation.
async fn watch(node: Arc<NodeShared>) {
    let role = Role::Server(node.me.clone());
    let mut reack = tokio::time::interval(REACK_PERIOD);
    reack.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let after = node.registry.generation.current();
        let mut stream = Box::pin(node.client.watch(role.clone(), after));
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(map)) => install(&node, map).await,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "watch stream error (reconnecting)");
                    }
                    None => break,
                },
                () = node.refresh.notified() => {
                    if let Ok(map) = node.client.map(&role).await {
                        install(&node, map).await;
                    }
                }
                _ = reack.tick() => {
                    // Acks are idempotent. Repeating ours covers a manager that restarted and
                    // forgot it (its publication would otherwise wait for an ack we already sent,
                    // while our watch stream, already at that generation, brings nothing new).
                    let g = node.registry.generation.current();
                    let _ = node.client.ack(&node.me, g).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Installs `new` if it is newer (docs/cluster-protocol.md, "Publishing a change").
pub async fn install(node: &Arc<NodeShared>, new: ClusterMap) {
    let _one = node.movers.install_lock.lock().await;
    let old = node.map.load_full();
    if new.generation <= old.generation {
        return;
    }
    let lost: Vec<_> = ClusterMap::changed_owners(&old, &new)
        .into_iter()
        .filter(|l| l.old_owner == node.me)
        .collect();
    let gate = node.registry.gate.clone();
    if !lost.is_empty() {
        // Phase 1a: fence the extents we lose. No I/O runs while the gate is closed; the last
        // writes are copied to the new owner (stamped with the generation it still has), and
        // only then does our generation move, so a stale stamp can never land on the old copy.
        if let Some(g) = &gate {
            g.close().await;
        }
        let mut ok = true;
        for l in &lost {
            ok &= mover::finish(node, &old, &new, &l.volume, l.extent)
                .await
                .is_ok();
        }
        if !ok {
            // Not installed, not acked: we keep serving at the old generation (the lost
            // extents stay tracked) and the manager sends this map again.
            if let Some(g) = &gate {
                g.open();
            }
            tracing::warn!(
                generation = new.generation,
                "install postponed: final copy incomplete"
            );
            // The watch stream will not send this generation again: fetch it again in a
            // while and retry (the manager keeps waiting for our phase-1a ack).
            // Keep trying until this generation is installed: a retry's fetch can fail too
            // (the manager may be down meanwhile).
            // One retry loop per server at most: every failed retry postpones again.
            if !node.retrying.swap(true, Ordering::AcqRel) {
                let node = Arc::clone(node);
                let g = new.generation;
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(POSTPONED_RETRY).await;
                        if node.registry.generation.current() >= g {
                            break;
                        }
                        node.refresh.notify_one();
                    }
                    node.retrying.store(false, Ordering::Release);
                });
            }
            return;
        }
    }
    node.map.store(Arc::new(new.clone()));
    sync_subsystems(node, &new);
    node.registry.generation.install(new.generation);
    // Durable before the ack: a restart resumes from here (see `start`).
    persist(node, &new).await;
    if !lost.is_empty()
        && let Some(g) = &gate
    {
        g.open();
    }
    tracing::info!(
        generation = new.generation,
        lost = lost.len(),
        "map installed"
    );
    mover::sync(node, &new);
    for attempt in 0..5u32 {
        match node.client.ack(&node.me, new.generation).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, attempt, "ack failed");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
}

/// Sends mismatch reports to the manager, batched and rate-limited.
async fn report(node: Arc<NodeShared>, mut rx: tokio::sync::mpsc::Receiver<MismatchReport>) {
    let period = Duration::from_millis(1000 / u64::from(REPORTS_PER_SECOND));
    while let Some(first) = rx.recv().await {
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

/// For tests: the stale-retry counter.
pub fn stale_retries(node: &NodeShared) -> u64 {
    node.stale_retries.load(Ordering::Relaxed)
}

/// The state file of a durable pool: the last installed map, beside a file pool. (Block pools
/// have no place for it yet: they start from the fetched map, as RAM pools do.)
fn state_path(pool: &PoolSpec) -> Option<std::path::PathBuf> {
    match pool {
        PoolSpec::File(p) => Some(std::path::PathBuf::from(format!(
            "{}.tessera-map.json",
            p.display()
        ))),
        _ => None,
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
    let r = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })
    .await;
    if !matches!(r, Ok(Ok(()))) {
        tracing::error!(
            generation = map.generation,
            "cannot persist the installed map"
        );
    }
}
