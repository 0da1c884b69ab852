//! The control API server (docs/cluster-protocol.md, "Control API").
//!
//! Every change runs plan → store → coordinator under one lock, so changes are applied in one
//! order and each is durable before the coordinator may publish it. The coordinator's actions
//! are carried out here: publications wake the watch streams (the push path), timers become
//! tasks, commits are recorded in the store.

mod auth;
mod metrics;
mod routes;
mod watch;

pub use metrics::DEFAULT_METRICS_ADDR;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch as tokio_watch};
use tokio::task::JoinHandle;

use crate::api::ReportCounts;
use crate::coord::{Action, Coordinator, Event};
use crate::map::ClusterMap;
use crate::plan::{self, Change, PlanError};
use crate::store::{Store, StoreError};

/// Largest request body: the biggest request is a volume create of a few hundred bytes; 64 KiB
/// leaves room for long host lists and bounds what a confused client makes us buffer.
pub const REQUEST_BYTES_MAX: usize = 64 << 10;
/// Concurrent watch streams of clients (layout-aware clients, the operator, anonymous callers);
/// each costs a task and a copy of every map sent. Storage servers' own streams are not counted
/// here: they have [`SERVER_WATCHES_MAX`] each, so no number of other streams locks them out.
pub const WATCHERS_MAX: usize = 256;
/// Concurrent client watch streams per caller (per credential, or per peer IP address when
/// authentication is off): one caller cannot take all of [`WATCHERS_MAX`].
pub const WATCHES_PER_CALLER_MAX: usize = 16;
/// Concurrent `role=server` watch streams per server id. A new one beyond it ends the oldest: a
/// restarted server replaces the stream its previous life left behind at once, without waiting
/// for the keep-alive to notice it is dead.
pub const SERVER_WATCHES_MAX: usize = 2;
pub use crate::coord::OLD_OWNER_TIMEOUT_MS;
/// Mismatch reports accepted per server per second: senders batch to at most 10/s
/// (docs/cluster-protocol.md), twice that absorbs a burst after a reconnect.
pub const REPORTS_PER_SECOND_MAX: u32 = 20;
/// Keep-alive newline on idle watch streams, so clients notice a dead connection
/// (`client::WATCH_IDLE_MS` is three of these).
pub const WATCH_KEEPALIVE_MS: u64 = 5_000;
/// Default control address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";

/// Where the manager keeps its state and listens.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cluster YAML: generation 1 on a new store, and `POST /v1/reload`.
    pub cluster_file: PathBuf,
    /// Directory of the redb store.
    pub data_dir: PathBuf,
    /// Control address (port 0: any free port, see [`Running::local_addr`]).
    pub listen: SocketAddr,
    /// Phase 1a bound in milliseconds (0: wait for old owners without a bound).
    pub old_owner_timeout_ms: u64,
}

impl Config {
    /// A configuration with the default phase 1a bound.
    #[must_use]
    pub fn new(cluster_file: PathBuf, data_dir: PathBuf, listen: SocketAddr) -> Self {
        Self {
            cluster_file,
            data_dir,
            listen,
            old_owner_timeout_ms: OLD_OWNER_TIMEOUT_MS,
        }
    }
}

/// Why the manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store cannot be opened or read.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The cluster file is invalid (new store only).
    #[error("{0}")]
    Layout(#[from] yaml::LayoutError),
    /// The cluster file cannot be turned into a map (e.g. not enough pool space).
    #[error("{file}: {error}")]
    Plan {
        /// The cluster file.
        file: String,
        /// Why.
        error: PlanError,
    },
    /// A credential file named by the cluster file cannot be used.
    #[error("{0}")]
    Credentials(String),
    /// No credentials, and a listen address other hosts can reach.
    #[error(
        "--listen {0} is not a loopback address and {1} configures no credentials: anyone who \
         can reach it could change the cluster (expected credentials in the cluster file, see \
         docs/cluster.md \"Credentials\", or a loopback --listen such as 127.0.0.1:7700)"
    )]
    Unauthenticated(SocketAddr, String),
    /// The control address cannot be bound.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
}

/// What watch streams wait on: bumped after every publication; `closing` ends them.
#[derive(Debug, Clone, Copy, Default)]
struct Tick {
    seq: u64,
    closing: bool,
}

