//! Listeners, reactors and the target's life: bind every portal, accept connections, hand each
//! to one reactor for its whole life, stop cleanly.
//!
//! Thread-per-core: the target runs one single-threaded tokio runtime ("reactor") per core it
//! may use (`sched_getaffinity`, so `taskset -c 0 tessera-target` gives one reactor). A
//! connection is accepted on the listener thread and moved to the reactor with the fewest live
//! connections, where it stays: its PDUs, commands and completions never cross threads, and the
//! reactor polls its sockets for a short window after I/O and sleeps in epoll once traffic
//! stops (`busypoll`: no core burnt at rest). Backends that may block (file, block) run on each
//! reactor's bounded blocking pool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::subsystem::{Registry, lock};
use crate::transport::{TransportConfig, conn};

/// Connections served at once per target; further ones wait in the kernel's accept backlog.
/// 64 I/O queues + admin per host, a handful of hosts.
pub const CONNECTIONS_MAX: usize = 4096;

/// Threads of each reactor's blocking pool (file/block backends): enough to keep a queue depth
/// of NVMe reads in flight on a real device, bounded so a slow disk cannot spawn without limit.
pub const BLOCKING_THREADS_PER_REACTOR: usize = 16;

/// How a target runs.
#[derive(Debug, Clone, Default)]
pub struct TargetOptions {
    pub transport: TransportConfig,
    /// Reactor threads; 0 = one per CPU this process may run on.
    pub reactors: usize,
    /// Pin reactor i to CPU `cpus[i % len]` (none: let the kernel place them).
    pub cpus: Vec<usize>,
    /// Called first on every reactor thread (tests use it to mark the threads they measure).
    pub on_reactor_start: Option<fn()>,
    /// Adaptive busy polling: after I/O, a reactor polls its sockets for this long before it
    /// sleeps in epoll again (`busypoll`). Zero (the default here; the daemon's default is
    /// [`crate::transport::busypoll::DEFAULT_WINDOW`]): never poll.
    pub poll: Duration,
}

struct Reactor {
    tx: mpsc::UnboundedSender<Adopt>,
    live: Arc<AtomicUsize>,
}

/// A connection handed from a portal's accept loop to a reactor.
struct Adopt {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    /// The portal it came in through.
    portal: SocketAddr,
    /// Turns true when the portal closes (removed by a reload, or the target stops): the
    /// connection then drains and closes.
    close: watch::Receiver<bool>,
}

