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
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::subsystem::Registry;
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
    tx: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    live: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A running target: its registry, bound portals and a shutdown switch.
pub struct Target {
    pub registry: Arc<Registry>,
    pub addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    accept_tasks: JoinSet<()>,
    reactors: Arc<Vec<Reactor>>,
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
        let mut reactors = Vec::with_capacity(n);
        for i in 0..n {
            let cpu = (!opts.cpus.is_empty()).then(|| opts.cpus[i % opts.cpus.len()]);
            reactors.push(spawn_reactor(
                i,
                cpu,
                opts.on_reactor_start,
                opts.poll,
                Arc::clone(&registry),
                opts.transport,
                shutdown.subscribe(),
            )?);
        }
        let reactors = Arc::new(reactors);
        let mut accept_tasks = JoinSet::new();
        let mut addrs = Vec::new();
        for l in listeners {
            let addr = l.local_addr()?;
            registry.add_listener(addr);
            addrs.push(addr);
            accept_tasks.spawn(accept_loop(l, Arc::clone(&reactors), shutdown.subscribe()));
            tracing::info!(%addr, reactors = n, "listening for NVMe/TCP");
        }
        Ok(Self {
            registry,
            addrs,
            shutdown,
            accept_tasks,
            reactors,
        })
    }

    /// Connections served now (handed to a reactor and not yet closed).
    pub fn connections(&self) -> usize {
        self.reactors
            .iter()
            .map(|r| r.live.load(Ordering::Relaxed))
            .sum()
    }

    /// A reader of [`Target::connections`] that does not keep the target alive (metrics);
    /// it reads 0 once the target stopped.
    pub fn connection_counter(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let reactors = Arc::downgrade(&self.reactors);
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
        while self.accept_tasks.join_next().await.is_some() {}
        let reactors = Arc::clone(&self.reactors);
        // Joining reactor threads blocks: do it off the caller's runtime.
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(mut v) = Arc::try_unwrap(reactors).map_err(|_| ()) {
                for r in &mut v {
                    if let Some(t) = r.thread.take() {
                        let _ = t.join();
                    }
                }
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

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write inside it, and
    // sched_setaffinity(0, ..) reads it for the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(cpu, "cannot pin reactor thread");
        }
    }
}

fn spawn_reactor(
    index: usize,
    cpu: Option<usize>,
    on_start: Option<fn()>,
    poll: Duration,
    registry: Arc<Registry>,
    cfg: TransportConfig,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<Reactor> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(std::net::TcpStream, SocketAddr)>();
    let live = Arc::new(AtomicUsize::new(0));
    let live2 = Arc::clone(&live);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS_PER_REACTOR)
        .build()?;
    let thread = std::thread::Builder::new()
        .name(format!("reactor-{index}"))
        .spawn(move || {
            if let Some(cpu) = cpu {
                pin_to_cpu(cpu);
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
                            let Some((std_stream, peer)) = m else { break };
                            match tokio::net::TcpStream::from_std(std_stream) {
                                Ok(s) => {
                                    conns.spawn(conn::serve(
                                        Arc::clone(&registry), s, peer, cfg, shutdown.clone(),
                                    ));
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
    Ok(Reactor {
        tx,
        live,
        thread: Some(thread),
    })
}

async fn accept_loop(
    l: TcpListener,
    reactors: Arc<Vec<Reactor>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let total: usize = reactors
            .iter()
            .map(|r| r.live.load(Ordering::Relaxed))
            .sum();
        tokio::select! {
            _ = shutdown.changed() => break,
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
                    if best.tx.send((std_stream, peer)).is_err() {
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