/// Per-server report rate window.
#[derive(Debug, Clone, Copy)]
struct ReportWindow {
    start: Instant,
    count: u32,
}

/// State behind the mutex: short critical sections, never held across an await.
struct Inner {
    /// Newest durable map (being published, queued, or committed).
    head: Arc<ClusterMap>,
    coord: Coordinator,
    reports: ReportCounts,
    report_windows: HashMap<String, ReportWindow>,
    /// The cluster file text last applied (the base the next reload compares against).
    applied_file: Option<String>,
    /// When each server was last granted a read lease (`POST /v1/lease`); a server not in it
    /// is counted from `started` (a lease from this manager's previous life may still run).
    lease_grants: HashMap<String, std::time::Instant>,
    started: std::time::Instant,
}

/// Rebuild progress by (volume, extent, copy's server): (done, total) bytes.
type RebuildProgress = HashMap<(String, usize, String), (u64, u64)>;

/// Everything the handlers share.
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    /// Serializes changes: plan → store → coordinator, one at a time, in order.
    changes: tokio::sync::Mutex<()>,
    store: Arc<Store>,
    cluster_file: PathBuf,
    /// The control address is a loopback one (credentials are optional then).
    loopback: bool,
    /// The tokens accepted; `None`: authentication is off. Replaced by a reload.
    credentials: RwLock<Option<Arc<auth::Credentials>>>,
    tick: tokio_watch::Sender<Tick>,
    watchers: Mutex<watch::Watchers>,
    metrics: metrics::Metrics,
    /// Rebuild progress reported by primaries: (volume, extent, copy's server) → (done, total)
    /// bytes. Memory only; entries of copies no longer `rebuilding` are dropped by status.
    rebuild_progress: Mutex<RebuildProgress>,
    /// Servers whose copies are being marked `rebuilding` (one change queued per server).
    rebuild_queued: Mutex<std::collections::HashSet<String>>,
    /// The pool identity each server last sent (docs/replication.md, "A server whose data is
    /// gone"). A server that holds no copy of a replicated extent is not worth a generation of
    /// its own: its identity waits here and is written into the next map that changes anyway
    /// (one that may place such copies on it).
    pools_seen: Mutex<HashMap<String, crate::map::PoolId>>,
}

/// An error answer: HTTP status and message (`{"error": message}`, with `"generation"` when
/// set).
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: u16,
    pub message: String,
    /// The generation of the map a planner's refusal was decided against
    /// ([`crate::api::ErrorBody::generation`]).
    pub generation: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            generation: None,
        }
    }

    /// The same error, refused against the map of `generation`.
    pub(crate) fn at_generation(self, generation: u64) -> Self {
        Self {
            generation: Some(generation),
            ..self
        }
    }
}

impl From<PlanError> for ApiError {
    fn from(e: PlanError) -> Self {
        Self::new(e.http_status(), e.to_string())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock is a bug; the state is still the last consistent one
        // (every critical section assigns whole values), so keep serving.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn watchers(&self) -> MutexGuard<'_, watch::Watchers> {
        self.watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn rebuild_progress(&self) -> MutexGuard<'_, RebuildProgress> {
        self.rebuild_progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers the pool identity server `id` sent.
    fn note_pool(&self, id: &str, pool: crate::map::PoolId) {
        self.pools_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned(), pool);
    }

    /// Writes the remembered pool identities into the servers of `next` that record none.
    fn fill_pools(&self, next: &mut ClusterMap) {
        let seen = self
            .pools_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for s in next.servers.iter_mut().filter(|s| s.pool.is_none()) {
            s.pool = seen.get(&s.id).copied();
        }
    }

    /// Marks (`queued`) or unmarks server `id` as having a rebuild-start change queued;
    /// marking answers false when it already was.
    fn rebuild_queued(&self, id: &str, queued: bool) -> bool {
        let mut q = self
            .rebuild_queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if queued {
            q.insert(id.to_owned())
        } else {
            q.remove(id)
        }
    }