/// A running target: its registry, bound portals and a shutdown switch.
pub struct Target {
    pub registry: Arc<Registry>,
    /// The portals bound at start (live reconfiguration may add and remove some later:
    /// [`Portals::addrs`] has the current set).
    pub addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    portals: Arc<Portals>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Target {
    /// Binds every address in `listen` and starts serving with default options. An address
    /// with port 0 gets an ephemeral port (tests); `addrs` holds what was bound.
    pub async fn start(
        registry: Arc<Registry>,
        listen: &[SocketAddr],
        cfg: TransportConfig,
    ) -> std::io::Result<Self> {
        let opts = TargetOptions {
            transport: cfg,
            ..TargetOptions::default()
        };
        Self::start_with(registry, listen, opts).await
    }

    pub async fn start_with(
        registry: Arc<Registry>,
        listen: &[SocketAddr],
        opts: TargetOptions,
    ) -> std::io::Result<Self> {
        let mut listeners = Vec::new();
        for a in listen {
            let l = TcpListener::bind(a)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?;
            listeners.push(l);
        }
        registry.set_transport(opts.transport);
        let (shutdown, _) = watch::channel(false);
        let n = if opts.reactors == 0 {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        } else {
            opts.reactors
        };
        // Every CPU asked for must exist and be ours: a target never serves unpinned when it
        // was told to pin (nor panics on a CPU number beyond the set).
        for &cpu in &opts.cpus {
            hw::sys::check_cpu(cpu)
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot pin reactors: {e}")))?;
        }
        let conns = Arc::new(ConnTable::default());
        let mut reactors = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        let mut pinned = Vec::with_capacity(n);
        for i in 0..n {
            let cpu = opts.cpus.get(i % opts.cpus.len().max(1)).copied();
            let (r, t, started) = spawn_reactor(
                i,
                cpu,
                opts.on_reactor_start,
                opts.poll,
                Arc::clone(&registry),
                opts.transport,
                shutdown.subscribe(),
                Arc::clone(&conns),
            )?;
            reactors.push(r);
            threads.push(t);
            pinned.push(started);
        }
        // A reactor that could not pin itself has stopped; the others stop when `reactors`
        // (their connection channels) is dropped with the error.
        for (i, started) in pinned.into_iter().enumerate() {
            match started.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("cannot pin reactor {i}: {e}"),
                    ));
                }
                Err(_) => {
                    return Err(std::io::Error::other(format!(
                        "reactor {i} stopped while starting"
                    )));
                }
            }
        }
        let portals = Arc::new(Portals {
            registry: Arc::clone(&registry),
            reactors: Arc::new(reactors),
            shutdown: shutdown.subscribe(),
            open: std::sync::Mutex::new(Vec::new()),
            conns,
        });
        let mut addrs = Vec::new();
        for l in listeners {
            let addr = portals.serve(l)?;
            addrs.push(addr);
            tracing::info!(%addr, reactors = n, "listening for NVMe/TCP");
        }
        registry.bump_genctr();
        Ok(Self {
            registry,
            addrs,
            shutdown,
            portals,
            threads,
        })
    }

    /// The portals, to add and remove while the target runs (live reconfiguration) and to
    /// list the connections.
    pub fn portals(&self) -> Arc<Portals> {
        Arc::clone(&self.portals)
    }

    /// Connections served now (handed to a reactor and not yet closed).
    pub fn connections(&self) -> usize {
        self.portals
            .reactors
            .iter()
            .map(|r| r.live.load(Ordering::Relaxed))
            .sum()
    }

    /// A reader of [`Target::connections`] that does not keep the target alive (metrics);
    /// it reads 0 once the target stopped.
    pub fn connection_counter(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let reactors = Arc::downgrade(&self.portals.reactors);
        move || {
            reactors.upgrade().map_or(0, |v| {
                v.iter().map(|r| r.live.load(Ordering::Relaxed)).sum()
            })
        }
    }

    /// Stops accepting, lets every connection drain its in-flight commands (bounded), then
    /// flushes every volume with a volatile write cache.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.portals.close_all().await;
        let threads = std::mem::take(&mut self.threads);
        // Joining reactor threads blocks: do it off the caller's runtime.
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        for s in self.registry.subsystems().values() {
            for ns in s.namespaces().values() {
                if let Err(e) = ns.volume.flush().await {
                    tracing::error!(subnqn = %s.nqn, nsid = ns.nsid, error = %e, "flush at exit failed");
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_reactor(
    index: usize,
    cpu: Option<usize>,
    on_start: Option<fn()>,
    poll: Duration,
    registry: Arc<Registry>,
    cfg: TransportConfig,
    shutdown: watch::Receiver<bool>,
    table: Arc<ConnTable>,
) -> std::io::Result<(
    Reactor,
    std::thread::JoinHandle<()>,
    oneshot::Receiver<std::io::Result<()>>,
)> {
    let (started_tx, started) = oneshot::channel();
    let (tx, mut rx) = mpsc::unbounded_channel::<Adopt>();
    let live = Arc::new(AtomicUsize::new(0));
    let live2 = Arc::clone(&live);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS_PER_REACTOR)
        .build()?;
    let thread = std::thread::Builder::new()
        .name(format!("reactor-{index}"))
        .spawn(move || {
            // Pinned first, before the runtime serves anything; a reactor that cannot pin
            // says so and stops (the target then fails to start).
            let pinned = cpu.map_or(Ok(()), hw::sys::pin_to_cpu);
            let failed = pinned.is_err();
            let _ = started_tx.send(pinned);
            if failed {
                return;
            }
            if let Some(f) = on_start {
                f();
            }
            rt.block_on(async move {
                // Ends with the runtime when the reactor stops.
                tokio::spawn(crate::transport::busypoll::poller(poll));
                // The watchdog pings only while this reactor runs its tasks (notify.rs).
                crate::notify::spawn_reactor_heartbeat(index);
                let mut conns = JoinSet::new();
                let mut stop = shutdown.clone();
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        Some(_) = conns.join_next(), if !conns.is_empty() => {
                            live2.fetch_sub(1, Ordering::Relaxed);
                        }
                        m = rx.recv() => {
                            let Some(Adopt { stream: std_stream, peer, portal, close }) = m else {
                                break;
                            };
                            match tokio::net::TcpStream::from_std(std_stream) {
                                Ok(s) => {
                                    let entry = table.enter(peer, portal, index);
                                    let serve = conn::serve(
                                        Arc::clone(&registry), s, peer, cfg, close,
                                    );
                                    conns.spawn(async move {
                                        serve.await;
                                        drop(entry);
                                    });
                                }
                                Err(e) => {
                                    live2.fetch_sub(1, Ordering::Relaxed);
                                    tracing::warn!(%peer, error = %e, "cannot adopt connection");
                                }
                            }
                        }
                    }
                }
                // Connections see the same shutdown signal and drain themselves.
                while conns.join_next().await.is_some() {}
            });
        })?;
    Ok((Reactor { tx, live }, thread, started))
}

