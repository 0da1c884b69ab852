//! The control API server (docs/cluster-protocol.md, "Control API").
//!
//! Every change runs plan → store → coordinator under one lock, so changes are applied in one
//! order and each is durable before the coordinator may publish it. The coordinator's actions
//! are carried out here: publications wake the watch streams (the push path), timers become
//! tasks, commits are recorded in the store.

mod routes;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
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
/// Concurrent watch streams: one per storage server and per layout-aware client; each costs a
/// task and a copy of every map sent.
pub const WATCHERS_MAX: usize = 256;
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
}

/// Everything the handlers share.
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    /// Serializes changes: plan → store → coordinator, one at a time, in order.
    changes: tokio::sync::Mutex<()>,
    store: Arc<Store>,
    cluster_file: PathBuf,
    tick: tokio_watch::Sender<Tick>,
    watchers: AtomicUsize,
}

/// An error answer: HTTP status and message (`{"error": message}`).
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
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

    /// Feeds the coordinator; the caller carries out the actions.
    fn feed(&self, event: Event) -> Vec<Action> {
        self.lock().coord.handle(event)
    }

    /// Applies `change`: plan, store durably, hand to the coordinator. Returns the new map
    /// (or the unchanged one when the change alters nothing).
    pub(crate) async fn change(self: &Arc<Self>, change: Change) -> Result<ClusterMap, ApiError> {
        let _serial = self.changes.lock().await;
        let (head, accept) = {
            let inner = self.lock();
            (Arc::clone(&inner.head), inner.coord.can_accept())
        };
        let next = plan::apply(&head, &change)?;
        if next.generation == head.generation {
            return Ok(next);
        }
        if !accept {
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
        let to_store = next.clone();
        tokio::task::spawn_blocking(move || store.put(&to_store))
            .await
            .map_err(|e| ApiError::new(500, format!("store task failed: {e}")))?
            .map_err(|e| ApiError::new(500, e.to_string()))?;
        let next = Arc::new(next);
        tracing::info!(
            generation = next.generation,
            change = change.name(),
            "map change durable"
        );
        let actions = {
            let mut inner = self.lock();
            inner.head = Arc::clone(&next);
            inner.coord.handle(Event::Committed(Arc::clone(&next)))
        };
        run_actions(self, actions);
        Ok((*next).clone())
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
            }
        }
    }
    if wake {
        shared.tick.send_modify(|t| t.seq = t.seq.wrapping_add(1));
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

/// Opens the store (building generation 1 from the cluster file on a new one), binds the
/// control address and serves.
///
/// # Errors
/// [`StartError`].
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let store = {
        let dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .map_err(|e| StartError::Listen {
                addr: config.listen,
                error: std::io::Error::other(e.to_string()),
            })??
    };
    let (committed, pending) = match store.load()? {
        Some(loaded) => {
            tracing::info!(
                committed = loaded.committed.generation,
                pending = loaded.pending.len(),
                "loaded map from store"
            );
            (loaded.committed, loaded.pending)
        }
        None => {
            let cluster = yaml::load_cluster(&config.cluster_file)?;
            let map = plan::initial_map(&cluster).map_err(|error| StartError::Plan {
                file: config.cluster_file.display().to_string(),
                error,
            })?;
            store.put_committed(&map)?;
            tracing::info!(file = %config.cluster_file.display(), "new store: generation 1 from the cluster file");
            (map, Vec::new())
        }
    };
    let head = Arc::new(pending.last().cloned().unwrap_or_else(|| committed.clone()));
    let (tick, _) = tokio_watch::channel(Tick::default());
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            head,
            coord: Coordinator::new(committed),
            reports: ReportCounts::default(),
            report_windows: HashMap::new(),
        }),
        changes: tokio::sync::Mutex::new(()),
        store: Arc::new(store),
        cluster_file: config.cluster_file.clone(),
        tick,
        watchers: AtomicUsize::new(0),
    });
    for map in pending {
        let actions = shared.feed(Event::Committed(Arc::new(map)));
        run_actions(&shared, actions);
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
    let app = routes::router(Arc::clone(&shared));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!(%addr, "control API listening");
    Ok(Running {
        addr,
        shared,
        stop,
        task,
    })
}