    fn credentials(&self) -> Option<Arc<auth::Credentials>> {
        self.credentials
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The directory relative credential paths start from.
    fn cluster_dir(&self) -> PathBuf {
        cluster_dir(&self.cluster_file)
    }

    /// Feeds the coordinator; the caller carries out the actions.
    fn feed(&self, event: Event) -> Vec<Action> {
        let mut inner = self.lock();
        self.handle_locked(&mut inner, event)
    }

    /// Feeds the coordinator with the state lock held. A switch whose phase 1a is done is
    /// recorded in the store before the lock is released (so before any server but its old
    /// owners can fetch it): a restarted manager must know that it may have reached its new
    /// owner, and never give it back (`plan::cancel_moves_to_down`).
    fn handle_locked(&self, inner: &mut Inner, event: Event) -> Vec<Action> {
        let before = inner.coord.server_map(None);
        let actions = inner.coord.handle(event);
        self.record_phase_1a(before, &actions);
        actions
    }

    /// Records the end of phase 1a of the switches `actions` publish to every server (see
    /// [`Self::handle_locked`]); `before`: the servers' map before them.
    fn record_phase_1a(&self, mut before: Arc<ClusterMap>, actions: &[Action]) {
        for a in actions {
            if let Action::PublishToServers(m) = a {
                if !ClusterMap::changed_owners(&before, m).is_empty()
                    && let Err(e) = self.store.set_phase_1a_done(m.generation)
                {
                    tracing::error!(
                        generation = m.generation,
                        "recording the end of phase 1a failed: {e}"
                    );
                }
                before = Arc::clone(m);
            }
        }
    }

    /// Ends the coordinator's hold of phase 1a (`Coordinator::hold_chain`) and carries out
    /// what it allowed.
    fn release_hold(self: &Arc<Self>) {
        let actions = {
            let mut inner = self.lock();
            let before = inner.coord.server_map(None);
            let actions = inner.coord.release();
            self.record_phase_1a(before, &actions);
            actions
        };
        run_actions(self, actions);
    }

    /// Applies `change`: plan, store durably, hand to the coordinator. Returns the new map
    /// (or the unchanged one when the change alters nothing).
    pub(crate) async fn change(self: &Arc<Self>, change: Change) -> Result<ClusterMap, ApiError> {
        let _serial = self.changes.lock().await;
        self.change_locked(change, None, false).await
    }

    /// [`Self::change`] with the changes lock held. `file`: the cluster file text to record as
    /// applied (a reload), even when the map does not change. `force`: accept the change even
    /// with a full queue (a mark-down, which is what releases a stuck queue).
    async fn change_locked(
        self: &Arc<Self>,
        change: Change,
        file: Option<String>,
        force: bool,
    ) -> Result<ClusterMap, ApiError> {
        // Planned against the maps not through phase 1a, none of which may leave it until the
        // new map is fed (the guard ends the hold however this returns, or if it is dropped).
        let (head, accept, chain) = {
            let mut inner = self.lock();
            (
                Arc::clone(&inner.head),
                inner.coord.can_accept(),
                inner.coord.hold_chain(),
            )
        };
        let _hold = HoldGuard(Arc::clone(self));
        // A refusal names the generation it was decided against (the newest map: every change
        // accepted before is in it or older). A primary whose rebuild-done report is refused
        // learns from it which map settles the report (docs/replication.md, "The end of a
        // rebuild").
        let (mut next, cancelled) = plan::apply_cancelling(&head, &change, &chain)
            .map_err(|e| ApiError::from(e).at_generation(head.generation))?;
        for c in &cancelled {
            tracing::warn!(
                volume = %c.volume,
                extent = c.extent,
                owner = %c.owner,
                to = %c.to,
                "{} cancelled: its destination is marked down (the owner keeps the extent)",
                if c.switch { "switch not yet through phase 1a" } else { "move" }
            );
        }
        let changed = next.generation != head.generation;
        if changed && let Change::SwitchMove(req) = &change {
            // Only once the destination has the move (docs/cluster-protocol.md, "Moving an
            // extent"); checked with the chain held, so the servers' map cannot move meanwhile.
            self.lock()
                .coord
                .move_ready_check(req)
                .map_err(|e| ApiError::new(409, e))?;
        }
        if changed {
            self.fill_pools(&mut next);
        }
        if !changed && file.is_none() {
            return Ok(next);
        }
        if changed && !accept && !force {
            return Err(ApiError::new(
                503,
                format!(
                    "{} maps are waiting to be published behind generation {}; retry later (see \
                     GET /v1/status for the servers that have not acked)",
                    crate::coord::QUEUE_MAX,
                    head.generation
                ),
            ));
        }
        let store = Arc::clone(&self.store);
        let to_store = changed.then(|| next.clone());
        let text = file.clone();
        tokio::task::spawn_blocking(move || match &text {
            Some(t) => store.put_with_file(to_store.as_ref(), t),
            None => to_store.as_ref().map_or(Ok(()), |m| store.put(m)),
        })
        .await
        .map_err(|e| ApiError::new(500, format!("store task failed: {e}")))?
        .map_err(|e| ApiError::new(500, e.to_string()))?;
        if let Some(t) = file {
            self.lock().applied_file = Some(t);
        }
        if !changed {
            return Ok(next);
        }
        self.metrics.count_moves(&head, &next);
        for w in plan::new_shared_domains(&head, &next) {
            tracing::warn!(volume = %w.volume, "{w}");
        }
        let next = Arc::new(next);
        tracing::info!(
            generation = next.generation,
            change = change.name(),
            "map change durable"
        );
        let actions = {
            let mut inner = self.lock();
            inner.head = Arc::clone(&next);
            self.handle_locked(&mut inner, Event::Committed(Arc::clone(&next)))
        };
        run_actions(self, actions);
        Ok((*next).clone())
    }

    /// `POST /v1/reload`: re-reads the cluster file and its credentials, applies the file's
    /// edits since the last load (plan::reload_from), records the file, and switches to its
    /// credentials.
    pub(crate) async fn reload(self: &Arc<Self>) -> Result<ClusterMap, ApiError> {
        let file = self.cluster_file.clone();
        let dir = self.cluster_dir();
        let (cluster, text, creds) = tokio::task::spawn_blocking(move || {
            let (cluster, text) =
                yaml::load_cluster_text(&file).map_err(|e| ApiError::new(400, e.to_string()))?;
            let creds =
                auth::Credentials::load(&cluster, &dir).map_err(|e| ApiError::new(400, e))?;
            Ok::<_, ApiError>((cluster, text, creds))
        })
        .await
        .map_err(|e| ApiError::new(500, format!("reload task failed: {e}")))??;
        if creds.is_none() && !self.loopback {
            return Err(ApiError::new(
                400,
                format!(
                    "{}: no credentials, and the control API listens on a non-loopback address \
                     (expected credentials.operator and a credential for every server)",
                    cluster.source
                ),
            ));
        }
        let _serial = self.changes.lock().await;
        let previous = self.lock().applied_file.clone().and_then(|t| {
            yaml::parse_cluster_str(&cluster.source, &t)
                .map_err(|e| {
                    tracing::warn!(
                        "the recorded cluster file no longer parses ({e}); applying every \
                         declared field"
                    );
                })
                .ok()
        });
        let map = self
            .change_locked(
                Change::Reload {
                    previous: previous.map(Box::new),
                    cluster: Box::new(cluster),
                },
                Some(text),
                false,
            )
            .await?;
        *self
            .credentials
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = creds.map(Arc::new);
        Ok(map)
    }

    /// Marks `servers` down, one generation each (the coordinator asked: phase 1a waited the
    /// old-owner timeout for them).
    async fn mark_down(self: Arc<Self>, generation: u64, servers: Vec<String>) {
        for id in servers {
            let _serial = self.changes.lock().await;
            // It may have acked (or been marked down) since the coordinator asked.
            let still_waiting = self
                .lock()
                .coord
                .publishing()
                .is_some_and(|(g, phase, w, _)| {
                    g == generation && phase == crate::coord::Phase::OldOwners && w.contains(&id)
                });
            if !still_waiting {
                continue;
            }
            let change = Change::SetServerState {
                id: id.clone(),
                state: crate::map::ServerState::Down,
            };
            match self.change_locked(change, None, true).await {
                Ok(m) => tracing::warn!(
                    server = %id,
                    waiting = generation,
                    generation = m.generation,
                    "old owner marked down: it did not ack phase 1a within the old-owner timeout \
                     (it serves nothing until it has caught up; set it up again with tessera \
                     server state ID up)"
                ),
                Err(e) => {
                    tracing::error!(server = %id, "cannot mark the old owner down: {}", e.message)
                }
            }
        }
    }
}

/// Ends the coordinator's hold of phase 1a when a change is over (`Shared::change_locked`).
struct HoldGuard(Arc<Shared>);

impl Drop for HoldGuard {
    fn drop(&mut self) {
        self.0.release_hold();
    }
}

/// The directory of the cluster file (relative credential paths start there).
fn cluster_dir(file: &std::path::Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Carries out the coordinator's actions. Never blocks: store writes and timers are tasks.
fn run_actions(shared: &Arc<Shared>, actions: Vec<Action>) {
    let mut wake = false;
    for action in actions {
        match action {
            Action::SendToServers { servers, map } => {
                tracing::info!(
                    generation = map.generation,
                    ?servers,
                    "phase 1a: old owners"
                );
                wake = true;
            }
            Action::PublishToServers(map) => {
                tracing::info!(generation = map.generation, "phase 1b: all servers");
                wake = true;
            }
            Action::PublishToClients(map) => {
                tracing::info!(generation = map.generation, "phase 2: committed");
                wake = true;
                let store = Arc::clone(&shared.store);
                let generation = map.generation;
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = store.set_committed(generation) {
                        // The map itself is durable; a restart re-publishes it, which is safe.
                        tracing::error!(generation, "recording the commit failed: {e}");
                    }
                });
            }
            Action::MarkDown {
                generation,
                servers,
            } => {
                tokio::spawn(Arc::clone(shared).mark_down(generation, servers));
            }
            Action::AwaitLeases {
                generation,
                servers,
            } => {
                tracing::info!(
                    generation,
                    ?servers,
                    "phase 1a: servers losing reads of their copies (their acks, or their read \
                     leases running out)"
                );
                wake = true;
                tokio::spawn(await_leases(Arc::downgrade(shared), generation, servers));
            }
            Action::StartTimer {
                generation,
                phase,
                ms,
            } => {
                tokio::spawn(timer(
                    Arc::downgrade(shared),
                    Event::Timeout { generation, phase },
                    ms,
                ));
                if phase == crate::coord::Phase::Servers {
                    tokio::spawn(skip_lost_servers(Arc::downgrade(shared), generation));
                }
            }
        }
    }
    if wake {
        shared.tick.send_modify(|t| t.seq = t.seq.wrapping_add(1));
    }
}