async fn accept_loop(
    l: TcpListener,
    reactors: Arc<Vec<Reactor>>,
    mut shutdown: watch::Receiver<bool>,
    close: watch::Receiver<bool>,
) {
    let portal = match l.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "listener without an address: not accepting");
            return;
        }
    };
    // `close` stays unobserved here, so that every connection's clone of it sees the change.
    let mut closed = close.clone();
    loop {
        let total: usize = reactors
            .iter()
            .map(|r| r.live.load(Ordering::Relaxed))
            .sum();
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = closed.changed() => break,
            r = l.accept(), if total < CONNECTIONS_MAX => match r {
                Ok((stream, peer)) => {
                    let Some(best) = reactors.iter().min_by_key(|r| r.live.load(Ordering::Relaxed)) else {
                        break;
                    };
                    let std_stream = match stream.into_std() {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "cannot hand connection over");
                            continue;
                        }
                    };
                    best.live.fetch_add(1, Ordering::Relaxed);
                    let adopt = Adopt { stream: std_stream, peer, portal, close: close.clone() };
                    if best.tx.send(adopt).is_err() {
                        best.live.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Re-check the connection count now and then when at the limit.
            () = tokio::time::sleep(Duration::from_millis(100)), if total >= CONNECTIONS_MAX => {}
        }
    }
}

// -------------------------------------------------------------------------------------------
// Portals opened and closed while the target runs, and the connections they carry
// -------------------------------------------------------------------------------------------

/// One open portal: its accept loop and the switch that closes it and its connections.
struct Portal {
    addr: SocketAddr,
    close: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The target's portals (listening sockets). Live reconfiguration opens and closes them here;
/// every connection is tied to the portal it came in through, so closing a portal closes its
/// connections too (the hosts reconnect through the portals that remain, as with a port
/// removed from Linux nvmet or an SPDK listener removed).
pub struct Portals {
    registry: Arc<Registry>,
    reactors: Arc<Vec<Reactor>>,
    shutdown: watch::Receiver<bool>,
    open: std::sync::Mutex<Vec<Portal>>,
    conns: Arc<ConnTable>,
}

impl Portals {
    /// Binds `addr` (not yet accepting: [`Self::serve`] starts it). Binding first lets a
    /// reload fail whole on "address in use" before it changes anything.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
        TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
    }

    /// Starts accepting on a bound listener and lists it in the discovery log (GENCTR is the
    /// caller's to move, once per batch of changes). Returns its address.
    pub fn serve(&self, l: TcpListener) -> std::io::Result<SocketAddr> {
        let addr = l.local_addr()?;
        let (close, close_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            l,
            Arc::clone(&self.reactors),
            self.shutdown.clone(),
            close_rx,
        ));
        lock(&self.open).push(Portal { addr, close, task });
        self.registry.insert_listener(addr);
        Ok(addr)
    }

    /// Stops accepting on `addr`, closes the connections that came in through it (each drains
    /// its in-flight commands first) and drops it from the discovery log (GENCTR: the
    /// caller's). Returns how many connections it carried, or `None` if it was not open.
    pub async fn close(&self, addr: SocketAddr) -> Option<usize> {
        let portal = {
            let mut open = lock(&self.open);
            let i = open.iter().position(|p| p.addr == addr)?;
            open.remove(i)
        };
        self.registry.remove_listener(addr);
        let carried = self
            .connections()
            .iter()
            .filter(|c| c.portal == addr)
            .count();
        let _ = portal.close.send(true);
        // The listening socket is closed once the accept loop has ended.
        let _ = portal.task.await;
        Some(carried)
    }

    /// Closes every portal (the target stops).
    pub async fn close_all(&self) {
        let all = std::mem::take(&mut *lock(&self.open));
        for p in &all {
            let _ = p.close.send(true);
        }
        for p in all {
            let _ = p.task.await;
        }
    }

    /// The portals open now.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        lock(&self.open).iter().map(|p| p.addr).collect()
    }

    /// The connections served now.
    pub fn connections(&self) -> Vec<ConnInfo> {
        lock(&self.conns.live).values().cloned().collect()
    }
}

/// One TCP connection the target serves (one queue of one controller, once connected).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnInfo {
    /// A number unique within this target's life.
    pub id: u64,
    pub peer: SocketAddr,
    /// The portal it came in through.
    pub portal: SocketAddr,
    /// The reactor thread that serves it.
    pub reactor: usize,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
}

/// Live connections, for listing.
#[derive(Default)]
struct ConnTable {
    next: std::sync::atomic::AtomicU64,
    live: std::sync::Mutex<std::collections::BTreeMap<u64, ConnInfo>>,
}

/// Keeps a connection listed while it lives.
struct ConnEntry {
    table: Arc<ConnTable>,
    id: u64,
}

impl Drop for ConnEntry {
    fn drop(&mut self) {
        lock(&self.table.live).remove(&self.id);
    }
}

impl ConnTable {
    fn enter(self: &Arc<Self>, peer: SocketAddr, portal: SocketAddr, reactor: usize) -> ConnEntry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let since_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        lock(&self.live).insert(
            id,
            ConnInfo {
                id,
                peer,
                portal,
                reactor,
                since_unix_ms,
            },
        );
        ConnEntry {
            table: Arc::clone(self),
            id,
        }
    }
}