/// Phase 1b of `generation` does not wait for a server whose watch stream has been gone for
/// [`routes::SERVER_LOST`] (docs/cluster-protocol.md, "Bounds"): checked when the phase starts
/// and once more that long after (a stream lost just before it started).
async fn skip_lost_servers(shared: Weak<Shared>, generation: crate::map::Generation) {
    for wait in [Duration::ZERO, routes::SERVER_LOST] {
        tokio::time::sleep(wait).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let waiting = match shared.lock().coord.publishing() {
            Some((g, crate::coord::Phase::Servers, waiting, _)) if g == generation => waiting,
            _ => return,
        };
        let servers: Vec<String> = {
            let mut w = shared.watchers();
            waiting
                .into_iter()
                .filter(|id| {
                    w.server_lost_for(id)
                        .is_some_and(|d| d >= routes::SERVER_LOST)
                })
                .collect()
        };
        if !servers.is_empty() {
            let actions = shared.feed(Event::ServersLost {
                generation,
                servers,
            });
            run_actions(&shared, actions);
        }
    }
}

/// A read lease's length (`POST /v1/lease`), counted by the server from when it sent the
/// request: the manager answered later, so the lease runs out on the server no later than
/// [`LEASE_MS`] after the manager granted it (docs/replication.md, "Read leases").
pub const LEASE_MS: u64 = 1_500;
/// Waited on top of a lease before a server that has not acked is taken to serve no reads:
/// clocks that run at slightly different rates, and timer slack.
pub const LEASE_MARGIN_MS: u64 = 250;

impl Shared {
    /// Grants `server` a read lease, recorded now, unless a map that takes reads from it waits
    /// for its ack (`Coordinator::lease_fenced`): then `Err` with that generation.
    pub(crate) fn grant_lease(&self, server: &str) -> Result<u64, crate::map::Generation> {
        let mut inner = self.lock();
        if let Some(g) = inner.coord.lease_fenced(server) {
            return Err(g);
        }
        inner
            .lease_grants
            .insert(server.to_owned(), std::time::Instant::now());
        Ok(LEASE_MS)
    }

    /// When every lease granted to `servers` so far has run out, margin included.
    fn leases_end(&self, servers: &[String]) -> std::time::Instant {
        let inner = self.lock();
        let lease = Duration::from_millis(LEASE_MS + LEASE_MARGIN_MS);
        servers
            .iter()
            .map(|id| inner.lease_grants.get(id).copied().unwrap_or(inner.started) + lease)
            .max()
            .unwrap_or(inner.started)
    }
}

/// Phase 1a of `generation` waits for `servers` as readers losing their reads: they get no
/// lease now (the coordinator fenced them before this runs), so once the last one granted has
/// run out, they serve none of those reads and need not be waited for.
async fn await_leases(
    shared: Weak<Shared>,
    generation: crate::map::Generation,
    servers: Vec<String>,
) {
    let Some(end) = shared.upgrade().map(|s| s.leases_end(&servers)) else {
        return;
    };
    tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
    if let Some(shared) = shared.upgrade() {
        let actions = shared.feed(Event::LeasesExpired {
            generation,
            servers,
        });
        run_actions(&shared, actions);
    }
}

/// Feeds `event` after `ms`, unless the manager has stopped.
async fn timer(shared: Weak<Shared>, event: Event, ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    if let Some(shared) = shared.upgrade() {
        let actions = shared.feed(event);
        run_actions(&shared, actions);
    }
}

/// A running manager.
pub struct Running {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// The bound control address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves Prometheus metrics (`GET /metrics`) on `addr` until the manager stops; returns the
    /// bound address.
    ///
    /// # Errors
    /// `addr` cannot be bound.
    pub async fn serve_metrics(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = metrics::bind(addr).await?;
        let bound = listener.local_addr()?;
        tokio::spawn(metrics::serve(listener, Arc::clone(&self.shared)));
        Ok(bound)
    }

    /// Stops serving: watch streams end, in-flight requests finish.
    ///
    /// # Errors
    /// The server task failed.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.shared.tick.send_modify(|t| t.closing = true);
        // The receiver is gone only if the server already stopped.
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|e| std::io::Error::other(format!("server task: {e}")))?
    }

    /// Waits until the server stops by itself (it does not, short of an error).
    ///
    /// # Errors
    /// The server task failed.
    pub async fn wait(&mut self) -> std::io::Result<()> {
        (&mut self.task)
            .await
            .map_err(|e| std::io::Error::other(format!("server task: {e}")))?
    }
}

/// Checks a cluster file without starting anything (`tessera-manager --check`): the YAML, its
/// credential files, and that generation 1 can be built from it (e.g. enough pool space).
/// Returns the cluster and the volumes of generation 1 whose copies share a failure domain
/// (warnings: the file is valid).
///
/// # Errors
/// The first problem, as [`StartError`].
pub fn check(
    cluster_file: &std::path::Path,
) -> Result<(yaml::Cluster, Vec<plan::SharedDomains>), StartError> {
    let cluster = yaml::load_cluster(cluster_file)?;
    auth::Credentials::load(&cluster, &cluster_dir(cluster_file))
        .map_err(StartError::Credentials)?;
    let map = plan::initial_map(&cluster).map_err(|error| StartError::Plan {
        file: cluster_file.display().to_string(),
        error,
    })?;
    Ok((cluster, plan::shared_domains(&map)))
}

/// Removes what a failed first start created: the store file and, if it made it, the data
/// directory (when empty). The next start then builds generation 1 from the file again.
struct NewStoreGuard {
    db: Option<PathBuf>,
    dir: Option<PathBuf>,
}

impl NewStoreGuard {
    fn disarm(&mut self) {
        self.db = None;
        self.dir = None;
    }
}

impl Drop for NewStoreGuard {
    fn drop(&mut self) {
        if let Some(db) = &self.db {
            let _ = std::fs::remove_file(db);
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Reads the cluster file and its credentials, opens the store (building generation 1 from the
/// file on a new one), binds the control address and serves. A start that fails on a new store
/// leaves no store behind.
///
/// # Errors
/// [`StartError`].
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let db_path = config.data_dir.join(crate::store::DB_FILE);
    let mut guard = NewStoreGuard {
        db: (!db_path.exists()).then(|| db_path.clone()),
        dir: (!config.data_dir.exists()).then(|| config.data_dir.clone()),
    };
    let store = {
        let dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .map_err(|e| StartError::Listen {
                addr: config.listen,
                error: std::io::Error::other(e.to_string()),
            })??
    };
    let loaded = store.load()?;
    // The credentials are those of the file the map was built from: the one recorded by the
    // first start or the last reload (the store wins), else the file on disk.
    let source = config.cluster_file.display().to_string();
    let recorded = loaded
        .as_ref()
        .and_then(|l| l.cluster_file.as_ref())
        .and_then(|t| {
            yaml::parse_cluster_str(&source, t)
                .ok()
                .map(|c| (c, t.clone()))
        });
    let (cluster, text) = match recorded {
        Some(ct) => ct,
        None => {
            let file = config.cluster_file.clone();
            tokio::task::spawn_blocking(move || yaml::load_cluster_text(&file))
                .await
                .map_err(|e| StartError::Credentials(format!("reading the cluster file: {e}")))??
        }
    };
    let credentials = auth::Credentials::load(&cluster, &cluster_dir(&config.cluster_file))
        .map_err(StartError::Credentials)?;
    let loopback = config.listen.ip().is_loopback();
    match (&credentials, loopback) {
        (None, false) => {
            return Err(StartError::Unauthenticated(config.listen, source));
        }
        (None, true) => tracing::warn!(
            file = %source,
            "no credentials configured: any local process can change the cluster and speak for \
             any server (fine for development; see docs/cluster.md \"Credentials\")"
        ),
        (Some(_), _) => {}
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|error| StartError::Listen {
            addr: config.listen,
            error,
        })?;
    let addr = listener.local_addr().map_err(|error| StartError::Listen {
        addr: config.listen,
        error,
    })?;
    let (committed, pending, applied_file, phase_1a_done) = match loaded {
        Some(loaded) => {
            guard.disarm();
            tracing::info!(
                committed = loaded.committed.generation,
                pending = loaded.pending.len(),
                "loaded map from store"
            );
            (
                loaded.committed,
                loaded.pending,
                loaded.cluster_file,
                loaded.phase_1a_done,
            )
        }
        None => {
            let map = plan::initial_map(&cluster).map_err(|error| StartError::Plan {
                file: config.cluster_file.display().to_string(),
                error,
            })?;
            store.put_committed(&map, Some(&text))?;
            guard.disarm();
            tracing::info!(file = %config.cluster_file.display(), "new store: generation 1 from the cluster file");
            (map, Vec::new(), Some(text), 0)
        }
    };
    let head = Arc::new(pending.last().cloned().unwrap_or_else(|| committed.clone()));
    for w in plan::shared_domains(&head) {
        tracing::warn!(volume = %w.volume, "{w}");
    }
    let (tick, _) = tokio_watch::channel(Tick::default());
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            head,
            coord: Coordinator::new(committed)
                .with_old_owner_timeout(config.old_owner_timeout_ms)
                .with_down_fence(crate::coord::DOWN_FENCE_MS)
                .resumed_at(phase_1a_done)
                .with_read_leases(),
            reports: ReportCounts::default(),
            report_windows: HashMap::new(),
            applied_file,
            lease_grants: HashMap::new(),
            started: std::time::Instant::now(),
        }),
        changes: tokio::sync::Mutex::new(()),
        store: Arc::new(store),
        cluster_file: config.cluster_file.clone(),
        loopback,
        credentials: RwLock::new(credentials.map(Arc::new)),
        tick,
        watchers: Mutex::new(watch::Watchers::default()),
        rebuild_progress: Mutex::new(HashMap::new()),
        rebuild_queued: Mutex::new(std::collections::HashSet::new()),
        pools_seen: Mutex::new(HashMap::new()),
        metrics: metrics::Metrics::new(),
    });
    let actions = {
        let mut inner = shared.lock();
        let before = inner.coord.server_map(None);
        let actions = inner
            .coord
            .resume(pending.into_iter().map(Arc::new).collect());
        shared.record_phase_1a(before, &actions);
        actions
    };
    run_actions(&shared, actions);
    let app = routes::router(Arc::clone(&shared));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
        })
        .await
    });
    // The address comes last: tests and scripts read it from the end of this line.
    tracing::info!(
        authenticated = shared.credentials().is_some(),
        %addr,
        "control API listening"
    );
    Ok(Running {
        addr,
        shared,
        stop,
        task,
    })
}
